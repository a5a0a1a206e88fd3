"""Launcher and device environment: the communicator, node-local rank, device binding and threads.

Every launcher variable mpiland reads is mapped here and nowhere else. Without a
loadable MPI library a single process still runs, on :class:`SelfComm`, a size-1
communicator with the subset of the mpi4py API the protocol uses.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any

from .errors import LaunchError

log = logging.getLogger("mpiland")

STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")
"""Signals that end a run cleanly: SLURM sends them before preemption or the time limit."""

LOCAL_RANK_VARS = ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK")
LOCAL_SIZE_VARS = ("SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE")
LAUNCHER_SIZE_VARS = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")

_mpi_warning_done = False


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


def world(comm: Any = None) -> Any:
    """The communicator to use: ``comm`` if given, else COMM_WORLD, else a SelfComm."""
    if comm is not None:
        return comm
    MPI = mpi_module()
    return SelfComm() if MPI is None else MPI.COMM_WORLD


def _env_int(names: tuple[str, ...], env: dict[str, str]) -> int | None:
    for name in names:
        value = env.get(name, "")
        head = value.split("(")[0].split(",")[0]
        if head.isdigit():
            return int(head)
    return None


def local_rank_and_size(comm: Any, env: dict[str, str] | None = None) -> tuple[int, int]:
    """Node-local rank and node-local size: from a shared-memory split, else launcher variables."""
    env = dict(os.environ) if env is None else env
    MPI = mpi_module() if not isinstance(comm, SelfComm) else None
    if MPI is not None and hasattr(comm, "Split_type"):
        try:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            try:
                return node.Get_rank(), node.Get_size()
            finally:
                node.Free()
        except Exception as exc:  # some MPI builds lack shared-memory splits
            log.debug("Split_type failed (%s); using launcher variables", exc)
    rank = _env_int(LOCAL_RANK_VARS, env)
    size = _env_int(LOCAL_SIZE_VARS, env)
    if rank is None:
        return comm.Get_rank(), comm.Get_size()
    return rank, max(size or 1, rank + 1)


def check_launch(comm: Any, env: dict[str, str] | None = None) -> None:
    """Name the common launch mistake: N singleton processes instead of one world of N ranks."""
    env = dict(os.environ) if env is None else env
    expected = _env_int(LAUNCHER_SIZE_VARS, env)
    if expected and expected > 1 and comm.Get_size() == 1:
        if "SLURM_STEP_NUM_TASKS" in env:
            raise LaunchError(
                f"launched {expected} singleton processes (SLURM step has {expected} tasks but the MPI world has 1 rank): "
                "use `srun --mpi=pmi2` (or pmix) or mpiexec")
        raise LaunchError(
            f"the launcher started {expected} processes but the MPI world has 1 rank: mpi4py is using a different "
            "MPI library than the launcher; use the mpiexec of the MPI that mpi4py loads")


def resolve_device(request: str, local_rank: int) -> "Any":
    """The torch device for this rank: ``cuda:(local_rank % visible GPUs)`` for auto/cuda, CPU if there is none."""
    import torch

    if request == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if request == "auto":
        return torch.device("cuda", local_rank % count) if count else torch.device("cpu")
    if count == 0:
        raise LaunchError(f"run.device = {request!r} but no CUDA device is visible; use device = \"auto\" or \"cpu\"")
    if request == "cuda":
        return torch.device("cuda", local_rank % count)
    index = int(request.split(":")[1])
    if index >= count:
        raise LaunchError(f"run.device = {request!r} but only {count} CUDA device(s) are visible; use cuda:0..{count - 1} or auto")
    return torch.device("cuda", index)


def threads_per_rank(requested: int, local_size: int, env: dict[str, str] | None = None) -> int:
    """Torch threads for one rank: the cores given to it, so ranks sharing a node do not oversubscribe."""
    env = dict(os.environ) if env is None else env
    if requested > 0:
        return requested
    per_task = _env_int(("SLURM_CPUS_PER_TASK",), env)
    if per_task:
        return per_task
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


@dataclass(frozen=True)
class Placement:
    """Where one rank runs."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: Any
    threads: int


def place(comm: Any, device_request: str, threads_request: int) -> Placement:
    """Bind this rank to its device and set torch's thread count."""
    import torch

    local_rank, local_size = local_rank_and_size(comm)
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = threads_per_rank(threads_request, local_size)
    torch.set_num_threads(threads)
    return Placement(comm.Get_rank(), comm.Get_size(), local_rank, local_size, device, threads)


class StopFlag:
    """Set by SIGTERM/SIGUSR1/SIGUSR2 (SLURM preemption, time limit) to end the run cleanly."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None:
            # A second signal (or a launcher cleaning up after an abort) means now:
            # finished points are already safe in the file.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signal = signal.Signals(signum).name
        log.warning("received %s: stopping after the points in flight; the run can be resumed", self.signal)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
