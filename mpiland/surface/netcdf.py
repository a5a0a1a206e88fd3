"""The netCDF-4 side of the surface file: named dimensions as HDF5 dimension scales (docs/schema.md).

netCDF-4 is HDF5 with one convention that matters here: a dimension is a 1D
dataset marked as a dimension scale (its name is the dimension's name) and
attached to each axis of every variable that spans it. With the scales in place,
``xarray.open_dataset(path, engine="h5netcdf")`` (or netCDF-C tools such as
``ncdump -h``) see the dimensions ``x`` and ``y`` (``t`` for a path between two
models) with their coordinates and every metric as a variable with ``long_name``
and ``units``. The reference tool's ``xcoordinates``/``ycoordinates`` stay, as
variables on those dimensions, so its scripts and older readers find them.

Schema 2 added the scales (and ``done`` = 2 for points skipped by refinement);
:func:`upgrade` brings a schema-1 file to schema 2 in place when a run resumes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from ..version import SCHEMA_VERSION
from .names import ATTR_SCHEMA, DIM_T, DIM_X, DIM_Y, DIMENSIONS, DONE, SECONDS, XCOORDS, YCOORDS
from .reader import comparison, curve_metric

DONE_FLAGS = {0: "pending", 1: "evaluated", 2: "skipped_by_refinement"}
"""The values of ``done`` and their meaning (CF ``flag_values``/``flag_meanings``)."""

_LOSS_UNITS = {"cross_entropy": "nat", "nll": "nat"}
_KINDS = {"loss": "mean loss", "acc": "accuracy", "loss_stderr": "standard error of the mean loss",
          "hess_max": "largest Hessian eigenvalue", "hess_min": "smallest Hessian eigenvalue",
          "hess_ratio": "|smallest / largest Hessian eigenvalue|"}
_PATHS = {"line_": "on the straight line, ", "unaligned_": "before alignment, ",
          "unaligned_line_": "on the straight line before alignment, "}


def dimension_names(dims: int, path_between_models: bool) -> tuple[str, ...]:
    """The grid's dimension names: ``("x",)`` or ``("t",)`` for 1D (``t`` on a path between two models),
    ``("x", "y")`` for 2D."""
    if dims == 2:
        return (DIM_X, DIM_Y)
    return (DIM_T,) if path_between_models else (DIM_X,)


def metric_attributes(name: str, loss: str) -> dict[str, str]:
    """``long_name`` and ``units`` of metric ``name`` (e.g. ``test_loss``) for a job whose loss is ``loss``.

    Losses (and their standard errors) are in nats for the built-in cross-entropy and NLL,
    in the loss's own units otherwise (``"1"``: mpiland cannot know them); accuracies and
    eigenvalue ratios are fractions (``"1"``); eigenvalues are loss units per squared
    parameter step.
    """
    base = curve_metric(name)
    split, _, kind = base.partition("_")
    what = _KINDS.get(kind, kind.replace("_", " "))
    unit = _LOSS_UNITS.get(loss, "1")
    units = {"loss": unit, "loss_stderr": unit, "hess_max": unit, "hess_min": unit}.get(kind, "1")
    return {"long_name": f"{_PATHS.get(comparison(name), '')}{what} on the {split} split", "units": units}


def _loss_name(job_json: Any) -> str:
    """``loss.name`` of a file's resolved job, or "" when it cannot be read."""
    try:
        job = json.loads(job_json) if isinstance(job_json, (str, bytes)) else {}
        return str(job.get("loss", {}).get("name", ""))
    except (ValueError, AttributeError):
        return ""


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def add_dimensions(f: h5py.File, metrics: Sequence[str]) -> None:
    """Make ``f``'s grid a set of netCDF-4 dimensions: scale datasets ``x``/``y`` (or ``t``) from the
    coordinates, attached to every grid-shaped dataset, and ``long_name``/``units`` on each.

    ``f`` is an mpiland surface file open for writing, with its coordinates, ``metrics``,
    ``seconds`` and ``done`` datasets and root attributes (``dims``, axis labels,
    ``endpoints``, ``job_json``) already in place. Called once, by one process, before any
    other process opens the file.
    """
    a = f.attrs
    dims = int(a["dims"])
    names = dimension_names(dims, "endpoints" in a)
    coords = [XCOORDS, YCOORDS][:dims]
    labels = [_text(a.get("x_label", "")), _text(a.get("y_label", ""))]
    scales = []
    for i, (dim, source) in enumerate(zip(names, coords)):
        scale = f.create_dataset(dim, data=np.asarray(f[source][()], dtype=np.float64))
        scale.make_scale(dim)
        scale.attrs["long_name"] = labels[i] or dim
        scale.attrs["units"] = "1"
        f[source].dims[0].attach_scale(scale)
        scales.append(scale)
    loss = _loss_name(a.get("job_json"))
    for m in metrics:
        for key, value in metric_attributes(m, loss).items():
            f[m].attrs[key] = value
    f[SECONDS].attrs["long_name"] = "wall-clock seconds spent on the point"
    f[SECONDS].attrs["units"] = "s"
    f[DONE].attrs["long_name"] = "evaluation state of the point"
    f[DONE].attrs["flag_values"] = np.array(list(DONE_FLAGS), dtype=np.uint8)
    f[DONE].attrs["flag_meanings"] = " ".join(DONE_FLAGS.values())
    for name in [*metrics, SECONDS, DONE]:
        for axis, scale in enumerate(scales):
            f[name].dims[axis].attach_scale(scale)


def upgrade(path: Path) -> bool:
    """Bring an mpiland surface file of an older schema to :data:`~mpiland.version.SCHEMA_VERSION` in place.

    Schema 1 -> 2 adds the dimension scales (:func:`add_dimensions`); values, ``done``
    and every other member are kept. Returns True if the file was changed. Only the
    process holding the output lock calls this, before any writer opens the file.
    """
    with h5py.File(path, "r+", locking=False) as f:
        version = int(f.attrs.get(ATTR_SCHEMA, SCHEMA_VERSION))
        if version >= SCHEMA_VERSION:
            return False
        listed = f.attrs.get("metrics", [])
        metrics = [_text(m) for m in (listed if not isinstance(listed, (str, bytes)) else [listed])]
        if not any(d in f for d in DIMENSIONS):
            add_dimensions(f, [m for m in metrics if m in f])
        f.attrs[ATTR_SCHEMA] = SCHEMA_VERSION
        f.flush()
    return True
