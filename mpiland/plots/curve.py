"""The curve of a 1D surface file: every split's loss (and accuracy on a second
axis), the straight-line comparison (``line_*`` metrics, dashed) and the loss
barrier between the end models.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.text import Annotation

from ..analysis.measures import barrier
from ..errors import SurfaceFileError
from ..surface.reader import COMPARISON_PREFIXES, LINE_PREFIX, UNALIGNED_PREFIX, Surface, comparison, curve_metric
from .common import (COLOURS, best_point, drawn_values, figure_title, finite_values, fit_title, legend_below,
                     line_width, marker_size, metric_text, require_values, separate_notes)


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
    if not comparison(metric):
        left += [p + metric for p in COMPARISON_PREFIXES[::-1]]
        right += [p + acc for p in COMPARISON_PREFIXES[::-1]]
    return [m for m in left if m in s.metrics], [m for m in right if m in s.metrics]


_STYLE = {"": "-", LINE_PREFIX: "--", UNALIGNED_PREFIX: ":", UNALIGNED_PREFIX + LINE_PREFIX: "-."}
"""Line style of the file's own path and of each comparison beside it."""
_WHAT = {LINE_PREFIX: "straight line", UNALIGNED_PREFIX: "before alignment",
         UNALIGNED_PREFIX + LINE_PREFIX: "straight line before alignment"}


def _draw_barrier(ax, x: np.ndarray, v: np.ndarray, s: Surface, label: str, colour: str, k: int,
                  log: bool) -> None:
    """The straight line between the end points and a bar from it to the loss's highest excess.

    Drawn only for a path between models (the file has ``endpoints``): a curve along a
    random direction through θ* joins no two models.
    """
    if s.endpoints is None:
        return
    try:
        b = barrier(x, v, s.endpoints)
    except SurfaceFileError:  # too few finite values: nothing to show
        return
    if b["height"] is None:
        return
    t0, t1, l0, l1, h, at = b["t0"], b["t1"], b["loss0"], b["loss1"], b["height"], b["at"]
    ts = np.linspace(t0, t1, 64)
    ax.plot(ts, l0 + (ts - t0) * (l1 - l0) / (t1 - t0), color=colour, lw=line_width(0.5), ls=":", alpha=0.9)
    base = l0 + (at - t0) * (l1 - l0) / (t1 - t0)
    other = comparison(label)
    ax.plot([at, at], [base, base + h], color=colour, lw=line_width(0.9 if other else 1.5), alpha=0.9,
            solid_capstyle="butt")
    top = base + h
    mid = float(np.sqrt(base * top)) if log and base > 0 and top > 0 else base + h / 2
    ax.annotate(f"{_WHAT[other] + ': ' if other else ''}barrier {h:.3g} at t={at:.3g}", (at, mid),
                xytext=(6, 10 * (k % 3) - 10), textcoords="offset points", fontsize="x-small", color=colour,
                ha="left", va="center", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colour, alpha=0.8),
                zorder=6)


