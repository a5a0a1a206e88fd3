"""What adaptive refinement (``grid.refine``) saves, and what the interpolated picture loses.

    python benchmarks/refine.py [--tol 0.1 ...] [--threads T] [--out DIR] [--json]

Each case is run twice through ``mpiland run``'s own code (:func:`mpiland.run.run_job`,
one rank): on the full grid, and refined with each ``--tol`` (``grid.refine_tol``;
levels automatic, ε 0.1). Reported per refined run: the fraction of the grid's points
evaluated (the others are ``done`` = 2), its seconds beside the full run's, and the
largest absolute difference of the loss between the full grid and the refined file's
picture (skipped points filled by :func:`mpiland.refine.fill`, bilinear from the
corners of the cell around them), with where it occurs.

Cases:

- ``demo``: ``jobs/quickstart.toml`` as it is (21×21 over [-1, 1]², the trained small
  CNN on the digits test split; the checkpoint is trained first when missing);
- ``demo-auto``: the same with ``grid.x = grid.y = "auto"`` (the range a pre-scan picks);
- ``well``: a sharp minimum on a plateau, L(a, b) = 2 − exp(−(a² + b²)/(2·0.15²)), on
  51×51 over [-1, 1]², evaluated by mpiland through a two-parameter model whose output is
  its weights (``tests/analytic.py``: ``point``, file directions (1, 0) and (0, 1), the loss ``well``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mpiland.jobfile import load_job  # noqa: E402
from mpiland.refine import fill  # noqa: E402
from mpiland.run import run_job  # noqa: E402

ANALYTIC = REPO / "tests" / "analytic.py"
"""The known-function model, data and losses the tests use too (``point``, ``data``, ``well``, ``write_axes``)."""
sys.path.insert(0, str(ANALYTIC.parent))
from analytic import write_axes  # noqa: E402

def _well_job(folder: Path) -> Path:
    files = write_axes(folder)
    me = ANALYTIC
    job = folder / "well.toml"
    job.write_text(f'''name = "well"
[model]
factory = "{me}:point"
[data]
factory = "{me}:data"
[loss]
name = "{me}:well"
accuracy = false
[directions]
kind = "file"
file = {json.dumps(files)}
[grid]
x = [-1.0, 1.0, 51]
y = [-1.0, 1.0, 51]
''')
    return job


def _run(job: Path, out: Path, threads: int, settings: dict[str, object]) -> float:
    spec = load_job(job, values={"output.path": str(out), "run.threads": threads, "run.progress": "none",
                                 **settings})
    start = time.perf_counter()
    run_job(spec)
    return time.perf_counter() - start


def _read(path: Path, metric: str) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return (f[metric][...], f["done"][...], int(f.attrs.get("refine_levels", 0)), f["xcoordinates"][...],
                f["ycoordinates"][...])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tol", type=float, nargs="+", default=[0.1, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="folder for the surfaces (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    os.chdir(REPO)  # the demo job's paths are relative to the repository
    folder = Path(args.out or tempfile.mkdtemp(prefix="mpiland-refine-"))
    folder.mkdir(parents=True, exist_ok=True)
    cases = [("demo", REPO / "jobs/quickstart.toml", {}),
             ("demo-auto", REPO / "jobs/quickstart.toml", {"grid.x": "auto", "grid.y": "auto"}),
             ("well", _well_job(folder), {})]
    rows = []
    for name, job, settings in cases:
        full = folder / f"{name}-full.h5"
        full_seconds = _run(job, full, args.threads, settings)
        reference, _, _, x, y = _read(full, "test_loss")
        for tol in args.tol:
            out = folder / f"{name}-tol{tol:g}.h5"
            seconds = _run(job, out, args.threads, {**settings, "grid.refine": True, "grid.refine_tol": tol})
            values, done, levels, _, _ = _read(out, "test_loss")
            error = np.abs(fill(values, done == 1, levels) - reference)
            worst = np.unravel_index(int(np.argmax(error)), error.shape)
            rows.append({"case": name, "grid": f"{len(x)}×{len(y)}", "range": f"±{x[-1]:g} × ±{y[-1]:g}",
                         "tol": tol, "levels": levels, "evaluated": float((done == 1).mean()),
                         "max_abs_error": float(error.max()), "at": [float(x[worst[0]]), float(y[worst[1]])],
                         "loss_range": [float(np.nanmin(reference)), float(np.nanmax(reference))],
                         "seconds": seconds, "full_seconds": full_seconds})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s); surfaces in {folder}")
    print("| case | grid | range | loss min–max | refine_tol | levels | points evaluated | max abs error "
          "(at) | seconds (full) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['grid']} | {r['range']} | {r['loss_range'][0]:.3g}–{r['loss_range'][1]:.3g} | "
              f"{r['tol']:g} | {r['levels']} | {100 * r['evaluated']:.1f} % | {r['max_abs_error']:.3g} "
              f"({r['at'][0]:.2g}, {r['at'][1]:.2g}) | {r['seconds']:.1f} ({r['full_seconds']:.1f}) |")


if __name__ == "__main__":
    main()
