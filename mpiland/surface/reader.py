"""Read surface files into memory: :func:`load_surface` and the :class:`Surface` it returns.

This module is deliberately light (numpy and h5py only, no torch or matplotlib)
so that inspecting a file is quick; it is the reader used by
:mod:`mpiland.analysis` and :mod:`mpiland.plots`.

Besides mpiland's own files (see ``docs/schema.md``) it reads files written by
the reference tool ``tomgoldstein/loss-landscape``: those have no attributes and
no ``done`` dataset, and fill the metric arrays with ``-1`` before computing
them. For such files a metric value counts as computed when it is not NaN and
not that ``-1`` placeholder (a loss or an accuracy in percent is never -1).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..version import SCHEMA_VERSION, __version__
from ..errors import SurfaceFileError
from .names import DIMENSIONS, SPECTRUM, SPECTRUM_ORIGIN

_COORDS = ("xcoordinates", "ycoordinates")
_NON_METRICS = ("done", "seconds") + _COORDS + DIMENSIONS
_REFERENCE_PLACEHOLDER = -1.0

LINE_PREFIX = "line_"
"""Prefix of the metrics of the straight line evaluated beside a curved path (``line_test_loss``)."""

UNALIGNED_PREFIX = "unaligned_"
"""Prefix of the metrics of the path through the models as given, beside the aligned path
(``directions.align``: ``unaligned_test_loss``, ``unaligned_line_test_loss``)."""

COMPARISON_PREFIXES = (UNALIGNED_PREFIX + LINE_PREFIX, UNALIGNED_PREFIX, LINE_PREFIX)
"""Prefixes of the paths evaluated beside a file's own path, longest first."""


def comparison(name: str) -> str:
    """The comparison path ``name`` belongs to (a prefix of :data:`COMPARISON_PREFIXES`), or "" for the file's own."""
    return next((p for p in COMPARISON_PREFIXES if name.startswith(p)), "")


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
    """The metric of the file's own path that ``name`` compares with: ``line_test_loss`` -> ``test_loss``."""
    return name[len(comparison(name)):]


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
class Spectrum:
    """The Hessian eigenvalue spectrum at one point: a subgroup of the file's ``spectrum/`` (docs/schema.md).

    Stochastic Lanczos quadrature on ``split``: ``nodes`` and ``weights``
    (probes × steps: each probe's tridiagonal eigenvalues and the squared first
    components of its eigenvectors, rows summing to 1); the smoothed density
    ``density`` at the eigenvalues ``grid`` (it integrates to 1: the fraction of the
    ``n`` eigenvalues per unit; Gaussian width ``width``); the ``top`` eigenvalues,
    descending; λmax and λmin of the Hessian's block on each parameter group
    (``groups``, module names such as ``features.0``, with ``group_size``
    parameters); ``trace`` = n·(the nodes' first moment) with its standard error.
    ``label`` and ``coordinates`` (grid coordinates) say where: ``origin`` at 0, or
    a model of ``models/``.
    """

    label: str
    coordinates: np.ndarray
    split: str
    n: int
    probes: int
    steps: int
    distribution: str
    width: float
    nodes: np.ndarray
    weights: np.ndarray
    grid: np.ndarray
    density: np.ndarray
    top: np.ndarray
    groups: list[str]
    group_size: np.ndarray
    group_max: np.ndarray
    group_min: np.ndarray
    trace: float
    trace_stderr: float
    top_converged: bool = True
    hvps: int = 0
    seconds: float = float("nan")

    def moment(self, power: int) -> float:
        """∫ λ^power dρ estimated by the quadrature (mean over probes of Σ weights·nodes^power): power 1 is
        tr H / n, power 2 ‖H‖_F² / n (the smoothed ``density`` adds ``width``² to the second)."""
        return float((self.weights * self.nodes**power).sum(axis=1).mean())

    @property
    def support(self) -> tuple[float, float]:
        """The smallest and the largest node: estimates of λmin and λmax (Ritz values lie between them)."""
        return float(self.nodes.min()), float(self.nodes.max())

    @property
    def lam_max(self) -> float:
        """The largest eigenvalue (the first of ``top``)."""
        return float(self.top[0]) if self.top.size else self.support[1]

    def group_lam_max(self) -> dict[str, float]:
        """Parameter group -> λmax of its Hessian block, in the file's order."""
        return {g: float(v) for g, v in zip(self.groups, self.group_max)}


@dataclass
class Surface:
    """The content of one surface file, read fully into memory.

    ``metrics`` maps dataset names to float arrays of the grid's shape where
    points not computed yet are NaN; computed points keep their value, which can
    be ±inf or NaN for divergent points (compare with ``done``). The optional
    schema members are None when the file lacks them: ``models`` (reference
    models in grid coordinates), ``trajectory`` (projected checkpoints, 2D only)
    with ``explained_variance_ratio``, ``endpoints`` (t0, t1) of a 1D path
    between two models, and ``spectrum`` (``hessian.spectrum``: subgroup name ->
    :class:`Spectrum`, ``origin`` first, then ``model_0`` … in the models' order).
    ``done`` is True where a point was evaluated (``done`` = 1 in the file) and
    ``skipped`` where adaptive refinement left it out (``done`` = 2: its values
    stay NaN; pictures interpolate it).
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
    spectrum: dict[str, Spectrum] | None = None
    skipped: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.skipped.shape != self.done.shape:
            self.skipped = np.zeros(self.done.shape, dtype=bool)

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's shape: (nx,) or (nx, ny)."""
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
        """The label of the x direction (``x_label`` attribute), else ``x``."""
        return str(self.attrs.get("x_label") or "x")

    @property
    def y_label(self) -> str:
        """The label of the y direction (``y_label`` attribute), else ``y``."""
        return str(self.attrs.get("y_label") or "y")

    def loss_metrics(self) -> list[str]:
        """The ``*_loss`` datasets in split order, each ``line_`` loss right after its curve's."""
        return [m for m in self.metrics if m.endswith("_loss")]

    def split_losses(self) -> list[str]:
        """The plain ``<split>_loss`` datasets (no ``line_`` or ``unaligned_`` ones), in split order."""
        return [m for m in self.loss_metrics() if not comparison(m)]

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

    def point(self, index: tuple[int | np.integer[Any], ...]) -> tuple[float, ...]:
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


