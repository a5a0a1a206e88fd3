#!/usr/bin/env bash
# Build a virtualenv for mpiland with parallel HDF5 (h5py driver="mpio")
# on top of Debian's MPICH.
#
# Usage:
#   docker/install-mpio-env.sh VENV_DIR [--torch SPEC] [--project DIR]
#                                       [--python PY] [--no-check]
#
#   VENV_DIR      virtualenv to create or update (idempotent: re-running it
#                 on a finished venv only re-checks it)
#   --torch SPEC  pip arguments that install torch; word-split, so an index
#                 may follow the requirement, e.g.
#                   --torch "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#                 default: torch==2.13.0
#   --project DIR also `pip install -e DIR[test]` (DIR: the mpiland checkout)
#   --python PY   interpreter the venv is made from (default: python3; a
#                 missing Debian/Ubuntu python3 is installed with apt)
#   --h5py VER    h5py release to build (default: 3.16.0; needs HDF5 >= 1.10.7)
#   --no-check    skip the closing MPI / parallel-HDF5 smoke test
#
# Environment:
#   MPILAND_WHEEL_CACHE  where the h5py wheel built here is kept for the next
#                 fresh venv, keyed by h5py, Python, HDF5 and MPICH versions
#                 (default: ${XDG_CACHE_HOME:-~/.cache}/mpiland/wheels; set it
#                 empty to disable). The build takes ~4.5 min on 2 cores;
#                 a cache hit installs in seconds.
#
# What ends up in the venv:
#   * torch (per --torch);
#   * mpi4py >= 4 from its binary wheel (never built from source), which
#     dlopens the MPI library at import time (see "libmpi.so.12" below);
#   * h5py compiled against Debian's parallel HDF5 (libhdf5-mpich-dev), so
#     h5py.get_config().mpi is True;
#   * no `mpich` wheel from PyPI: h5py links Debian's libmpich.so.12, and a
#     second MPICH in the same process would break MPI_Init.
#
# Launch with Debian's launcher, e.g. `mpiexec.mpich -n 2 VENV/bin/python ...`
# (or `mpiexec`/`mpirun` while the Debian alternatives point at MPICH).
set -euo pipefail

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0" >&2
    exit "${1:-2}"
}
log() { printf '==> [%4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'install-mpio-env: error: %s\n' "$*" >&2; exit 1; }

VENV=""
TORCH_SPEC="torch==2.13.0"
PROJECT=""
PY="python3"
H5PY_VERSION="3.16.0"
CHECK=1
while [ $# -gt 0 ]; do
    case "$1" in
        --torch) [ $# -ge 2 ] || usage; TORCH_SPEC="$2"; shift 2 ;;
        --torch=*) TORCH_SPEC="${1#*=}"; shift ;;
        --project) [ $# -ge 2 ] || usage; PROJECT="$2"; shift 2 ;;
        --project=*) PROJECT="${1#*=}"; shift ;;
        --python) [ $# -ge 2 ] || usage; PY="$2"; shift 2 ;;
        --python=*) PY="${1#*=}"; shift ;;
        --h5py) [ $# -ge 2 ] || usage; H5PY_VERSION="$2"; shift 2 ;;
        --h5py=*) H5PY_VERSION="${1#*=}"; shift ;;
        --no-check) CHECK=0; shift ;;
        -h|--help) usage 0 ;;
        -*) printf 'install-mpio-env: unknown option %s\n' "$1" >&2; usage ;;
        *) [ -z "$VENV" ] || usage; VENV="$1"; shift ;;
    esac
done
[ -n "$VENV" ] || usage
[ -n "$TORCH_SPEC" ] || die "--torch needs a non-empty spec"
if [ -n "$PROJECT" ]; then
    PROJECT="$(cd "$PROJECT" && pwd)" || die "--project: no such directory"
    [ -e "$PROJECT/setup.cfg" ] || [ -e "$PROJECT/setup.py" ] \
        || [ -e "$PROJECT/pyproject.toml" ] \
        || die "--project $PROJECT has no setup.cfg, setup.py or pyproject.toml"
