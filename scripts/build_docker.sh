#!/usr/bin/env bash
# Build bidsreface's Docker image from the Dockerfile with podman and smoke-test it as
# `docker run --read-only --tmpfs /tmp -u UID:GID -v in:/data:ro -v out:/out` would run it.
#
#   sudo scripts/build_docker.sh [TAG]
#
#   TAG   image name (default localhost/bidsreface:latest)
#
# Environment:
#   BASE         base image, passed as `--build-arg BASE`. Empty (default): the Dockerfile's
#                python:3.11-slim-bookworm, pulled from Docker Hub. `local`: Debian bookworm
#                made here with debootstrap (python3, python3-venv, ca-certificates), imported
#                as localhost/bidsreface-base:bookworm; only Debian's archive is contacted.
#   TORCH_WHEEL  a local torch wheel (cp311) passed as `--build-arg TORCH`. Default: the CPU
#                wheel in /opt/wheels when present, otherwise PyPI's torch==2.13.0 (the CUDA
#                build, several GB).
#   PIP_CA       CA bundle for pip inside the build (TLS-intercepting proxies). Default: the
#                host's /etc/ssl/certs/ca-certificates.crt. It is mounted, never copied.
#   MIRROR       Debian mirror for BASE=local (default http://deb.debian.org/debian).
#   WORK_DIR     debootstrap root and smoke-test data (default .cache/docker; under 1 GB).
#   SMOKE        1 (default) to smoke-test the image after the build, 0 to only build.
#   SMOKE_USER   UID:GID of the smoke test's non-root user (default 12345:12345).
#   NPROCS       --nprocs of the smoke test's participant run (default 2).
#
# podman builds with `--isolation chroot --format docker` (the OCI format would drop SHELL).
# The smoke test does not use `podman run` (hosts that refuse the OCI runtime's setrlimit calls
# cannot): it creates a container, mounts its filesystem and runs the image's entrypoint and
# environment (read from the image) with `unshare` (mount + pid namespaces) and
# `chroot --userspec`. The image's root filesystem and the input are bound read-only; /tmp and
# /dev/shm are fresh tmpfs mounted as docker mounts `--tmpfs` (nosuid, nodev, noexec); /out is
# the only other writable place. Needs root (podman's storage, mounts, chroot).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tag=${1:-localhost/bidsreface:latest}
base=${BASE:-}
pip_ca=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
work=$(realpath -m "${WORK_DIR:-$repo/.cache/docker}")
smoke=${SMOKE:-1}
smoke_user=${SMOKE_USER:-12345:12345}
nprocs=${NPROCS:-2}
mirror=${MIRROR:-http://deb.debian.org/debian}
local_base=localhost/bidsreface-base:bookworm
TORCH_WHEEL=${TORCH_WHEEL:-}
if [[ -z "$TORCH_WHEEL" ]]; then
    cpu_wheels=(/opt/wheels/torch-2.13.0+cpu-cp311-*.whl)
    if [[ -s "${cpu_wheels[0]}" ]]; then
        TORCH_WHEEL=${cpu_wheels[0]}
    fi
fi

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'build_docker.sh: error: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (podman's storage, mount namespaces and chroot need it)"
command -v podman >/dev/null || die "podman not found: apt-get install podman"
[[ "$smoke_user" =~ ^[1-9][0-9]*:[0-9]+$ ]] \
    || die "SMOKE_USER must be a non-root UID:GID, got '$smoke_user'"
mkdir -p "$work"

# 1. A local base image (BASE=local) ---------------------------------------------------------
if [[ "$base" == local ]]; then
    if podman image exists "$local_base"; then
        log "base image $local_base already made"
    else
        command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
        rootfs=$work/base-rootfs
        rm -rf "$rootfs"
        log "debootstrap Debian bookworm (python3, python3-venv, ca-certificates) into $rootfs"
        SECONDS=0
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" "$mirror"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" --numeric-owner -c . \
            | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' \
                - "$local_base" >/dev/null
        rm -rf "$rootfs"
        log "base image $local_base made in ${SECONDS}s"
    fi
    base=$local_base
fi

# 2. Build -----------------------------------------------------------------------------------
# Mounted into every RUN step at /run/bidsreface-build, never part of a layer: pip's CA bundle
# (read through /etc/pip.conf) and the torch wheel.
extras=$work/build-extras
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
rm -rf "$extras"
mkdir -p "$extras"
build_args=(--isolation chroot --format docker --layers --tag "$tag"
            --volume "$extras:/run/bidsreface-build:ro"
            --build-arg "BUILD_DATE=$build_date"
            --label "org.opencontainers.image.created=$build_date")
