"""Point groups (run.group_size): ranks that evaluate the same points on shards of the data, bit-identical to one rank."""

import time

import numpy as np
import pytest

from mpiland.errors import EXIT_INTERRUPTED, SettingsError
from mpiland.groups import ranks_per_group

from test_mpi import MPIEXEC, mpirun, scenario, values
from util import cli, interrupted_run, write_job

TWO_SPLITS = 'splits = ["test", "train"]\nsubset = 130\nbatch_size = 40'  # batches of 40, 40, 40, 10


@pytest.mark.parametrize("requested, ranks, points, expected", [
    (1, 4, 100, 1), (2, 4, 100, 2), (4, 4, 1, 4),
    (0, 4, 100, 1), (0, 4, 4, 1), (0, 4, 3, 2), (0, 4, 2, 2), (0, 4, 1, 4), (0, 6, 4, 2), (0, 6, 2, 3),
    (0, 5, 2, 5), (0, 1, 1, 1), (0, 4, 0, 1),
])
def test_group_size_is_the_request_or_the_smallest_that_keeps_every_rank_busy(requested, ranks, points, expected):
    assert ranks_per_group(requested, ranks, points) == expected


def test_a_group_size_that_does_not_divide_the_ranks_names_the_divisors():
    with pytest.raises(SettingsError, match=r"run.group_size = 3 does not divide the 4 rank\(s\).*1, 2, 4"):
        ranks_per_group(3, 4, 10)
    with pytest.raises(SettingsError, match="positive"):
        ranks_per_group(-1, 4, 10)


def test_group_size_at_one_rank_must_be_one(tmp_path):
    job = write_job(tmp_path)
    proc = cli("run", str(job), "--group-size", "2")
    assert proc.returncode == 2
    assert "error: run.group_size = 2 does not divide the 1 rank(s)" in proc.stderr
    assert "Traceback" not in proc.stderr




