"""Evaluation engine: loss, accuracy and standard error at grid points, near the cost of a forward pass.

:class:`Evaluator` holds one model replica on one device and composes the parts:

- :mod:`.params`: the parameters as one flat buffer; a point origin + basis · c(a, b)
  is written with one fused ``addmv`` (``addmm`` into a K × n buffer for K points);
- :mod:`.placement`: the data, resident on the device when it fits the budget,
  streamed from (pinned) host memory otherwise;
- :mod:`.batching`: how many points per forward pass, and the vmapped pass;
- :mod:`.bn`: BatchNorm statistics recomputed at each point (``bn = "recompute"``);
- :mod:`.losses`: per-unit or batch-weighted losses, accuracy, their sums on the
  device (one host synchronisation per pass) and the metrics they give.

Whatever the kind of directions, a point is origin + basis · c(a, b) with the
coefficient map of :class:`~mpiland.directions.Directions`; a path with a
comparison line (``variants``) is evaluated once per variant at every point. The
caller's model is never changed: the evaluator works on its own copy.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..curvature import Curvature, axis_labels
from ..curvature import metric_names as curvature_metrics
from ..data import Split
from ..directions import Directions
from ..errors import ModelError
from ..layout import ParamLayout
from ..spec import HessianSpec, LossSpec
from .batching import (MAX_POINTS_PER_PASS, activation_bytes, choose_points_per_pass, make_forward, memory_bound,
                       vmap_failure)
from .bn import BatchNormRecompute, batchnorm_modules
from .checks import check_data_fits
from .losses import BUILTIN_LOSSES, LossSums, metric_names, resolve_loss, split_metrics, wants_accuracy
from .params import FlatParameters
from .placement import DeviceSplit, fits, place_split, synchronize

__all__ = ["AUTOCAST", "BUILTIN_LOSSES", "MAX_POINTS_PER_PASS", "EngineOptions", "Evaluator", "metric_names", "resolve_loss",
           "synchronize", "wants_accuracy"]

log = logging.getLogger("mpiland")
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class EngineOptions:
    """How points are evaluated: batching of points, mixed precision, memory layout, compilation."""

    points_per_pass: int = 0
    batch_memory_mb: float = 512.0
    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False


class Evaluator:
    """Holds one model replica, its flat parameter buffer, the directions and the data on one device."""

    def __init__(self, model: torch.nn.Module, directions: Directions, splits: list[Split], loss: LossSpec,
                 device: torch.device, *, dtype: torch.dtype = torch.float32, batch_size: int = 512,
                 memory_budget_mb: float = 1024.0, mode: str = "eval", options: EngineOptions | None = None,
                 bn_data: torch.Tensor | None = None, hessian: HessianSpec | None = None,
                 copy_model: bool = True) -> None:
        """``bn_data``: training inputs for ``bn = "recompute"``; ``hessian``: curvature at the origin and,
        with ``enabled``, at every point; ``copy_model`` False hands the model over instead of copying it."""
        self.options = options or EngineOptions()
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.builtin_loss = loss.name in BUILTIN_LOSSES
        self.loss_fn = resolve_loss(loss)
        self.accuracy = wants_accuracy(loss, splits[0])
        self.split_names = [s.name for s in splits]
        self.directions = directions
        self.base_metrics = metric_names(self.split_names, self.accuracy)
        if hessian is not None:
            self.base_metrics += curvature_metrics(hessian)
        self.metrics = [v + m for v in directions.variants for m in self.base_metrics]
        self.model = (copy.deepcopy(model) if copy_model else model).to(device=device, dtype=dtype)
        self.model.train(mode == "train")
        self.layout = ParamLayout.from_model(self.model, directions.layout.states)
        if self.layout != directions.layout:
            raise ModelError("the directions were made for another model (parameter names or shapes differ)")
        self.params = FlatParameters(self.model, self.layout, directions, device, dtype)
        self.flat = self.params.flat
        self.bn: BatchNormRecompute | None = None
        if bn_data is not None and batchnorm_modules(self.model):
            x = bn_data.to(dtype) if bn_data.is_floating_point() else bn_data
            self.bn = BatchNormRecompute(self.model, x.to(device), batch_size)
        self._buffers = [b for b in self.model.buffers() if b.is_floating_point() or b.dtype == torch.long]
        self._buffers0 = [b.clone() for b in self._buffers]
        self._restore_buffers = mode == "train" and bool(self._buffers)
        self.data = self._place_data(splits, loss.name, memory_budget_mb)
        self.curvature = None
        if hessian is not None:
            # Resident splits are already on the device: the operators share them.
            self.curvature = Curvature(self.model, {d.name: (d.inputs, d.targets) for d in self.data}, self.loss_fn,
                                       hessian, batch_size, device, dtype)
        self.autocast = AUTOCAST.get(self.options.autocast)
        self.fallback_reason = ""
        self.points_per_pass = 1
        self.use_points_per_pass(self._choose_points_per_pass(mode))

    def _place_data(self, splits: list[Split], loss_name: str, memory_budget_mb: float) -> list[DeviceSplit]:
        """Every split where the engine reads it, each checked to fit the model and the loss."""
        resident = fits(splits, memory_budget_mb)
        data = [place_split(s, self.device, self.dtype, resident, self.options.channels_last) for s in splits]
        for d in data:
            check_data_fits(self.model, d, self.loss_fn, loss_name, self.builtin_loss, self.accuracy,
                            self.batch_size, self.device)
        return data

    @property
    def resident(self) -> bool:
        """Whether every split sits on the device for the whole run."""
        return all(d.resident for d in self.data)

    # -- points per pass -----------------------------------------------------------------

    def _probe_batch(self, n: int | None = None) -> torch.Tensor:
        return self.data[0].inputs[: n or self.batch_size].to(self.device)

    def max_points_per_pass(self) -> int:
        """The largest K whose parameter copies and activations fit ``batch_memory_mb`` (at most 64)."""
        return memory_bound(self.layout, self.flat.element_size(), activation_bytes(self.model, self._probe_batch()),
                            self.options.batch_memory_mb)

    def _choose_points_per_pass(self, mode: str) -> int:
        """K for this run (:func:`~mpiland.engine.batching.choose_points_per_pass`); logs why it is 1."""
        k, self.fallback_reason = choose_points_per_pass(
            self.options.points_per_pass, self.device, recompute_bn=self.bn is not None, mode=mode,
            bound=self.max_points_per_pass,
            vmap_check=lambda: vmap_failure(self.model, self.layout, self.params.theta0, self._probe_batch(2)))
        if self.fallback_reason:
            log.info("evaluating one point per pass: %s", self.fallback_reason)
        return k

    def use_points_per_pass(self, k: int, compile_: bool | None = None) -> None:
        """Evaluate ``k`` points per forward pass from now on (1: one point at a time on the model itself)."""
        self.points_per_pass = k
        self.params.reserve(k)
        self.forward = make_forward(self.model, self.layout, k, self.params.row_views,
                                     self.options.compile if compile_ is None else compile_)

    def batched_pass_works(self) -> bool:
        """Whether vmap runs this model correctly (for a points-per-pass taken from a file)."""
        if self.points_per_pass == 1:
            return True
        return not vmap_failure(self.model, self.layout, self.params.theta0, self._probe_batch(2))

    # -- setting points ------------------------------------------------------------------

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model with one fused update."""
        self.params.set_point(coefficients)
        if self.bn is not None:
            self.bn()

    def _set_points(self, coefficients: np.ndarray) -> int:
        if self.params.rows is None:
            self.set_point(coefficients[0])
            return 1
        return self.params.set_rows(coefficients)

    def reset(self) -> None:
        """Put θ* back into the model."""
        self.params.reset()

    # -- evaluating ----------------------------------------------------------------------

    def _pass(self, coefficients: np.ndarray) -> np.ndarray:
        """Sums (splits × k × sums) for the points in ``coefficients`` (at most points_per_pass rows)."""
        k = self._set_points(coefficients)
        with torch.inference_mode():
            sums = torch.stack([_split_sums(self, d, k) for d in self.data]).cpu().numpy()
        if self._restore_buffers:
            torch._foreach_copy_(self._buffers, self._buffers0)
        return sums

    def evaluate_points(self, coords: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluate each row of grid ``coords`` (n × dims); return metric arrays and per-point seconds.

        Every variant of the path (the path, its comparison line) is evaluated at
        each point; its metrics carry the variant's prefix and the seconds add up.
        """
        values: dict[str, np.ndarray] = {}
        seconds = np.zeros(coords.shape[0])
        for variant in self.directions.variants:
            v, s = self.evaluate_coefficients(self.directions.coefficients(coords, variant))
            values.update({variant + m: a for m, a in v.items()})
            seconds += s
        return values, seconds

    def evaluate_coefficients(self, coefficients: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluate origin + basis · c for each row c of ``coefficients`` (n × m).

        Points go through in passes of ``points_per_pass``; a batched pass's time is
        shared equally by its points.
        """
        n = coefficients.shape[0]
        values = {m: np.full(n, np.nan) for m in self.base_metrics}
        seconds = np.zeros(n)
        for start in range(0, n, self.points_per_pass):
            group = coefficients[start: start + self.points_per_pass]
            t0 = time.perf_counter()
            metrics = _metrics(self.split_names, self._pass(group), self.accuracy)
            if self.curvature is not None and self.curvature.spec.enabled:
                metrics.update(_curvature(self, group))
            synchronize(self.device)
            seconds[start: start + len(group)] = (time.perf_counter() - t0) / len(group)
            for m in self.base_metrics:
                values[m][start: start + len(group)] = metrics[m]
        return values, seconds

    def origin_curvature(self) -> dict[str, float]:
        """Trace and directional curvatures at the origin (root attributes of a new file)."""
        if self.curvature is None:
            return {}
        self.set_point(np.zeros(self.directions.dims))
        return self.curvature.at_origin(self.flat, self.params.basis.t(), axis_labels(self.directions.dims))


def _curvature(ev: Evaluator, coefficients: np.ndarray) -> dict[str, np.ndarray]:
    """Hessian extreme eigenvalues at each point of a group (one point at a time: HVPs need autograd).

    After a one-point pass the model already holds the point (and its recomputed
    BatchNorm statistics); a batched pass wrote its K×n buffer, so each point is set here.
    """
    assert ev.curvature is not None
    rows = []
    for c in coefficients:
        if ev.params.rows is not None:
            ev.set_point(c)
        rows.append(ev.curvature.at_point(ev.flat))
    return {m: np.array([r[m] for r in rows]) for m in rows[0]}


def _metrics(split_names: list[str], sums: np.ndarray, accuracy: bool) -> dict[str, np.ndarray]:
    """Metric arrays of every split from one pass's sums (splits × k × sums)."""
    out: dict[str, np.ndarray] = {}
    for name, split in zip(split_names, sums):
        out.update(split_metrics(name, split, accuracy))
    return out


def _split_sums(ev: Evaluator, d: DeviceSplit, k: int) -> torch.Tensor:
    """Per point the loss sums over one split (see :class:`~mpiland.engine.losses.LossSums`)."""
    sums = LossSums(ev.loss_fn, ev.builtin_loss, ev.accuracy, k, ev.device)
    for x, y in d.batches(ev.batch_size, ev.device):
        if ev.autocast is not None:
            with torch.autocast(ev.device.type, dtype=ev.autocast):
                out = ev.forward(k, x)
            out = out.float()
        else:
            out = ev.forward(k, x)
        sums.add(out, y)
    return sums.result()
