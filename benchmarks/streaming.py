"""Streamed data: peak host memory per rank does not grow with the dataset, and what streaming costs per point.

    python benchmarks/streaming.py [--samples 20000] [--scale 10] [--points 3] [--repeats 2] [--json]

Each run is a fresh process running ``mpiland run``'s job (mpiland.run.run_job) on
a 1D grid of POINTS points with the digits MLP and a ``data.factory`` that returns
a ``DataLoader`` over an ``IterableDataset`` generating each batch of 512 samples
from its index as it is read (nothing is held: the samples exist only while their
batch is evaluated). The figure is the process's peak resident set
(``ru_maxrss``) and the evaluation seconds per point (set-up excluded).

Conditions, alternating (the order reversed every other repeat):

- ``stream N`` and ``stream 10N``: ``data.stream = auto`` (the loader is streamed)
  with ``data.memory_budget_mb = 1``, so no batch is kept on the device;
- ``resident N`` and ``resident 10N``: ``data.stream = false`` (the batches joined
  into tensors) and a 4 GiB budget, so the split sits in memory for the whole run.

Printed: the peak RSS ratio 10N / N while streaming (target within 1.10), the
resident runs' ratio beside it, and streaming's cost per point over resident
(stream N ÷ resident N), with the 1-minute load average before and after.
With --json one JSON object: ``rss_ratio``, ``stream_over_resident``, the medians,
every run and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FACTORY = '''
import math
import torch
from torch.utils.data import DataLoader, IterableDataset

BATCH = 512

class Generated(IterableDataset):
    """n digit-shaped samples, each batch computed from its index when it is read."""
    def __init__(self, n):
        self.n = n
    def __iter__(self):
        for b in range(math.ceil(self.n / BATCH)):
            rows = min(BATCH, self.n - b * BATCH)
            i = torch.arange(b * BATCH, b * BATCH + rows, dtype=torch.float32)
            x = torch.sin(i[:, None] * 0.37 + torch.arange(64, dtype=torch.float32) * 0.11).abs()
            yield x.view(rows, 1, 8, 8), (i.long() * 7) % 10

def data(split, n=1000):
    return DataLoader(Generated(n), batch_size=None)
'''

CHILD = '''
import json, resource, sys
from mpiland.jobfile import load_job
from mpiland.run import run_job
summary = run_job(load_job(sys.argv[1]))
print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "eval_seconds": summary.eval_seconds, "points": summary.points_evaluated}))
'''


def job_text(tmp: Path, name: str, samples: int, stream: str, budget: float, points: int) -> Path:
    """A job file evaluating ``samples`` generated samples as ``data.stream = stream`` says."""
    path = tmp / f"{name}.toml"
    path.write_text(textwrap.dedent(f"""\
        name = "{name}"
        [model]
        factory = "mpiland.demo:digits_mlp"
        kwargs = {{ hidden = 16 }}
        [data]
        factory = "{tmp / 'generated.py'}:data"
        kwargs = {{ n = {samples} }}
        splits = ["test"]
        stream = "{stream}"
        memory_budget_mb = {budget}
        [directions]
        seed = 3
        [grid]
        x = [-1.0, 1.0, {points}]
        [output]
        path = "{tmp / (name + '.h5')}"
        overwrite = true
        [run]
        threads = 1
        progress = "none"
        points_per_pass = 1
        """))
    return path


def run_one(job: Path) -> dict[str, float]:
    """One fresh process: peak RSS (MiB) and evaluation seconds per point."""
    out = job.with_suffix(".h5")
    if out.exists():
        out.unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(job)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{job.name} failed:\n{proc.stderr}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"peak_rss_mib": got["maxrss_kb"] / 1024, "seconds_per_point": got["eval_seconds"] / max(got["points"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=20000, help="N, the smaller dataset")
    ap.add_argument("--scale", type=int, default=10, help="the larger dataset is SCALE × N")
    ap.add_argument("--points", type=int, default=3, help="grid points per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    n, big = args.samples, args.samples * args.scale
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "generated.py").write_text(FACTORY)
        conditions = {"stream N": job_text(tmp, "stream_n", n, "auto", 1.0, args.points),
                      "stream 10N": job_text(tmp, "stream_10n", big, "auto", 1.0, args.points),
                      "resident N": job_text(tmp, "resident_n", n, "false", 4096.0, args.points),
                      "resident 10N": job_text(tmp, "resident_10n", big, "false", 4096.0, args.points)}
        runs: list[dict[str, object]] = []
        for r in range(args.repeats):
            order = list(conditions) if r % 2 == 0 else list(reversed(conditions))
            for name in order:
                result = run_one(conditions[name])
                runs.append({"condition": name, "repeat": r, **result, "load": round(os.getloadavg()[0], 2)})
                if not args.json:
                    print(f"{name:>11}: peak RSS {result['peak_rss_mib']:7.1f} MiB, "
                          f"{result['seconds_per_point'] * 1e3:8.1f} ms/point (load {runs[-1]['load']})", flush=True)
    medians = {name: {key: statistics.median(float(str(x[key])) for x in runs if x["condition"] == name)
                      for key in ("peak_rss_mib", "seconds_per_point")} for name in conditions}
    rss_ratio = medians["stream 10N"]["peak_rss_mib"] / medians["stream N"]["peak_rss_mib"]
    resident_ratio = medians["resident 10N"]["peak_rss_mib"] / medians["resident N"]["peak_rss_mib"]
    cost = medians["stream N"]["seconds_per_point"] / medians["resident N"]["seconds_per_point"]
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result = {"samples": n, "scale": args.scale, "rss_ratio": rss_ratio, "resident_rss_ratio": resident_ratio,
              "stream_over_resident": cost,
              "medians": medians, "runs": runs, "load": load, "cores": os.cpu_count()}
    if args.json:
        print(json.dumps(result))
        return
    print(f"peak RSS streaming {big} / {n} samples: {rss_ratio:.3f} (target <= 1.10); resident: "
          f"{resident_ratio:.3f}")
    print(f"streaming costs {cost:.2f}x resident per point on {n} samples; load {load[0]} -> {load[1]} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
