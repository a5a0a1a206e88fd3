"""Benchmarks of the engine against the physical floor, measured in one run on the same model and data.

The floor for one grid point is one plain ``inference_mode`` forward pass over the
resident evaluation data. For each model :func:`bench_model` measures that floor,
the engine's time per point one point per pass (weights update, loss, accuracy
and standard error included; many points in one call, as a run evaluates a chunk),
and its rate with several points per pass.
Timings synchronise the device and take the median of repeats.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from .data import Split, digits_split
from .demo import digits_cnn, digits_mlp, resnet20, synthetic_cifar
from .directions import random_directions
from .engine import EngineOptions, Evaluator, synchronize
from .spec import DirectionsSpec, LossSpec

SAMPLES = 1024


@dataclass(frozen=True)
class BenchCase:
    """A model and its evaluation data."""

    name: str
    build: Callable[[], torch.nn.Module]
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    batch_size: int
    points: int


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_split("train")
    return x[:SAMPLES], y[:SAMPLES]


CASES: dict[str, BenchCase] = {
    "mlp": BenchCase("mlp", lambda: digits_mlp(hidden=64), _digits, SAMPLES, 200),
    "cnn": BenchCase("cnn", lambda: digits_cnn(channels=8, hidden=32), _digits, SAMPLES, 60),
    "resnet20": BenchCase("resnet20", resnet20, lambda: synthetic_cifar("test", SAMPLES), 256, 3),
}


@dataclass(frozen=True)
class BenchResult:
    model: str
    device: str
    threads: int
    samples: int
    parameters: int
    floor_s_per_point: float
    s_per_point: float
    ratio_to_floor: float
    floor_points_per_s: float
    points_per_pass: int
    batched_points_per_s: float
    batched_speedup: float
    plan: bool = False
    """Whether the model ran through the Linear-chain plan (else as a module, vmapped for K > 1)."""
    points_per_s: dict[int, float] = field(default_factory=dict)
    """Median points/s at each points-per-pass tried (1: one point per pass)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _median_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


PASS_SECONDS = 2.0
"""Batched pass sizes whose pass would take longer than this (at the floor's rate) are not tried."""


def bench_model(case: BenchCase, device: torch.device, repeats: int = 5, options: EngineOptions | None = None) -> BenchResult:
    """Floor, one-point-per-pass and batched figures for one model, all in this process.

    The measurements alternate: each of ``repeats`` rounds times the floor, one point
    per pass and every batched size once, and the ratios are medians of the rounds'
    ratios, so a shared machine's drift between measurements cancels out.
    """
    torch.manual_seed(0)
    model = case.build().to(device).eval()
    inputs, targets = case.data()
    split = Split("test", inputs, targets)
    x_dev = inputs.to(device)
    batches = [x_dev[i: i + case.batch_size] for i in range(0, len(x_dev), case.batch_size)]

    def floor_pass() -> None:
        with torch.inference_mode():
            for xb in batches:
                model(xb)

    directions = random_directions(model, DirectionsSpec(seed=0), 2)
    rng = np.random.default_rng(0)
    opts = options or EngineOptions()

    def engine(points_per_pass: int) -> Evaluator:
        return Evaluator(case.build().to(device).eval(), directions, [split], LossSpec(), device,
                         batch_size=case.batch_size, options=replace(opts, points_per_pass=points_per_pass))

    single = engine(1)
    floor0 = _median_time(floor_pass, device, 3)
    if opts.points_per_pass > 1:
        sizes = [opts.points_per_pass]
    else:
        k_max = single.max_points_per_pass()
        sizes = sorted(k for k in {4, 16, k_max} if 1 < k <= k_max and k * floor0 <= PASS_SECONDS)
    engines = {1: single, **{k: ev for k in sizes if (ev := engine(k)).points_per_pass == k}}
    # As a run evaluates a chunk: many points in one call, in whole passes.
    chunks = {k: rng.uniform(-1, 1, size=(max(case.points // k, 1) * k, 2)) for k in engines}
    floors: list[float] = []
    rates: dict[int, list[float]] = {k: [] for k in engines}
    for _ in range(repeats):
        floors.append(_median_time(floor_pass, device, 3))
        for k, ev in engines.items():
            rates[k].append(len(chunks[k]) / _median_time(lambda: ev.evaluate_points(chunks[k]), device, 1))
    floor = statistics.median(floors)
    per_point = 1.0 / statistics.median(rates[1])
    ratio = 1.0 / statistics.median(f * r for f, r in zip(floors, rates[1]))
    best = max(engines, key=lambda k: statistics.median(rates[k]))
    speedup = statistics.median(f * r for f, r in zip(floors, rates[best]))
    return BenchResult(
        model=case.name, device=str(device), threads=torch.get_num_threads(), samples=len(inputs),
        parameters=sum(p.numel() for p in model.parameters()),
        floor_s_per_point=floor, s_per_point=per_point, ratio_to_floor=ratio,
        floor_points_per_s=1.0 / floor, points_per_pass=best, batched_points_per_s=statistics.median(rates[best]),
        batched_speedup=speedup, plan=single.plan is not None,
        points_per_s={k: round(statistics.median(r), 1) for k, r in rates.items()},
    )


def format_result(r: BenchResult) -> str:
    """One human-readable block per model."""
    return (f"{r.model} ({r.parameters:,} parameters, {r.samples} samples, {r.device}, {r.threads} threads)\n"
            f"  floor (bare forward)       {r.floor_s_per_point * 1e3:9.3f} ms/point  {r.floor_points_per_s:9.1f} points/s\n"
            f"  mpiland, 1 point per pass  {r.s_per_point * 1e3:9.3f} ms/point  ratio to floor {r.ratio_to_floor:.3f}\n"
            f"  mpiland, {r.points_per_pass:2d} points per pass {'':1}{r.batched_points_per_s:9.1f} points/s"
            f"  speed-up over floor {r.batched_speedup:.2f}x\n"
            f"  points/s by points per pass ({'Linear-chain plan' if r.plan else 'the module, vmapped for K > 1'}): "
            + ", ".join(f"{k}: {v:g}" for k, v in r.points_per_s.items()))
