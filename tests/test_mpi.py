"""Scenario runs under mpiexec: the same job at 1, 2 and 3 ranks, failures and signals."""

import shutil
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from mpiland.errors import EXIT_INTERRUPTED

from util import PYTHON, cli, interrupted_run, write_job

MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python")]
METRICS = ("test_loss", "test_acc", "test_loss_stderr", "done")


def mpirun(n, *args, **kw):
    return cli(*args, launcher=[MPIEXEC, "-n", str(n)], **kw)


def values(path, wait=15.0):
    """The metric arrays; waits while a launcher is still reaping ranks that hold the file open."""
    deadline = time.monotonic() + wait
    while True:
        try:
            with h5py.File(path, "r") as f:
                return {k: f[k][...] for k in METRICS}
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def small_cnn_job(tmp_path, output, extra=""):
    return write_job(tmp_path, model='factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 16 }',
                     grid="x = [-1.0, 1.0, 7]\ny = [-1.0, 1.0, 6]", output=output, name=f"{output}.toml",
                     extra=extra)


@pytest.mark.parametrize("points_per_pass", [1, 4])
def test_identical_across_sizes(tmp_path, points_per_pass):
    job = small_cnn_job(tmp_path, "one.h5", extra=f"points_per_pass = {points_per_pass}\n")
    assert cli("run", str(job)).returncode == 0
    ref = values(tmp_path / "one.h5")
    assert ref["done"].all()
    for n in (2, 3):
        out = tmp_path / f"n{n}.h5"
        proc = mpirun(n, "run", str(job), "--output", str(out), "--chunk-size", "2")
        assert proc.returncode == 0, proc.stderr
        got = values(out)
        for k in METRICS:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k} at {n} ranks")


def test_only_rank0_reports(tmp_path):
    job = small_cnn_job(tmp_path, "q.h5")
    proc = mpirun(2, "run", str(job), "--set", "run.progress=\"lines\"")
    assert proc.returncode == 0
    assert "[mpiland r0]" in proc.stderr and "[mpiland r1]" not in proc.stderr
    assert "points/s" in proc.stderr


def test_user_error_on_one_rank_ends_all_with_status_2(tmp_path):
    src = tmp_path / "data.py"
    src.write_text("from mpi4py import MPI\nfrom mpiland.data import digits_split\n"
                   "def data(split):\n"
                   "    if MPI.COMM_WORLD.Get_rank() == 1:\n        raise OSError('disk gone')\n"
                   "    return digits_split(split)\n")
    job = write_job(tmp_path, data=f'factory = "{src}:data"')
    t0 = time.monotonic()
    proc = mpirun(2, "run", str(job), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - t0 < 30
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error")]
    assert lines == ["error: rank 1: data.factory " + repr(f"{src}:data") + " (split='test') raised OSError: disk gone"]


def test_rank_failure_aborts_quickly_and_keeps_points(tmp_path):
    job = write_job(tmp_path, model='factory = "tests/models.py:failing_on_rank"\nkwargs = { rank = 1, after = 30 }',
                    grid="x = [-1.0, 1.0, 8]\ny = [-1.0, 1.0, 8]", extra="chunk_size = 2\npoints_per_pass = 1\n")
    t0 = time.monotonic()
    proc = mpirun(2, "run", str(job), timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert "simulated failure on rank 1" in proc.stderr
    assert elapsed < 30  # start-up included; the abort itself takes well under 10 s
    done = values(tmp_path / "surface.h5")["done"]
    assert 0 < done.sum() < done.size
    fixed = tmp_path / "fixed.toml"
    fixed.write_text(job.read_text().replace("after = 30", "after = 1000000"))
    assert mpirun(2, "run", str(fixed), timeout=120).returncode == 2  # other job: the fingerprint differs
    assert "different job" in mpirun(2, "run", str(fixed), timeout=120).stderr


def test_sigterm_under_mpiexec_then_resume(tmp_path):
    job = write_job(tmp_path, model='factory = "tests/models.py:slow_mlp"\nkwargs = { delay = 0.1 }',
                    grid="x = [-1.0, 1.0, 8]\ny = [-1.0, 1.0, 6]", extra="chunk_size = 2\npoints_per_pass = 1\n")
    status, rest = interrupted_run([str(job)], delay=1.0, launcher=[MPIEXEC, "-n", "2"])
    assert status == EXIT_INTERRUPTED, rest
    done = values(tmp_path / "surface.h5")["done"]
    assert 0 < done.sum() < done.size
    assert mpirun(2, "run", str(job), timeout=120).returncode == 0
    resumed = values(tmp_path / "surface.h5")
    assert resumed["done"].all()
    ref = tmp_path / "ref.h5"
    assert cli("run", str(job), "--output", str(ref)).returncode == 0
    for k in METRICS:
        np.testing.assert_array_equal(resumed[k], values(ref)[k], err_msg=k)


@pytest.mark.parametrize("problem, fragment", [
    ("--set=run.devic=\"cpu\"", "run.devic: unknown key"),
    ("--set=model.checkpoint=\"nowhere.pt\"", "file not found"),
])
def test_user_errors_shared_by_all_ranks_print_once(tmp_path, problem, fragment):
    job = write_job(tmp_path)
    proc = mpirun(2, "run", str(job), problem, timeout=60)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0], proc.stderr
    assert "Abort" not in proc.stderr


def test_model_path_with_comparison_line_is_identical_across_sizes(tmp_path):
    import torch

    from mpiland.demo import digits_cnn

    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        p = tmp_path / f"m{seed}.pt"
        torch.save(digits_cnn(channels=4, hidden=16).state_dict(), p)
        paths.append(f'"{p}"')
    job = write_job(tmp_path, model='factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 16 }',
                    directions=f'kind = "bezier"\nmodels = [{", ".join(paths)}]', grid="x = [-0.2, 1.2, 9]")
    assert cli("run", str(job), "--output", str(tmp_path / "one.h5")).returncode == 0
    proc = mpirun(2, "run", str(job), "--output", str(tmp_path / "two.h5"), "--chunk-size", "2")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "two.h5", "r") as b:
        assert "line_test_loss" in a and a["done"][...].all()
        for k in ("test_loss", "line_test_loss", "test_acc", "line_test_acc", "done"):
            np.testing.assert_array_equal(a[k][...], b[k][...], err_msg=k)
        assert a.attrs["test_loss_barrier"] == b.attrs["test_loss_barrier"]


