"""The model's parameters as one flat buffer on the device, and grid points written into it.

Parameters (and, for a states layout, floating buffers) are re-pointed into one
flat buffer, so a point origin + basis · c is written with a single fused
``addmm`` over the basis vectors stored as contiguous rows (m × n: the product
then streams each vector once; an ``addmv`` over the n × m transpose is seven
times slower on a CPU), never a Python loop over tensors and never a model copy.
For several points per pass the parameters of K points are written by one
``addmm`` into a (K × n) buffer whose rows the batched forward pass reads.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..directions import Directions
from ..layout import ParamLayout


def flatten_into(model: nn.Module, layout: ParamLayout, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Re-point ``model``'s parameters (and a states layout's buffers) into a new flat buffer and return it."""
    flat = torch.empty(layout.numel, device=device, dtype=dtype)
    views = layout.views(flat)
    for p, view in zip(model.parameters(), views):
        view.copy_(p.detach())
        p.data = view
        p.requires_grad_(False)
    for name, view in zip(layout.names[layout.n_params:], views[layout.n_params:]):
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        buffer = module._buffers[attr]
        assert buffer is not None  # the layout names only buffers that named_buffers() yields
        view.copy_(buffer)
        module._buffers[attr] = view
    return flat


def combine_rows(base: torch.Tensor, coefficients: torch.Tensor, vectors: list[torch.Tensor], out: torch.Tensor) -> None:
    """``out[:k] = base + Σⱼ coefficients[:, j] ⊗ vectors[j]`` (k = rows of ``coefficients``; ``vectors``: m
    rows, each 1 × L) as m broadcast multiply-adds, so every row is rounded the same whatever k is. A
    matrix product is not: a one-row product runs a matrix-vector kernel that rounds differently from the
    matrix kernel."""
    k = coefficients.shape[0]
    target = out[:k]
    columns = coefficients.t().unsqueeze(-1)  # m × k × 1
    torch.addcmul(base, columns[0], vectors[0], out=target)
    for j in range(1, len(vectors)):
        target.addcmul_(columns[j], vectors[j])


def _coefficients(c: np.ndarray | list[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(c, dtype=np.float64), dtype=dtype).to(device, non_blocking=True)


class FlatParameters:
    """θ₀ (the origin), the basis vectors (rows of :attr:`vectors`, m × n) and the flat buffer the model reads;
    writes points with one fused update."""

    def __init__(self, model: nn.Module, layout: ParamLayout, directions: Directions, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.flat = flatten_into(model, layout, device, dtype)
        if directions.origin is not None:
            self.flat.copy_(directions.origin.to(device=device, dtype=dtype))
        self.theta0 = self.flat.clone()
        self.vectors = directions.vectors.to(device=device, dtype=dtype).contiguous()
        self.vector_rows = list(self.vectors.split(1))
        self.rows: torch.Tensor | None = None
        self.row_coefficients: torch.Tensor | None = None
        self.exact_rows = False

    def reserve(self, k: int, rows: bool = False) -> None:
        """Make room for ``k`` points per pass: a K × n buffer when k > 1 or ``rows``, else the model's own
        buffer. ``rows``: the points are written row by row the same for every k (:func:`combine_rows`,
        for a forward pass whose values must not depend on k)."""
        self.exact_rows = rows
        self.rows = torch.empty(k, self.layout.numel, device=self.device, dtype=self.dtype) if k > 1 or rows else None

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model's flat buffer."""
        c = _coefficients(coefficients, self.device, self.dtype).view(1, -1)
        torch.addmm(self.theta0.unsqueeze(0), c, self.vectors, out=self.flat.view(1, -1))

    def set_rows(self, coefficients: np.ndarray) -> int:
        """Write one point per row of ``coefficients`` into the K × n buffer (one ``addmm``); return the count.
        The coefficients stay on the device as :attr:`row_coefficients` (k × m)."""
        assert self.rows is not None
        k = coefficients.shape[0]
        self.row_coefficients = _coefficients(coefficients, self.device, self.dtype)
        if self.exact_rows:
            combine_rows(self.theta0.unsqueeze(0), self.row_coefficients, self.vector_rows, self.rows)
        else:
            torch.addmm(self.theta0.unsqueeze(0), self.row_coefficients, self.vectors, out=self.rows[:k])
        return k

    def row_views(self, k: int) -> dict[str, torch.Tensor]:
        """Per-parameter views (k, *shape) of the first k rows, for ``functional_call`` under vmap."""
        assert self.rows is not None
        rows = self.rows[:k]
        return {name: rows[:, off: off + n].view(k, *shape)
                for name, off, n, shape in zip(self.layout.names, self.layout.offsets,
                                               (self.layout.numel_of(i) for i in range(len(self.layout.names))),
                                               self.layout.shapes)}

    def reset(self) -> None:
        """Put the origin back into the model."""
        self.flat.copy_(self.theta0)
