"""Figures of surface files: a curve for 1D files; contours, heatmaps and 3D surfaces for 2D.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the
non-interactive Agg canvas (PNG) or the PDF/SVG canvases; pyplot is not used,
so plotting needs no display, leaves no open figures behind and does not change
the backend of a program (or notebook) that imports this module.

Points not computed yet are left blank, and so are computed points whose value
is ±inf or NaN (divergent). Colour limits and contour levels default to a
robust range around the basin, so a few huge values at the edge of the grid do
not flatten the picture; ``vmin``/``vmax``/``levels`` override them.

What the file knows is drawn without being asked: the reference models
(``models/``), a projected training trajectory (``trajectory/``, with the
explained variance in the axis labels), and on 1D curves the straight-line
comparison (``line_*`` metrics, dashed) and the loss barrier between the end
models. :func:`plot_trajectory` draws a training trajectory on its own (PCA
path, Andrews curves, radar chart).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib import colors as mcolors
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from .errors import SurfaceFileError
from .report import LINE_PREFIX, Surface, barrier, best_is, curve_metric, load_surface

KINDS_1D: tuple[str, ...] = ("curve",)
"""Plot kinds for 1D surface files."""

KINDS_2D: tuple[str, ...] = ("contour", "contourf", "heatmap", "surface3d")
"""Plot kinds for 2D surface files."""

KINDS: tuple[str, ...] = ("auto", "all") + KINDS_1D + KINDS_2D
"""Every value ``kind`` accepts."""

FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""Image formats that can be written."""

_CMAP = "viridis"
_DIVERGING_CMAP = "RdBu_r"
_ORDER_CMAP = "plasma"
_DEFAULT_LEVELS = {"contour": 20, "contourf": 30}
_TRAJECTORY_COLOUR = "crimson"
_RADAR_MAX = 8


# ---------------------------------------------------------------------------
# choosing what to draw


def _kinds_for(surface: Surface, kind: str) -> list[str]:
    valid = KINDS_1D if surface.dims == 1 else KINDS_2D
    if kind == "auto":
        return [valid[0]]
    if kind == "all":
        return list(valid)
    if kind not in KINDS:
        raise SurfaceFileError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind not in valid:
        raise SurfaceFileError(
            f"{surface.path}: is a {surface.dims}D surface, so plot kind {kind!r} does not apply; "
            f"valid kinds for it: auto, all, {', '.join(valid)}")
    return [kind]


def _scale(metric: str) -> str:
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


def _finite(surface: Surface, metric: str) -> np.ndarray:
    """The metric with NaN wherever it is not computed or not finite."""
    v = surface.values(metric)
    return np.where(np.isfinite(v), v, np.nan)


def _require_values(surface: Surface, metric: str) -> np.ndarray:
    if not surface.computed[metric].any():
        raise SurfaceFileError(f"{surface.path}: nothing computed yet for {metric}; run the job first")
    v = _finite(surface, metric)
    if not np.isfinite(v).any():
        raise SurfaceFileError(f"{surface.path}: every computed point of {metric} is inf or NaN, "
                               "so there is nothing to draw; check the model and the grid range")
    return v


