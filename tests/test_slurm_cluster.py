"""The sbatch templates on a real one-node SLURM cluster (started by tests/cluster).

Needs the Debian packages ``slurmctld slurmd munge slurm-client`` and root (the
daemons run as root); without them every test here is skipped with the reason.
The cluster starts once per session (about a second) and is
stopped in teardown, also when tests fail.

What runs:
  * the harness itself: an ``sbatch --wrap`` job, and ``srun --mpi=pmi2 -n 2``
    giving mpi4py one world of 2 ranks (the MPICH wheel from PyPI), and plain
    ``srun --mpi=none`` singletons refused with the fix named;
  * every template accepted by ``sbatch --test-only``;
  * the single-node template on a small job: a complete, finite surface;
  * the preemptible template interrupted with ``scancel --signal=USR1``: the job
    exits with status 3, requeues itself, the requeued job resumes the same file
    without recomputing finished points, and the values equal the uninterrupted run's.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import MARKER_VAR, ClusterError, SlurmCluster, unavailable_reason  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# A demo CNN without checkpoint (no training step), 2 ranks, 1 CPU each, small chunks.
JOB_TOML = """\
name = "slurmtest"

[model]
factory = "mpiland.demo:digits_cnn"
kwargs = { channels = 8, hidden = 32 }
seed = 3

[data]
dataset = "digits"
splits = ["test"]

[directions]
seed = 1

[grid]
x = [-1.0, 1.0, 31]
y = [-1.0, 1.0, 31]

[output]
path = "surface.h5"

