"""Resume and interruption: a stopped run keeps its points, a re-run completes the same file."""

import subprocess

import h5py
import pytest
import numpy as np

from mpiland import SCHEMA_VERSION
from mpiland.errors import EXIT_INTERRUPTED
from mpiland.jobfile import load_job
from mpiland.run import run_job
from mpiland.surface import read_done

from util import PYTHON, REPO, interrupted_run, write_job

VALUES = ("test_loss", "test_acc", "test_loss_stderr", "done", "xcoordinates", "ycoordinates")


def contents(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in VALUES}, dict(f.attrs)


def assert_same_values(a, b):
    for k in VALUES:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def slow_job(tmp_path, output):
    return write_job(tmp_path, model='factory = "tests/models.py:slow_mlp"\nkwargs = { delay = 0.03 }',
                     grid="x = [-1.0, 1.0, 6]\ny = [-1.0, 1.0, 5]", output=output, name=f"{output}.toml",
                     extra="chunk_size = 2\npoints_per_pass = 1\n")


def test_resume_after_partial_file_matches_uninterrupted(tmp_path):
    job = load_job(write_job(tmp_path, output="full.h5", extra="chunk_size = 3\n"))
    run_job(job)
    full, _ = contents(tmp_path / "full.h5")
    assert full["done"].all()

    part = tmp_path / "part.h5"
    job2 = load_job(write_job(tmp_path, output="part.h5", name="p.toml", extra="chunk_size = 3\n"))
    run_job(job2)
    with h5py.File(part, "r+") as f:  # forget some points, as an interrupted run would have
        for k in ("test_loss", "test_acc", "test_loss_stderr", "seconds"):
            f[k][2:, :] = np.nan
        f["done"][2:, :] = 0
    summary = run_job(job2)
    assert summary.already_done == 8 and summary.points_evaluated == 12
    again, attrs = contents(part)
    assert_same_values(full, again)
    assert run_job(job2).points_evaluated == 0  # nothing left to do


def test_sigterm_saves_points_and_resume_completes_identically(tmp_path):
    ref = slow_job(tmp_path, "ref.h5")
    assert subprocess.run([PYTHON, "-m", "mpiland", "run", str(ref)], cwd=REPO, capture_output=True).returncode == 0

    job = slow_job(tmp_path, "cut.h5")
    status, rest = interrupted_run([str(job), "--progress", "lines"], delay=0.6)
    assert status == EXIT_INTERRUPTED, rest
    assert "received SIGTERM" in rest and "run the same command again to resume" in rest
    done = read_done(tmp_path / "cut.h5")
    assert 0 < done.sum() < done.size

    assert subprocess.run([PYTHON, "-m", "mpiland", "run", str(job)], cwd=REPO, capture_output=True).returncode == 0
    assert_same_values(contents(tmp_path / "ref.h5")[0], contents(tmp_path / "cut.h5")[0])


def test_file_records_job_and_directions(tmp_path):
    path = write_job(tmp_path)
    run_job(load_job(path))
    with h5py.File(tmp_path / "surface.h5", "r") as f:
        assert f.attrs["mpiland_schema"] == SCHEMA_VERSION and len(f.attrs["fingerprint"]) == 64
        assert f.attrs["job_toml"] == path.read_text()
        assert list(f.attrs["metrics"]) == ["test_loss", "test_loss_stderr", "test_acc"]
        assert f["directions/x"].shape == f["directions/y"].shape
        assert f["directions"].attrs["norm"] == "filter"
        assert (f["seconds"][...] > 0).all()
        assert f.attrs["x_label"] == "random direction x (filter-normalised)"


def test_1d_job(tmp_path):
    path = write_job(tmp_path, grid="x = [-0.5, 1.5, 7]")
    run_job(load_job(path))
    with h5py.File(tmp_path / "surface.h5", "r") as f:
        assert f["test_loss"].shape == (7,) and "ycoordinates" not in f and f["done"][...].all()
        assert f.attrs["dims"] == 1


def test_resume_keeps_the_points_per_pass_of_the_file(tmp_path, caplog):
    path = write_job(tmp_path, extra="points_per_pass = 4\n")
    job = load_job(path)
    run_job(job)
    with h5py.File(tmp_path / "surface.h5", "r+") as f:
        assert f.attrs["points_per_pass"] == 4
        f["done"][1:, :] = 0
    auto = load_job(path, values={"run.points_per_pass": 0})
    with caplog.at_level("INFO", logger="mpiland"):
        assert run_job(auto).points_evaluated == 16
    assert "4 point(s) per pass" in caplog.text


def test_failed_in_process_run_releases_the_file(tmp_path):
    path = write_job(tmp_path, model='factory = "tests/models.py:failing_on_rank"\nkwargs = { rank = 0, after = 9 }',
                     extra="chunk_size = 2\npoints_per_pass = 1\n")
    with pytest.raises(RuntimeError, match="simulated failure"):
        run_job(load_job(path))
    with h5py.File(tmp_path / "surface.h5", "r") as f:  # not left locked by the failed run
        assert 0 < f["done"][...].sum() < f["done"].size


def test_the_file_records_the_thread_counts_that_made_it(tmp_path):
    """Library kernels may round differently with another thread count: a resume with one is recorded and said."""
    from util import cli

    job = write_job(tmp_path, extra="chunk_size = 4\n")
    out = tmp_path / "surface.h5"
    assert cli("run", str(job), "--threads", "1").returncode == 0
    with h5py.File(out, "r+") as f:
        f["done"][-1, -1] = 0
    proc = cli("run", str(job), "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert "earlier points 1" in proc.stderr
    with h5py.File(out, "r") as f:
        assert int(f.attrs["threads"]) == 2
        assert list(f.attrs["threads_history"]) == [1, 2]
