"""Launch checks and placement: node-local rank, device binding, threads per rank and how they wait.

Every launcher variable mpiland reads is mapped here, in :data:`LAUNCHER_VARS`,
and nowhere else. The launch check and the node-local rank are about the
processes the launcher started, so they look at ``COMM_WORLD`` whatever
communicator a run was given: independent processes each running on
``COMM_SELF`` still spread over the node's GPUs and share its cores.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, MutableMapping
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


WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
"""How idle OpenMP threads wait (the standard variable, GNU's and Intel's spin limits): a value set in any of
them is the user's choice, and mpiland leaves them all alone."""

BUSY_POLICY = "PASSIVE"
"""The ``OMP_WAIT_POLICY`` mpiland sets when the machine is busy: a thread out of work sleeps at once.

The OpenMP runtime torch uses reads the policy once, when torch is imported. Its own
default (GNU libgomp: spin about 300,000 times, milliseconds, before sleeping) is the
fastest on idle cores, but where other processes keep the cores busy the spinning
threads take the time slices the working ones need, and every point of a run can
take 10-40 times as long. Sleeping threads keep a loaded run near its share of the
cores, but on idle cores they cost a wake-up per parallel region (the demo job about
+30 % per point on the 2-core CI machine), so mpiland only chooses it when it sees
other work. Spin counts in between (``GOMP_SPINCOUNT`` 3,000-30,000) were slower than
sleeping under load, and for a small MLP slower than either (``benchmarks/shared_cores.py``
measures the demo job). How threads wait does not change
how the work is split between them, so values never depend on the choice (the
thread count can: see ``threads_history`` in docs/schema.md): a choice made from the
machine's load is safe for reproducibility, and the thread count is left alone.
"""

BUSY_THRESHOLD = 0.5
"""Other runnable tasks per :func:`other_load` at or above which the machine counts as busy. Even one busy
neighbour makes spinning threads lose many times what sleeping ones lose on idle cores, hence so low."""


@dataclass(frozen=True)
class WaitPolicy:
    """How this process's OpenMP threads wait for work, as mpiland found or chose it before torch was imported.

    ``setting``: the OpenMP wait variables the runtime read (``"OMP_WAIT_POLICY=PASSIVE"``), ``""`` when none
    was set (the runtime's default: spin, then sleep). ``source``: ``"mpiland"`` (mpiland chose from
    ``others``, the :func:`other_load` it measured), ``"user"`` (the environment had chosen) or
    ``"torch-first"`` (torch was imported before mpiland, whose choice then could not reach the runtime).
    """

    setting: str
    source: str
    others: float | None = None

    @property
    def spins(self) -> bool:
        """Whether idle threads may spin on a core before sleeping (anything but a plain PASSIVE policy)."""
        return self.setting.replace(" ", "").upper() != f"OMP_WAIT_POLICY={BUSY_POLICY}"

    def describe(self) -> str:
        """The policy and why, in one line for the log."""
        how = ("spin" if "ACTIVE" in self.setting.upper() else "spin, then sleep,") if self.spins else "sleep"
        what = self.setting or "the OpenMP runtime's default"
        if self.source == "user":
            return f"OpenMP threads {how} while they wait ({what}, set by the user)"
        if self.source == "torch-first":
            return (f"OpenMP threads {how} while they wait ({what}): torch was imported before mpiland, which "
                    f"sets OMP_WAIT_POLICY={BUSY_POLICY} when the machine is busy")
        seen = "not measurable" if self.others is None else f"{self.others:.1f} other runnable task(s)"
        if self.spins:
            return (f"OpenMP threads {how} while they wait ({what}: the machine was idle at start, {seen}; set "
                    f"OMP_WAIT_POLICY={BUSY_POLICY} if other work may start during the run)")
        return f"OpenMP threads {how} while they wait ({what}: the machine was busy at start, {seen})"


def _running_threads(task_dir: str) -> int:
    """Threads of one process in state R (running or runnable), from ``/proc/<pid>/task/*/stat``."""
    count = 0
    try:
        tasks = os.listdir(task_dir)
    except OSError:
        return 1
    for task in tasks:
        try:
            with open(f"{task_dir}/{task}/stat") as f:
                count += f.read().rpartition(")")[2].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return max(count, 1)  # the thread reading is running


