"""What every picture of :mod:`mpiland.plots` shares: image formats, styles, the
values to draw (computed, finite, skipped points filled in), the extreme worth
marking, titles, legends and markers.
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib.rcsetup import cycler
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from scipy.interpolate import griddata  # type: ignore[import-untyped]

from ..errors import SettingsError, SurfaceFileError
from ..surface.reader import Surface, best_is, comparison, curve_metric

FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""Image formats that can be written."""

ORDER_CMAP = "plasma"
"""Colour map of training order (trajectory pictures and their colourbars)."""


COLOURS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
                            "#999999")
"""The colour cycle of every picture: Okabe and Ito's colour-blind-safe palette (blue, vermillion,
bluish green, reddish purple, orange, sky blue, black), with grey for their yellow, which is too pale
for thin lines on white."""

STYLES: tuple[str, ...] = ("default", "paper")
"""Picture styles: ``default`` (screen-sized PNGs) and ``paper`` (a one-column figure, vector PDF)."""

_COMMON_RC: dict[str, Any] = {"axes.prop_cycle": cycler(color=COLOURS), "image.cmap": "viridis",
                              "pdf.fonttype": 42, "ps.fonttype": 42, "svg.fonttype": "none"}
_STYLE_RC: dict[str, dict[str, Any]] = {
    "default": {"figure.figsize": (7.0, 5.2), "font.size": 10.0, "legend.fontsize": 8.0, "lines.linewidth": 1.6,
                "lines.markersize": 6.0, "savefig.dpi": 150},
    # One column of a two-column paper is about 3.3 in wide; 8-9 pt text reads at print size, and
    # thin lines keep dense contours apart.
    "paper": {"figure.figsize": (3.3, 2.6), "font.size": 8.0, "axes.titlesize": 8.0, "axes.labelsize": 8.0,
              "xtick.labelsize": 7.0, "ytick.labelsize": 7.0, "legend.fontsize": 6.5,
              "legend.title_fontsize": 6.5, "lines.linewidth": 0.9, "lines.markersize": 3.5,
              "axes.linewidth": 0.5, "grid.linewidth": 0.4, "xtick.major.width": 0.5, "ytick.major.width": 0.5,
              "xtick.major.size": 2.5, "ytick.major.size": 2.5, "xtick.minor.width": 0.4,
              "ytick.minor.width": 0.4, "patch.linewidth": 0.5, "contour.linewidth": 0.6, "savefig.dpi": 300,
              "savefig.pad_inches": 0.02},
}
DEFAULT_FORMAT = {"default": "png", "paper": "pdf"}
"""The image format a style writes when none is asked for."""


def check_style(style: str) -> str:
    """``style`` if it is one of :data:`STYLES`, else SettingsError."""
    if style not in STYLES:
        raise SettingsError(f"unknown plot style {style!r}; choose one of {', '.join(STYLES)}")
    return style


@contextlib.contextmanager
def style_context(style: str) -> Iterator[None]:
    """The matplotlib settings (fonts, sizes, line widths, colour cycle) of ``style``, for drawing and saving.

    A :func:`matplotlib.rc_context`: the caller's own settings are restored afterwards, nothing
    global is changed.
    """
    rc: Any = {**_COMMON_RC, **_STYLE_RC[check_style(style)]}
    with mpl.rc_context(rc):
        yield


def figure_size(scale_width: float = 1.0, scale_height: float = 1.0) -> tuple[float, float]:
    """The current style's figure size (``figure.figsize``), scaled."""
    w, h = mpl.rcParams["figure.figsize"]
    return float(w) * scale_width, float(h) * scale_height


def marker_size(factor: float) -> float:
    """A marker size ``factor`` times the current style's ``lines.markersize``."""
    return factor * float(mpl.rcParams["lines.markersize"])


def line_width(factor: float) -> float:
    """A line width ``factor`` times the current style's ``lines.linewidth``."""
    return factor * float(mpl.rcParams["lines.linewidth"])


def finite_values(surface: Surface, metric: str) -> np.ndarray:
    """The metric with NaN wherever it is not computed or not finite."""
    v = surface.values(metric)
    return np.where(np.isfinite(v), v, np.nan)