def _value_range(values: np.ndarray, metric: str, log: bool, vmin: float | None,
                 vmax: float | None, loose: bool = False) -> tuple[float, float]:
    """Robust (lo, hi) for colours and levels.

    For a loss, lo is the minimum and hi the smaller of a high percentile and
    ``lo + mult * (median - lo)`` (in log space when ``log``), so that the basin
    gets most of the colours and levels; accuracies are mirrored (hi is the
    maximum); other metrics follow :func:`_scale`. ``loose`` widens the range
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
        scale = _scale(metric)
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


def _levels(lo: float, hi: float, levels: int | Sequence[float] | None, log: bool, n: int) -> np.ndarray:
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


def _level_format(levels: np.ndarray, log: bool) -> str:
    """A label format with enough decimals that neighbouring levels read differently."""
    steps = np.diff(np.asarray(levels, dtype=np.float64))
    steps = steps[steps > 0]
    if log or not steps.size:
        return "%.3g"
    decimals = int(np.clip(np.ceil(-np.log10(steps.min())), 0, 8))
    return f"%.{decimals}f"


def _colours(metric: str, lo: float, hi: float, log: bool) -> tuple[str, mcolors.Normalize]:
    """Colour map and norm: diverging around 0 for Hessian eigenvalues of both signs, else sequential."""
    if log:
        return _CMAP, mcolors.LogNorm(lo, hi)
    if "_hess_" in curve_metric(metric) and _scale(metric) == "robust" and lo < 0 < hi:
        return _DIVERGING_CMAP, mcolors.TwoSlopeNorm(0.0, lo, hi)
    return _CMAP, mcolors.Normalize(lo, hi)


def _extend(values: np.ndarray, lo: float, hi: float) -> str:
    v = values[np.isfinite(values)]
    below, above = bool((v < lo).any()), bool((v > hi).any())
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get((below, above), "neither")


def _best(values: np.ndarray, metric: str) -> tuple[tuple[int, ...], float, str] | None:
    """Index, value and word ("min"/"max") of the extreme worth marking (:func:`best_is`), or None."""
    word = best_is(metric)
    if word is None or not np.isfinite(values).any():
        return None
    flat = np.nanargmax(values) if word == "max" else np.nanargmin(values)
    idx = tuple(int(i) for i in np.unravel_index(int(flat), values.shape))
    return idx, float(values[idx]), word


def _axis_labels(s: Surface) -> tuple[str, str]:
    """The x and y labels, with the share of variance when the directions are principal components."""
    xl, yl = s.x_label, s.y_label
    ratio = s.explained_variance_ratio
    if ratio is not None and ratio.size >= 2:
        xl += f" ({100 * ratio[0]:.1f} % of variance)"
        yl += f" ({100 * ratio[1]:.1f} % of variance)"
    return xl, yl


def _title(surface: Surface, what: str) -> str:
    title = what
    if surface.name:
        title += f" \u2014 {surface.name}"
    total = int(surface.done.size)
    done = int(surface.done.sum())
    if done < total:
        title += f"\n({done}/{total} points done)"
    return title


def _spread(n: int, most: int) -> list[int]:
    """At most ``most`` evenly spaced indices of ``range(n)``, always the first and the last."""
    if n <= most:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, most)})


def _check_markers(markers: Mapping[str, tuple[float, float]] | None) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for label, pos in (markers or {}).items():
        try:
            mx, my = (float(c) for c in pos)
        except (TypeError, ValueError):
            raise SurfaceFileError(f"marker {label!r}: expected an (x, y) pair of numbers, got {pos!r}") from None
        out[str(label)] = (mx, my)
    return out


# ---------------------------------------------------------------------------
# drawing


def _curve_metrics(s: Surface, metric: str | None) -> tuple[list[str], list[str]]:
    """The metrics of a curve plot: (left axis, right accuracy axis), ``line_`` ones beside their curve's."""
    if metric is None:
        left = s.loss_metrics() or [s.default_metric()]
        right = [m for m in s.metrics if curve_metric(m).endswith("_acc")]
        return left, right
    if not metric.endswith("_loss"):
        return [metric], []
    acc = metric[: -len("_loss")] + "_acc"
    left, right = [metric], [acc]
    if not metric.startswith(LINE_PREFIX):
        left.append(LINE_PREFIX + metric)
        right.append(LINE_PREFIX + acc)
    return [m for m in left if m in s.metrics], [m for m in right if m in s.metrics]


def _draw_barrier(ax, x: np.ndarray, v: np.ndarray, s: Surface, label: str, colour: str, k: int,
                  log: bool) -> None:
    """The straight line between the end points and a bar from it to the loss's highest excess.

    Drawn for a path between models (the file has ``endpoints``); on other curves
    (a random direction through θ*) only when the grid ends do have a barrier
    between them, so a plain convex curve stays uncluttered.
    """
    try:
        b = barrier(x, v, s.endpoints)
    except SurfaceFileError:  # too few finite values: nothing to show
        return
    if b["height"] is None or (s.endpoints is None and b["height"] <= 0):
        return
    t0, t1, l0, l1, h, at = b["t0"], b["t1"], b["loss0"], b["loss1"], b["height"], b["at"]
    ts = np.linspace(t0, t1, 64)
    ax.plot(ts, l0 + (ts - t0) * (l1 - l0) / (t1 - t0), color=colour, lw=0.8, ls=":", alpha=0.9)
    base = l0 + (at - t0) * (l1 - l0) / (t1 - t0)
    line = label.startswith(LINE_PREFIX)
    ax.plot([at, at], [base, base + h], color=colour, lw=1.4 if line else 2.4, alpha=0.9, solid_capstyle="butt")
    top = base + h
    mid = float(np.sqrt(base * top)) if log and base > 0 and top > 0 else base + h / 2
    ax.annotate(f"{'straight line: ' if line else ''}barrier {h:.3g} at t={at:.3g}", (at, mid),
                xytext=(6, 10 * (k % 3) - 10), textcoords="offset points", fontsize=8, color=colour,
                ha="left", va="center", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colour, alpha=0.8),
                zorder=6)


