"""Tests of mpiland.surface.reader and mpiland.analysis: reading surface files, measuring them and
summarising them for `mpiland info`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import h5py
import numpy as np
import pytest

from mpiland.errors import SurfaceFileError
from mpiland import SCHEMA_VERSION
from mpiland.analysis.measures import barrier, derived_attributes, flatness
from mpiland.analysis.summary import format_summary, summarize
from mpiland.surface.reader import load_surface
from surfaces import JOB, T, bump_path, quadratic, write_curve_surface, write_pca_surface, write_surface


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
    assert s["schema"] == SCHEMA_VERSION and s["schema_text"] == str(SCHEMA_VERSION)
    assert s["mpiland_version"] == "0.1.0"
    assert s["fingerprint"] == "ab12cd34ef56"
    assert s["dims"] == 2 and s["shape"] == (11, 7)
    assert s["progress"] == {"done": 77, "skipped": 0, "total": 77, "percent": 100.0}
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
    with pytest.raises(SurfaceFileError, match=rf"schema {SCHEMA_VERSION + 1}, newer .*upgrade mpiland"):
        summarize(path)
    with pytest.raises(SurfaceFileError, match="is a directory"):
        summarize(tmp_path)


def test_nothing_done_yet(tmp_path):
    x, y, loss, acc = bowl_2d()
    path = write_surface(tmp_path / "e.h5", x, y, {"test_loss": np.full(loss.shape, np.nan)},
                         done=np.zeros(loss.shape), seconds=np.full(loss.shape, np.nan))
    s = summarize(path)
    assert s["progress"] == {"done": 0, "skipped": 0, "total": 77, "percent": 0.0}
    assert s["seconds"] is None
    assert s["metrics"]["test_loss"]["min"] is None
    assert "no finite value yet" in format_summary(s)


def test_report_stays_light():
    code = ("import sys, mpiland.surface.reader, mpiland.analysis.measures, mpiland.analysis.summary; "
            "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------
# new schema members: models, trajectory, endpoints, line_ and Hessian metrics

@pytest.fixture
def curve_file(tmp_path):
    return write_curve_surface(tmp_path / "bezier.h5")


@pytest.fixture
def pca_file(tmp_path):
    return write_pca_surface(tmp_path / "pca.h5")


def test_barrier_convex_path():
    t = np.linspace(0, 1, 21)
    b = barrier(t, 1.0 + (t - 0.5) ** 2)
    assert b["height"] <= 0
    assert b["height"] == pytest.approx((0.05 - 0.5) ** 2 - 0.25)  # next to the ends, below the chord
    assert b["at"] == pytest.approx(0.05)
    assert (b["t0"], b["t1"], b["loss0"], b["loss1"]) == pytest.approx((0.0, 1.0, 1.25, 1.25))
    assert b["monotonic"] is False and b["ignored"] == 0 and b["points"] == 21


def test_barrier_of_a_bump_between_extrapolated_end_points():
    b = barrier(T, bump_path(), endpoints=(0.0, 1.0))
    assert b["height"] == pytest.approx(0.3, abs=1e-12)
    assert b["at"] == pytest.approx(0.45)
    assert (b["t0"], b["t1"]) == pytest.approx((0.0, 1.0))
    assert (b["loss0"], b["loss1"]) == pytest.approx((1.0, 1.5))
    assert b["points"] == 21  # the 20 extrapolated points are not used
    whole = barrier(T, bump_path())  # without end points: the grid ends, walls included
    assert (whole["t0"], whole["t1"]) == pytest.approx((-0.5, 1.5))
    assert whole["points"] == 41 and whole["height"] != pytest.approx(0.3)
    # end points given in reverse order: same barrier, the order of t0/t1 kept
    rev = barrier(T, bump_path(), endpoints=(1.0, 0.0))
    assert rev["height"] == pytest.approx(0.3) and (rev["t0"], rev["t1"]) == pytest.approx((1.0, 0.0))


def test_barrier_monotonic():
    t = np.linspace(0, 1, 11)
    down = 2.0 - t
    down[3:6] = down[3]  # a flat stretch is still monotonic
    assert barrier(t, down + 1e-13 * np.cos(40 * t))["monotonic"] is True
    assert barrier(t, np.exp(t))["monotonic"] is True
    assert barrier(t, np.exp(t))["height"] < 0  # convex
    up_down = np.exp(t)
    up_down[-1] = 1.0
    assert barrier(t, up_down)["monotonic"] is False
    # only the part between the end points counts: a wall outside does not break monotonicity
    assert barrier(T, 1.0 + 0.5 * T + 5.0 * (T > 1.01), endpoints=(0, 1))["monotonic"] is True


def test_barrier_ignores_nonfinite_points():
    loss = bump_path()
    i = {round(float(v), 2): k for k, v in enumerate(T)}
    loss[i[0.2]], loss[i[0.8]], loss[i[-0.4]] = np.nan, np.inf, np.nan
    b = barrier(T, loss, endpoints=(0, 1))
    assert b["ignored"] == 2  # the NaN at t=-0.4 is outside the end points
    assert b["height"] == pytest.approx(0.3) and b["points"] == 19
    loss[i[0.0]] = np.nan  # the end model itself: the nearest finite point stands in
    b = barrier(T, loss, endpoints=(0, 1))
    assert b["t0"] == pytest.approx(0.05) and b["ignored"] == 3


def test_barrier_errors():
    t = np.linspace(0, 1, 5)
    with pytest.raises(SurfaceFileError, match="5 coordinates but 4 loss values"):
        barrier(t, t[:4])
    with pytest.raises(SurfaceFileError, match="1 finite loss values, at least 2"):
        barrier(t, np.array([1.0, np.nan, np.nan, np.inf, np.nan]))
    with pytest.raises(SurfaceFileError, match="end point t=3.0 lies outside"):
        barrier(t, t, endpoints=(0.0, 3.0))
    with pytest.raises(SurfaceFileError, match="same finite grid point"):
        barrier(t, t, endpoints=(0.5, 0.52))
    two = barrier(t[:2], t[:2])
    assert two["height"] is None and two["at"] is None and two["monotonic"] is True


def test_flatness_of_a_quadratic(tmp_path):
    a, b, eps = 1.5, 4.0, 0.1
    x, y, loss = quadratic(a, b)
    s = load_surface(write_surface(tmp_path / "q.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape)))
    f = flatness(s, epsilon=eps)
    assert f["metric"] == "test_loss" and f["centre"] == (0.0, 0.0) and f["loss"] == pytest.approx(0.25)
    assert f["threshold"] == pytest.approx(0.35)
    assert f["curvature"]["x"] == pytest.approx(2 * a, rel=1e-9)
    assert f["curvature"]["y"] == pytest.approx(2 * b, rel=1e-9)
    h = x[1] - x[0]
    for axis, k in (("x", a), ("y", b)):
        w = f["basin_width"][axis]
        assert w["width"] == pytest.approx(2 * math.sqrt(eps / k), abs=h / 4)
        assert w["lower"] == pytest.approx(-w["upper"]) and w["at_edge"] is False
    area = f["basin_area"]
    assert area["area"] == pytest.approx(math.pi * eps / math.sqrt(a * b), rel=0.03)
    assert area["fraction"] == pytest.approx(area["area"] / (2 * 1.6))
    assert area["at_edge"] is False
    assert f["radius"] == pytest.approx(0.8)  # the largest disc inside [-1, 1] x [-0.8, 0.8]
    assert f["sharpness"] == pytest.approx(b * 0.8 ** 2)  # the steeper axis, at the rim
    assert f["sharpness_at"] == pytest.approx((0.0, 0.8)) or f["sharpness_at"] == pytest.approx((0.0, -0.8))
    assert f["sharpness_relative"] == pytest.approx(100 * b * 0.64 / 1.25)
    r = flatness(s, epsilon=eps, radius=0.5)
    assert r["sharpness"] == pytest.approx(b * 0.25) and r["radius"] == 0.5
    wide = flatness(s, epsilon=100.0)  # everything is inside: lower bounds flagged
    assert wide["basin_width"]["x"] == {"width": 2.0, "lower": -1.0, "upper": 1.0, "at_edge": True,
                                        "lower_bound": True}
    assert wide["basin_area"]["fraction"] == pytest.approx(1.0) and wide["basin_area"]["at_edge"] is True


def test_flatness_counts_only_the_centre_basin(tmp_path):
    """Two equally deep wells: the basin is the one around the centre, not both."""
    x = np.linspace(-1, 1, 201)
    y = np.linspace(-0.5, 0.5, 101)
    X, Y = np.meshgrid(x, y, indexing="ij")
    loss = 0.1 + 10 * np.minimum(X ** 2, (X - 0.7) ** 2) + 10 * Y ** 2
    s = load_surface(write_surface(tmp_path / "w.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape)))
    f = flatness(s, epsilon=0.1)
    assert f["basin_area"]["area"] == pytest.approx(math.pi * 0.1 / 10, rel=0.03)
    assert f["basin_width"]["x"]["width"] == pytest.approx(0.2, abs=0.003)


def test_flatness_centre_off_zero_and_on_the_edge(tmp_path):
    x = np.linspace(0.0, 1.0, 11)  # the centre (t=0) is the first grid point
    s = load_surface(write_surface(tmp_path / "e.h5", x, None, {"test_loss": 1 + x ** 2}, done=np.ones(11)))
    f = flatness(s, epsilon=0.25)
    assert f["centre"] == (0.0,) and f["curvature"]["x"] is None
    assert f["basin_width"]["x"]["width"] == pytest.approx(0.5, abs=0.01) and f["basin_area"] is None
    assert f["radius"] == 0.0 and f["sharpness"] is None
    assert flatness(s, radius=0.3)["sharpness"] == pytest.approx(0.09)
    x = np.linspace(-0.93, 1.07, 21)  # no 0 on the grid: the nearest point is the centre, any spacing works
    x[10:] = -0.03 + (x[10:] + 0.03) * 2  # neighbours of the centre at -0.1 and +0.2
    s = load_surface(write_surface(tmp_path / "o.h5", x, None, {"test_loss": 2 + 3 * x ** 2}, done=np.ones(21)))
    f = flatness(s)
    assert f["centre"] == pytest.approx((-0.03,))
    assert f["curvature"]["x"] == pytest.approx(6.0)  # exact for a quadratic, also with uneven spacing


def test_flatness_errors(tmp_path):
    x, y, loss = quadratic(nx=21, ny=17)
    bad = loss.copy()
    bad[10, 8] = np.inf
    s = load_surface(write_surface(tmp_path / "b.h5", x, y, {"test_loss": bad, "test_acc": 1 - loss},
                                   done=np.ones(loss.shape)))
    with pytest.raises(SurfaceFileError, match=r"test_loss at the centre \(0, 0\) is not a finite"):
        flatness(s)
    with pytest.raises(SurfaceFileError, match="epsilon must be a finite number ≥ 0"):
        flatness(s, "test_acc", epsilon=-1)
    with pytest.raises(SurfaceFileError, match="radius must be a finite number > 0"):
        flatness(s, "test_acc", radius=0)
    with pytest.raises(SurfaceFileError, match="no metric 'train_loss'"):
        flatness(s, "train_loss")


def test_metric_order_with_line_and_hessian_metrics(tmp_path):
    n = 5
    names = ["test_hess_ratio", "line_test_loss_stderr", "test_acc", "line_test_acc", "test_hess_max",
             "test_loss", "line_test_loss", "test_loss_stderr", "test_hess_min"]
    for mpiland in (True, False):  # with and without the splits attribute
        path = write_surface(tmp_path / f"m{mpiland}.h5", np.linspace(0, 1, n), None,
                             {m: np.linspace(1, 2, n) for m in names}, done=np.ones(n), mpiland=mpiland)
        s = load_surface(path)
        assert list(s.metrics) == ["test_loss", "line_test_loss", "test_acc", "line_test_acc", "test_loss_stderr",
                                   "line_test_loss_stderr", "test_hess_max", "test_hess_min", "test_hess_ratio"]
        assert s.splits == ["test"]
        assert s.loss_metrics() == ["test_loss", "line_test_loss"]
        assert s.split_losses() == ["test_loss"] and s.default_metric() == "test_loss"


def test_models_trajectory_and_endpoints_are_read(curve_file, pca_file):
    c = load_surface(curve_file)
    assert c.endpoints == (0.0, 1.0)
    assert c.models.labels == ["A", "B"] and c.models.coordinates.tolist() == [[0.0], [1.0]]
    assert c.trajectory is None and c.explained_variance_ratio is None
    p = load_surface(pca_file)
    assert p.endpoints is None and p.models.labels == ["final"]
    assert len(p.trajectory) == 6 and p.trajectory.labels[-1] == "epoch_005"
    np.testing.assert_allclose(p.trajectory.coordinates[0], [-0.8, 0.25])
    np.testing.assert_allclose(p.explained_variance_ratio, [0.831, 0.102])


def test_damaged_new_members(tmp_path):
    x, y, loss = quadratic(nx=5, ny=4)
    base = dict(metrics={"test_loss": loss}, done=np.ones(loss.shape))
    path = write_surface(tmp_path / "a.h5", x, y, **base, models=([[0.0], [1.0]], ["A", "B"]))
    with pytest.raises(SurfaceFileError, match=r"models/coordinates has shape \(2, 1\).*expected \(n, 2\)"):
        load_surface(path)
    path = write_surface(tmp_path / "b.h5", x, y, **base, models=([[0.0, 0.0]], ["A", "B"]))
    with pytest.raises(SurfaceFileError, match="models has 1 coordinates but 2 labels"):
        load_surface(path)
    path = write_surface(tmp_path / "c.h5", x, None, metrics={"test_loss": x}, done=np.ones(5), endpoints=[0, 1, 2])
    with pytest.raises(SurfaceFileError, match="attribute endpoints .* not 2 finite numbers"):
        load_surface(path)
    path = write_surface(tmp_path / "d.h5", x, None, metrics={"test_loss": x}, done=np.ones(5),
                         models=([0.0, 1.0], ["A", "B"]))  # 1D positions as a flat array are fine
    assert load_surface(path).models.coordinates.shape == (2, 1)


def test_derived_attributes_1d(curve_file, tmp_path):
    """A path between models A (t=0) and B (t=1): barriers, and flatness per model in the models' order."""
    s = load_surface(curve_file)
    attrs = derived_attributes(s)
    assert set(attrs) == {
        "test_loss_barrier", "test_loss_barrier_at", "test_loss_monotonic",
        "line_test_loss_barrier", "line_test_loss_barrier_at", "line_test_loss_monotonic",
        "test_loss_curvature_x", "test_loss_basin_width_x", "test_loss_basin_width_x_edge",
        "test_loss_sharpness", "test_loss_sharpness_relative",
        "flatness_at", "flatness_models", "flatness_epsilon", "flatness_radius", "flatness_centre_x"}
    assert attrs["test_loss_barrier"] == pytest.approx(0.3) and attrs["test_loss_barrier_at"] == pytest.approx(0.45)
    assert attrs["test_loss_monotonic"] == 0 and isinstance(attrs["test_loss_monotonic"], int)
    assert attrs["line_test_loss_barrier"] == pytest.approx(0.8) and attrs["line_test_loss_barrier_at"] == 0.5
    assert attrs["flatness_at"] == "models" and attrs["flatness_models"] == ["A", "B"]
    for k, t in enumerate((0.0, 1.0)):
        f = flatness(s, at=(t,))
        assert attrs["test_loss_curvature_x"][k] == pytest.approx(f["curvature"]["x"])
        assert attrs["test_loss_sharpness"][k] == pytest.approx(f["sharpness"])
        assert attrs["test_loss_basin_width_x"][k] == pytest.approx(f["basin_width"]["x"]["width"])
    np.testing.assert_allclose(attrs["flatness_radius"], [0.5, 0.5])
    np.testing.assert_allclose(attrs["flatness_centre_x"], [0.0, 1.0])
    assert attrs["flatness_epsilon"] == 0.1
    with h5py.File(tmp_path / "attrs.h5", "w") as h:  # all of it fits HDF5 attributes
        h.attrs.update(attrs)
        assert h.attrs["test_loss_monotonic"] == 0
        np.testing.assert_array_equal(h.attrs["test_loss_basin_width_x_edge"], [0, 0])
        assert list(h.attrs["flatness_models"]) == ["A", "B"] and h.attrs["flatness_at"] == "models"


