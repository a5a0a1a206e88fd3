"""Evaluation engine: loss, accuracy and standard error at grid points, near the cost of a forward pass.

The model's parameters are re-pointed into one flat buffer on the device; a grid
point θ* + a·dx + b·dy is written with a single fused ``addmv`` into that buffer,
never a Python loop over tensors and never a model copy. Data sits on the device
for the whole run when it fits the memory budget and is streamed from (pinned)
host memory otherwise. Per-batch accumulators stay on the device, so a pass costs
one host synchronisation.

Several points per forward pass: with ``points_per_pass`` K > 1 the parameters of
K points are written by one ``addmm`` into a (K × n) buffer and the model runs
once over them with ``torch.func.vmap`` + ``functional_call``, which keeps a small
model from leaving most of the device idle. Models vmap cannot run (in-place
updates of buffers, e.g. BatchNorm in train mode) fall back to one point at a
time, with the reason logged.

Whatever the kind of directions, a point is origin + basis · c(a, b) with the
coefficient map of :class:`~mpiland.directions.Directions`; a path with a
comparison line (``variants``) is evaluated once per variant at every point.
``bn = "recompute"`` resets and re-estimates BatchNorm running statistics from
training batches before each point (one point per pass).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .data import Split
from .directions import Directions
from .layout import ParamLayout
from .errors import JobFileError, ModelError
from .spec import HessianSpec, LossSpec
from .userimport import resolve_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
log = logging.getLogger("mpiland")
MAX_POINTS_PER_PASS = 64
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


@dataclass(frozen=True)
class EngineOptions:
    """How points are evaluated: batching of points, mixed precision, memory layout, compilation."""

    points_per_pass: int = 0
    batch_memory_mb: float = 512.0
    autocast: str = "none"
    channels_last: bool = False
    compile: bool = False


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
                 memory_budget_mb: float = 1024.0, mode: str = "eval", options: EngineOptions | None = None,
                 bn_data: torch.Tensor | None = None, hessian: HessianSpec | None = None) -> None:
        """``bn_data``: training inputs for ``bn = "recompute"`` (None: running statistics as loaded).

        ``hessian``: curvature at the origin (:meth:`origin_curvature`) and, with
        ``enabled``, λmax, λmin and |λmin/λmax| at every point (:mod:`mpiland.curvature`).
        """
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
        if hessian is not None and hessian.enabled:
            from .curvature import metric_names as curvature_metrics

            self.base_metrics += curvature_metrics(hessian)
        self.metrics = [v + m for v in directions.variants for m in self.base_metrics]
        self.model = model.to(device=device, dtype=dtype)
        self.model.train(mode == "train")
        self.layout = ParamLayout.from_model(self.model, directions.layout.states)
        if self.layout != directions.layout:
            raise ModelError("the directions were made for another model (parameter names or shapes differ)")
        self.flat = self._flatten_parameters()
        if directions.origin is not None:
            self.flat.copy_(directions.origin.to(device=device, dtype=dtype))
        self.theta0 = self.flat.clone()
        self.basis = directions.vectors.to(device=device, dtype=dtype).t().contiguous()
        self._bn_modules = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        self._bn_data = None
        if bn_data is not None and self._bn_modules:
            x = bn_data.to(dtype) if bn_data.is_floating_point() else bn_data
            self._bn_data = x.to(device)
        self._buffers = [b for b in self.model.buffers() if b.is_floating_point() or b.dtype == torch.long]
        self._buffers0 = [b.clone() for b in self._buffers]
        self._restore_buffers = mode == "train" and bool(self._buffers)
        total = sum(s.nbytes for s in splits)
        resident = total <= memory_budget_mb * 2**20
        self.data = [self._place(s, resident) for s in splits]
        self.curvature = None
        if hessian is not None:
            from .curvature import Curvature

            # Resident splits are already on the device: the operators share them.
            self.curvature = Curvature(self.model, {d.name: (d.inputs, d.targets) for d in self.data}, self.loss_fn,
                                       hessian, batch_size, device, dtype)
        self._autocast = AUTOCAST.get(self.options.autocast)
        self.fallback_reason = ""
        self.points_per_pass = 1
        self.use_points_per_pass(self._choose_points_per_pass(mode))

    def _flatten_parameters(self) -> torch.Tensor:
        """Re-point parameters (and, for a states layout, floating buffers) into one flat buffer."""
        params = list(self.model.parameters())
        flat = torch.empty(self.layout.numel, device=self.device, dtype=self.dtype)
        views = self.layout.views(flat)
        for p, view in zip(params, views):
            view.copy_(p.detach())
            p.data = view
            p.requires_grad_(False)
        for name, view in zip(self.layout.names[self.layout.n_params:], views[self.layout.n_params:]):
            owner, _, attr = name.rpartition(".")
            module = self.model.get_submodule(owner)
            view.copy_(module._buffers[attr])
            module._buffers[attr] = view
        return flat

    def _place(self, split: Split, resident: bool) -> _DeviceSplit:
        inputs = split.inputs.to(self.dtype) if split.inputs.is_floating_point() else split.inputs
        if self.options.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = split.targets
        if resident:
            return _DeviceSplit(split.name, inputs.to(self.device), targets.to(self.device), True)
        if self.device.type == "cuda":
            inputs, targets = inputs.pin_memory(), targets.pin_memory()
        return _DeviceSplit(split.name, inputs, targets, False)

    @property
    def resident(self) -> bool:
        return all(d.resident for d in self.data)

    # -- choosing and building the forward pass ------------------------------------------

    def _activation_bytes(self) -> int:
        """Bytes of all module outputs for one batch of one point (an upper bound of live activations)."""
        total = 0

        def hook(_m: torch.nn.Module, _i: object, out: object) -> None:
            nonlocal total
            if isinstance(out, torch.Tensor):
                total += out.element_size() * out.nelement()

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            d = self.data[0]
            x = d.inputs[: self.batch_size].to(self.device)
            with torch.inference_mode():
                self.model(x)
        finally:
            for h in handles:
                h.remove()
        return total

    def max_points_per_pass(self) -> int:
        """The largest K whose parameter copies and activations fit ``batch_memory_mb`` (at most 64)."""
        per_point = self.layout.numel * self.flat.element_size() + self._activation_bytes()
        return max(1, min(MAX_POINTS_PER_PASS, int(self.options.batch_memory_mb * 2**20 // max(per_point, 1))))

    def _choose_points_per_pass(self, mode: str) -> int:
        """K for this run; a pure function of the job and the device type, never of timings.

        Values depend (at rounding level) on K, so K must not change between runs
        or ranks of one surface. Automatic: one point per pass on a CPU, where a
        batched pass rarely wins (a vmapped convolution becomes a grouped one);
        the memory bound on a GPU, where a small model leaves the device idle.
        """
        requested = self.options.points_per_pass
        if requested == 1 or (requested == 0 and self.device.type == "cpu"):
            return 1
        if self._bn_data is not None:
            self.fallback_reason = "model.bn = recompute (running statistics are re-estimated for each point)"
            log.info("evaluating one point per pass: %s", self.fallback_reason)
            return 1
        if mode == "train":
            self.fallback_reason = "model.mode = train (batch statistics change buffers in place)"
            log.info("evaluating one point per pass: %s", self.fallback_reason)
            return 1
        k = requested if requested > 1 else self.max_points_per_pass()
        if k == 1:
            return 1
        try:
            self._check_vmap()
        except Exception as exc:  # vmap cannot run this model: evaluate one point at a time
            self.fallback_reason = f"vmap cannot run this model ({exc.__class__.__name__}: {str(exc).splitlines()[0]})"
            log.info("evaluating one point per pass: %s", self.fallback_reason)
            return 1
        return k

    def use_points_per_pass(self, k: int, compile_: bool | None = None) -> None:
        """Evaluate ``k`` points per forward pass from now on (1: one point at a time on the model itself)."""
        self.points_per_pass = k
        self._pbuf = torch.empty(k, self.layout.numel, device=self.device, dtype=self.dtype) if k > 1 else None
        self._forward = self._make_forward(self.options.compile if compile_ is None else compile_)

    def _vmapped(self) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        in_flat = set(self.layout.names)
        buffers = {n: b for n, b in self.model.named_buffers() if n not in in_flat}
        model = self.model

        def one(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, (params, buffers), (x,))

        return torch.func.vmap(one, in_dims=(0, None))

    def batched_pass_works(self) -> bool:
        """Whether vmap runs this model correctly (for a points-per-pass taken from a file)."""
        if self.points_per_pass == 1:
            return True
        try:
            self._check_vmap()
            return True
        except Exception:
            return False

    def _check_vmap(self) -> None:
        x = self.data[0].inputs[:2].to(self.device)
        names = self.layout.names
        params = {n: v.unsqueeze(0).expand(2, *v.shape) for n, v in zip(names, self.layout.views(self.theta0))}
        with torch.inference_mode():
            out = self._vmapped()(params, x)
            ref = self.model(x)
        # Loose on purpose: this catches a model vmap runs wrongly, not TF32 rounding.
        if not torch.allclose(out[0].float(), ref.float(), rtol=1e-2, atol=1e-3):
            raise RuntimeError("batched and single outputs differ")

    def _make_forward(self, compile_: bool) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """``forward(k, x)``: outputs of the k points now set, shape (k, batch, ...)."""
        if self.points_per_pass > 1:
            vmapped = self._vmapped()
            fn: Callable[..., torch.Tensor] = torch.compile(vmapped) if compile_ else vmapped

            def batched(k: int, x: torch.Tensor) -> torch.Tensor:
                return fn(self._param_views(k), x)

            return batched
        model = torch.compile(self.model) if compile_ else self.model

        def single(k: int, x: torch.Tensor) -> torch.Tensor:
            return model(x).unsqueeze(0)

        return single

    def _param_views(self, k: int) -> dict[str, torch.Tensor]:
        assert self._pbuf is not None
        rows = self._pbuf[:k]
        return {name: rows[:, off: off + view.numel()].view(k, *view.shape)
                for name, off, view in zip(self.layout.names, self.layout.offsets, self.layout.views(self.theta0))}

    # -- setting points ------------------------------------------------------------------

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model with one fused update."""
        c = torch.as_tensor(np.asarray(coefficients, dtype=np.float64), dtype=self.dtype).to(self.device,
                                                                                            non_blocking=True)
        torch.addmv(self.theta0, self.basis, c, out=self.flat)
        if self._bn_data is not None:
            self._recompute_bn()

    def _recompute_bn(self) -> None:
        """Reset BatchNorm running statistics and re-estimate them (cumulative average) from training batches."""
        momenta = [m.momentum for m in self._bn_modules]
        for m in self._bn_modules:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        try:
            with torch.no_grad():
                assert self._bn_data is not None
                for start in range(0, self._bn_data.shape[0], self.batch_size):
                    self.model(self._bn_data[start: start + self.batch_size])
        finally:
            for m, momentum in zip(self._bn_modules, momenta):
                m.momentum = momentum
            self.model.eval()

    def _set_points(self, coefficients: np.ndarray) -> int:
        """Write the parameters of each row of ``coefficients`` (one fused addmm for a batched pass)."""
        if self._pbuf is None:
            self.set_point(coefficients[0])
            return 1
        k = coefficients.shape[0]
        c = torch.as_tensor(np.asarray(coefficients, dtype=np.float64), dtype=self.dtype).to(self.device,
                                                                                            non_blocking=True)
        torch.addmm(self.theta0.unsqueeze(0), c, self.basis.t(), out=self._pbuf[:k])
        return k

    def reset(self) -> None:
        """Put θ* back into the model."""
        self.flat.copy_(self.theta0)

    # -- evaluating ----------------------------------------------------------------------

    def _losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-unit losses of k points, shape (k, units): per sample for built-ins."""
        k = out.shape[0]
        out = out.float() if self._autocast is not None else out
        if self.builtin_loss:
            targets = y.unsqueeze(0).expand(k, *y.shape).flatten(0, 1)
            return self.loss_fn(out.flatten(0, 1), targets).reshape(k, -1)
        return torch.stack([torch.as_tensor(self.loss_fn(out[i], y)).reshape(-1) for i in range(k)])

    def _split_sums(self, d: _DeviceSplit, k: int) -> torch.Tensor:
        """Per point [Σ loss, Σ loss², units, correct, samples] over one split.

        The sums stay on the device (few kernels per batch, no synchronisation);
        the counts are known on the host from the shapes.
        """
        acc = torch.zeros(3, k, device=self.device, dtype=torch.float64)
        units = samples = 0
        n = d.inputs.shape[0]
        for start in range(0, n, self.batch_size):
            x = d.inputs[start: start + self.batch_size]
            y = d.targets[start: start + self.batch_size]
            if not d.resident:
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            if self._autocast is not None:
                with torch.autocast(self.device.type, dtype=self._autocast):
                    out = self._forward(k, x)
            else:
                out = self._forward(k, x)
            losses = self._losses(out, y).to(torch.float64)
            parts = [losses.sum(dim=1), losses.square().sum(dim=1)]
            if self.accuracy:
                parts.append((out.argmax(dim=-1) == y).sum(dim=1))
            acc[: len(parts)] += torch.stack(parts)
            units += losses.shape[1]
            samples += x.shape[0]
        counts = torch.tensor([units, samples], dtype=torch.float64, device=self.device).unsqueeze(1).expand(2, k)
        return torch.cat([acc[:2], counts[:1], acc[2:], counts[1:]]).t()

    def _pass(self, coefficients: np.ndarray) -> np.ndarray:
        """Sums (splits × k × 5) for the points in ``coefficients`` (at most points_per_pass rows)."""
        k = self._set_points(coefficients)
        with torch.inference_mode():
            sums = torch.stack([self._split_sums(d, k) for d in self.data]).cpu().numpy()
        if self._restore_buffers:
            torch._foreach_copy_(self._buffers, self._buffers0)
        return sums

    def _metrics(self, sums: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, split in zip(self.split_names, sums):
            s, s2, units, correct, samples = split.T
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                mean = s / units
                var = np.where(units > 1, (s2 - units * mean * mean) / np.maximum(units - 1, 1), np.nan)
                stderr = np.where(np.isfinite(var), np.sqrt(np.maximum(var, 0.0) / units), np.nan)
            out[f"{name}_loss"] = mean
            out[f"{name}_loss_stderr"] = stderr
            if self.accuracy:
                out[f"{name}_acc"] = correct / samples
        return out

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
            metrics = self._metrics(self._pass(group))
            if self.curvature is not None and self.curvature.spec.enabled:
                metrics.update(self._curvature(group))
            synchronize(self.device)
            seconds[start: start + len(group)] = (time.perf_counter() - t0) / len(group)
            for m in self.base_metrics:
                values[m][start: start + len(group)] = metrics[m]
        return values, seconds

    def _curvature(self, coefficients: np.ndarray) -> dict[str, np.ndarray]:
        """Hessian extreme eigenvalues at each point of a group (one point at a time: HVPs need autograd).

        After a one-point pass the model already holds the point (and its recomputed
        BatchNorm statistics); a batched pass wrote its K×n buffer, so each point is set here.
        """
        assert self.curvature is not None
        rows = []
        for c in coefficients:
            if self._pbuf is not None:
                self.set_point(c)
            rows.append(self.curvature.at_point(self.flat))
        return {m: np.array([r[m] for r in rows]) for m in rows[0]}

    def origin_curvature(self) -> dict[str, float]:
        """Trace and directional curvatures at the origin (root attributes of a new file)."""
        if self.curvature is None:
            return {}
        from .curvature import axis_labels

        self.set_point(np.zeros(self.directions.dims))
        return self.curvature.at_origin(self.flat, self.basis.t(), axis_labels(self.directions.dims))