@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("model, extra", [
    ('factory = "mpiland.demo:digits_mlp"\nkwargs = { hidden = 16 }', ""),  # batched products, K automatic
    ('factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 16 }', "points_per_pass = 2\n"),
])
def test_groups_of_one_two_and_three_ranks_give_the_one_rank_file_bit_for_bit(tmp_path, model, extra):
    job = write_job(tmp_path, model=model, data=TWO_SPLITS, grid="x = [-1.0, 1.0, 3]\ny = [-1.0, 1.0, 3]",
                    extra=extra)
    assert cli("run", str(job), "--output", str(tmp_path / "one.h5")).returncode == 0
    ref = values(tmp_path / "one.h5")
    assert ref["done"].all()
    for n, g in ((2, 2), (3, 3), (4, 2)):  # one group of 2, one of 3, two groups of 2
        out = tmp_path / f"n{n}g{g}.h5"
        proc = mpirun(n, "run", str(job), "--output", str(out), "--group-size", str(g), "--chunk-size", "2")
        assert proc.returncode == 0, proc.stderr
        assert f"point groups: {n // g} group(s) of {g} rank(s)" in proc.stderr
        got = values(out)
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k}, {n} ranks in groups of {g}")


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("warm", ["", "warm_start = true\n"], ids=["cold", "warm-chains"])
def test_curvature_in_a_group_sums_the_shards_hvps_and_matches_one_rank(tmp_path, warm):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 2]\ny = [-1.0, 1.0, 3]", data=TWO_SPLITS,
                    extra="points_per_pass = 1\n[hessian]\nenabled = true\nsubset = 100\ntrace_samples = 4\n" + warm)
    assert cli("run", str(job), "--output", str(tmp_path / "one.h5")).returncode == 0
    proc = mpirun(3, "run", str(job), "--output", str(tmp_path / "three.h5"), "--group-size", "3")
    assert proc.returncode == 0, proc.stderr
    import h5py

    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "three.h5", "r") as b:
        assert np.isfinite(a["test_hess_max"][...]).all()
        for k in ("test_loss", "test_hess_max", "test_hess_min", "train_hess_max"):
            np.testing.assert_array_equal(a[k][...], b[k][...], err_msg=k)
        assert a.attrs["test_hess_trace"] == b.attrs["test_hess_trace"]


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_streamed_loaders_in_a_group_read_their_shards_and_match_one_rank(tmp_path):
    results, _ = scenario(3, "groups_stream", tmp_path)
    assert results[0]["metrics"] and all(results[0]["equal"].values()), results[0]


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_automatic_groups_for_fewer_points_than_ranks(tmp_path):
    job = write_job(tmp_path, data=TWO_SPLITS, grid="x = [0.0, 0.0, 1]", extra="group_size = 0\n")
    proc = mpirun(2, "run", str(job))
    assert proc.returncode == 0, proc.stderr
    assert "point groups: 1 group(s) of 2 rank(s) (automatic" in proc.stderr
    assert cli("run", str(job), "--output", str(tmp_path / "one.h5")).returncode == 0
    np.testing.assert_array_equal(values(tmp_path / "surface.h5")["test_loss"], values(tmp_path / "one.h5")["test_loss"])


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_a_follower_failing_ends_the_job_quickly_and_keeps_points(tmp_path):
    job = write_job(tmp_path, model='factory = "tests/models.py:failing_on_rank"\nkwargs = { rank = 1, after = 30 }',
                    grid="x = [-1.0, 1.0, 8]\ny = [-1.0, 1.0, 8]", data=TWO_SPLITS,
                    extra="chunk_size = 2\npoints_per_pass = 1\ngroup_size = 2\n")
    t0 = time.monotonic()
    proc = mpirun(2, "run", str(job), timeout=60)
    assert proc.returncode != 0
    assert "simulated failure on rank 1" in proc.stderr
    assert time.monotonic() - t0 < 30
    done = values(tmp_path / "surface.h5")["done"]
    assert 0 < done.sum() < done.size


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_sigterm_to_a_group_then_resume_at_another_group_size(tmp_path):
    job = write_job(tmp_path, model='factory = "tests/models.py:slow_mlp"\nkwargs = { delay = 0.05 }',
                    grid="x = [-1.0, 1.0, 8]\ny = [-1.0, 1.0, 6]", data=TWO_SPLITS,
                    extra="chunk_size = 2\npoints_per_pass = 1\n")
    status, rest = interrupted_run([str(job), "--group-size", "2"], delay=1.0, launcher=[MPIEXEC, "-n", "2"])
    assert status == EXIT_INTERRUPTED, rest
    done = values(tmp_path / "surface.h5")["done"]
    assert 0 < done.sum() < done.size
    assert mpirun(3, "run", str(job), "--group-size", "1", timeout=120).returncode == 0
    ref = tmp_path / "ref.h5"
    assert cli("run", str(job), "--output", str(ref)).returncode == 0
    resumed = values(tmp_path / "surface.h5")
    for k in resumed:
        np.testing.assert_array_equal(resumed[k], values(ref)[k], err_msg=k)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_batch_mean_losses_and_metrics_with_a_one_sample_last_batch_match_one_rank(tmp_path):
    """A user loss and metric returning one mean per batch; batches of 43, 43, 43 and 1 sample: the last batch,
    summed on its own by another rank, still counts as a batch mean (its weight 1), as one rank counts it."""
    import h5py

    data = 'splits = ["test"]\nsubset = 130\nbatch_size = 43'
    job = write_job(tmp_path, data=data, grid="x = [-1.0, 1.0, 3]\ny = [-1.0, 1.0, 2]",
                    extra='points_per_pass = 1\n[loss]\nname = "tests/losses.py:batch_mean_ce"\n'
                          'metrics = { bm = "tests/losses.py:batch_mean_ce" }\n')
    assert cli("run", str(job), "--output", str(tmp_path / "one.h5")).returncode == 0
    for n in (2, 3):
        proc = mpirun(n, "run", str(job), "--output", str(tmp_path / f"g{n}.h5"), "--group-size", str(n))
        assert proc.returncode == 0, proc.stderr
        with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / f"g{n}.h5", "r") as b:
            for k in ("test_loss", "test_loss_stderr", "test_bm", "test_bm_stderr", "test_acc"):
                np.testing.assert_array_equal(a[k][...], b[k][...], err_msg=f"{k} in a group of {n}")
