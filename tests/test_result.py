"""Tests of mpiland.result, the Surface of the Python API, on files written by `mpiland run`.

Two small real runs (a 5 x 4 random-direction surface and a 7-point interpolation
between two digits MLPs) are shared by the module; a partly done copy of the
surface stands for a file a job is still writing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import mpiland.result as result
from mpiland import SCHEMA_VERSION
from mpiland.analysis import measures
from mpiland.analysis.summary import format_summary, summarize
from mpiland.demo import digits_mlp
from mpiland.errors import DependencyError, SurfaceFileError
from mpiland.surface.reader import load_surface
from util import PYTHON, REPO, cli, write_job

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("result")
    job = write_job(tmp, output="plane.h5", name="plane.toml")
    proc = cli("run", str(job))
    assert proc.returncode == 0, proc.stderr
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.save(digits_mlp(hidden=16).state_dict(), tmp / f"m{seed}.pt")
    job = write_job(tmp, output="path.h5", name="path.toml", grid="x = [-0.25, 1.25, 7]",
                    directions=f'kind = "interpolation"\nmodels = ["{tmp}/m0.pt", "{tmp}/m1.pt"]')
    proc = cli("run", str(job))
    assert proc.returncode == 0, proc.stderr
    partial = tmp / "partial.h5"
    shutil.copy(tmp / "plane.h5", partial)
    with h5py.File(partial, "r+") as f:
        done = f["done"][...]
        done[1::2, :] = 0  # rows x[1] and x[3] not done yet (their values stay in the file)
        f["done"][...] = done
    return {"plane": tmp / "plane.h5", "path": tmp / "path.h5", "partial": partial}


@pytest.fixture(scope="module")
def plane(files) -> result.Surface:
    return result.open(files["plane"])


@pytest.fixture(scope="module")
def path(files) -> result.Surface:
    return result.open(files["path"])


def test_open_gives_the_readers_data_and_a_short_repr(files, plane, path):
    ref = load_surface(files["plane"])
    assert isinstance(plane, result.Surface) and plane.shape == (5, 4) and plane.dims == 2
    np.testing.assert_array_equal(plane.x, ref.x)
    np.testing.assert_array_equal(plane.values("test_loss"), ref.values("test_loss"))
    assert list(plane.metrics) == ["test_loss", "test_acc", "test_loss_stderr"]
    text = repr(plane)
    assert text == (f"<mpiland.Surface 'test', 2D 5 x 4, 20/20 points done, "
                    f"metrics: test_loss, test_acc, test_loss_stderr; file {str(files['plane'])!r}>")
    assert "1D 7, 7/7 points done" in repr(path)
    assert "12/20 points done" in repr(result.open(files["partial"]))


def test_from_reader_shares_the_arrays(files, plane):
    ref = load_surface(files["plane"])
    s = result.from_reader(ref)
    assert type(s) is result.Surface and s.metrics is ref.metrics and s.path == ref.path
    assert result.from_reader(plane) is plane


def test_open_of_something_that_is_not_a_surface_file(tmp_path):
    with pytest.raises(SurfaceFileError, match="no such file"):
        result.open(tmp_path / "missing.h5")
    with pytest.raises(SurfaceFileError, match="is a directory"):
        result.open(tmp_path)
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(SurfaceFileError, match="not an HDF5 file"):
        result.open(str(tmp_path / "notes.h5"))


def test_plot_returns_figures_with_their_axes(plane, path):
    fig = plane.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # contour and its colourbar
    assert fig.axes[0].get_xlabel() == plane.x_label
    curve = path.plot()
    assert isinstance(curve, Figure) and len(curve.axes) == 2  # losses, and accuracy on a twin axis
    assert [f.axes[0].name for f in plane.plot("all")] == ["rectilinear", "rectilinear", "rectilinear", "3d"]
    assert [len(f.axes) for f in plane.plot("all")] == [2, 2, 2, 2]  # every 2D picture has its colourbar
    assert len(plane.plot("heatmap", "test_acc").axes) == 2


def test_a_figure_shows_itself_as_png(plane):
    png = plane.plot()._repr_png_()
    assert png.startswith(PNG_MAGIC) and len(png) > 5000


def test_plot_saves_with_out(tmp_path, plane, path):
    plane.plot("all", out=tmp_path / "pics", formats=("png", "svg"))
    names = sorted(p.name for p in (tmp_path / "pics").iterdir())
    assert names == sorted(f"plane_{k}_test_loss.{fmt}" for k in ("contour", "contourf", "heatmap", "surface3d")
                           for fmt in ("png", "svg"))
    assert (tmp_path / "pics" / "plane_heatmap_test_loss.png").read_bytes().startswith(PNG_MAGIC)
    path.plot(out=tmp_path / "curve.svg")
    assert b"<svg" in (tmp_path / "curve.svg").read_bytes()[:2000]
    plane.plot("all", "test_acc", out=tmp_path / "acc.pdf")
    assert sorted(p.name for p in tmp_path.glob("acc_*.pdf")) == [
        "acc_contour.pdf", "acc_contourf.pdf", "acc_heatmap.pdf", "acc_surface3d.pdf"]
    assert (tmp_path / "acc_contour.pdf").read_bytes().startswith(b"%PDF")


def test_plot_errors(tmp_path, plane, path):
    with pytest.raises(SurfaceFileError, match="2D surface, so plot kind 'curve' does not apply"):
        plane.plot("curve")
    with pytest.raises(SurfaceFileError, match="no metric 'train_loss'; available metrics: test_loss"):
        path.plot(metric="train_loss")
    with pytest.raises(SurfaceFileError, match="unknown plot kind 'bars'"):
        plane.plot("bars")
    with pytest.raises(SurfaceFileError, match="unsupported suffix .jpg"):
        plane.plot(out=tmp_path / "x.jpg")


def test_plotting_needs_neither_pyplot_nor_torch(files):
    code = ("import sys, mpiland.result as r\n"
            f"s = r.open({str(files['plane'])!r})\n"
            "s.plot('all'); s.flatness(); s.summary()\n"
            "print(sorted(m for m in ('torch', 'mpi4py', 'matplotlib.pyplot') if m in sys.modules))\n")
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_barrier_between_the_end_models(path):
    assert path.endpoints == (0.0, 1.0)
    b = path.barrier()
    assert b == {"metric": "test_loss", **measures.barrier(path.x, path.values("test_loss"), (0.0, 1.0))}
    # by hand: the points strictly between t=0 and t=1, against the straight line between their losses
    t, loss = path.x, path.values("test_loss")
    ends = [int(np.argmin(abs(t - e))) for e in (0.0, 1.0)]
    inner = (t > 0) & (t < 1)
    chord = loss[ends[0]] + t * (loss[ends[1]] - loss[ends[0]])
    k = int(np.argmax(np.where(inner, loss - chord, -np.inf)))
    assert b["height"] == pytest.approx(loss[k] - chord[k], rel=1e-12, abs=1e-15)
    assert b["at"] == t[k] and (b["t0"], b["t1"]) == (0.0, 1.0) and b["points"] == 5
    assert b["height"] == pytest.approx(path.attrs["test_loss_barrier"], rel=1e-12, abs=1e-15)
    assert path.barrier("test_acc")["metric"] == "test_acc"


def test_barrier_errors(plane, path):
    with pytest.raises(SurfaceFileError, match="barrier\\(\\) needs a 1D path between two models, "
                                               "this surface is 2D"):
        plane.barrier()
    with pytest.raises(SurfaceFileError, match="no metric 'train_loss'"):
        path.barrier("train_loss")


def test_flatness(plane, path):
    f = plane.flatness()
    assert f == measures.flatness(plane, "test_loss")
    assert f["metric"] == "test_loss" and f["basin_area"] is not None
    assert f["curvature"]["x"] == pytest.approx(plane.attrs["test_loss_curvature_x"], rel=1e-12)
    narrow = plane.flatness(epsilon=0.0, radius=0.5)
    assert narrow["threshold"] == narrow["loss"] and narrow["radius"] == 0.5
    assert narrow["basin_area"]["points"] < f["basin_area"]["points"]
    assert path.flatness()["basin_area"] is None and path.flatness()["centre"] == (0.0,)
    with pytest.raises(SurfaceFileError, match="epsilon must be a finite number"):
        plane.flatness(epsilon=-1)
    with pytest.raises(SurfaceFileError, match="no metric 'train_loss'"):
        plane.flatness("train_loss")


def test_to_xarray(files):
    pytest.importorskip("xarray")
    s = result.open(files["partial"])
    ds = s.to_xarray()
    assert dict(ds.sizes) == {"x": 5, "y": 4}
    np.testing.assert_array_equal(ds["x"].values, s.x)
    np.testing.assert_array_equal(ds["y"].values, s.y)
    assert ds["x"].attrs["long_name"] == "random direction x (filter-normalised)"
    assert ds["y"].attrs["long_name"] == s.y_label
    assert set(ds.data_vars) == {"test_loss", "test_acc", "test_loss_stderr", "done", "seconds"}
    assert ds["test_loss"].dims == ("x", "y")
    with h5py.File(files["partial"], "r") as f:
        raw, done = f["test_loss"][...], f["done"][...].astype(bool)
        listed = [str(m) for m in f.attrs["metrics"]]
    loss = ds["test_loss"].values
    assert np.isnan(loss[1]).all() and np.isnan(loss[3]).all() and not np.isnan(raw).any()
    np.testing.assert_array_equal(loss[done], raw[done])
    np.testing.assert_array_equal(ds["done"].values, done)
    assert ds["done"].dtype == bool and int(ds["done"].sum()) == 12
    assert float(ds["test_loss"].sel(x=0.0, y=s.y[2])) == raw[2, 2]
    assert ds.attrs["mpiland_schema"] == SCHEMA_VERSION and ds.attrs["dims"] == 2
    assert ds.attrs["metrics"] == listed == ["test_loss", "test_loss_stderr", "test_acc"]  # as in the file
    assert ds.attrs["source"] == str(files["partial"])
    json.dumps(ds.attrs)
    assert all(isinstance(v, (str, int, float, list)) for v in ds.attrs.values())


def test_to_xarray_of_a_1d_path(path):
    pytest.importorskip("xarray")
    ds = path.to_xarray()
    assert dict(ds.sizes) == {"t": 7} and "y" not in ds.coords  # a path between two models: t
    assert ds["t"].attrs["long_name"] == path.x_label
    np.testing.assert_array_equal(ds["test_acc"].values, path.values("test_acc"))
    assert ds.attrs["endpoints"] == [0.0, 1.0]
    assert ds.attrs["flatness_radius"] == [0.25, 0.25]  # derived attributes come along, one per model


def test_to_xarray_without_xarray(monkeypatch, plane):
    monkeypatch.setitem(sys.modules, "xarray", None)  # what an absent package looks like to import
    with pytest.raises(DependencyError, match="^to_xarray needs xarray: pip install xarray$"):
        plane.to_xarray()


def test_summary_is_the_info_text(files):
    s = result.open(files["partial"])
    text = s.summary()
    assert text == format_summary(summarize(files["partial"]))
    assert "12/20 points done (60.0%)" in text
    assert result.open(files["path"]).summary(epsilon=0.5).count("ε 0.5") == 2  # a flatness row per model
    info = cli("info", str(files["path"]))
    assert info.returncode == 0 and info.stdout.rstrip("\n") == result.open(files["path"]).summary()


def test_a_notebook_shows_the_figure(files):
    """In Jupyter the figure of `surf.plot()` is displayed as an image, without pyplot."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"import mpiland.result as r\nsurf = r.open({str(files['path'])!r})\n"
                                          "surf.plot()"),
                nbformat.v4.new_code_cell("import sys\n'matplotlib.pyplot' in sys.modules")]
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3").execute()
    shown = [o for o in nb.cells[0].outputs if o["output_type"] == "execute_result"]
    assert len(shown) == 1 and "image/png" in shown[0]["data"]
    assert nb.cells[1].outputs[0]["data"]["text/plain"] == "False"
