"""The value every kind of directions produces: θ(a, b) = origin + Σ_k c_k(a, b)·vectors[k].

Random, file, PCA, plane and Hessian directions use the grid coordinates
themselves as coefficients (``axes``); model paths use ``bilinear`` (a, b, ab),
``bezier`` (Bernstein weights) or ``polychain`` (piecewise-linear weights). The
engine writes θ(a, b) with one fused ``addmv``/``addmm`` whatever the kind.
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


@dataclass(frozen=True)
class Trajectory:
    """Checkpoints of a training run projected on the plot axes (PCA directions)."""

    coordinates: np.ndarray
    labels: tuple[str, ...]
    explained_variance_ratio: np.ndarray


@dataclass(frozen=True)
class Directions:
    """θ(a, b) = origin + Σ_k c_k(a, b)·vectors[k], with c the named coefficient map.

    ``origin`` None means the model's own state (θ*). ``variants`` are metric-name
    prefixes of paths evaluated at every grid point: "" is the path itself, "line_"
    the straight line between its end models (Bézier curves and polygonal chains).
    ``models`` are labelled positions of models in grid coordinates; ``sources`` are
    the files the directions were built from (their digests join the fingerprint).
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

    @property
    def dims(self) -> int:
        """Number of basis vectors (m)."""
        return int(self.vectors.shape[0])

    def coefficients(self, coords: np.ndarray, variant: str = "") -> np.ndarray:
        """Coefficients (n × m) of the basis vectors at grid coordinates ``coords`` (n × dims)."""
        coords = np.asarray(coords, dtype=np.float64)
        m = self.dims
        if variant == "line_":
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
