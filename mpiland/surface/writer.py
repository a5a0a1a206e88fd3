"""The surface file: a versioned HDF5 layout (docs/schema.md), created once, then filled chunk by chunk.

All structure (datasets, attributes, the directions group) is written by one
process when the file is created, into a temporary name that is renamed into
place, so an existing file is never half-replaced. Afterwards only values and the
``done`` mask change: by rank 0 alone (``gather`` writer) or by every rank
independently through MPI-IO (``mpio`` writer).

Durability: the gather writer writes values at once but marks points done only
after a flush (and fsync) that follows their values, and at close; so ``done``
never claims a value that is not on disk. Flushes are spaced by
:data:`MARK_COST_FACTOR` times what the last one cost, within
[:data:`MIN_MARK_SECONDS`, :data:`MARK_SECONDS`], so a crash loses at most the
points delivered in the last :data:`MARK_SECONDS` (on a local disk, a fraction
of a second); they are recomputed on resume. The MPI-IO writer opens
its dataset handles once, in the same order on every rank, writes only
independently (values, then ``done``, from the rank that computed them) and
closes collectively (docs/schema.md, "Writing and crashes").
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..version import SCHEMA_VERSION, __version__
from ..errors import SurfaceFileError
from ..grid import Grid, row_runs
from . import lock
from .names import (ATTR_CREATED, ATTR_FINGERPRINT, ATTR_METRICS, ATTR_PPP, ATTR_PPP_HISTORY, ATTR_SCHEMA,
                    ATTR_THREADS, ATTR_THREADS_HISTORY, ATTR_VERSION, DONE, SECONDS, SPECTRUM, SPECTRUM_ARRAYS,
                    XCOORDS, YCOORDS)
from .netcdf import add_dimensions
from .reader import Spectrum

if TYPE_CHECKING:
    from ..directions.base import Directions


def _dataset(f: h5py.File, name: str, shape: tuple[int, ...], dtype: Any, fill: Any) -> None:
    """A grid-shaped dataset holding ``fill`` everywhere, allocated on disk now (MPI-IO writes need that)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill, dcpl=dcpl)


def create(path: Path, *, grid: Grid, metrics: list[str], splits: list[str], directions: "Directions",
           fingerprint: str, job_text: str, job_json: str, labels: tuple[str, str], points_per_pass: int = 1,
           bn: tuple[str, int] = ("eval", 0), attrs: dict[str, Any] | None = None,
           spectrum: Mapping[str, Spectrum] | None = None) -> None:
    """Write a new, empty surface file (all values NaN, nothing done) atomically at ``path``.

    ``attrs``: further root attributes (curvature at the origin, the identity digests).
    ``spectrum``: Hessian spectra by subgroup name (``origin``, ``model_<i>``), written
    as the ``spectrum/`` group (:func:`write_spectrum`).
    No grid-sized array is built in memory. If writing fails (a full disk), the
    temporary file is removed and SurfaceFileError says why; ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a[ATTR_SCHEMA] = SCHEMA_VERSION
            a[ATTR_VERSION] = __version__
            a[ATTR_CREATED] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            a[ATTR_FINGERPRINT] = fingerprint
            a["job_toml"] = job_text
            a["job_json"] = job_json
            a["dims"] = grid.dims
            a["splits"] = list(splits)
            a[ATTR_METRICS] = list(metrics)
            a["x_label"], a["y_label"] = labels
            a[ATTR_PPP] = points_per_pass
            a[ATTR_PPP_HISTORY] = np.array([points_per_pass], dtype=np.int64)
            a["bn"] = bn[0]
            if bn[0] == "recompute":
                a["bn_batches"] = bn[1]
            for key, value in (attrs or {}).items():
                a[key] = value
            if directions.endpoints is not None:
                a["endpoints"] = np.asarray(directions.endpoints, dtype=np.float64)
            f.create_dataset(XCOORDS, data=grid.x)
            if grid.y is not None:
                f.create_dataset(YCOORDS, data=grid.y)
            for m in metrics:
                _dataset(f, m, grid.shape, np.float64, np.nan)
            _dataset(f, SECONDS, grid.shape, np.float64, np.nan)
            _dataset(f, DONE, grid.shape, np.uint8, 0)
            add_dimensions(f, metrics)
            _write_directions(f, directions)
            if spectrum:
                write_spectrum(f, spectrum)
        os.replace(tmp, path)
    except (OSError, RuntimeError, ValueError) as exc:
        free = shutil.disk_usage(path.parent).free
        raise SurfaceFileError(f"cannot create {path}: {' '.join(str(exc).split())} ({free / 2**20:.0f} MiB free "
                               f"in {path.parent}; is the disk full?); nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_directions(f: h5py.File, directions: "Directions") -> None:
    """The directions group, the models' positions and the trajectory (docs/schema.md)."""
    g = f.create_group("directions")
    own = directions.vectors[directions.rows("")]
    if directions.coefficient_map == "axes":
        for axis, vec in zip("xy", own):
            g.create_dataset(axis, data=vec.numpy(), compression="gzip", shuffle=True)
    else:
        g.create_dataset("basis", data=own.numpy(), compression="gzip", shuffle=True)
    for prefix in directions.blocks[1:]:  # e.g. the unaligned path beside an aligned one
        g.create_dataset(f"{prefix}basis", data=directions.vectors[directions.rows(prefix)].numpy(),
                         compression="gzip", shuffle=True)
    if len(directions.blocks) > 1:
        g.attrs["blocks"] = list(directions.blocks)
    g.attrs["coefficient_map"] = directions.coefficient_map
    g.attrs["names"] = list(directions.layout.names)
    g.attrs["shapes"] = json.dumps([list(s) for s in directions.layout.shapes])
    g.attrs["n_params"] = directions.layout.n_params
    for key, value in directions.settings.items():
        g.attrs[key] = json.dumps(value) if isinstance(value, list) else value
    if directions.models:
        m = f.create_group("models")
        m.create_dataset("coordinates", data=np.array([pos for _, pos in directions.models], dtype=np.float64))
        m.attrs["labels"] = [label for label, _ in directions.models]
    if directions.trajectory is not None:
        t = f.create_group("trajectory")
        t.create_dataset("coordinates", data=np.asarray(directions.trajectory.coordinates, dtype=np.float64))
        t.attrs["labels"] = list(directions.trajectory.labels)
        t.attrs["explained_variance_ratio"] = np.asarray(directions.trajectory.explained_variance_ratio,
                                                         dtype=np.float64)


