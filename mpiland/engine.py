"""Evaluation engine: loss, accuracy and standard error at grid points, near the cost of a forward pass.

The model's parameters are re-pointed into one flat buffer on the device; a grid
point θ* + a·dx + b·dy is written with a single fused ``addmv`` into that buffer,
never a Python loop over tensors and never a model copy. Data sits on the device
for the whole run when it fits the memory budget and is streamed from (pinned)
host memory otherwise. Per-batch accumulators stay on the device, so a point costs
one host synchronisation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split
from .directions import Directions, ParamLayout
from .errors import JobFileError, ModelError
from .job import LossSpec
from .loader import resolve_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not targets.is_floating_point() and outputs.dim() == 2 and outputs.shape[1] > 1:
        targets = F.one_hot(targets, outputs.shape[1])
    targets = targets.to(outputs.dtype).reshape(outputs.shape)
    return F.mse_loss(outputs, targets, reduction="none").reshape(outputs.shape[0], -1).mean(dim=1)


BUILTIN_LOSSES: dict[str, LossFn] = {
    "cross_entropy": lambda o, t: F.cross_entropy(o, t, reduction="none"),
    "nll": lambda o, t: F.nll_loss(o, t, reduction="none"),
    "mse": _mse,
}


def resolve_loss(spec: LossSpec) -> LossFn:
    """The loss function named by ``loss.name``: per-sample for built-ins, as the user wrote it otherwise."""
    if spec.name in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec.name]
    return resolve_callable(spec.name, "loss.name", JobFileError)


def metric_names(splits: list[str], accuracy: bool) -> list[str]:
    """Dataset names of the metrics the engine produces, in a fixed order."""
    names = []
    for s in splits:
        names += [f"{s}_loss", f"{s}_loss_stderr"] + ([f"{s}_acc"] if accuracy else [])
    return names


def wants_accuracy(spec: LossSpec, split: Split) -> bool:
    """Accuracy applies to classification: integer class targets (``loss.accuracy = "auto"``)."""
    if spec.accuracy != "auto":
        return spec.accuracy == "true"
    return not split.targets.is_floating_point() and split.targets.dim() == 1


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class _DeviceSplit:
    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    resident: bool


class Evaluator:
    """Holds one model replica, its flat parameter buffer, the directions and the data on one device."""

    def __init__(self, model: torch.nn.Module, directions: Directions, splits: list[Split], loss: LossSpec,
                 device: torch.device, *, dtype: torch.dtype = torch.float32, batch_size: int = 512,
                 memory_budget_mb: float = 1024.0, mode: str = "eval") -> None:
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.loss_fn = resolve_loss(loss)
        self.accuracy = wants_accuracy(loss, splits[0])
        self.split_names = [s.name for s in splits]
        self.metrics = metric_names(self.split_names, self.accuracy)
        self.model = model.to(device=device, dtype=dtype)
        self.model.train(mode == "train")
        self.layout = ParamLayout.from_model(self.model)
        if self.layout != directions.layout:
            raise ModelError("the directions were made for another model (parameter names or shapes differ)")
        self.flat = self._flatten_parameters()
        self.theta0 = self.flat.clone()
        self.basis = directions.vectors.to(device=device, dtype=dtype).t().contiguous()
        self._buffers = [b for b in self.model.buffers() if b.is_floating_point() or b.dtype == torch.long]
        self._buffers0 = [b.clone() for b in self._buffers]
        self._restore_buffers = mode == "train" and bool(self._buffers)
        total = sum(s.nbytes for s in splits)
        resident = total <= memory_budget_mb * 2**20
        self.data = [self._place(s, resident) for s in splits]

    def _flatten_parameters(self) -> torch.Tensor:
        params = list(self.model.parameters())
        flat = torch.empty(self.layout.numel, device=self.device, dtype=self.dtype)
        for p, view in zip(params, self.layout.views(flat)):
            view.copy_(p.detach())
            p.data = view
            p.requires_grad_(False)
        return flat

    def _place(self, split: Split, resident: bool) -> _DeviceSplit:
        inputs = split.inputs.to(self.dtype) if split.inputs.is_floating_point() else split.inputs
        targets = split.targets
        if resident:
            return _DeviceSplit(split.name, inputs.to(self.device), targets.to(self.device), True)
        if self.device.type == "cuda":
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return _DeviceSplit(split.name, inputs, targets, False)

    @property
    def resident(self) -> bool:
        return all(d.resident for d in self.data)

    def set_point(self, coords: np.ndarray | list[float]) -> None:
        """Write θ* + Σ_k coords[k]·direction_k into the model with one fused update."""
        c = torch.as_tensor(np.asarray(coords, dtype=np.float64), dtype=self.dtype).to(self.device, non_blocking=True)
        torch.addmv(self.theta0, self.basis, c, out=self.flat)

    def reset(self) -> None:
        """Put θ* back into the model."""
        self.flat.copy_(self.theta0)

    def _split_sums(self, d: _DeviceSplit) -> torch.Tensor:
        """[Σ loss, Σ loss², units, correct, samples] over one split, accumulated on the device."""
        acc = torch.zeros(5, device=self.device, dtype=torch.float64)
        n = d.inputs.shape[0]
        for start in range(0, n, self.batch_size):
            x = d.inputs[start: start + self.batch_size]
            y = d.targets[start: start + self.batch_size]
            if not d.resident:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            out = self.model(x)
            losses = self.loss_fn(out, y).to(torch.float64).reshape(-1)
            acc[0] += losses.sum()
            acc[1] += (losses * losses).sum()
            acc[2] += losses.numel()
            if self.accuracy:
                acc[3] += (out.argmax(dim=1) == y).sum()
            acc[4] += x.shape[0]
        return acc

    def evaluate_current(self) -> dict[str, float]:
        """Metrics of the weights now in the model (all splits)."""
        with torch.inference_mode():
            sums = torch.stack([self._split_sums(d) for d in self.data]).cpu().numpy()
        if self._restore_buffers:
            torch._foreach_copy_(self._buffers, self._buffers0)
        out: dict[str, float] = {}
        for name, (s, s2, units, correct, samples) in zip(self.split_names, sums):
            mean = s / units
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                var = (s2 - units * mean * mean) / (units - 1) if units > 1 else np.nan
                stderr = float(np.sqrt(max(var, 0.0) / units)) if np.isfinite(var) else float("nan")
            out[f"{name}_loss"] = float(mean)
            out[f"{name}_loss_stderr"] = stderr
            if self.accuracy:
                out[f"{name}_acc"] = float(correct / samples)
        return out

    def evaluate_points(self, coords: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Evaluate each row of ``coords`` (k × dims); return metric arrays and per-point seconds."""
        k = coords.shape[0]
        values = {m: np.full(k, np.nan) for m in self.metrics}
        seconds = np.zeros(k)
        for i in range(k):
            t0 = time.perf_counter()
            self.set_point(coords[i])
            point = self.evaluate_current()
            synchronize(self.device)
            seconds[i] = time.perf_counter() - t0
            for m in self.metrics:
                values[m][i] = point[m]
        return values, seconds