def load_surface(path: str | os.PathLike[str]) -> Surface:
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
            arr = np.asarray(obj[()])
            if schema is None and dims == 2:
                # The reference tool declares (nx, ny) but fills it in np.meshgrid(x, y) ravel order:
                # value(x_i, y_j) at flat index j·nx + i. Read it as mpiland's [i, j] = (x_i, y_j).
                arr = arr.reshape(-1).reshape(shape[1], shape[0]).T
            return arr

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
            return (rank.get(split, len(rank)), kind, "" if kind < 3 else base, COMPARISON_PREFIXES[::-1].index(
                comparison(n)) + 1 if comparison(n) else 0)

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
        spectrum = _spectra(f, path)

    computed: dict[str, np.ndarray] = {}
    skipped = np.zeros(shape, dtype=bool)
    if done_arr is not None:
        done = done_arr == 1
        skipped = done_arr == 2
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
                   endpoints=endpoints, spectrum=spectrum, skipped=skipped)


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



def _damaged(path: Path, what: str) -> SurfaceFileError:
    return SurfaceFileError(f"{path}: {what}; the file is damaged, recreate it with `mpiland run`")


def _spectrum_order(name: str) -> tuple[int, int, str]:
    """``origin`` first, then ``model_<i>`` by i, then anything else by name."""
    if name == SPECTRUM_ORIGIN:
        return (0, 0, name)
    head, _, tail = name.rpartition("_")
    if head == "model" and tail.isdigit():
        return (1, int(tail), name)
    return (2, 0, name)


def _spectra(f: h5py.File, path: Path) -> dict[str, Spectrum] | None:
    """Read the optional ``spectrum/`` group: one :class:`Spectrum` per subgroup (None without the group)."""
    g = f.get(SPECTRUM)
    if g is None:
        return None
    if not isinstance(g, h5py.Group):
        raise _damaged(path, f"{SPECTRUM} is not a group")
    out = {name: _spectrum(g[name], path, f"{SPECTRUM}/{name}") for name in sorted(g, key=_spectrum_order)}
    return out or None


def _spectrum(g: Any, path: Path, where: str) -> Spectrum:
    """One spectrum subgroup, its shapes checked."""
    if not isinstance(g, h5py.Group):
        raise _damaged(path, f"{where} is not a group")

    def array(name: str, ndim: int) -> np.ndarray:
        ds = g.get(name)
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "fiu" or ds.ndim != ndim:
            raise _damaged(path, f"{where} has no {ndim}-D numeric dataset {name!r}")
        return np.asarray(ds[()], dtype=np.float64)

    def attr(name: str) -> Any:
        if name not in g.attrs:
            raise _damaged(path, f"{where} lacks the attribute {name!r}")
        return _decode(g.attrs[name])

    nodes, weights = array("nodes", 2), array("weights", 2)
    grid, density = array("grid", 1), array("density", 1)
    top = array("top", 1)
    sizes, lam_max, lam_min = array("group_size", 1), array("group_max", 1), array("group_min", 1)
    raw = attr("groups")
    groups = [str(v) for v in (raw if isinstance(raw, list) else [raw])] if lam_max.size else []
    if nodes.shape != weights.shape or not nodes.size:
        raise _damaged(path, f"{where}: nodes {nodes.shape} and weights {weights.shape} differ or are empty")
    if grid.shape != density.shape or grid.size < 2:
        raise _damaged(path, f"{where}: grid {grid.shape} and density {density.shape} differ or are too short")
    if not len(groups) == sizes.size == lam_max.size == lam_min.size:
        raise _damaged(path, f"{where}: {len(groups)} group names for {lam_max.size} group values")
    try:
        coordinates = np.asarray(attr("coordinates"), dtype=np.float64).reshape(-1)
        return Spectrum(label=str(attr("label")), coordinates=coordinates, split=str(attr("split")),
                        n=int(attr("n")), probes=int(nodes.shape[0]), steps=int(nodes.shape[1]),
                        distribution=str(attr("distribution")), width=float(attr("width")), nodes=nodes,
                        weights=weights, grid=grid, density=density, top=top, groups=groups,
                        group_size=sizes.astype(np.int64), group_max=lam_max, group_min=lam_min,
                        trace=float(attr("trace")), trace_stderr=float(attr("trace_stderr")),
                        top_converged=bool(g.attrs.get("top_converged", 1)), hvps=int(g.attrs.get("hvps", 0)),
                        seconds=float(g.attrs.get("seconds", float("nan"))))
    except (TypeError, ValueError):
        raise _damaged(path, f"{where} has an attribute of the wrong type") from None
