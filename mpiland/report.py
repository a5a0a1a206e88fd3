"""Read surface files and summarise them for ``mpiland info FILE``.

This module is deliberately light (numpy and h5py only, no torch or matplotlib)
so that inspecting a file is quick. :func:`load_surface` is also the reader used
by :mod:`mpiland.plots`.

Besides mpiland's own files (see ``docs/schema.md``) it reads files written by
the reference tool ``tomgoldstein/loss-landscape``: those have no attributes and
no ``done`` dataset, and fill the metric arrays with ``-1`` before computing
them. For such files a metric value counts as computed when it is not NaN and
not that ``-1`` placeholder (a loss or an accuracy in percent is never -1).
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


@dataclass
class Surface:
    """The content of one surface file, read fully into memory.

    ``metrics`` maps dataset names to float arrays of the grid's shape where
    points not computed yet are NaN; computed points keep their value, which can
    be ±inf or NaN for divergent points (compare with ``done``).
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
        """The ``<split>_loss`` datasets, in split order."""
        return [m for m in self.metrics if m.endswith("_loss")]

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
                split, _, rest = n.partition("_")
                if rest in ("loss", "acc") and split not in splits:
                    splits.append(split)
        # Order: each split's loss, accuracy, stderr first (in split order), then the rest.
        rank = {s: i for i, s in enumerate(splits)}

        def order(n: str) -> tuple[int, int, str]:
            split, _, rest = n.partition("_")
            kind = {"loss": 0, "acc": 1, "loss_stderr": 2}.get(rest, 3)
            return (rank.get(split, len(rank)), kind, "" if kind < 3 else n)

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
                   metrics=metrics, computed=computed, seconds=seconds, job=job, splits=list(splits))


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


def summarize(path: str | Path) -> dict[str, Any]:
    """Summarise a surface file as plain data (see :func:`format_summary` for the text form).

    Keys: ``path``, ``schema`` (int or None for a reference-tool file),
    ``schema_text``, ``mpiland_version``, ``created``, ``fingerprint`` (short)
    and ``fingerprint_full``, ``job`` (or None), ``dims``, ``shape``, ``x``/``y``
    ranges, ``progress`` (done, total, percent), ``seconds`` (total, mean per
    done point, or None), ``metrics`` (per metric: min, argmin, max, argmax,
    finite and nonfinite counts) and ``nonfinite`` (done points with a
    non-finite value in any metric).
    """
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
            if name.endswith("_acc"):
                info["argmax"] = s.point(imax)
        metrics[name] = info
    summary["metrics"] = metrics
    summary["nonfinite"] = int(any_bad.sum())
    return summary


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
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
