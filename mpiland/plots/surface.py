"""Pictures of surface files: a curve for 1D files; contours, heatmaps and 3D surfaces for 2D;
the Hessian eigenvalue spectrum of either (``spectrum``, :mod:`.spectrum`) when the file has one.

:func:`render` draws one kind on a new Figure and :func:`plot_surface` writes
the images of a file; :func:`render_many` and :func:`plot_surfaces` draw several
files together (1D curves overlaid, 2D surfaces as panels on one colour scale).
Every picture is drawn in a style (:data:`~.common.STYLES`, a matplotlib
``rc_context``): ``paper`` makes one-column figures with 8 pt text and thin lines.
What the file knows is drawn without being asked: the
reference models (``models/``) and a projected training trajectory
(``trajectory/``, with the explained variance in the axis labels).
"""

from __future__ import annotations

import os
import pathlib
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import SettingsError, SurfaceFileError
from ..surface.reader import Surface, load_surface
from .common import (DEFAULT_FORMAT, FORMATS, best_point, check_formats, check_markers, check_style, drawn_values,
                     figure_size, figure_title, fit_title, legend_below, line_width, marker_size, metric_text,
                     progress_text, require_values, spread, style_context)
from .curve import draw_curve
from .labels import label_contours
from .scales import ColourScale, colour_scale, level_format, log_ticks
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

_TRAJECTORY_COLOUR = "crimson"
VIEW_3D: tuple[float, float] = (32.0, -50.0)
"""Elevation and azimuth (degrees) of 3D surfaces: from above the basin, both axes' labels readable."""


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
        # On a line of its own after a long label: a rotated y label must fit beside a flat (equal-aspect) plot.
        xl += f"{chr(10) if len(xl) > 24 else ' '}({100 * ratio[0]:.1f} % of variance)"
        yl += f"{chr(10) if len(yl) > 24 else ' '}({100 * ratio[1]:.1f} % of variance)"
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
    ax.plot(pts[:, 0], pts[:, 1], "-", color=c, lw=line_width(0.8), marker="o", ms=marker_size(0.5), zorder=6,
            label="training trajectory")
    ax.plot(pts[:1, 0], pts[:1, 1], "o", ms=marker_size(1.4), mfc="white", mec=c, mew=line_width(1.0), zorder=7,
            label=f"start ({labels[0]})")
    ax.plot(pts[-1:, 0], pts[-1:, 1], "s", ms=marker_size(1.2), mfc=c, mec="white", mew=line_width(0.5), zorder=7,
            label=f"end ({labels[-1]})")
    # At most five labels, start and end first, none crowding another (on the grid's scale)
    assert s.y is not None
    scale = np.array([max(float(np.ptp(s.x)), 1e-300), max(float(np.ptp(s.y)), 1e-300)])
    picks = spread(len(labels), 5)
    kept: list[int] = []
    for i in picks[:1] + picks[-1:] + picks[1:-1]:
        if all(np.hypot(*((pts[i] - pts[j]) / scale)) > 0.08 for j in kept):
            kept.append(i)
    for i in kept:
        ax.annotate(labels[i], (pts[i, 0], pts[i, 1]), xytext=(5, -11), textcoords="offset points",
                    fontsize="x-small", color=c, zorder=8,
                    bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))


