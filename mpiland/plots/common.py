"""What every picture of :mod:`mpiland.plots` shares: image formats, the values
to draw (computed, finite), the extreme worth marking, titles and markers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import SurfaceFileError
from ..surface.reader import Surface, best_is

FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""Image formats that can be written."""

ORDER_CMAP = "plasma"
"""Colour map of training order (trajectory pictures and their colourbars)."""


def finite_values(surface: Surface, metric: str) -> np.ndarray:
    """The metric with NaN wherever it is not computed or not finite."""
    v = surface.values(metric)
    return np.where(np.isfinite(v), v, np.nan)


def require_values(surface: Surface, metric: str) -> np.ndarray:
    """:func:`finite_values`, after checking there is something to draw (else SurfaceFileError)."""
    if not surface.computed[metric].any():
        raise SurfaceFileError(f"{surface.path}: nothing computed yet for {metric}; run the job first")
    v = finite_values(surface, metric)
    if not np.isfinite(v).any():
        raise SurfaceFileError(f"{surface.path}: every computed point of {metric} is inf or NaN, "
                               "so there is nothing to draw; check the model and the grid range")
    return v


def best_point(values: np.ndarray, metric: str) -> tuple[tuple[int, ...], float, str] | None:
    """Index, value and word ("min"/"max") of the extreme worth marking (:func:`best_is`), or None."""
    word = best_is(metric)
    if word is None or not np.isfinite(values).any():
        return None
    flat = np.nanargmax(values) if word == "max" else np.nanargmin(values)
    idx = tuple(int(i) for i in np.unravel_index(int(flat), values.shape))
    return idx, float(values[idx]), word


def figure_title(surface: Surface, what: str) -> str:
    """``what``, the job name, and the progress when the file is not finished."""
    title = what
    if surface.name:
        title += f" \u2014 {surface.name}"
    total = int(surface.done.size)
    done = int(surface.done.sum())
    if done < total:
        title += f"\n({done}/{total} points done)"
    return title


def spread(n: int, most: int) -> list[int]:
    """At most ``most`` evenly spaced indices of ``range(n)``, always the first and the last."""
    if n <= most:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, most)})


def check_markers(markers: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    """The user's labelled markers as (x, y) float pairs (else SurfaceFileError)."""
    out: dict[str, tuple[float, float]] = {}
    for label, pos in (markers or {}).items():
        try:
            mx, my = (float(c) for c in pos)
        except (TypeError, ValueError):
            raise SurfaceFileError(f"marker {label!r}: expected an (x, y) pair of numbers, got {pos!r}") from None
        out[str(label)] = (mx, my)
    return out


def check_formats(formats: Sequence[str] | str) -> list[str]:
    """The image formats asked for, lower case and without duplicates (else SurfaceFileError)."""
    if isinstance(formats, str):
        formats = [formats]
    out: list[str] = []
    for f in formats:
        fmt = str(f).lower().lstrip(".")
        if fmt not in FORMATS:
            raise SurfaceFileError(f"unsupported image format {f!r}; choose from {', '.join(FORMATS)}")
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise SurfaceFileError(f"no image format given; choose from {', '.join(FORMATS)}")
    return out