def _vertical_marks(ax, marks: Sequence[tuple[str, float]], style: dict) -> None:
    for label, mx in marks:
        ax.axvline(mx, **style)
        ax.annotate(label, (mx, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8)


def _draw_curve(fig: Figure, s: Surface, metric: str | None, log: bool,
                vmin: float | None, vmax: float | None, markers: dict[str, tuple[float, float]]) -> None:
    ax = fig.add_subplot()
    left, right = _curve_metrics(s, metric)
    drawable = [m for m in left if np.isfinite(_finite(s, m)).any()]
    if not drawable:
        _require_values(s, left[0])  # raises with the reason
    left = drawable
    colours: dict[str, str] = {}

    def colour(m: str) -> str:
        split = curve_metric(m).split("_", 1)[0]
        return colours.setdefault(split, f"C{len(colours)}")

    x = s.x
    marker = "." if x.size <= 60 else None
    shown: list[np.ndarray] = []
    for k, m in enumerate(left):
        v = _finite(s, m)
        if log:
            v = np.where(v > 0, v, np.nan)
        c = colour(m)
        line = m.startswith(LINE_PREFIX)
        ax.plot(x, v, color=c, lw=1.4 if line else 1.8, ls="--" if line else "-", marker=marker, ms=4, label=m)
        se = m + "_stderr"
        if se in s.metrics:
            e = _finite(s, se)
            if np.isfinite(e).any():
                lo_band = v - e
                if log:
                    lo_band = np.where(lo_band > 0, lo_band, np.nan)
                ax.fill_between(x, lo_band, v + e, color=c, alpha=0.15 if line else 0.25, lw=0,
                                label=f"{m} \u00b1 stderr")
        if not np.isfinite(v).any():
            continue
        shown.append(v[np.isfinite(v)])
        if m.endswith("_loss"):
            _draw_barrier(ax, x, v, s, m, c, k, log)
        best = None if line else _best(v, m)
        if best is not None:
            (ib,), vb, word = best
            ax.plot([x[ib]], [vb], "o", color=c, mec="black", ms=7, zorder=5)
            ax.annotate(f"{word} {vb:.4g}\nat x={x[ib]:.3g}", (x[ib], vb), xytext=(14, 18 + 30 * k),
                        textcoords="offset points", fontsize=8, color=c,
                        arrowprops=dict(arrowstyle="->", color=c, lw=0.8),
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=c, alpha=0.8))
    if log:
        ax.set_yscale("log")
    if vmin is not None or vmax is not None:
        ax.set_ylim(vmin, vmax)
    elif shown and not log:
        allv = np.concatenate(shown)
        lo, hi, med = float(allv.min()), float(allv.max()), float(np.median(allv))
        robust = lo + 10 * (med - lo)
        if lo < robust < hi:  # a few huge (divergent) values: keep the basin readable
            pad = 0.05 * (robust - lo)
            ax.set_ylim(lo - pad, robust + pad)
    ax.set_xlabel(s.x_label)
    ax.set_ylabel(left[0] if len(left) == 1 else "loss")
    if x.size and x.min() <= 0 <= x.max():
        ax.axvline(0.0, color="0.5", lw=0.8, ls=":")
    if s.models is not None:
        _vertical_marks(ax, list(zip(s.models.labels, s.models.coordinates[:, 0].tolist())),
                        dict(color="0.3", lw=0.9, ls="-."))
    _vertical_marks(ax, [(label, mx) for label, (mx, _my) in markers.items()], dict(color="0.2", lw=0.8, ls="--"))
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for m in right:
            v = _finite(s, m)
            ax2.plot(x, v, color=colour(m), lw=1.2, ls=":" if m.startswith(LINE_PREFIX) else "-.",
                     marker=marker, ms=3, label=m)
        ax2.set_ylabel("accuracy")
        ax.set_zorder(ax2.get_zorder() + 1)  # losses and their notes above the accuracy lines
        ax.patch.set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.8)
    names = [m for m in left + right if not m.startswith(LINE_PREFIX)] or left
    note = ""
    if any(m.startswith(LINE_PREFIX) for m in left + right) and len(names) < len(left + right):
        note = "\n(dashed: the straight line between the end models)"
    ax.set_title(_title(s, ", ".join(names)) + note)
    ax.grid(True, alpha=0.3)


