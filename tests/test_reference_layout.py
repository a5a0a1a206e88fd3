"""The orientation of 2D surfaces: the reference tool's files read right, and mpiland's own layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from mpiland.surface.reader import load_surface
from surfaces import write_surface


def plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """L = 1 + x + 10 y as [i, j] at (x_i, y_j): every value says where it belongs."""
    return 1.0 + x[:, None] + 10.0 * y[None, :]


def crunch(path, x, y, name="train_loss"):
    """Write a surface file as tomgoldstein/loss-landscape's crunch does: the array is declared (nx, ny),
    the points are enumerated in np.meshgrid(x, y) ravel order, and point number n is stored at flat index n."""
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        losses = -np.ones((len(x), len(y)))
        xs, ys = np.meshgrid(x, y)
        coords = np.c_[xs.ravel(), ys.ravel()]
        flat = losses.ravel()
        for n, (a, b) in enumerate(coords):
            flat[n] = 1.0 + a + 10.0 * b
        f[name] = flat.reshape(losses.shape)
    return path


@pytest.mark.parametrize("nx, ny", [(3, 3), (3, 4), (5, 2)])
def test_reference_tool_files_are_read_in_their_orientation(tmp_path, nx, ny):
    x, y = np.linspace(-1, 1, nx), np.linspace(0, 1, ny)
    surf = load_surface(crunch(tmp_path / "ref.h5", x, y))
    assert surf.reference_tool
    np.testing.assert_array_equal(surf.metrics["train_loss"], plane(x, y))
    if nx == ny == 3:
        # x = 1, y = 0; read as stored, [2, 0] would be the value at x = -1, y = 1 (10)
        assert surf.metrics["train_loss"][2, 0] == 2.0


def test_the_reference_fixture_writes_as_crunch_does(tmp_path):
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 1, 4)
    ours = write_surface(tmp_path / "fixture.h5", x, y, {"train_loss": plane(x, y)}, mpiland=False)
    theirs = crunch(tmp_path / "crunch.h5", x, y)
    with h5py.File(ours) as a, h5py.File(theirs) as b:
        np.testing.assert_array_equal(a["train_loss"][()], b["train_loss"][()])


def test_mpiland_files_store_x_along_the_first_axis(tmp_path):
    """mpiland's own layout (docs/schema.md): [i, j] at (x_i, y_j), the order its (nx, ny) shape declares.
    The reference tool's plot_2D draws contour(meshgrid(x, y), Z) with Z as stored, which needs (ny, nx):
    it must be given Z.T for an mpiland file (the README says so)."""
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 1, 4)
    path = write_surface(tmp_path / "ours.h5", x, y, {"train_loss": plane(x, y)})
    with h5py.File(path) as f:
        z = f["train_loss"][()]
    assert z.shape == (3, 4) and z[2, 0] == 2.0
    xs, ys = np.meshgrid(x, y)
    np.testing.assert_array_equal(z.T, 1.0 + xs + 10.0 * ys)
    np.testing.assert_array_equal(load_surface(path).metrics["train_loss"], plane(x, y))
