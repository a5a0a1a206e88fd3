"""Pictures of surface files: a curve for 1D files; contours, heatmaps and 3D surfaces for 2D;
the Hessian eigenvalue spectrum of either (``spectrum``, :mod:`.spectrum`) when the file has one.

:func:`render` draws one kind on a new Figure and :func:`plot_surface` writes
the images of a file. What the file knows is drawn without being asked: the
reference models (``models/``) and a projected training trajectory
(``trajectory/``, with the explained variance in the axis labels).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import cast

import numpy as np
from matplotlib import colors as mcolors
from matplotlib.figure import Figure

from ..errors import SurfaceFileError
from ..surface.reader import Surface, load_surface
from .common import (FORMATS, best_point, check_formats, check_markers, figure_title, finite_values,
                     require_values, spread)
from .curve import draw_curve
from .scales import colour_map, colourbar_extend, contour_levels, level_format, log_ticks, value_range
from .spectrum import KIND as SPECTRUM
from .spectrum import draw_spectrum, require_spectrum

KINDS_1D: tuple[str, ...] = ("curve",)
"""Plot kinds for 1D surface files."""

KINDS_2D: tuple[str, ...] = ("contour", "contourf", "heatmap", "surface3d")
"""Plot kinds for 2D surface files."""

KINDS_SPECTRUM: tuple[str, ...] = (SPECTRUM,)
"""Plot kinds for files with a Hessian spectrum (``spectrum/``), 1D or 2D; ``all`` includes them there."""

KINDS: tuple[str, ...] = ("auto", "all") + KINDS_1D + KINDS_2D + KINDS_SPECTRUM
"""Every value ``kind`` accepts."""

_DEFAULT_LEVELS = {"contour": 20, "contourf": 30}
_TRAJECTORY_COLOUR = "crimson"


def kinds_for(surface: Surface, kind: str) -> list[str]:
    """The concrete kinds ``kind`` means for ``surface`` (``all``: each kind valid for it), else SurfaceFileError."""
    valid = (KINDS_1D if surface.dims == 1 else KINDS_2D) + (KINDS_SPECTRUM if surface.spectrum else ())
    if kind == "auto":
        return [valid[0]]
    if kind == "all":
        return list(valid)
    if kind not in KINDS:
        raise SurfaceFileError(f"unknown plot kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == SPECTRUM:
        require_spectrum(surface)
        return [kind]
    if kind not in valid:
        raise SurfaceFileError(
            f"{surface.path}: is a {surface.dims}D surface, so plot kind {kind!r} does not apply; "
            f"valid kinds for it: auto, all, {', '.join(valid)}")
    return [kind]


def _axis_labels(s: Surface) -> tuple[str, str]:
    """The x and y labels, with the share of variance when the directions are principal components."""
    xl, yl = s.x_label, s.y_label
    ratio = s.explained_variance_ratio
    if ratio is not None and ratio.size >= 2:
        xl += f" ({100 * ratio[0]:.1f} % of variance)"
        yl += f" ({100 * ratio[1]:.1f} % of variance)"
    return xl, yl


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


def _axis_limits(c: np.ndarray, kind: str) -> tuple[float, float]:
    """Axis limits along coordinates ``c``: the outer cell edges of a heatmap, else the end points."""
    lo, hi = _edges(c)[[0, -1]] if kind == "heatmap" else (c.min(), c.max())
    return float(lo), float(hi)


def _draw_trajectory(ax, s: Surface) -> None:
    """The projected training path: a line with small markers, start and end emphasised, a few labels."""
    assert s.trajectory is not None
    pts, labels = s.trajectory.coordinates, s.trajectory.labels
    c = _TRAJECTORY_COLOUR
    ax.plot(pts[:, 0], pts[:, 1], "-", color=c, lw=1.3, marker="o", ms=3, zorder=6, label="training trajectory")
    ax.plot(pts[:1, 0], pts[:1, 1], "o", ms=9, mfc="white", mec=c, mew=2, zorder=7, label=f"start ({labels[0]})")
    ax.plot(pts[-1:, 0], pts[-1:, 1], "s", ms=8, mfc=c, mec="white", mew=1, zorder=7, label=f"end ({labels[-1]})")
    for i in spread(len(labels), 5):
        ax.annotate(labels[i], (pts[i, 0], pts[i, 1]), xytext=(5, -11), textcoords="offset points",
                    fontsize=7, color=c, zorder=8, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none",
                                                             alpha=0.7))


def _mark_2d(ax, s: Surface, values: np.ndarray, metric: str,
             markers: dict[str, tuple[float, float]], z: float | None = None) -> None:
    """Mark the extreme worth marking, the origin, the user's markers and (2D axes only) the file's
    models and trajectory."""
    assert s.y is not None
    best = best_point(values, metric)
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


ISOMETRIC_KINDS = ("plane", "pca", "hessian")
"""Direction kinds whose two axes are unit vectors, so both coordinates are distances in parameter space."""


def isometric(s: Surface) -> bool:
    """Whether a 2D surface's axes are both parameter-space distances (drawn with equal aspect, so the
    plot does not distort the geometry)."""
    directions = (s.job or {}).get("directions")
    return isinstance(directions, dict) and directions.get("kind") in ISOMETRIC_KINDS


def _draw_2d(fig: Figure, s: Surface, kind: str, metric: str, log: bool,
             levels: int | Sequence[float] | None, vmin: float | None, vmax: float | None,
             markers: dict[str, tuple[float, float]]) -> None:
    assert s.y is not None
    values = require_values(s, metric)  # (nx, ny), NaN where blank
    if log:
        values = np.where(values > 0, values, np.nan)
    lo, hi = value_range(values, metric, log, vmin, vmax, loose=kind == "surface3d")
    z = np.ma.masked_invalid(values.T)  # (ny, nx) so that x is horizontal
    label = f"{metric} (log scale)" if log else metric
    xlabel, ylabel = _axis_labels(s)
    cmap, norm = colour_map(metric, lo, hi, log)
    # With equal aspect a wide grid draws a flat box: the colourbar is shortened to match it.
    equal = isometric(s)
    shrink = float(np.clip(np.ptp(s.y) / max(np.ptp(s.x), 1e-300), 0.35, 1.0)) if equal else 1.0
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
        _mark_2d(ax, s, finite_values(s, metric), metric, markers, z=t_lo)
        ax.set_title(figure_title(s, label))
        return
    ax = fig.add_subplot()
    if kind == "heatmap":
        mesh = ax.pcolormesh(_edges(s.x), _edges(s.y), z, cmap=cmap, norm=norm, shading="flat")
        cbar = fig.colorbar(mesh, ax=ax, label=label, extend=colourbar_extend(values, lo, hi), shrink=shrink)
        if log:
            log_ticks(cbar, lo, hi)
    elif kind == "contourf":
        X, Y = _grid(s, kind)
        lv = contour_levels(lo, hi, levels, log, _DEFAULT_LEVELS["contourf"])
        cs = ax.contourf(X, Y, z, levels=lv, cmap=cmap, norm=norm, extend=colourbar_extend(values, lv[0], lv[-1]))
        cbar = fig.colorbar(cs, ax=ax, label=label, shrink=shrink)
        if log:
            log_ticks(cbar, lv[0], lv[-1])
    else:  # contour
        X, Y = _grid(s, kind)
        lv = contour_levels(lo, hi, levels, log, _DEFAULT_LEVELS["contour"])
        cs = ax.contour(X, Y, z, levels=lv, cmap=cmap, norm=norm, linewidths=1.0)
        drawn = cast(np.ndarray, cs.levels)  # an array; the stub says only Iterable[float]
        if len(drawn):
            ax.clabel(cs, drawn[::2], inline=True, fontsize=7, fmt=level_format(lv, log))
            fig.colorbar(cs, ax=ax, label=label, shrink=shrink)
    ax.set_xlim(_axis_limits(s.x, kind))
    ax.set_ylim(_axis_limits(s.y, kind))
    if equal:
        ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    _mark_2d(ax, s, finite_values(s, metric), metric, markers)
    ax.set_title(figure_title(s, label))


def render(surface: Surface, kind: str, metric: str | None = None, log: bool = False,
           levels: int | Sequence[float] | None = None, vmin: float | None = None,
           vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None) -> Figure:
    """Draw one concrete ``kind`` (not auto/all) of a loaded surface on a new Figure.

    ``spectrum`` draws the file's Hessian spectrum (:func:`~.spectrum.draw_spectrum`;
    ``metric``, ``log``, ``levels``, ``vmin``, ``vmax`` and ``markers`` do not apply to it).
    """
    kinds = kinds_for(surface, kind)
    if len(kinds) != 1 or kinds[0] != kind:
        raise SurfaceFileError(f"render() needs one concrete kind, not {kind!r}; "
                               f"choose one of {', '.join(KINDS_1D + KINDS_2D + KINDS_SPECTRUM)}")
    if kind == SPECTRUM:
        fig = Figure(figsize=(11.0, 4.8))
        draw_spectrum(fig, surface)
        return fig
    marks = check_markers(markers)
    if kind == "surface3d":
        fig = Figure(figsize=(8.0, 6.0))
    else:
        fig = Figure(figsize=(7.0, 5.2))
    if kind == "curve":
        chosen = None if metric is None else surface.check_metric(metric)
        require_values(surface, chosen or surface.default_metric())
        draw_curve(fig, surface, chosen, log, vmin, vmax, marks)
    else:
        _draw_2d(fig, surface, kind, surface.check_metric(metric), log, levels, vmin, vmax, marks)
    return fig


def image_paths(path: pathlib.Path, out: str | os.PathLike[str] | None, kind: str, metric: str,
                formats: list[str], several_kinds: bool) -> list[pathlib.Path]:
    """Where the images of one plot go: beside ``path``, or in/at ``out`` (a directory, or a file name).

    The name is ``<stem>_<kind>_<metric>``; ``<stem>_<kind>`` without a metric (the spectrum, and a
    curve of every split's loss and accuracy).
    """
    stem = f"{path.stem}_{kind}_{metric}" if metric and kind != SPECTRUM else f"{path.stem}_{kind}"
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
    accuracy, and is named ``surf_curve.png``). ``out``: None writes next to the surface file
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
    ``kind="spectrum"`` draws the file's Hessian eigenvalue density and λmax per
    parameter group (``surf.h5`` -> ``surf_spectrum.png``), whatever the grid's
    progress; a file without ``spectrum/`` is refused with SurfaceFileError.
    """
    surface = load_surface(path)
    kinds = kinds_for(surface, kind)
    fmts = check_formats(formats)
    check_markers(markers)
    chosen = ""
    if any(k != SPECTRUM for k in kinds):
        chosen = surface.check_metric(metric)
        require_values(surface, chosen)
    written: list[pathlib.Path] = []
    for k in kinds:
        # A curve without a metric draws every split's loss and accuracy: its name says no one metric.
        named = "" if k == "curve" and metric is None else chosen
        targets = image_paths(surface.path, out, k, named, fmts, several_kinds=len(kinds) > 1)
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