def write_spectrum(f: h5py.File, spectra: Mapping[str, Spectrum]) -> None:
    """The ``spectrum/`` group: one subgroup per point with its arrays (datasets) and settings (attributes)."""
    g = f.create_group(SPECTRUM)
    for name, s in spectra.items():
        sub = g.create_group(name)
        for key in SPECTRUM_ARRAYS[:-1]:  # the float arrays; group_size (int) follows
            sub.create_dataset(key, data=np.asarray(getattr(s, key), dtype=np.float64))
        sub.create_dataset("group_size", data=np.asarray(s.group_size, dtype=np.int64).reshape(-1))
        a = sub.attrs
        a["label"] = s.label
        a["coordinates"] = np.asarray(s.coordinates, dtype=np.float64).reshape(-1)
        a["split"] = s.split
        a["n"] = s.n
        a["probes"], a["steps"] = s.probes, s.steps
        a["distribution"] = s.distribution
        a["width"] = s.width
        a["groups"] = list(s.groups) if s.groups else np.zeros(0, dtype=np.float64)
        a["trace"], a["trace_stderr"] = s.trace, s.trace_stderr
        a["top_converged"] = int(s.top_converged)
        a["hvps"] = s.hvps
        a["seconds"] = s.seconds


MARK_SECONDS = 10.0
"""Gather writer: at most this many seconds between a flush of values and the done marks that follow it."""
MIN_MARK_SECONDS = 0.1
"""Gather writer: at least this many seconds between two flushes (unless the file closes)."""
MARK_COST_FACTOR = 50.0
"""Gather writer: the next flush waits this many times as long as the last flush took (so flushing costs
about 2 % of the time on a slow file system, and a crash loses well under a second of work on a local disk)."""


