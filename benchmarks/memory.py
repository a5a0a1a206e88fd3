"""The memory model measured: bytes per parameter per rank of each part, against mpiland.engine.memory's estimate.

    python benchmarks/memory.py [--hidden 1024] [--json]

Each configuration runs in a fresh process on the CPU: a digits-shaped MLP
(64 → HIDDEN → HIDDEN → 10, n parameters), one small tensor split (512 samples),
an Evaluator at K points per pass and dims 1 or 2, then one pass of K points.
Two measurements, stated per parameter (bytes ÷ n):

- ``tensors``: the bytes of the evaluator's own parameter tensors, read from the
  tensors themselves (``flat``, ``theta0``, ``vectors``, the K × n ``rows``), beside
  what :func:`mpiland.engine.memory.estimate` says for them;
- ``rss``: the peak resident set while the evaluator is made and runs its pass
  (``VmHWM``, reset through ``/proc/self/clear_refs`` once the model and directions
  are made) over the resident set before it (``VmRSS``): the parts the evaluator
  allocates (on a CPU the direction vectors are the caller's, used in place) plus
  activations, allocator slack and the one-time deep copy of the caller's model.

Two more rows: ``bn recompute`` (a BatchNorm MLP with ``model.bn = "recompute"``,
10 batches of 512 drawn inputs) and ``curvature`` (``hessian.enabled`` with
``max_iter`` 20 and 40 at one point). ``estimate`` includes K × one point's
activations on one batch (``activation_bytes``). With --json one JSON object with every row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = '''
import json, sys
import numpy as np, torch
from torch import nn
from mpiland.data import Split
from mpiland.directions import make_directions
from mpiland.engine import EngineOptions, Evaluator
from mpiland.engine.batching import activation_bytes
from mpiland.engine.memory import estimate
from mpiland.spec import DirectionsSpec, HessianSpec, LossSpec

hidden, k, dims, kind, iters = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
torch.set_num_threads(1)
torch.manual_seed(0)
bn = kind == "bn"
layers = [nn.Linear(64, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.ReLU(), nn.Linear(hidden, hidden),
          nn.ReLU(), nn.Linear(hidden, 10)]
model = nn.Sequential(*layers)
g = torch.Generator().manual_seed(0)
split = Split("test", torch.rand(512, 64, generator=g), torch.randint(0, 10, (512,), generator=g))
directions = make_directions(model, DirectionsSpec(), dims)
bn_data = torch.rand(10 * 512, 64, generator=g) if bn else None
hessian = HessianSpec(enabled=True, max_iter=iters, tol=1e-12, splits=("test",)) if kind == "curvature" else None
n = sum(p.numel() for p in model.parameters())
acts = activation_bytes(model.eval(), split.inputs)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
import gc; gc.collect()
open("/proc/self/clear_refs", "w").write("5")  # the peak (VmHWM) starts again from the current resident set
before = status("VmRSS")
ev = Evaluator(model, directions, [split], LossSpec(), torch.device("cpu"), batch_size=512, bn_data=bn_data,
               hessian=hessian, options=EngineOptions(points_per_pass=k))
ev.evaluate_coefficients(np.zeros((k, dims)))
after = status("VmHWM")
p = ev.params
held = {"weights": p.flat, "origin": p.theta0, "directions": p.vectors}
if p.rows is not None:
    held["points per pass"] = p.rows
measured = {name: t.nelement() * t.element_size() for name, t in held.items()}
if ev.bn is not None:
    measured["batchnorm"] = ev.bn.inputs.nelement() * ev.bn.inputs.element_size()
est = estimate(n, 4, dims, points_per_pass=k, chain=ev.plan is not None,
               bn_bytes=0 if bn_data is None else bn_data.nelement() * 4, curvature_iter=iters if hessian else 0, activations=acts)
print(json.dumps({"n": n, "measured": measured, "estimate": est.parts, "rss_bytes": after - before,
                  "estimate_total": est.total}))
'''


def run(hidden: int, k: int, dims: int, kind: str, iters: int = 20) -> dict[str, object]:
    """One fresh process: the measured and estimated bytes of one configuration."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(hidden), str(k), str(dims), kind, str(iters)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} K={k} dims={dims} failed:\n{proc.stderr}")
    return {"kind": kind, "k": k, "dims": dims, "iters": iters, **json.loads(proc.stdout.strip().splitlines()[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=1024, help="hidden width of the MLP")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = [run(args.hidden, k, dims, "plain") for dims in (1, 2) for k in (1, 4, 16)]
    rows += [run(args.hidden, 1, 2, "bn"), run(args.hidden, 1, 2, "curvature", 20),
             run(args.hidden, 1, 2, "curvature", 40)]
    load = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if args.json:
        print(json.dumps({"hidden": args.hidden, "rows": rows, "load": load}))
        return
    n = int(str(rows[0]["n"]))
    print(f"MLP 64-{args.hidden}-{args.hidden}-10: n = {n:,} parameters (float32); bytes per parameter")
    print(f"{'config':>28} {'weights':>8} {'origin':>7} {'dirs':>6} {'K rows':>7} {'bn':>6} "
          f"{'estimate':>9} {'peak RSS':>9}")
    for r in rows:
        m, e = r["measured"], r["estimate"]
        assert isinstance(m, dict) and isinstance(e, dict)
        name = f"{r['kind']} K={r['k']} dims={r['dims']}" + (f" it={r['iters']}" if r["kind"] == "curvature" else "")
        print(f"{name:>28} {m['weights'] / n:8.1f} {m['origin'] / n:7.1f} {m['directions'] / n:6.1f} "
              f"{m.get('points per pass', 0) / n:7.1f} {m.get('batchnorm', 0) / n:6.2f} "
              f"{float(str(r['estimate_total'])) / n:9.1f} {float(str(r['rss_bytes'])) / n:9.1f}")
    print(f"load {load[0]} -> {load[1]} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