fi
mkdir -p "$(dirname "$VENV")"
VENV="$(cd "$(dirname "$VENV")" && pwd)/$(basename "$VENV")"
WHEEL_CACHE="${MPILAND_WHEEL_CACHE-${XDG_CACHE_HOME:-$HOME/.cache}/mpiland/wheels}"
tmpd="$(mktemp -d)"
trap 'rm -rf "$tmpd"' EXIT

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
# mpich: runtime + hydra launcher (mpiexec.mpich); libhdf5-mpich-dev: parallel
# HDF5 headers/libs (pulls libmpich-dev, i.e. mpicc and gcc); pkg-config and
# libc6-dev for the h5py build.
APT_PKGS=(mpich libhdf5-mpich-dev pkg-config gcc libc6-dev)

have_pkg() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# A distro python needs python3-venv (ensurepip) and python3-dev (Python.h);
# python.org/pyenv/official-image builds already have both.
if ! command -v "$PY" >/dev/null 2>&1; then
    [ "$PY" = python3 ] || die "interpreter $PY not found"
    APT_PKGS+=(python3 python3-venv python3-dev)
elif ! "$PY" -c 'import ensurepip, os, sysconfig, sys
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        2>/dev/null; then
    if dpkg -S "$(readlink -f "$(command -v "$PY")")" >/dev/null 2>&1; then
        APT_PKGS+=(python3-venv python3-dev)
    else
        die "$PY lacks ensurepip or Python.h (needed for the venv and the h5py build)"
    fi
fi

missing=()
for p in "${APT_PKGS[@]}"; do have_pkg "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to install: ${missing[*]}"
        SUDO=(sudo)
    fi
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${missing[@]}"
    }
    log "apt-get install ${missing[*]}"
    # Update the package lists only when there are none (e.g. docker images
    # ship without them) or when the install fails on stale lists.
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        "${SUDO[@]}" apt-get update -q
        apt_install
    elif ! apt_install; then
        log "apt-get install failed; refreshing package lists and retrying"
        "${SUDO[@]}" apt-get update -q
        apt_install
    fi
else
    log "Debian packages present: ${APT_PKGS[*]}"
fi
command -v "$PY" >/dev/null 2>&1 || PY=/usr/bin/python3

MULTIARCH="$(gcc -print-multiarch 2>/dev/null || true)"
[ -n "$MULTIARCH" ] || MULTIARCH="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || true)"
[ -n "$MULTIARCH" ] || die "cannot determine the Debian multiarch triplet"
LIBMPICH="/usr/lib/$MULTIARCH/libmpich.so.12"
HDF5_MPICH_DIR="/usr/lib/$MULTIARCH/hdf5/mpich"
MPIEXEC="$(command -v mpiexec.mpich || command -v mpiexec.hydra || true)"
[ -e "$LIBMPICH" ] || die "$LIBMPICH not found (package libmpich12)"
[ -e "$HDF5_MPICH_DIR/include/hdf5.h" ] || die "$HDF5_MPICH_DIR/include/hdf5.h not found"
[ -n "$MPIEXEC" ] || die "mpiexec.mpich not found (package mpich)"

# ---------------------------------------------------------------------------
# 2. virtualenv, torch, mpi4py
# ---------------------------------------------------------------------------
VPY="$VENV/bin/python"
if [ ! -x "$VPY" ]; then
    log "creating venv $VENV from $PY ($("$PY" -V 2>&1))"
    "$PY" -m venv "$VENV"
else
    log "reusing venv $VENV ($("$VPY" -V 2>&1))"
fi
pip_install() { "$VPY" -m pip install --disable-pip-version-check --progress-bar off "$@"; }

read -r -a torch_args <<<"$TORCH_SPEC"
log "pip install ${torch_args[*]}"
pip_install "${torch_args[@]}"