def _vertical_marks(ax, marks: Sequence[tuple[str, float]], style: dict) -> None:
    for label, mx in marks:
        ax.axvline(mx, **style)
        ax.annotate(label, (mx, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize="x-small")


_FILE_STYLES = ("-", "--", ":", "-.")
"""Line style of each file when several are overlaid (their metrics keep one colour each)."""


def draw_curve(fig: Figure, surfaces: Sequence[Surface], names: Sequence[str], metric: str | None, log: bool,
               vmin: float | None, vmax: float | None, markers: dict[str, tuple[float, float]]) -> None:
    """Draw the curves of 1D surfaces in one axes of ``fig``: losses (left), accuracies on a second y
    axis (right), barriers, models and markers.

    Every series has its own colour of the cycle (:data:`~.common.COLOURS`); a
    comparison path (``line_*``, ``unaligned_*``) is dashed or dotted. Several files
    are overlaid, each in its own line style and named by ``names``; their comparison
    paths are left out. Points skipped by refinement are interpolated
    (:func:`~.common.drawn_values`) and carry no sample marker.
    """
    ax = fig.add_subplot()
    several = len(surfaces) > 1
    plan: list[tuple[Surface, str, str, list[str], list[str]]] = []
    for s, name in zip(surfaces, names):
        left, right = _curve_metrics(s, metric)
        if several:
            left, right = [m for m in left if not comparison(m)], [m for m in right if not comparison(m)]
        drawable = [m for m in left if np.isfinite(finite_values(s, m)).any()]
        if not drawable:
            require_values(s, left[0])  # raises with the reason
        plan.append((s, name, _FILE_STYLES[len(plan) % len(_FILE_STYLES)], drawable, right))
    cycle = itertools.cycle(COLOURS)
    shown: list[np.ndarray] = []
    k = 0
    ax2 = ax.twinx() if any(right for *_r, right in plan) else None
    for s, name, file_style, left, right in plan:
        x = s.x
        marker = "." if x.size <= 60 else None
        tag = f"{name}: " if several else ""
        for m in left:
            v, measured = drawn_values(s, m)
            if log:
                v = np.where(v > 0, v, np.nan)
            c = next(cycle)
            line = bool(comparison(m))
            ls = file_style if several else _STYLE[comparison(m)]
            ax.plot(x, v, color=c, lw=line_width(0.8 if line else 1.15), ls=ls, marker=marker,
                    ms=marker_size(0.6), markevery=np.flatnonzero(measured).tolist(), label=tag + m)
            se = m + "_stderr"
            if se in s.metrics:
                e = drawn_values(s, se)[0]
                if np.isfinite(e).any():
                    lo_band = v - e
                    if log:
                        lo_band = np.where(lo_band > 0, lo_band, np.nan)
                    ax.fill_between(x, lo_band, v + e, color=c, alpha=0.15 if line else 0.25, lw=0,
                                    label=f"{tag}{m} \u00b1 stderr")
            if not np.isfinite(v).any():
                continue
            shown.append(v[np.isfinite(v)])
            if m.endswith("_loss"):
                _draw_barrier(ax, x, np.where(measured, v, np.nan), s, m, c, k, log)  # as info measures it
            best = None if line else best_point(np.where(measured, v, np.nan), m)
            if best is not None:
                (ib,), vb, word = best
                ax.plot([x[ib]], [vb], "o", color=c, mec="black", ms=marker_size(1.1), zorder=5)
                ax.annotate(f"{word} {vb:.4g}\nat x={x[ib]:.3g}", (x[ib], vb), xytext=(14, 18 + 24 * k),
                            textcoords="offset points", fontsize="x-small", color=c,
                            arrowprops=dict(arrowstyle="->", color=c, lw=line_width(0.5)),
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=c, alpha=0.8))
            k += 1
        if ax2 is not None:
            for m in right:
                v, measured = drawn_values(s, m)
                ls = file_style if several else (":" if comparison(m) else "-.")
                ax2.plot(x, v, color=next(cycle), lw=line_width(0.8), ls=ls, marker=marker, ms=marker_size(0.5),
                         markevery=np.flatnonzero(measured).tolist(), label=tag + m)
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
    first = surfaces[0]
    ax.set_xlabel(first.x_label)
    lefts = [m for *_r, left, _right in plan for m in left]
    ax.set_ylabel(lefts[0] if len(set(lefts)) == 1 else "loss")
    xs = np.concatenate([s.x for s in surfaces])
    if xs.size and xs.min() <= 0 <= xs.max():
        ax.axvline(0.0, color="0.5", lw=line_width(0.5), ls=":")
    models = dict.fromkeys((label, float(mx)) for s in surfaces if s.models is not None
                           for label, mx in zip(s.models.labels, s.models.coordinates[:, 0].tolist()))
    _vertical_marks(ax, list(models), dict(color="0.3", lw=line_width(0.6), ls="-."))
    _vertical_marks(ax, [(label, mx) for label, (mx, _my) in markers.items()],
                    dict(color="0.2", lw=line_width(0.5), ls="--"))
    handles, labels = ax.get_legend_handles_labels()
    if ax2 is not None:
        ax2.set_ylabel("accuracy")
        ax.set_zorder(ax2.get_zorder() + 1)  # losses and their notes above the accuracy lines
        ax.patch.set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    legend_below(fig, ax, handles, labels)
    every = [m for *_r, left, right in plan for m in left + right]
    if several:
        title = f"{' vs '.join(names)}: {metric_text(first, list(dict.fromkeys(every)))}"
        fit_title(ax, title + "\n(" + "; ".join(f"{_LINE_WORDS[st]}: {n}" for (_s, n, st, *_r) in plan) + ")")
    else:
        s, _name, _st, left, right = plan[0]
        names_only = [m for m in left + right if not comparison(m)] or left
        others = sorted({comparison(m) for m in left + right} - {""}, key=COMPARISON_PREFIXES.index)
        note = ""
        if others and len(names_only) < len(left + right):
            note = "\n(" + "; ".join(f"{_LINE_WORDS[_STYLE[p]]}: {_WHAT[p]}" for p in others) + ")"
        fit_title(ax, figure_title(s, metric_text(s, left + right)) + note)
    ax.grid(True, alpha=0.3)
    # The models' names (at the top) stay; the barrier and minimum notes move down until they are clear.
    notes = [t for t in ax.texts if isinstance(t, Annotation)]
    separate_notes(fig, ax, sorted(notes, key=lambda t: t.get_bbox_patch() is not None))


_LINE_WORDS = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dotted"}
