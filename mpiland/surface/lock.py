"""One run per output: an advisory lock file beside the surface file, held by rank 0.

Rank 0 takes ``.<name>.lock`` (``fcntl.flock``, exclusive, non-blocking) before it
looks at an existing file and keeps it until its writer is closed, so two runs on
one output never both create the file, never both evaluate its points, and a
file that HDF5 cannot open is known to be unreadable rather than "in use". The
lock file is removed on release; a run that opened it just before it was
unlinked sees another inode at the path after locking and tries again.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from pathlib import Path

from ..errors import SurfaceFileError

log = logging.getLogger("mpiland")

_HELD: dict[Path, "OutputLock"] = {}


def lock_path(path: Path) -> Path:
    """The lock file of an output path: ``.<name>.lock`` in the same directory."""
    return path.with_name(f".{path.name}.lock")


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc).replace("\n", " ")


def check_output_path(path: Path) -> None:
    """Refuse an output that is a directory or sits under a non-directory; create missing parents."""
    if path.is_dir():
        raise SurfaceFileError(f"--output {path} is a directory; give a file name, e.g. {path / 'surface.h5'}")
    parent = path.parent
    for above in (parent, *parent.parents):
        if above.exists() and not above.is_dir():
            raise SurfaceFileError(f"--output {path}: {above} is a file, not a directory; choose another --output")
        if above.exists():
            break
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SurfaceFileError(f"--output {path}: cannot create directory {parent} ({_reason(exc)}); "
                               "choose another --output") from None


class OutputLock:
    """An exclusive ``flock`` on the output's lock file (held by this process until :meth:`release`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = lock_path(path)
        self.fd: int | None = None
        for _ in range(100):
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise SurfaceFileError(f"--output {path}: cannot write in {path.parent} ({_reason(exc)}); "
                                       "choose a writable directory") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise SurfaceFileError(f"{path} is in use by another run (it holds {self.file.name}); wait for that "
                                       "run to end or choose another --output") from None
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise SurfaceFileError(f"--output {path}: cannot lock {self.file} ({_reason(exc)})") from None
                log.warning("cannot lock %s (%s): this run is not protected against another run on the same output",
                            self.file, _reason(exc))
            if self._same_inode(fd):
                self.fd = fd
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return
            os.close(fd)  # unlinked (released) between our open and our lock: take the new one
        raise SurfaceFileError(f"--output {path}: cannot take the lock {self.file} (it keeps changing)")

    def _same_inode(self, fd: int) -> bool:
        try:
            now = os.stat(self.file)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, so a waiter re-checks the inode)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.file)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        self.fd = None


def hold(path: Path) -> OutputLock:
    """Take the output lock of ``path`` for this process (a leftover of an earlier failed call is dropped)."""
    key = path.resolve()
    stale = _HELD.pop(key, None)
    if stale is not None:
        stale.release()
    lock = OutputLock(path)
    _HELD[key] = lock
    return lock


def release(path: Path) -> None:
    """Drop the output lock of ``path`` if this process holds it."""
    lock = _HELD.pop(path.resolve(), None)
    if lock is not None:
        lock.release()


def remove_stale_parts(path: Path) -> list[Path]:
    """Remove temporary files a killed run left while creating ``path`` (call while holding the lock)."""
    removed = []
    for part in path.parent.glob(f".{path.name}.*.part"):
        try:
            part.unlink()
            removed.append(part)
        except OSError as exc:
            log.warning("cannot remove the stale temporary file %s (%s)", part, _reason(exc))
    if removed:
        log.info("removed %d temporary file(s) left by a run killed while creating %s", len(removed), path)
    return removed