def _grid(s: Surface, kind: str) -> tuple[np.ndarray, np.ndarray]:
    assert s.y is not None
    if kind != "heatmap" and (s.x.size < 2 or s.y.size < 2):
        raise SurfaceFileError(f"{s.path}: a {kind} plot needs at least 2 points along x and y, "
                               f"the grid is {s.x.size} x {s.y.size}; use kind heatmap")
    return np.meshgrid(s.x, s.y)  # shape (ny, nx): element [j, i] is at (x[i], y[j])


def _edges(c: np.ndarray) -> np.ndarray:
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[2 * c[0] - mid[0]], mid, [2 * c[-1] - mid[-1]]])


def _log_ticks(cbar, lo: float, hi: float) -> None:
    """Readable ticks (1, 2, 5 per decade) on a log-scaled colourbar."""
    decades = np.log10(hi / lo)
    subs = (1.0, 2.0, 5.0) if decades <= 2.5 else (1.0, 3.0) if decades <= 4 else (1.0,)
    ticks = [t for t in LogLocator(subs=subs).tick_values(lo, hi) if lo <= t <= hi]
    if len(ticks) < 3:
        ticks = list(np.geomspace(lo, hi, 5))
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([f"{t:.3g}" for t in ticks])
    cbar.ax.minorticks_off()


def _draw_trajectory(ax, s: Surface) -> None:
    """The projected training path: a line with small markers, start and end emphasised, a few labels."""
    assert s.trajectory is not None
    pts, labels = s.trajectory.coordinates, s.trajectory.labels
    c = _TRAJECTORY_COLOUR
    ax.plot(pts[:, 0], pts[:, 1], "-", color=c, lw=1.3, marker="o", ms=3, zorder=6, label="training trajectory")
    ax.plot(pts[:1, 0], pts[:1, 1], "o", ms=9, mfc="white", mec=c, mew=2, zorder=7, label=f"start ({labels[0]})")
    ax.plot(pts[-1:, 0], pts[-1:, 1], "s", ms=8, mfc=c, mec="white", mew=1, zorder=7, label=f"end ({labels[-1]})")
    for i in _spread(len(labels), 5):
        ax.annotate(labels[i], (pts[i, 0], pts[i, 1]), xytext=(5, -11), textcoords="offset points",
                    fontsize=7, color=c, zorder=8, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none",
                                                             alpha=0.7))


def _mark_2d(ax, s: Surface, values: np.ndarray, metric: str,
             markers: dict[str, tuple[float, float]], z: float | None = None) -> None:
    """Mark the extreme worth marking, the origin, the user's markers and (2D axes only) the file's
    models and trajectory."""
    assert s.y is not None
    best = _best(values, metric)
    star: dict | None = None
    xb = yb = 0.0
    if best is not None:
        (i, j), vb, word = best
        xb, yb = float(s.x[i]), float(s.y[j])
        star = dict(marker="*", ms=14, color="red", mec="white", mew=0.8, ls="none", zorder=6, clip_on=False,
                    label=f"{word} {vb:.4g} at ({xb:.3g}, {yb:.3g})")
    origin = dict(marker="P", ms=10, color="black", mec="white", mew=0.8, ls="none", zorder=6,
                  label="origin (0, 0)")
    has_origin = s.x.min() <= 0 <= s.x.max() and s.y.min() <= 0 <= s.y.max()
    if z is None:
        if star is not None:
            ax.plot([xb], [yb], **star)
        if has_origin:
            ax.plot([0.0], [0.0], **origin)
        if s.trajectory is not None:
            _draw_trajectory(ax, s)
        if s.models is not None:
            pts = s.models.coordinates
            ax.plot(pts[:, 0], pts[:, 1], "D", ms=7, mfc="orange", mec="black", ls="none", zorder=8,
                    label="models")
            for label, (mx, my) in zip(s.models.labels, pts):
                ax.annotate(label, (mx, my), xytext=(6, 6), textcoords="offset points", fontsize=8,
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=9)
        for label, (mx, my) in markers.items():
            ax.plot([mx], [my], marker="o", ms=7, mfc="white", mec="black", ls="none", zorder=6)
            ax.annotate(label, (mx, my), xytext=(6, 6), textcoords="offset points", fontsize=8,
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=7)
    else:
        if star is not None:
            ax.plot([xb], [yb], [z], **star)
        if has_origin:
            ax.plot([0.0], [0.0], [z], **origin)
        for label, (mx, my) in markers.items():
            ax.plot([mx], [my], [z], marker="o", ms=7, mfc="white", mec="black", ls="none")
            ax.text(mx, my, z, f" {label}", fontsize=8)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8, framealpha=0.8)


