"""The surface file: a versioned HDF5 layout (docs/schema.md), created once, then filled chunk by chunk.

All structure (datasets, attributes, the directions group) is written by one
process when the file is created, into a temporary name that is renamed into
place, so an existing file is never half-replaced. Afterwards only values and the
``done`` mask change: by rank 0 alone (``gather`` writer, flushed after every
chunk) or by every rank independently through MPI-IO (``mpio`` writer). Values are
written before ``done``, so a point interrupted mid-write is simply recomputed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .. import SCHEMA_VERSION, __version__
from ..errors import SurfaceFileError
from ..grid import Grid, row_runs

if TYPE_CHECKING:
    from ..directions.base import Directions


def _is_surface(f: h5py.File) -> bool:
    return "mpiland_schema" in f.attrs


def check_existing(path: Path, fingerprint: str, overwrite: bool) -> bool:
    """Decide what to do with an existing file: True = resume it, False = create anew.

    A file of the same job is always resumed, also with ``overwrite`` (a requeued
    preemptible job must never start from zero); ``overwrite`` replaces a file of
    another job or one that is not a surface file. Raises SurfaceFileError otherwise,
    and when another process holds the file open for writing.
    """
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            if not _is_surface(f):
                if overwrite:
                    return False
                raise SurfaceFileError(f"{path} exists and is not an mpiland surface file; choose another --output or pass --overwrite")
            version = int(f.attrs["mpiland_schema"])
            if version > SCHEMA_VERSION:
                raise SurfaceFileError(f"{path} has schema version {version}, newer than this mpiland's {SCHEMA_VERSION}; upgrade mpiland")
            theirs = str(f.attrs.get("fingerprint", ""))
    except OSError as exc:
        if "lock" in str(exc).lower():
            raise SurfaceFileError(f"{path} is in use by another process (HDF5 file lock); wait for that run to end "
                                   "or choose another --output") from None
        if overwrite:
            return False
        raise SurfaceFileError(f"{path} exists but cannot be read as HDF5 ({exc}); move it away or pass --overwrite") from None
    if theirs != fingerprint:
        if overwrite:
            return False
        raise SurfaceFileError(
            f"{path} was made by a different job (fingerprint {theirs[:12]} ≠ {fingerprint[:12]}); "
            "pass --overwrite to replace it or choose another --output")
    return True


def create(path: Path, *, grid: Grid, metrics: list[str], splits: list[str], directions: Directions,
           fingerprint: str, job_text: str, job_json: str, labels: tuple[str, str], points_per_pass: int = 1,
           bn: tuple[str, int] = ("eval", 0), attrs: dict[str, Any] | None = None) -> None:
    """Write a new, empty surface file (all values NaN, nothing done) atomically at ``path``.

    ``attrs``: further root attributes (curvature at the origin).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    try:
        with h5py.File(tmp, "w") as f:
            a = f.attrs
            a["mpiland_schema"] = SCHEMA_VERSION
            a["mpiland_version"] = __version__
            a["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            a["fingerprint"] = fingerprint
            a["job_toml"] = job_text
            a["job_json"] = job_json
            a["dims"] = grid.dims
            a["splits"] = list(splits)
            a["metrics"] = list(metrics)
            a["x_label"], a["y_label"] = labels
            a["points_per_pass"] = points_per_pass
            a["bn"] = bn[0]
            if bn[0] == "recompute":
                a["bn_batches"] = bn[1]
            for key, value in (attrs or {}).items():
                a[key] = value
            if directions.endpoints is not None:
                a["endpoints"] = np.asarray(directions.endpoints, dtype=np.float64)
            f.create_dataset("xcoordinates", data=grid.x)
            if grid.y is not None:
                f.create_dataset("ycoordinates", data=grid.y)
            for m in metrics:
                f.create_dataset(m, data=np.full(grid.shape, np.nan))
            f.create_dataset("seconds", data=np.full(grid.shape, np.nan))
            f.create_dataset("done", data=np.zeros(grid.shape, dtype=np.uint8))
            _write_directions(f, directions)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_directions(f: h5py.File, directions: Directions) -> None:
    """The directions group, the models' positions and the trajectory (docs/schema.md)."""
    g = f.create_group("directions")
    if directions.coefficient_map == "axes":
        for axis, vec in zip("xy", directions.vectors):
            g.create_dataset(axis, data=vec.numpy(), compression="gzip", shuffle=True)
    else:
        g.create_dataset("basis", data=directions.vectors.numpy(), compression="gzip", shuffle=True)
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


class SurfaceWriter:
    """An open surface file that takes chunk results. ``comm`` set → MPI-IO (every rank opens it)."""

    def __init__(self, path: Path, comm: Any = None) -> None:
        self.path = path
        self.parallel = comm is not None
        if self.parallel:
            self.file = h5py.File(path, "r+", driver="mpio", comm=comm)
        else:
            self.file = h5py.File(path, "r+")
        self.metrics = [str(m) for m in self.file.attrs["metrics"]]
        self.shape = self.file["done"].shape

    def done_mask(self) -> np.ndarray:
        return self.file["done"][...]

    def write(self, points: np.ndarray, values: dict[str, np.ndarray], seconds: np.ndarray) -> None:
        """Store one chunk (flat point indices, metric arrays, seconds) and mark it done."""
        order = np.argsort(points, kind="stable")
        points = np.asarray(points)[order]
        runs = row_runs(points, self.shape)
        columns = [(self.file[m], np.asarray(values[m])[order]) for m in self.metrics]
        columns.append((self.file["seconds"], np.asarray(seconds)[order]))
        for ds, vals in columns:
            self._put(ds, runs, vals)
        self._put(self.file["done"], runs, np.ones(len(points), dtype=np.uint8))
        if not self.parallel:
            self.file.flush()

    def _put(self, ds: h5py.Dataset, runs: list[tuple[int, int, int, int, int]], vals: np.ndarray) -> None:
        for row, c0, c1, p0, p1 in runs:
            if len(self.shape) == 1:
                ds[c0:c1] = vals[p0:p1]
            else:
                ds[row, c0:c1] = vals[p0:p1]

    def close(self) -> None:
        self.file.close()


def read_done(path: Path) -> np.ndarray:
    """The ``done`` mask of a surface file (for planning chunks)."""
    with h5py.File(path, "r") as f:
        return f["done"][...]


def read_points_per_pass(path: Path) -> int | None:
    """Points per forward pass the file was started with (None for files that do not say)."""
    with h5py.File(path, "r") as f:
        value = f.attrs.get("points_per_pass")
    return None if value is None else int(value)
