"""The rank-0 coordinator at scale: mpiland's real protocol with a fixed cost per point, at many ranks.

    python benchmarks/coordinator.py [--ranks 8,32,128] [--cost 0.05] [--chunk 1,auto]
                                     [--seconds 4] [--writer gather|none] [--json]

For every rank count R and chunk size S it launches ``mpiexec -n R`` (the
launcher beside this Python, oversubscribed: the ranks may far outnumber the
cores) and runs :func:`mpiland.protocol.run_protocol` on chunks made by
:func:`mpiland.grid.make_chunks`, exactly as ``mpiland run`` does, with an
evaluator that sleeps ``--cost`` seconds per point and polls before each point.
Sleeping ranks leave the cores free, so what is measured is the protocol: how
fast rank 0 hands out chunks and takes results while it evaluates its own.
The grid has ``seconds × R / cost`` points, so a perfect run lasts ``--seconds``.

Reported per run (one JSON object with --json, a ``runs`` list inside):

* ``chunks_per_s``: chunks rank 0 dispatched (to workers and to itself) per second;
* ``worker_idle_fraction`` (mean and max over workers): the part of the run
  (first rank's start to last rank's end) a worker did not spend evaluating:
  waiting for an answer, the tail, and a late start (``start_skew_s``: how much
  later than the first the last rank left the opening barrier; on an
  oversubscribed machine that is waiting for a core, not the protocol);
* ``efficiency``: the ideal time ``points × cost / R`` over the measured time
  (the slowest rank's, from a common start), and ``protocol_efficiency`` the
  time all ranks spent evaluating over ``R ×`` that time: the same without the
  sleeps' own overrun on a loaded machine (``cost_measured_s``: a point's real
  length);
* ``rank0_service_s_per_chunk``: rank 0's wall time in MPI calls (probe,
  receive, send, including pickling) and in ``deliver`` per worker chunk
  (``rank0_deliver_s_per_chunk``: ``deliver`` alone, per delivered chunk; with
  ``--writer gather``, the default, it writes every result with mpiland's serial
  surface writer as a run with PyPI's h5py does), and
  ``rank0_cpu_s_per_chunk`` rank 0's CPU time per worker chunk; with
  ``rank0_load`` = service time ÷ protocol time (1.0: rank 0 does nothing but
  serve) and ``rank0_points_share`` = rank 0's points ÷ its fair share 1/R.

Waiting ranks never block in MPI (the protocol polls with ``Iprobe`` and a
sleeping backoff), and per-rank figures go to files instead of a collective, so
oversubscription costs mostly start-up time (about 0.3 CPU-seconds a rank). The
collectives around the protocol (the communicator's ``Dup``, one ``Barrier``,
``MPI_Finalize``) spin in MPICH whatever the settings;
``MPIR_CVAR_ENABLE_HEAVY_YIELD=1`` (set here unless the environment sets it)
halves what a waiting rank burns there, and ``-bind-to none`` keeps the launcher
from pinning ranks. docs/scale.md has the capacity model built from these figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class TimedComm:
    """Rank 0's communicator with the wall time of every probe, receive and send added up (for the service cost)."""

    def __init__(self, comm: Any) -> None:
        self._comm = comm
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._comm, name)

    def _timed(self, fn: Any, *args: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kw)
        finally:
            self.seconds += time.perf_counter() - t

    def Iprobe(self, *args: Any, **kw: Any) -> Any:
        """``Iprobe``, timed."""
        return self._timed(self._comm.Iprobe, *args, **kw)

    def recv(self, *args: Any, **kw: Any) -> Any:
        """``recv`` (unpickling included), timed."""
        return self._timed(self._comm.recv, *args, **kw)

    def isend(self, *args: Any, **kw: Any) -> Any:
        """``isend`` (pickling included), timed."""
        return self._timed(self._comm.isend, *args, **kw)


METRICS = ("test_loss", "test_acc", "test_loss_stderr")


