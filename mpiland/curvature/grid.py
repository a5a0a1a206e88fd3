"""Curvature on the grid: the glue between a job's [hessian] settings and the operator and Lanczos routines.

Per grid point (``hessian.enabled``): λmax and λmin of the loss Hessian by Lanczos,
and |λmin/λmax| (Li et al. 2018, Fig. 7: large where the surface only looks convex),
for each split in ``hessian.splits``. At the origin, once per file: the trace by
Hutchinson's estimator with its standard error, and the curvature dᵀHd/‖d‖² along
each plotted direction. ``directions.kind = "hessian"``: the top-2 eigenvectors at θ*
as the axes (PyHessian's view).

The Hessian is that of the mean loss over the split's samples (or a seeded subset
of ``hessian.subset`` of them), in eval mode, over the parameters only.
"""

from __future__ import annotations

import math

import torch

from ..layout import ParamLayout
from ..spec import HessianSpec
from .linalg import directional_curvature, extreme_eigenvalues, hutchinson_trace
from .operator import HessianOperator, LossFn


def metric_names(spec: HessianSpec) -> list[str]:
    """Per-point curvature datasets, in a fixed order."""
    if not spec.enabled:
        return []
    return [f"{s}_hess_{what}" for s in spec.splits for what in ("max", "min", "ratio")]


def hessian_batches(inputs: torch.Tensor, targets: torch.Tensor, spec: HessianSpec, batch_size: int,
             device: torch.device, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if spec.subset and spec.subset < inputs.shape[0]:
        order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(spec.seed))[: spec.subset]
        inputs, targets = inputs[order.to(inputs.device)], targets[order.to(targets.device)]
    x = inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else inputs.dtype)
    y = targets.to(device)
    return [(x[i: i + batch_size], y[i: i + batch_size]) for i in range(0, x.shape[0], batch_size)]


class Curvature:
    """Hessian operators of one model replica, one per split, over its parameters (a prefix of the flat buffer)."""

    def __init__(self, model: torch.nn.Module, splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: LossFn, spec: HessianSpec, batch_size: int, device: torch.device,
                 model_dtype: torch.dtype) -> None:
        self.spec = spec
        self.layout = ParamLayout.from_model(model)
        dtype = getattr(torch, spec.dtype)
        self.ops = {name: HessianOperator(model, self.layout,
                                          hessian_batches(x, y, spec, batch_size, device, model_dtype), loss_fn, dtype)
                    for name, (x, y) in splits.items() if name in spec.splits}

    def theta(self, flat: torch.Tensor) -> torch.Tensor:
        """The parameter part of the flat buffer (buffers of a states layout follow it)."""
        return flat[: self.layout.numel]

    def at_point(self, flat: torch.Tensor) -> dict[str, float]:
        """λmax, λmin and |λmin/λmax| per split at the point now in ``flat``."""
        out: dict[str, float] = {}
        for name, op in self.ops.items():
            res = extreme_eigenvalues(op, theta=self.theta(flat), tol=self.spec.tol, max_iter=self.spec.max_iter,
                                      seed=self.spec.seed)
            op.clear_cache()
            ratio = abs(res.lam_min / res.lam_max) if res.lam_max != 0 else math.nan
            out.update({f"{name}_hess_max": res.lam_max, f"{name}_hess_min": res.lam_min,
                        f"{name}_hess_ratio": ratio})
        return out

    def hvps(self) -> int:
        return sum(op.hvps for op in self.ops.values())

    def at_origin(self, flat: torch.Tensor, basis: torch.Tensor, axes: tuple[str, ...]) -> dict[str, float]:
        """Root attributes: trace (Hutchinson) with its standard error, and dᵀHd/‖d‖² along each basis vector."""
        out: dict[str, float] = {}
        theta = self.theta(flat)
        for name, op in self.ops.items():
            if self.spec.trace_samples:
                tr = hutchinson_trace(op, theta=theta, samples=self.spec.trace_samples, seed=self.spec.seed)
                out[f"{name}_hess_trace"] = tr.trace
                out[f"{name}_hess_trace_stderr"] = tr.stderr
            for axis, d in zip(axes, basis):
                part = d[: self.layout.numel]
                if float(part.abs().max()) > 0:
                    out[f"{name}_hess_curvature_{axis}"] = directional_curvature(op, part, theta=theta)
            op.clear_cache()
        return out


def axis_labels(dims: int) -> tuple[str, ...]:
    """Axis names for the origin attributes (x, y, then basis_2 …) of ``dims`` basis vectors."""
    return tuple("xy"[i] if i < 2 else f"basis_{i}" for i in range(dims))

