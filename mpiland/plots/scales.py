"""Colour limits, contour levels and colour maps of 2D pictures.

Limits and levels default to a robust range around the basin, so a few huge
values at the edge of the grid do not flatten the picture; ``vmin``/``vmax``/
``levels`` override them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from matplotlib import colormaps
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


def _covered_top(t: np.ndarray) -> float:
    """The top of a range that covers the data ``t``: its maximum, unless that lies further above the
    99th percentile than the whole spread below it (a few divergent points), then the percentile."""
    p99, t_lo, t_hi = float(np.percentile(t, 99)), float(t.min()), float(t.max())
    return t_hi if t_hi - p99 <= p99 - t_lo else p99


def auto_log(log: bool | None, metric: str, values: np.ndarray, vmin: float | None = None,
             levels: int | Sequence[float] | None = None) -> bool:
    """Whether to draw on a log scale: ``log`` when given, else True for a loss whose values (and
    ``vmin`` and explicit ``levels``, when given) are all positive.

    Losses span orders of magnitude between the basin and the walls; linear levels
    would leave the basin blank (its first line at many times the loss at θ*).
    """
    if log is not None:
        return bool(log)
    if metric_scale(metric) != "low":
        return False
    v = values[np.isfinite(values)]
    if not v.size or v.min() <= 0 or (vmin is not None and vmin <= 0):
        return False
    if levels is not None and not isinstance(levels, (int, np.integer)):
        arr = np.asarray(list(levels), dtype=np.float64)
        if arr.size and not (arr > 0).all():
            return False
    return True


def value_range(values: np.ndarray, metric: str, log: bool, vmin: float | None,
                 vmax: float | None, loose: bool = False) -> tuple[float, float]:
    """Robust (lo, hi) for colours and levels.

    For a loss, lo is the minimum and hi the maximum (in log space when ``log``),
    unless the maximum lies far beyond the 99th percentile (a few divergent points):
    then the percentile, and the colourbar shows an arrow. Accuracies are mirrored (hi
    is the maximum); other metrics follow :func:`metric_scale`, between robust
    percentiles. ``loose`` is the clip of 3D plots: for a loss, the smaller of a high
    percentile and ``lo + mult * (median - lo)``, so the walls do not flatten the basin.
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
            pct, mult = (99.5, 3.0) if log else (99.5, 4.0)
        else:
            pct, mult = (98.0, 3.0) if log else (95.0, 3.0)
        t_lo, t_hi, t_med = float(t.min()), float(t.max()), float(np.median(t))
        scale = metric_scale(metric)
        if scale == "high":
            hi = t_hi
            if loose:
                lo = max(float(np.percentile(t, 100 - pct)), t_hi - mult * (t_hi - t_med))
            else:
                lo = -_covered_top(-t)
            if lo >= hi:
                lo = t_lo
        elif scale == "low":
            lo = t_lo
            hi = min(float(np.percentile(t, pct)), t_lo + mult * (t_med - t_lo)) if loose else _covered_top(t)
            if hi <= lo:
                hi = t_hi
        else:
            lo = min(0.0, t_lo) if scale == "ratio" and not log else float(np.percentile(t, 100 - pct))
            hi = float(np.percentile(t, pct))
            if hi <= lo:
                lo, hi = t_lo, t_hi
        if log:  # the data's own extremes where they are the limits (exp(log(v)) can miss v by a rounding)
            lo = float(v.min()) if lo == t_lo else float(np.exp(lo))
            hi = float(v.max()) if hi == t_hi else float(np.exp(hi))
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


Extend = Literal["neither", "both", "min", "max"]
"""Which ends of a colourbar have arrows."""


def colourbar_extend(values: np.ndarray, lo: float, hi: float) -> Extend:
    """Which ends of a colourbar get arrows: where values lie outside [lo, hi]."""
    v = values[np.isfinite(values)]
    below, above = bool((v < lo).any()), bool((v > hi).any())
    ends: dict[tuple[bool, bool], Extend] = {(True, True): "both", (True, False): "min", (False, True): "max"}
    return ends.get((below, above), "neither")


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


AUTO_LOG_KINDS: tuple[str, ...] = ("contour", "contourf", "heatmap")
"""The kinds whose default for a loss is a log scale (:func:`auto_log`); a 3D surface and a curve stay linear."""

DEFAULT_LEVELS: dict[str, int] = {"contour": 20, "contourf": 30, "heatmap": 10, "surface3d": 10}
"""Levels when only their count is unset (heatmap and surface3d draw levels only when asked)."""


@dataclass(frozen=True)
class ColourScale:
    """The colours of one 2D picture, shared by all its panels.

    ``log``: values (and a 3D surface's height) on a log scale; ``lo``/``hi``: the
    range the colours (and a 3D plot's height) cover; ``levels``: contour levels, or
    None for a heatmap or 3D surface without ``levels``; ``label``: the colourbar's
    text (the metric, its scale and, for a clipped 3D plot, where it is clipped).
    """

    metric: str
    log: bool
    lo: float
    hi: float
    levels: np.ndarray | None
    cmap: str
    norm: mcolors.Normalize
    extend: Extend
    label: str


def colour_scale(values: Sequence[np.ndarray], metric: str, kind: str, log: bool | None,
                 levels: int | Sequence[float] | None, vmin: float | None, vmax: float | None,
                 zmax: float | None = None) -> ColourScale:
    """The colour scale of ``kind`` for the metric's ``values`` (one array per panel, NaN where blank).

    ``log`` None: :func:`auto_log` for contours and heatmaps, linear for 3D. A 3D
    surface is clipped at ``zmax`` (else ``vmax``, else a robust top of the loss,
    :func:`value_range` with ``loose``), and the colourbar says so when it cuts data.
    """
    allv = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in values])
    use_log = auto_log(log, metric, allv, vmin, levels) if kind in AUTO_LOG_KINDS else bool(log)
    if use_log:
        allv = np.where(allv > 0, allv, np.nan)
    three_d = kind == "surface3d"
    top = (zmax if zmax is not None else vmax) if three_d else vmax
    lo, hi = value_range(allv, metric, use_log, vmin, top, loose=three_d)
    lv: np.ndarray | None = None
    if kind in ("contour", "contourf") or levels is not None:
        lv = contour_levels(lo, hi, levels, use_log, DEFAULT_LEVELS[kind])
        if not (isinstance(levels, (int, np.integer)) or levels is None):
            lo, hi = (float(lv[0]), float(lv[-1])) if lv.size > 1 else (lo, hi)
    extend = colourbar_extend(allv, lo, hi)
    if three_d:
        label = f"log10 {metric}" if use_log else metric
        finite = allv[np.isfinite(allv)]
        cut = [f"below {lo:.3g}" if (finite < lo).any() else "", f"above {hi:.3g}" if (finite > hi).any() else ""]
        cut = [c for c in cut if c]
        if cut:
            label += f" (clipped {' and '.join(cut)})"
        t_lo, t_hi = (float(np.log10(lo)), float(np.log10(hi))) if use_log else (lo, hi)
        cmap, norm = colour_map(metric, t_lo, t_hi, False)
    else:
        label = f"{metric} (log scale)" if use_log else metric
        cmap, norm = colour_map(metric, lo, hi, use_log)
        if kind == "heatmap" and lv is not None:
            norm = mcolors.BoundaryNorm(lv, colormaps[cmap].N, extend=extend)
    return ColourScale(metric=metric, log=use_log, lo=lo, hi=hi, levels=lv, cmap=cmap, norm=norm, extend=extend,
                       label=label)