def test_derived_attributes_2d(tmp_path):
    x, y, loss = quadratic()
    edge = np.where(np.arange(x.size)[:, None] == 80, np.nan, loss)  # the centre's row not computed
    path = write_surface(tmp_path / "q.h5", x, y, {"train_loss": loss, "test_loss": edge, "test_acc": 1 - loss},
                         done=np.ones(loss.shape))
    attrs = derived_attributes(load_surface(path))
    assert not any(k.endswith("barrier") for k in attrs)
    assert attrs["train_loss_curvature_x"] == pytest.approx(3.0)
    assert attrs["train_loss_curvature_y"] == pytest.approx(8.0)
    assert attrs["train_loss_basin_area"] == pytest.approx(math.pi * 0.1 / math.sqrt(6), rel=0.03)
    assert attrs["train_loss_basin_area_edge"] == 0 and attrs["train_loss_basin_width_y_edge"] == 0
    assert attrs["train_loss_sharpness"] == pytest.approx(2.56)
    for k in ("curvature_x", "curvature_y", "basin_width_x", "basin_width_y", "basin_area", "basin_area_fraction",
              "sharpness", "sharpness_relative"):
        assert math.isnan(attrs[f"test_loss_{k}"]), k  # undefined: NaN, never a made-up number
    assert attrs["test_loss_basin_area_edge"] == 0
    np.testing.assert_allclose(attrs["flatness_centre"], [0.0, 0.0])
    assert attrs["flatness_at"] == "origin" and "flatness_models" not in attrs
    assert "test_acc_curvature_x" not in attrs


