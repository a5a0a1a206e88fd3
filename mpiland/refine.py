"""Adaptive refinement of a grid (``grid.refine``): evaluate a coarse sub-grid, then only the cells that need it.

Level 0 is every ``2**L``-th point along each axis (and the last one, so the coarse
grid spans the whole range). At each following level the *active* cells, those
between neighbouring points of the level before, are split in two along each
axis, but only where a cell needs it: its loss varies by more than ``tol``
across its corners, it crosses the ε-basin boundary L* + ε (some corners at or
below it, some above; L* is the least loss of the points the plan has evaluated
so far), a corner is not finite, or it holds an *anchor* (the grid point nearest
a model: θ* of random directions, the models of a path, so the values there are
always evaluated, never interpolated). The corners of the split cells are the next
level's points; cells left whole are never looked at again, so after ``L``
levels every point is either evaluated or inside a cell whose corners are.

A level's points depend only on the values at the points of the levels before
it, so the plan is the same at any number of ranks, and a resumed run recomputes
it from the values stored in the file. Points the plan never needs are marked
``done`` = 2 (skipped); :func:`fill` interpolates them for pictures, level by
level, bilinearly from the corners of the cell around them. Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import GridError

MIN_COARSE = 5
"""Automatic levels keep at least this many level-0 points along each axis that has as many."""
SKIPPED = 2
"""The ``done`` value of a point the refinement never evaluated (docs/schema.md)."""


def auto_levels(shape: tuple[int, ...]) -> int:
    """Levels ``refine_levels = 0`` means: the most that keep ``MIN_COARSE`` level-0 points along the shorter axis."""
    n = min(shape)
    levels = 0
    while (n - 1) / 2 ** (levels + 1) >= MIN_COARSE - 1:
        levels += 1
    return levels


def axis_points(n: int, levels: int, level: int) -> np.ndarray:
    """Indices along an axis of ``n`` points that level ``level`` of ``levels`` uses: every ``2**(levels-level)``-th and the last."""
    step = 2 ** (levels - level)
    return np.unique(np.r_[np.arange(0, n, step), n - 1]).astype(np.int64)


@dataclass(frozen=True)
class Plan:
    """The refinement of a grid of ``shape``: ``levels`` levels below the coarse one, tolerance, ε, and anchors
    (grid indices, one tuple per point, whose cells are always split)."""

    shape: tuple[int, ...]
    levels: int
    tol: float
    epsilon: float
    anchors: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def make(cls, shape: tuple[int, ...], levels: int, tol: float, epsilon: float,
             anchors: tuple[tuple[int, ...], ...] = ()) -> "Plan":
        """The plan of a grid; ``levels`` 0: :func:`auto_levels`. Raises GridError for more levels than the grid has."""
        most = max(0, int(math.floor(math.log2(max(1, min(shape) - 1))))) if min(shape) > 1 else 0
        if levels > most:
            raise GridError(f"grid.refine_levels = {levels} needs at least {2 ** levels + 1} points along each axis; "
                            f"the grid has {min(shape)}: lower it to at most {most}, or 0 for automatic")
        return cls(tuple(int(n) for n in shape), levels if levels > 0 else auto_levels(shape), tol, epsilon,
                   tuple(tuple(int(i) for i in a) for a in anchors))

    @property
    def dims(self) -> int:
        return len(self.shape)

    def coarse(self) -> tuple[np.ndarray, np.ndarray]:
        """Level 0: its flat point indices and its cells (k × 2·dims: lo, hi index per axis)."""
        axes = [axis_points(n, self.levels, 0) for n in self.shape]
        cells = [np.stack([a[:-1], a[1:]], axis=1) if len(a) > 1 else np.stack([a, a], axis=1) for a in axes]
        if self.dims == 1:
            return axes[0], cells[0]
        gx, gy = np.meshgrid(axes[0], axes[1], indexing="ij")
        points = (gx * self.shape[1] + gy).reshape(-1)
        cx = np.repeat(cells[0], len(cells[1]), axis=0)
        cy = np.tile(cells[1], (len(cells[0]), 1))
        return points, np.concatenate([cx, cy], axis=1)

    def corners(self, cells: np.ndarray) -> np.ndarray:
        """Flat indices of each cell's corners (k × 2**dims)."""
        if self.dims == 1:
            return cells[:, :2]
        ny = self.shape[1]
        x0, x1, y0, y1 = cells.T
        return np.stack([x0 * ny + y0, x0 * ny + y1, x1 * ny + y0, x1 * ny + y1], axis=1)

    def flagged(self, cells: np.ndarray, loss: np.ndarray, l_star: float) -> np.ndarray:
        """Which cells need splitting, judged by the loss (flat, known at their corners) and L*."""
        if len(cells) == 0:
            return np.zeros(0, bool)
        vals = loss[self.corners(cells)]
        finite = np.isfinite(vals).all(axis=1)
        safe = np.where(np.isfinite(vals), vals, 0.0)
        lo, hi = safe.min(axis=1), safe.max(axis=1)
        threshold = l_star + self.epsilon
        crossing = (lo <= threshold) & (hi > threshold) if math.isfinite(l_star) else np.zeros(len(cells), bool)
        anchored = np.zeros(len(cells), bool)
        for anchor in self.anchors:
            inside = np.ones(len(cells), bool)
            for axis, i in enumerate(anchor):
                inside &= (cells[:, 2 * axis] <= i) & (i <= cells[:, 2 * axis + 1])
            anchored |= inside
        return ~finite | (hi - lo > self.tol) | crossing | anchored

    def split(self, cells: np.ndarray, level: int) -> np.ndarray:
        """The children at ``level`` of cells of ``level - 1``: each axis halved where a point of ``level`` lies inside."""
        half = 2 ** (self.levels - level)
        parts = []
        for axis in range(self.dims):
            lo, hi = cells[:, 2 * axis], cells[:, 2 * axis + 1]
            mid = lo + half
            inside = mid < hi
            parts.append([(lo, np.where(inside, mid, hi), np.ones(len(cells), bool)),
                          (np.where(inside, mid, lo), hi, inside)])
        children = []
        for combo in np.ndindex(*([2] * self.dims)):
            keep = np.ones(len(cells), bool)
            bounds = []
            for axis, side in enumerate(combo):
                lo, hi, valid = parts[axis][side]
                keep &= valid
                bounds += [lo, hi]
            children.append(np.stack(bounds, axis=1)[keep])
        out = np.concatenate(children, axis=0) if children else cells[:0]
        return out[np.lexsort(out.T[::-1])]

    def walk(self, loss: np.ndarray, have: np.ndarray) -> tuple[list[np.ndarray], bool]:
        """The flat point indices of each level, as far as the values known decide them; and whether all are known.

        ``loss`` (flat) holds the values where ``have`` (flat bool) is True. The walk
        stops at the first level with a point not in ``have``: that level is the one
        to evaluate next (the last list entry). Complete (True): every level's points
        are known, and the points of no level are the skipped ones.
        """
        points, cells = self.coarse()
        out = [points]
        used = np.zeros(loss.shape, bool)
        for level in range(1, self.levels + 1):
            if not have[points].all():
                return out, False
            used[points] = True
            finite = used & np.isfinite(loss)
            l_star = float(loss[finite].min()) if finite.any() else math.inf
            cells = self.split(cells[self.flagged(cells, loss, l_star)], level)
            if len(cells) == 0:  # nothing left to split: the levels below are empty
                return out, True
            points = np.setdiff1d(np.unique(self.corners(cells)), np.flatnonzero(used))
            out.append(points)
        return out, bool(have[points].all())


