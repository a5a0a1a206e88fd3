"""Cost of curvature at one point, relative to a plain loss evaluation on the same data.

    python benchmarks/hessian.py [--device cpu|cuda] [--model mlp|cnn] [--dtype float32|float64] [--json]

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
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mpiland.data import load_split  # noqa: E402
from mpiland.demo import digits_cnn, digits_mlp  # noqa: E402
from mpiland.layout import ParamLayout  # noqa: E402
from mpiland.curvature import HessianOperator, extreme_eigenvalues  # noqa: E402
from mpiland.spec import DataSpec  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--batch-size", type=int, default=512, help="samples per batch (the engine's data.batch_size)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs before measuring (0: at initialisation)")
    parser.add_argument("--tol", type=float, default=1e-3, help="relative tolerance of the eigenvalue pair")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per figure (median)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    r = run(args)
    if args.json:
        print(json.dumps(r))
        return
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
