"""Surface files as plain files other tools read: NumPy ``.npz`` archives and CSV tables.

Both carry the grid coordinates and every metric (or those asked for), NaN where a
point is not computed yet, and the ``done`` mask. In an ``.npz`` the arrays keep the
grid's shape (``(nx,)`` or ``(nx, ny)``, element ``[i, j]`` at ``(x[i], y[j])``) and
``x_label``/``y_label`` hold the axis labels. A CSV has one row per grid point, x
varying fastest within each y (the order of ``np.meshgrid(x, y)``), floats written
with every digit (``repr``), so a round trip returns the same values.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import SurfaceFileError
from .surface.reader import Surface, load_surface

FORMATS = ("npz", "csv")


def export_surface(path: str | os.PathLike[str], to: str, out: str | os.PathLike[str] | None = None,
                   metrics: Sequence[str] | None = None) -> Path:
    """Write the surface file ``path`` as ``to`` (``"npz"`` or ``"csv"``) and return the path written.

    ``out``: the file to write (default: beside ``path``, ``surf.h5`` -> ``surf.npz``);
    replaced if it exists, atomically. ``metrics``: the datasets to export (default:
    all). Raises :class:`~mpiland.errors.SurfaceFileError` for an unknown format or
    metric, or a file that is not a surface file.
    """
    if to not in FORMATS:
        raise SurfaceFileError(f"export format {to!r} is not one of {', '.join(FORMATS)}; choose --to npz or --to csv")
    surface = load_surface(path)
    names = [surface.check_metric(m) for m in metrics] if metrics else list(surface.metrics)
    target = Path(out) if out is not None else surface.path.with_suffix(f".{to}")
    if target.resolve() == surface.path.resolve():
        raise SurfaceFileError(f"export to {target} would replace the surface file itself; give another --out")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=f".{to}")
    os.close(fd)
    try:
        (_write_npz if to == "npz" else _write_csv)(surface, names, Path(tmp))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _write_npz(surface: Surface, names: list[str], path: Path) -> None:
    arrays: dict[str, Any] = {"x": surface.x, "x_label": np.array(surface.x_label)}
    if surface.dims == 2:
        assert surface.y is not None
        arrays.update(y=surface.y, y_label=np.array(surface.y_label))
    arrays["done"] = surface.done.astype(bool)
    arrays.update({m: surface.values(m) for m in names})
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _write_csv(surface: Surface, names: list[str], path: Path) -> None:
    if surface.dims == 1:
        columns = {"x": surface.x}
        flat = {m: surface.values(m) for m in names}
        done = surface.done
    else:
        assert surface.y is not None
        xs, ys = np.meshgrid(surface.x, surface.y)  # (ny, nx): x fastest
        columns = {"x": xs.ravel(), "y": ys.ravel()}
        flat = {m: surface.values(m).T.ravel() for m in names}
        done = surface.done.T.ravel()
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*columns, "done", *names])
        for k in range(done.size):
            w.writerow([repr(float(c[k])) for c in columns.values()] + [int(done[k])]
                       + [repr(float(flat[m][k])) for m in names])
