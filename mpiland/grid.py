"""The α–β grid: coordinates, flat point indices and the chunks handed to ranks.

Points are numbered in row-major order over ``(nx, ny)``: point ``k`` is at
``(x[k // ny], y[k % ny])``, the layout of the surface file's datasets. A chunk is
a run of consecutive *pending* points, so a resumed run only hands out work that
is missing, and every rank can turn a chunk number into the same point indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .spec import Axis, GridSpec

if TYPE_CHECKING:
    from .directions.base import Directions

MIN_CHUNKS_PER_RANK = 4
MAX_CHUNK = 64


@dataclass(frozen=True)
class Grid:
    """Coordinates of a 1D or 2D grid."""

    x: np.ndarray
    y: np.ndarray | None = None

    @classmethod
    def from_spec(cls, spec: GridSpec) -> "Grid":
        y = None if spec.y is None else np.asarray(spec.y.values(), dtype=np.float64)
        return cls(np.asarray(spec.x.values(), dtype=np.float64), y)

    @property
    def dims(self) -> int:
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.x),) if self.y is None else (len(self.x), len(self.y))

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coords(self, points: np.ndarray) -> np.ndarray:
        """Coordinates (k × dims) of flat point indices."""
        points = np.asarray(points, dtype=np.int64)
        if self.y is None:
            return self.x[points][:, None]
        ny = len(self.y)
        return np.stack([self.x[points // ny], self.y[points % ny]], axis=1)


def auto_chunk_size(n_pending: int, n_ranks: int) -> int:
    """Points per chunk: small enough for every rank to get several chunks (load balance), at most MAX_CHUNK."""
    if n_pending <= 0:
        return 1
    return max(1, min(MAX_CHUNK, math.ceil(n_pending / (n_ranks * MIN_CHUNKS_PER_RANK))))


@dataclass(frozen=True)
class Chunks:
    """Pending points in consecutive chunks; ``bounds[c]:bounds[c+1]`` index chunk c in ``pending``.

    Chunks are made of whole *blocks*: runs of ``block`` consecutive grid indices,
    a multiple of ``passes``, the points that go through one batched forward pass
    (blocks longer than a pass hold whole warm-start chains, :func:`chain_block`).
    Blocks are fixed by the grid, not by the number of ranks or by what an earlier run
    finished, so a point is always evaluated in the same company and its value does not
    depend on the launch (a block is written whole, so resuming never splits one).
    """

    pending: np.ndarray
    bounds: np.ndarray
    block: int = 1
    size: int = 1
    passes: int = 1

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def points(self, chunk: int) -> np.ndarray:
        """Flat point indices of chunk number ``chunk``."""
        if not 0 <= chunk < len(self):
            raise IndexError(f"chunk {chunk} out of range 0..{len(self) - 1}")
        return self.pending[self.bounds[chunk]: self.bounds[chunk + 1]]

    def groups(self, points: np.ndarray) -> list[slice]:
        """Slices of ``points`` (a chunk's indices) that share a pass block: one forward pass each."""
        ids = points // self.passes
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        edges = [0, *cuts.tolist(), len(points)]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def make_chunks(done: np.ndarray, n_ranks: int, chunk_size: int = 0, block: int = 1, passes: int = 0) -> Chunks:
    """Chunks over the points not yet done (``done`` is the grid-shaped mask), in whole blocks; ``passes``:
    the points per forward pass (0: ``block``), which ``block`` must be a multiple of."""
    passes = passes or block
    if block % passes:
        raise ValueError(f"block = {block} is not a multiple of the points per pass ({passes})")
    pending = np.flatnonzero(np.asarray(done).reshape(-1) == 0).astype(np.int64)
    size = chunk_size if chunk_size > 0 else auto_chunk_size(len(pending), n_ranks)
    if len(pending) == 0:
        return Chunks(pending, np.zeros(1, dtype=np.int64), block, size, passes)
    ids = pending // block
    block_starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    per_chunk = max(1, math.ceil(size / block))
    bounds = np.r_[block_starts[::per_chunk], len(pending)].astype(np.int64)
    return Chunks(pending, bounds, block, per_chunk * block, passes)


def chain_block(passes: int, row: int, chain: int) -> int:
    """The block of a grid whose curvature is warm-started along chains: chains of at most ``chain``
    points of a row of ``row`` points, rounded up to whole passes of ``passes`` points."""
    if passes < 1 or row < 1 or chain < 1:
        raise ValueError(f"passes, row and chain must be positive, got {passes}, {row}, {chain}")
    return passes * math.ceil(min(row, chain) / passes)


def chain_links(points: np.ndarray, row: int, block: int) -> np.ndarray:
    """Per point of ``points`` (sorted flat indices, as a chunk holds them), whether it continues the
    warm-start chain of the point before it: that point is its left neighbour in the same grid row of
    ``row`` points and in the same block. The first point of a row, of a block, or after a gap (a point
    done earlier, or one refinement skips) begins a chain."""
    p = np.asarray(points, dtype=np.int64)
    links = np.zeros(len(p), dtype=bool)
    if len(p) > 1:
        links[1:] = (p[1:] == p[:-1] + 1) & (p[1:] // block == p[:-1] // block) & (p[1:] % row != 0)
    return links


def row_runs(points: np.ndarray, shape: tuple[int, ...]) -> list[tuple[int, int, int, int, int]]:
    """Split sorted flat indices into runs within one row: ``(row, col_start, col_stop, pos_start, pos_stop)``.

    For a 1D grid ``row`` is 0 and columns are the x indices. Writes then become a
    few slice assignments instead of one per point.
    """
    ny = shape[1] if len(shape) == 2 else shape[0]
    runs: list[tuple[int, int, int, int, int]] = []
    start = 0
    for i in range(1, len(points) + 1):
        if i == len(points) or points[i] != points[i - 1] + 1 or points[i] // ny != points[start] // ny:
            row, col = divmod(int(points[start]), ny)
            runs.append((row, col, col + (i - start), start, i))
            start = i
    return runs


def resolve_grid(spec: GridSpec, directions: "Directions") -> GridSpec:
    """Fill bare-``num`` axes with a range covering the models (and trajectory), widened by ``margin``."""
    if not spec.auto:
        return spec
    axes = [spec.x, spec.y]
    points = [np.asarray(pos, dtype=np.float64) for _, pos in directions.models]
    if directions.trajectory is not None:
        points += list(np.asarray(directions.trajectory.coordinates, dtype=np.float64))
    pts = np.array(points).reshape(len(points), -1)
    out = []
    for i, axis in enumerate(axes):
        if axis is None or not axis.auto:
            out.append(axis)
            continue
        lo, hi = float(pts[:, i].min()), float(pts[:, i].max())
        span = hi - lo if hi > lo else max(abs(hi), 1.0)
        pad = spec.margin * span
        out.append(Axis(lo - pad, hi + pad, axis.num))
    x = out[0]
    assert x is not None  # spec.x is an Axis, so its replacement is one too
    return GridSpec(x, out[1], spec.margin)
