"""Where the surface file lives: which writer the file system allows, and whether the grid fits.

MPI-IO (parallel HDF5) needs a file system whose byte-range locks work and whose
caching keeps one process's writes in order: Lustre, GPFS, BeeGFS and local
disks do; NFS (attribute and data caching), SMB/CIFS and FUSE file systems do
not, or only with mount options mpiland cannot see. ``writer = "auto"`` therefore
picks MPI-IO only when the output directory's file system type (from
``/proc/mounts``) is not one of those and a POSIX ``fcntl`` lock can be taken in
that directory; otherwise rank 0 writes alone (``gather``), and the log says why.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from ..errors import JobFileError, SurfaceFileError

log = logging.getLogger("mpiland")

UNSAFE_FOR_MPIO = ("nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "fuse", "fuseblk", "sshfs", "9p",
                   "vboxsf", "vmhgfs", "afs", "davfs", "s3fs", "overlay-nfs")
"""File system types on which ``auto`` never picks MPI-IO (any ``fuse.*`` type too)."""

BYTES_PER_POINT_PLAN = 32
"""Rank 0's memory per grid point for the done mask and the chunk plan (uint8 mask, int64 indices)."""


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def existing_dir(path: Path) -> Path:
    """``path`` if it is a directory, else its nearest existing ancestor (the output's future parent)."""
    p = Path(os.path.abspath(path))
    while not p.is_dir() and p != p.parent:
        p = p.parent
    return p


def file_system(directory: Path, mounts: str | None = None) -> tuple[str, str]:
    """(mount point, type) of the file system holding ``directory``; ``mounts`` replaces /proc/mounts."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "", "unknown"
    target = os.path.realpath(directory)
    best = ("", "unknown")
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, kind = _unescape(fields[1]), fields[2]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, kind)
    return best


def posix_lock_works(directory: Path) -> tuple[bool, str]:
    """Whether an ``fcntl`` (POSIX byte-range) lock can be taken on a scratch file in ``directory``."""
    probe = directory / f".mpiland-lock-probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        return False, f"cannot create a probe file ({exc.strerror})"
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return True, "a POSIX lock works"
    except OSError as exc:
        return False, f"a POSIX lock fails ({exc.strerror})"
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def mpio_safe(directory: Path, mounts: str | None = None) -> tuple[bool, str]:
    """Whether MPI-IO is safe for files in ``directory``, and what was checked (for the log)."""
    where = existing_dir(directory)
    point, kind = file_system(where, mounts)
    seen = f"{where} is on {kind}" + (f" (mounted at {point})" if point else "")
    if kind in UNSAFE_FOR_MPIO or kind.startswith("fuse.") or kind.startswith("nfs"):
        return False, f"{seen}, where MPI-IO locking and write ordering are not reliable"
    works, how = posix_lock_works(where)
    return works, f"{seen}; {how}"


def choose_writer(requested: str, size: int, has_mpi: bool, output: Path, mounts: str | None = None) -> str:
    """The writer a run uses: ``requested`` unless it is ``auto`` (MPI-IO only where it is safe)."""
    if requested == "mpio" and not has_mpi:
        raise JobFileError("run.writer = mpio needs h5py built with MPI (h5py.get_config().mpi is False here); "
                           "use writer = \"auto\" or \"gather\", or build h5py with docker/install-mpio-env.sh")
    if requested == "gather" or not has_mpi or size == 1:
        return "gather" if requested == "auto" else requested
    safe, checked = mpio_safe(output.parent, mounts)
    if requested == "mpio":
        if not safe:
            log.warning("run.writer = mpio as asked, although %s", checked)
        return "mpio"
    log.info("writer auto: %s: %s", "mpio" if safe else "gather", checked)
    return "mpio" if safe else "gather"


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def mem_available() -> int | None:
    """Bytes of memory available on this machine (``MemAvailable``), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def file_bytes(points: int, n_metrics: int, direction_floats: int) -> int:
    """Upper bound of a new surface file's size: float64 metrics and seconds, the done mask, the directions."""
    return points * (8 * (n_metrics + 1) + 1) + 4 * direction_floats + (1 << 20)


def check_room(path: Path, shape: tuple[int, ...], n_metrics: int, direction_floats: int) -> None:
    """Refuse, before anything is created, a grid whose file does not fit the disk or whose plan does not fit memory."""
    points = 1
    for n in shape:
        points *= int(n)
    disk = file_bytes(points, n_metrics, direction_floats)
    memory = points * BYTES_PER_POINT_PLAN
    free = shutil.disk_usage(existing_dir(path.parent)).free
    avail = mem_available()
    grid = " × ".join(str(n) for n in shape)
    if disk > free or (avail is not None and memory > avail):
        have = f"{path.parent} has {_gib(free)} free" + (f", this machine {_gib(avail)} of memory available"
                                                           if avail is not None else "")
        raise SurfaceFileError(f"grid {grid} ({points} points) needs about {_gib(disk)} of disk for {path.name} and "
                               f"{_gib(memory)} of memory on rank 0; {have}; use a coarser grid or another --output")
