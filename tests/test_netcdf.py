"""The surface file is a netCDF-4 file: named dimensions, right orientation, attributes; schema-1 files upgrade."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import mpiland
from mpiland.directions import random_directions
from mpiland.grid import Grid
from mpiland.spec import DirectionsSpec
from mpiland.surface.netcdf import upgrade
from mpiland.surface.writer import SurfaceWriter, create

from util import cli, write_job

xr = pytest.importorskip("xarray")
pytest.importorskip("h5netcdf")


def _known_file(path: Path, x: np.ndarray, y: np.ndarray | None, endpoints: bool = False) -> None:
    """A surface file made by the writer, holding L = 1 + x + 10 y (and acc = x) at every point."""
    model = torch.nn.Linear(3, 2)
    directions = random_directions(model, DirectionsSpec(seed=0), 1 if y is None else 2)
    if endpoints:
        directions = dataclasses.replace(directions, endpoints=(0.0, 1.0))
    grid = Grid(x, y)
    metrics = ["test_loss", "test_acc"]
    job = {"loss": {"name": "cross_entropy"}, "name": "known"}
    create(path, grid=grid, metrics=metrics, splits=["test"], directions=directions, fingerprint="0" * 64,
           job_text="", job_json=json.dumps(job), labels=("alpha", "beta" if y is not None else ""))
    points = np.arange(grid.size)
    c = grid.coords(points)
    loss = 1 + c[:, 0] + (10 * c[:, 1] if y is not None else 0)
    writer = SurfaceWriter(path)
    writer.write(points, {"test_loss": loss, "test_acc": c[:, 0]}, np.zeros(grid.size))
    writer.close()


def test_xarray_sees_named_dimensions_in_mpiland_orientation(tmp_path: Path) -> None:
    x, y = np.array([-1.0, 0.0, 1.0]), np.array([0.0, 0.5, 1.0, 1.5, 2.0])
    _known_file(tmp_path / "s.h5", x, y)
    with xr.open_dataset(tmp_path / "s.h5", engine="h5netcdf") as ds:
        assert dict(ds.sizes) == {"x": 3, "y": 5}
        assert ds["test_loss"].dims == ("x", "y")
        np.testing.assert_array_equal(ds["x"].values, x)
        np.testing.assert_array_equal(ds["y"].values, y)
        for xi in x:
            for yj in y:
                assert float(ds["test_loss"].sel(x=xi, y=yj)) == 1 + xi + 10 * yj
        assert ds["test_loss"].attrs["units"] == "nat"
        assert ds["test_loss"].attrs["long_name"] == "mean loss on the test split"
        assert ds["test_acc"].attrs["units"] == "1"
        assert ds["x"].attrs["long_name"] == "alpha"
        assert list(ds["done"].attrs["flag_values"]) == [0, 1, 2]
        assert int(ds["done"].sum()) == 15
        assert ds["xcoordinates"].dims == ("x",)
        assert ds.attrs["mpiland_schema"] == mpiland.SCHEMA_VERSION == 2
    surf = mpiland.open(tmp_path / "s.h5")
    assert "x" not in surf.metrics and "y" not in surf.metrics
    mine = surf.to_xarray()
    with xr.open_dataset(tmp_path / "s.h5", engine="h5netcdf") as ds:
        for name in ("test_loss", "test_acc"):
            xr.testing.assert_identical(mine[name].drop_attrs(), ds[name].drop_attrs())
            assert mine[name].attrs == {k: ds[name].attrs[k] for k in ("long_name", "units")}


def test_a_path_between_models_has_dimension_t(tmp_path: Path) -> None:
    t = np.linspace(0, 1, 4)
    _known_file(tmp_path / "p.h5", t, None, endpoints=True)
    with xr.open_dataset(tmp_path / "p.h5", engine="h5netcdf") as ds:
        assert ds["test_loss"].dims == ("t",)
        np.testing.assert_array_equal(ds["test_loss"].values, 1 + t)
    assert mpiland.open(tmp_path / "p.h5").to_xarray()["test_loss"].dims == ("t",)


def _as_schema_1(src: Path, dst: Path) -> None:
    """A copy of ``src`` laid out as schema 1 wrote it: the same members, no dimension scales."""
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key, value in f.attrs.items():
            g.attrs[key] = value
        g.attrs["mpiland_schema"] = 1
        for name, obj in f.items():
            if isinstance(obj, h5py.Group):
                f.copy(obj, g, name=name)
            elif name not in ("x", "y", "t"):
                g.create_dataset(name, data=obj[()])


def test_schema_1_files_open_and_a_resume_upgrades_them(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    assert cli("run", str(job)).returncode == 0
    full = mpiland.open(tmp_path / "surface.h5")
    _as_schema_1(tmp_path / "surface.h5", tmp_path / "old.h5")
    with h5py.File(tmp_path / "old.h5", "r+") as f:  # half done, as a run stopped midway leaves it
        f["done"][2:, :] = 0
        for m in full.metrics:
            f[m][2:, :] = np.nan
    old = mpiland.open(tmp_path / "old.h5")
    assert old.schema == 1 and int(old.done.sum()) == 8 and list(old.metrics) == list(full.metrics)
    assert re.search(r"^schema +1 ", cli("info", str(tmp_path / "old.h5")).stdout, re.M)
    (tmp_path / "old.h5").rename(tmp_path / "surface.h5")
    resumed = cli("run", str(job))
    assert resumed.returncode == 0, resumed.stderr
    assert "upgraded" in resumed.stderr and "resuming" in resumed.stderr
    new = mpiland.open(tmp_path / "surface.h5")
    assert new.schema == 2 and new.done.all()
    for m in full.metrics:
        np.testing.assert_array_equal(new.values(m), full.values(m))
    with xr.open_dataset(tmp_path / "surface.h5", engine="h5netcdf") as ds:
        assert ds["test_loss"].dims == ("x", "y")
    assert not upgrade(tmp_path / "surface.h5")


@pytest.mark.skipif(shutil.which("ncdump") is None, reason="netCDF-C's ncdump is not installed (Debian: netcdf-bin)")
def test_netcdf_c_reads_the_file(tmp_path: Path) -> None:
    _known_file(tmp_path / "s.h5", np.array([-1.0, 0.0, 1.0]), np.array([0.0, 1.0]))
    header = subprocess.run(["ncdump", "-h", str(tmp_path / "s.h5")], capture_output=True, text=True, check=True).stdout
    assert re.search(r"dimensions:\s+x = 3 ;\s+y = 2 ;", header)
    assert "double test_loss(x, y) ;" in header and 'test_loss:units = "nat"' in header
    values = subprocess.run(["ncdump", "-v", "test_loss", str(tmp_path / "s.h5")], capture_output=True, text=True,
                            check=True).stdout
    data = values.split("data:")[1]
    numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", data.split("test_loss =")[1].split(";")[0])]
    assert numbers == [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]  # row-major (x, y): L(x_i, y_j) at [i, j]