# Binary wheel only: building mpi4py from source takes ~40 min on a small
# runner. The 4.x wheels carry one extension per MPI ABI and pick one at
# import time.
log "pip install mpi4py (binary wheel)"
pip_install --only-binary=mpi4py 'mpi4py>=4.0'

# ---------------------------------------------------------------------------
# 3. h5py against Debian's parallel HDF5
# ---------------------------------------------------------------------------
h5py_is_mpi() {
    "$VPY" -c 'import sys, h5py; sys.exit(0 if h5py.get_config().mpi else 1)' 2>/dev/null
}
install_h5py_wheel() {
    pip_install --no-deps --force-reinstall --no-cache-dir "$1" && h5py_is_mpi
}
build_h5py() {
    pip_install numpy
    local key="" cached=""
    if [ -n "$WHEEL_CACHE" ]; then
        key="h5py-$H5PY_VERSION-$("$VPY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')"
        key+="-$MULTIARCH-hdf5_$(dpkg-query -W -f='${Version}' libhdf5-mpich-dev)"
        key+="-mpich_$(dpkg-query -W -f='${Version}' libmpich-dev)"
        key="$(printf '%s' "$key" | tr -c 'A-Za-z0-9._-' '_')"
        cached="$(compgen -G "$WHEEL_CACHE/$key/h5py-*.whl" | head -n1 || true)"
        if [ -n "$cached" ]; then
            log "installing cached $cached"
            install_h5py_wheel "$cached" && return 0
            log "cached wheel unusable; rebuilding"
            rm -rf "${WHEEL_CACHE:?}/$key"
        fi
    fi
    log "pip install cython pkgconfig setuptools (h5py build requirements)"
    pip_install 'cython>=3' pkgconfig setuptools
    log "building h5py $H5PY_VERSION from source, HDF5_DIR=$HDF5_MPICH_DIR (~4.5 min on 2 cores)"
    # --no-cache-dir: pip's own wheel cache is keyed by the sdist only, so a
    # serial h5py built earlier from the same sdist could be reused silently.
    rm -rf "$tmpd/wheel"
    CC=mpicc HDF5_MPI=ON HDF5_DIR="$HDF5_MPICH_DIR" \
        "$VPY" -m pip wheel --disable-pip-version-check --progress-bar off \
        --no-deps --no-build-isolation --no-binary=h5py --no-cache-dir \
        -w "$tmpd/wheel" "h5py==$H5PY_VERSION"
    local whl
    whl="$(compgen -G "$tmpd/wheel/h5py-*.whl" | head -n1)"
    install_h5py_wheel "$whl" || die "h5py was built but reports mpi=False"
    if [ -n "$key" ]; then
        if mkdir -p "$WHEEL_CACHE/$key" 2>/dev/null \
            && cp "$whl" "$WHEEL_CACHE/$key/.tmp.whl" \
            && mv -f "$WHEEL_CACHE/$key/.tmp.whl" "$WHEEL_CACHE/$key/$(basename "$whl")"; then
            log "cached the wheel in $WHEEL_CACHE/$key"
        else
            log "could not write the wheel cache $WHEEL_CACHE (ignored)"
        fi
    fi
}
if h5py_is_mpi && [ "$("$VPY" -c 'import h5py; print(h5py.__version__)')" = "$H5PY_VERSION" ]; then
    log "h5py $H5PY_VERSION with MPI already installed"
else
    build_h5py
fi

# ---------------------------------------------------------------------------
# 4. the project itself
# ---------------------------------------------------------------------------
if [ -n "$PROJECT" ]; then
    log "pip install -e ${PROJECT}[test]"
    pip_install -e "${PROJECT}[test]"
    # A dependency declared there must not swap in a serial h5py wheel.
    if ! h5py_is_mpi; then
        log "the project install replaced h5py; rebuilding it with MPI"
        build_h5py
    fi
fi

