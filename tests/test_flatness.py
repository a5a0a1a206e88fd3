"""Flatness where it means something: at θ* (the origin) for directions around a trained model, at each
model of a path or plane, on synthetic files whose loss is a quadratic bowl around each model (curvature
2a exactly by second difference, basin width 2√(ε/a)); points skipped by adaptive refinement or not
evaluated yet; the `info` rows and the `info --json` keys."""

from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest

from mpiland.analysis.measures import derived_attributes, flatness, flatness_at_centres, flatness_centres, store_derived
from mpiland.analysis.summary import format_summary, summarize
from mpiland.errors import SurfaceFileError
from mpiland.surface.reader import load_surface
from surfaces import T, quadratic, write_surface
from util import cli

EPS = 0.1
H = float(T[1] - T[0])  # 0.05

ENTRY_KEYS = {"label", "coordinates", "note", "metric", "centre", "loss", "epsilon", "threshold", "curvature",
              "curvature_missing", "basin_width", "basin_area", "radius", "sharpness", "sharpness_relative",
              "sharpness_at", "nonfinite", "unevaluated"}


def two_bowls(t: np.ndarray) -> np.ndarray:
    """1 + 2t² around model A (t=0), 0.5 + 3(t−1)² around model B (t=1); they meet at t≈0.45."""
    return np.minimum(1 + 2 * t ** 2, 0.5 + 3 * (t - 1) ** 2)


@pytest.fixture
def interpolation(tmp_path):
    return write_surface(tmp_path / "interp.h5", T, None, {"test_loss": two_bowls(T), "test_acc": 1 - two_bowls(T) / 4},
                         done=np.ones(T.size), models=([[0.0], [1.0]], ["init", "final"]), endpoints=[0.0, 1.0])


PLANE = [((0.0, 0.0), 0.5, 1.0, 2.0), ((1.0, 0.0), 0.3, 2.0, 1.0), ((0.0, 1.0), 0.4, 1.5, 3.0)]
"""The plane's models: position, L at the model, curvature coefficients a (x) and b (y)."""


