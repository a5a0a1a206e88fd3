"""Tests of mpiland.report: reading surface files and summarising them for `mpiland info`."""

from __future__ import annotations

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpiland.errors import SurfaceFileError
from mpiland.report import SCHEMA_VERSION, format_summary, load_surface, summarize

JOB = {
    "name": "digits-mlp",
    "model": {"factory": "mpiland.models:mlp", "kwargs": {}, "checkpoint": "ckpt/mlp.pt", "seed": 0},
    "data": {"dataset": "digits", "splits": ["train", "test"]},
    "directions": {"kind": "random", "norm": "filter", "seed": 7, "ignore": "biasbn"},
    "grid": {"x": {"min": -1.0, "max": 1.0, "num": 11}, "y": {"min": -0.5, "max": 1.0, "num": 7}},
}


def write_surface(path, x, y=None, metrics=None, done=None, seconds=None, mpiland=True,
                  schema=SCHEMA_VERSION, job=JOB, labels=True):
    """Write a small surface file the way `mpiland run` (or the reference tool) lays it out."""
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.asarray(x, dtype=np.float64)
        if y is not None:
            f["ycoordinates"] = np.asarray(y, dtype=np.float64)
        for name, arr in (metrics or {}).items():
            f[name] = np.asarray(arr, dtype=np.float64)
        if done is not None:
            f["done"] = np.asarray(done, dtype=np.uint8)
        if seconds is not None:
            f["seconds"] = np.asarray(seconds, dtype=np.float64)
        if mpiland:
            f.attrs["mpiland_schema"] = schema
            f.attrs["mpiland_version"] = "0.1.0"
            f.attrs["created"] = "2024-05-01T12:00:00+00:00"
            f.attrs["fingerprint"] = "ab12cd34ef56" + "0" * 52
            f.attrs["dims"] = 1 if y is None else 2
            names = list(metrics or {})
            f.attrs["metrics"] = names
            f.attrs["splits"] = list(dict.fromkeys(n.split("_")[0] for n in names))
            if labels:
                f.attrs["x_label"] = "random direction x (filter-normalised)"
                if y is not None:
                    f.attrs["y_label"] = "random direction y (filter-normalised)"
            if job is not None:
                f.attrs["job_json"] = json.dumps(job)
    return path


def bowl_2d(nx=11, ny=7):
    x = np.linspace(-1, 1, nx)
    y = np.linspace(-0.5, 1.0, ny)
    X, Y = np.meshgrid(x, y, indexing="ij")  # [i, j] at (x[i], y[j])
    loss = 0.2 + (X - 0.4) ** 2 + 3 * (Y - 0.25) ** 2
    acc = 1.0 - 0.3 * ((X + 0.2) ** 2 + (Y - 0.5) ** 2)
    return x, y, loss, acc


@pytest.fixture
def full_2d(tmp_path):
    x, y, loss, acc = bowl_2d()
    secs = np.full(loss.shape, 0.5)
    metrics = {"train_loss": loss + 0.1, "train_acc": acc, "test_loss": loss, "test_acc": acc,
               "test_loss_stderr": 0.01 * loss}
    return write_surface(tmp_path / "surf.h5", x, y, metrics, done=np.ones(loss.shape), seconds=secs)


def test_full_2d_summary(full_2d):
    s = summarize(full_2d)
    x, y, loss, acc = bowl_2d()
    assert s["schema"] == 1 and s["schema_text"] == "1"
    assert s["mpiland_version"] == "0.1.0"
    assert s["fingerprint"] == "ab12cd34ef56"
    assert s["dims"] == 2 and s["shape"] == (11, 7)
    assert s["progress"] == {"done": 77, "total": 77, "percent": 100.0}
    assert s["seconds"]["total"] == pytest.approx(77 * 0.5)
    assert s["seconds"]["mean"] == pytest.approx(0.5)
    m = s["metrics"]["test_loss"]
    i, j = np.unravel_index(np.argmin(loss), loss.shape)
    assert m["min"] == pytest.approx(loss.min())
    assert m["max"] == pytest.approx(loss.max())
    assert m["argmin"] == pytest.approx((x[i], y[j]))
    assert m["argmin"] == pytest.approx((0.4, 0.25))
    a = s["metrics"]["test_acc"]
    assert a["argmax"] == pytest.approx((-0.2, 0.5))
    assert a["max"] == pytest.approx(1.0)
    assert s["metrics"]["test_loss"]["argmax"] is None  # only accuracies get the max's coordinates
    assert list(s["metrics"])[:2] == ["train_loss", "train_acc"]  # split order of the file
    assert s["nonfinite"] == 0
    job = s["job"]
    assert job["name"] == "digits-mlp"
    assert job["model_factory"] == "mpiland.models:mlp"
    assert job["checkpoint"] == "ckpt/mlp.pt"
    assert job["directions"] == {"kind": "random", "norm": "filter", "seed": 7}
    assert job["splits"] == ["train", "test"]
    assert job["grid"]["x"] == "[-1, 1] x 11"


def test_format_summary_text(full_2d):
    text = format_summary(summarize(full_2d))
    lines = {line.split()[0]: line for line in text.splitlines()}
    assert "77/77 points done (100.0%)" in lines["progress"]
    assert "min 0.2 at (0.4, 0.25)" in lines["test_loss"]
    assert "max 1 at (-0.2, 0.5)" in lines["test_acc"]
    assert "ab12cd34ef56" in lines["fingerprint"]
    assert "digits-mlp" in lines["job"]
    assert "random, norm filter, seed 7" in lines["directions"]
    assert "38.5 s total, 0.5 s per point" in lines["time"]
    assert "written by mpiland 0.1.0" in lines["schema"]


