"""Automatic grid range: the pre-scan's rule on known losses, the job-file syntax, the file and resume."""

import math

import h5py
import numpy as np
import pytest

from mpiland.autorange import STEPS, round_up, scan
from mpiland.directions import make_directions
from mpiland.errors import GridError, JobFileError
from mpiland.jobfile import load_job
from mpiland.models import build_model
from mpiland.run import _with_ranges
from mpiland.surface import job_identity

from analytic import bowl_values, write_axes
from util import cli, write_job


def _evaluate(f):
    calls = []

    def evaluate(coords):
        calls.append(len(coords))
        y = coords[:, 1] if coords.shape[1] > 1 else np.zeros(len(coords))
        return f(coords[:, 0], y)
    return evaluate, calls


@pytest.mark.parametrize("value, expected", [(0.8312, 0.84), (0.6, 0.6), (1.0, 1.0), (0.0123, 0.013), (12.01, 13.0)])
def test_round_up_to_two_significant_digits(value, expected):
    assert round_up(value) == expected


def test_quadratic_loss_gets_the_range_where_it_reaches_rise_times_the_centre():
    evaluate, calls = _evaluate(bowl_values)
    result = scan(evaluate, 2, ["x", "y"], rise=3.0, limit=1.0, metric="test_loss")
    for axis, curvature in (("x", 5.0), ("y", 20.0)):
        expected = math.sqrt(2 / curvature)  # 1 + c·t² = 3: exact, the parabola through three points is the loss
        s = result.axes[axis]
        assert s.crossings == pytest.approx((-expected, expected))
        assert s.range == round_up(expected)
        assert s.coordinates[0] < 0 < s.coordinates[-1] and 0.0 in s.coordinates
        np.testing.assert_allclose(s.values, [bowl_values(t, 0.0) if axis == "x" else bowl_values(0.0, t)
                                              for t in s.coordinates])
    assert result.axes["x"].range == 0.64 and result.axes["y"].range == 0.32
    assert result.points == sum(calls) == 1 + 2 * 7 + 2 * 6  # x crosses at the 7th step out, y at the 6th
    assert result.centre == 1.0


def test_asymmetric_loss_takes_the_farther_side_and_a_flat_side_is_clipped():
    evaluate, _ = _evaluate(lambda a, b: 1 + np.where(a > 0, 40.0, 5.0) * a ** 2)
    s = scan(evaluate, 1, ["x"], rise=3.0, limit=1.0, metric="m").axes["x"]
    assert s.crossings[1] < -s.crossings[0]
    assert s.range == round_up(-s.crossings[0])
    flat, _ = _evaluate(lambda a, b: 1 + np.where(a > 0, 0.0, 5.0) * a ** 2)
    s = scan(flat, 1, ["x"], rise=3.0, limit=0.5, metric="m").axes["x"]
    assert math.isnan(s.crossings[1]) and s.range == 0.5
    assert len(s.coordinates) == 2 * (STEPS + 1) + 1


def test_a_non_finite_point_ends_its_side():
    evaluate, _ = _evaluate(lambda a, b: np.where(np.abs(a) > 0.3, np.nan, 1.0 + a * 0))
    s = scan(evaluate, 1, ["x"], rise=2.0, limit=1.0, metric="m").axes["x"]
    assert s.crossings == (-0.5, 0.5) and s.range == 0.5  # a NaN at 0.5 counts as reaching the rise there


def test_a_centre_loss_that_is_not_positive_is_a_user_error():
    evaluate, _ = _evaluate(lambda a, b: a * 0 - 1.0)
    with pytest.raises(GridError, match="positive loss"):
        scan(evaluate, 1, ["x"], rise=2.0, limit=1.0, metric="m")


def test_job_file_spellings(tmp_path):
    job = load_job(write_job(tmp_path, grid='x = "auto"\ny = ["auto", 7]'))
    assert job.grid.auto and job.grid.x.num == 21 and job.grid.y.num == 7 and job.grid.x.min is None
    job = load_job(write_job(tmp_path, grid="x = [-1.0, 1.0, 5]"), ["grid.x=auto", "grid.auto_rise=2.5",
                                                                   "grid.auto_max=0.5"])
    assert job.grid.x.auto and job.grid.auto_rise == 2.5 and job.grid.auto_max == 0.5
    with pytest.raises(JobFileError, match="grid.auto_rise: expected a number > 1"):
        load_job(write_job(tmp_path, grid='x = "auto"'), ["grid.auto_rise=1"])
    with pytest.raises(GridError, match=r'\["auto", 5\]'):
        load_job(write_job(tmp_path, grid="x = 5"))
    with pytest.raises(GridError, match="integer num"):
        load_job(write_job(tmp_path, grid='x = ["auto", 2.5]'))


def _bowl_job(tmp_path, extra_grid="", output="bowl.h5"):
    files = write_axes(tmp_path)
    return write_job(tmp_path, model='factory = "tests/analytic.py:point"',
                     data='factory = "tests/analytic.py:data"',
                     directions=f'kind = "file"\nfile = {files!r}'.replace("'", '"'),
                     grid=f'x = ["auto", 5]\ny = ["auto", 5]\n{extra_grid}', output=output,
                     extra='[loss]\nname = "tests/analytic.py:bowl"\naccuracy = false\n')


def test_run_stores_the_scan_and_a_resume_keeps_it(tmp_path):
    job = _bowl_job(tmp_path)
    proc = cli("run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "automatic range: pre-scan of 27 points" in proc.stderr
    with h5py.File(tmp_path / "bowl.h5", "r") as f:
        np.testing.assert_allclose(f["xcoordinates"][:], np.linspace(-0.64, 0.64, 5))  # √0.4 = 0.632… rounded up
        np.testing.assert_allclose(f["ycoordinates"][:], np.linspace(-0.32, 0.32, 5))  # √0.1 = 0.316…
        g = f["autorange"]
        assert list(g.attrs["axes"]) == ["x", "y"] and g.attrs["metric"] == "test_loss"
        assert g.attrs["rise"] == 3.0 and g.attrs["max"] == 1.0 and g.attrs["points"] == 27
        np.testing.assert_allclose(g.attrs["x_range"], [-0.64, 0.64])
        np.testing.assert_allclose(g["y_values"][:], bowl_values(0.0, g["y_coordinates"][:]), rtol=1e-6)
        np.testing.assert_allclose(f["test_loss"][2, :], bowl_values(0.0, np.linspace(-0.32, 0.32, 5)), rtol=1e-6)
    again = cli("run", str(job))
    assert again.returncode == 0, again.stderr
    assert "from the pre-scan stored in" in again.stderr and "25 of 25 points already done" in again.stderr
    other = cli("run", str(job), "--set", "grid.auto_rise=2")
    assert other.returncode != 0 and "grid.x, grid.y differ" in other.stderr
    assert "Traceback" not in other.stderr


def test_identity_for_a_resolved_job_is_what_job_identity_gives(tmp_path):
    job = load_job(_bowl_job(tmp_path))
    model = build_model(job.model)
    directions = make_directions(model, job.directions, 2)
    resolved = _with_ranges(job, {"x": 0.6, "y": 0.3})
    assert resolved.grid.x.min == -0.6 and resolved.grid.y.max == 0.3 and not resolved.grid.auto
    expected = job_identity(resolved, model, directions, [])
    assert job_identity(job, model, directions, []).for_job(resolved) == expected
