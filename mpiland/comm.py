"""Communicator helpers: the ``Comm`` type, a size-1 stand-in, isolation and agreement.

mpiland talks to other ranks through a few mpi4py methods only; :class:`Comm`
names them, so the protocol and the run are typed against what they use rather
than ``Any``. Without a loadable MPI library a single process still runs, on
:class:`SelfComm`. :func:`isolated` gives a run its own duplicate of the
communicator it was handed (mpi4py's pool does the same), so that mpiland never
receives, or leaves, a message on the caller's communicator. :func:`agree` turns
a user error on any rank into the same error on every rank.

Every collective here is entered by all ranks unconditionally: an error is
caught first and travels as a value, never skips a collective.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol, TypeVar, runtime_checkable

from .errors import LaunchError, MpilandError

log = logging.getLogger("mpiland")

T = TypeVar("T")

_mpi_warning_done = False


@runtime_checkable
class Request(Protocol):
    """The part of an mpi4py request mpiland uses."""

    def test(self) -> tuple[bool, Any]: ...

    def wait(self) -> Any: ...


@runtime_checkable
class Comm(Protocol):
    """The mpi4py communicator methods mpiland uses (``MPI.Comm`` and :class:`SelfComm` both fit)."""

    def Get_rank(self) -> int: ...

    def Get_size(self) -> int: ...

    def bcast(self, obj: Any, root: int = 0) -> Any: ...

    def allgather(self, sendobj: Any) -> list[Any]: ...

    def allreduce(self, sendobj: Any, op: Any = ...) -> Any: ...

    def Barrier(self) -> None: ...

    def Iprobe(self, source: int = ..., tag: int = ..., status: Any = ...) -> bool: ...

    def recv(self, buf: Any = None, source: int = ..., tag: int = ..., status: Any = ...) -> Any: ...

    def isend(self, obj: Any, dest: int, tag: int = ...) -> Any: ...

    def send(self, obj: Any, dest: int, tag: int = ...) -> None: ...

    def Split(self, color: int = ..., key: int = ...) -> Any: ...

    def Dup(self) -> Any: ...

    def Free(self) -> None: ...

    def Is_inter(self) -> bool: ...

    def Abort(self, errorcode: int = ...) -> None: ...


class SelfComm:
    """A size-1 stand-in for ``MPI.COMM_WORLD`` when no MPI library can be loaded."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def gather(self, obj: Any, root: int = 0) -> list[Any]:
        return [obj]

    def allreduce(self, obj: Any, op: Any = None) -> Any:
        return obj

    def Barrier(self) -> None:
        return None

    barrier = Barrier

    def Iprobe(self, source: int = -1, tag: int = -1, status: Any = None) -> bool:
        return False

    def recv(self, buf: Any = None, source: int = -1, tag: int = -1, status: Any = None) -> Any:
        raise RuntimeError("SelfComm.recv: a size-1 communicator has nobody to receive from")

    def isend(self, obj: Any, dest: int, tag: int = 0) -> Any:
        raise RuntimeError("SelfComm.isend: a size-1 communicator has nobody to send to")

    def send(self, obj: Any, dest: int, tag: int = 0) -> None:
        raise RuntimeError("SelfComm.send: a size-1 communicator has nobody to send to")

    def Split(self, color: int = 0, key: int = 0) -> "SelfComm":
        return self  # one process: its only group is itself

    def Dup(self) -> "SelfComm":
        return self  # stateless: nothing to isolate

    def Free(self) -> None:
        return None

    def Is_inter(self) -> bool:
        return False

    def Abort(self, errorcode: int = 1) -> None:
        sys.stderr.flush()
        os._exit(errorcode)


def mpi_module() -> Any | None:
    """``mpi4py.MPI`` if an MPI library loads, else None (logged once)."""
    global _mpi_warning_done
    try:
        from mpi4py import MPI
        return MPI
    except (ImportError, RuntimeError, OSError) as exc:
        if not _mpi_warning_done:
            log.warning("MPI is not available (%s); running as a single process", str(exc).splitlines()[0])
            _mpi_warning_done = True
        return None


def world(comm: Comm | None = None) -> Comm:
    """The communicator to use: ``comm`` if given, else COMM_WORLD, else a SelfComm."""
    if comm is not None:
        return comm
    MPI = mpi_module()
    return SelfComm() if MPI is None else MPI.COMM_WORLD


def world_size(comm: Comm | None = None) -> int:
    """Processes in the MPI world ``comm`` belongs to (COMM_WORLD's size; a SelfComm counts itself)."""
    if comm is None or not isinstance(comm, SelfComm):
        MPI = mpi_module()
        if MPI is not None:
            return int(MPI.COMM_WORLD.Get_size())
    return comm.Get_size() if comm is not None else 1


@contextmanager
def isolated(comm: Comm) -> Iterator[Comm]:
    """A duplicate of ``comm`` for mpiland's own messages, freed on exit (collective over ``comm``).

    Raises :class:`~mpiland.errors.LaunchError` for an intercommunicator (its two
    groups have no common rank 0 to coordinate from).
    """
    if comm.Is_inter():
        raise LaunchError("an intercommunicator was given; pass an intracommunicator (e.g. MPI.COMM_WORLD, or one "
                          "made by Split or Merge)")
    own = comm.Dup()
    try:
        yield own
    finally:
        own.Free()


def agree(comm: Comm, fn: Callable[[], T]) -> T:
    """Run ``fn`` on every rank; if it raised a user error anywhere, raise it everywhere.

    The first failing rank's error is raised on all ranks (prefixed ``rank N:`` when
    N is not 0) and marked ``agreed``, so that no rank needs to abort the others.
    """
    try:
        value, err = fn(), None
    except MpilandError as exc:
        value, err = None, exc
    if comm.Get_size() > 1:
        errors = comm.allgather(None if err is None else (type(err), str(err), comm.Get_rank()))
        first = next((e for e in errors if e is not None), None)
        if first is not None:
            cls, msg, where = first
            shared = cls(msg if where == 0 else f"rank {where}: {msg}")
            shared.agreed = True  # every rank raises it: rank 0 reports it
            raise shared
    if err is not None:
        raise err
    return value  # type: ignore[return-value]


class Backoff:
    """Sleeps that grow from ``first`` to ``longest`` seconds while nothing arrives; :meth:`reset` on a message.

    Polling with ``Iprobe`` and this backoff replaces blocking receives, which
    busy-poll a core in MPICH and Open MPI and slow a rank sharing the node.
    """

    def __init__(self, first: float = 1e-4, longest: float = 5e-3) -> None:
        self.first = first
        self.longest = longest
        self.delay = 0.0

    def reset(self) -> None:
        """Something arrived: the next wait starts short again."""
        self.delay = 0.0

    def wait(self) -> None:
        """Sleep the current delay, then double it (up to ``longest``)."""
        if self.delay:
            time.sleep(self.delay)
        self.delay = min(self.longest, max(self.first, 2 * self.delay))