@pytest.mark.parametrize("warm", ["", "warm_start = true\nchain = 2\n"], ids=["cold", "warm-chains"])
def test_hessian_eigenvalues_are_identical_across_sizes(tmp_path, warm):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 4]\ny = [-1.0, 1.0, 3]",
                    extra="points_per_pass = 1\n[hessian]\nenabled = true\nsubset = 60\ntrace_samples = 10\n" + warm)
    assert cli("run", str(job), "--output", str(tmp_path / "one.h5")).returncode == 0
    proc = mpirun(2, "run", str(job), "--output", str(tmp_path / "two.h5"), "--chunk-size", "2")
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "one.h5", "r") as a, h5py.File(tmp_path / "two.h5", "r") as b:
        assert a["done"][...].all() and np.isfinite(a["test_hess_max"][...]).all()
        for k in ("test_loss", "test_hess_max", "test_hess_min", "test_hess_ratio"):
            np.testing.assert_array_equal(a[k][...], b[k][...], err_msg=k)
        assert a.attrs["test_hess_trace"] == b.attrs["test_hess_trace"]


def scenario(n, name, tmp_path, timeout=120):
    """Run ``tests/mpi_scenarios.py NAME`` on n ranks; the per-rank result objects by rank."""
    import json
    import os
    import subprocess

    from util import REPO

    proc = subprocess.run([MPIEXEC, "-n", str(n), PYTHON, str(REPO / "tests" / "mpi_scenarios.py"), name, str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("result.*.json"))]
    assert len(results) == n, proc.stdout + proc.stderr[-3000:]
    return {r["rank"]: r for r in results}, proc


def test_comm_helpers_at_two_ranks(tmp_path):
    from comm_cases import CASES

    results, _ = scenario(2, "comm", tmp_path)
    for rank in (0, 1):
        assert results[rank]["passed"] == [c.__name__ for c in CASES]


def test_independent_runs_on_comm_self_under_mpiexec(tmp_path):
    # Defect 10: the launch check compared the launcher's count with COMM_SELF's size and refused the run,
    # and every process took node-local rank 0 (so cuda:0).
    results, _ = scenario(2, "self_comm", tmp_path)
    assert sorted(r["local_rank"] for r in results.values()) == [0, 1]
    assert all(r["local_size"] == 2 and r["ranks"] == 1 and r["points"] == r["total"] == 20 for r in results.values())
    a, b = values(tmp_path / "self0.h5"), values(tmp_path / "self1.h5")
    for k in METRICS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_message_pending_on_the_callers_communicator_survives_run_job(tmp_path):
    # Defect 10: rank 0 received every tag on the caller's communicator; the run now talks on a Dup.
    results, _ = scenario(2, "pending", tmp_path)
    assert results[0]["pending"] and results[0]["message"] == {"from": "caller", "value": 42}
    assert results[0]["points"] == 20


def test_stop_on_rank0_reaches_a_worker_in_the_middle_of_its_chunk(tmp_path):
    # Defect 5: the worker's per-point poll only looked at its own flag, so it finished its whole chunk.
    results, proc = scenario(2, "stop_rank0", tmp_path)
    assert results[0]["interrupted"] and results[1]["interrupted"]
    assert 1 <= results[1]["here"] < results[1]["chunk"] // 2, results
    assert proc.stderr.count("received SIGTERM") == 1
    done = values(tmp_path / "stop.h5")["done"]
    assert done.sum() == results[0]["here"] + results[1]["here"]


def test_ranks_holding_different_models_are_refused_not_mixed(tmp_path):
    # A surface whose points come from different models on different ranks would look fine and be wrong.
    results, _ = scenario(2, "different_models", tmp_path)
    assert all(r["error"] == "ModelError" for r in results.values())
    assert "origin" in results[0]["message"] and "rank(s) 1" in results[0]["message"]
    assert not (tmp_path / "mixed.h5").exists()


def test_an_overloaded_rank0_serves_only_and_batches_chunks_with_the_same_values(tmp_path):
    # Rank 0 judged overloaded at once: it stops evaluating, then hands out 2, 4, 8 chunks at a time.
    results, proc = scenario(3, "batched", tmp_path)
    assert "stops evaluating and only serves" in proc.stderr and "chunks at a time" in proc.stderr, proc.stderr
    assert sum(r["here"] for r in results.values()) == 13 * 9 and results[0]["here"] < 13 * 9 // 3
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 13]\ny = [-1.0, 1.0, 9]", output="one.h5", name="one.toml")
    assert cli("run", str(job)).returncode == 0
    a, b = values(tmp_path / "batched.h5"), values(tmp_path / "one.h5")
    for k in METRICS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