def plane_loss(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    X, Y = np.meshgrid(x, y, indexing="ij")
    return np.min([l0 + a * (X - px) ** 2 + b * (Y - py) ** 2 for (px, py), l0, a, b in PLANE], axis=0)


def write_plane(path, positions=None, x=None, y=None):
    x = np.linspace(-0.5, 1.5, 81) if x is None else x
    y = np.linspace(-0.5, 1.5, 81) if y is None else y
    loss = plane_loss(x, y)
    coords = [p for p, *_ in PLANE] if positions is None else positions
    return write_surface(path, x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                         models=(coords, ["θ0", "θ1", "θ2"]), labels=("model difference 1", "model difference 2"))


def test_an_interpolation_is_measured_at_both_models(interpolation):
    s = load_surface(interpolation)
    assert flatness_centres(s) == ("models", [("init", (0.0,)), ("final", (1.0,))])
    init, final = flatness_at_centres(s, epsilon=EPS)
    assert set(init) == ENTRY_KEYS and init["note"] is None and init["label"] == "init"
    assert init["centre"] == (0.0,) and init["loss"] == pytest.approx(1.0)
    assert init["curvature"]["x"] == pytest.approx(4.0, rel=1e-9)  # 2a, exact for a quadratic
    assert final["centre"] == (1.0,) and final["loss"] == pytest.approx(0.5)
    assert final["curvature"]["x"] == pytest.approx(6.0, rel=1e-9)
    for f, a in ((init, 2.0), (final, 3.0)):
        w = f["basin_width"]["x"]
        assert w["width"] == pytest.approx(2 * math.sqrt(EPS / a), abs=H / 4)
        assert w["lower_bound"] is False and w["at_edge"] is False
        assert f["radius"] == pytest.approx(0.5)  # the largest interval around the model inside [-0.5, 1.5]
    assert init["sharpness"] == pytest.approx(0.5) and init["sharpness_at"] == pytest.approx((-0.5,))
    assert final["sharpness"] == pytest.approx(0.75)
    # the same numbers as flatness() at each model's position
    assert flatness(s, at=(1.0,), epsilon=EPS)["curvature"] == final["curvature"]


def test_derived_attributes_per_model(interpolation, tmp_path):
    attrs = store_derived(interpolation)
    with h5py.File(interpolation, "r") as f:
        stored = dict(f.attrs)
    assert stored["flatness_at"] == "models" and list(stored["flatness_models"]) == ["init", "final"]
    np.testing.assert_allclose(stored["test_loss_curvature_x"], [4.0, 6.0], rtol=1e-9)
    np.testing.assert_allclose(stored["test_loss_basin_width_x"], [2 * math.sqrt(EPS / 2), 2 * math.sqrt(EPS / 3)],
                               atol=H / 4)
    np.testing.assert_array_equal(stored["test_loss_basin_width_x_edge"], [0, 0])
    np.testing.assert_allclose(stored["test_loss_sharpness"], [0.5, 0.75])
    np.testing.assert_allclose(stored["test_loss_sharpness_relative"], [100 * 0.5 / 2, 100 * 0.75 / 1.5])
    np.testing.assert_allclose(stored["flatness_centre_x"], [0.0, 1.0])
    np.testing.assert_allclose(stored["flatness_radius"], [0.5, 0.5])
    assert "flatness_centre" not in stored and "test_acc_curvature_x" not in stored
    assert set(attrs) <= set(stored)


def test_info_rows_and_json_of_an_interpolation(interpolation):
    s = summarize(interpolation)
    text = json.dumps(s, allow_nan=False)  # plain JSON, no NaN
    assert json.loads(text)["flatness_at"] == "models"
    rows = [r for r in format_summary(s).splitlines() if r.startswith("flatness")]
    assert len(rows) == 2
    assert "test_loss at init (x=0) = 1, ε 0.1: curvature x 4; basin width x 0.44" in rows[0]
    assert "sharpness 0.5 (25 %) within r=0.5" in rows[0]
    assert "test_loss at final (x=1) = 0.5, ε 0.1: curvature x 6; basin width x 0.36" in rows[1]
    assert not any(" -" in r or "nan" in r for r in rows)


def test_a_plane_is_measured_at_its_three_models(tmp_path):
    s = load_surface(write_plane(tmp_path / "plane.h5"))
    entries = flatness_at_centres(s, epsilon=EPS)
    assert [e["label"] for e in entries] == ["θ0", "θ1", "θ2"]
    h = 0.025
    for e, ((px, py), l0, a, b) in zip(entries, PLANE):
        assert e["note"] is None and e["centre"] == pytest.approx((px, py)) and e["loss"] == pytest.approx(l0)
        assert e["curvature"]["x"] == pytest.approx(2 * a, rel=1e-9)
        assert e["curvature"]["y"] == pytest.approx(2 * b, rel=1e-9)
        assert e["basin_width"]["x"]["width"] == pytest.approx(2 * math.sqrt(EPS / a), abs=h / 4)
        assert e["basin_width"]["y"]["width"] == pytest.approx(2 * math.sqrt(EPS / b), abs=h / 4)
        assert e["basin_area"]["area"] == pytest.approx(math.pi * EPS / math.sqrt(a * b), rel=0.03)
        assert e["basin_area"]["lower_bound"] is False and e["basin_area"]["estimated"] == 0
    assert entries[0]["radius"] == pytest.approx(0.5) and entries[0]["sharpness"] == pytest.approx(0.5)
    attrs = derived_attributes(s)
    np.testing.assert_allclose(attrs["test_loss_curvature_y"], [4.0, 2.0, 6.0], rtol=1e-9)
    np.testing.assert_allclose(attrs["flatness_centre_y"], [0.0, 0.0, 1.0], atol=1e-12)
    assert attrs["test_loss_basin_area"].shape == (3,) and attrs["test_loss_basin_area_edge"].tolist() == [0, 0, 0]


def test_a_model_between_grid_points_and_one_outside_the_grid(tmp_path):
    path = write_plane(tmp_path / "plane.h5", positions=[(0.0, 0.0), (1.01, 0.0), (0.0, 2.5)])
    s = summarize(path)
    json.dumps(s, allow_nan=False)
    off, outside = s["flatness"]["test_loss"][1:]
    assert off["coordinates"] == (1.01, 0.0) and off["centre"] == pytest.approx((1.0, 0.0))
    assert outside == {"label": "θ2", "coordinates": (0.0, 2.5), "note": "outside the grid"}  # no numbers
    rows = [r for r in format_summary(s).splitlines() if r.startswith("flatness")]
    assert "test_loss at θ1 (1.01, 0), grid point (1, 0) = 0.3, ε 0.1: curvature x 4, y 2" in rows[1]
    assert rows[2].endswith("test_loss at θ2 (0, 2.5): outside the grid")
    attrs = derived_attributes(load_surface(path))
    assert math.isnan(attrs["test_loss_curvature_x"][2]) and math.isnan(attrs["flatness_centre_x"][2])
    assert attrs["test_loss_curvature_x"][1] == pytest.approx(4.0)
    with pytest.raises(SurfaceFileError, match=r"the point \(0, 2.5\) lies outside the grid "
                                               r"\[-0.5, 1.5\] x \[-0.5, 1.5\]"):
        flatness(load_surface(path), at=(0.0, 2.5))
    with pytest.raises(SurfaceFileError, match="at must be 2 finite grid coordinates"):
        flatness(load_surface(path), at=(0.0,))


def test_directions_around_theta_star_are_measured_at_the_origin(tmp_path):
    """random/file/pca/hessian: one model, θ*, at the origin; the layout of the attributes stays scalar."""
    x, y, loss = quadratic(nx=41, ny=33)
    path = write_surface(tmp_path / "random.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape),
                         models=([[0.0, 0.0]], ["θ*"]))
    s = load_surface(path)
    assert flatness_centres(s) == ("origin", [("θ*", (0.0, 0.0))])
    attrs = derived_attributes(s)
    assert attrs["flatness_at"] == "origin" and attrs["test_loss_curvature_x"] == pytest.approx(3.0)
    assert isinstance(attrs["test_loss_curvature_x"], float) and isinstance(attrs["test_loss_basin_area_edge"], int)
    np.testing.assert_array_equal(attrs["flatness_centre"], [0.0, 0.0])
    row = [r for r in format_summary(summarize(path)).splitlines() if r.startswith("flatness")]
    assert len(row) == 1 and "test_loss at θ* (0, 0) = 0.25, ε 0.1: curvature x 3, y 8" in row[0]
    bare = write_surface(tmp_path / "bare.h5", x, y, {"test_loss": loss}, done=np.ones(loss.shape))
    assert flatness_centres(load_surface(bare)) == ("origin", [("origin", (0.0, 0.0))])
    assert "test_loss at the origin (0, 0) = 0.25" in format_summary(summarize(bare))


def test_a_chain_has_no_curvature_at_its_bends(tmp_path):
    """A polygonal chain turns at its inner models: a second difference there measures the turn."""
    t = np.linspace(0, 1, 31)
    loss = 1 + np.abs(t - 1 / 3) + (t - 0.5) ** 2  # a kink at the bend t = 1/3
    path = write_surface(tmp_path / "chain.h5", t, None, {"test_loss": loss}, done=np.ones(31), endpoints=[0.0, 1.0],
                         models=([[0.0], [1 / 3], [2 / 3], [1.0]], ["m0", "m1", "m2", "m3"]))
    entries = summarize(path)["flatness"]["test_loss"]
    assert [e["curvature_missing"] for e in entries] == [
        {"x": "on the grid edge"}, {"x": "at a bend of the chain"}, {"x": "at a bend of the chain"},
        {"x": "on the grid edge"}]
    assert all(e["curvature"] == {} for e in entries)
    rows = [r for r in format_summary(summarize(path)).splitlines() if r.startswith("flatness")]
    assert rows[1].endswith("(no second difference along x: at a bend of the chain)")
    attrs = derived_attributes(load_surface(path))
    assert np.isnan(attrs["test_loss_curvature_x"]).all() and attrs["test_loss_sharpness"].shape == (4,)
    straight = write_surface(tmp_path / "line.h5", t, None, {"test_loss": loss}, done=np.ones(31),
                             endpoints=[0.0, 1.0], models=([[0.0], [1.0]], ["m0", "m3"]))
    assert flatness(load_surface(straight), at=(1 / 3,))["curvature"]["x"] is not None  # no bend: measured


def refined_1d(tmp_path, name="refined.h5"):
    """L = 0.25 + 1.5 x² on 41 points of [-1, 1], every odd point skipped by refinement (done = 2, NaN)."""
    x = np.linspace(-1, 1, 41)
    done = np.where(np.arange(41) % 2, 2, 1)
    loss = np.where(done == 1, 0.25 + 1.5 * x ** 2, np.nan)
    return write_surface(tmp_path / name, x, None, {"test_loss": loss}, done=done,
                         models=([[0.0]], ["θ*"])), x


def test_points_skipped_by_refinement_are_passed_over(tmp_path):
    path, x = refined_1d(tmp_path)
    s = load_surface(path)
    f = flatness(s, epsilon=EPS)
    assert f["curvature"]["x"] == pytest.approx(3.0, rel=1e-9)  # from the evaluated neighbours at ±2h
    w = f["basin_width"]["x"]
    assert w["width"] == pytest.approx(2 * math.sqrt(EPS / 1.5), abs=0.1 / 4) and w["lower_bound"] is False
    assert f["sharpness"] == pytest.approx(1.5) and f["unevaluated"] == 20 and f["nonfinite"] == 0
    with pytest.raises(SurfaceFileError, match=r"at the centre \(0.05\) was skipped by adaptive refinement"):
        flatness(s, at=(0.05,))
    attrs = derived_attributes(s)
    assert attrs["test_loss_curvature_x"] == pytest.approx(3.0) and attrs["test_loss_basin_width_x_edge"] == 0
    summary = summarize(path)
    assert summary["progress"] == {"done": 21, "skipped": 20, "total": 41, "percent": 100.0}
    text = format_summary(summary)
    assert "41/41 points done (100.0%), 20 of them skipped by adaptive refinement (not evaluated)" in text
    assert "curvature x 3;" in text


def test_a_model_on_a_skipped_point_gets_a_note(tmp_path):
    x = np.linspace(-1, 1, 41)
    done = np.where(np.arange(41) % 2, 2, 1)
    loss = np.where(done == 1, 1 + x ** 2, np.nan)
    path = write_surface(tmp_path / "s.h5", x, None, {"test_loss": loss}, done=done, endpoints=[-0.5, 0.55],
                         models=([[-0.5], [0.55]], ["A", "B"]))
    a, b = summarize(path)["flatness"]["test_loss"]
    assert a["note"] is None and a["curvature"]["x"] == pytest.approx(2.0)
    assert b == {"label": "B", "coordinates": (0.55,), "note": "skipped by adaptive refinement"}
    attrs = derived_attributes(load_surface(path))
    assert math.isnan(attrs["test_loss_curvature_x"][1]) and attrs["test_loss_curvature_x"][0] == pytest.approx(2)


def test_the_barrier_of_a_refined_path_leaves_skipped_points_out(tmp_path):
    """Skipped points are not "non-finite points ignored": they were never evaluated."""
    loss = 1.0 + 0.5 * T + 0.3 * np.exp(-(((T - 0.45) / 0.1) ** 2))
    done = np.where((np.arange(T.size) % 2 == 1) & (np.abs(T - 0.45) > 0.1), 2, 1)
    path = write_surface(tmp_path / "path.h5", T, None, {"test_loss": np.where(done == 1, loss, np.nan)}, done=done,
                         models=([[0.0], [1.0]], ["A", "B"]), endpoints=[0.0, 1.0])
    b = summarize(path)["barriers"]["test_loss"]
    assert b["height"] == pytest.approx(0.3, abs=1e-3) and b["ignored"] == 0 and b["points"] == 13
    assert b["at"] == pytest.approx(0.45)
    s = load_surface(path)
    assert derived_attributes(s)["test_loss_barrier"] == pytest.approx(b["height"])
    assert "non-finite points ignored" not in format_summary(summarize(path))


def test_a_refined_plane_gives_the_basin_of_the_full_one(tmp_path):
    """Refinement's pattern: the coarse (even, even) points evaluated, the others skipped; the basin area is
    judged on the values interpolated bilinearly there, as the pictures show them."""
    x, y, loss = quadratic(nx=81, ny=65)
    full = flatness(load_surface(write_surface(tmp_path / "full.h5", x, y, {"test_loss": loss},
                                               done=np.ones(loss.shape))), epsilon=EPS)
    i, j = np.meshgrid(np.arange(81), np.arange(65), indexing="ij")
    done = np.where((i % 2 == 0) & (j % 2 == 0), 1, 2)
    refined = load_surface(write_surface(tmp_path / "refined.h5", x, y,
                                         {"test_loss": np.where(done == 1, loss, np.nan)}, done=done))
    f = flatness(refined, epsilon=EPS)
    assert f["curvature"] == pytest.approx(full["curvature"], rel=1e-9)
    assert f["basin_area"]["area"] == pytest.approx(full["basin_area"]["area"], rel=0.03)
    for axis in ("x", "y"):
        assert f["basin_width"][axis]["width"] == pytest.approx(full["basin_width"][axis]["width"], abs=0.025 / 2)
    assert f["basin_area"]["estimated"] > 0 and f["basin_area"]["lower_bound"] is False
    assert f["sharpness"] == pytest.approx(full["sharpness"])  # the rim's points (0, ±0.8) are evaluated
    assert np.isnan(refined.values("test_loss")[1, 0])  # the surface's own values are not filled in


def test_a_pending_neighbour_gives_no_curvature_and_a_lower_bound(tmp_path):
    x = np.linspace(-1, 1, 21)
    done = np.ones(21)
    done[11] = 0  # the point right of the centre is not evaluated yet
    loss = np.where(done == 1, 1 + x ** 2, np.nan)
    path = write_surface(tmp_path / "p.h5", x, None, {"test_loss": loss}, done=done)
    f = flatness(load_surface(path), epsilon=0.5)
    assert f["curvature"]["x"] is None and f["curvature_missing"] == {"x": "next to a point without a finite value"}
    w = f["basin_width"]["x"]
    assert w["upper"] == 0.0 and w["lower_bound"] is True and w["at_edge"] is False
    row = [r for r in format_summary(summarize(path)).splitlines() if r.startswith("flatness")][0]
    assert "basin width x ≥" in row and "(no second difference along x: next to a point without a finite value)" in row
    assert derived_attributes(load_surface(path))["test_loss_basin_width_x_edge"] == 1


def test_info_json_from_the_command_line(interpolation):
    out = cli("info", "--json", str(interpolation))
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["flatness_at"] == "models" and data["progress"]["skipped"] == 0
    init, final = data["flatness"]["test_loss"]
    assert set(init) == ENTRY_KEYS and (init["label"], final["label"]) == ("init", "final")
    assert final["curvature"] == {"x": pytest.approx(6.0)} and final["coordinates"] == [1.0]