def test_summary_of_a_curve_file(curve_file):
    s = summarize(curve_file)
    json.dumps(s, allow_nan=False)  # plain JSON, no NaN
    assert s["endpoints"] == [0.0, 1.0]
    assert s["models"] == [{"label": "A", "coordinates": (0.0,)}, {"label": "B", "coordinates": (1.0,)}]
    assert list(s["barriers"]) == ["test_loss", "line_test_loss"]
    b = s["barriers"]["test_loss"]
    assert b["height"] == pytest.approx(0.3) and b["at"] == pytest.approx(0.45) and b["monotonic"] is False
    assert list(s["flatness"]) == ["test_loss"] and s["flatness_at"] == "models"
    a, b = s["flatness"]["test_loss"]
    assert (a["label"], a["coordinates"], a["centre"], a["note"]) == ("A", (0.0,), (0.0,), None)
    assert (b["label"], b["centre"]) == ("B", (1.0,))
    assert a["basin_width"]["x"]["at_edge"] is False and a["loss"] == pytest.approx(1.0)
    assert b["loss"] == pytest.approx(1.5)
    rows = [line for line in format_summary(s).splitlines() if line.startswith(("barrier", "models", "endpoints"))]
    assert any("test_loss: 0.3 at t=0.45 between t=0 (1) and t=1 (1.5), not monotonic" in r for r in rows)
    assert any(r.split()[1] == "line_test_loss:" for r in rows if r.startswith("barrier"))
    assert any("A at x=0, B at x=1" in r for r in rows)
    assert any("t0=0, t1=1" in r for r in rows)


