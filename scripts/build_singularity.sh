#!/usr/bin/env bash
# Build bidsreface's Apptainer/Singularity image from Singularity.def and smoke-test it,
# on a Debian-like host without an installed apptainer and without Docker.
#
#   sudo scripts/build_singularity.sh [OUTPUT.sif] [WORK_DIR]
#
#   OUTPUT.sif  image to write (default: .cache/singularity/bidsreface.sif)
#   WORK_DIR    where the Debian sid chroot and the build's scratch space live
#               (default: .cache/singularity); several GB free are needed there.
#
# How: debootstrap a Debian sid chroot (sid packages apptainer), install apptainer in it,
# map root to a subordinate id range (/etc/subuid, /etc/subgid), then enter the chroot in a
# new mount + pid namespace with pivot_root and run
#   apptainer build --fakeroot   (the definition bootstraps Debian bookworm with debootstrap)
#   apptainer run --no-privs     (smoke test: --version, --help, bidsreface-demo)
# Only Debian's archive and PyPI are contacted. Rerunning reuses the chroot.
#
# Environment:
#   MIRROR       Debian mirror for the chroot (default http://deb.debian.org/debian)
#   TORCH_WHEEL  a local torch wheel (cp311) to install instead of PyPI's torch==2.13.0
#                (PyPI's Linux wheel is the multi-GB CUDA build). Default: the CPU wheel in
#                /opt/wheels when present, otherwise PyPI.
#   PIP_CA       CA bundle handed to pip inside the build (for TLS-intercepting proxies).
#                Default: the host's /etc/ssl/certs/ca-certificates.crt.
#   RUN_DEMO     1 (default) to run bidsreface-demo in the smoke test, 0 to skip it.
#
# Needs root (for debootstrap, unshare and mounts) and a kernel that allows user namespaces
# (apptainer's --fakeroot).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sif=$(realpath -m "${1:-$repo/.cache/singularity/bidsreface.sif}")
work=$(realpath -m "${2:-$repo/.cache/singularity}")
mirror=${MIRROR:-http://deb.debian.org/debian}
pip_ca=${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}
run_demo=${RUN_DEMO:-1}
if [[ -z "${TORCH_WHEEL:-}" ]]; then
    TORCH_WHEEL=$(compgen -G '/opt/wheels/torch-2.13.0+cpu-cp311-*.whl' | head -n 1) \
        || TORCH_WHEEL=""
fi

root=$work/sid          # the Debian sid chroot holding apptainer
extras=$work/extras     # bound to /mnt during the build's %post: torch wheel, CA bundle
outdir=$(dirname "$sif")

if [[ $EUID -ne 0 ]]; then
    echo "error: run as root (debootstrap, unshare and mount need it)" >&2
    exit 1
fi
mkdir -p "$work" "$extras" "$outdir"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# 1. The sid chroot with apptainer -------------------------------------------------------
if [[ ! -x "$root/usr/bin/apptainer" ]]; then
    command -v debootstrap >/dev/null || apt-get install -y --no-install-recommends debootstrap
    if [[ ! -x "$root/usr/bin/apt-get" ]]; then
        log "debootstrap Debian sid into $root"
        debootstrap --variant=minbase unstable "$root" "$mirror"
    fi
    echo "deb $mirror unstable main" > "$root/etc/apt/sources.list"
    # Mirrors that serve an archive snapshot carry an expired Release file.
    echo 'Acquire::Check-Valid-Until "false";' > "$root/etc/apt/apt.conf.d/99no-check-valid-until"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    log "install apptainer in the chroot"
    # shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
    unshare --mount --fork sh -c '
        set -e
        mount -t proc proc "$1/proc"
        chroot "$1" apt-get update -q
        DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get install -y -q \
            --no-install-recommends apptainer debootstrap squashfs-tools uidmap \
            ca-certificates fakeroot
    ' sh "$root"
fi
# --fakeroot maps root to this subordinate range; apptainer wants /etc/hosts to exist.
echo 'root:100000:65536' > "$root/etc/subuid"
echo 'root:100000:65536' > "$root/etc/subgid"
[[ -s "$root/etc/hosts" ]] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost\n' > "$root/etc/hosts"
mkdir -p "$root/var/tmp/apptainer" "$root/src" "$root/extras" "$root/out" "$root/.oldroot"

# 2. Build arguments ------------------------------------------------------------------------
build_args=()
rm -f "$extras"/*.whl "$extras/ca-certificates.crt"
if [[ -n "$TORCH_WHEEL" ]]; then
    log "torch from the local wheel $TORCH_WHEEL"
    cp "$TORCH_WHEEL" "$extras/"
    build_args+=(--build-arg "TORCH=/mnt/$(basename "$TORCH_WHEEL")")
else
    log "torch from PyPI (torch==2.13.0, the CUDA build)"
fi
if [[ -s "$pip_ca" ]]; then
    cp "$pip_ca" "$extras/ca-certificates.crt"
    build_args+=(--build-arg PIP_CERT=/mnt/ca-certificates.crt)
fi

# 3. Enter the chroot (mount + pid namespaces, pivot_root) and run one command ---------------
# The repository is bound at /src (build context), the output folder at /out.
in_chroot() {
    # shellcheck disable=SC2016  # expanded by the inner shell, from its arguments
    unshare --mount --pid --fork bash -euo pipefail -c '
        root=$1 repo=$2 extras=$3 outdir=$4; shift 4
        mount --make-rprivate /
        mount --bind "$root" "$root"
        mount --bind "$repo" "$root/src"
        mount --bind "$extras" "$root/extras"
        mount --bind "$outdir" "$root/out"
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs tmpfs "$root/tmp"
        cp /etc/resolv.conf "$root/etc/resolv.conf"
        cd "$root"
        pivot_root . .oldroot
        cd /
        umount -l /.oldroot
        export APPTAINER_TMPDIR=/var/tmp/apptainer HOME=/root
        exec "$@"
    ' in_chroot "$root" "$repo" "$extras" "$outdir" "$@"
}

name=$(basename "$sif")
log "apptainer build --fakeroot /out/$name"
SECONDS=0
in_chroot sh -c 'cd /src && exec apptainer build --fakeroot --force --bind /extras:/mnt "$@"' \
    build "${build_args[@]}" "/out/$name" Singularity.def
log "built $sif in ${SECONDS}s, $(du -h "$sif" | cut -f1)"

# 4. Smoke test ------------------------------------------------------------------------------
log "smoke test"
in_chroot apptainer run --no-privs "/out/$name" --version
in_chroot apptainer run --no-privs "/out/$name" --help >/dev/null
if [[ "$run_demo" == 1 ]]; then
    SECONDS=0
    in_chroot apptainer exec --no-privs "/out/$name" bidsreface-demo /tmp/demo_out
    log "bidsreface-demo passed in ${SECONDS}s"
fi
log "done: $sif"
