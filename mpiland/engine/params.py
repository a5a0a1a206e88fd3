"""The model's parameters as one flat buffer on the device, and grid points written into it.

Parameters (and, for a states layout, floating buffers) are re-pointed into one
flat buffer, so a point origin + basis · c is written with a single fused
``addmv``, never a Python loop over tensors and never a model copy. For several
points per pass the parameters of K points are written by one ``addmm`` into a
(K × n) buffer whose rows the batched forward pass reads.
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


def _coefficients(c: np.ndarray | list[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(c, dtype=np.float64), dtype=dtype).to(device, non_blocking=True)


class FlatParameters:
    """θ₀ (the origin), the basis and the flat buffer the model reads; writes points with one fused update."""

    def __init__(self, model: nn.Module, layout: ParamLayout, directions: Directions, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.layout = layout
        self.device = device
        self.dtype = dtype
        self.flat = flatten_into(model, layout, device, dtype)
        if directions.origin is not None:
            self.flat.copy_(directions.origin.to(device=device, dtype=dtype))
        self.theta0 = self.flat.clone()
        self.basis = directions.vectors.to(device=device, dtype=dtype).t().contiguous()
        self.rows: torch.Tensor | None = None

    def reserve(self, k: int) -> None:
        """Make room for ``k`` points per pass (k > 1: a K × n buffer; 1: the model's own buffer)."""
        self.rows = torch.empty(k, self.layout.numel, device=self.device, dtype=self.dtype) if k > 1 else None

    def set_point(self, coefficients: np.ndarray | list[float]) -> None:
        """Write origin + Σ_k coefficients[k]·basis_k into the model's flat buffer."""
        torch.addmv(self.theta0, self.basis, _coefficients(coefficients, self.device, self.dtype), out=self.flat)

    def set_rows(self, coefficients: np.ndarray) -> int:
        """Write one point per row of ``coefficients`` into the K × n buffer (one ``addmm``); return the count."""
        assert self.rows is not None
        k = coefficients.shape[0]
        torch.addmm(self.theta0.unsqueeze(0), _coefficients(coefficients, self.device, self.dtype), self.basis.t(),
                    out=self.rows[:k])
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