def test_summary_of_a_pca_file(pca_file):
    s = summarize(pca_file, epsilon=0.2, radius=0.5)
    json.dumps(s, allow_nan=False)
    assert s["barriers"] == {} and s["endpoints"] is None
    t = s["trajectory"]
    assert t["points"] == 6 and t["labels"][0] == "epoch_000"
    assert t["explained_variance_ratio"] == pytest.approx([0.831, 0.102])
    assert s["flatness_at"] == "origin"
    [f] = s["flatness"]["test_loss"]
    assert f["label"] == "final" and f["epsilon"] == 0.2 and f["radius"] == 0.5
    assert f["sharpness"] == pytest.approx(4.0 * 0.25)
    assert s["metrics"]["test_hess_ratio"]["argmax"] is not None  # Hessian maps: the max is the point of note
    text = format_summary(s)
    assert "PC1 83.1 %, PC2 10.2 %" in text
    assert "6 checkpoints, epoch_000 .. epoch_005" in text
    flat = [r for r in text.splitlines() if r.startswith("flatness")][0]
    assert "test_loss at final (0, 0) = 0.25, ε 0.2: curvature x 3, y 8" in flat and "within r=0.5" in flat
    with pytest.raises(SurfaceFileError, match="epsilon must be"):
        summarize(pca_file, epsilon=float("nan"))


