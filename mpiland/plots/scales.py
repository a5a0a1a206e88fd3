"""Colour limits, contour levels and colour maps of 2D pictures.

Limits and levels default to a robust range around the basin, so a few huge
values at the edge of the grid do not flatten the picture; ``vmin``/``vmax``/
``levels`` override them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.colorbar import Colorbar
from matplotlib.ticker import LogLocator

from ..errors import SurfaceFileError
from ..surface.reader import curve_metric

_CMAP = "viridis"
_DIVERGING_CMAP = "RdBu_r"


def metric_scale(metric: str) -> str:
    """How colours and levels cover a metric's values.

    ``low``: losses, most colours near the minimum; ``high``: accuracies, near the
    maximum; ``ratio``: ``*_hess_ratio`` (|λmin/λmax| ≥ 0, mostly ≪ 1), anchored at 0
    with a robust top; ``robust``: anything else (Hessian eigenvalues, standard
    errors, unknown metrics), robust percentiles on both sides.
    """
    base = curve_metric(metric)
    if base.endswith("_hess_ratio"):
        return "ratio"
    if base.endswith("_loss"):
        return "low"
    if base.endswith("_acc"):
        return "high"
    return "robust"


def value_range(values: np.ndarray, metric: str, log: bool, vmin: float | None,
                 vmax: float | None, loose: bool = False) -> tuple[float, float]:
    """Robust (lo, hi) for colours and levels.

    For a loss, lo is the minimum and hi the smaller of a high percentile and
    ``lo + mult * (median - lo)`` (in log space when ``log``), so that the basin
    gets most of the colours and levels; accuracies are mirrored (hi is the
    maximum); other metrics follow :func:`metric_scale`. ``loose`` widens the range
    (3D plots show the walls too).
    """
    v = values[np.isfinite(values)]
    if log:
        v = v[v > 0]
        if not v.size:
            raise SurfaceFileError(f"{metric} has no positive values, so it cannot be drawn on a "
                                   "log scale; plot it without log")
    if v.size:
        t = np.log(v) if log else v
        if loose:
            pct, mult = (99.5, 6.0) if log else (99.5, 10.0)
        else:
            pct, mult = (98.0, 3.0) if log else (95.0, 3.0)
        t_lo, t_hi, t_med = float(t.min()), float(t.max()), float(np.median(t))
        scale = metric_scale(metric)
        if scale == "high":
            hi = t_hi
            lo = max(float(np.percentile(t, 100 - pct)), t_hi - mult * (t_hi - t_med))
            if lo >= hi:
                lo = t_lo
        elif scale == "low":
            lo = t_lo
            hi = min(float(np.percentile(t, pct)), t_lo + mult * (t_med - t_lo))
            if hi <= lo:
                hi = t_hi
        else:
            lo = min(0.0, t_lo) if scale == "ratio" and not log else float(np.percentile(t, 100 - pct))
            hi = float(np.percentile(t, pct))
            if hi <= lo:
                lo, hi = t_lo, t_hi
        if log:
            lo, hi = float(np.exp(lo)), float(np.exp(hi))
    else:  # nothing usable: only reached with both limits given
        lo, hi = 1.0, 10.0
    if vmin is not None:
        lo = float(vmin)
    if vmax is not None:
        hi = float(vmax)
    if vmin is not None and vmax is not None and not lo < hi:
        raise SurfaceFileError(f"vmin ({vmin}) must be smaller than vmax ({vmax}); swap or widen them")
    if log and lo <= 0:
        raise SurfaceFileError(f"vmin ({lo}) must be positive on a log scale; raise it or drop log")
    if not lo < hi:  # constant surface, or one limit given past the data
        if vmin is not None and vmax is None:
            hi = lo * 10 if log else lo + max(abs(lo) * 0.1, 1e-3)
        elif log:
            lo = hi / 10 if vmax is not None else lo / 2
            hi = hi if vmax is not None else hi * 2
        else:
            pad = max(abs(lo) * 0.1, 1e-3)
            lo, hi = (hi - 2 * pad, hi) if vmax is not None else (lo - pad, hi + pad)
    return lo, hi


def contour_levels(lo: float, hi: float, levels: int | Sequence[float] | None, log: bool, n: int) -> np.ndarray:
    """Contour levels: the explicit ``levels`` checked, else a count of them (default ``n``) over [lo, hi]."""
    if levels is not None and not isinstance(levels, (int, np.integer)):
        arr = np.unique(np.asarray(list(levels), dtype=np.float64))
        if arr.size < 1 or not np.isfinite(arr).all():
            raise SurfaceFileError(f"levels {list(levels)!r} must be finite numbers; give a count or a list")
        if log and (arr <= 0).any():
            raise SurfaceFileError("levels must be positive on a log scale; drop the non-positive ones")
        return arr
    if levels is not None:
        n = int(levels)
        if n < 2:
            raise SurfaceFileError(f"levels must be at least 2, got {n}")
    return np.geomspace(lo, hi, n) if log else np.linspace(lo, hi, n)


def level_format(levels: np.ndarray, log: bool) -> str:
    """A label format with enough decimals that neighbouring levels read differently."""
    steps = np.diff(np.asarray(levels, dtype=np.float64))
    steps = steps[steps > 0]
    if log or not steps.size:
        return "%.3g"
    decimals = int(np.clip(np.ceil(-np.log10(steps.min())), 0, 8))
    return f"%.{decimals}f"


def colour_map(metric: str, lo: float, hi: float, log: bool) -> tuple[str, mcolors.Normalize]:
    """Colour map and norm: diverging around 0 for Hessian eigenvalues of both signs, else sequential."""
    if log:
        return _CMAP, mcolors.LogNorm(lo, hi)
    if "_hess_" in curve_metric(metric) and metric_scale(metric) == "robust" and lo < 0 < hi:
        return _DIVERGING_CMAP, mcolors.TwoSlopeNorm(0.0, lo, hi)
    return _CMAP, mcolors.Normalize(lo, hi)


def colourbar_extend(values: np.ndarray, lo: float, hi: float) -> str:
    """Which ends of a colourbar get arrows: where values lie outside [lo, hi]."""
    v = values[np.isfinite(values)]
    below, above = bool((v < lo).any()), bool((v > hi).any())
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get((below, above), "neither")


def log_ticks(cbar: Colorbar, lo: float, hi: float) -> None:
    """Readable ticks (1, 2, 5 per decade) on a log-scaled colourbar."""
    decades = np.log10(hi / lo)
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4 else (1.0,)
    ticks = [t for t in LogLocator(subs=subs).tick_values(lo, hi) if lo <= t <= hi]
    if len(ticks) < 3:
        ticks = list(np.geomspace(lo, hi, 5))
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([f"{t:.3g}" for t in ticks])
    cbar.ax.minorticks_off()