def _mark_2d(ax, s: Surface, values: np.ndarray, measured: np.ndarray, metric: str,
             markers: dict[str, tuple[float, float]], z: float | None = None,
             generic: bool = False) -> list[tuple[float, float]]:
    """Mark the extreme worth marking (among measured points only), the origin, the user's markers and
    (2D axes only) the file's models and trajectory; return the marked points that labels must avoid.

    The extreme is drawn last and largest, above the origin and the models, so a minimum at θ* stays
    visible. ``generic``: legend entries without numbers (one legend for several panels).
    """
    assert s.y is not None
    best = best_point(np.where(measured, values, np.nan), metric)
    star: dict | None = None
    xb = yb = 0.0
    points: list[tuple[float, float]] = []
    if best is not None:
        (i, j), vb, word = best
        xb, yb = float(s.x[i]), float(s.y[j])
        star = dict(marker="*", ms=marker_size(2.3), color="red", mec="white", mew=line_width(0.4), ls="none",
                    zorder=12, clip_on=False,
                    label=f"{word}imum" if generic else f"{word} {vb:.4g} at ({xb:.3g}, {yb:.3g})")
        points.append((xb, yb))
    origin = dict(marker="P", ms=marker_size(1.3), color="black", mec="white", mew=line_width(0.3), ls="none",
                  zorder=9, label="origin (0, 0)")
    has_origin = s.x.min() <= 0 <= s.x.max() and s.y.min() <= 0 <= s.y.max()
    if z is None and s.models is not None and not np.abs(s.models.coordinates).max(axis=1).min() > 0:
        has_origin = False  # a model at the origin stands for it (its diamond would hide the origin's cross)
    if has_origin:
        points.append((0.0, 0.0))
    if z is None:
        if has_origin:
            ax.plot([0.0], [0.0], **origin)
        if s.trajectory is not None:
            _draw_trajectory(ax, s)
        if s.models is not None:
            pts = s.models.coordinates
            ax.plot(pts[:, 0], pts[:, 1], "D", ms=marker_size(1.1), mfc="orange", mec="black", mew=line_width(0.4),
                    ls="none", zorder=10, label="models")
            for label, (mx, my) in zip(s.models.labels, pts):
                ax.annotate(label, (mx, my), xytext=(6, 6), textcoords="offset points", fontsize="small",
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=11)
                points.append((float(mx), float(my)))
        for label, (mx, my) in markers.items():
            ax.plot([mx], [my], marker="o", ms=marker_size(1.1), mfc="white", mec="black", ls="none", zorder=10)
            ax.annotate(label, (mx, my), xytext=(6, 6), textcoords="offset points", fontsize="small",
                        bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=11)
            points.append((mx, my))
        if star is not None:
            ax.plot([xb], [yb], **star)
    else:
        if has_origin:
            ax.plot([0.0], [0.0], [z], **origin)
        for label, (mx, my) in markers.items():
            ax.plot([mx], [my], [z], marker="o", ms=marker_size(1.1), mfc="white", mec="black", ls="none", zorder=10)
            ax.text(mx, my, z, f" {label}", fontsize="small", zorder=11)
        if star is not None:
            ax.plot([xb], [yb], [z], **star)
    return points


ISOMETRIC_KINDS = ("plane", "pca", "hessian")
"""Direction kinds whose two axes are unit vectors, so both coordinates are distances in parameter space."""


def isometric(s: Surface) -> bool:
    """Whether a 2D surface's axes are both parameter-space distances (drawn with equal aspect, so the
    plot does not distort the geometry)."""
    directions = (s.job or {}).get("directions")
    return isinstance(directions, dict) and directions.get("kind") in ISOMETRIC_KINDS