def drawn_values(surface: Surface, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The metric as every picture draws it, and where it was measured.

    Returns ``(values, measured)``: :func:`finite_values`, with the points adaptive
    refinement skipped (``surface.skipped``, never evaluated) filled by linear
    interpolation from the measured finite points (1D: between the neighbours along
    x; 2D: on the Delaunay triangles of the measured grid points), and a mask that is
    True only where the value comes from the file. A skipped point outside the
    measured points' range (hull) stays NaN, and so do pending and divergent points.
    The surface is not modified.
    """
    values = finite_values(surface, metric)
    measured = np.isfinite(values)
    todo = surface.skipped & ~measured
    if not todo.any() or measured.sum() < 2:
        return values, measured
    filled = values.copy()
    if surface.dims == 1:
        x = surface.x
        xs, vs = x[measured], values[measured]
        inside = todo & (x >= xs.min()) & (x <= xs.max())
        filled[inside] = np.interp(x[inside], xs, vs)
        return filled, measured
    assert surface.y is not None
    # Interpolated in coordinates scaled to [0, 1], so that the triangles do not depend on the axes' units.
    sx = (surface.x - surface.x.min()) / max(float(np.ptp(surface.x)), 1e-300)
    sy = (surface.y - surface.y.min()) / max(float(np.ptp(surface.y)), 1e-300)
    X, Y = np.meshgrid(sx, sy, indexing="ij")
    known = np.column_stack([X[measured], Y[measured]])
    if np.linalg.matrix_rank(known - known.mean(axis=0)) < 2:  # all on one line: no triangles to fill from
        return values, measured
    filled[todo] = griddata(known, values[measured], (X[todo], Y[todo]), method="linear")
    return filled, measured


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


def model_name(surface: Surface) -> str:
    """The model's factory name from the job (``mpiland.demo:digits_cnn`` -> ``digits_cnn``), or ""."""
    model = (surface.job or {}).get("model")
    factory = model.get("factory") if isinstance(model, dict) else None
    if not isinstance(factory, str) or not factory:
        return ""
    return factory.replace(":", ".").rsplit(".", 1)[-1]


def surface_label(surface: Surface) -> str:
    """What a picture calls a surface: the job name and its model, else the file's stem."""
    name, model = surface.name, model_name(surface)
    if name and model and model != name:
        return f"{name} ({model})"
    return name or model or surface.path.stem


def metric_text(surface: Surface, metrics: Sequence[str], note: str = "") -> str:
    """The metrics' names, the split(s) they were measured on and ``note``: ``test_loss (test split, log scale)``."""
    names = [m for m in metrics if not comparison(m)] or list(metrics)
    splits = list(dict.fromkeys(s for s in (curve_metric(m).split("_", 1)[0] for m in names)
                                if s in surface.splits))
    extra = [f"{' and '.join(splits)} split{'s' if len(splits) > 1 else ''}"] if splits else []
    extra += [note] if note else []
    return ", ".join(names) + (f" ({', '.join(extra)})" if extra else "")


def progress_text(surface: Surface) -> str:
    """``""`` for a finished file, else how many points are done (refinement's skipped points count as
    done, and are said to be interpolated)."""
    skipped = int(surface.skipped.sum())
    total = int(surface.done.size)
    done = int(surface.done.sum()) + skipped
    parts = [f"{done}/{total} points done"] if done < total else []
    if skipped:
        parts.append(f"{skipped} skipped by refinement, interpolated")
    return f"({'; '.join(parts)})" if parts else ""


def figure_title(surface: Surface, what: str) -> str:
    """The surface's job and model (:func:`surface_label`), ``what`` (metric and split), and the progress
    when the file is not finished."""
    title = f"{surface_label(surface)}: {what}"
    progress = progress_text(surface)
    return f"{title}\n{progress}" if progress else title


def legend_below(fig: Figure, ax: Any, handles: Sequence[Any] | None = None,
                 labels: Sequence[str] | None = None, where: str = "lower") -> None:
    """The legend of ``ax`` (or the given entries) below the axes and their labels, outside the data.

    It is a figure legend in the constrained layout's ``outside lower center`` slot (``where="upper"``:
    above the axes, for 3D boxes whose slanted labels the layout does not measure), so the layout
    makes room for it and a saved image contains it whatever ``bbox_inches`` is.
    """
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(str(t)) for t in labels)
    ncols = max(1, min(len(handles), 3 if longest < 28 else 2 if longest < 45 else 1))
    loc: Any = f"outside {where} center"
    fig.legend(handles, labels, loc=loc, ncols=ncols, framealpha=0.9)


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


def fit_title(ax: Any, text: str) -> None:
    """Set ``ax``'s title, each line wrapped to the figure's width at the current title font size."""
    size = FontProperties(size=mpl.rcParams["axes.titlesize"]).get_size_in_points()
    chars = max(20, int(ax.get_figure().get_figwidth() * 72.0 / (0.55 * size)))
    ax.set_title("\n".join(textwrap.fill(line, chars) for line in text.split("\n")))


def separate_notes(fig: Figure, ax: Any, notes: Sequence[Any], step_pt: float = 2.0, tries: int = 12) -> None:
    """Move annotations (offset in points), in turn, until none overlaps an earlier one.

    Each note tries its own place, then one, two ... of its heights above and below it, and takes
    the first that is clear of the earlier notes and inside ``ax`` (else it stays). The layout is
    computed first, so the boxes are those of the saved picture.
    """
    if len(notes) < 2:
        return
    fig.draw_without_rendering()
    frame = ax.get_window_extent()
    placed: list[Any] = []
    for note in notes:
        start = note.xyann
        box = note.get_window_extent()
        height = box.height * 72.0 / fig.dpi + step_pt
        for k in range(2 * tries + 1):
            shift = (k + 1) // 2 * height * (1 if k % 2 else -1)
            moved = box.translated(0, shift * fig.dpi / 72.0)
            clear = not any(moved.x0 < b.x1 and b.x0 < moved.x1 and moved.y0 < b.y1 and b.y0 < moved.y1
                            for b in placed)
            if clear and (k == 0 or frame.y0 <= moved.y0 and moved.y1 <= frame.y1):
                note.xyann = (start[0], start[1] + shift)
                box = moved
                break
        placed.append(box)
