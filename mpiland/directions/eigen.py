"""Hessian-eigenvector directions: the top eigenvectors of the loss Hessian at θ* as the plot axes.

PyHessian's view of a landscape: along the directions of largest curvature. The
eigenvectors come from Lanczos on Hessian-vector products (the Hessian is never
formed), over the first of ``hessian.splits``.

``directions.include``/``exclude``/``ignore`` choose the parameters as for random
directions (:func:`~mpiland.directions.axes.parameter_mask`); the eigenvectors
are then those of the Hessian's block on the covered parameters, H restricted to
them (P·H·P), and vanish outside. ``norm`` has no meaning here (the vectors are
unit eigenvectors): only ``auto``/``none`` are accepted.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..curvature import HessianOperator, Restricted, hessian_batches, top_eigenvectors
from ..curvature.operator import LossFn
from ..data import Split
from ..errors import JobFileError
from ..layout import ParamLayout
from ..spec import DirectionsSpec, HessianSpec
from .axes import parameter_mask
from .base import Directions

NORM_REFUSED = ("directions.norm: Hessian eigenvectors are unit vectors and are not normalised; remove the key "
                "(include/exclude/ignore choose the parameters whose Hessian block is used)")


@dataclass(frozen=True)
class CurvatureInputs:
    """What Hessian directions need beyond the model: settings, data, loss, batching and placement."""

    hessian: HessianSpec
    split: Split
    loss_fn: LossFn
    batch_size: int
    device: torch.device
    dtype: torch.dtype


def hessian_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int, inputs: CurvatureInputs) -> Directions:
    """The top-``dims`` Hessian eigenvectors at θ* (unit vectors) on the first of ``hessian.splits``."""
    hspec, split = inputs.hessian, inputs.split
    device, dtype = inputs.device, inputs.dtype
    if spec.norm not in ("auto", "none"):
        raise JobFileError(NORM_REFUSED)
    layout = ParamLayout.from_model(model)
    mask = parameter_mask(layout, spec)
    work = model.to(device=device, dtype=dtype)
    op = HessianOperator(work, layout, hessian_batches(split.inputs, split.targets, hspec, inputs.batch_size, device, dtype),
                         inputs.loss_fn, getattr(torch, hspec.dtype))
    theta = torch.cat([p.detach().reshape(-1) for p in work.parameters()])
    index = _covered(layout, mask)
    if index.numel() < dims:
        raise JobFileError(f"directions: include/exclude/ignore leave {index.numel()} parameter(s), "
                           f"{dims} Hessian eigenvectors need at least {dims}; relax the patterns")
    bound = op.at(theta)
    block = Restricted(bound, index) if index.numel() < layout.numel else None
    pairs = top_eigenvectors(block if block is not None else bound, k=dims, tol=hspec.tol, max_iter=hspec.max_iter, seed=hspec.seed)
    op.clear_cache()
    vectors = block.expand(pairs.vectors) if block is not None else pairs.vectors
    settings = spec.relevant()
    settings["eigenvalues"] = [float(v) for v in pairs.values]
    settings["split"] = split.name
    part = ""
    if block is not None:
        settings["parameters"] = int(index.numel())
        part = f", {int(index.numel())} of {layout.numel} parameters"
    labels = tuple(f"Hessian eigenvector {i + 1} (λ = {float(v):.4g}, {split.name}{part})"
                   for i, v in enumerate(pairs.values))
    vectors = vectors.detach().to("cpu", torch.float32)
    return Directions(vectors, layout, settings, labels=labels, models=(("θ*", (0.0,) * dims),))


def _covered(layout: ParamLayout, mask: list[bool]) -> torch.Tensor:
    """Flat indices of the parameters in ``mask`` (ascending)."""
    keep = torch.zeros(layout.numel, dtype=torch.bool)
    for covered, view in zip(mask, layout.views(keep)):
        view.fill_(covered)
    return keep.nonzero().reshape(-1)
