"""mpiland export: npz and csv round trips, orientation on a non-square grid, one-line errors."""

import csv

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