[run]
device = "cpu"
chunk_size = 16
progress = "lines"
"""
TOTAL_POINTS = 31 * 31
RUN_OPTIONS = dict(nodes=1, ntasks_per_node=2, cpus_per_task=1, time="00:10:00")
JOB_TIMEOUT_S = 120


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster()
    try:
        cluster.start()
    except ClusterError as exc:
        cluster.stop()
        pytest.fail(f"the test SLURM cluster did not start: {exc}")
    print(f"\nSLURM test cluster up in {cluster.startup_seconds:.1f} s ({cluster.root})")
    try:
        yield cluster
    finally:
        cluster.stop()


def _point_env_at(cluster: SlurmCluster, mp: pytest.MonkeyPatch) -> None:
    """Point this process's environment at the cluster; jobs inherit it from sbatch."""
    for key in ("SLURM_CONF", MARKER_VAR):
        mp.setenv(key, cluster.env()[key])
    mp.setenv("PATH", f"{Path(PYTHON).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    mp.setenv("MPILAND_PYTHON", PYTHON)
    mp.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for key in ("OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_JOBID"):
        mp.delenv(key, raising=False)


@pytest.fixture
def cluster_env(slurm_cluster, monkeypatch):
    """The cluster, with this process's environment pointed at it."""
    _point_env_at(slurm_cluster, monkeypatch)
    return slurm_cluster


def _log_text(workdir: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}" for p in sorted(workdir.glob("*.out")))


def _wait_done(cluster: SlurmCluster, job_id: str, workdir: Path) -> dict[str, str]:
    try:
        info = cluster.wait_job(job_id, JOB_TIMEOUT_S)
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{_log_text(workdir)}") from None
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (
        f"job {job_id}: {info.get('JobState')} exit {info.get('ExitCode')}\n{_log_text(workdir)}")
    return info


def _two_task_job(cluster: SlurmCluster, workdir: Path, name: str, command: str) -> str:
    """Submit a two-task batch script running ``command``, wait for it, and return its output."""
    script = workdir / f"{name}.sh"
    script.write_text(f"#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --output={name}-%j.out\n{command}\n")
    job_id = cluster.run(["sbatch", "--parsable", str(script)], cwd=workdir).stdout.strip()
    _wait_done(cluster, job_id, workdir)
    return (workdir / f"{name}-{job_id}.out").read_text()


def _read_surface(path: Path) -> dict:
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        return {name: np.asarray(f[name][()]) for name in f if isinstance(f[name], h5py.Dataset)}


# -- the harness ------------------------------------------------------------------


def test_wrap_job(cluster_env, tmp_path):
    r = cluster_env.run(["sbatch", "--parsable", "-o", "wrap-%j.out", "--wrap", 'echo "hello from job $SLURM_JOB_ID"'],
                        cwd=tmp_path)
    job_id = r.stdout.strip().split(";")[0]
    _wait_done(cluster_env, job_id, tmp_path)
    assert (tmp_path / f"wrap-{job_id}.out").read_text().strip() == f"hello from job {job_id}"


def test_srun_pmi2_makes_one_mpi_world(cluster_env, tmp_path):
    mpi_list = cluster_env.run(["srun", "--mpi=list"]).stdout
    assert "pmi2" in mpi_list, mpi_list
    out = _two_task_job(cluster_env, tmp_path, "mpi",
                        f'srun --mpi=pmi2 -n 2 {PYTHON} -c "from mpi4py import MPI; print(MPI.COMM_WORLD.Get_size())"')
    assert out.split() == ["2", "2"], _log_text(tmp_path)


def test_plain_srun_singletons_are_named(cluster_env, tmp_path):
    (tmp_path / "job.toml").write_text(JOB_TOML)
    out = _two_task_job(cluster_env, tmp_path, "singletons",
                        f'srun --mpi=none -n 2 {PYTHON} -m mpiland run job.toml; echo "status $?"')
    assert out.count("error: launched 2 singleton processes") == 2, out
    assert "srun --mpi=pmi2" in out and "status 2" in out
    assert not (tmp_path / "surface.h5").exists()


# -- the templates --------------------------------------------------------------------


@pytest.mark.parametrize("template", ["single", "multi", "preempt", "array"])
def test_templates_accepted_by_sbatch(cluster_env, tmp_path, template, monkeypatch):
    from mpiland.slurm import render_sbatch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(JOB_TOML)
    (tmp_path / "ckpts.txt").write_text("a.pt\nb.pt\n")
    kwargs = dict(RUN_OPTIONS, template=template, time="00:20:00")
    if template == "array":
        kwargs["checkpoints"] = "ckpts.txt"
    (tmp_path / "s.sbatch").write_text(render_sbatch("job.toml", **kwargs))
    r = cluster_env.run(["sbatch", "--test-only", "s.sbatch"], cwd=tmp_path, check=False)
    assert r.returncode == 0, r.stderr
    assert "to start at" in r.stderr


@pytest.fixture(scope="module")
def reference_surface(slurm_cluster, tmp_path_factory):
    """The uninterrupted run: the single-node template on the test job, submitted with mpiland.slurm.submit."""
    from mpiland.slurm import render_sbatch, submit

    workdir = tmp_path_factory.mktemp("single")
    (workdir / "job.toml").write_text(JOB_TOML)
    mp = pytest.MonkeyPatch()
    try:
        _point_env_at(slurm_cluster, mp)
        mp.chdir(workdir)
        script = render_sbatch("job.toml", template="single", output="surface_a.h5", **RUN_OPTIONS)
        (workdir / "single.sbatch").write_text(script)
        t0 = time.monotonic()
        job_id = submit(script, workdir=workdir)
        info = _wait_done(slurm_cluster, job_id, workdir)
        seconds = time.monotonic() - t0
    finally:
        mp.undo()
    return workdir / "surface_a.h5", info, seconds


def test_single_template_completes_surface(reference_surface):
    import numpy as np

    path, info, seconds = reference_surface
    workdir = path.parent
    log = _log_text(workdir)
    assert path.is_file(), log
    s = _read_surface(path)
    assert s["done"].shape == (31, 31)
    assert s["done"].all(), log
    assert np.isfinite(s["test_loss"]).all() and np.isfinite(s["test_acc"]).all()
    assert ((s["test_acc"] >= 0) & (s["test_acc"] <= 1)).all()
    assert "2 rank(s)" in log, log
    assert info["NumTasks"] == "2"


def test_preempt_template_requeues_and_resumes(cluster_env, reference_surface, tmp_path, monkeypatch):
    import numpy as np

    from mpiland.slurm import render_sbatch, submit

    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.toml").write_text(JOB_TOML)
    script = render_sbatch("job.toml", template="preempt", output="surface_b.h5", signal_seconds=120, **RUN_OPTIONS)
    job_id = submit(script, workdir=tmp_path)
    surface_b = tmp_path / "surface_b.h5"

    # Interrupt once some chunks are in the file.
    deadline = time.monotonic() + JOB_TIMEOUT_S
    done = 0
    while time.monotonic() < deadline:
        if cluster_env.job_state(job_id) in ("COMPLETED", "FAILED", "CANCELLED"):
            break
        if surface_b.exists():
            try:
                done = int(_read_surface(surface_b)["done"].sum())
            except (OSError, KeyError):
                done = 0
            if done >= 48:
                break
        time.sleep(0.5)
    assert 0 < done < TOTAL_POINTS, f"no mid-run point to interrupt at (done={done})\n{_log_text(tmp_path)}"
    cluster_env.run(["scancel", "--signal=USR1", job_id])

    # The script sees exit status 3 and requeues the job: pending again, restart count 1.
    deadline = time.monotonic() + 60
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = cluster_env.job_info(job_id)
        if info.get("Restarts") == "1" and info.get("JobState") == "PENDING":
            break
        assert info.get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED"), (
            f"job ended instead of requeueing: {info.get('JobState')} {info.get('ExitCode')}\n{_log_text(tmp_path)}")
        time.sleep(0.5)
    else:
        raise AssertionError(f"job not requeued: {info}\n{_log_text(tmp_path)}")
    log = _log_text(tmp_path)
    assert "requeueing job" in log, log

    partial = _read_surface(surface_b)
    saved = partial["done"].astype(bool)
    assert 0 < saved.sum() < TOTAL_POINTS, f"interrupted file has {saved.sum()} points\n{log}"

    # The requeued job starts again once its credential expired (cred_expire=5 s on the test cluster).
    info = _wait_done(cluster_env, job_id, tmp_path)
    assert info.get("Restarts") == "1"
    log = _log_text(tmp_path)
    assert "(restart 1)" in log and "mpiland: exit status 0" in log, log

    final = _read_surface(surface_b)
    reference = _read_surface(reference_surface[0])
    assert final["done"].all(), log
    # Points saved before the interruption were not evaluated again.
    np.testing.assert_array_equal(final["seconds"][saved], partial["seconds"][saved])
    # The resumed surface equals the uninterrupted run's.
    for name in ("xcoordinates", "ycoordinates", "test_loss", "test_acc", "test_loss_stderr", "done"):
        np.testing.assert_array_equal(final[name], reference[name], err_msg=name)