# ---------------------------------------------------------------------------
# 5. make mpi4py's MPICH extension load Debian's libmpich.so.12
# ---------------------------------------------------------------------------
# mpi4py's wheel ships MPI.mpich.*.so (DT_NEEDED libmpi.so.12, the MPICH ABI
# soname) and MPI.openmpi.*.so. On import, mpi4py/_mpiabi.py dlopens an MPI
# library by full path, trying <venv>/lib/{libmpi.so,libmpi.so.12,
# libmpi.so.40} first (this is how the PyPI `mpich` wheel is found) and then
# the default search, to decide which ABI to load. Debian names the library
# libmpich.so.12 (soname libmpich.so.12) and has no libmpi.so.12 at all, so
# the extension's DT_NEEDED cannot be resolved.
#
# A plain symlink <venv>/lib/libmpi.so.12 -> libmpich.so.12 is NOT enough:
# the dynamic loader matches an already-loaded library to a DT_NEEDED name
# by its path or its DT_SONAME, and the symlinked library still says
# "libmpich.so.12"; it would only work with LD_LIBRARY_PATH exported, which
# cannot be set from inside a running python (the loader reads it at start).
#
# So we build a tiny forwarding library instead: empty, with soname
# libmpi.so.12 and DT_NEEDED libmpich.so.12. mpi4py dlopens it from
# <venv>/lib, the loader then satisfies the extension's libmpi.so.12 with it
# (soname match), and all MPI_* symbols resolve through its dependency to
# Debian's libmpich.so.12 -- the same single copy that h5py links. Works for
# any process run by <venv>/bin/python, with no environment variables, and
# survives an mpi4py reinstall.
if "$VPY" -m pip show -q mpich >/dev/null 2>&1; then
    log "removing the PyPI mpich wheel (it would shadow Debian's MPICH)"
    "$VPY" -m pip uninstall -y -q mpich
fi
# mpi4py tries <venv>/lib/libmpi.so before libmpi.so.12: nothing else may
# sit there.
for stray in "$VENV/lib/libmpi.so" "$VENV/lib/libmpi.so.40"; do
    [ ! -e "$stray" ] || die "$stray would be loaded instead of Debian's MPICH; remove it"
done
SHIM="$VENV/lib/libmpi.so.12"
printf '/* forwards the MPICH ABI soname libmpi.so.12 to %s */\n' "$LIBMPICH" >"$tmpd/shim.c"
gcc -shared -fPIC -o "$tmpd/libmpi.so.12" "$tmpd/shim.c" \
    -Wl,-soname,libmpi.so.12 -Wl,--no-as-needed "$LIBMPICH"
mv -f "$tmpd/libmpi.so.12" "$SHIM"
log "installed $SHIM -> $(basename "$LIBMPICH")"

# ---------------------------------------------------------------------------
# 6. smoke test
# ---------------------------------------------------------------------------
if [ "$CHECK" -eq 1 ]; then
    log "check: h5py parallel build"
    "$VPY" -c 'import h5py; assert h5py.get_config().mpi, "h5py built without MPI"; print("h5py", h5py.__version__, "HDF5", h5py.version.hdf5_version, "mpi=True")'
    log "check: $MPIEXEC -n 2 (mpi4py + h5py mpio)"
    # -launcher fork: start both ranks locally even inside a Slurm job.
    ( cd "$tmpd" && "$MPIEXEC" -launcher fork -n 2 "$VPY" -c '
import h5py
from mpi4py import MPI
comm = MPI.COMM_WORLD
assert comm.size == 2, comm.size
with h5py.File("check.h5", "w", driver="mpio", comm=comm) as f:
    d = f.create_dataset("x", (comm.size,), dtype="i4")
    d[comm.rank] = comm.rank + 1
comm.Barrier()
with h5py.File("check.h5", "r") as f:
    assert list(f["x"][:]) == [1, 2], f["x"][:]
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libmpi" in l})
assert sum("libmpich.so" in l for l in libs) == 1, libs
if comm.rank == 0:
    print("mpi4py", MPI.Get_library_version().splitlines()[0].strip(), "size", comm.size, "mpio ok")
    print("MPI libraries loaded:", ", ".join(libs))
' )
fi
log "done: $VENV"
