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

from typing import Sequence

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


def combine_rows(base: torch.Tensor, columns: Sequence[torch.Tensor], vectors: list[torch.Tensor],
                 out: torch.Tensor) -> None:
    """``out = base + Σⱼ columns[j] ⊗ vectors[j]`` (``columns``: m coefficient columns, each k × 1, from
    :func:`coefficient_columns`; ``vectors``: m rows, each 1 × L; ``out``: k × L) as m broadcast multiply-adds,
    so every row is rounded the same whatever k is. A matrix product is not: a one-row product runs a
    matrix-vector kernel that rounds differently from the matrix kernel."""
    torch.addcmul(base, columns[0], vectors[0], out=out)
    for j in range(1, len(vectors)):
        out.addcmul_(columns[j], vectors[j])


def coefficient_columns(coefficients: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The m columns (each k × 1) of k points' coefficients (k × m), as :func:`combine_rows` takes them."""
    return coefficients.t().unsqueeze(-1).unbind(0)


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
        self.row_start = 0
        self._row_base = self.theta0[None, :]
        self._row_targets: dict[int, torch.Tensor] = {}
        self._column_buffers: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.rows: torch.Tensor | None = None
        self.row_coefficients: torch.Tensor | None = None
        self.row_columns: tuple[torch.Tensor, ...] = ()
        self.exact_rows = False

    def reserve(self, k: int, rows: bool = False, start: int = 0) -> None:
        """Make room for ``k`` points per pass: a K × n buffer when k > 1 or ``rows``, else the model's own
        buffer. ``rows``: the points are written row by row the same for every k (:func:`combine_rows`,
        for a forward pass whose values must not depend on k), from column ``start`` on (a forward pass
        that reads only those columns: the columns before it are left unwritten)."""
        self.exact_rows = rows
        self.rows = torch.empty(k, self.layout.numel, device=self.device, dtype=self.dtype) if k > 1 or rows else None
        self.row_start = start if rows else 0
        if self.rows is not None and self.row_start:
            self.rows[:, :self.row_start] = self.theta0[:self.row_start]  # the origin's, never garbage
        self.vector_rows = [v[:, self.row_start:] for v in self.vectors.split(1)]
        self._row_base = self.theta0[None, self.row_start:]
        self._row_targets = {}

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model's flat buffer."""
        c = _coefficients(coefficients, self.device, self.dtype).view(1, -1)
        torch.addmm(self.theta0.unsqueeze(0), c, self.vectors, out=self.flat.view(1, -1))

    def set_rows(self, coefficients: np.ndarray) -> int:
        """Write one point per row of ``coefficients`` into the K × n buffer (one ``addmm``); return the count.
        The coefficients stay on the device as :attr:`row_coefficients` (k × m) or, for exact rows, as
        their columns :attr:`row_columns` (m × (k × 1))."""
        assert self.rows is not None
        k = coefficients.shape[0]
        if self.exact_rows:
            # The columns straight from the host array (m × k × 1) into a buffer kept per k with its column
            # views: one copy, no transposes on the device. Stream order keeps a device's copy behind the
            # kernels of the pass before.
            columns = np.array(np.asarray(coefficients, dtype=np.float64).T[:, :, None], order="C")  # a copy
            held = self._column_buffers.get(k)
            if held is None:
                buf = torch.empty(columns.shape, dtype=self.dtype, device=self.device)
                held = self._column_buffers[k] = (buf, buf.unbind(0))
            held[0].copy_(torch.from_numpy(columns))
            self.row_columns = held[1]
            if self.row_start < self.layout.numel:
                target = self._row_targets.get(k)
                if target is None:
                    target = self._row_targets[k] = self.rows[:k, self.row_start:]
                combine_rows(self._row_base, self.row_columns, self.vector_rows, target)
        else:
            self.row_coefficients = _coefficients(coefficients, self.device, self.dtype)
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