def test_partial_progress_and_seconds(tmp_path):
    x, y, loss, acc = bowl_2d()
    done = np.zeros(loss.shape, dtype=bool)
    done.flat[:30] = True
    loss = np.where(done, loss, np.nan)
    secs = np.where(done, 2.0, np.nan)
    secs.flat[0] = 4.0
    path = write_surface(tmp_path / "p.h5", x, y, {"test_loss": loss}, done=done, seconds=secs)
    s = summarize(path)
    assert s["progress"]["done"] == 30 and s["progress"]["total"] == 77
    assert s["progress"]["percent"] == pytest.approx(100 * 30 / 77)
    assert s["seconds"]["total"] == pytest.approx(29 * 2.0 + 4.0)
    assert s["seconds"]["mean"] == pytest.approx((29 * 2.0 + 4.0) / 30)
    m = s["metrics"]["test_loss"]
    ref = np.where(done, loss, np.inf)
    i, j = np.unravel_index(np.argmin(ref), ref.shape)
    assert m["argmin"] == pytest.approx((x[i], y[j]))
    assert m["finite"] == 30


def test_nonfinite_points_counted(tmp_path):
    x, y, loss, acc = bowl_2d()
    loss = loss.copy()
    loss[0, 0] = np.inf
    loss[1, 0] = np.nan
    loss[2, 0] = -np.inf
    stderr = np.full(loss.shape, np.nan)  # single batch: NaN stderr is normal, not divergence
    path = write_surface(tmp_path / "n.h5", x, y, {"test_loss": loss, "test_loss_stderr": stderr},
                         done=np.ones(loss.shape))
    s = summarize(path)
    assert s["nonfinite"] == 3
    assert s["metrics"]["test_loss"]["nonfinite"] == 3
    assert s["metrics"]["test_loss"]["min"] == pytest.approx(0.2)
    assert s["metrics"]["test_loss_stderr"]["min"] is None
    assert "3 non-finite" in format_summary(s)


def test_one_dimensional(tmp_path):
    x = np.linspace(-1, 1, 21)
    loss = (x - 0.3) ** 2
    job = dict(JOB, grid={"x": {"min": -1.0, "max": 1.0, "num": 21}, "y": None})
    path = write_surface(tmp_path / "c.h5", x, None, {"test_loss": loss}, done=np.ones(21), job=job)
    s = summarize(path)
    assert s["dims"] == 1 and s["shape"] == (21,)
    assert s["y"] is None
    assert s["metrics"]["test_loss"]["argmin"] == pytest.approx((0.3,))
    assert "x=0.3" in format_summary(s)
    assert s["job"]["grid"] == {"x": "[-1, 1] x 21"}


def test_reference_tool_file(tmp_path):
    """loss-landscape files: no attributes, no done, -1 placeholders, a dir_file string dataset."""
    x, y, loss, acc = bowl_2d()
    train_loss = -np.ones(loss.shape)
    train_acc = -np.ones(loss.shape)
    train_loss.flat[:50] = loss.flat[:50]
    train_acc.flat[:50] = 100 * acc.flat[:50]
    path = write_surface(tmp_path / "ref.h5", x, y, {"train_loss": train_loss, "train_acc": train_acc},
                         mpiland=False)
    with h5py.File(path, "a") as f:
        f["dir_file"] = "model.h5_weights_xignore=biasbn_xnorm=filter.h5"
    s = summarize(path)
    assert s["schema"] is None and s["schema_text"] == "reference-tool file"
    assert s["job"] is None and s["fingerprint"] is None
    assert s["progress"]["done"] == 50
    assert set(s["metrics"]) == {"train_loss", "train_acc"}
    assert s["metrics"]["train_loss"]["min"] == pytest.approx(loss.flat[:50].min())
    assert s["metrics"]["train_acc"]["min"] >= 0  # the -1 placeholders are not values
    text = format_summary(s)
    assert "reference-tool file" in text and "50/77" in text
    assert load_surface(path).x_label == "x"


def test_errors(tmp_path):
    with pytest.raises(SurfaceFileError, match="no such file"):
        summarize(tmp_path / "missing.h5")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(SurfaceFileError, match="not an HDF5 file"):
        summarize(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["weights"] = np.zeros(3)
    with pytest.raises(SurfaceFileError, match="not a surface file"):
        summarize(tmp_path / "other.h5")
    x, y, loss, acc = bowl_2d()
    path = write_surface(tmp_path / "new.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                         schema=SCHEMA_VERSION + 1)
    with pytest.raises(SurfaceFileError, match=r"schema 2, newer .*upgrade mpiland"):
        summarize(path)
    with pytest.raises(SurfaceFileError, match="is a directory"):
        summarize(tmp_path)


def test_nothing_done_yet(tmp_path):
    x, y, loss, acc = bowl_2d()
    path = write_surface(tmp_path / "e.h5", x, y, {"test_loss": np.full(loss.shape, np.nan)},
                         done=np.zeros(loss.shape), seconds=np.full(loss.shape, np.nan))
    s = summarize(path)
    assert s["progress"] == {"done": 0, "total": 77, "percent": 0.0}
    assert s["seconds"] is None
    assert s["metrics"]["test_loss"]["min"] is None
    assert "no finite value yet" in format_summary(s)


def test_report_stays_light():
    code = ("import sys, mpiland.report; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