def test_summary_of_a_partial_file_has_no_made_up_measures(tmp_path):
    x = np.linspace(-1, 1, 11)
    loss = np.where(x < -0.5, x ** 2, np.nan)
    done = ~np.isnan(loss)
    path = write_surface(tmp_path / "p.h5", x, None, {"test_loss": loss}, done=done, endpoints=[-1.0, 1.0])
    s = summarize(path)
    json.dumps(s, allow_nan=False)
    assert s["flatness"]["test_loss"] == [{"label": "origin", "coordinates": (0.0,),
                                           "note": "not evaluated yet"}]  # no numbers for it
    assert s["barriers"]["test_loss"]["points"] == 3
    assert "test_loss at the origin (x=0): not evaluated yet" in format_summary(s)


def test_info_shows_the_curvature_stored_at_the_origin(tmp_path):
    x, y, loss = quadratic(nx=11, ny=9)
    path = write_surface(tmp_path / "c.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                         attrs={"test_hess_trace": 12.5, "test_hess_trace_stderr": 0.25,
                                "test_hess_curvature_x": 3.0, "test_hess_curvature_y": 8.0})
    summary = summarize(path)
    assert summary["origin_curvature"] == {"test": {"trace": 12.5, "trace_stderr": 0.25,
                                                    "along": {"x": 3.0, "y": 8.0}}}
    text = format_summary(summary)
    assert "test at the origin: Hessian trace 12.5 ± 0.25; dᵀHd/‖d‖² along x 3, y 8" in text
    plain = write_surface(tmp_path / "p.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape))
    assert summarize(plain)["origin_curvature"] is None
    assert "at the origin: Hessian trace" not in format_summary(summarize(plain))


def test_info_says_auto_for_a_range_taken_from_the_models(tmp_path):
    job = {**JOB, "grid": {"x": {"min": None, "max": None, "num": 21}}}
    path = write_surface(tmp_path / "a.h5", T, None, {"test_loss": bump_path()}, done=np.ones(T.size), job=job)
    text = format_summary(summarize(path))
    assert "x auto (from the models' positions) x 21" in text and "[-, -]" not in text


def test_a_curve_along_a_random_direction_has_no_barrier(tmp_path):
    """A barrier is that of a path between two models; a random line through θ* joins none."""
    x = np.linspace(-1, 1, 21)
    bumpy = 1.0 + x ** 2 - 0.3 * np.exp(-((x - 0.5) / 0.1) ** 2)
    path = write_surface(tmp_path / "random.h5", x, None, {"test_loss": bumpy}, done=np.ones(21))
    s = summarize(path)
    assert s["barriers"] == {} and "barrier" not in format_summary(s)
    assert not any(k.endswith("_barrier") for k in derived_attributes(load_surface(path)))


def test_no_curvature_dash_for_a_model_on_the_grid_edge(tmp_path):
    """A path's end models at t = 0 and 1 are the grid's ends: no second difference there, said so."""
    t = np.linspace(0, 1, 11)
    path = write_surface(tmp_path / "chain.h5", t, None, {"test_loss": 1 + t}, done=np.ones(11), endpoints=[0.0, 1.0],
                         models=([[0.0], [1.0]], ["A", "B"]))
    s = summarize(path)
    a, b = s["flatness"]["test_loss"]
    assert a["curvature"] == {} and a["curvature_missing"] == {"x": "on the grid edge"}
    rows = [line for line in format_summary(s).splitlines() if line.startswith("flatness")]
    assert len(rows) == 2 and all(" -" not in r and "curvature x" not in r for r in rows)
    assert rows[0].endswith("test_loss at A (x=0) = 1, ε 0.1: basin width x ≥0.1 "
                            "(no second difference along x: on the grid edge)")
    assert "test_loss at B (x=1) = 2, ε 0.1: basin width x ≥1 (no second" in rows[1]  # all of [0, 1] is below 2.1


def test_a_spectrum_without_a_standard_error_prints_no_dash(tmp_path):
    """One probe gives a trace but no standard error: the row says nothing about it rather than '± -'."""
    x = np.linspace(-1, 1, 5)
    summary = summarize(write_surface(tmp_path / "s.h5", x, None, {"test_loss": x ** 2}, done=np.ones(5)))
    spectrum = {"point": "origin", "label": "origin", "coordinates": (0.0,), "split": "test", "n": 10, "probes": 1,
                "steps": 8, "top": [3.0, 2.0], "top_converged": True, "support": [-0.5, 3.0], "grid": [-1.0, 3.5],
                "width": 0.1, "trace": 4.5, "trace_stderr": None, "groups": []}
    rows = [r for r in format_summary({**summary, "spectrum": {"origin": spectrum}}).splitlines()
            if r.startswith("spectrum")]
    assert rows[0].endswith("σ 0.1; trace 4.5") and "-" not in rows[0].split("σ")[1]
    both = {**spectrum, "trace_stderr": 0.25}
    assert format_summary({**summary, "spectrum": {"origin": both}}).count("trace 4.5 ± 0.25") == 1
