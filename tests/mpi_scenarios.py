"""Scenario scripts run under ``mpiexec`` by the tests, and the models they use.

``python tests/mpi_scenarios.py SCENARIO DIR``: every rank writes its result as
JSON to ``DIR/result.<world rank>.json`` (one file per rank: ranks sharing one
stdout can interleave their lines). Also importable (model
factories for job files: ``tests/mpi_scenarios.py:NAME``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _world_rank() -> int:
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_rank()


class StopsRankZero(nn.Module):
    """A slow digits MLP; rank 0 sends itself SIGTERM once rank 1 is evaluating (``marker`` file from rank 1)."""

    def __init__(self, delay: float, marker: str, after: int) -> None:
        super().__init__()
        self.delay, self.marker, self.after = delay, Path(marker), after
        self.calls = 0
        self.sent = False
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        rank = _world_rank()
        if rank == 1 and self.calls == self.after:
            self.marker.write_text("rank 1 is evaluating")
        if rank == 0 and not self.sent and self.marker.exists():
            self.sent = True
            os.kill(os.getpid(), signal.SIGTERM)  # a stop on rank 0 only, while it serves rank 1 between points
        time.sleep(self.delay)
        return self.net(x)


def stops_rank_zero(delay: float = 0.1, marker: str = "marker", after: int = 4) -> nn.Module:
    return StopsRankZero(delay, marker, after)


def _job(out: Path, name: str, model: str = 'factory = "mpiland.demo:digits_mlp"\nkwargs = { hidden = 16 }',
         grid: str = "x = [-1.0, 1.0, 5]\ny = [-1.0, 1.0, 4]", extra: str = "") -> object:
    from mpiland.jobfile import load_job
    from util import write_job

    return load_job(str(write_job(out, model=model, grid=grid, output=f"{name}.h5", name=f"{name}.toml", extra=extra)))


def scenario_self_comm(out: Path) -> dict:
    """Each process runs its own job on COMM_SELF: launch check, node-local rank and outputs are its own."""
    from mpi4py import MPI

    from mpiland.launch import place
    from mpiland.run import run_job

    rank = MPI.COMM_WORLD.Get_rank()
    placement = place(MPI.COMM_SELF, "cpu", 0)
    summary = run_job(_job(out, f"self{rank}"), comm=MPI.COMM_SELF)
    return {"rank": rank, "local_rank": placement.local_rank, "local_size": placement.local_size,
            "threads": placement.threads, "points": summary.points_evaluated, "total": summary.total_points,
            "ranks": summary.ranks}


def scenario_pending(out: Path) -> dict:
    """A message the caller left pending on its communicator is still there, intact, after run_job."""
    from mpi4py import MPI

    from mpiland.run import run_job

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    job = _job(out, "pending")
    req = comm.isend({"from": "caller", "value": 42}, dest=0, tag=99) if rank == 1 else None
    comm.Barrier()
    summary = run_job(job, comm=comm)
    result: dict = {"rank": rank, "points": summary.points_evaluated}
    if req is not None:
        req.wait()
    if rank == 0:
        result["pending"] = bool(comm.Iprobe(source=1, tag=99))
        result["message"] = comm.recv(source=1, tag=99) if result["pending"] else None
    comm.Barrier()
    return result


def scenario_stop_rank0(out: Path) -> dict:
    """SIGTERM to rank 0 only, while rank 1 is in the middle of a large chunk."""
    from mpi4py import MPI

    from mpiland.run import run_job

    rank = MPI.COMM_WORLD.Get_rank()
    marker = out / "marker"
    job = _job(out, "stop", model=f'factory = "{Path(__file__).resolve()}:stops_rank_zero"\n'
                                  f'kwargs = {{ delay = 0.05, marker = "{marker}", after = 4 }}',
               grid="x = [-1.0, 1.0, 60]", extra="chunk_size = 30\npoints_per_pass = 1\n")
    t0 = time.monotonic()
    summary = run_job(job, comm=MPI.COMM_WORLD)
    return {"rank": rank, "here": summary.points_evaluated_here, "interrupted": summary.interrupted,
            "chunk": 30, "seconds": time.monotonic() - t0}


def scenario_comm(out: Path) -> dict:
    """The comm helper cases of comm_cases.py on COMM_WORLD (any size)."""
    from mpi4py import MPI

    from comm_cases import run_all

    return {"rank": MPI.COMM_WORLD.Get_rank(), "passed": run_all(MPI.COMM_WORLD)}


def scenario_different_models(out: Path) -> dict:
    """ml.landscape where each rank builds its model from another seed (a user's mistake): one agreed error."""
    from mpi4py import MPI

    import mpiland as ml

    rank = MPI.COMM_WORLD.Get_rank()
    torch.manual_seed(rank)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(40, 6, generator=gen), torch.randint(0, 3, (40,), generator=gen))
    torch.manual_seed(0)
    directions = ml.directions.random(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), seed=0)
    try:
        ml.landscape(model, directions, data, x=(-1, 1, 3), y=(-1, 1, 3), comm=MPI.COMM_WORLD, progress="none",
                     out=str(out / "mixed.h5"), settings={"run.threads": 1})
    except ml.MpilandError as exc:
        return {"rank": rank, "error": type(exc).__name__, "message": str(exc)}
    return {"rank": rank, "error": None}


