"""A surface as a VTK XML structured grid (``.vts``) for ParaView and VisIt, written with pyevtk.

The grid is flat: point ``(i, j)`` lies at ``(x[i], y[j], 0)`` (a 1D curve is a grid of
one row, ``(x[i], 0, 0)``), and VTK numbers it ``i + nx·j``, x fastest. Every exported
metric is a float64 point-data array of that name (NaN where not computed), beside
``done`` (uint8, the surface file's codes: 0 pending, 1 evaluated, 2 skipped by
adaptive refinement). The height is left to the viewer: ParaView's "Warp By
Scalar" on a metric raises the plane into the landscape. The data are written
as raw binary appended to the XML (pyevtk's only mode), so values are exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .surface.reader import Surface

DONE_CODES = {"pending": 0, "evaluated": 1, "skipped": 2}
"""The ``done`` point-data values, as in the surface file's ``done`` dataset."""


def done_codes(surface: Surface) -> np.ndarray:
    """The surface's ``done`` dataset as uint8 codes (:data:`DONE_CODES`), in the grid's shape."""
    codes = np.zeros(surface.shape, dtype=np.uint8)
    codes[surface.done] = DONE_CODES["evaluated"]
    codes[surface.skipped] = DONE_CODES["skipped"]
    return codes


def write_vts(surface: Surface, fields: dict[str, np.ndarray], path: Path) -> None:
    """Write ``fields`` (exported name -> grid-shaped array) of ``surface`` to the ``.vts`` file ``path``.

    ``path`` must end in ``.vts`` (pyevtk appends the suffix to the name it is given).
    """
    from pyevtk.hl import gridToVTK  # type: ignore[import-untyped, import-not-found, unused-ignore]

    if path.suffix != ".vts":
        raise ValueError(f"write_vts needs a .vts path, not {path}")
    y = surface.y if surface.dims == 2 and surface.y is not None else np.zeros(1)
    shape = (surface.x.size, y.size, 1)
    xs, ys = np.meshgrid(surface.x, y, indexing="ij")
    points = [np.ascontiguousarray(a.reshape(shape), dtype=np.float64) for a in (xs, ys, np.zeros(xs.shape))]
    data = {name: np.ascontiguousarray(np.asarray(v, dtype=np.float64).reshape(shape)) for name, v in fields.items()}
    data["done"] = np.ascontiguousarray(done_codes(surface).reshape(shape))
    gridToVTK(str(path.with_suffix("")), *points, pointData=data)
