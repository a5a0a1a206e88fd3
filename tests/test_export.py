"""mpiland export: npz, csv and vts round trips, orientation on a non-square grid, --log, one-line errors."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from mpiland.errors import SurfaceFileError
from mpiland.export import export_surface
from surfaces import write_surface
from util import cli


def square_free(tmp_path):
    x, y = np.linspace(-1, 1, 3), np.linspace(0, 1, 4)
    loss = 1.0 + x[:, None] + 10.0 * y[None, :] + 1e-13  # every digit must survive
    done = np.ones(loss.shape)
    done[2, 3] = 0
    path = write_surface(tmp_path / "s.h5", x, y, {"test_loss": loss, "test_acc": 0.5 + 0 * loss}, done=done)
    return path, x, y, loss, done.astype(bool)


def test_npz_round_trip_keeps_the_grid_and_marks_missing_points(tmp_path):
    path, x, y, loss, done = square_free(tmp_path)
    out = export_surface(path, "npz")
    assert out == tmp_path / "s.npz"
    with np.load(out) as z:
        np.testing.assert_array_equal(z["x"], x)
        np.testing.assert_array_equal(z["y"], y)
        assert z["test_loss"].shape == (3, 4) and str(z["x_label"]) == "direction x"
        np.testing.assert_array_equal(z["test_loss"][done], loss[done])
        assert np.isnan(z["test_loss"][2, 3]) and not z["done"][2, 3]


def test_csv_rows_are_points_with_every_digit(tmp_path):
    path, x, y, loss, done = square_free(tmp_path)
    out = export_surface(path, "csv", tmp_path / "t" / "s.csv", metrics=["test_loss"])
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["x", "y", "done", "test_loss"] and len(rows) == 12
    for r in rows:
        i, j = int(np.argmin(abs(x - float(r["x"])))), int(np.argmin(abs(y - float(r["y"]))))
        if done[i, j]:
            assert float(r["test_loss"]) == loss[i, j]
        else:
            assert r["done"] == "0" and r["test_loss"] == "nan"
    assert [float(r["x"]) for r in rows[:3]] == list(x)  # x varies fastest


def test_errors_are_one_line(tmp_path):
    path, *_ = square_free(tmp_path)
    with pytest.raises(SurfaceFileError, match="no metric 'test_nope'"):
        export_surface(path, "csv", metrics=["test_nope"])
    proc = cli("export", str(path), "--to", "npz", "--out", str(path))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: export to") and "Traceback" not in proc.stderr
    ok = cli("export", str(path), "--to", "csv")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("s.csv")


def refined(tmp_path):
    """A non-square 4 x 3 grid with a pending point, a point skipped by refinement and a divergent one."""
    x, y = np.array([-1.0, -0.25, 0.5, 2.0]), np.array([0.0, 0.3, 1.0])
    loss = 1.0 + x[:, None] ** 2 + 10.0 * y[None, :] + 1e-13
    loss[3, 0] = np.inf  # divergent: kept
    done = np.ones(loss.shape)
    done[0, 2], done[2, 1] = 0, 2
    path = write_surface(tmp_path / "r.h5", x, y, {"test_loss": loss, "test_acc": 1.0 / loss}, done=done)
    return path, x, y, loss, done


def read_vts(path):
    vtk = pytest.importorskip("vtkmodules.vtkIOXML", reason="the vtk package reads .vts files back (pip install vtk)")
    from vtkmodules.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLStructuredGridReader()
    reader.SetFileName(str(path))
    reader.Update()
    grid = reader.GetOutput()
    data = grid.GetPointData()
    arrays = {data.GetArrayName(k): vtk_to_numpy(data.GetArray(k)) for k in range(data.GetNumberOfArrays())}
    e = grid.GetExtent()
    dims = (e[1] - e[0] + 1, e[3] - e[2] + 1, e[5] - e[4] + 1)
    return dims, vtk_to_numpy(grid.GetPoints().GetData()), arrays


def test_vts_is_a_structured_grid_with_the_files_values_to_the_bit(tmp_path):
    pytest.importorskip("pyevtk", reason="--to vts needs pyevtk (pip install pyevtk)")
    path, x, y, loss, done = refined(tmp_path)
    out = export_surface(path, "vts")
    assert out == tmp_path / "r.vts" and out.read_bytes().startswith(b'<?xml version="1.0"?>\n<VTKFile type="Structured')
    dims, points, arrays = read_vts(out)
    assert dims == (4, 3, 1) and list(arrays) == ["test_loss", "test_acc", "done"]
    for i in range(4):
        for j in range(3):  # VTK point i + nx·j is (x[i], y[j]), on the plane z = 0
            assert tuple(points[i + 4 * j]) == (x[i], y[j], 0.0)
    expected = np.where(done == 1, loss, np.nan)
    assert arrays["test_loss"].dtype == np.float64
    assert arrays["test_loss"].tobytes() == expected.T.ravel().tobytes()  # NaN where pending or skipped, inf kept
    assert arrays["test_acc"].tobytes() == np.where(done == 1, 1.0 / loss, np.nan).T.ravel().tobytes()
    assert arrays["done"].dtype == np.uint8 and list(arrays["done"]) == list(done.T.ravel().astype(int))


def test_vts_log_and_metric_choice_and_a_curve_as_one_row(tmp_path):
    pytest.importorskip("pyevtk", reason="--to vts needs pyevtk (pip install pyevtk)")
    path, x, y, loss, done = refined(tmp_path)
    out = export_surface(path, "vts", tmp_path / "sub" / "log.vts", metrics=["test_loss"], log=True)
    _, _, arrays = read_vts(out)
    assert list(arrays) == ["log10_test_loss", "done"]
    assert arrays["log10_test_loss"].tobytes() == np.log10(np.where(done == 1, loss, np.nan)).T.ravel().tobytes()
    t = np.linspace(-0.5, 1.5, 5)
    curve = write_surface(tmp_path / "c.h5", t, None, {"test_loss": 2.0 + t}, done=np.ones(5))
    dims, points, arrays = read_vts(export_surface(curve, "vts"))
    assert dims == (5, 1, 1) and points.tolist() == [[v, 0.0, 0.0] for v in t]
    assert arrays["test_loss"].tolist() == list(2.0 + t)


def test_log_needs_a_positive_loss(tmp_path):
    path, *_ = refined(tmp_path)
    with pytest.raises(SurfaceFileError, match="none of test_acc is one; add --metric test_loss, or drop --log"):
        export_surface(path, "npz", metrics=["test_acc"], log=True)
    bad = write_surface(tmp_path / "b.h5", [0.0, 1.0], None, {"test_loss": [0.5, -0.1]}, done=np.ones(2))
    with pytest.raises(SurfaceFileError, match="test_loss has 1 values of zero or less"):
        export_surface(bad, "csv", log=True)
    rows = list(csv.DictReader(export_surface(path, "csv", log=True).open()))
    assert list(rows[0]) == ["x", "y", "done", "log10_test_loss", "test_acc"]


def test_a_missing_package_is_named_in_one_line(tmp_path):
    path, *_ = refined(tmp_path)
    for to, package in (("html", "plotly"), ("vts", "pyevtk")):
        code = (f"import sys; sys.modules[{package!r}] = None; "  # an import of it fails, as when not installed
                f"sys.argv = ['mpiland', 'export', {str(path)!r}, '--to', {to!r}]; "
                "from mpiland.cli import main; main()")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip() == (f"error: export --to {to} needs the {package} package; install it with "
                                       f"pip install {package} (or pip install 'mpiland[export]')")
        assert not (tmp_path / f"r.{to}").exists()