def scenario_batched(out: Path) -> dict:
    """A run whose rank 0 judges itself overloaded at once (share threshold 0): it only serves, and hands out
    consecutive chunks in batches that grow to the limit; the file must be the one-process file."""
    from mpi4py import MPI

    from mpiland import protocol
    from mpiland.run import run_job

    protocol.SERVE_ONLY_SHARE = 0.0
    job = _job(out, "batched", grid="x = [-1.0, 1.0, 13]\ny = [-1.0, 1.0, 9]",
               extra="chunk_size = 1\npoints_per_pass = 1\n")
    summary = run_job(job, comm=MPI.COMM_WORLD)
    return {"rank": MPI.COMM_WORLD.Get_rank(), "here": summary.points_evaluated_here}


class _Lazy(torch.utils.data.Dataset):
    """Digits samples read one at a time (a map-style dataset that is never materialised)."""

    def __init__(self, n: int) -> None:
        from mpiland.data import digits_split

        self.x, self.y = (t[:n] for t in digits_split("test"))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


class _Stream(torch.utils.data.IterableDataset):
    """The same samples as an iterable stream."""

    def __init__(self, n: int) -> None:
        self.data = _Lazy(n)

    def __iter__(self):
        return (self.data[i] for i in range(len(self.data)))


def scenario_groups_stream(out: Path) -> dict:
    """ml.landscape on streamed data (a map-style loader, an iterable stream, batches of unequal size) in point
    groups of the whole world, against the same call at one rank: the arrays must be equal bit for bit."""
    from mpi4py import MPI

    import mpiland as ml
    from mpiland.demo import digits_mlp

    torch.manual_seed(0)
    model = digits_mlp(hidden=16)
    size, rank = MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
    data = {"lazy": torch.utils.data.DataLoader(_Lazy(150), batch_size=40),
            "stream": torch.utils.data.DataLoader(_Stream(130), batch_size=30)}
    settings = {"run.threads": 1, "run.group_size": size, "data.memory_budget_mb": 0.01, "run.points_per_pass": 1}
    common = dict(directions=ml.directions.random(model, seed=3), x=(-1, 1, 3), y=(-1, 1, 2), progress="none")
    grouped = ml.landscape(model, data=data, comm=MPI.COMM_WORLD, settings=settings, **common)
    result: dict = {"rank": rank}
    if rank == 0:
        alone = ml.landscape(model, data=data, comm=MPI.COMM_SELF, settings={**settings, "run.group_size": 1},
                             **common)
        names = [m for m in alone.metrics if m.startswith(("lazy", "stream"))]
        result["metrics"] = names
        result["equal"] = {m: bool(np.array_equal(grouped.metrics[m], alone.metrics[m], equal_nan=True))
                           for m in names}
    return result


SCENARIOS = {"groups_stream": scenario_groups_stream, "self_comm": scenario_self_comm, "pending": scenario_pending, "stop_rank0": scenario_stop_rank0,
             "comm": scenario_comm, "different_models": scenario_different_models, "batched": scenario_batched}

if __name__ == "__main__":
    import logging

    logging.getLogger("mpiland").addHandler(logging.StreamHandler(sys.stderr))
    logging.getLogger("mpiland").setLevel(logging.INFO)
    out = Path(sys.argv[2])
    result = SCENARIOS[sys.argv[1]](out)
    (out / f"result.{_world_rank()}.json").write_text(json.dumps(result))
