"""Synthetic surface files for the tests of the surface reader, mpiland.analysis and mpiland.plots.

:func:`write_surface` lays a file out the way `mpiland run` does (or, with
``mpiland=False``, the way the reference tool ``tomgoldstein/loss-landscape``
does: no attributes, and 2D values given as ``[i, j]`` at ``(x_i, y_j)`` stored in its
meshgrid order), including the optional ``models/`` and ``trajectory/`` groups and the
``endpoints`` attribute, so readers and plots can be tested without a model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mpiland import SCHEMA_VERSION

JOB: dict[str, Any] = {
    "name": "digits-mlp",
    "model": {"factory": "mpiland.models:mlp", "kwargs": {}, "checkpoint": "ckpt/mlp.pt", "seed": 0},
    "data": {"dataset": "digits", "splits": ["train", "test"]},
    "directions": {"kind": "random", "norm": "filter", "seed": 7, "ignore": "biasbn"},
    "grid": {"x": {"min": -1.0, "max": 1.0, "num": 11}, "y": {"min": -0.5, "max": 1.0, "num": 7}},
}
"""The resolved job stored in files written by :func:`write_surface`."""


def write_surface(path: Path, x: Any, y: Any = None, metrics: Mapping[str, Any] | None = None,
                  done: Any = None, seconds: Any = None, *, mpiland: bool = True, schema: int = SCHEMA_VERSION,
                  job: dict[str, Any] | None = JOB, labels: tuple[str, str] | None = ("direction x", "direction y"),
                  models: tuple[Any, Sequence[str]] | None = None,
                  trajectory: tuple[Any, Sequence[str], Any] | None = None,
                  endpoints: Sequence[float] | None = None, attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a small surface file and return its path.

    ``metrics`` maps dataset names to grid arrays; ``done`` (and ``seconds``)
    become those datasets when given. ``models`` = (coordinates, labels) and
    ``trajectory`` = (coordinates, labels, explained variance ratio) become the
    optional groups; ``endpoints`` and ``attrs`` become root attributes.
    """
    names = list(metrics or {})
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=np.float64)
        for name, arr in (metrics or {}).items():
            a = np.asarray(arr, dtype=np.float64)
            if not mpiland and y is not None:
                # the reference tool's crunch: value(x_i, y_j) at flat index j·nx + i of an (nx, ny) array
                a = a.T.reshape(-1).reshape(a.shape)
            f[name] = a
        if done is not None:
            f["done"] = np.asarray(done, dtype=np.uint8)
        if seconds is not None:
            f["seconds"] = np.asarray(seconds, dtype=np.float64)
        if models is not None:
            g = f.create_group("models")
            g["coordinates"] = np.asarray(models[0], dtype=np.float64)
            g.attrs["labels"] = list(models[1])
        if trajectory is not None:
            g = f.create_group("trajectory")
            g["coordinates"] = np.asarray(trajectory[0], dtype=np.float64)
            g.attrs["labels"] = list(trajectory[1])
            g.attrs["explained_variance_ratio"] = np.asarray(trajectory[2], dtype=np.float64)
        if endpoints is not None:
            f.attrs["endpoints"] = np.asarray(endpoints, dtype=np.float64)
        if mpiland:
            f.attrs["mpiland_schema"] = schema
            f.attrs["mpiland_version"] = "0.1.0"
            f.attrs["created"] = "2024-05-01T12:00:00+00:00"
            f.attrs["fingerprint"] = "ab12cd34ef56" + "0" * 52
            f.attrs["dims"] = 1 if y is None else 2
            f.attrs["metrics"] = names
            plain = [n for n in names if not n.startswith("line_")]
            f.attrs["splits"] = list(dict.fromkeys(n.split("_")[0] for n in plain))
            if labels is not None:
                f.attrs["x_label"] = labels[0]
                if y is not None:
                    f.attrs["y_label"] = labels[1]
            if job is not None:
                f.attrs["job_json"] = json.dumps(job)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return Path(path)


T = np.linspace(-0.5, 1.5, 41)
"""An interpolation path extrapolated past model A (t=0) and model B (t=1), step 0.05."""


def bump_path(t: np.ndarray = T) -> np.ndarray:
    """A straight line from 1 (t=0) to 1.5 (t=1) plus a bump of 0.3 at t=0.45; steep walls outside [0, 1]."""
    loss = 1.0 + 0.5 * t + 0.3 * np.exp(-(((t - 0.45) / 0.05) ** 2))
    return loss + 5.0 * (t < -0.01) + 5.0 * (t > 1.01)


def write_curve_surface(path: Path) -> Path:
    """A Bézier-curve file over :data:`T`: the curve (barrier 0.3 at t=0.45), the straight line between
    the same end models (``line_*``, barrier 0.8 at t=0.5), models A at t=0 and B at t=1."""
    line = 1.0 + 0.5 * T + 0.8 * np.sin(np.pi * np.clip(T, 0, 1)) ** 2
    curve = bump_path()
    metrics = {"test_loss": curve, "test_acc": 0.9 - 0.1 * curve, "test_loss_stderr": 0.01 + 0 * T,
               "line_test_loss": line, "line_test_acc": 0.9 - 0.1 * line, "line_test_loss_stderr": 0.01 + 0 * T}
    return write_surface(path, T, None, metrics, done=np.ones(T.size), models=([[0.0], [1.0]], ["A", "B"]),
                         endpoints=[0.0, 1.0])


def quadratic(a: float = 1.5, b: float = 4.0, l0: float = 0.25, nx: int = 161,
              ny: int = 129) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and L = l0 + a x² + b y² on [-1, 1] x [-0.8, 0.8] ((0, 0) is a grid point)."""
    x = np.linspace(-1, 1, nx)
    y = np.linspace(-0.8, 0.8, ny)
    X, Y = np.meshgrid(x, y, indexing="ij")
    return x, y, l0 + a * X ** 2 + b * Y ** 2


def write_pca_surface(path: Path) -> Path:
    """A PCA-direction file: quadratic loss, Hessian maps, the final model at (0, 0) and a 6-checkpoint
    trajectory from (-0.8, 0.25) to (0, 0) with explained variance ratios 0.831 and 0.102."""
    x, y, loss = quadratic(nx=41, ny=33)
    traj = np.column_stack([np.linspace(-0.8, 0.0, 6), np.linspace(0.5, 0.0, 6) ** 2])
    labels = [f"epoch_{i:03d}" for i in range(6)]
    ratio = loss / loss.max()
    metrics = {"test_loss": loss, "test_acc": 1 - loss / 4, "test_hess_max": 2 + 0 * loss,
               "test_hess_min": ratio - 0.5, "test_hess_ratio": ratio}
    return write_surface(path, x, y, metrics, done=np.ones(loss.shape), models=([[0.0, 0.0]], ["final"]),
                         trajectory=(traj, labels, [0.831, 0.102]), labels=("PC1", "PC2"))
