"""The curve of a 1D surface file: every split's loss (and accuracy on a second
axis), the straight-line comparison (``line_*`` metrics, dashed) and the loss
barrier between the end models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from ..analysis.measures import barrier
from ..errors import SurfaceFileError
from ..surface.reader import COMPARISON_PREFIXES, LINE_PREFIX, UNALIGNED_PREFIX, Surface, comparison, curve_metric
from .common import best_point, figure_title, finite_values, require_values

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
    ax.plot(ts, l0 + (ts - t0) * (l1 - l0) / (t1 - t0), color=colour, lw=0.8, ls=":", alpha=0.9)
    base = l0 + (at - t0) * (l1 - l0) / (t1 - t0)
    other = comparison(label)
    ax.plot([at, at], [base, base + h], color=colour, lw=1.4 if other else 2.4, alpha=0.9, solid_capstyle="butt")
    top = base + h
    mid = float(np.sqrt(base * top)) if log and base > 0 and top > 0 else base + h / 2
    ax.annotate(f"{_WHAT[other] + ': ' if other else ''}barrier {h:.3g} at t={at:.3g}", (at, mid),
                xytext=(6, 10 * (k % 3) - 10), textcoords="offset points", fontsize=8, color=colour,
                ha="left", va="center", bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=colour, alpha=0.8),
                zorder=6)


def _vertical_marks(ax, marks: Sequence[tuple[str, float]], style: dict) -> None:
    for label, mx in marks:
        ax.axvline(mx, **style)
        ax.annotate(label, (mx, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -12),
                    textcoords="offset points", fontsize=8)


def draw_curve(fig: Figure, s: Surface, metric: str | None, log: bool,
                vmin: float | None, vmax: float | None, markers: dict[str, tuple[float, float]]) -> None:
    """Draw the curve plot of a 1D surface on ``fig``: losses, accuracies, barriers, models, markers."""
    ax = fig.add_subplot()
    left, right = _curve_metrics(s, metric)
    drawable = [m for m in left if np.isfinite(finite_values(s, m)).any()]
    if not drawable:
        require_values(s, left[0])  # raises with the reason
    left = drawable
    colours: dict[str, str] = {}

    def colour(m: str) -> str:
        split = curve_metric(m).split("_", 1)[0]
        return colours.setdefault(split, f"C{len(colours)}")

    x = s.x
    marker = "." if x.size <= 60 else None
    shown: list[np.ndarray] = []
    for k, m in enumerate(left):
        v = finite_values(s, m)
        if log:
            v = np.where(v > 0, v, np.nan)
        c = colour(m)
        line = bool(comparison(m))
        ax.plot(x, v, color=c, lw=1.4 if line else 1.8, ls=_STYLE[comparison(m)], marker=marker, ms=4, label=m)
        se = m + "_stderr"
        if se in s.metrics:
            e = finite_values(s, se)
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
        best = None if line else best_point(v, m)
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
            v = finite_values(s, m)
            ax2.plot(x, v, color=colour(m), lw=1.2, ls=":" if comparison(m) else "-.", marker=marker, ms=3, label=m)
        ax2.set_ylabel("accuracy")
        ax.set_zorder(ax2.get_zorder() + 1)  # losses and their notes above the accuracy lines
        ax.patch.set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc="best", framealpha=0.8)
    names = [m for m in left + right if not comparison(m)] or left
    others = sorted({comparison(m) for m in left + right} - {""}, key=COMPARISON_PREFIXES.index)
    note = ""
    if others and len(names) < len(left + right):
        styles = {"--": "dashed", ":": "dotted", "-.": "dash-dotted"}
        note = "\n(" + "; ".join(f"{styles[_STYLE[p]]}: {_WHAT[p]}" for p in others) + ")"
    ax.set_title(figure_title(s, ", ".join(names)) + note)
    ax.grid(True, alpha=0.3)
