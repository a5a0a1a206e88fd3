"""The flat parameter layout: which tensors of a model a parameter vector holds, and where.

Vectors are flat over the model's parameters in ``named_parameters()`` order,
followed, for a *states* layout, by its floating buffers (BatchNorm running
statistics) in ``named_buffers()`` order. Directions, the engine's flat buffer,
checkpoints turned into vectors and the curvature operators all share this one
description, so none of them needs another's module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .models import load_checkpoint


@dataclass(frozen=True)
class ParamLayout:
    """Names, shapes and offsets of the parameters in the flat vector."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    offsets: tuple[int, ...]
    numel: int
    n_params: int

    @classmethod
    def from_model(cls, model: torch.nn.Module, states: bool = False) -> "ParamLayout":
        """Parameters in ``named_parameters()`` order; with ``states``, then the floating buffers."""
        entries: list[tuple[str, torch.Tensor]] = [(n, p) for n, p in model.named_parameters()]
        n_params = len(entries)
        if states:
            entries += [(n, b) for n, b in model.named_buffers() if b.is_floating_point()]
        return cls.from_shapes([n for n, _ in entries], [tuple(t.shape) for _, t in entries], n_params)

    @classmethod
    def from_shapes(cls, names: list[str], shapes: list[tuple[int, ...]], n_params: int = -1) -> "ParamLayout":
        """The layout of tensors with these names and shapes, packed in this order."""
        offsets, total = [], 0
        for shape in shapes:
            offsets.append(total)
            total += math.prod(shape)
        return cls(tuple(names), tuple(tuple(s) for s in shapes), tuple(offsets), total,
                   len(names) if n_params < 0 else n_params)

    @property
    def states(self) -> bool:
        """Whether the layout includes buffers (running statistics) after the parameters."""
        return len(self.names) > self.n_params

    def numel_of(self, i: int) -> int:
        return math.prod(self.shapes[i])

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views into a flat vector (no copies)."""
        out = []
        for shape, off in zip(self.shapes, self.offsets):
            n = 1
            for s in shape:
                n *= s
            out.append(flat[off: off + n].view(shape))
        return out


def flat_parameters(model: torch.nn.Module, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """θ as one flat CPU vector in ``named_parameters()`` order."""
    return torch.cat([p.detach().reshape(-1).to("cpu", dtype) for p in model.parameters()])


def state_vector(model: torch.nn.Module, layout: ParamLayout, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The model's parameters (and, for a states layout, floating buffers) as one flat CPU vector."""
    tensors: dict[str, torch.Tensor] = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return torch.cat([tensors[n].detach().reshape(-1).to("cpu", dtype) for n in layout.names])


def checkpoint_vector(scratch: torch.nn.Module, path: str, layout: ParamLayout, key: str) -> torch.Tensor:
    """Load checkpoint ``path`` into the scratch model and return its state vector (float64)."""
    load_checkpoint(scratch, path, key=key)
    return state_vector(scratch, layout)


