"""Cost of curvature at one point, relative to a plain loss evaluation, and HVPs per point on a grid, cold and warm.

    python benchmarks/hessian.py [--device cpu|cuda] [--model mlp|cnn] [--dtype float32|float64]
                                 [--part point|grid|both] [--job jobs/curvature.toml] [--grid N] [--threads T] [--json]

The demo model (``mpiland.demo``) is trained briefly on the digits train split
(SGD as in jobs/quickstart.toml, so the spectrum is that of a model near a
minimum), then evaluated on the digits test split (359 samples) resident on the
device, in eval mode. Reported, each a median over ``--repeats`` runs:

- one plain loss evaluation: forward passes and per-sample losses over the data
  under ``torch.inference_mode`` (what the engine pays per grid point);
- one HVP (``HessianOperator.matvec``) with the gradient graphs cached for the
  point (Lanczos's steady state) and without (``cache_mb=0``), as HVPs/s and
  relative to the loss evaluation;
- one eigenvalue pair (λmax, λmin by ``extreme_eigenvalues`` at its default
  tolerance, from a cold cache), in seconds and relative to the loss evaluation.

The grid part (``--part grid``) runs the curvature job ``--job`` (default the demo's
``jobs/curvature.toml``: its checkpoint is trained first when missing, as ``mpiland
run`` does, into ``runs/quickstart/``) through the engine's :class:`Evaluator` on its
grid, or on ``--grid N`` × N points over the same range, twice: every point's Lanczos
from the seeded random vector (cold, the default) and warm-started along the grid's
chains (``hessian.warm_start``: each point of a chain from the point before it, chains of
at most ``hessian.chain`` points of a row, as a run evaluates them). Reported: HVPs per
point of each (and of the warm run's linked points alone), the seconds, and the largest difference of λmax and
λmin between the two in units of the stop rule's bound tol·max(|λ|, 0.01·ρ) (each
value is within one unit of an eigenvalue, so two runs that found the same one differ
by at most 2). The machine's load average is recorded before and after; torch runs on
``--threads`` threads (default 1, steadier on a shared machine). Training is not
bit-reproducible across thread counts, and the HVP counts depend on the trained
model, so a SHA-256 of the checkpoint's weights is recorded beside them.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dataclasses import replace  # noqa: E402

import numpy as np  # noqa: E402

from mpiland.curvature import FLOOR, HessianOperator, extreme_eigenvalues  # noqa: E402
from mpiland.data import bn_inputs, load_split  # noqa: E402
from mpiland.demo import digits_cnn, digits_mlp  # noqa: E402
from mpiland.directions import CurvatureInputs, make_directions  # noqa: E402
from mpiland.engine import Evaluator, resolve_loss  # noqa: E402
from mpiland.grid import Grid, chain_block, chain_links, resolve_grid  # noqa: E402
from mpiland.jobfile import load_job  # noqa: E402
from mpiland.layout import ParamLayout  # noqa: E402
from mpiland.models import build_model, load_checkpoint  # noqa: E402
from mpiland.spec import DataSpec, Job  # noqa: E402
from mpiland.train import train_model  # noqa: E402

MODELS = {"mlp": digits_mlp, "cnn": digits_cnn}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def timed(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median wall-clock seconds of ``fn()``, with the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train(model: torch.nn.Module, epochs: int) -> None:
    """SGD on the digits train split, as the quickstart job trains the demo model."""
    split = load_split(DataSpec(), "train")
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(split), generator=gen)
        for start in range(0, len(split), 64):
            idx = order[start: start + 64]
            opt.zero_grad(set_to_none=True)
            per_sample_ce(model(split.inputs[idx]), split.targets[idx]).mean().backward()
            opt.step()
    model.eval()


def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = MODELS[args.model]()
    train(model, args.epochs)
    model.to(device)
    test = load_split(DataSpec(), "test")
    batches = [(x.to(device), y.to(device)) for x, y in zip(test.inputs.split(args.batch_size),
                                                            test.targets.split(args.batch_size))]
    layout = ParamLayout.from_model(model)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_eval() -> float:
        with torch.inference_mode():
            total = torch.zeros((), device=device, dtype=torch.float64)
            for x, y in batches:
                total += per_sample_ce(model(x), y).sum()
            return float(total) / len(test)

    forward_s = timed(loss_eval, device, args.repeats)
    v = torch.randn(layout.numel, generator=torch.Generator().manual_seed(1)).to(device)
    cached = HessianOperator(model, layout, batches, per_sample_ce, dtype)
    uncached = HessianOperator(model, layout, batches, per_sample_ce, dtype, cache_mb=0)
    hvp_s = timed(lambda: cached.matvec(theta, v), device, args.repeats)
    hvp_uncached_s = timed(lambda: uncached.matvec(theta, v), device, args.repeats)

    op = HessianOperator(model, layout, batches, per_sample_ce, dtype)
    results = []

    def eigen_pair() -> None:
        op.clear_cache()
        results.append(extreme_eigenvalues(op, theta, tol=args.tol))

    pair_s = timed(eigen_pair, device, max(1, args.repeats // 5), warmup=1)
    pair = results[-1]
    return {
        "model": args.model, "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "parameters": layout.numel, "samples": len(test), "batches": len(batches),
        "loss_eval_s": forward_s,
        "hvp_s": hvp_s, "hvps_per_s": 1.0 / hvp_s, "hvp_over_forward": hvp_s / forward_s,
        "hvp_uncached_s": hvp_uncached_s, "hvp_uncached_over_forward": hvp_uncached_s / forward_s,
        "eigen_pair_s": pair_s, "eigen_pair_over_loss_eval": pair_s / forward_s,
        "lam_max": pair.lam_max, "lam_min": pair.lam_min, "lanczos_iterations": pair.iterations,
        "converged": pair.converged, "tol": args.tol,
    }


def grid_job(path: str, points: int) -> Job:
    """The job file at ``path``, its grid resampled to ``points`` per axis over the same range (0: as it is)."""
    job = load_job(path)
    if not points:
        return job
    axes = [("x", job.grid.x)] + ([("y", job.grid.y)] if job.grid.y is not None else [])
    values = [v.values() for _, v in axes]
    return load_job(path, [f"grid.{name}=[{float(v[0])!r}, {float(v[-1])!r}, {points}]"
                           for (name, _), v in zip(axes, values)])


def run_grid(args: argparse.Namespace) -> dict[str, object]:
    """HVPs per point of the job's curvature, cold and warm-started, on the job's grid (see the module docstring)."""
    job = grid_job(args.job, args.grid)
    spec = job.hessian
    if not spec.enabled:
        raise SystemExit(f"{args.job}: [hessian] enabled is not true; the grid part needs per-point curvature")
    device = torch.device(args.device)
    dtype = getattr(torch, job.model.dtype)
    ckpt = job.model.checkpoint
    trained = False
    if ckpt is not None and not Path(ckpt).exists():
        if job.train is None:
            raise SystemExit(f"{ckpt}: missing and the job has no [train] section")
        train_model(build_model(job.model), job, load_split(replace(job.data, subset=0), "train"))
        trained = True
    model = build_model(job.model)
    if ckpt is not None:
        load_checkpoint(model, ckpt)
    splits = [load_split(job.data, s) for s in job.data.splits]
    loss_fn = resolve_loss(job.loss)
    if job.directions.kind == "hessian":
        split = next(s for s in splits if s.name == spec.splits[0])
        inputs = CurvatureInputs(spec, split, loss_fn, job.data.batch_size, device, dtype)
        directions = make_directions(copy.deepcopy(model), job.directions, job.grid.dims, inputs)
    else:
        directions = make_directions(model, job.directions, job.grid.dims)
    bn_data = None
    if job.model.bn == "recompute":
        bn_data = bn_inputs(load_split(replace(job.data, subset=0), "train"), job.model.bn_batches,
                            job.data.batch_size, job.data.seed)
    grid = Grid.from_spec(resolve_grid(job.grid, directions))
    coords = grid.coords(np.arange(grid.size))
    sha = hashlib.sha256()
    for t in model.state_dict().values():  # the weights, not the file (whose zip records a temporary name)
        sha.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest = sha.hexdigest()[:12]
    out: dict[str, object] = {"job": args.job, "grid": list(grid.shape), "points": grid.size, "tol": spec.tol,
                              "max_iter": spec.max_iter, "trained_checkpoint": trained, "weights_sha256": digest,
                              "load_before": list(os.getloadavg())}
    values = {}
    row = grid.shape[-1]
    links = chain_links(np.arange(grid.size), row, chain_block(1, row, spec.chain))
    out["chain"] = spec.chain
    for method in ("cold", "warm"):
        ev = Evaluator(model, directions, splits, job.loss, device, dtype=dtype, batch_size=job.data.batch_size,
                       memory_budget_mb=job.data.memory_budget_mb, mode=job.model.mode, bn_data=bn_data,
                       hessian=spec)
        assert ev.curvature is not None
        ev.curvature.warm_start = method == "warm"
        per_point = []
        t0 = time.perf_counter()
        for i in range(grid.size):
            before = ev.curvature.hvps()
            v, _ = ev.evaluate_points(coords[i: i + 1], links=links[i: i + 1])
            per_point.append(ev.curvature.hvps() - before)
            for m in ("max", "min"):
                values.setdefault((method, m), []).extend(v[f"{s}_hess_{m}"][0] for s in spec.splits)
        seconds = time.perf_counter() - t0
        out[method] = {"hvps_per_point": float(np.mean(per_point)), "hvps_min": int(min(per_point)),
                       "hvps_max": int(max(per_point)),
                       "hvps_per_linked_point": float(np.mean(np.array(per_point)[links])) if links.any() else None,
                       "seconds": seconds, "seconds_per_point": seconds / grid.size}
    cold_max, cold_min = (np.array(values[("cold", m)]) for m in ("max", "min"))
    bound = spec.tol * np.maximum(np.abs(np.stack([cold_max, cold_min])),
                                  FLOOR * np.maximum(np.abs(cold_max), np.abs(cold_min)))
    for i, m in enumerate(("max", "min")):
        diff = np.abs(np.array(values[("warm", m)]) - np.array(values[("cold", m)]))
        out[f"lam_{m}_max_abs_diff"] = float(diff.max())
        out[f"lam_{m}_max_diff_over_bound"] = float((diff / bound[i]).max())
    cold, warm = out["cold"], out["warm"]
    assert isinstance(cold, dict) and isinstance(warm, dict)
    out["hvp_ratio"] = cold["hvps_per_point"] / warm["hvps_per_point"]
    out["load_after"] = list(os.getloadavg())
    return out


def print_grid(r: dict[str, object]) -> None:
    cold, warm = r["cold"], r["warm"]
    assert isinstance(cold, dict) and isinstance(warm, dict)
    print(f"{r['job']}: {r['points']} points {r['grid']}, tol {r['tol']:g}, {torch.get_num_threads()} thread(s), "
          f"load {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}, weights sha256 {r['weights_sha256']}"
          + (" (trained now)" if r["trained_checkpoint"] else ""))
    for name, c in (("cold start (random)", cold), (f"warm (chains of {r['chain']})", warm)):
        print(f"  {name:22s} {c['hvps_per_point']:6.2f} HVPs per point ({c['hvps_min']}–{c['hvps_max']}), "
              f"{c['seconds_per_point'] * 1e3:7.1f} ms per point")
    print(f"  {r['hvp_ratio']:.2f}x fewer HVPs per point warm; {warm['hvps_per_linked_point']:.2f} at a linked point")
    print(f"  largest |warm - cold|: λmax {r['lam_max_max_abs_diff']:.3g} ({r['lam_max_max_diff_over_bound']:.3f} "
          f"tol bounds), λmin {r['lam_min_max_abs_diff']:.3g} ({r['lam_min_max_diff_over_bound']:.3f} tol bounds)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batch-size", type=int, default=512, help="samples per batch (the engine's data.batch_size)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs before measuring (0: at initialisation)")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of the eigenvalue pair")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per figure (median)")
    parser.add_argument("--part", choices=["point", "grid", "both"], default="both",
                        help="the one-point costs, the grid's HVPs per point cold and warm, or both")
    parser.add_argument("--job", default=str(REPO / "jobs" / "curvature.toml"), help="curvature job of the grid part")
    parser.add_argument("--grid", type=int, default=0, help="points per axis over the job's range (0: the job's grid)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier when shared)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    os.chdir(REPO)  # the job's relative paths (checkpoint, data) are the repository's
    result: dict[str, object] = {"load_start": list(os.getloadavg())}
    if args.part in ("point", "both"):
        result["point"] = run(args)
    if args.part in ("grid", "both"):
        result["grid_part"] = run_grid(args)
    if args.json:
        print(json.dumps(result))
        return
    if "grid_part" in result:
        grid = result["grid_part"]
        assert isinstance(grid, dict)
        print_grid(grid)
    if "point" not in result:
        return
    r = result["point"]
    assert isinstance(r, dict)
    print(f"{r['model']} on {r['device']} ({r['dtype']}, {r['threads']} threads): {r['parameters']:,} parameters, "
          f"{r['samples']} samples in {r['batches']} batch(es)")
    print(f"  plain loss evaluation     {r['loss_eval_s'] * 1e3:9.2f} ms  (float32 forward, inference_mode)")
    print(f"  HVP (graph cached)        {r['hvp_s'] * 1e3:9.2f} ms  {r['hvps_per_s']:8.1f} HVPs/s  "
          f"{r['hvp_over_forward']:5.2f}x the forward pass")
    print(f"  HVP (graph rebuilt)       {r['hvp_uncached_s'] * 1e3:9.2f} ms  {1 / r['hvp_uncached_s']:8.1f} HVPs/s  "
          f"{r['hvp_uncached_over_forward']:5.2f}x the forward pass")
    print(f"  eigenvalue pair (tol {r['tol']:g}) {r['eigen_pair_s'] * 1e3:9.2f} ms  "
          f"{r['eigen_pair_over_loss_eval']:6.1f}x a loss evaluation  ({r['lanczos_iterations']} Lanczos steps, "
          f"converged: {r['converged']})")
    print(f"  lambda_max = {r['lam_max']:.6g}, lambda_min = {r['lam_min']:.6g}")


if __name__ == "__main__":
    main()
