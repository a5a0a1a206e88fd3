"""Figures of surface files: a curve for 1D files; contours, heatmaps and 3D surfaces for 2D.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the
non-interactive Agg canvas (PNG) or the PDF/SVG canvases; pyplot is not used,
so plotting needs no display, leaves no open figures behind and does not change
the backend of a program (or notebook) that imports this module.

Points not computed yet are left blank, and so are computed points whose value
is ±inf or NaN (divergent). Colour limits and contour levels default to a
robust range around the basin, so a few huge values at the edge of the grid do
not flatten the picture; ``vmin``/``vmax``/``levels`` override them.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from .errors import SurfaceFileError
from .report import Surface, load_surface

KINDS_1D: tuple[str, ...] = ("curve",)
"""Plot kinds for 1D surface files."""

KINDS_2D: tuple[str, ...] = ("contour", "contourf", "heatmap", "surface3d")
"""Plot kinds for 2D surface files."""

KINDS: tuple[str, ...] = ("auto", "all") + KINDS_1D + KINDS_2D
"""Every value ``kind`` accepts."""

FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""Image formats that can be written."""

_CMAP = "viridis"
_DEFAULT_LEVELS = {"contour": 20, "contourf": 30}


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


def _higher_is_better(metric: str) -> bool:
    return metric.endswith("_acc")


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
    maximum). ``loose`` widens the range (3D plots show the walls too).
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
        if _higher_is_better(metric):
            hi = t_hi
            lo = max(float(np.percentile(t, 100 - pct)), t_hi - mult * (t_hi - t_med))
            if lo >= hi:
                lo = t_lo
        else:
            lo = t_lo
            hi = min(float(np.percentile(t, pct)), t_lo + mult * (t_med - t_lo))
            if hi <= lo:
                hi = t_hi
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


def _norm(lo: float, hi: float, log: bool) -> mcolors.Normalize:
    return mcolors.LogNorm(lo, hi) if log else mcolors.Normalize(lo, hi)


def _extend(values: np.ndarray, lo: float, hi: float) -> str:
    v = values[np.isfinite(values)]
    below, above = bool((v < lo).any()), bool((v > hi).any())
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get((below, above), "neither")


def _best(surface: Surface, values: np.ndarray, metric: str) -> tuple[tuple[int, ...], float]:
    """Index and value of the minimum (maximum for accuracies) of finite values."""
    flat = np.nanargmax(values) if _higher_is_better(metric) else np.nanargmin(values)
    idx = tuple(int(i) for i in np.unravel_index(int(flat), values.shape))
    return idx, float(values[idx])


def _title(surface: Surface, what: str) -> str:
    title = what
    if surface.name:
        title += f" \u2014 {surface.name}"
    total = int(surface.done.size)
    done = int(surface.done.sum())
    if done < total:
        title += f"\n({done}/{total} points done)"
    return title


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


def _draw_curve(fig: Figure, s: Surface, metric: str | None, log: bool,
                vmin: float | None, vmax: float | None, markers: dict[str, tuple[float, float]]) -> None:
    ax = fig.add_subplot()
    if metric is None:
        left = s.loss_metrics() or [s.default_metric()]
        right = [m for m in s.metrics if m.endswith("_acc")]
    elif metric.endswith("_loss"):
        left = [metric]
        acc = metric[: -len("_loss")] + "_acc"
        right = [acc] if acc in s.metrics else []
    else:
        left, right = [metric], []
    drawable = [m for m in left if np.isfinite(_finite(s, m)).any()]
    if not drawable:
        _require_values(s, left[0])  # raises with the reason
    left = drawable
    colours: dict[str, str] = {}

    def colour(m: str) -> str:
        split = m.split("_", 1)[0]
        return colours.setdefault(split, f"C{len(colours)}")

    x = s.x
    marker = "." if x.size <= 60 else None
    shown: list[np.ndarray] = []
    for k, m in enumerate(left):
        v = _finite(s, m)
        if log:
            v = np.where(v > 0, v, np.nan)
        c = colour(m)
        ax.plot(x, v, color=c, lw=1.8, marker=marker, ms=4, label=m)
        se = m + "_stderr"
        if se in s.metrics:
            e = _finite(s, se)
            if np.isfinite(e).any():
                lo_band = v - e
                if log:
                    lo_band = np.where(lo_band > 0, lo_band, np.nan)
                ax.fill_between(x, lo_band, v + e, color=c, alpha=0.25, lw=0, label=f"{m} \u00b1 stderr")
        if np.isfinite(v).any():
            shown.append(v[np.isfinite(v)])
            (ib,), vb = _best(s, v, m)
            word = "max" if _higher_is_better(m) else "min"
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
    for label, (mx, _my) in markers.items():
        ax.axvline(mx, color="0.2", lw=0.8, ls="--")
        ax.annotate(label, (mx, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8)
    handles, labels = ax.get_legend_handles_labels()
    if right:
        ax2 = ax.twinx()
        for m in right:
            v = _finite(s, m)
            ax2.plot(x, v, color=colour(m), lw=1.4, ls="--", marker=marker, ms=3, label=m)
        ax2.set_ylabel("accuracy")
        ax.set_zorder(ax2.get_zorder() + 1)  # losses and their notes above the accuracy lines
        ax.patch.set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.8)
    ax.set_title(_title(s, ", ".join(left + right)))
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