# --label as well as --build-arg: podman reuses a cached LABEL step with its old values.
if git -C "$repo" rev-parse --verify --quiet HEAD >/dev/null; then
    vcs_ref=$(git -C "$repo" rev-parse HEAD)
    build_args+=(--build-arg "VCS_REF=$vcs_ref"
                 --label "org.opencontainers.image.revision=$vcs_ref")
fi
if [[ -n "$base" ]]; then
    build_args+=(--build-arg "BASE=$base")
fi
if [[ -s "$pip_ca" ]]; then
    cp "$pip_ca" "$extras/ca-certificates.crt"
    printf '[global]\ncert = /run/bidsreface-build/ca-certificates.crt\n' > "$extras/pip.conf"
    build_args+=(--volume "$extras/pip.conf:/etc/pip.conf:ro")
fi
if [[ -n "$TORCH_WHEEL" ]]; then
    [[ -s "$TORCH_WHEEL" ]] || die "TORCH_WHEEL $TORCH_WHEEL not found"
    cp "$TORCH_WHEEL" "$extras/"
    build_args+=(--build-arg "TORCH=/run/bidsreface-build/$(basename "$TORCH_WHEEL")")
    log "torch from the local wheel $TORCH_WHEEL"
else
    log "torch from PyPI (torch==2.13.0, the CUDA build)"
fi
log "podman build ${build_args[*]} $repo"
SECONDS=0
podman build "${build_args[@]}" "$repo"
build_s=$SECONDS
size=$(podman image inspect --format '{{.Size}}' "$tag")
log "built $tag in ${build_s}s; image size $((size / 1000000)) MB ($size bytes)"
podman history --format '{{.Size}}\t{{.CreatedBy}}' "$tag" | cut -c 1-110 >&2

[[ "$smoke" == 1 ]] || exit 0

