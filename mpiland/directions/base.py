"""The value every kind of directions produces: θ(a, b) = origin + Σ_k c_k(a, b)·vectors[k].

Random, file, PCA, plane and Hessian directions use the grid coordinates
themselves as coefficients (``axes``); model paths use ``bilinear`` (a, b, ab),
``bezier`` (Bernstein weights) or ``polychain`` (piecewise-linear weights). The
engine writes θ(a, b) with one fused ``addmv``/``addmm`` whatever the kind.

Several paths may be evaluated at every grid point (*variants*, each a prefix of
its metric names). The basis is a stack of equal *blocks*, each the basis of one
path through the same origin, named by a prefix: "" (the path itself) and, for a
path with ``directions.align``, "unaligned_" (the same kind of path through the
models as given, before alignment). A variant's name is a block's prefix followed
by its *shape*: "" (the coefficient map on that block) or "line_" (the straight
line from the origin to the block's end model, t on the block's last vector;
Bézier curves and chains). So an aligned Bézier curve with its comparison line has
the variants "", "line_", "unaligned_" and "unaligned_line_": every metric of the
unaligned run, prefixed "unaligned_". A variant's coefficients are zero outside
its block (:meth:`Directions.rows`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..layout import ParamLayout

COEFFICIENT_MAPS = ("axes", "bilinear", "bezier", "polychain")
LINE = "line_"
"""The shape prefix of the straight line between a path's end models."""
UNALIGNED = "unaligned_"
"""The block prefix of the unaligned path beside an aligned one (``directions.align``)."""
SHAPES = ("", LINE)
"""What a variant evaluates on its block: the coefficient map, or the straight line to the block's end model."""


@dataclass(frozen=True)
class Trajectory:
    """Checkpoints of a training run projected on the plot axes (PCA directions)."""

    coordinates: np.ndarray
    labels: tuple[str, ...]
    explained_variance_ratio: np.ndarray


@dataclass(frozen=True)
class Directions:
    """θ(a, b) = origin + Σ_k c_k(a, b)·vectors[k], with c the named coefficient map.

    ``origin`` None means the model's own state (θ*). ``blocks`` are the prefixes
    of the basis blocks (``vectors`` stacks them, each of :attr:`block_size`
    vectors, in this order): "" is the path itself, "unaligned_" the path before
    alignment. ``variants`` are metric-name prefixes of paths evaluated at every
    grid point, each a block's prefix plus "" (its coefficient map) or "line_" (the
    straight line between its end models: Bézier curves and polygonal chains).
    ``models`` are labelled positions of models in grid coordinates (on the ""
    path); ``sources`` are the files the directions were built from (their digests
    join the fingerprint).
    """

    vectors: torch.Tensor
    layout: ParamLayout
    settings: dict[str, Any]
    origin: torch.Tensor | None = None
    coefficient_map: str = "axes"
    variants: tuple[str, ...] = ("",)
    labels: tuple[str, ...] = ()
    models: tuple[tuple[str, tuple[float, ...]], ...] = ()
    endpoints: tuple[float, float] | None = None
    trajectory: Trajectory | None = None
    sources: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ("",)

    def __post_init__(self) -> None:
        if not self.blocks or self.blocks[0] != "" or len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"blocks {self.blocks!r}: the first must be '' (the path itself), the others distinct")
        if self.dims % len(self.blocks):
            raise ValueError(f"{self.dims} basis vectors do not split into {len(self.blocks)} equal blocks")
        for variant in self.variants:
            self._split(variant)

    @property
    def dims(self) -> int:
        """Number of basis vectors (m), over all blocks: the length of a coefficient row."""
        return int(self.vectors.shape[0])

    @property
    def block_size(self) -> int:
        """Number of basis vectors of one block: the path's own basis (for ``axes``: its grid axes)."""
        return self.dims // len(self.blocks)

    def _split(self, variant: str) -> tuple[int, str]:
        """The block index and the shape ("" or "line_") of ``variant``."""
        # The longest matching block prefix: "" matches every name, so try it last.
        for i in sorted(range(len(self.blocks)), key=lambda k: -len(self.blocks[k])):
            prefix = self.blocks[i]
            if variant.startswith(prefix) and variant[len(prefix):] in SHAPES:
                return i, variant[len(prefix):]
        raise ValueError(f"unknown variant {variant!r}: expected a block prefix ({', '.join(map(repr, self.blocks))}) "
                         f"followed by '' or {LINE!r}")

    def rows(self, variant: str = "") -> slice:
        """The basis vectors ``variant`` uses: ``vectors[rows(variant)]`` (its other coefficients are 0)."""
        i, _ = self._split(variant)
        m = self.block_size
        return slice(i * m, (i + 1) * m)

    def block_coefficients(self, coords: np.ndarray, variant: str = "") -> np.ndarray:
        """Coefficients (n × block_size) of the vectors of ``variant``'s block at grid coordinates ``coords``."""
        coords = np.asarray(coords, dtype=np.float64)
        _, shape = self._split(variant)
        m = self.block_size
        if shape == LINE:
            out = np.zeros((coords.shape[0], m))
            out[:, -1] = coords[:, 0]
            return out
        if self.coefficient_map == "axes":
            return coords
        if self.coefficient_map == "bilinear":
            a, b = coords[:, 0], coords[:, 1]
            return np.stack([a, b, a * b], axis=1)
        t = coords[:, 0]
        if self.coefficient_map == "bezier":
            return np.stack([math.comb(m, i) * t**i * (1 - t) ** (m - i) for i in range(1, m + 1)], axis=1)
        if self.coefficient_map == "polychain":
            seg = np.clip(np.floor(t * m), 0, m - 1).astype(np.int64)
            s = t * m - seg
            weights = np.zeros((t.size, m + 1))
            rows = np.arange(t.size)
            weights[rows, seg] = 1 - s
            weights[rows, seg + 1] += s
            return weights[:, 1:]
        raise ValueError(f"unknown coefficient map {self.coefficient_map!r}")

    def coefficients(self, coords: np.ndarray, variant: str = "") -> np.ndarray:
        """Coefficients (n × m) of all basis vectors at grid coordinates ``coords`` (n × dims of the grid).

        ``variant``'s block gets :meth:`block_coefficients`, every other block 0.
        """
        block = self.block_coefficients(coords, variant)
        if len(self.blocks) == 1:
            return block
        out = np.zeros((block.shape[0], self.dims))
        out[:, self.rows(variant)] = block
        return out


def axis_label(axis: str, settings: dict[str, Any]) -> str:
    """Human-readable axis name for plots, e.g. ``random direction x (filter-normalised)``."""
    norm = settings.get("norm", "none")
    suffix = "not normalised" if norm == "none" else f"{norm}-normalised"
    kind = settings.get("kind", "random")
    if kind == "file":
        files = settings.get("file") or []
        src = Path(files[0] if len(files) == 1 or axis == "x" else files[-1]).name if files else "file"
        return f"direction {axis} from {src} ({suffix})"
    return f"{kind} direction {axis} ({suffix})"
