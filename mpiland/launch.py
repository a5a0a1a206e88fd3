"""Launch checks and placement: node-local rank, device binding and threads per rank.

Every launcher variable mpiland reads is mapped here, in :data:`LAUNCHER_VARS`,
and nowhere else. The launch check and the node-local rank are about the
processes the launcher started, so they look at ``COMM_WORLD`` whatever
communicator a run was given: independent processes each running on
``COMM_SELF`` still spread over the node's GPUs and share its cores.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from .comm import Comm, SelfComm, mpi_module, world_size
from .errors import LaunchError, WorldTooSmallError

log = logging.getLogger("mpiland")

LAUNCHER_VARS: dict[str, tuple[str, ...]] = {
    # this process's rank among the launcher's processes on its node
    "local_rank": ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
    # the launcher's processes on this node
    "local_size": ("SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"),
    # the launcher's processes in all
    "world_size": ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"),
    # cores SLURM gives each task
    "cpus_per_task": ("SLURM_CPUS_PER_TASK",),
}
"""Launcher variables by meaning: SLURM (srun), Open MPI (mpirun), MPICH Hydra (mpiexec), PMI."""

LOCAL_RANK_VARS = LAUNCHER_VARS["local_rank"]
LOCAL_SIZE_VARS = LAUNCHER_VARS["local_size"]
LAUNCHER_SIZE_VARS = LAUNCHER_VARS["world_size"]


def launcher_int(meaning: str, env: dict[str, str] | None = None) -> int | None:
    """The first launcher variable for ``meaning`` (a :data:`LAUNCHER_VARS` key) that holds a number.

    SLURM's compressed forms (``4(x2)``, ``4,2``) count by their first number.
    """
    env = dict(os.environ) if env is None else env
    for name in LAUNCHER_VARS[meaning]:
        head = env.get(name, "").split("(")[0].split(",")[0]
        if head.isdigit():
            return int(head)
    return None


def _spans_world(comm: Comm, MPI: Any) -> bool:
    """True when ``comm`` holds the same processes as COMM_WORLD (a local comparison, not a collective)."""
    try:
        return bool(MPI.Comm.Compare(comm, MPI.COMM_WORLD) in (MPI.IDENT, MPI.CONGRUENT))
    except Exception:  # not an mpi4py communicator
        return False


def local_rank_and_size(comm: Comm, env: dict[str, str] | None = None) -> tuple[int, int]:
    """This process's rank among COMM_WORLD's processes on its node, and how many there are.

    A run on (a duplicate of) COMM_WORLD splits it by shared memory, a collective
    every rank of the run enters. A run on a smaller communicator cannot ask the
    other processes, so it reads the launcher's variables, which describe COMM_WORLD;
    without them it falls back to ``comm``'s own rank and size.
    """
    env = dict(os.environ) if env is None else env
    MPI = mpi_module() if not isinstance(comm, SelfComm) else None
    if MPI is not None and hasattr(comm, "Split_type") and _spans_world(comm, MPI):
        try:
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)
            try:
                return node.Get_rank(), node.Get_size()
            finally:
                node.Free()
        except Exception as exc:  # some MPI builds lack shared-memory splits
            log.debug("Split_type failed (%s); using launcher variables", exc)
    rank = launcher_int("local_rank", env)
    size = launcher_int("local_size", env)
    if rank is None:
        return comm.Get_rank(), comm.Get_size()
    return rank, max(size or 1, rank + 1)


def check_launch(comm: Comm | None = None, env: dict[str, str] | None = None) -> None:
    """Name the common launch mistake: N singleton processes instead of one world of N ranks.

    The launcher's process count is compared with the size of the MPI world, not of
    ``comm``: a run on ``COMM_SELF`` under ``mpiexec -n 2`` is launched correctly.

    Raises :class:`~mpiland.errors.WorldTooSmallError` (a LaunchError) naming the fix.
    """
    env = dict(os.environ) if env is None else env
    expected = launcher_int("world_size", env)
    if expected and expected > 1 and world_size(comm) == 1:
        if "SLURM_STEP_NUM_TASKS" in env:
            raise WorldTooSmallError(
                f"launched {expected} singleton processes (SLURM step has {expected} tasks but the MPI world has 1 rank): "
                "use `srun --mpi=pmi2` (or pmix) or mpiexec")
        raise WorldTooSmallError(
            f"the launcher started {expected} processes but the MPI world has 1 rank: mpi4py is using a different "
            "MPI library than the launcher; use the mpiexec of the MPI that mpi4py loads")


def resolve_device(request: str, local_rank: int) -> Any:
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
    if requested > 0:
        return requested
    per_task = launcher_int("cpus_per_task", env)
    if per_task:
        return per_task
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


@dataclass(frozen=True)
class Placement:
    """Where one rank runs: its rank in the run's communicator, its place on the node, device and threads."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: Any
    threads: int


def place(comm: Comm, device_request: str, threads_request: int) -> Placement:
    """Bind this rank to its device and set torch's thread count."""
    import torch

    local_rank, local_size = local_rank_and_size(comm)
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = threads_per_rank(threads_request, local_size)
    torch.set_num_threads(threads)
    return Placement(comm.Get_rank(), comm.Get_size(), local_rank, local_size, device, threads)