# 3. Smoke test --------------------------------------------------------------------------------
uid=${smoke_user%%:*}
gid=${smoke_user##*:}
smoke_dir=$work/smoke
container=bidsreface-smoke-$$
cleanup() {
    if podman container exists "$container"; then
        podman umount "$container" >/dev/null
        podman rm "$container" >/dev/null
    fi
}
trap cleanup EXIT
# `podman create` makes the container's filesystem (no runtime involved); its mount points for
# the volumes are made in the container's own layer, as docker does.
podman create --name "$container" "$tag" >/dev/null
croot=$(podman mount "$container")
mkdir -p "$croot/data" "$croot/out"

mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
mapfile -t entrypoint < <(podman image inspect --format '{{range .Config.Entrypoint}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
workdir=$(podman image inspect --format '{{.Config.WorkingDir}}' "$tag")
[[ ${#entrypoint[@]} -gt 0 ]] || die "image $tag has no entrypoint"

# run_image IN OUT [--entrypoint PROG] ARGS...: the image as
#   docker run --rm --read-only --tmpfs /tmp -u UID:GID -v IN:/data:ro -v OUT:/out IMAGE ARGS
# (--network none aside: the run needs no network). IN and OUT may be empty (not mounted).
run_image() {
    local in=$1 out=$2
    shift 2
    local argv=("${entrypoint[@]}")
    if [[ "${1:-}" == --entrypoint ]]; then
        argv=("$2")
        shift 2
    fi
    # shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
    unshare --mount --pid --fork bash -euo pipefail -c '
        root=$1 in=$2 out=$3 user=$4 workdir=$5 nenv=$6
        shift 6
        env=("${@:1:$nenv}")
        shift "$nenv"
        mount --make-rprivate /
        mount --bind "$root" "$root"
        mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount -o remount,bind,ro "$root/sys"
        mount -t tmpfs -o nosuid,mode=755 dev "$root/dev"
        for node in null zero full random urandom tty; do
            touch "$root/dev/$node"
            mount --bind "/dev/$node" "$root/dev/$node"
        done
        mkdir -p "$root/dev/shm"
        mount -t tmpfs -o nosuid,nodev,noexec,mode=1777,size=64m shm "$root/dev/shm"
        ln -s /proc/self/fd "$root/dev/fd"
        mount -t tmpfs -o nosuid,nodev,noexec,mode=1777 tmp "$root/tmp"
        if [[ -n "$in" ]]; then
            mount --bind "$in" "$root/data"
            mount -o remount,bind,ro "$root/data"
        fi
        if [[ -n "$out" ]]; then
            mount --bind "$out" "$root/out"
        fi
        mount -o remount,bind,ro "$root"
        exec chroot --userspec="$user" --groups="${user#*:}" "$root" \
            /usr/bin/env -i "${env[@]}" /bin/sh -c "cd \"\$0\" && exec \"\$@\"" \
            "${workdir:-/}" "$@"
    ' run_image "$croot" "$in" "$out" "$smoke_user" "$workdir" "${#image_env[@]}" \
        "${image_env[@]}" "${argv[@]}" "$@"
}

fail() { log "smoke test FAILED: $*"; exit 1; }
step() { log "smoke test: $*"; }

step "--version"
version=$(run_image "" "" --version) || fail "--version exited with $?"
log "  $version"
step "--help"
run_image "" "" --help > "$work/help.txt" || fail "--help exited with $?"
grep -q 'participant' "$work/help.txt" || fail "--help does not mention participant"
log "  $(wc -l < "$work/help.txt") lines, exit 0"

step "bidsreface-demo --help"
run_image "" "" --entrypoint bidsreface-demo --help > "$work/demo-help.txt" \
    || fail "bidsreface-demo --help exited with $?"
log "  $(wc -l < "$work/demo-help.txt") lines, exit 0"

step "usage error (a missing bids_dir): exit 2 and one line on stderr"
code=0
run_image "" "" /nonexistent /out participant 2> "$work/usage.err" >/dev/null || code=$?
[[ $code -eq 2 ]] || fail "usage error exited with $code, expected 2: $(cat "$work/usage.err")"
[[ $(wc -l < "$work/usage.err") -eq 1 ]] || fail "usage error wrote $(wc -l < "$work/usage.err") lines"
log "  exit 2: $(cat "$work/usage.err")"

step "demo dataset written by the image (bidsreface.demo.build_dataset) as $smoke_user"
rm -rf "$smoke_dir"
mkdir -p "$smoke_dir/demo" "$smoke_dir/out"
chown "$smoke_user" "$smoke_dir/demo" "$smoke_dir/out"
run_image "" "$smoke_dir/demo" --entrypoint python \
    -c 'import sys; from bidsreface.demo import build_dataset; build_dataset(sys.argv[1])' \
    /out >/dev/null || fail "building the demo dataset exited with $?"
bids=$smoke_dir/demo/bids
checksums() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum \
               && find . -printf '%p %m %s %T@\n' | sort); }
checksums "$bids" > "$smoke_dir/input.before"
log "  $(find "$bids" -type f | wc -l) files in $bids"

# tree_matches LEVEL: the output tree (logs aside) is tests/data/demo_outputs.txt, without the
# group level's files after the participant level.
tree_matches() {
    (cd "$smoke_dir/out" && find . -type f ! -path '*/log/*' | sort) > "$smoke_dir/tree.txt"
    if [[ $1 == participant ]]; then
        grep -v '^\./group' "$repo/tests/data/demo_outputs.txt" > "$smoke_dir/expected.txt"
    else
        cp "$repo/tests/data/demo_outputs.txt" "$smoke_dir/expected.txt"
    fi
    diff "$smoke_dir/tree.txt" "$smoke_dir/expected.txt"
}
for level in participant group; do
    step "$level level: input read-only, root filesystem read-only, user $smoke_user"
    SECONDS=0
    code=0
    run_image "$bids" "$smoke_dir/out" /data /out "$level" --suffixes T1w T2w \
        --nprocs "$nprocs" || code=$?
    log "  exit $code in ${SECONDS}s"
    [[ $code -eq 0 ]] || fail "$level level exited with $code"
    tree_matches "$level" || fail "the output tree differs from tests/data/demo_outputs.txt"
    log "  output tree matches tests/data/demo_outputs.txt ($(wc -l < "$smoke_dir/tree.txt") files)"
done
others=$(find "$smoke_dir/out" \( ! -uid "$uid" -o ! -gid "$gid" \) -printf '%p %U:%G\n')
[[ -z "$others" ]] || fail "outputs not owned by $smoke_user: $others"
log "  every output owned by $smoke_user"
ls -ln "$smoke_dir/out" "$smoke_dir/out/sub-01/anat" >&2

step "nothing written into the input"
checksums "$bids" > "$smoke_dir/input.after"
diff "$smoke_dir/input.before" "$smoke_dir/input.after" \
    || fail "the input dataset changed during the runs"
log "  checksums, sizes, modes and times of $(find "$bids" -type f | wc -l) input files unchanged"
log "smoke test passed: $tag (built in ${build_s}s, $((size / 1000000)) MB)"
