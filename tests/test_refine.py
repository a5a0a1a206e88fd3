"""Adaptive refinement: the level plan on known functions, the picture fill, runs, resumes and 2 ranks."""

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiland.errors import GridError
from mpiland.refine import SKIPPED, Plan, anchors, auto_levels, axis_points, fill

import mpiland as ml
from analytic import data, point, write_axes
from analytic import well as well_loss
from util import PYTHON, cli, write_job

MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")
WELL_ERROR = 0.02
"""The stated bound of the test: the filled well surface (tol 0.1, 33×33) is within this of the full grid."""


def well(a, b):
    return 2 - np.exp(-(a ** 2 + b ** 2) / (2 * 0.15 ** 2))


def _grid(n, f):
    t = np.linspace(-1.0, 1.0, n)
    a, b = np.meshgrid(t, t, indexing="ij")
    return f(a, b)


def _simulate(plan, values, order=None):
    """Evaluate ``values`` (grid-shaped) where the plan asks, level by level; the flat loss and evaluated mask."""
    flat = values.reshape(-1)
    loss, have = np.full(flat.size, np.nan), np.zeros(flat.size, bool)
    rounds = 0
    while True:
        levels, complete = plan.walk(loss, have)
        if complete:
            return loss, have, levels
        points = levels[-1] if order is None else order(levels[-1])
        loss[points], have[points] = flat[points], True
        rounds += 1
        assert rounds <= plan.levels + 1


@pytest.mark.parametrize("shape, levels", [((21,), 2), ((21, 21), 2), ((41, 51), 3), ((51,), 3), ((9,), 1),
                                           ((5, 21), 0), ((1,), 0)])
def test_automatic_levels_keep_five_coarse_points(shape, levels):
    assert auto_levels(shape) == levels
    if levels:
        assert len(axis_points(min(shape), levels, 0)) >= 5


def test_coarse_axis_ends_on_the_last_point_and_levels_nest():
    assert axis_points(23, 2, 0).tolist() == [0, 4, 8, 12, 16, 20, 22]
    assert axis_points(23, 2, 2).tolist() == list(range(23))
    assert set(axis_points(23, 2, 0)) <= set(axis_points(23, 2, 1))


def test_too_many_levels_is_a_user_error():
    with pytest.raises(GridError, match="refine_levels = 4 needs at least 17 points"):
        Plan.make((9, 9), 4, 0.1, 0.1)


def test_sharp_minimum_needs_few_points_and_the_fill_stays_within_the_bound():
    values = _grid(33, well)
    plan = Plan.make(values.shape, 0, 0.1, 0.1, anchors([np.linspace(-1, 1, 33)] * 2, [np.zeros(2)]))
    assert plan.levels == 3 and plan.anchors == ((16, 16),)
    loss, have, levels = _simulate(plan, values)
    assert have.mean() < 0.25
    assert have[16 * 33 + 16]  # the minimum, at the anchor
    filled = fill(np.where(have, loss, np.nan).reshape(values.shape), have.reshape(values.shape), plan.levels)
    assert np.abs(filled - values).max() <= WELL_ERROR
    np.testing.assert_array_equal(filled.reshape(-1)[have], values.reshape(-1)[have])
    used = np.zeros(values.size, bool)
    for points in levels:
        assert not used[points].any()  # each point belongs to one level
        used[points] = True
    np.testing.assert_array_equal(used, have)


def test_a_constant_surface_stops_at_the_coarse_grid_and_the_anchor():
    plan = Plan.make((33, 33), 0, 0.1, 0.1)
    _, have, levels = _simulate(plan, np.ones((33, 33)))
    assert len(levels) == 1 and have.sum() == 25
    anchored = Plan.make((33, 33), 0, 0.1, 0.1, ((16, 16),))
    _, have, _ = _simulate(anchored, np.ones((33, 33)))
    assert have[16 * 33 + 16] and have.sum() > 25


def test_a_steep_surface_is_evaluated_everywhere():
    plan = Plan.make((17, 17), 0, 0.1, 0.1)
    _, have, _ = _simulate(plan, _grid(17, lambda a, b: 10 * a + 3 * b))
    assert have.all()


def test_the_plan_does_not_depend_on_order_or_on_extra_points():
    values = _grid(33, well)
    plan = Plan.make(values.shape, 0, 0.1, 0.1, ((16, 16),))
    _, have, levels = _simulate(plan, values)
    _, have_reversed, _ = _simulate(plan, values, order=lambda p: p[::-1])
    np.testing.assert_array_equal(have, have_reversed)
    # points evaluated beyond the plan (an earlier run with another tol) leave its levels as they were
    flat = values.reshape(-1)
    loss, extra = np.where(have, flat, np.nan), have.copy()
    extra[::7] = True
    loss[extra] = flat[extra]
    again, complete = plan.walk(loss, extra)
    assert complete and all(np.array_equal(x, y) for x, y in zip(again, levels))


def test_fill_is_exact_for_a_bilinear_surface_and_in_1d_linear():
    values = _grid(21, lambda a, b: 1 + 2 * a - 3 * b + 0.5 * a * b)
    evaluated = np.zeros(values.shape, bool)
    coarse = axis_points(21, 2, 0)
    evaluated[np.ix_(coarse, coarse)] = True
    evaluated[5:9, 3:12] = True
    broken = np.where(evaluated, values, 123.0)
    np.testing.assert_allclose(fill(broken, evaluated, 2), values, atol=1e-12)
    assert broken[0, 1] == 123.0  # the caller's array is left alone
    line = np.linspace(-1, 1, 21) * 4 + 1
    mask = np.zeros(21, bool)
    mask[axis_points(21, 2, 0)] = True
    np.testing.assert_allclose(fill(np.where(mask, line, np.nan), mask, 2), line, atol=1e-12)