def _mark_2d(ax, s: Surface, values: np.ndarray, metric: str,
             markers: dict[str, tuple[float, float]], z: float | None = None) -> None:
    assert s.y is not None
    (i, j), vb = _best(s, values, metric)
    xb, yb = float(s.x[i]), float(s.y[j])
    word = "max" if _higher_is_better(metric) else "min"
    star = dict(marker="*", ms=14, color="red", mec="white", mew=0.8, ls="none", zorder=6, clip_on=False,
                label=f"{word} {vb:.4g} at ({xb:.3g}, {yb:.3g})")
    origin = dict(marker="P", ms=10, color="black", mec="white", mew=0.8, ls="none", zorder=6,
                  label="origin (0, 0)")
    has_origin = s.x.min() <= 0 <= s.x.max() and s.y.min() <= 0 <= s.y.max()
    if z is None:
        ax.plot([xb], [yb], **star)
        if has_origin:
            ax.plot([0.0], [0.0], **origin)
        for label, (mx, my) in markers.items():
            ax.plot([mx], [my], marker="o", ms=7, mfc="white", mec="black", ls="none", zorder=6)
            ax.annotate(label, (mx, my), xytext=(6, 6), textcoords="offset points", fontsize=8,
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=7)
    else:
        ax.plot([xb], [yb], [z], **star)
        if has_origin:
            ax.plot([0.0], [0.0], [z], **origin)
        for label, (mx, my) in markers.items():
            ax.plot([mx], [my], [z], marker="o", ms=7, mfc="white", mec="black", ls="none")
            ax.text(mx, my, z, f" {label}", fontsize=8)
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
    if kind == "surface3d":
        X, Y = _grid(s, kind)
        ax = fig.add_subplot(projection="3d")
        zt = np.log10(values.T) if log else values.T.copy()
        t_lo, t_hi = (np.log10(lo), np.log10(hi)) if log else (lo, hi)
        zc = np.clip(zt, t_lo, t_hi)  # NaN stays NaN: those cells are left out
        surf = ax.plot_surface(X, Y, zc, cmap=_CMAP, norm=mcolors.Normalize(t_lo, t_hi),
                               rcount=min(X.shape[0], 150), ccount=min(X.shape[1], 150),
                               linewidth=0, antialiased=False)
        ax.set_zlim(t_lo, t_hi)
        ax.set_xlabel(s.x_label)
        ax.set_ylabel(s.y_label)
        ax.set_zlabel(f"log10 {metric}" if log else metric)
        fig.colorbar(surf, ax=ax, shrink=0.6, pad=0.12, label=f"log10 {metric}" if log else metric)
        _mark_2d(ax, s, _finite(s, metric), metric, markers, z=t_lo)
        ax.set_title(_title(s, label))
        return
    ax = fig.add_subplot()
    norm = _norm(lo, hi, log)
    if kind == "heatmap":
        mesh = ax.pcolormesh(_edges(s.x), _edges(s.y), z, cmap=_CMAP, norm=norm, shading="flat")
        cbar = fig.colorbar(mesh, ax=ax, label=label, extend=_extend(values, lo, hi))
        if log:
            _log_ticks(cbar, lo, hi)
    elif kind == "contourf":
        X, Y = _grid(s, kind)
        lv = _levels(lo, hi, levels, log, _DEFAULT_LEVELS["contourf"])
        cs = ax.contourf(X, Y, z, levels=lv, cmap=_CMAP, norm=norm, extend=_extend(values, lv[0], lv[-1]))
        cbar = fig.colorbar(cs, ax=ax, label=label)
        if log:
            _log_ticks(cbar, lv[0], lv[-1])
    else:  # contour
        X, Y = _grid(s, kind)
        lv = _levels(lo, hi, levels, log, _DEFAULT_LEVELS["contour"])
        cs = ax.contour(X, Y, z, levels=lv, cmap=_CMAP, norm=norm, linewidths=1.0)
        if len(cs.levels):
            ax.clabel(cs, cs.levels[::2], inline=True, fontsize=7, fmt=_level_format(lv, log))
    ax.set_xlim(_edges(s.x)[[0, -1]] if kind == "heatmap" else (s.x.min(), s.x.max()))
    ax.set_ylim(_edges(s.y)[[0, -1]] if kind == "heatmap" else (s.y.min(), s.y.max()))
    ax.set_xlabel(s.x_label)
    ax.set_ylabel(s.y_label)
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
    points drawn on 2D plots (vertical lines at x on 1D curves).
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
