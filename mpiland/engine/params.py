"""The model's parameters as one flat buffer on the device, and grid points written into it.

Parameters (and, for a states layout, floating buffers) are re-pointed into one
flat buffer, so a point origin + basis · c is written with a single fused
``addmm`` over the basis vectors stored as contiguous rows (m × n: the product
then streams each vector once; an ``addmv`` over the n × m transpose is seven
times slower on a CPU), never a Python loop over tensors and never a model copy.
For several points per pass the parameters of K points are written by one
``addmm`` into a (K × n) buffer whose rows the batched forward pass reads.

Half-precision weights (``model.dtype = "bfloat16"``): θ₀ and the basis vectors are
kept in float32, each point is computed as θ₀ + basis · c in float32 (the same
operation as a float32 run, so the same values) and only then rounded into the
model's bf16 buffer; a bf16 point is the float32 point rounded to bf16, and steps
far below bf16's resolution at θ₀ still move the computed point before rounding.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..directions import Directions
from ..layout import ParamLayout


HALF = (torch.bfloat16, torch.float16)


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype points are computed in for a model in ``dtype``: float32 for half-precision weights."""
    return torch.float32 if dtype in HALF else dtype


def flat_copy(model: nn.Module, layout: ParamLayout, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The values of ``model``'s parameters (and a states layout's buffers) as one new flat buffer; the model
    is left as it is."""
    flat = torch.empty(layout.numel, device=device, dtype=dtype)
    views = layout.views(flat)
    for p, view in zip(model.parameters(), views):
        view.copy_(p.detach())
    for name, view in zip(layout.names[layout.n_params:], views[layout.n_params:]):
        view.copy_(model.get_buffer(name))
    return flat


def cast_other_buffers(model: nn.Module, layout: ParamLayout, dtype: torch.dtype) -> None:
    """Floating buffers outside the layout (BatchNorm statistics of a parameters-only layout) in ``dtype``,
    as the parameters are."""
    inside = set(layout.names[layout.n_params:])
    for name, buffer in list(model.named_buffers()):
        if name not in inside and buffer.is_floating_point() and buffer.dtype != dtype:
            owner, _, attr = name.rpartition(".")
            model.get_submodule(owner)._buffers[attr] = buffer.to(dtype)


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
    writes points with one fused update.

    ``dtype``: the model's weights. For bf16 (or fp16) θ₀, the vectors and every point
    are float32 (:attr:`master`, :attr:`master_rows`), rounded into :attr:`flat` /
    :attr:`rows` after each write; θ₀ is read from ``model`` before anything is rounded,
    so the model must come in float32 (or hold the half values already)."""

    def __init__(self, model: nn.Module, layout: ParamLayout, directions: Directions, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.compute_dtype = master_dtype(dtype)
        half = self.compute_dtype != dtype
        exact = flat_copy(model, layout, device, self.compute_dtype) if half else None
        self.flat = flatten_into(model, layout, device, dtype)
        if half:
            cast_other_buffers(model, layout, dtype)
        self.master: torch.Tensor | None = exact
        """Half weights: the point now set, in float32 (None otherwise: :attr:`flat` is exact)."""
        if directions.origin is not None:
            (self.flat if exact is None else exact).copy_(directions.origin.to(device=device, dtype=self.compute_dtype))
        self.theta0 = (self.flat if exact is None else exact).clone()
        if exact is not None:
            self.flat.copy_(self.theta0)
        self.vectors = directions.vectors.to(device=device, dtype=self.compute_dtype).contiguous()
        self.vector_rows = list(self.vectors.split(1))
        self.row_start = 0
        self._row_base = self.theta0[None, :]
        self._row_targets: dict[int, torch.Tensor] = {}
        self._column_buffers: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}
        self.rows: torch.Tensor | None = None
        self.master_rows: torch.Tensor | None = None
        """Half weights: the rows' points in float32, rounded into :attr:`rows` after each write."""
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
        self.master_rows = None
        if self.rows is not None and self.master is not None:
            self.master_rows = torch.empty(k, self.layout.numel, device=self.device, dtype=self.compute_dtype)
        self.row_start = start if rows else 0
        if self.rows is not None and self.row_start:
            self.rows[:, :self.row_start] = self.theta0[:self.row_start]  # the origin's, never garbage
            if self.master_rows is not None:
                self.master_rows[:, :self.row_start] = self.theta0[:self.row_start]
        self.vector_rows = [v[:, self.row_start:] for v in self.vectors.split(1)]
        self._row_base = self.theta0[None, self.row_start:]
        self._row_targets = {}

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model's flat buffer."""
        c = _coefficients(coefficients, self.device, self.compute_dtype).view(1, -1)
        if self.master is None:
            torch.addmm(self.theta0.unsqueeze(0), c, self.vectors, out=self.flat.view(1, -1))
            return
        torch.addmm(self.theta0.unsqueeze(0), c, self.vectors, out=self.master.view(1, -1))
        self.flat.copy_(self.master)

    def set_rows(self, coefficients: np.ndarray) -> int:
        """Write one point per row of ``coefficients`` into the K × n buffer (one ``addmm``); return the count.
        The coefficients stay on the device as :attr:`row_coefficients` (k × m) or, for exact rows, as
        their columns :attr:`row_columns` (m × (k × 1))."""
        assert self.rows is not None
        k = coefficients.shape[0]
        into = self.rows if self.master_rows is None else self.master_rows
        if self.exact_rows:
            # The columns straight from the host array (m × k × 1) into a buffer kept per k with its column
            # views: one copy, no transposes on the device. Stream order keeps a device's copy behind the
            # kernels of the pass before.
            columns = np.array(np.asarray(coefficients, dtype=np.float64).T[:, :, None], order="C")  # a copy
            held = self._column_buffers.get(k)
            if held is None:
                buf = torch.empty(columns.shape, dtype=self.compute_dtype, device=self.device)
                held = self._column_buffers[k] = (buf, buf.unbind(0))
            held[0].copy_(torch.from_numpy(columns))
            self.row_columns = held[1]
            if self.row_start < self.layout.numel:
                target = self._row_targets.get(k)
                if target is None:
                    target = self._row_targets[k] = into[:k, self.row_start:]
                combine_rows(self._row_base, self.row_columns, self.vector_rows, target)
        else:
            self.row_coefficients = _coefficients(coefficients, self.device, self.compute_dtype)
            torch.addmm(self.theta0.unsqueeze(0), self.row_coefficients, self.vectors, out=into[:k])
        if self.master_rows is not None:
            self.rows[:k, self.row_start:].copy_(self.master_rows[:k, self.row_start:])
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
        if self.master is not None:
            self.master.copy_(self.theta0)