def _draw_2d(fig: Figure, s: Surface, kind: str, metric: str, log: bool,
             levels: int | Sequence[float] | None, vmin: float | None, vmax: float | None,
             markers: dict[str, tuple[float, float]]) -> None:
    assert s.y is not None
    values = _require_values(s, metric)  # (nx, ny), NaN where blank
    if log:
        values = np.where(values > 0, values, np.nan)
    lo, hi = _value_range(values, metric, log, vmin, vmax, loose=kind == "surface3d")
    z = np.ma.masked_invalid(values.T)  # (ny, nx) so that x is horizontal
    label = f"{metric} (log scale)" if log else metric
    xlabel, ylabel = _axis_labels(s)
    cmap, norm = _colours(metric, lo, hi, log)
    if kind == "surface3d":
        X, Y = _grid(s, kind)
        ax = fig.add_subplot(projection="3d")
        zt = np.log10(values.T) if log else values.T.copy()
        t_lo, t_hi = (np.log10(lo), np.log10(hi)) if log else (lo, hi)
        zc = np.clip(zt, t_lo, t_hi)  # NaN stays NaN: those cells are left out
        surf = ax.plot_surface(X, Y, zc, cmap=cmap, norm=norm if not log else mcolors.Normalize(t_lo, t_hi),
                               rcount=min(X.shape[0], 150), ccount=min(X.shape[1], 150),
                               linewidth=0, antialiased=False)
        ax.set_zlim(t_lo, t_hi)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_zlabel(f"log10 {metric}" if log else metric)
        fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.12, label=f"log10 {metric}" if log else metric)
        _mark_2d(ax, s, _finite(s, metric), metric, markers, z=t_lo)
        ax.set_title(_title(s, label))
        return
    ax = fig.add_subplot()
    if kind == "heatmap":
        mesh = ax.pcolormesh(_edges(s.x), _edges(s.y), z, cmap=cmap, norm=norm, shading="flat")
        cbar = fig.colorbar(mesh, ax=ax, label=label, extend=_extend(values, lo, hi))
        if log:
            _log_ticks(cbar, lo, hi)
    elif kind == "contourf":
        X, Y = _grid(s, kind)
        lv = _levels(lo, hi, levels, log, _DEFAULT_LEVELS["contourf"])
        cs = ax.contourf(X, Y, z, levels=lv, cmap=cmap, norm=norm, extend=_extend(values, lv[0], lv[-1]))
        cbar = fig.colorbar(cs, ax=ax, label=label)
        if log:
            _log_ticks(cbar, lv[0], lv[-1])
    else:  # contour
        X, Y = _grid(s, kind)
        lv = _levels(lo, hi, levels, log, _DEFAULT_LEVELS["contour"])
        cs = ax.contour(X, Y, z, levels=lv, cmap=cmap, norm=norm, linewidths=1.0)
        if len(cs.levels):
            ax.clabel(cs, cs.levels[::2], inline=True, fontsize=7, fmt=_level_format(lv, log))
    ax.set_xlim(_edges(s.x)[[0, -1]] if kind == "heatmap" else (s.x.min(), s.x.max()))
    ax.set_ylim(_edges(s.y)[[0, -1]] if kind == "heatmap" else (s.y.min(), s.y.max()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _mark_2d(ax, s, _finite(s, metric), metric, markers)
    ax.set_title(_title(s, label))


def render(surface: Surface, kind: str, metric: str | None = None, log: bool = False,
           levels: int | Sequence[float] | None = None, vmin: float | None = None,
           vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Draw one concrete ``kind`` (not auto/all) of a loaded surface on a new Figure."""
    kinds = _kinds_for(surface, kind)
    if len(kinds) != 1 or kinds[0] != kind:
        raise SurfaceFileError(f"render() needs one concrete kind, not {kind!r}; "
                               f"choose one of {', '.join(KINDS_1D + KINDS_2D)}")
    marks = _check_markers(markers)
    if kind == "surface3d":
        fig = Figure(figsize=(8.0, 6.0))
    else:
        fig = Figure(figsize=(7.0, 5.2))
    if kind == "curve":
        chosen = None if metric is None else surface.check_metric(metric)
        _require_values(surface, chosen or surface.default_metric())
        _draw_curve(fig, surface, chosen, log, vmin, vmax, marks)
    else:
        _draw_2d(fig, surface, kind, surface.check_metric(metric), log, levels, vmin, vmax, marks)
    return fig


# ---------------------------------------------------------------------------
# output files


def _formats(formats: Sequence[str] | str) -> list[str]:
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


def _targets(path: pathlib.Path, out: str | os.PathLike[str] | None, kind: str, metric: str,
             formats: list[str], several_kinds: bool) -> list[pathlib.Path]:
    stem = f"{path.stem}_{kind}_{metric}"
    if out is None:
        return [path.with_name(f"{stem}.{fmt}") for fmt in formats]
    target = pathlib.Path(out)
    text = os.fspath(out)
    suffix = target.suffix.lower().lstrip(".")
    if target.is_dir() or text.endswith(("/", os.sep)) or not suffix:
        return [target / f"{stem}.{fmt}" for fmt in formats]
    if suffix not in FORMATS:
        raise SurfaceFileError(f"output {text!r} has an unsupported suffix .{suffix}; "
                               f"use .{', .'.join(FORMATS)}, or give a directory")
    if several_kinds:
        return [target.with_name(f"{target.stem}_{kind}{target.suffix}")]
    return [target]


def plot_surface(
    path: str | os.PathLike[str],
    kind: str = "auto",
    metric: str | None = None,
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] = ("png",),
    log: bool = False,
    levels: int | Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    markers: Mapping[str, tuple[float, float]] | None = None,
) -> list[pathlib.Path]:
    """Plot a surface file and return the paths of the images written.

    ``kind``: ``auto`` (curve for 1D, contour for 2D), ``all`` (every kind valid
    for the file), or one of :data:`KINDS_1D` / :data:`KINDS_2D`. ``metric``: a
    dataset such as ``test_loss`` or ``train_acc``; default: the first
    ``<split>_loss`` (a 1D curve without ``metric`` shows every split's loss and
    accuracy). ``out``: None writes next to the surface file
    (``surf.h5`` -> ``surf_contour_test_loss.png``); a directory (existing, ending
    in ``/``, or without suffix) receives files named that way; a ``.png``/``.pdf``
    /``.svg`` path is written as given and its suffix picks the format (with
    ``kind="all"`` the kind is appended to its stem). ``log``: log-scale loss axis
    or log-spaced levels/colours. ``levels``: a count or explicit contour levels.
    ``vmin``/``vmax``: colour (or y-axis) limits. ``markers``: labelled (x, y)
    points drawn on 2D plots (vertical lines at x on 1D curves), in addition to
    the file's own ``models/`` and ``trajectory/``, which are always drawn
    (except on 3D surfaces). Curves show each loss's barrier between the end
    models (file attribute ``endpoints``; without it, between the grid ends when
    there is one) and draw ``line_*`` metrics dashed in their curve's colour.
    """
    surface = load_surface(path)
    kinds = _kinds_for(surface, kind)
    chosen = surface.check_metric(metric)
    fmts = _formats(formats)
    _check_markers(markers)
    _require_values(surface, chosen)
    written: list[pathlib.Path] = []
    for k in kinds:
        targets = _targets(surface.path, out, k, chosen, fmts, several_kinds=len(kinds) > 1)
        fig = render(surface, k, metric, log=log, levels=levels, vmin=vmin, vmax=vmax, markers=markers)
        try:
            for t in targets:
                t.parent.mkdir(parents=True, exist_ok=True)
                fmt = t.suffix.lower().lstrip(".")
                fig.savefig(t, format=fmt, dpi=150 if fmt == "png" else None, bbox_inches="tight")
                written.append(t)
        finally:
            fig.clear()
    return written


# ---------------------------------------------------------------------------
# training trajectories


def andrews_curves(coords: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Andrews curves (Andrews 1972) of the rows of ``coords`` (T, k) at the angles ``s`` (S,).

    Row x gives f(s) = x1/√2 + x2 sin s + x3 cos s + x4 sin 2s + x5 cos 2s + …;
    checkpoints close in all k components have close curves, so the plot shows
    the whole trajectory, not just two components. Returns shape (T, S).
    """
    c = _checked_array(coords, "coords", ndim=2)
    angles = _checked_array(s, "s", ndim=1)
    basis = np.empty((c.shape[1], angles.size))
    basis[0] = 1.0 / np.sqrt(2.0)
    for j in range(1, c.shape[1]):
        n = (j + 1) // 2
        basis[j] = np.sin(n * angles) if j % 2 else np.cos(n * angles)
    return c @ basis


def _checked_array(value: object, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SurfaceFileError(f"{name} must be an array of numbers, got {type(value).__name__}; "
                               "pass the projected checkpoints as floats") from None
    if arr.ndim != ndim or not np.isfinite(arr).all():
        raise SurfaceFileError(f"{name} must be a {ndim}D array of finite numbers, got shape {arr.shape}"
                               f"{'' if np.isfinite(arr).all() else ' with inf/NaN'}; pass finite projections")
    return arr


def _trajectory_stem(out: str | os.PathLike[str]) -> pathlib.Path:
    """``out`` as a path stem: a directory gets ``trajectory``, an image suffix is dropped."""
    target = pathlib.Path(out)
    if target.is_dir() or os.fspath(out).endswith(("/", os.sep)):
        return target / "trajectory"
    if target.suffix.lower().lstrip(".") in FORMATS:
        return target.with_suffix("")
    return target


def _order_colourbar(fig: Figure, ax, mappable, labels: Sequence[str]) -> None:
    """A colourbar of training order, its ticks named by checkpoint labels."""
    cbar = fig.colorbar(mappable, ax=ax, label="training order")
    ticks = _spread(len(labels), 5)
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([labels[i] for i in ticks])
    cbar.ax.minorticks_off()


def _pca_figure(c: np.ndarray, labels: list[str], explained: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.0, 5.4))
    ax = fig.add_subplot()
    order = np.arange(c.shape[0])
    norm = mcolors.Normalize(0, max(c.shape[0] - 1, 1))
    ax.plot(c[:, 0], c[:, 1], "-", color="0.6", lw=1.0, zorder=1)
    sc = ax.scatter(c[:, 0], c[:, 1], c=order, cmap=_ORDER_CMAP, norm=norm, s=30, edgecolors="black",
                    linewidths=0.3, zorder=2)
    ax.plot(c[:1, 0], c[:1, 1], "o", ms=12, mfc="none", mec="black", mew=1.5, zorder=3)
    ax.plot(c[-1:, 0], c[-1:, 1], "s", ms=12, mfc="none", mec="black", mew=1.5, zorder=3)
    middle = (c[:, 0].min() + c[:, 0].max()) / 2
    for i, word in ((0, "start"), (c.shape[0] - 1, "end")):
        right = c[i, 0] > middle  # label towards the inside of the axes
        ax.annotate(f"{word}: {labels[i]}", (c[i, 0], c[i, 1]), xytext=(-10 if right else 10, 8),
                    textcoords="offset points", ha="right" if right else "left", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=4)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f} % of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f} % of variance)")
    ax.set_title(f"Training trajectory in its first two principal components\n"
                 f"({c.shape[0]} checkpoints, {100 * explained[:2].sum():.1f} % of the variance shown)")
    ax.grid(True, alpha=0.3)
    _order_colourbar(fig, ax, sc, labels)
    return fig