def surface_writer(path: Path, shape: tuple[int, int]) -> Any:
    """mpiland's serial (gather) writer on a file with the datasets it writes: what rank 0 does per result."""
    import h5py
    import numpy as np

    from mpiland.surface.names import ATTR_METRICS, DONE, SECONDS
    from mpiland.surface.writer import SurfaceWriter

    with h5py.File(path, "w") as f:
        f.attrs[ATTR_METRICS] = list(METRICS)
        for name in (*METRICS, SECONDS):
            f.create_dataset(name, shape=shape, dtype=np.float64, fillvalue=np.nan)
        f.create_dataset(DONE, shape=shape, dtype=np.uint8, fillvalue=0)
    return SurfaceWriter(path)


def rank_main(args: argparse.Namespace) -> None:
    """Under mpiexec: run the protocol once and write this rank's figures to ``OUT/rank.N.json``."""
    import numpy as np
    from mpi4py import MPI

    from mpiland.comm import isolated
    from mpiland.grid import make_chunks
    from mpiland import protocol
    from mpiland.protocol import ChunkResult, run_protocol

    if args.policy == "evaluate":  # the rule before serve-only: rank 0 takes chunks to the end
        protocol.SERVE_ONLY_SHARE = math.inf

    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    n_points = args.points
    # A square-ish 2D grid whose first n_points points are pending (so chunks may cross rows, as in a real run).
    ny = math.ceil(math.sqrt(n_points))
    shape = (math.ceil(n_points / ny), ny)
    done = np.ones(shape[0] * ny, dtype=np.uint8)
    done[:n_points] = 0
    chunks = make_chunks(done.reshape(shape), size, args.chunk_size)
    busy = 0.0
    got = np.zeros(n_points, dtype=np.int64) if rank == 0 else None
    delivered = {"chunks": 0, "points": 0, "seconds": 0.0}
    writer = surface_writer(Path(args.out) / "surface.h5", shape) if rank == 0 and args.writer == "gather" else None

    def evaluate_chunk(chunk: int, poll: Any) -> ChunkResult:
        nonlocal busy
        points = chunks.points(chunk)
        seconds = []
        for _ in points:
            if poll():
                break
            t = time.perf_counter()
            time.sleep(args.cost)
            seconds.append(time.perf_counter() - t)
        n = len(seconds)
        busy += sum(seconds)
        took = np.asarray(seconds)
        values = {m: np.full(n, float(i)) for i, m in enumerate(METRICS)}
        return ChunkResult(chunk, points[:n], values, took, n < len(points))

    def deliver(result: ChunkResult) -> None:
        t = time.perf_counter()
        assert got is not None and result.values is not None and result.seconds is not None
        if writer is not None:
            writer.write(result.points, result.values, result.seconds)
        got[result.points] += 1
        delivered["chunks"] += 1
        delivered["points"] += len(result.points)
        delivered["seconds"] += time.perf_counter() - t

    with isolated(world) as own:
        own.Barrier()
        comm = TimedComm(own) if rank == 0 else own
        cpu0, t0, start = time.process_time(), time.perf_counter(), time.time()
        outcome = run_protocol(comm, len(chunks), evaluate_chunk, deliver, lambda: False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        end = start + wall
    if writer is not None:
        writer.close(release=False)
    figures: dict[str, Any] = {"rank": rank, "wall_s": wall, "start": start, "end": end, "cpu_s": cpu, "busy_s": busy,
                               "chunks": outcome.chunks_evaluated, "points": outcome.points_evaluated}
    if rank == 0:
        assert got is not None and isinstance(comm, TimedComm)
        figures.update(n_chunks=len(chunks), chunk_size=chunks.size, delivered_chunks=delivered["chunks"],
                       delivered_points=delivered["points"], missing=int((got == 0).sum()),
                       repeated=int((got > 1).sum()), writer=args.writer,
                       service_s=comm.seconds + delivered["seconds"], deliver_s=delivered["seconds"])
    tmp = Path(args.out) / f".rank.{rank}.json"
    tmp.write_text(json.dumps(figures))
    tmp.rename(Path(args.out) / f"rank.{rank}.json")


def launch_env() -> dict[str, str]:
    """MPICH settings for many ranks on few cores (see docs/scale.md); the caller's own values win."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MPIR_CVAR_ENABLE_HEAVY_YIELD", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def mpiexec() -> str:
    """The MPI launcher beside this Python (the ``mpich`` extra's), else the first on PATH."""
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found is None:
        raise SystemExit("mpiexec not found: install mpiland with the mpich extra (pip install -e '.[mpich]')")
    return found


def measure(ranks: int, cost: float, chunk: int, seconds: float, writer: str, timeout: float,
            policy: str = "auto") -> dict[str, Any]:
    """One launch at ``ranks`` ranks; the figures of all ranks combined into one summary.

    ``policy``: ``auto``, mpiland's rule (rank 0 only serves once serving takes more than
    ``protocol.SERVE_ONLY_SHARE`` of its time); ``evaluate``: rank 0 evaluates to the end.
    """
    n_points = max(ranks, round(seconds * ranks / cost))
    with tempfile.TemporaryDirectory(prefix="mpiland-coord-") as out:
        cmd = [mpiexec(), "-n", str(ranks), "-bind-to", "none", sys.executable, str(Path(__file__).resolve()),
               "--rank-main", "--out", out, "--points", str(n_points), "--cost", repr(cost),
               "--chunk-size", str(chunk), "--writer", writer, "--policy", policy]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=REPO, env=launch_env(), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"{ranks} ranks did not finish within {timeout:g} s; raise --timeout or lower --ranks")
        launch = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"benchmark run at {ranks} ranks failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
        per_rank = [json.loads((Path(out) / f"rank.{r}.json").read_text()) for r in range(ranks)]
    return {**summarize(per_rank, cost, launch), "policy": policy}


def summarize(per_rank: list[dict[str, Any]], cost: float, launch_s: float) -> dict[str, Any]:
    """The run's figures from every rank's own (rank 0 first)."""
    r0 = per_rank[0]
    ranks = len(per_rank)
    # One clock for all ranks (they share the machine): from the first rank's start to the last one's end.
    first, last = min(r["start"] for r in per_rank), max(r["end"] for r in per_rank)
    wall = last - first
    points = r0["delivered_points"]
    ideal = points * cost / ranks
    idle = [1.0 - r["busy_s"] / wall for r in per_rank[1:]]
    worker_chunks = r0["delivered_chunks"] - r0["chunks"]
    busy = sum(r["busy_s"] for r in per_rank)
    return {
        "ranks": ranks, "chunk_size": r0["chunk_size"], "points": points, "chunks": r0["n_chunks"],
        "missing_points": r0["missing"], "repeated_points": r0["repeated"], "writer": r0["writer"], "protocol_s": round(wall, 3), "ideal_s": round(ideal, 3),
        "launch_s": round(launch_s, 2), "start_skew_s": round(max(r["start"] for r in per_rank) - first, 3),
        "chunks_per_s": round(r0["delivered_chunks"] / r0["wall_s"], 1),
        "points_per_s": round(points / wall, 1), "ideal_points_per_s": round(ranks / cost, 1),
        "efficiency": round(ideal / wall, 4),
        "protocol_efficiency": round(busy / (ranks * wall), 4),
        "cost_measured_s": round(busy / points, 6) if points else None,
        "worker_idle_fraction": round(sum(idle) / len(idle), 4) if idle else 0.0,
        "worker_idle_fraction_max": round(max(idle), 4) if idle else 0.0,
        "rank0_points_share": round(r0["points"] / points * ranks, 3),
        "rank0_service_s_per_chunk": round(r0["service_s"] / worker_chunks, 7) if worker_chunks else None,
        "rank0_deliver_s_per_chunk": round(r0["deliver_s"] / r0["delivered_chunks"], 7),
        "rank0_cpu_s_per_chunk": round(r0["cpu_s"] / worker_chunks, 7) if worker_chunks else None,
        "rank0_load": round(r0["service_s"] / r0["wall_s"], 4),
        "worker_cpu_s_per_chunk": round(sum(r["cpu_s"] for r in per_rank[1:]) / max(1, worker_chunks), 7),
    }


def parse_list(text: str, auto_ok: bool) -> list[int]:
    """``"8,32,128"`` -> [8, 32, 128]; ``auto`` (chunk sizes only) -> 0, mpiland's own choice."""
    out = []
    for word in text.split(","):
        word = word.strip()
        if auto_ok and word == "auto":
            out.append(0)
            continue
        try:
            value = int(word)
        except ValueError:
            raise SystemExit(f"{word!r} in {text!r} is not a whole number{' or auto' if auto_ok else ''}")
        if value < (1 if not auto_ok else 0):
            raise SystemExit(f"{word!r} in {text!r} must be at least 1")
        out.append(value)
    return out


def main() -> None:
    """Parse the options and run every (ranks, chunk size) pair, or one rank's part under mpiexec."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", default="8,32,128", help="comma-separated rank counts (default 8,32,128)")
    ap.add_argument("--cost", type=float, default=0.05, help="seconds each point costs (a sleep; default 0.05)")
    ap.add_argument("--chunk", default="1,auto",
                    help="comma-separated points per chunk; auto: mpiland's default for the grid (default 1,auto)")
    ap.add_argument("--seconds", type=float, default=4.0, help="length of a perfect run (default 4)")
    ap.add_argument("--writer", choices=("gather", "none"), default="gather",
                    help="gather: rank 0 writes every result with mpiland's serial surface writer, as a run "
                         "with PyPI's h5py does; none: results are only counted (default gather)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds one launch may take (default 600)")
    ap.add_argument("--policy", choices=("auto", "evaluate", "both"), default="auto",
                    help="rank 0: auto (mpiland's rule: it stops evaluating when serving takes over a quarter of "
                         "its time), evaluate (it evaluates to the end), both (alternate the two, each case twice)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--points", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--chunk-size", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_main:
        rank_main(args)
        return
    if args.cost <= 0 or args.seconds <= 0:
        raise SystemExit("--cost and --seconds must be positive")
    policies = ["evaluate", "auto", "evaluate", "auto"] if args.policy == "both" else [args.policy]
    runs = [measure(r, args.cost, c, args.seconds, args.writer, args.timeout, p)
            for r in parse_list(args.ranks, False) for c in parse_list(args.chunk, True) for p in policies]
    out = {"cost_s": args.cost, "seconds": args.seconds, "cores": len(os.sched_getaffinity(0)),
           "load_average": round(os.getloadavg()[0], 2), "mpiexec": mpiexec(),
           "env": {k: v for k, v in launch_env().items() if k.startswith("MPIR_CVAR_")}, "runs": runs}
    if args.json:
        print(json.dumps(out))
        return
    print(f"cost {args.cost:g} s/point, perfect run {args.seconds:g} s, {out['cores']} cores "
          f"(load {out['load_average']})")
    print(f"{'rank 0':>8} {'ranks':>5} {'chunk':>5} {'chunks/s':>9} {'eff':>6} {'p.eff':>6} {'idle':>6} {'idle max':>8} "
          f"{'svc us/chunk':>12} {'r0 load':>7} {'r0 share':>8} {'launch s':>8}")
    for r in runs:
        svc = "-" if r["rank0_service_s_per_chunk"] is None else f"{r['rank0_service_s_per_chunk'] * 1e6:.0f}"
        print(f"{r['policy']:>8} {r['ranks']:>5} {r['chunk_size']:>5} {r['chunks_per_s']:>9.1f} {r['efficiency']:>6.3f} "
              f"{r['protocol_efficiency']:>6.3f} {r['worker_idle_fraction']:>6.3f} {r['worker_idle_fraction_max']:>8.3f} {svc:>12} "
              f"{r['rank0_load']:>7.3f} {r['rank0_points_share']:>8.2f} {r['launch_s']:>8.1f}")


if __name__ == "__main__":
    main()
