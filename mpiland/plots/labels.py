"""Contour labels that overlap neither each other nor the marked points.

matplotlib's automatic placement puts every label where its own line is
straightest, so where the lines crowd (the basin on a log scale) labels of
neighbouring levels pile up. Here each level's label position is chosen on its
line, in the order the levels were given, at the first place whose box (a square
that holds the label at any rotation) is inside the axes and clear of the boxes
already taken; a level with no such place is left unlabelled. The positions go to
:meth:`~matplotlib.axes.Axes.clabel` as ``manual`` ones, so the lines are broken
under the labels as usual.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.contour import ContourSet
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

_TEXT = TextToPath()
_PAD_PT = 2.0
"""Space (points) kept between two labels, and between a label and the axes' edge."""


def _box_side(text: str, size: float, dpi: float) -> float:
    """The side (pixels) of a square that holds ``text`` at font ``size`` turned by any angle."""
    w, h, _d = _TEXT.get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return (float(np.hypot(w, h)) + _PAD_PT) * dpi / 72.0


def _segments(cs: ContourSet, i: int) -> list[np.ndarray]:
    """The drawn pieces of level ``i``, as (n, 2) arrays of data coordinates."""
    return [np.asarray(seg, dtype=np.float64) for seg in cs.allsegs[i] if len(seg) >= 2]


def _clear(box: np.ndarray, taken: Sequence[np.ndarray]) -> bool:
    """Whether the box (x0, y0, x1, y1) overlaps none of the ``taken`` boxes."""
    return all(box[2] <= t[0] or t[2] <= box[0] or box[3] <= t[1] or t[3] <= box[1] for t in taken)


def label_contours(fig: Figure, ax, cs: ContourSet, fmt: str, size: float, every: int = 2,
                   avoid: Sequence[tuple[float, float]] = (), avoid_pt: float = 10.0) -> list[float]:
    """Label every ``every``-th level of ``cs`` where the label fits; return the levels labelled.

    ``avoid``: data points (the marked minimum, the origin ...) whose square of side
    ``avoid_pt`` points no label may cover. The figure's layout is computed first,
    so the boxes are those of the saved picture.
    """
    fig.draw_without_rendering()
    dpi = fig.dpi
    frame = ax.get_window_extent()
    margin = _PAD_PT * dpi / 72.0
    to_pixels = ax.transData.transform
    half = avoid_pt * dpi / 72.0 / 2.0
    taken: list[np.ndarray] = [np.array([px - half, py - half, px + half, py + half])
                               for px, py in (to_pixels(np.asarray(avoid, dtype=np.float64).reshape(-1, 2))
                                              if len(avoid) else np.zeros((0, 2)))]
    chosen: list[float] = []
    places: list[tuple[float, float]] = []
    levels = np.asarray(cs.levels, dtype=np.float64)
    for i in range(0, levels.size, max(1, every)):
        side = _box_side(fmt % levels[i], size, dpi) / 2.0
        for seg in sorted(_segments(cs, i), key=len, reverse=True):
            pixels = to_pixels(seg)
            # From the middle of the piece outwards: labels sit away from where a line leaves the axes.
            order = np.argsort(np.abs(np.arange(len(seg)) - (len(seg) - 1) / 2.0), kind="stable")
            found = None
            for k in order:
                px, py = pixels[k]
                box = np.array([px - side, py - side, px + side, py + side])
                inside = (box[0] >= frame.x0 + margin and box[2] <= frame.x1 - margin
                          and box[1] >= frame.y0 + margin and box[3] <= frame.y1 - margin)
                if inside and _clear(box, taken):
                    found = (k, box)
                    break
            if found is not None:
                k, box = found
                taken.append(box)
                chosen.append(float(levels[i]))
                places.append((float(seg[k, 0]), float(seg[k, 1])))
                break
    if places:
        ax.clabel(cs, chosen, manual=places, inline=True, fontsize=size, fmt=fmt)
    return chosen