def _draw_3d(fig: Figure, ax, s: Surface, values: np.ndarray, measured: np.ndarray, scale: ColourScale,
             markers: dict[str, tuple[float, float]], generic: bool) -> Any:
    """One 3D surface panel, clipped to the scale's range; return the surface (for the colourbar)."""
    X, Y = _grid(s, "surface3d")
    t_lo, t_hi = (np.log10(scale.lo), np.log10(scale.hi)) if scale.log else (scale.lo, scale.hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        zt = np.log10(values.T) if scale.log else values.T.copy()
    zc = np.clip(zt, t_lo, t_hi)  # NaN stays NaN: those cells are left out
    ax.computed_zorder = False  # markers on the floor are drawn above the surface
    surf = ax.plot_surface(X, Y, zc, cmap=scale.cmap, norm=scale.norm, rcount=min(X.shape[0], 120),
                           ccount=min(X.shape[1], 120), linewidth=0, antialiased=False, zorder=1)
    if scale.levels is not None:
        lv = np.log10(scale.levels) if scale.log else scale.levels
        ax.contour(X, Y, np.ma.masked_invalid(zc), levels=lv, cmap=scale.cmap, norm=scale.norm,
                   linewidths=line_width(0.5), offset=t_lo, zorder=2)
    ax.set_zlim(t_lo, t_hi)
    # Long labels on two lines: along the slanted axes of a 3D box they would run into each other;
    # the height is named by the colourbar.
    xlabel, ylabel = (textwrap.fill(t, 28, break_on_hyphens=False) for t in _axis_labels(s))
    ax.set_xlabel(xlabel, labelpad=1)
    ax.set_ylabel(ylabel, labelpad=1)
    for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_major_locator(MaxNLocator(4))
    ax.tick_params(labelsize="small", pad=0)
    ax.view_init(elev=VIEW_3D[0], azim=VIEW_3D[1])
    _mark_2d(ax, s, values, measured, scale.metric, markers, z=float(t_lo), generic=generic)
    return surf


def _draw_flat(ax, s: Surface, kind: str, values: np.ndarray, measured: np.ndarray, scale: ColourScale,
               markers: dict[str, tuple[float, float]], generic: bool) -> tuple[Any, list[tuple[float, float]]]:
    """One contour, filled-contour or heatmap panel; return its mappable and the marked points."""
    assert s.y is not None
    z = np.ma.masked_invalid(values.T)  # (ny, nx) so that x is horizontal
    if kind == "heatmap":
        mappable = ax.pcolormesh(_edges(s.x), _edges(s.y), z, cmap=scale.cmap, norm=scale.norm, shading="flat")
    elif kind == "contourf":
        X, Y = _grid(s, kind)
        mappable = ax.contourf(X, Y, z, levels=scale.levels, cmap=scale.cmap, norm=scale.norm, extend=scale.extend)
    else:
        X, Y = _grid(s, kind)
        mappable = ax.contour(X, Y, z, levels=scale.levels, cmap=scale.cmap, norm=scale.norm,
                              linewidths=line_width(0.6))
    ax.set_xlim(_axis_limits(s.x, kind))
    ax.set_ylim(_axis_limits(s.y, kind))
    if isometric(s):
        ax.set_aspect("equal", adjustable="box")
    xlabel, ylabel = _axis_labels(s)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return mappable, _mark_2d(ax, s, values, measured, scale.metric, markers, generic=generic)


def _colourbar(fig: Figure, axes: list, mappable: Any, scale: ColourScale, kind: str) -> None:
    """One colourbar for all panels, labelled with the metric (and its scale or clip); beside equal-aspect
    panels the compressed layout (:func:`_figure`) makes it as high as their boxes."""
    extra: dict[str, Any] = {"ax": axes}
    if kind == "surface3d":
        extra.update(shrink=0.6, pad=0.1)
    if kind == "heatmap":
        extra["extend"] = scale.extend
        if scale.levels is not None:
            extra["spacing"] = "uniform"
    cbar = fig.colorbar(mappable, label=scale.label, **extra)
    if cbar.solids is not None:
        cbar.solids.set_rasterized(False)  # a smooth bar is rasterised by default: PDFs stay vector throughout
    if kind == "surface3d":
        return
    if scale.log and not (kind == "heatmap" and scale.levels is not None):
        log_ticks(cbar, scale.lo if scale.levels is None else float(scale.levels[0]),
                  scale.hi if scale.levels is None else float(scale.levels[-1]))


def _draw_2d(fig: Figure, surfaces: Sequence[Surface], names: Sequence[str], kind: str, metric: str,
             log: bool | None, levels: int | Sequence[float] | None, vmin: float | None, vmax: float | None,
             zmax: float | None, markers: dict[str, tuple[float, float]]) -> None:
    """One panel per surface, side by side on one colour scale, with one colourbar and one legend below."""
    drawn = []
    for s in surfaces:
        require_values(s, metric)
        drawn.append(drawn_values(s, metric))
    scale = colour_scale([v for v, _m in drawn], metric, kind, log, levels, vmin, vmax, zmax)
    several = len(surfaces) > 1
    three_d = kind == "surface3d"
    axes = [fig.add_subplot(1, len(surfaces), k + 1, **({"projection": "3d"} if three_d else {}))
            for k in range(len(surfaces))]
    mappables = []
    avoid: list[list[tuple[float, float]]] = []
    for ax, s, name, (values, measured) in zip(axes, surfaces, names, drawn):
        if scale.log:
            values = np.where(values > 0, values, np.nan)
        if three_d:
            mappables.append(_draw_3d(fig, ax, s, values, measured, scale, markers, several))
            avoid.append([])
        else:
            mappable, points = _draw_flat(ax, s, kind, values, measured, scale, markers, several)
            mappables.append(mappable)
            avoid.append(points)
        if several:
            best = best_point(np.where(measured, values, np.nan), metric)
            note = f"\n{best[2]} {best[1]:.4g}" if best is not None else ""
            progress = progress_text(s)
            fit_title(ax, f"{name}{note}{chr(10) + progress if progress else ''}")
        else:
            fit_title(ax, figure_title(s, metric_text(s, [metric], "log scale" if scale.log else "")))
    if several:
        fig.suptitle(metric_text(surfaces[0], [metric], "log scale" if scale.log else ""))
    _colourbar(fig, axes, mappables[0], scale, kind)
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    legend_below(fig, axes[0], list(entries.values()), list(entries), where="upper" if three_d else "lower")
    if kind == "contour" and scale.levels is not None:
        fmt = level_format(scale.levels, scale.log)
        for ax, cs, points in zip(axes, mappables, avoid):
            label_contours(fig, ax, cs, fmt, size=float(mpl.rcParams["font.size"]) * 0.7, avoid=points,
                           avoid_pt=marker_size(2.3))


def _names(surfaces: Sequence[Surface]) -> list[str]:
    """A distinct name per surface for legends and panel titles: the job names, else the file stems,
    else the paths."""
    for pick in (lambda s: s.name or s.path.stem, lambda s: s.path.stem, lambda s: str(s.path)):
        names = [pick(s) for s in surfaces]
        if len(set(names)) == len(names):
            return names
    return [f"{k + 1}: {s.path}" for k, s in enumerate(surfaces)]


def _figure(kind: str, surfaces: Sequence[Surface]) -> Figure:
    """A new Figure for ``kind`` with a panel per surface side by side (one axes for curves), sized by the
    current style; equal-aspect panels of a wide grid get a lower figure instead of white space."""
    if kind == SPECTRUM:
        return Figure(figsize=figure_size(1.6, 0.95), layout="constrained")
    if kind == "surface3d":
        w, h = figure_size(1.1, 1.1)
    else:
        w, h = figure_size()
    panels = 1 if kind == "curve" else len(surfaces)
    layout: Literal["constrained", "compressed"] = "constrained"
    if kind not in ("curve", "surface3d") and all(isometric(s) for s in surfaces):
        # Equal aspect: the compressed layout fits the colourbar to the boxes and drops the white space
        # around a wide grid's flat box; a lower figure keeps the legend close.
        ratio = max(float(np.ptp(s.y)) / max(float(np.ptp(s.x)), 1e-300) for s in surfaces if s.y is not None)
        h *= float(np.clip(0.45 + 0.75 * ratio, 0.6, 1.0))
        layout = "compressed"
    if panels > 1:
        w = w * (0.3 + 0.7 * panels) if panels < 4 else w * 0.7 * panels
    return Figure(figsize=(w, h), layout=layout)


def check_options(kind: str, levels: int | Sequence[float] | None, zmax: float | None) -> None:
    """Refuse an option the concrete ``kind`` cannot use (SettingsError): ``levels`` on a curve,
    ``zmax`` on anything but surface3d."""
    if levels is not None and kind == "curve":
        raise SettingsError("levels apply to 2D plots (contour, contourf, heatmap, surface3d), not to a 1D curve; "
                            "drop levels or plot a 2D file")
    if zmax is not None and kind != "surface3d":
        raise SettingsError(f"zmax clips the height of a surface3d plot, not a {kind} plot; use vmax for the "
                            "colour range, or kind surface3d")


def _check_together(surfaces: Sequence[Surface]) -> Surface:
    """The first of surfaces to draw together, after checking there is one and all have its dimensions."""
    if not surfaces:
        raise SettingsError("no surface to plot; give at least one surface file")
    first = surfaces[0]
    for s in surfaces[1:]:
        if s.dims != first.dims:
            raise SettingsError(f"{s.path} is a {s.dims}D surface and {first.path} a {first.dims}D one; "
                                "plot files of the same dimensions together")
    return first


class Drawing(NamedTuple):
    """One picture of a plot: its concrete kind, the metric its file is named after ("" for none),
    and the levels and zmax it takes."""

    kind: str
    named: str
    levels: int | Sequence[float] | None
    zmax: float | None


def plan_pictures(surfaces: Sequence[Surface], kind: str, metric: str | None,
                  levels: int | Sequence[float] | None, zmax: float | None,
                  markers: Mapping[str, tuple[float, float]] | None) -> list[Drawing]:
    """The pictures ``kind`` means for surfaces drawn together, after checking everything that can be
    checked before drawing (SurfaceFileError, SettingsError).

    With ``all``, ``levels`` and ``zmax`` go to the kinds that use them (and several files leave the
    spectrum out); a single kind refuses an option it cannot use (:func:`check_options`).
    """
    first = _check_together(surfaces)
    kinds = kinds_for(first, kind)
    if kind == "all":
        kinds = [k for k in kinds if k != SPECTRUM or len(surfaces) == 1]
    else:
        check_options(kinds[0], levels, zmax)
    check_markers(markers)
    chosen = ""
    if any(k != SPECTRUM for k in kinds):
        chosen = first.check_metric(metric)
        for s in surfaces:
            require_values(s, s.check_metric(chosen))
    # A curve without a metric draws every split's loss and accuracy: its name says no one metric.
    return [Drawing(k, "" if k == SPECTRUM or (k == "curve" and metric is None) else chosen,
                    None if k == "curve" else levels, zmax if k == "surface3d" else None) for k in kinds]


def joint_path(surfaces: Sequence[Surface]) -> pathlib.Path:
    """The path the images of surfaces drawn together are named after: the file's own, or the stems
    joined by ``_vs_`` beside the first file (``a_vs_b.h5``)."""
    first = surfaces[0].path
    if len(surfaces) == 1:
        return first
    return first.with_name("_vs_".join(s.path.stem for s in surfaces) + first.suffix)


def save_figure(fig: Figure, targets: Sequence[pathlib.Path], style: str) -> None:
    """Write ``fig`` to each target (its suffix picks the format) in ``style``'s settings (dpi, fonts)."""
    with style_context(style):
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(t, format=t.suffix.lower().lstrip("."), bbox_inches="tight")


def render_many(surfaces: Sequence[Surface], kind: str, metric: str | None = None, log: bool | None = None,
                levels: int | Sequence[float] | None = None, vmin: float | None = None,
                vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None,
                zmax: float | None = None, style: str = "default") -> Figure:
    """Draw one concrete ``kind`` of several loaded surfaces together on a new Figure.

    1D curves are overlaid in one axes (the legend names each file by its job name,
    else its file stem); 2D surfaces are panels side by side on one colour scale with
    one colourbar. All surfaces must have the same dimensions and the metric. With one
    surface this is :func:`render`. ``style``: see :data:`~.common.STYLES`.
    """
    check_style(style)
    first = _check_together(surfaces)
    kinds = kinds_for(first, kind)
    if len(kinds) != 1 or kinds[0] != kind:
        raise SurfaceFileError(f"render() needs one concrete kind, not {kind!r}; "
                               f"choose one of {', '.join(KINDS_1D + KINDS_2D + KINDS_SPECTRUM)}")
    for s in surfaces[1:]:
        kinds_for(s, kind)
    if kind == SPECTRUM and len(surfaces) > 1:
        raise SettingsError("a spectrum plot draws one file; plot each file's spectrum on its own")
    check_options(kind, levels, zmax)
    marks = check_markers(markers)
    chosen = None if metric is None and kind == "curve" else first.check_metric(metric)
    for s in surfaces[1:]:
        if chosen is not None:
            s.check_metric(chosen)
    with style_context(style):
        fig = _figure(kind, surfaces)
        if kind == SPECTRUM:
            draw_spectrum(fig, first)
        elif kind == "curve":
            for s in surfaces:
                require_values(s, chosen or s.default_metric())
            draw_curve(fig, list(surfaces), _names(surfaces), chosen, bool(log), vmin, vmax, marks)
        else:
            assert chosen is not None
            _draw_2d(fig, surfaces, _names(surfaces), kind, chosen, log, levels, vmin, vmax, zmax, marks)
    return fig


def render(surface: Surface, kind: str, metric: str | None = None, log: bool | None = None,
           levels: int | Sequence[float] | None = None, vmin: float | None = None,
           vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None,
           zmax: float | None = None, style: str = "default") -> Figure:
    """Draw one concrete ``kind`` (not auto/all) of a loaded surface on a new Figure.

    ``log`` None: a log scale for a positive loss on contours and heatmaps, linear
    otherwise. ``spectrum`` draws the file's Hessian spectrum (:func:`~.spectrum.draw_spectrum`;
    ``metric``, ``log``, ``levels``, ``vmin``, ``vmax`` and ``markers`` do not apply to it).
    """
    return render_many([surface], kind, metric, log=log, levels=levels, vmin=vmin, vmax=vmax, markers=markers,
                       zmax=zmax, style=style)


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




def plot_surfaces(
    paths: Sequence[str | os.PathLike[str]],
    kind: str = "auto",
    metric: str | None = None,
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] | str | None = None,
    log: bool | None = None,
    levels: int | Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    markers: Mapping[str, tuple[float, float]] | None = None,
    zmax: float | None = None,
    style: str = "default",
) -> list[pathlib.Path]:
    """Plot one or more surface files together and return the paths of the images written.

    One file: as :func:`plot_surface`. Several: 1D curves are overlaid in one axes
    (each file named by its job name, else its stem) and 2D surfaces are drawn as
    panels side by side on one colour scale with one colourbar (:func:`render_many`);
    the images are named after the files' stems joined by ``_vs_``
    (``a_vs_b_contour_test_loss.png``). The other arguments are those of
    :func:`plot_surface`.
    """
    if not paths:
        raise SettingsError("no surface file given; name at least one .h5 file")
    check_style(style)
    surfaces = [load_surface(p) for p in paths]
    plan = plan_pictures(surfaces, kind, metric, levels, zmax, markers)
    fmts = check_formats(DEFAULT_FORMAT[style] if formats is None else formats)
    base = joint_path(surfaces)
    targets = [image_paths(base, out, d.kind, d.named, fmts, several_kinds=len(plan) > 1) for d in plan]
    written: list[pathlib.Path] = []
    for d, paths_k in zip(plan, targets):
        fig = render_many(surfaces, d.kind, metric, log=log, levels=d.levels, vmin=vmin, vmax=vmax, markers=markers,
                          zmax=d.zmax, style=style)
        try:
            save_figure(fig, paths_k, style)
            written.extend(paths_k)
        finally:
            fig.clear()
    return written


