"""Point groups: a job with fewer points than ranks, run with groups of one rank (G = 1) and of all ranks.

    python benchmarks/groups.py [--ranks 2] [--points 1] [--samples 20000] [--repeats 3] [--json]

Runs ``mpiland.run.run_job`` under ``mpiexec -n R`` (the launcher beside this
Python; one thread per rank) on the digits CNN over ``--samples`` synthetic 8×8
images (made from a seed, the same in every run), with a grid of ``--points``
points: with G = 1 the points go to ranks one by one and the other ranks have
nothing to do; with G = R every rank evaluates 1/R of the batches at every point.
G = 1 and G = R alternate ``--repeats`` times; each run's evaluation time (the
run summary's seconds after set-up, on rank 0) is recorded, and the medians'
ratio is printed (``g1_over_gR``: above 1 when the group is faster), with the
machine's load average before and after. The surfaces of the two settings are
compared bit for bit. With ``--json``, one JSON object.
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
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent

DATA = '''
import torch


def data(split, samples=20000):
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(samples, 1, 8, 8, generator=gen)
    y = torch.randint(0, 10, (samples,), generator=gen)
    return x, y
'''


def _job(tmp: Path, points: int, samples: int, group: int, out: str) -> Path:
    path = tmp / f"job-{out}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "groups"
        [model]
        factory = "mpiland.demo:digits_cnn"
        kwargs = {{ channels = 16, hidden = 64 }}
        [data]
        factory = "{tmp / 'synthetic.py'}:data"
        kwargs = {{ samples = {samples} }}
        batch_size = 500
        [directions]
        seed = 1
        [grid]
        x = [-0.5, 0.5, {points}]
        [output]
        path = "{tmp / out}"
        [run]
        threads = 1
        progress = "none"
        points_per_pass = 1
        group_size = {group}
        """))
    return path


def _worker(job: str) -> None:
    """Under mpiexec: run the job; rank 0 prints its evaluation seconds as JSON."""
    from mpi4py import MPI

    from mpiland.jobfile import load_job
    from mpiland.run import run_job

    summary = run_job(load_job(job), comm=MPI.COMM_WORLD)
    if MPI.COMM_WORLD.Get_rank() == 0:
        print(json.dumps({"eval_seconds": summary.eval_seconds, "points": summary.points_evaluated}))


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--points", type=int, default=1)
    p.add_argument("--samples", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if mpiexec is None:
        sys.exit("benchmarks/groups.py: no mpiexec beside this Python or on PATH; install mpich (pip install mpich)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    times: dict[int, list[float]] = {1: [], args.ranks: []}
    load_before = _load()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "synthetic.py").write_text(DATA)
        jobs = {g: _job(tmp, args.points, args.samples, g, f"g{g}.h5") for g in times}
        for _ in range(args.repeats):
            for g, job in jobs.items():
                (tmp / f"g{g}.h5").unlink(missing_ok=True)  # a fresh file each run, never a finished one resumed
                proc = subprocess.run([mpiexec, "-n", str(args.ranks), "-bind-to", "none", sys.executable,
                                       __file__, "--worker", str(job)], capture_output=True, text=True, env=env,
                                      timeout=600)
                if proc.returncode:
                    sys.exit(f"run with group_size = {g} failed:\n{proc.stderr[-2000:]}")
                times[g].append(json.loads(proc.stdout.strip().splitlines()[-1])["eval_seconds"])
        import h5py
        import numpy as np

        with h5py.File(tmp / "g1.h5", "r") as a, h5py.File(tmp / f"g{args.ranks}.h5", "r") as b:
            identical = all(np.array_equal(a[k][...], b[k][...]) for k in ("test_loss", "test_acc", "done"))
    median = {g: statistics.median(t) for g, t in times.items()}
    out = {"ranks": args.ranks, "points": args.points, "samples": args.samples, "threads_per_rank": 1,
           "g1_seconds": times[1], f"g{args.ranks}_seconds": times[args.ranks],
           "g1_over_gR": median[1] / median[args.ranks], "identical": identical,
           "load_before": load_before, "load_after": _load(), "cores": os.cpu_count()}
    if args.json:
        print(json.dumps(out))
        return
    print(f"{args.points} point(s) on {args.ranks} ranks of 1 thread, {args.samples} samples "
          f"(load {load_before:.1f} -> {out['load_after']:.1f} on {out['cores']} cores)")
    print(f"  G = 1: {', '.join(f'{t:.2f}' for t in times[1])} s   G = {args.ranks}: "
          f"{', '.join(f'{t:.2f}' for t in times[args.ranks])} s")
    print(f"  G = 1 / G = {args.ranks}: {out['g1_over_gR']:.2f}x   files identical: {identical}")


if __name__ == "__main__":
    main()