def _andrews_figure(c: np.ndarray, labels: list[str]) -> Figure:
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    angles = np.linspace(-np.pi, np.pi, 256)
    curves = andrews_curves(c, angles)
    lines = LineCollection([np.column_stack([angles, f]) for f in curves], cmap=_ORDER_CMAP,
                           norm=mcolors.Normalize(0, max(c.shape[0] - 1, 1)), linewidths=1.2, alpha=0.85)
    lines.set_array(np.arange(c.shape[0]))
    ax.add_collection(lines)
    ax.set_xlim(-np.pi, np.pi)
    pad = 0.05 * max(float(np.ptp(curves)), 1e-12)
    ax.set_ylim(float(curves.min()) - pad, float(curves.max()) + pad)
    ax.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], ["−π", "−π/2", "0", "π/2", "π"])
    ax.set_xlabel("s")
    ax.set_ylabel("f(s) = PC1/√2 + PC2 sin s + PC3 cos s + …")
    ax.set_title(f"Andrews curves of the training trajectory ({c.shape[1]} components)")
    ax.grid(True, alpha=0.3)
    _order_colourbar(fig, ax, lines, labels)
    return fig


def _radar_figure(c: np.ndarray, labels: list[str], explained: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.6, 6.0))
    ax = fig.add_subplot(projection="polar")
    t, k = c.shape
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.where(hi > lo, (c - lo) / span, 0.5)
    angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
    closed = np.append(angles, angles[0])
    cmap = colormaps[_ORDER_CMAP]
    shown = _spread(t, _RADAR_MAX)
    for i in shown:
        colour = cmap(i / max(t - 1, 1))
        r = np.append(scaled[i], scaled[i, 0])
        ax.plot(closed, r, color=colour, lw=1.6, label=labels[i])
        ax.fill(closed, r, color=colour, alpha=0.06)
    ax.set_xticks(angles, [f"PC{j + 1}\n{100 * explained[j]:.1f} %" for j in range(k)], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1], ["min", "", "max"], fontsize=7)
    which = f"{len(shown)} of {t} checkpoints, evenly spaced" if len(shown) < t else f"all {t} checkpoints"
    ax.set_title(f"Training trajectory, radar chart ({which})\n"
                 "each axis scaled from its minimum to its maximum over the checkpoints", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, title="checkpoint", title_fontsize=8)
    return fig