def other_load(samples: int = 5, interval: float = 0.001, env: Mapping[str, str] | None = None) -> float | None:
    """Other work on this process's cores now, in runnable tasks; None where it cannot be measured.

    Linux: the machine's runnable tasks (``/proc/loadavg``) less this process's own running
    threads and the launcher's other ranks on the node (they start at the same moment and
    are not someone else's load), averaged over ``samples`` readings ``interval`` s apart
    (about 5 ms in all), scaled to the share of the machine's cores this process may use.
    Elsewhere the 1-minute load average stands in, which also holds this user's recent work.
    """
    counts: list[float] = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                runnable = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            break
        counts.append(runnable - _running_threads("/proc/self/task"))
        if i + 1 < samples:
            time.sleep(interval)
    siblings = max(0, (launcher_int("local_size", dict(env) if env is not None else None) or 1) - 1)
    if counts:
        others = sum(counts) / len(counts)
    else:
        try:
            others = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
    total = os.cpu_count() or 1
    return max(0.0, others - siblings) * min(_usable_cores(), total) / total


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_wait_policy: WaitPolicy | None = None


def choose_wait_policy(env: MutableMapping[str, str] | None = None, modules: Mapping[str, object] | None = None,
                       load: float | None = None) -> WaitPolicy:
    """Let torch's OpenMP threads sleep while they wait when the machine is busy, unless the user chose.

    When none of :data:`WAIT_VARS` is in ``env`` (``os.environ``) and torch is not in
    ``modules`` (``sys.modules``) yet, measures :func:`other_load` (or takes ``load``) and at
    :data:`BUSY_THRESHOLD` or above, or when it cannot be measured, sets ``OMP_WAIT_POLICY``
    to :data:`BUSY_POLICY`; on an idle machine it leaves the runtime's default. A user's
    value, even an empty one, wins. ``import mpiland`` calls it (so does the command line,
    which finds the choice made); child processes such as mpiexec's ranks and DataLoader
    workers inherit the variable. On the process's own environment it decides once and
    remembers the result for :func:`wait_policy`.
    """
    global _wait_policy
    real = env is None
    if real and _wait_policy is not None:
        return _wait_policy
    env = os.environ if env is None else env
    modules = sys.modules if modules is None else modules
    chosen = [f"{name}={env[name]}" for name in WAIT_VARS if name in env]
    if chosen:
        policy = WaitPolicy(" ".join(chosen), "user")
    elif "torch" in modules:
        policy = WaitPolicy("", "torch-first")
    else:
        others = other_load(env=env) if load is None else load
        if others is None or others >= BUSY_THRESHOLD:
            env["OMP_WAIT_POLICY"] = BUSY_POLICY
            policy = WaitPolicy(f"OMP_WAIT_POLICY={BUSY_POLICY}", "mpiland", others)
        else:
            policy = WaitPolicy("", "mpiland", others)
    if real:
        _wait_policy = policy
    return policy


def wait_policy() -> WaitPolicy:
    """The wait policy :func:`choose_wait_policy` found or chose for this process (choosing it now if need be)."""
    return _wait_policy if _wait_policy is not None else choose_wait_policy()


def log_waiting(threads: int, policy: WaitPolicy | None = None, others: float | None = None) -> str:
    """Log how this rank's threads wait and why; returns the message.

    DEBUG, except where the user's setting or an early torch import left more than one
    thread spinning on a machine that is busy now (``others``: :func:`other_load`, measured
    here when None): INFO then, with what to change, since every point may take many times
    longer. mpiland's own choice is only ever logged at DEBUG. The thread count is never
    changed for the load: values may depend on it at rounding level.
    """
    policy = wait_policy() if policy is None else policy
    message = policy.describe()
    if policy.source != "mpiland" and policy.spins and threads > 1:
        others = other_load() if others is None else others
        if others is not None and others >= BUSY_THRESHOLD:
            fix = "unset them or set" if policy.source == "user" else "import mpiland before torch, or set"
            message += (f"; the machine is busy ({others:.1f} other runnable task(s)) and spinning threads can make "
                        f"each point many times slower: {fix} OMP_WAIT_POLICY={BUSY_POLICY} before torch is imported")
            log.info("%s", message)
            return message
    log.debug("%s", message)
    return message


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
    sharing: int = 1
    """Ranks of this node bound to the same device (all of them on a CPU): they share its memory."""


def place(comm: Comm, device_request: str, threads_request: int) -> Placement:
    """Bind this rank to its device and set torch's thread count; log how its threads wait (:func:`log_waiting`)."""
    import torch

    local_rank, local_size = local_rank_and_size(comm)
    device = resolve_device(device_request, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    threads = threads_per_rank(threads_request, local_size)
    torch.set_num_threads(threads)
    log_waiting(threads)
    sharing = sum(resolve_device(device_request, r) == device for r in range(local_size))
    return Placement(comm.Get_rank(), comm.Get_size(), local_rank, local_size, device, threads, max(sharing, 1))