def anchors(axes: list[np.ndarray], positions: list[np.ndarray]) -> tuple[tuple[int, ...], ...]:
    """The grid indices nearest each position (one coordinate per axis) that lies within the grid's range."""
    out = []
    for pos in positions:
        pos = np.asarray(pos, dtype=np.float64).reshape(-1)
        if len(pos) < len(axes) or not all(min(a[0], a[-1]) <= p <= max(a[0], a[-1]) for a, p in zip(axes, pos)):
            continue
        out.append(tuple(int(np.argmin(np.abs(a - p))) for a, p in zip(axes, pos)))
    return tuple(sorted(set(out)))


def fill(values: np.ndarray, evaluated: np.ndarray, levels: int) -> np.ndarray:
    """``values`` (grid-shaped) with every point that is not ``evaluated`` interpolated, for pictures.

    Level by level from the coarse grid of ``levels`` levels: a missing point of a
    level is the bilinear (1D: linear) interpolation of the level before's values at
    the corners of the cell around it. The level-0 points must be evaluated (they
    are in any finished refined file). The caller's array is not modified.
    """
    out = np.array(values, dtype=np.float64)
    have = np.array(evaluated, dtype=bool)
    out[~have] = np.nan
    shape = out.shape
    for level in range(1, levels + 1):
        coarse = [axis_points(n, levels, level - 1) for n in shape]
        fine = [axis_points(n, levels, level) for n in shape]
        if out.ndim == 1:
            sub = out[fine[0]]
            need = ~have[fine[0]]
            sub[need] = np.interp(fine[0][need], coarse[0], out[coarse[0]])
            out[fine[0]] = sub
            have[fine[0]] = True
            continue
        # along x on the coarse y lines, then along y on every fine x line: bilinear in each coarse cell
        for j in coarse[1]:
            col = out[fine[0], j]
            need = ~have[fine[0], j]
            col[need] = np.interp(fine[0][need], coarse[0], out[coarse[0], j])
            out[fine[0], j] = col
            have[fine[0], j] = True
        for i in fine[0]:
            row = out[i, fine[1]]
            need = ~have[i, fine[1]]
            row[need] = np.interp(fine[1][need], coarse[1], out[i, coarse[1]])
            out[i, fine[1]] = row
            have[i, fine[1]] = True
    return out
