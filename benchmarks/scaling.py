"""Parallel efficiency: the demo-size job at 1 rank and at 2 ranks on the same total cores.

    python benchmarks/scaling.py [--job jobs/quickstart.toml] [--cores N] [--axis 41] [--repeats 3] [--json]

Runs the job (its checkpoint is trained first if missing) once as a single
process with N torch threads and once under ``mpiexec -n 2`` with N/2 threads per
rank, each into a fresh surface file, and prints points/s of the evaluation phase
(set-up excluded) and the parallel efficiency on a fixed core budget: the 2-rank
rate ÷ the 1-rank rate (1.0: splitting the cores over ranks loses nothing; the
target is ≥ 0.90). The grid is AXIS × AXIS over the job's ranges (default 41 × 41,
long enough to dwarf start-up noise); each configuration runs REPEATS times
alternately and the median rate is reported. Because one torch process rarely
turns N threads into N× speed on a small model, the script also runs 1 rank
with the per-rank share of cores and reports ``protocol_efficiency_2_ranks`` =
2-rank rate ÷ (2 × that rate): what the coordinator/worker protocol itself keeps
of perfect scaling. With --json it prints one JSON object with
points_per_s_1_rank, points_per_s_2_ranks and efficiency_2_ranks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def worker(job_path: str, output: str, threads: int, axis: int) -> None:
    """Run inside mpiexec: evaluate the job and print rank 0's summary as JSON."""
    from mpiland.jobfile import load_job
    from mpiland.run import run_job

    job = load_job(job_path, values={"output.path": output, "output.overwrite": True, "run.threads": threads,
                                     "run.progress": "none"})
    grid = {"grid.x": [job.grid.x.min, job.grid.x.max, axis]}
    if job.grid.y is not None:
        grid["grid.y"] = [job.grid.y.min, job.grid.y.max, axis]
    job = load_job(job_path, values={"output.path": output, "output.overwrite": True, "run.threads": threads,
                                     "run.progress": "none", **grid})
    from mpiland.comm import world

    comm = world()
    summary = run_job(job, comm=comm)
    if comm.Get_rank() == 0:
        print(json.dumps({"points": summary.points_evaluated, "eval_seconds": summary.eval_seconds,
                          "ranks": summary.ranks}))


def measure(ranks: int, job: str, threads: int, axis: int, tmp: Path) -> dict:
    (tmp / f"scaling{ranks}.h5").unlink(missing_ok=True)  # a file of the same job would be resumed, not redone
    cmd = [sys.executable, __file__, "--worker", "--job", job, "--output", str(tmp / f"scaling{ranks}.h5"),
           "--threads", str(threads), "--axis", str(axis)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
        if mpiexec is None:
            raise SystemExit("mpiexec not found: install mpiland with the mpich extra")
        cmd = [mpiexec, "-n", str(ranks)] + cmd
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark run failed ({' '.join(cmd)}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["points_per_s"] = result["points"] / result["eval_seconds"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="jobs/quickstart.toml")
    ap.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--axis", type=int, default=41, help="grid points per axis")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.job, args.output, args.threads, args.axis)
        return
    half = max(1, args.cores // 2)
    ones, halves, twos = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            ones.append(measure(1, args.job, args.cores, args.axis, Path(tmp))["points_per_s"])
            halves.append(measure(1, args.job, half, args.axis, Path(tmp))["points_per_s"])
            twos.append(measure(2, args.job, half, args.axis, Path(tmp))["points_per_s"])
    one, one_half, two = statistics.median(ones), statistics.median(halves), statistics.median(twos)
    out = {"job": args.job, "cores": args.cores, "grid_points": args.axis ** 2, "repeats": args.repeats,
           "points_per_s_1_rank": round(one, 3), "points_per_s_2_ranks": round(two, 3),
           "efficiency_2_ranks": round(two / one, 3),
           "points_per_s_1_rank_per_rank_cores": round(one_half, 3),
           "protocol_efficiency_2_ranks": round(two / (2 * one_half), 3)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"job {args.job} on {args.cores} cores, {args.axis}x{args.axis} grid, median of {args.repeats}")
        print(f"1 rank  x {args.cores} threads: {out['points_per_s_1_rank']:.2f} points/s")
        print(f"1 rank  x {half} threads: {out['points_per_s_1_rank_per_rank_cores']:.2f} points/s")
        print(f"2 ranks x {half} threads: {out['points_per_s_2_ranks']:.2f} points/s")
        print(f"parallel efficiency at 2 ranks (same cores): {out['efficiency_2_ranks']:.2f}")
        print(f"protocol efficiency at 2 ranks (vs 2 x one rank of {half} threads): "
              f"{out['protocol_efficiency_2_ranks']:.2f}")


if __name__ == "__main__":
    main()