def _well_job(tmp_path, output="well.h5", n=33):
    files = write_axes(tmp_path)
    return write_job(tmp_path, model='factory = "tests/analytic.py:point"', data='factory = "tests/analytic.py:data"',
                     directions=f'kind = "file"\nfile = {files!r}'.replace("'", '"'),
                     grid=f"x = [-1.0, 1.0, {n}]\ny = [-1.0, 1.0, {n}]", output=output, name=f"{output}.toml",
                     extra='[loss]\nname = "tests/analytic.py:well"\naccuracy = false\n')


def _read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in ("done", "test_loss", "seconds")}, int(f.attrs.get("refine_levels", -1))


def _run(*args):
    proc = cli("run", *map(str, args))
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def well_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("well")
    job = _well_job(tmp)
    _run(job, "--output", tmp / "full.h5")
    proc = _run(job, "--set", "grid.refine=true")
    return tmp, job, proc


def test_refined_run_skips_points_and_matches_the_full_grid(well_runs):
    tmp, _, proc = well_runs
    full, _ = _read(tmp / "full.h5")
    got, levels = _read(tmp / "well.h5")
    assert levels == 3 and "refinement level 3 of 3" in proc.stderr
    assert set(np.unique(got["done"])) == {1, SKIPPED}  # complete: no 0 left
    assert (got["done"] == 1).mean() < 0.25
    skipped = got["done"] == SKIPPED
    assert np.isnan(got["test_loss"][skipped]).all() and np.isnan(got["seconds"][skipped]).all()
    np.testing.assert_allclose(got["test_loss"][~skipped], full["test_loss"][~skipped], rtol=1e-6)
    filled = fill(got["test_loss"], got["done"] == 1, levels)
    assert np.abs(filled - full["test_loss"]).max() <= WELL_ERROR
    assert f"refinement left out {skipped.sum()} of 1089 points" in proc.stderr


def test_resumed_refinement_recomputes_the_levels_from_the_file(well_runs, tmp_path):
    tmp, job, _ = well_runs
    ref, _ = _read(tmp / "well.h5")
    coarse = np.zeros((33, 33), bool)
    coarse[np.ix_(axis_points(33, 3, 0), axis_points(33, 3, 0))] = True
    evaluated = np.flatnonzero((ref["done"] == 1) & ~coarse)
    for name, lost in (("mid-level.h5", evaluated[::2]), ("coarse-only.h5", evaluated)):
        out = tmp_path / name
        shutil.copy(tmp / "well.h5", out)
        with h5py.File(out, "r+") as f:  # as a stop or crash leaves it: those points pending, nothing skipped yet
            done = f["done"][...]
            done[done == SKIPPED] = 0
            done.reshape(-1)[lost] = 0
            f["done"][...] = done
            for key in ("test_loss", "seconds"):
                values = f[key][...]
                values.reshape(-1)[lost] = np.nan
                f[key][...] = values
        proc = _run(job, "--output", out, "--set", "grid.refine=true")
        assert "resuming" in proc.stderr
        got, _ = _read(out)
        np.testing.assert_array_equal(got["done"], ref["done"])
        np.testing.assert_array_equal(got["test_loss"], ref["test_loss"])


def test_refine_false_on_a_refined_file_fills_in_the_skipped_points(well_runs, tmp_path):
    tmp, job, _ = well_runs
    out = tmp_path / "filled.h5"
    shutil.copy(tmp / "well.h5", out)
    proc = _run(job, "--output", out)
    assert "resuming" in proc.stderr
    full, _ = _read(tmp / "full.h5")
    got, _ = _read(out)
    assert (got["done"] == 1).all()
    np.testing.assert_allclose(got["test_loss"], full["test_loss"], rtol=1e-6)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python")
def test_two_ranks_refine_and_scan_as_one(tmp_path):
    jobs = [_well_job(tmp_path, "well.h5", 17),
            write_job(tmp_path, grid='x = ["auto", 17]\ny = ["auto", 9]', output="mlp.h5", name="mlp.toml")]
    for job in jobs:
        one = tmp_path / f"one-{job.stem}.h5"
        _run(job, "--output", one, "--set", "grid.refine=true")
        two = tmp_path / f"two-{job.stem}.h5"
        proc = cli("run", str(job), "--output", str(two), "--set", "grid.refine=true", "--chunk-size", "3",
                   launcher=[MPIEXEC, "-n", "2"])
        assert proc.returncode == 0, proc.stderr
        a, _ = _read(one)
        b, _ = _read(two)
        assert (a["done"] == SKIPPED).any()
        for key in ("done", "test_loss"):
            np.testing.assert_array_equal(b[key], a[key], err_msg=f"{job.stem}: {key}")
        with h5py.File(one, "r") as f, h5py.File(two, "r") as g:
            np.testing.assert_array_equal(f["xcoordinates"][:], g["xcoordinates"][:])


def test_python_api_takes_an_auto_axis_and_refinement(tmp_path):
    model = point()
    d = ml.directions.from_file(model, *write_axes(tmp_path))
    inputs, targets = data("test", 8)
    surf = ml.landscape(model, d, (inputs, targets), x=("auto", 17), y=(-1.0, 1.0, 17), loss=well_loss,
                        out=str(tmp_path / "api.h5"), device="cpu", progress="none",
                        settings={"run.threads": 1, "grid.refine": True, "grid.auto_max": 0.8})
    assert surf.x[-1] == 0.8  # the well never reaches 3× its centre value: the range is auto_max
    assert surf.skipped.any() and not (surf.done & surf.skipped).any() and (surf.done | surf.skipped).all()