class SurfaceWriter:
    """An open surface file that takes chunk results. ``comm`` set → MPI-IO (every rank opens it, collectively)."""

    def __init__(self, path: Path, comm: Any = None, points_per_pass: int | None = None,
                 mark_seconds: float = MARK_SECONDS, min_mark_seconds: float = MIN_MARK_SECONDS) -> None:
        self.path = path
        self.parallel = comm is not None
        self.mark_seconds = mark_seconds
        self.min_mark_seconds = min(min_mark_seconds, mark_seconds)
        self._interval = self.min_mark_seconds  # until a first flush has measured what one costs here
        try:
            if self.parallel:
                self.file = h5py.File(path, "r+", driver="mpio", comm=comm)
            else:
                self.file = h5py.File(path, "r+")
        except OSError as exc:
            raise SurfaceFileError(f"{path} cannot be opened for writing ({' '.join(str(exc).split())}); is another "
                                   "program (a viewer, an older mpiland) holding it open?") from None
        self.metrics = [str(m) for m in self.file.attrs[ATTR_METRICS]]
        # Every handle now, in one order on every rank: opening objects is collective under MPI-IO.
        self.columns = [self.file[m] for m in self.metrics] + [self.file[SECONDS]]
        self.done = self.file[DONE]
        self.shape = self.done.shape
        if points_per_pass is not None:
            self._record_points_per_pass(points_per_pass)
        self._pending: list[tuple[list[tuple[int, int, int, int, int]], int]] = []
        self._marked = time.monotonic()
        self._fd = None if self.parallel else os.open(path, os.O_RDONLY)

    def _record_points_per_pass(self, k: int) -> None:
        """Keep ``points_per_pass`` true for the values written from now on, and append it to the history."""
        a = self.file.attrs
        history = [int(v) for v in np.atleast_1d(a.get(ATTR_PPP_HISTORY, [int(a.get(ATTR_PPP, k))]))]
        if int(a.get(ATTR_PPP, -1)) != k or history[-1] != k:
            history.append(k)
        a[ATTR_PPP] = k  # under MPI-IO every rank writes the same values (attribute writes are collective)
        a[ATTR_PPP_HISTORY] = np.array(history, dtype=np.int64)

    def record_threads(self, threads: int) -> int | None:
        """Record the torch threads per rank of this run (its ``threads`` and their history); return the previous.

        Values can differ at rounding level between thread counts (a library's
        kernels may split work by threads), so a file says which counts made it.
        Under MPI-IO every rank calls this with the same value.
        """
        a = self.file.attrs
        previous = int(a[ATTR_THREADS]) if ATTR_THREADS in a else None
        history = [int(v) for v in np.atleast_1d(a.get(ATTR_THREADS_HISTORY, []))]
        if not history or history[-1] != threads:
            history.append(threads)
        a[ATTR_THREADS] = threads
        a[ATTR_THREADS_HISTORY] = np.array(history, dtype=np.int64)
        return previous

    def done_mask(self) -> np.ndarray:
        return self.done[...]

    def write(self, points: np.ndarray, values: dict[str, np.ndarray], seconds: np.ndarray) -> None:
        """Store one chunk (flat point indices, metric arrays, seconds); mark it done once its values are durable."""
        order = np.argsort(points, kind="stable")
        points = np.asarray(points)[order]
        runs = row_runs(points, self.shape)
        data = [np.asarray(values[m])[order] for m in self.metrics] + [np.asarray(seconds)[order]]
        for ds, vals in zip(self.columns, data):
            self._put(ds, runs, vals)
        if self.parallel:
            self._put(self.done, runs, np.ones(len(points), dtype=np.uint8))
            return
        self._pending.append((runs, len(points)))
        if time.monotonic() - self._marked >= min(self._interval, self.mark_seconds):
            self.mark_done()

    def mark_done(self) -> None:
        """Gather writer: flush and fsync the values written so far, then mark their points done."""
        if self.parallel or not self._pending:
            return
        start = time.monotonic()
        self.file.flush()
        assert self._fd is not None
        os.fsync(self._fd)
        for runs, n in self._pending:
            self._put(self.done, runs, np.ones(n, dtype=np.uint8))
        self._pending.clear()
        self.file.flush()
        self._marked = time.monotonic()
        cost = self._marked - start
        self._interval = min(self.mark_seconds, max(self.min_mark_seconds, MARK_COST_FACTOR * cost))

    def _put(self, ds: h5py.Dataset, runs: list[tuple[int, int, int, int, int]], vals: np.ndarray) -> None:
        for row, c0, c1, p0, p1 in runs:
            if len(self.shape) == 1:
                ds[c0:c1] = vals[p0:p1]
            else:
                ds[row, c0:c1] = vals[p0:p1]

    def close(self, release: bool = True) -> None:
        """Mark what is pending, close the file (collectively under MPI-IO) and release the output lock.

        ``release`` False keeps the lock (released later by :func:`~mpiland.surface.release_output`), so
        rank 0 can store the derived numbers before another run may take the file.
        """
        try:
            if self.file.id.valid:
                self.mark_done()
                del self.columns, self.done
                self.file.close()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if release:
                lock.release(self.path)


def open_writer(path: Path, comm: Any, kind: str, points_per_pass: int) -> SurfaceWriter | None:
    """The writer of this rank: every rank for ``mpio``, rank 0 alone for ``gather`` (others get None).

    Called by every rank; a failure to open on rank 0 is raised on every rank.
    """
    rank, size = comm.Get_rank(), comm.Get_size()
    if kind == "mpio":
        k = comm.bcast(points_per_pass, root=0)
        comm.Barrier()
        return SurfaceWriter(path, comm=comm, points_per_pass=k)
    writer, err = None, None
    if rank == 0:
        try:
            writer = SurfaceWriter(path, points_per_pass=points_per_pass)
        except SurfaceFileError as exc:
            err = exc
    if size > 1:
        msg = comm.bcast(None if err is None else str(err), root=0)
        if msg is not None and err is None:
            raise SurfaceFileError(msg)
    if err is not None:
        lock.release(path)
        raise err
    return writer


def read_done(path: Path) -> np.ndarray:
    """The ``done`` mask of a surface file (for planning chunks)."""
    with h5py.File(path, "r") as f:
        return f[DONE][...]


def read_points_per_pass(path: Path) -> int | None:
    """Points per forward pass the file was last written with (None for files that do not say)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get(ATTR_PPP)
    return None if value is None else int(value)
