"""Directions in parameter space: seeded random Gaussian directions and their normalisations.

Directions are flat vectors over the model's parameters in ``named_parameters()``
order (the layout of :class:`ParamLayout`). Normalisations (Li et al. 2018):

- ``filter``: each filter (slice along dim 0; a row of a fully-connected weight)
  is rescaled to the norm of the same filter of θ. A 1-D tensor counts as one filter.
- ``layer``: each parameter tensor is rescaled to the norm of θ's tensor.
- ``weight``: element-wise, d ← d·|θ|.
- ``model``: the whole vector is rescaled to ‖θ‖ (over the parameters the direction covers).
- ``none``: raw Gaussian.

``ignore = "biasbn"`` zeroes the direction on 1-D tensors (biases and BatchNorm
weights); ``include``/``exclude`` regexes (``re.search`` on parameter names) zero
it elsewhere. Random numbers come from a CPU generator seeded with
``directions.seed``, so every rank and every device gets the same directions; x is
drawn before y, so a 1D job's direction is the 2D job's x direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from .errors import JobFileError
from .job import DirectionsSpec

EPS = 1e-10


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the parameters in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "ParamLayout":
        names, shapes, offsets, total = [], [], [], 0
        for name, p in model.named_parameters():
            names.append(name)
            shapes.append(tuple(p.shape))
            offsets.append(total)
            total += p.numel()
        return cls(tuple(names), tuple(shapes), tuple(offsets), total)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views into a flat vector (no copies)."""
        out = []
        for shape, off in zip(self.shapes, self.offsets):
            n = 1
            for s in shape:
                n *= s
            out.append(flat[off: off + n].view(shape))
        return out


@dataclass(frozen=True)
class Directions:
    """The plot directions: ``vectors[k]`` is direction k (x, then y) as a flat float32 vector."""

    vectors: torch.Tensor
    layout: ParamLayout
    settings: dict[str, Any]

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[0])


def flat_parameters(model: torch.nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """θ as one flat CPU vector in ``named_parameters()`` order."""
    return torch.cat([p.detach().reshape(-1).to("cpu", dtype) for p in model.parameters()])


def parameter_mask(layout: ParamLayout, spec: DirectionsSpec) -> list[bool]:
    """Which parameter tensors the direction covers (after ignore/include/exclude)."""
    inc = [re.compile(p) for p in spec.include]
    exc = [re.compile(p) for p in spec.exclude]
    mask = []
    for name, shape in zip(layout.names, layout.shapes):
        keep = True
        if spec.ignore == "biasbn" and len(shape) <= 1:
            keep = False
        if inc and not any(r.search(name) for r in inc):
            keep = False
        if any(r.search(name) for r in exc):
            keep = False
        mask.append(keep)
    if not any(mask):
        raise JobFileError("directions: ignore/include/exclude leave no parameter to perturb; relax the patterns")
    return mask


def normalize(direction: torch.Tensor, theta: torch.Tensor, layout: ParamLayout, mask: list[bool], norm: str) -> torch.Tensor:
    """Return ``direction`` normalised against ``theta`` (both flat) and zeroed outside ``mask``."""
    d = direction.clone()
    dv, tv = layout.views(d), layout.views(theta)
    for keep, dp, tp in zip(mask, dv, tv):
        if not keep:
            dp.zero_()
        elif norm == "filter":
            rows_d = dp.reshape(dp.shape[0], -1) if dp.dim() >= 2 else dp.reshape(1, -1)
            rows_t = tp.reshape(tp.shape[0], -1) if tp.dim() >= 2 else tp.reshape(1, -1)
            scale = rows_t.norm(dim=1, keepdim=True) / (rows_d.norm(dim=1, keepdim=True) + EPS)
            rows_d.mul_(scale)
        elif norm == "layer":
            dp.mul_(tp.norm() / (dp.norm() + EPS))
        elif norm == "weight":
            dp.mul_(tp.abs())
    if norm == "model":
        covered = torch.cat([tp.reshape(-1) for keep, tp in zip(mask, tv) if keep])
        d.mul_(covered.norm() / (d.norm() + EPS))
    return d


def random_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int) -> Directions:
    """Seeded Gaussian directions, normalised as ``spec`` says; y optionally orthogonal to x."""
    layout = ParamLayout.from_model(model)
    theta = flat_parameters(model)
    mask = parameter_mask(layout, spec)
    gen = torch.Generator().manual_seed(spec.seed)
    vectors = []
    for _ in range(dims):
        raw = torch.randn(layout.numel, generator=gen, dtype=torch.float32).to(torch.float64)
        vectors.append(normalize(raw, theta, layout, mask, spec.norm))
    if dims == 2 and spec.orthogonalize:
        x, y = vectors
        length = y.norm()
        y = y - (y @ x) / (x @ x) * x
        vectors[1] = y * (length / (y.norm() + EPS))
    settings = {
        "kind": spec.kind, "seed": spec.seed, "norm": spec.norm, "ignore": spec.ignore,
        "include": list(spec.include), "exclude": list(spec.exclude), "orthogonalize": spec.orthogonalize,
    }
    return Directions(torch.stack(vectors).to(torch.float32), layout, settings)


def axis_label(axis: str, settings: dict[str, Any]) -> str:
    """Human-readable axis name for plots, e.g. ``random direction x (filter-normalised)``."""
    norm = settings.get("norm", "none")
    suffix = "not normalised" if norm == "none" else f"{norm}-normalised"
    return f"{settings.get('kind', 'random')} direction {axis} ({suffix})"