def plot_surface(
    path: str | os.PathLike[str],
    kind: str = "auto",
    metric: str | None = None,
    out: str | os.PathLike[str] | None = None,
    formats: Sequence[str] | str | None = None,
    log: bool | None = None,
    levels: int | Sequence[float] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    markers: Mapping[str, tuple[float, float]] | None = None,
    zmax: float | None = None,
    style: str = "default",
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
    ``kind="all"`` the kind is appended to its stem). ``formats``: default ``png``,
    ``pdf`` with the paper style. ``log``: True a log scale (loss axis of a curve,
    levels and colours of 2D plots, height of a 3D one), False linear, None (default)
    log for a positive loss on contours and heatmaps, linear otherwise. ``levels``: a
    count or explicit contour levels (a heatmap then draws discrete bands, a 3D plot
    contour lines on its floor). ``vmin``/``vmax``: colour (or y-axis) limits.
    ``zmax``: where a 3D surface is clipped (default: a robust top of the values,
    stated in the colourbar when it cuts data). ``style``: ``default``, or ``paper``
    (a one-column figure, 3.3 in wide, 8 pt text, thin lines). ``markers``: labelled (x, y)
    points drawn on 2D plots (vertical lines at x on 1D curves), in addition to
    the file's own ``models/`` and ``trajectory/``, which are always drawn
    (except on 3D surfaces). Points skipped by adaptive refinement are filled by
    linear interpolation from the measured ones (:func:`~.common.drawn_values`).
    Curves show each loss's barrier between the end
    models (file attribute ``endpoints``) and draw ``line_*`` metrics dashed.
    ``kind="spectrum"`` draws the file's Hessian eigenvalue density and λmax per
    parameter group (``surf.h5`` -> ``surf_spectrum.png``), whatever the grid's
    progress; a file without ``spectrum/`` is refused with SurfaceFileError.
    """
    return plot_surfaces([path], kind, metric, out=out, formats=formats, log=log, levels=levels, vmin=vmin,
                         vmax=vmax, markers=markers, zmax=zmax, style=style)
