#!/usr/bin/env bash
# Build the mpiland image with podman from a locally made Debian base (no
# container registry needed) and run the demo job, a 2-rank run and the
# MPI-IO writer tests inside it.
#
# Usage:
#   docker/container-test.sh [--no-build | --context DIR]
#
#   --no-build    only run the checks on an existing $MPILAND_IMAGE
#   --context DIR only write the build context (the files git knows: tracked
#                 and new, not ignored) into DIR, which must not exist, and stop
#
# Environment (all optional):
#   MPILAND_IMAGE        tag of the image built and checked (localhost/mpiland:cpu)
#   MPILAND_BASE         base image (localhost/debian:<suite>); made with
#                        debootstrap + `podman import` when podman does not have it
#   MPILAND_SUITE        Debian release of that base (default: the host's
#                        VERSION_CODENAME, else bookworm)
#   MPILAND_MIRROR       Debian mirror for debootstrap (default: the host's apt
#                        mirror, else http://deb.debian.org/debian)
#   MPILAND_TORCH        pip arguments for torch (default: "torch==2.13.0
#                        --find-links /opt/wheels" when a torch wheel lies in
#                        MPILAND_WHEELS, which is then mounted read-only into
#                        the build; else the Dockerfile's default, the CPU build)
#   MPILAND_WHEELS       directory of local wheels (default /opt/wheels)
#   MPILAND_WHEEL_CACHE  h5py wheels built by install-mpio-env.sh on this host
#                        (its default: ~/.cache/mpiland/wheels), mounted
#                        read-only into the build; empty: build h5py afresh
#   PODMAN_FLAGS         extra global podman flags, e.g. "--storage-driver vfs"
#   PODMAN_RUN_FLAGS     flags for `podman build` and `podman run` that let
#                        containers start here (default: found by trying none,
#                        then runc with the host's own open-file limit, for
#                        sandboxes where crun cannot handle hybrid cgroups or
#                        containers may not raise their rlimits)
#
# Needs root (or rootless podman set up), the Debian packages podman (runc too
# where crun cannot start containers) and, for the
# base, debootstrap. Debian packages and PyPI must be reachable from the build.
set -euo pipefail
# One compound command, parsed whole before it runs: editing this file during a
# 20-minute build cannot change what the running build does next.
{
die() { echo "container-test: $*" >&2; exit 1; }
log() { echo "container-test: $*"; }

BUILD=1
CONTEXT_ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --no-build) BUILD=0 ;;
        --context)
            [ $# -ge 2 ] || { echo "container-test: --context needs a directory" >&2; exit 2; }
            CONTEXT_ONLY="$(realpath -m "$2")"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "container-test: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

cd "$(dirname "$0")/.."

# The build context: what a fresh clone plus the new files would hold, so local
# virtualenvs, outputs and caches never reach the image.
make_context() {
    mkdir "$1" || die "cannot create $1 (it must not exist yet)"
    git ls-files -z --cached --others --exclude-standard \
        | (while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) \
        | tar -c --null -T - | tar -x -C "$1"
}
if [ -n "$CONTEXT_ONLY" ]; then
    make_context "$CONTEXT_ONLY"
    exit 0
fi
command -v podman >/dev/null 2>&1 || die "podman not found: apt-get install podman"
read -r -a PFLAGS <<<"${PODMAN_FLAGS:-}"
pm() { podman "${PFLAGS[@]}" "$@"; }

host_codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"
SUITE="${MPILAND_SUITE:-${host_codename:-bookworm}}"
BASE="${MPILAND_BASE:-localhost/debian:$SUITE}"
IMAGE="${MPILAND_IMAGE:-localhost/mpiland:cpu}"
WHEELS="${MPILAND_WHEELS:-/opt/wheels}"
H5PY_CACHE="${MPILAND_WHEEL_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/mpiland/wheels}"
host_mirror="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
    /etc/apt/sources.list 2>/dev/null | grep -oE 'https?://[^ ]+' | head -n1 || true)"
MIRROR="${MPILAND_MIRROR:-${host_mirror:-http://deb.debian.org/debian}}"
start=$SECONDS
tmpd="$(mktemp -d "${TMPDIR:-/var/tmp}/mpiland-container.XXXXXX")"
trap 'rm -rf "$tmpd"' EXIT

