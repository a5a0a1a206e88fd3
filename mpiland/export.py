"""Surface files as plain files other tools read: NumPy ``.npz`` archives, CSV tables,
VTK structured grids (``.vts``, for ParaView) and interactive web pages (``.html``).

All carry the grid coordinates and every metric (or those asked for), NaN where a
point is not computed yet, and the ``done`` mask. In an ``.npz`` the arrays keep the
grid's shape (``(nx,)`` or ``(nx, ny)``, element ``[i, j]`` at ``(x[i], y[j])``) and
``x_label``/``y_label`` hold the axis labels. A CSV has one row per grid point, x
varying fastest within each y (the order of ``np.meshgrid(x, y)``), floats written
with every digit (``repr``), so a round trip returns the same values. The ``.vts``
and ``.html`` writers live in :mod:`mpiland.export_vtk` and :mod:`mpiland.export_html`
and need the optional packages pyevtk and plotly (``pip install 'mpiland[export]'``).
With ``log`` every loss metric is exported as its base-10 logarithm, renamed
``log10_<metric>``. docs/export.md describes each format.
"""

from __future__ import annotations

import csv
import importlib
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import DependencyError, SurfaceFileError
from .export_html import write_html
from .export_vtk import write_vts
from .surface.reader import Surface, best_is, load_surface

FORMATS = ("npz", "csv", "vts", "html")

REQUIRES = {"vts": "pyevtk", "html": "plotly"}
"""The optional package each format needs (all of them: the ``export`` extra)."""

LOG_PREFIX = "log10_"
"""Prefix of a loss metric exported as its base-10 logarithm (``--log``): ``log10_test_loss``."""


def export_surface(path: str | os.PathLike[str], to: str, out: str | os.PathLike[str] | None = None,
                   metrics: Sequence[str] | None = None, log: bool = False) -> Path:
    """Write the surface file ``path`` as ``to`` (one of :data:`FORMATS`) and return the path written.

    ``out``: the file to write (default: beside ``path``, ``surf.h5`` -> ``surf.npz``);
    replaced if it exists, atomically. ``metrics``: the datasets to export (default:
    all). ``log``: export each loss metric as log10 of its values, named
    ``log10_<metric>`` (see :func:`export_fields`). Raises
    :class:`~mpiland.errors.SurfaceFileError` for an unknown format or metric, or a
    file that is not a surface file, and :class:`~mpiland.errors.DependencyError`
    when the format's package (:data:`REQUIRES`) is not installed.
    """
    if to not in FORMATS:
        raise SurfaceFileError(f"export format {to!r} is not one of {', '.join(FORMATS)}; "
                               f"choose one of them with --to")
    if to in REQUIRES:
        try:
            importlib.import_module(REQUIRES[to])
        except ImportError:
            raise DependencyError(f"export --to {to} needs the {REQUIRES[to]} package; install it with "
                                  f"pip install {REQUIRES[to]} (or pip install 'mpiland[export]')") from None
    surface = load_surface(path)
    names = [surface.check_metric(m) for m in metrics] if metrics else list(surface.metrics)
    fields = export_fields(surface, names, log)
    target = Path(out) if out is not None else surface.path.with_suffix(f".{to}")
    if target.resolve() == surface.path.resolve():
        raise SurfaceFileError(f"export to {target} would replace the surface file itself; give another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".{to}")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the export from the group a plain file is shared with
    try:
        WRITERS[to](surface, fields, Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def export_fields(surface: Surface, names: Sequence[str], log: bool = False) -> dict[str, np.ndarray]:
    """The exported arrays, by exported name: each metric of ``names`` with NaN where not computed.

    With ``log`` each loss (a metric whose base name ends in ``_loss``, such as
    ``test_loss`` or ``line_test_loss``; not its ``_stderr``) becomes ``log10_<name>``:
    log10 of its values, NaN staying NaN and +inf staying +inf. Raises
    :class:`~mpiland.errors.SurfaceFileError` when ``log`` is asked and no loss is
    exported, or a loss has a computed value of zero or less.
    """
    fields: dict[str, np.ndarray] = {}
    for m in names:
        v = surface.values(m)
        if log and best_is(m) == "min":
            bad = v[~np.isnan(v) & (v <= 0)]
            if bad.size:
                raise SurfaceFileError(f"{surface.path}: {m} has {bad.size} values of zero or less (the smallest "
                                       f"{float(bad.min())!r}), which have no logarithm; export it without --log")
            fields[LOG_PREFIX + m] = np.log10(v)
        else:
            fields[m] = v
    if log and not any(best_is(m) == "min" for m in names):
        losses = [m for m in surface.metrics if best_is(m) == "min"]
        fix = f"add --metric {losses[0]}" if losses else "the file has none"
        raise SurfaceFileError(f"{surface.path}: --log takes the logarithm of the losses, and none of "
                               f"{', '.join(names) or 'no metric'} is one; {fix}, or drop --log")
    return fields


def _write_npz(surface: Surface, fields: dict[str, np.ndarray], path: Path) -> None:
    arrays: dict[str, Any] = {"x": surface.x, "x_label": np.array(surface.x_label)}
    if surface.dims == 2:
        assert surface.y is not None
        arrays.update(y=surface.y, y_label=np.array(surface.y_label))
    arrays["done"] = surface.done.astype(bool)
    arrays.update(fields)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _write_csv(surface: Surface, fields: dict[str, np.ndarray], path: Path) -> None:
    if surface.dims == 1:
        columns = {"x": surface.x}
        flat = fields
        done = surface.done
    else:
        assert surface.y is not None
        xs, ys = np.meshgrid(surface.x, surface.y)  # (ny, nx): x fastest
        columns = {"x": xs.ravel(), "y": ys.ravel()}
        flat = {m: v.T.ravel() for m, v in fields.items()}
        done = surface.done.T.ravel()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*columns, "done", *flat])
        for k in range(done.size):
            w.writerow([repr(float(c[k])) for c in columns.values()] + [int(done[k])]
                       + [repr(float(v[k])) for v in flat.values()])


WRITERS: dict[str, Callable[[Surface, dict[str, np.ndarray], Path], None]] = {
    "npz": _write_npz, "csv": _write_csv, "vts": write_vts, "html": write_html}
"""Format -> function writing a surface's exported arrays (:func:`export_fields`) to a path."""