def _checked_trajectory(coords: np.ndarray, labels: Sequence[str],
                        explained: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    c = _checked_array(coords, "coords", ndim=2)
    if c.shape[0] < 2 or c.shape[1] < 2:
        raise SurfaceFileError(f"a trajectory needs at least 2 checkpoints on at least 2 principal components, "
                               f"got {c.shape[0]} x {c.shape[1]}; give more checkpoints")
    names = [str(v) for v in labels]
    if len(names) != c.shape[0]:
        raise SurfaceFileError(f"{len(names)} labels for {c.shape[0]} checkpoints; give one label per checkpoint")
    ratio = _checked_array(explained, "explained", ndim=1)
    if ratio.size != c.shape[1] or (ratio < 0).any():
        raise SurfaceFileError(f"explained must hold {c.shape[1]} non-negative variance ratios (one per component), "
                               f"got {ratio.tolist()}")
    return c, names, ratio


def trajectory_figures(coords: np.ndarray, labels: Sequence[str], explained: np.ndarray) -> dict[str, Figure]:
    """The three pictures of :func:`plot_trajectory` as Figures, keyed ``pca``, ``andrews``, ``radar``."""
    c, names, ratio = _checked_trajectory(coords, labels, explained)
    return {"pca": _pca_figure(c, names, ratio), "andrews": _andrews_figure(c, names),
            "radar": _radar_figure(c, names, ratio)}


def plot_trajectory(coords: np.ndarray, labels: Sequence[str], explained: np.ndarray,
                    out: str | os.PathLike[str], formats: Sequence[str] = ("png",)) -> list[pathlib.Path]:
    """Draw a training trajectory projected on its top k ≥ 2 principal components; return the files.

    ``coords`` (T, k): the T checkpoints' projections, in training order;
    ``labels``: T names (e.g. ``epoch_003``); ``explained`` (k,): explained
    variance ratios. ``out`` is a path stem (a directory gets ``trajectory``):
    writes ``<out>_pca``, ``<out>_andrews`` and ``<out>_radar`` in every format:
    the PC1/PC2 path coloured by training order, the Andrews curves of all k
    components, and a radar chart of at most 8 evenly spaced checkpoints.
    """
    _checked_trajectory(coords, labels, explained)
    fmts = _formats(formats)
    stem = _trajectory_stem(out)
    written: list[pathlib.Path] = []
    for part, fig in trajectory_figures(coords, labels, explained).items():
        try:
            for fmt in fmts:
                target = stem.with_name(f"{stem.name}_{part}.{fmt}")
                target.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(target, format=fmt, dpi=150 if fmt == "png" else None, bbox_inches="tight")
                written.append(target)
        finally:
            fig.clear()
    return written