# ---------------------------------------------------------------------------
# 1. base image: a minimal Debian made here, so no registry is needed
# ---------------------------------------------------------------------------
if [ "$BUILD" -eq 1 ] && ! pm image exists "$BASE"; then
    command -v debootstrap >/dev/null 2>&1 || die "$BASE is missing and debootstrap is not installed: apt-get install debootstrap"
    log "making $BASE: debootstrap --variant=minbase $SUITE from $MIRROR"
    debootstrap --variant=minbase "$SUITE" "$tmpd/rootfs" "$MIRROR" >"$tmpd/debootstrap.log" 2>&1 \
        || { tail -n 20 "$tmpd/debootstrap.log" >&2; die "debootstrap failed"; }
    security="${MIRROR%/debian}/debian-security"
    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [ "$security" = "$MIRROR" ] || echo "deb $security $SUITE-security main"
    } >"$tmpd/rootfs/etc/apt/sources.list"
    rm -rf "$tmpd"/rootfs/var/cache/apt/archives/*.deb "$tmpd"/rootfs/var/lib/apt/lists/*
    tar -C "$tmpd/rootfs" -c . | pm import - "$BASE" >/dev/null
    rm -rf "$tmpd/rootfs"
    log "base $BASE ready ($((SECONDS - start)) s)"
fi

# ---------------------------------------------------------------------------
# How containers start on this host
# ---------------------------------------------------------------------------
# --runtime is a global podman flag; the ulimits go to build and run.
split_flags() {
    GFLAGS=()
    OFLAGS=()
    local f=("$@") i
    for ((i = 0; i < ${#f[@]}; i++)); do
        if [ "${f[i]}" = --runtime ]; then GFLAGS+=(--runtime "${f[i + 1]}"); i=$((i + 1))
        else OFLAGS+=("${f[i]}"); fi
    done
}
if [ -n "${PODMAN_RUN_FLAGS+set}" ]; then
    read -r -a RFLAGS <<<"$PODMAN_RUN_FLAGS"
    split_flags "${RFLAGS[@]}"
else
    probe_image="$BASE"
    [ "$BUILD" -eq 1 ] || probe_image="$IMAGE"
    nofile="$(ulimit -Hn)"
    [ "$nofile" = unlimited ] && nofile=1048576
    limits="--ulimit nofile=$nofile:$nofile --ulimit nproc=32768:32768"
    ok=0
    for candidate in "" "$limits" "--runtime runc $limits"; do
        read -r -a RFLAGS <<<"$candidate"
        split_flags "${RFLAGS[@]}"
        if pm "${GFLAGS[@]}" run "${OFLAGS[@]}" --rm --network none "$probe_image" true >/dev/null 2>"$tmpd/probe.err"
        then
            ok=1
            break
        fi
    done
    [ "$ok" -eq 1 ] || { cat "$tmpd/probe.err" >&2; die "no container starts here (set PODMAN_RUN_FLAGS)"; }
fi
log "container flags: ${RFLAGS[*]:-(none needed)}"

# ---------------------------------------------------------------------------
# 2. the image, from the files git knows (tracked and new, not ignored)
# ---------------------------------------------------------------------------
if [ "$BUILD" -eq 1 ]; then
    make_context "$tmpd/context"
    TORCH="${MPILAND_TORCH:-}"
    mounts=()
    if compgen -G "$WHEELS/torch-*.whl" >/dev/null; then
        mounts=(-v "$WHEELS:/opt/wheels:ro")
        TORCH="${TORCH:-torch==2.13.0 --find-links /opt/wheels}"
    fi
    # No local wheel and no MPILAND_TORCH: the Dockerfile's default (the CPU build).
    build_args=(--build-arg BASE="$BASE")
    [ -z "$TORCH" ] || build_args+=(--build-arg TORCH="$TORCH")
    # h5py wheels install-mpio-env.sh built on this host (e.g. for .venv-mpio):
    # used when their key (h5py, Python, HDF5, MPICH versions) matches the image.
    if [ -n "$H5PY_CACHE" ] && [ -d "$H5PY_CACHE" ]; then
        mounts+=(-v "$H5PY_CACHE:/opt/h5py-wheels:ro")
        build_args+=(--build-arg MPILAND_WHEEL_CACHE=/opt/h5py-wheels)
    fi
    # pip inside the build trusts what the host's pip trusts (a site CA, e.g.
    # behind a TLS-inspecting proxy) and uses the host's index, through a
    # pip.conf mounted for the build only: nothing of it stays in the image.
    pip_conf_value() {
        local key="$1" f v=""
        for f in /etc/pip.conf /etc/xdg/pip/pip.conf "$HOME/.config/pip/pip.conf" "$HOME/.pip/pip.conf"; do
            [ -f "$f" ] || continue
            v="$(sed -nE "s/^[[:space:]]*$key[[:space:]]*=[[:space:]]*(.*[^[:space:]])[[:space:]]*$/\1/p" "$f" | tail -n1)"
            [ -n "$v" ] && echo "$v" && return 0
        done
        return 0
    }
    cert="${PIP_CERT:-$(pip_conf_value cert)}"
    index="${PIP_INDEX_URL:-$(pip_conf_value index-url)}"
    printf '[global]\n' >"$tmpd/pip.conf"
    if [ -n "$cert" ] && [ -f "$cert" ]; then
        mounts+=(-v "$cert:/etc/mpiland-build-ca.crt:ro")
        printf 'cert = /etc/mpiland-build-ca.crt\n' >>"$tmpd/pip.conf"
    fi
    case "$index" in http*) printf 'index-url = %s\n' "$index" >>"$tmpd/pip.conf" ;; esac
    mounts+=(-v "$tmpd/pip.conf:/etc/pip.conf:ro")
    log "podman build $IMAGE from $BASE, torch: ${TORCH:-the Dockerfile default}"
    pm "${GFLAGS[@]}" build "${OFLAGS[@]}" --network host -f docker/Dockerfile -t "$IMAGE" \
        "${build_args[@]}" "${mounts[@]}" "$tmpd/context"
    log "image $IMAGE built ($((SECONDS - start)) s)"
fi
pm image exists "$IMAGE" || die "image $IMAGE not found (build it first, without --no-build)"

# ---------------------------------------------------------------------------
# 3. checks inside the image (no network: everything must be in it)
# ---------------------------------------------------------------------------
run_in() { pm "${GFLAGS[@]}" run "${OFLAGS[@]}" --rm --network none --shm-size=1g -w /opt/mpiland "$IMAGE" bash -euo pipefail -c "$1"; }

log "check: parallel h5py and mpi4py on Debian's MPICH, 2 ranks"
run_in 'mpirun -n 2 python -c "
from mpi4py import MPI; import h5py
assert h5py.get_config().mpi
c = MPI.COMM_WORLD
assert c.size == 2, c.size
c.rank or print(\"mpi4py on\", MPI.Get_library_version().split(chr(10))[0].strip(), \"h5py\", h5py.__version__)"'

log "check: the demo job at 1 rank, again at 2 ranks (mpiexec -n 2), same values"
run_in 'cd /tmp && cp -r /opt/mpiland/jobs . \
&& mpiland run jobs/quickstart.toml --set run.progress=\"none\" \
&& mpiexec -n 2 mpiland run jobs/quickstart.toml --output surfaces/quickstart-2.h5 --set run.progress=\"none\" \
&& python -c "
import h5py, numpy as np
a, b = h5py.File(\"surfaces/quickstart.h5\", \"r\"), h5py.File(\"surfaces/quickstart-2.h5\", \"r\")
assert a[\"done\"][...].all() and b[\"done\"][...].all()
for k in (\"test_loss\", \"test_acc\"):
    np.testing.assert_array_equal(a[k][...], b[k][...])
print(\"21x21 surface: 1 and 2 ranks identical\")" \
&& mpiland info surfaces/quickstart-2.h5 >info.txt && head -n 5 info.txt'

log "check: MPI-IO writer tests (tests/test_mpio.py) with the image's parallel h5py"
run_in 'MPILAND_MPIO_PYTHON=/opt/mpiland-venv/bin/python OMP_NUM_THREADS=1 \
python -m pytest -q -p no:cacheprovider tests/test_mpio.py'

log "all checks passed in $IMAGE ($((SECONDS - start)) s)"
}
exit