def test_array_template_one_surface_per_checkpoint(cluster_env, tmp_path, monkeypatch):
    import json

    import h5py
    import numpy as np
    import torch

    from mpiland.demo import digits_cnn
    from mpiland.slurm import render_sbatch, submit

    monkeypatch.chdir(tmp_path)
    job = JOB_TOML.replace("y = [-1.0, 1.0, 31]\n", "").replace("x = [-1.0, 1.0, 31]", "x = [-1.0, 1.0, 9]")
    (tmp_path / "job.toml").write_text(job)
    checkpoints = ["ckpt/epoch_1.pt", "ckpt/run b/epoch_2.pt"]
    for seed, name in enumerate(checkpoints, start=1):
        torch.manual_seed(seed)
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(digits_cnn(channels=8, hidden=32).state_dict(), tmp_path / name)
    (tmp_path / "ckpts.txt").write_text("# two checkpoints\n" + "\n".join(checkpoints) + "\n")

    script = render_sbatch("job.toml", template="array", checkpoints="ckpts.txt", output="surfaces/sweep",
                           **dict(RUN_OPTIONS, ntasks_per_node=1))
    job_id = submit(script, workdir=tmp_path)
    try:
        records = cluster_env.wait_records(job_id, JOB_TIMEOUT_S)
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{_log_text(tmp_path)}") from None
    log = _log_text(tmp_path)
    assert len(records) == 2, records
    assert all(r["JobState"] == "COMPLETED" and r["ExitCode"] == "0:0" for r in records), log

    losses = []
    for name in checkpoints:
        path = tmp_path / "surfaces" / "sweep" / (Path(name).stem + ".h5")
        assert path.is_file(), log
        s = _read_surface(path)
        assert s["done"].all() and np.isfinite(s["test_loss"]).all(), log
        with h5py.File(path, "r", locking=False) as f:
            assert json.loads(f.attrs["job_json"])["model"]["checkpoint"] == name
        losses.append(s["test_loss"])
    assert not np.array_equal(losses[0], losses[1])
