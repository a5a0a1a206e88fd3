"""Hessian-eigenvector directions: the top eigenvectors of the loss Hessian at θ* as the plot axes.

PyHessian's view of a landscape: along the directions of largest curvature. The
eigenvectors come from Lanczos on Hessian-vector products (the Hessian is never
formed), over the first of ``hessian.splits``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..curvature import HessianOperator, hessian_batches, top_eigenvectors
from ..data import Split
from ..layout import ParamLayout
from ..spec import DirectionsSpec, HessianSpec
from .base import Directions


@dataclass(frozen=True)
class CurvatureInputs:
    """What Hessian directions need beyond the model: settings, data, loss, batching and placement."""

    hessian: HessianSpec
    split: Split
    loss_fn: object
    batch_size: int
    device: torch.device
    dtype: torch.dtype


def hessian_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int, inputs: CurvatureInputs) -> Directions:
    """The top-``dims`` Hessian eigenvectors at θ* (unit vectors) on the first of ``hessian.splits``."""
    hspec, split = inputs.hessian, inputs.split
    device, dtype = inputs.device, inputs.dtype
    layout = ParamLayout.from_model(model)
    work = model.to(device=device, dtype=dtype)
    op = HessianOperator(work, layout, hessian_batches(split.inputs, split.targets, hspec, inputs.batch_size, device, dtype),
                         inputs.loss_fn, getattr(torch, hspec.dtype))
    theta = torch.cat([p.detach().reshape(-1) for p in work.parameters()])
    pairs = top_eigenvectors(op, k=dims, theta=theta, tol=hspec.tol, max_iter=hspec.max_iter, seed=hspec.seed)
    op.clear_cache()
    settings = spec.relevant()
    settings["eigenvalues"] = [float(v) for v in pairs.values]
    settings["split"] = split.name
    labels = tuple(f"Hessian eigenvector {i + 1} (λ = {float(v):.4g}, {split.name})"
                   for i, v in enumerate(pairs.values))
    vectors = pairs.vectors.detach().to("cpu", torch.float32)
    return Directions(vectors, layout, settings, labels=labels, models=(("θ*", (0.0,) * dims),))
