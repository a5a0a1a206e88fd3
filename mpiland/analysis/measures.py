"""Read surface files and summarise them for ``mpiland info FILE``.

This module is deliberately light (numpy and h5py only, no torch or matplotlib)
so that inspecting a file is quick. :func:`load_surface` is also the reader used
by :mod:`mpiland.plots`.

Besides mpiland's own files (see ``docs/schema.md``) it reads files written by
the reference tool ``tomgoldstein/loss-landscape``: those have no attributes and
no ``done`` dataset, and fill the metric arrays with ``-1`` before computing
them. For such files a metric value counts as computed when it is not NaN and
not that ``-1`` placeholder (a loss or an accuracy in percent is never -1).

It also measures finished landscapes: :func:`barrier` (the loss barrier along a
1D path between two models), :func:`flatness` (curvature, basin width and area,
ε-sharpness around the centre) and :func:`derived_attributes` (both, as the root
attributes a finished run stores).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import SCHEMA_VERSION, __version__
from .errors import SurfaceFileError

_COORDS = ("xcoordinates", "ycoordinates")
_NON_METRICS = ("done", "seconds") + _COORDS
_REFERENCE_PLACEHOLDER = -1.0

LINE_PREFIX = "line_"
"""Prefix of the metrics of the straight line evaluated beside a curved path (``line_test_loss``)."""

DEFAULT_EPSILON = 0.1
"""Default loss margin ε of :func:`flatness` (basin = points with L ≤ L* + ε)."""


def _decode(value: Any) -> Any:
    """Turn an HDF5 attribute value into plain Python (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return _decode(value[()])
        return [_decode(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


def curve_metric(name: str) -> str:
    """The metric of the curved path that ``name`` belongs to: ``line_test_loss`` -> ``test_loss``."""
    return name[len(LINE_PREFIX):] if name.startswith(LINE_PREFIX) else name


def best_is(name: str) -> str | None:
    """Which extreme of a metric is worth marking: ``"min"`` for losses, ``"max"`` for
    accuracies and Hessian eigenvalue metrics (``<split>_hess_*``), None for the rest
    (a standard error, or a metric this reader does not know)."""
    base = curve_metric(name)
    if base.endswith("_loss"):
        return "min"
    if base.endswith("_acc") or "_hess_" in base:
        return "max"
    return None


@dataclass
class Positions:
    """Labelled points in grid coordinates: the reference models of a file, or the
    checkpoints of a training trajectory projected on the file's directions."""

    coordinates: np.ndarray
    labels: list[str]

    def __len__(self) -> int:
        return int(self.coordinates.shape[0])


@dataclass
class Surface:
    """The content of one surface file, read fully into memory.

    ``metrics`` maps dataset names to float arrays of the grid's shape where
    points not computed yet are NaN; computed points keep their value, which can
    be ±inf or NaN for divergent points (compare with ``done``). The optional
    schema members are None when the file lacks them: ``models`` (reference
    models in grid coordinates), ``trajectory`` (projected checkpoints, 2D only)
    with ``explained_variance_ratio``, and ``endpoints`` (t0, t1) of a 1D path
    between two models.
    """

    path: Path
    schema: int | None
    attrs: dict[str, Any]
    dims: int
    x: np.ndarray
    y: np.ndarray | None
    done: np.ndarray
    metrics: dict[str, np.ndarray]
    computed: dict[str, np.ndarray]
    seconds: np.ndarray | None = None
    job: dict[str, Any] | None = None
    splits: list[str] = field(default_factory=list)
    models: Positions | None = None
    trajectory: Positions | None = None
    explained_variance_ratio: np.ndarray | None = None
    endpoints: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.done.shape)

    @property
    def reference_tool(self) -> bool:
        """True for a file without ``mpiland_schema`` (written by the reference tool)."""
        return self.schema is None

    @property
    def name(self) -> str:
        """The job name from ``job_json``, or an empty string."""
        if self.job and isinstance(self.job.get("name"), str):
            return self.job["name"]
        return ""

    @property
    def x_label(self) -> str:
        return str(self.attrs.get("x_label") or "x")

    @property
    def y_label(self) -> str:
        return str(self.attrs.get("y_label") or "y")

    def loss_metrics(self) -> list[str]:
        """The ``*_loss`` datasets in split order, each ``line_`` loss right after its curve's."""
        return [m for m in self.metrics if m.endswith("_loss")]

    def split_losses(self) -> list[str]:
        """The plain ``<split>_loss`` datasets (no ``line_`` ones), in split order."""
        return [m for m in self.loss_metrics() if not m.startswith(LINE_PREFIX)]

    def default_metric(self) -> str:
        """The first ``<split>_loss`` of the file, else its first metric."""
        losses = self.loss_metrics()
        if losses:
            return losses[0]
        if self.metrics:
            return next(iter(self.metrics))
        raise SurfaceFileError(f"{self.path}: has no metric datasets (such as test_loss); "
                               "it holds no results to show")

    def check_metric(self, metric: str | None) -> str:
        """Return ``metric`` (or the default one) after checking the file has it."""
        if metric is None:
            return self.default_metric()
        if metric not in self.metrics:
            avail = ", ".join(self.metrics) or "none"
            raise SurfaceFileError(f"{self.path}: no metric {metric!r}; available metrics: {avail}")
        return metric

    def values(self, metric: str) -> np.ndarray:
        """The metric with NaN where it has not been computed (divergent values kept)."""
        return np.where(self.computed[metric], self.metrics[metric], np.nan)

    def point(self, index: tuple[int, ...]) -> tuple[float, ...]:
        """The coordinates of the grid point at ``index``."""
        if self.dims == 1:
            return (float(self.x[index[0]]),)
        assert self.y is not None
        return (float(self.x[index[0]]), float(self.y[index[1]]))


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise SurfaceFileError(f"{path}: no such file; check the path, or run the job first")
    if path.is_dir():
        raise SurfaceFileError(f"{path}: is a directory; give the .h5 surface file inside it")
    try:
        is_hdf5 = h5py.is_hdf5(str(path))
    except OSError as exc:
        raise SurfaceFileError(f"{path}: cannot be read ({exc}); check its permissions") from None
    if not is_hdf5:
        raise SurfaceFileError(f"{path}: not an HDF5 file; give the .h5 surface file written by `mpiland run`")
    try:
        # A running job may hold the file open; reading a flushed file is safe.
        return h5py.File(path, "r", locking=False)
    except (OSError, TypeError):
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise SurfaceFileError(f"{path}: cannot be opened as HDF5 ({exc}); "
                                   "check that the file is complete and readable") from None


def load_surface(path: str | Path) -> Surface:
    """Read a surface file (mpiland or reference tool) into a :class:`Surface`.

    Raises :class:`SurfaceFileError` for a missing file, a file that is not
    HDF5 or not a surface file, or a schema newer than :data:`SCHEMA_VERSION`.
    """
    path = Path(path)
    try:
        return _read(path)
    except OSError as exc:
        raise SurfaceFileError(f"{path}: could not be read ({exc}); if a job is writing it, "
                               "try again after its next chunk, else recreate it") from None


def _read(path: Path) -> Surface:
    with _open(path) as f:
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
        schema = attrs.get("mpiland_schema")
        if schema is not None:
            try:
                schema = int(schema)
            except (TypeError, ValueError):
                raise SurfaceFileError(f"{path}: mpiland_schema attribute is {schema!r}, not an integer; "
                                       "the file is damaged, recreate it with `mpiland run`") from None
            if schema > SCHEMA_VERSION:
                raise SurfaceFileError(
                    f"{path}: written with surface schema {schema}, newer than this mpiland "
                    f"({__version__}) reads (up to {SCHEMA_VERSION}); upgrade mpiland to read it")
        if "xcoordinates" not in f or not isinstance(f["xcoordinates"], h5py.Dataset):
            raise SurfaceFileError(f"{path}: not a surface file (it has no xcoordinates dataset); "
                                   "give a file written by `mpiland run` or the loss-landscape tool")
        x = np.asarray(f["xcoordinates"][()], dtype=np.float64).reshape(-1)
        y = None
        if "ycoordinates" in f and isinstance(f["ycoordinates"], h5py.Dataset):
            y = np.asarray(f["ycoordinates"][()], dtype=np.float64).reshape(-1)
        dims = attrs.get("dims")
        dims = int(dims) if dims is not None else (1 if y is None else 2)
        if dims not in (1, 2) or (dims == 2 and y is None):
            raise SurfaceFileError(f"{path}: dims attribute is {attrs.get('dims')!r} but the file "
                                   f"{'has no' if y is None else 'has a'} ycoordinates dataset; "
                                   "the file is damaged, recreate it with `mpiland run`")
        if dims == 1:
            y = None
        shape: tuple[int, ...] = (x.size,) if dims == 1 else (x.size, y.size)  # type: ignore[union-attr]

        def grid_dataset(name: str) -> np.ndarray | None:
            obj = f.get(name)
            if not isinstance(obj, h5py.Dataset) or obj.shape != shape:
                return None
            if obj.dtype.kind not in "fiub":
                return None
            return np.asarray(obj[()])

        names = [n for n in f if n not in _NON_METRICS]
        listed = attrs.get("metrics")
        if isinstance(listed, str):
            listed = [listed]
        if isinstance(listed, list):
            names = [n for n in listed if n in f] + [n for n in names if n not in listed]
        splits = attrs.get("splits")
        if isinstance(splits, str):
            splits = [splits]
        if not isinstance(splits, list):
            splits = []
            for n in names:
                split, _, rest = curve_metric(n).partition("_")
                if rest in ("loss", "acc") and split not in splits:
                    splits.append(split)
        # Order: each split's loss, accuracy, stderr first (in split order), then the rest;
        # a line_ metric right after its curve's counterpart.
        rank = {s: i for i, s in enumerate(splits)}

        def order(n: str) -> tuple[int, int, str, int]:
            base = curve_metric(n)
            split, _, rest = base.partition("_")
            kind = {"loss": 0, "acc": 1, "loss_stderr": 2}.get(rest, 3)
            return (rank.get(split, len(rank)), kind, "" if kind < 3 else base, int(base != n))

        metrics: dict[str, np.ndarray] = {}
        for n in sorted(dict.fromkeys(names), key=order):
            arr = grid_dataset(n)
            if arr is not None:
                metrics[n] = arr.astype(np.float64)

        done_arr = grid_dataset("done")
        seconds = grid_dataset("seconds")
        if seconds is not None:
            seconds = seconds.astype(np.float64)
        job = None
        job_json = attrs.get("job_json")
        if isinstance(job_json, str) and job_json.strip():
            try:
                parsed = json.loads(job_json)
                job = parsed if isinstance(parsed, dict) else None
            except ValueError:
                job = None
        models = _positions(f, path, "models", dims)
        trajectory = _positions(f, path, "trajectory", 2) if dims == 2 else None
        explained = None
        if trajectory is not None and "explained_variance_ratio" in f["trajectory"].attrs:
            explained = _float_attr(path, "trajectory/explained_variance_ratio",
                                    f["trajectory"].attrs["explained_variance_ratio"], None)
        endpoints = None
        if dims == 1 and "endpoints" in f.attrs:
            t0, t1 = _float_attr(path, "endpoints", f.attrs["endpoints"], 2)
            endpoints = (float(t0), float(t1))

    computed: dict[str, np.ndarray] = {}
    if done_arr is not None:
        done = done_arr.astype(bool)
        for n in metrics:
            computed[n] = done
    else:
        # No done dataset (reference tool): a value is computed when it is not
        # NaN and, in a file without mpiland_schema, not the -1 placeholder.
        for n, arr in metrics.items():
            ok = ~np.isnan(arr)
            if schema is None:
                ok &= arr != _REFERENCE_PLACEHOLDER
            computed[n] = ok
        main = [n for n in metrics if not n.endswith("_stderr")] or list(metrics)
        done = np.ones(shape, dtype=bool) if main else np.zeros(shape, dtype=bool)
        for n in main:
            done &= computed[n]
    return Surface(path=path, schema=schema, attrs=attrs, dims=dims, x=x, y=y, done=done,
                   metrics=metrics, computed=computed, seconds=seconds, job=job, splits=list(splits),
                   models=models, trajectory=trajectory, explained_variance_ratio=explained,
                   endpoints=endpoints)


def _float_attr(path: Path, name: str, value: Any, size: int | None) -> np.ndarray:
    """A finite float array attribute (of ``size`` values when given), else SurfaceFileError."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        arr = np.array([np.nan])
    if (size is not None and arr.size != size) or not arr.size or not np.isfinite(arr).all():
        want = f"{size} finite numbers" if size else "finite numbers"
        raise SurfaceFileError(f"{path}: attribute {name} is {_decode(value)!r}, not {want}; "
                               "the file is damaged, recreate it with `mpiland run`")
    return arr


def _positions(f: h5py.File, path: Path, group: str, dims: int) -> Positions | None:
    """Read the optional ``models/`` or ``trajectory/`` group: (n, dims) coordinates and labels."""
    g = f.get(group)
    if g is None:
        return None
    ds = g.get("coordinates") if isinstance(g, h5py.Group) else None
    if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu":
        raise SurfaceFileError(f"{path}: {group} has no numeric coordinates dataset; "
                               "the file is damaged, recreate it with `mpiland run`")
    coords = np.asarray(ds[()], dtype=np.float64)
    if coords.ndim == 1 and dims == 1:
        coords = coords.reshape(-1, 1)
    if coords.ndim != 2 or coords.shape[1] != dims or not np.isfinite(coords).all():
        raise SurfaceFileError(f"{path}: {group}/coordinates has shape {coords.shape} (or non-finite values), "
                               f"expected (n, {dims}) finite grid coordinates; "
                               "the file is damaged, recreate it with `mpiland run`")
    raw = g.attrs.get("labels", ds.attrs.get("labels"))
    if raw is None:
        stem = "model " if group == "models" else ""
        labels = [f"{stem}{i}" for i in range(coords.shape[0])]
    else:
        decoded = _decode(raw)
        labels = [str(v) for v in (decoded if isinstance(decoded, list) else [decoded])]
    if len(labels) != coords.shape[0]:
        raise SurfaceFileError(f"{path}: {group} has {coords.shape[0]} coordinates but {len(labels)} labels; "
                               "the file is damaged, recreate it with `mpiland run`")
    return Positions(coords, labels)


# ---------------------------------------------------------------------------
# measures of a finished landscape


def _nearest(c: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(c - value)))


def barrier(t: np.ndarray, loss: np.ndarray, endpoints: tuple[float, float] | None = None) -> dict[str, Any]:
    """The loss barrier of a 1D path between two models (Goodfellow et al. 2015, Frankle et al. 2020).

    The end points are the grid points nearest ``endpoints`` = (t0, t1) (the models'
    positions, e.g. the file's ``endpoints`` attribute), else the ends of the grid;
    only the points between them count, so a path extrapolated past the models
    does not change the result. Non-finite losses are left out (``ignored`` says
    how many lay in the range). Returns ``height`` = max over the points strictly
    between the end points of L(t) minus the straight line between the end-point
    losses (≤ 0 when the path is convex; None without an inner point), ``at`` =
    its t, ``monotonic`` (L non-increasing or non-decreasing between the ends),
    ``t0``/``t1``/``loss0``/``loss1`` (the end points used), ``points`` (finite
    points used) and ``ignored``.
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    if t.size != loss.size:
        raise SurfaceFileError(f"barrier: {t.size} coordinates but {loss.size} loss values; "
                               "give one loss per point of the path")
    if not np.isfinite(t).all():
        raise SurfaceFileError("barrier: the path coordinates are not all finite; give finite t values")
    ok = np.isfinite(loss)
    if ok.sum() < 2:
        raise SurfaceFileError(f"barrier: the path has {int(ok.sum())} finite loss values, at least 2 are "
                               "needed; evaluate more points (or wait for the run to finish)")
    step = float(np.diff(np.sort(t)).max())
    if endpoints is None:
        want = (float(t.min()), float(t.max()))
    else:
        want = (float(endpoints[0]), float(endpoints[1]))
        for w in want:
            if not math.isfinite(w) or not t.min() - step / 2 <= w <= t.max() + step / 2:
                raise SurfaceFileError(f"barrier: end point t={w} lies outside the path "
                                       f"[{_fmt(float(t.min()))}, {_fmt(float(t.max()))}]; "
                                       "give end points inside the evaluated range")
    # End points: the nearest finite grid points, not further out than half a step
    # (a divergent end model is replaced by its inner neighbour, never an extrapolated point).
    near = ok & (t >= min(want) - step / 2) & (t <= max(want) + step / 2)
    if not near.any():
        raise SurfaceFileError(f"barrier: no finite loss value between the end points {want}; "
                               "evaluate more points (or wait for the run to finish)")
    tf, lf = t[near], loss[near]
    i0, i1 = _nearest(tf, want[0]), _nearest(tf, want[1])
    if i0 == i1:
        raise SurfaceFileError(f"barrier: both end points {want} fall on the same finite grid point "
                               f"t={_fmt(float(tf[i0]))}; give end points further apart or a finer grid")
    t0, t1, l0, l1 = float(tf[i0]), float(tf[i1]), float(lf[i0]), float(lf[i1])
    lo, hi = min(t0, t1), max(t0, t1)
    span_lo, span_hi = min(lo, *want), max(hi, *want)
    ignored = int((~ok & (t >= span_lo) & (t <= span_hi)).sum())
    between = (tf >= lo) & (tf <= hi)
    order = np.argsort(tf[between], kind="stable")
    ts, ls = tf[between][order], lf[between][order]
    chord = l0 + (ts - t0) * (l1 - l0) / (t1 - t0)
    inner = (ts > lo) & (ts < hi)
    height = at = None
    if inner.any():
        excess = np.where(inner, ls - chord, -np.inf)
        k = int(np.argmax(excess))
        height, at = float(excess[k]), float(ts[k])
    steps = np.diff(ls)
    tol = 1e-9 * (1.0 + float(np.abs(ls).max()))
    monotonic = bool((steps <= tol).all() or (steps >= -tol).all())
    return {"height": height, "at": at, "monotonic": monotonic, "t0": t0, "t1": t1,
            "loss0": l0, "loss1": l1, "points": int(ts.size), "ignored": ignored}


def _number(value: Any) -> float:
    """``value`` as a float, NaN when it is not a real number."""
    if isinstance(value, (bool, str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_flatness_args(epsilon: Any, radius: Any) -> tuple[float, float | None]:
    """Validated (epsilon, radius) of :func:`flatness` as floats."""
    eps = _number(epsilon)
    if not (math.isfinite(eps) and eps >= 0):
        raise SurfaceFileError(f"epsilon must be a finite number ≥ 0 (a loss margin), got {epsilon!r}")
    if radius is None:
        return eps, None
    r = _number(radius)
    if not (math.isfinite(r) and r > 0):
        raise SurfaceFileError(f"radius must be a finite number > 0 (in grid units), got {radius!r}; "
                               "leave it out for the largest radius inside the grid")
    return eps, r


def _second_difference(c: np.ndarray, v: np.ndarray, i: int) -> float | None:
    """f''(c[i]) from the three points around i (any spacing); None at an edge or a non-finite neighbour."""
    if i == 0 or i == c.size - 1 or not np.isfinite(v[i - 1:i + 2]).all():
        return None
    hl, hr = c[i] - c[i - 1], c[i + 1] - c[i]
    return float(2.0 * (hl * v[i + 1] - (hl + hr) * v[i] + hr * v[i - 1]) / (hl * hr * (hl + hr)))


def _basin_interval(c: np.ndarray, v: np.ndarray, i: int, threshold: float) -> dict[str, Any]:
    """The connected interval around ``c[i]`` where ``v <= threshold``, crossings interpolated linearly."""
    inside = np.isfinite(v) & (v <= threshold)

    def walk(step: int) -> tuple[float, bool]:
        k = i
        while 0 <= k + step < c.size and inside[k + step]:
            k += step
        n = k + step
        if not 0 <= n < c.size:
            return float(c[k]), True
        if not math.isfinite(v[n]):
            return float(c[k]), False
        frac = (threshold - v[k]) / (v[n] - v[k])
        return float(c[k] + frac * (c[n] - c[k])), False

    lower, edge_lo = walk(-1)
    upper, edge_hi = walk(1)
    return {"width": upper - lower, "lower": lower, "upper": upper, "at_edge": edge_lo or edge_hi}


def _cell_sizes(c: np.ndarray) -> np.ndarray:
    """Length of grid line each coordinate stands for (half cells at the ends): they sum to the range."""
    if c.size < 2:
        return np.zeros(c.size)
    mid = (c[1:] + c[:-1]) / 2
    return np.diff(np.concatenate([[c[0]], mid, [c[-1]]]))


def _region(mask: np.ndarray, start: tuple[int, ...]) -> np.ndarray:
    """The 4-connected component of the 2D ``mask`` containing ``start``.

    Runs of True along each row are joined with the overlapping runs of the next
    row (union-find over runs), so the cost is one numpy pass per row plus a few
    Python steps per run, whatever the shape of the basin.
    """
    region = np.zeros(mask.shape, dtype=bool)
    if not mask[start]:
        return region
    runs: list[tuple[int, int, int]] = []  # (row, first column, last column + 1)
    rows: list[list[int]] = []
    for i, row in enumerate(mask):
        edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
        first, stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        rows.append(list(range(len(runs), len(runs) + first.size)))
        runs.extend((i, int(a), int(b)) for a, b in zip(first, stop))
    parent = list(range(len(runs)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for above, below in zip(rows, rows[1:]):
        a = b = 0
        while a < len(above) and b < len(below):
            _, a0, a1 = runs[above[a]]
            _, b0, b1 = runs[below[b]]
            if a0 < b1 and b0 < a1:  # the runs share a column
                parent[root(above[a])] = root(below[b])
            if a1 <= b1:
                a += 1
            else:
                b += 1
    i0, j0 = start
    home = root(next(k for k in rows[i0] if runs[k][1] <= j0 < runs[k][2]))
    for k, (i, c0, c1) in enumerate(runs):
        if root(k) == home:
            region[i, c0:c1] = True
    return region


def _grid_axes(surface: Surface) -> list[tuple[str, np.ndarray]]:
    """The named, checked (increasing) coordinate axes of a surface."""
    axes = [("x", surface.x)] + ([("y", surface.y)] if surface.dims == 2 and surface.y is not None else [])
    for name, c in axes:
        if c.size and not (np.diff(c) > 0).all():
            raise SurfaceFileError(f"{surface.path}: {name}coordinates are not increasing, so neighbours "
                                   "on the grid are unknown; recreate the file with an ascending grid")
    return axes


def _centre(surface: Surface) -> tuple[tuple[int, ...], tuple[float, ...], float]:
    """Index and coordinates of the grid point nearest the origin, and the largest radius around it
    that stays inside the grid (0 when it lies on an edge)."""
    axes = _grid_axes(surface)
    index = tuple(_nearest(c, 0.0) for _, c in axes)
    centre = surface.point(index)
    radius = float(min(min(p - c[0], c[-1] - p) for (_, c), p in zip(axes, centre)))
    return index, centre, radius


def flatness(surface: Surface, metric: str | None = None, epsilon: float = DEFAULT_EPSILON,
             radius: float | None = None) -> dict[str, Any]:
    """Flatness and sharpness of the basin around the file's centre, from its grid values.

    The centre is the grid point nearest (0, 0) (0 in 1D), normally the trained
    model θ*, with loss L*. Returns ``metric``, ``centre`` (its coordinates),
    ``loss`` (L*), ``epsilon``, ``threshold`` (L* + ε), per axis (``x``, and ``y``
    in 2D): ``curvature`` (central second difference at the centre, None on a
    grid edge) and ``basin_width`` (``width``, ``lower``, ``upper`` and
    ``at_edge`` of the connected interval through the centre where L ≤ L* + ε,
    crossings interpolated; ``at_edge`` means the width is a lower bound);
    ``basin_area`` in 2D (``area`` of the connected region around the centre
    where L ≤ L* + ε, its ``fraction`` of the grid, ``points``, ``at_edge``;
    None in 1D); ``radius`` (default: the largest disc around the centre inside
    the grid), ``sharpness`` (max of L − L* over grid points within it, None for
    radius 0), ``sharpness_relative`` (Keskar et al. 2017: 100·(max L − L*)/(1 + L*)),
    ``sharpness_at`` and ``nonfinite`` (points within the radius left out as
    inf/NaN). ``metric`` defaults to the first ``<split>_loss``.
    """
    epsilon, radius = _check_flatness_args(epsilon, radius)
    if metric is None:
        plain = surface.split_losses()
        metric = plain[0] if plain else surface.default_metric()
    metric = surface.check_metric(metric)
    values = surface.values(metric)
    axes = _grid_axes(surface)
    centre_idx, centre, inside_radius = _centre(surface)
    l_star = float(values[centre_idx])
    if not math.isfinite(l_star):
        raise SurfaceFileError(f"{surface.path}: {metric} at the centre {centre} is not a finite computed "
                               "value, so flatness is undefined; finish the run (or check for divergence)")
    threshold = l_star + epsilon
    curvature: dict[str, float | None] = {}
    widths: dict[str, dict[str, Any]] = {}
    for axis, (name, c) in enumerate(axes):
        index: list[Any] = list(centre_idx)
        index[axis] = slice(None)
        line = values[tuple(index)]
        curvature[name] = _second_difference(c, line, centre_idx[axis])
        widths[name] = _basin_interval(c, line, centre_idx[axis], threshold)

    area = None
    if surface.dims == 2 and surface.y is not None:
        region = _region(np.isfinite(values) & (values <= threshold), centre_idx)
        cells = np.outer(_cell_sizes(surface.x), _cell_sizes(surface.y))
        total = float(cells.sum())
        a = float(cells[region].sum())
        edge = bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())
        area = {"area": a, "fraction": a / total if total > 0 else None, "points": int(region.sum()),
                "at_edge": edge}

    mesh = np.meshgrid(*(c for _, c in axes), indexing="ij")
    dist = np.sqrt(sum((m - p) ** 2 for m, p in zip(mesh, centre)))
    if radius is None:
        radius = inside_radius
    disc = dist <= radius * (1 + 1e-9)
    finite = disc & np.isfinite(values)
    sharp = rel = sharp_at = None
    if radius > 0 and finite.any():
        masked = np.where(finite, values, -np.inf)
        k = np.unravel_index(int(np.argmax(masked)), masked.shape)
        sharp = float(masked[k]) - l_star
        rel = 100.0 * sharp / (1.0 + l_star)
        sharp_at = surface.point(tuple(int(i) for i in k))
    return {"metric": metric, "centre": centre, "loss": l_star, "epsilon": epsilon,
            "threshold": threshold, "curvature": curvature, "basin_width": widths, "basin_area": area,
            "radius": radius, "sharpness": sharp, "sharpness_relative": rel, "sharpness_at": sharp_at,
            "nonfinite": int((disc & ~np.isfinite(values)).sum())}


def _attr_float(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def derived_attributes(surface: Surface) -> dict[str, Any]:
    """The measures a finished run stores as root attributes (float, NaN = undefined; int 0/1 flags).

    For a 1D file, for every metric ``M`` ending in ``_loss`` (``line_`` ones
    included), the barrier between the file's ``endpoints`` (else the grid ends):
    ``M_barrier`` (max of L minus the straight line between the end-point losses;
    ≤ 0 for a convex path), ``M_barrier_at`` (its t), ``M_monotonic`` (1 when L
    is monotonic between the end points). For a 1D or 2D file, for every plain
    ``<split>_loss`` ``M``, :func:`flatness` with the default ε and radius:
    ``M_curvature_x``/``_y`` (second difference at the centre),
    ``M_basin_width_x``/``_y`` and ``M_basin_width_x_edge``/``_y_edge`` (1: the
    interval reaches the grid edge, the width is a lower bound), in 2D
    ``M_basin_area``, ``M_basin_area_fraction`` and ``M_basin_area_edge``,
    ``M_sharpness`` (max L − L* within the radius) and ``M_sharpness_relative``
    (100·(max L − L*)/(1 + L*)); plus ``flatness_epsilon``, ``flatness_radius``
    and ``flatness_centre`` (the grid point used as centre). A metric whose
    values do not allow a measure (too few finite points, a divergent centre)
    gets no barrier attributes and NaN flatness values.
    """
    out: dict[str, Any] = {}
    if surface.dims == 1:
        for m in surface.loss_metrics():
            try:
                b = barrier(surface.x, surface.values(m), surface.endpoints)
            except SurfaceFileError:
                continue
            out[f"{m}_barrier"] = _attr_float(b["height"])
            out[f"{m}_barrier_at"] = _attr_float(b["at"])
            out[f"{m}_monotonic"] = int(b["monotonic"])
    axes = ("x",) if surface.dims == 1 else ("x", "y")
    for m in surface.split_losses():
        try:
            f: dict[str, Any] | None = flatness(surface, m)
        except SurfaceFileError:
            f = None
        for ax in axes:
            w = f["basin_width"][ax] if f else None
            out[f"{m}_curvature_{ax}"] = _attr_float(f["curvature"][ax] if f else None)
            out[f"{m}_basin_width_{ax}"] = _attr_float(w["width"] if w else None)
            out[f"{m}_basin_width_{ax}_edge"] = int(bool(w and w["at_edge"]))
        if surface.dims == 2:
            a = f["basin_area"] if f else None
            out[f"{m}_basin_area"] = _attr_float(a["area"] if a else None)
            out[f"{m}_basin_area_fraction"] = _attr_float(a["fraction"] if a else None)
            out[f"{m}_basin_area_edge"] = int(bool(a and a["at_edge"]))
        out[f"{m}_sharpness"] = _attr_float(f["sharpness"] if f else None)
        out[f"{m}_sharpness_relative"] = _attr_float(f["sharpness_relative"] if f else None)
    if surface.split_losses():
        try:
            _, centre, radius = _centre(surface)
        except SurfaceFileError:  # a grid that is not ascending: no centre
            centre, radius = (math.nan,) * surface.dims, math.nan
        out["flatness_epsilon"] = float(DEFAULT_EPSILON)
        out["flatness_radius"] = radius
        out["flatness_centre"] = np.asarray(centre, dtype=np.float64)
    return out


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}"


def _axis_text(axis: Any) -> str:
    if isinstance(axis, dict):
        lo, hi, num = axis.get("min"), axis.get("max"), axis.get("num")
    elif isinstance(axis, (list, tuple)) and len(axis) == 3:
        lo, hi, num = axis
    else:
        return str(axis)
    return f"[{_fmt(lo)}, {_fmt(hi)}] x {num}"


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    def section(name: str) -> dict[str, Any]:
        v = job.get(name)
        return v if isinstance(v, dict) else {}

    model, directions, grid, data = section("model"), section("directions"), section("grid"), section("data")
    out: dict[str, Any] = {
        "name": job.get("name") or None,
        "model_factory": model.get("factory"),
        "checkpoint": model.get("checkpoint"),
        "directions": {k: directions.get(k) for k in ("kind", "norm", "seed") if k in directions},
        "splits": list(data["splits"]) if isinstance(data.get("splits"), (list, tuple)) else data.get("splits"),
    }
    g = {}
    for ax in ("x", "y"):
        if grid.get(ax) is not None:
            g[ax] = _axis_text(grid[ax])
    out["grid"] = g
    return out


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python and non-finite floats made None (JSON-safe)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (list, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _positions_summary(p: Positions | None) -> list[dict[str, Any]] | None:
    if p is None:
        return None
    return [{"label": label, "coordinates": tuple(float(c) for c in row)}
            for label, row in zip(p.labels, p.coordinates)]


def summarize(path: str | Path, epsilon: float = DEFAULT_EPSILON, radius: float | None = None) -> dict[str, Any]:
    """Summarise a surface file as plain, JSON-safe data (see :func:`format_summary` for the text form).

    Keys: ``path``, ``schema`` (int or None for a reference-tool file),
    ``schema_text``, ``mpiland_version``, ``created``, ``fingerprint`` (short)
    and ``fingerprint_full``, ``job`` (or None), ``dims``, ``shape``, ``x``/``y``
    ranges, ``progress`` (done, total, percent), ``seconds`` (total, mean per
    done point, or None), ``metrics`` (per metric: min, argmin, max, argmax
    (accuracies and Hessian metrics), finite and nonfinite counts),
    ``nonfinite`` (done points with a non-finite value in any metric),
    ``endpoints`` ([t0, t1] or None), ``models`` (list of label and
    coordinates, or None), ``trajectory`` (labels, coordinates and
    ``explained_variance_ratio``, or None), ``barriers`` (1D files: per loss
    metric, :func:`barrier`'s result or None when too few values) and
    ``flatness`` (per ``<split>_loss``, :func:`flatness` with ``epsilon`` and
    ``radius``, or None when the centre has no finite value). Undefined
    numbers are None, never NaN.
    """
    epsilon, radius = _check_flatness_args(epsilon, radius)
    s = load_surface(path)
    total = int(np.prod(s.shape))
    n_done = int(s.done.sum())
    fp = s.attrs.get("fingerprint")
    summary: dict[str, Any] = {
        "path": str(s.path),
        "schema": s.schema,
        "schema_text": str(s.schema) if s.schema is not None else "reference-tool file",
        "mpiland_version": s.attrs.get("mpiland_version"),
        "created": s.attrs.get("created"),
        "fingerprint": fp[:12] if isinstance(fp, str) else None,
        "fingerprint_full": fp if isinstance(fp, str) else None,
        "job": _job_summary(s.job) if s.job else None,
        "dims": s.dims,
        "shape": s.shape,
        "x": {"min": float(s.x.min()), "max": float(s.x.max()), "num": int(s.x.size)} if s.x.size else None,
        "y": ({"min": float(s.y.min()), "max": float(s.y.max()), "num": int(s.y.size)}
              if s.y is not None and s.y.size else None),
        "x_label": s.x_label,
        "y_label": s.y_label if s.dims == 2 else None,
        "splits": s.splits,
        "progress": {"done": n_done, "total": total,
                     "percent": 100.0 * n_done / total if total else 0.0},
        "seconds": None,
    }
    if s.seconds is not None and n_done:
        secs = s.seconds[s.done]
        secs = secs[np.isfinite(secs)]
        if secs.size:
            summary["seconds"] = {"total": float(secs.sum()), "mean": float(secs.mean())}

    metrics: dict[str, Any] = {}
    any_bad = np.zeros(s.shape, dtype=bool)
    for name in s.metrics:
        comp = s.computed[name]
        raw = s.metrics[name]
        finite = comp & np.isfinite(raw)
        bad = comp & ~np.isfinite(raw)
        if not name.endswith("_stderr"):
            # stderr is legitimately NaN with a single batch
            any_bad |= bad
        info: dict[str, Any] = {"finite": int(finite.sum()), "nonfinite": int(bad.sum()),
                                "min": None, "argmin": None, "max": None, "argmax": None}
        if finite.any():
            v = np.where(finite, raw, np.nan)
            imin = np.unravel_index(int(np.nanargmin(v)), s.shape)
            imax = np.unravel_index(int(np.nanargmax(v)), s.shape)
            info["min"] = float(v[imin])
            info["argmin"] = s.point(imin)
            info["max"] = float(v[imax])
            if best_is(name) == "max":
                info["argmax"] = s.point(imax)
        metrics[name] = info
    summary["metrics"] = metrics
    summary["nonfinite"] = int(any_bad.sum())
    summary["endpoints"] = list(s.endpoints) if s.endpoints else None
    summary["models"] = _positions_summary(s.models)
    summary["trajectory"] = None
    if s.trajectory is not None:
        ratio = s.explained_variance_ratio
        summary["trajectory"] = {"points": len(s.trajectory), "labels": list(s.trajectory.labels),
                                 "coordinates": [tuple(r) for r in s.trajectory.coordinates.tolist()],
                                 "explained_variance_ratio": ratio.tolist() if ratio is not None else None}
    barriers: dict[str, Any] = {}
    if s.dims == 1:
        for m in s.loss_metrics():
            try:
                barriers[m] = barrier(s.x, s.values(m), s.endpoints)
            except SurfaceFileError:
                barriers[m] = None
    summary["barriers"] = barriers
    flat: dict[str, Any] = {}
    for m in s.split_losses():
        try:
            flat[m] = flatness(s, m, epsilon, radius)
        except SurfaceFileError:
            flat[m] = None
    summary["flatness"] = flat
    return _plain(summary)


def _point_text(p: tuple[float, ...] | None) -> str:
    if p is None:
        return "-"
    if len(p) == 1:
        return f"x={_fmt(p[0])}"
    return f"({_fmt(p[0])}, {_fmt(p[1])})"


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize`'s result as aligned text lines for the terminal."""
    rows: list[tuple[str, str]] = [("file", summary["path"])]
    schema = summary["schema_text"]
    if summary.get("mpiland_version"):
        schema += f" (written by mpiland {summary['mpiland_version']})"
    rows.append(("schema", schema))
    if summary.get("created"):
        rows.append(("created", str(summary["created"])))
    if summary.get("fingerprint"):
        rows.append(("fingerprint", summary["fingerprint"]))
    job = summary.get("job")
    if job:
        if job.get("name"):
            rows.append(("job", job["name"]))
        if job.get("model_factory"):
            rows.append(("model", str(job["model_factory"])))
        rows.append(("checkpoint", str(job.get("checkpoint") or "none")))
        d = job.get("directions") or {}
        if d:
            parts = [str(d.get("kind", "?"))]
            if "norm" in d:
                parts.append(f"norm {d['norm']}")
            if "seed" in d:
                parts.append(f"seed {d['seed']}")
            rows.append(("directions", ", ".join(parts)))
        if job.get("grid"):
            rows.append(("grid", ", ".join(f"{k} {v}" for k, v in job["grid"].items())))
        if job.get("splits"):
            sp = job["splits"]
            rows.append(("splits", ", ".join(sp) if isinstance(sp, list) else str(sp)))
    shape = " x ".join(str(n) for n in summary["shape"])
    rows.append(("dims", f"{summary['dims']} ({shape} points)"))
    for ax in ("x", "y"):
        a = summary.get(ax)
        if a:
            label = summary.get(f"{ax}_label") or ax
            rows.append((ax, f"{_fmt(a['min'])} .. {_fmt(a['max'])} ({a['num']} values): {label}"))
    if summary.get("endpoints"):
        t0, t1 = summary["endpoints"]
        rows.append(("endpoints", f"t0={_fmt(t0)}, t1={_fmt(t1)} (the end models of the path)"))
    p = summary["progress"]
    rows.append(("progress", f"{p['done']}/{p['total']} points done ({p['percent']:.1f}%)"))
    sec = summary.get("seconds")
    if sec:
        rows.append(("time", f"{sec['total']:.1f} s total, {sec['mean']:.3g} s per point"))
    for name, m in summary["metrics"].items():
        if m["min"] is None:
            text = "no finite value yet"
        else:
            text = f"min {_fmt(m['min'])} at {_point_text(m['argmin'])}, max {_fmt(m['max'])}"
            if m.get("argmax") is not None:
                text += f" at {_point_text(m['argmax'])}"
        if m["nonfinite"]:
            text += f"; {m['nonfinite']} non-finite"
        rows.append((name, text))
    rows.append(("non-finite", f"{summary['nonfinite']} done points with inf/NaN values"))
    rows.extend(_measure_rows(summary))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _bound(value: float | None, at_edge: bool) -> str:
    return ("≥" if at_edge and value is not None else "") + _fmt(value)


def _measure_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Text rows for the models, the trajectory, the barriers and the flatness of a summary."""
    rows: list[tuple[str, str]] = []
    models = summary.get("models")
    if models:
        rows.append(("models", ", ".join(f"{m['label']} at {_point_text(m['coordinates'])}" for m in models)))
    traj = summary.get("trajectory")
    if traj:
        labels = traj["labels"]
        rows.append(("trajectory", f"{traj['points']} checkpoints, {labels[0]} .. {labels[-1]}"))
        ratio = traj.get("explained_variance_ratio")
        if ratio:
            parts = [f"PC{i + 1} {100 * r:.1f} %" if r is not None else f"PC{i + 1} -" for i, r in enumerate(ratio)]
            rows.append(("variance", ", ".join(parts) + " of the trajectory's variance"))
    for m, b in (summary.get("barriers") or {}).items():
        if b is None:
            rows.append(("barrier", f"{m}: too few finite values"))
            continue
        text = f"{m}: {_fmt(b['height'])}"
        if b["at"] is not None:
            text += f" at t={_fmt(b['at'])}"
        text += (f" between t={_fmt(b['t0'])} ({_fmt(b['loss0'])}) and t={_fmt(b['t1'])} ({_fmt(b['loss1'])}), "
                 + ("monotonic" if b["monotonic"] else "not monotonic"))
        if b["ignored"]:
            text += f"; {b['ignored']} non-finite points ignored"
        rows.append(("barrier", text))
    for m, f in (summary.get("flatness") or {}).items():
        if f is None:
            rows.append(("flatness", f"{m}: no finite value at the centre"))
            continue
        axes = list(f["curvature"])
        curv = ", ".join(f"{a} {_fmt(f['curvature'][a])}" for a in axes)
        width = ", ".join(f"{a} {_bound(f['basin_width'][a]['width'], f['basin_width'][a]['at_edge'])}"
                          for a in axes)
        text = (f"{m} at {_point_text(f['centre'])} = {_fmt(f['loss'])}, ε {_fmt(f['epsilon'])}: "
                f"curvature {curv}; basin width {width}")
        area = f.get("basin_area")
        if area:
            text += f"; area {_bound(area['area'], area['at_edge'])}"
            if area["fraction"] is not None:
                text += f" ({100 * area['fraction']:.3g} % of the grid)"
        if f["sharpness"] is not None:
            text += (f"; sharpness {_fmt(f['sharpness'])} ({_fmt(f['sharpness_relative'])} %) "
                     f"within r={_fmt(f['radius'])}")
        rows.append(("flatness", text))
    return rows
