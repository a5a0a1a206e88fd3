"""The multi-node sbatch template on a real SLURM cluster of network-namespace nodes (tests/cluster/netns.py).

Three compute nodes, each its own network host (namespace, address, host name,
slurmd); every job here takes two of them with two tasks each, started by the
``multi`` or ``preempt`` template as ``mpiland slurm --nodes 2`` renders it, so
the four MPI ranks reach each other over TCP between the node addresses
(MPICH's OFI netmod with the libfabric ``tcp`` provider, :data:`MPI_ENV`).
Needs what tests/test_slurm_cluster.py needs, plus iproute2 and network
namespaces; skipped with the reason otherwise.

What is checked:
  * one MPI world of 4 ranks over 2 nodes: ranks 0, 1 on one node and 2, 3 on
    the other, node-local ranks 0 and 1 on each (mpiland's ``--debug`` placement
    line), and the ranks of different nodes talk over TCP between the nodes'
    addresses; the surface is bit-identical to a one-process run of the job;
  * a node's link taken down mid-run, a node crashed mid-run (every process on
    it killed), and the job's ranks on one node killed (the node staying up):
    the job ends (NODE_FAIL, NODE_FAIL, FAILED) within :data:`FAULT_BOUND_S`, the file
    keeps the finished points with the one-process run's values, and submitting
    the same script again completes the surface without recomputing them,
    bit-identical to the one-process run;
  * ``scancel --signal=TERM`` on the preempt template: every rank stops cleanly
    (exit status 3), the job requeues itself and the resumed run completes the
    surface identically.
The measured times to failure are printed (``pytest -s``) and documented in docs/launch.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import MARKER_VAR, ClusterError  # noqa: E402
from cluster.netns import IFACE, MultiNodeCluster, netns_unavailable_reason  # noqa: E402
from util import write_job  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MPI_ENV = {"MPICH_CH4_NETMOD": "ofi", "FI_PROVIDER": "tcp", "FI_TCP_IFACE": IFACE}
"""MPICH's TCP path between the nodes: the OFI netmod, libfabric's tcp provider, on the nodes' interface."""

GRID = "x = [-1.0, 1.0, 25]\ny = [-1.0, 1.0, 25]"
TOTAL_POINTS = 25 * 25
MODEL = 'factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 8, hidden = 32 }'
DATA = 'splits = ["test"]\nbatch_size = 120'
RUN_OPTIONS = dict(nodes=2, ntasks_per_node=2, cpus_per_task=1, time="00:10:00")
JOB_TIMEOUT_S = 150
FAULT_AT_POINTS = 40
"""Points in the file before a fault is injected (a few chunks of 8)."""
FAULT_BOUND_S = 90.0
"""A faulted job must have ended this many seconds after the fault (SlurmdTimeout and MessageTimeout of the test
cluster are 5 s; a hang would last until the 10-minute time limit)."""

_PLACEMENT = re.compile(r"\[mpiland r(\d+)\] rank (\d+) on \S+ \(local rank (\d+)/(\d+)\)")


@pytest.fixture(scope="module")
def cluster():
    reason = netns_unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = MultiNodeCluster(nodes=3)
    try:
        c.start()
    except ClusterError as exc:
        c.stop()
        pytest.fail(f"the multi-node test cluster did not start: {exc}")
    print(f"\nmulti-node SLURM test cluster up in {c.startup_seconds:.1f} s on {c.subnet}: "
          + ", ".join(f"{n}={a}" for n, a in c.addrs.items()))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def env(cluster, monkeypatch):
    """This process's environment pointed at the cluster (jobs inherit it from sbatch)."""
    for key in ("SLURM_CONF", MARKER_VAR):
        monkeypatch.setenv(key, cluster.env()[key])
    monkeypatch.setenv("PATH", f"{Path(PYTHON).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    monkeypatch.setenv("MPILAND_PYTHON", PYTHON)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    for key, value in MPI_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("OMP_NUM_THREADS", "SLURM_JOB_ID", "SLURM_JOBID"):
        monkeypatch.delenv(key, raising=False)
    return cluster


def _job(tmp: Path) -> Path:
    return write_job(tmp, grid=GRID, model=MODEL, data=DATA, extra="chunk_size = 8\n")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job as one process, without SLURM or MPI."""
    tmp = tmp_path_factory.mktemp("one-process")
    job = _job(tmp)
    r = subprocess.run([PYTHON, "-m", "mpiland", "run", str(job), "--output", str(tmp / "reference.h5")],
                       cwd=tmp, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    return _read(tmp / "reference.h5")


def _read(path: Path) -> dict:
    import h5py
    import numpy as np

    with h5py.File(path, "r", locking=False) as f:
        return {name: np.asarray(f[name][()]) for name in f if isinstance(f[name], h5py.Dataset)}


def _done(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        return int((_read(path)["done"] == 1).sum())
    except (OSError, KeyError):
        return 0


def _assert_same_surface(path: Path, reference: dict, log: str) -> None:
    import numpy as np

    s = _read(path)
    assert s["done"].all(), log
    for name, value in reference.items():
        if name != "seconds":  # the time each point took
            np.testing.assert_array_equal(s[name], value, err_msg=name)


def _log(workdir: Path) -> str:
    return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')}" for p in sorted(workdir.glob("*.out")))


def _submit(workdir: Path, template: str = "multi", **options) -> tuple[str, str]:
    """Render the template for the job in ``workdir`` as `mpiland slurm --nodes 2` does, submit it; (script, id)."""
    from mpiland.slurm import render_sbatch, submit

    job = _job(workdir)
    script = render_sbatch(str(job), template=template, output="surface.h5", extra_args=["--debug"],
                           **dict(RUN_OPTIONS, **options))
    (workdir / f"{template}.sbatch").write_text(script)
    return script, submit(script, workdir=workdir)


def _wait_final(cluster: MultiNodeCluster, job_id: str, workdir: Path, timeout: float = JOB_TIMEOUT_S) -> dict:
    try:
        return cluster.wait_job(job_id, timeout)
    except ClusterError as exc:
        raise AssertionError(f"{exc}\n{_log(workdir)}") from None


def _wait_completed(cluster: MultiNodeCluster, job_id: str, workdir: Path) -> dict:
    info = _wait_final(cluster, job_id, workdir)
    assert info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0", (
        f"job {job_id}: {info.get('JobState')} exit {info.get('ExitCode')}\n{_log(workdir)}")
    return info


def _wait_mid_run(cluster: MultiNodeCluster, job_id: str, workdir: Path) -> tuple[int, dict[str, list[int]]]:
    """Wait until the file holds FAULT_AT_POINTS points; return that count and the ranks on each node then."""
    path = workdir / "surface.h5"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        state = cluster.job_state(job_id)
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), f"job {job_id} {state} before the fault\n{_log(workdir)}"
        done = _done(path)
        if done >= FAULT_AT_POINTS:
            ranks = cluster.task_ranks(job_id)
            assert done < TOTAL_POINTS, f"the job finished before the fault\n{_log(workdir)}"
            return done, ranks
        time.sleep(0.2)
    raise AssertionError(f"no mid-run point to inject the fault at\n{_log(workdir)}")


def _second_node(info: dict, ranks: dict[str, list[int]]) -> str:
    """The job's node that does not run the batch script (ranks 2 and 3)."""
    assert sorted(ranks.values()) == [[0, 1], [2, 3]], ranks
    (node,) = [n for n in ranks if n != info["BatchHost"]]
    return node


def _assert_partial(path: Path, reference: dict, at_least: int, log: str) -> dict:
    """The file a failed job left: at least ``at_least`` finished points, each with the one-process value."""
    import numpy as np

    partial = _read(path)
    saved = partial["done"] == 1
    assert at_least <= saved.sum() < TOTAL_POINTS, f"{saved.sum()} points in the file\n{log}"
    for name in ("test_loss", "test_acc", "test_loss_stderr"):
        np.testing.assert_array_equal(partial[name][saved], reference[name][saved], err_msg=name)
    return partial


def _resubmit_completes(cluster: MultiNodeCluster, script: str, workdir: Path, partial: dict, reference: dict
                        ) -> None:
    """Submit the same script again: it completes the surface without recomputing the saved points."""
    import numpy as np

    from mpiland.slurm import submit

    job_id = submit(script, workdir=workdir)
    _wait_completed(cluster, job_id, workdir)
    path = workdir / "surface.h5"
    log = _log(workdir)
    _assert_same_surface(path, reference, log)
    saved = partial["done"] == 1
    np.testing.assert_array_equal(_read(path)["seconds"][saved], partial["seconds"][saved])
    assert f"{TOTAL_POINTS - int(saved.sum())} points pending" in log, log


def _exited_with(log: str, status: int) -> set[int]:
    """The task ids srun reports as exited with ``status`` (``srun: error: node2: tasks 2-3: Exited with ...``)."""
    tasks: set[int] = set()
    for m in re.finditer(rf"srun: error: \S+: tasks? ([\d,-]+): Exited with exit code {status}\b", log):
        for part in m.group(1).split(","):
            lo, _, hi = part.partition("-")
            tasks.update(range(int(lo), int(hi or lo) + 1))
    return tasks


def _tcp_peers(pid: int) -> set[str]:
    """IPv4 addresses that process ``pid`` has established TCP connections to."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return set()
    peers = set()
    for line in lines:
        f = line.split()
        if len(f) > 9 and f[3] == "01" and f[9] in inodes:
            raw = bytes.fromhex(f[2].split(":")[0])[::-1]
            peers.add(".".join(str(b) for b in raw))
    return peers


# -- the tests -------------------------------------------------------------------


def test_two_nodes_one_world_bit_identical(env, reference, tmp_path):
    cluster = env
    script, job_id = _submit(tmp_path)
    assert "--nodes=2" in script and "srun --mpi=pmi2" in script

    # While the ranks evaluate: which ranks run on which node, and whom each rank talks to over TCP. Rank 0 hands
    # out the chunks and collects their results, so it and the ranks of the other node connect across the nodes.
    path = tmp_path / "surface.h5"
    ranks: dict[str, list[int]] = {}
    peers: dict[int, set[str]] = {}
    crossing = False
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline and cluster.job_state(job_id) in ("PENDING", "CONFIGURING", "RUNNING"):
        if _done(path) > 0:
            tasks = cluster.task_pids(job_id)
            ranks = {n: sorted(found) for n, found in tasks.items()}
            if sorted(ranks.values()) == [[0, 1], [2, 3]]:
                first, second = sorted(ranks, key=lambda n: ranks[n])
                peers = {r: _tcp_peers(pid) for found in tasks.values() for r, pid in found.items()}
                crossing = cluster.addrs[second] in peers[0] and all(
                    cluster.addrs[first] in peers[r] for r in tasks[second])
                if crossing:
                    break
        time.sleep(0.2)
    info = _wait_completed(cluster, job_id, tmp_path)
    log = _log(tmp_path)

    assert info["NumNodes"] == "2" and info["NumTasks"] == "4", info
    assert sorted(ranks.values()) == [[0, 1], [2, 3]], f"ranks per node: {ranks}\n{log}"
    assert crossing, f"no TCP connections between the nodes' ranks (rank: peers {peers}, nodes {cluster.addrs})"

    placement = {int(m.group(2)): (int(m.group(3)), int(m.group(4))) for m in _PLACEMENT.finditer(log)}
    assert placement == {0: (0, 2), 1: (1, 2), 2: (0, 2), 3: (1, 2)}, f"rank: (local rank, local size) {placement}"
    assert "4 rank(s)" in log, log
    _assert_same_surface(path, reference, log)


@pytest.mark.parametrize("fault", ["link-down", "node-crash", "ranks-killed"])
def test_node_fault_ends_job_and_resubmission_completes(env, reference, tmp_path, fault, monkeypatch):
    cluster = env
    # SLURM requeues a batch job that lost a node (JobRequeue=1, its default); here the job is to end, and the
    # test submits it again.
    monkeypatch.setenv("SBATCH_NO_REQUEUE", "1")
    script, job_id = _submit(tmp_path)
    before, ranks = _wait_mid_run(cluster, job_id, tmp_path)
    info = cluster.job_info(job_id)
    node = _second_node(info, ranks)

    t0 = time.monotonic()
    try:
        if fault == "link-down":
            cluster.link_down(node)
        elif fault == "node-crash":
            cluster.crash_node(node)
        else:
            cluster.kill_tasks(job_id, node)
        info = _wait_final(cluster, job_id, tmp_path, timeout=FAULT_BOUND_S + 30)
        seconds = time.monotonic() - t0
    finally:
        if fault == "link-down":
            cluster.link_up(node)
        elif fault == "node-crash":
            cluster.restart_node(node)
    log = _log(tmp_path)
    print(f"\n{fault} on {node}: job {job_id} {info.get('JobState')} (exit {info.get('ExitCode')}) "
          f"{seconds:.1f} s after the fault")
    # SLURM ends a job whose node it declared down in NODE_FAIL (the exit code it records varies with the timing);
    # ranks killed on a node that stays up end the step (srun --kill-on-bad-exit) and so the script: FAILED.
    assert info.get("JobState") == ("FAILED" if fault == "ranks-killed" else "NODE_FAIL"), log
    assert seconds < FAULT_BOUND_S, f"the job took {seconds:.1f} s to end after the fault\n{log}"

    partial = _assert_partial(tmp_path / "surface.h5", reference, before, log)
    # The same script again, at once: it runs on two nodes that are up (node2 may still be down).
    t0 = time.monotonic()
    _resubmit_completes(cluster, script, tmp_path, partial, reference)
    print(f"resubmitted job completed in {time.monotonic() - t0:.1f} s")
    # The faulted node comes back, and no task of the failed job is left on it (slurmd ends them when it
    # hears of the job's end).
    cluster.wait_idle(90)
    deadline = time.monotonic() + 30
    while cluster.task_ranks(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not cluster.task_ranks(job_id), f"tasks of job {job_id} outlived it: {cluster.task_ranks(job_id)}"


def test_sigterm_preemption_requeues_and_resumes(env, reference, tmp_path):
    import numpy as np

    cluster = env
    _, job_id = _submit(tmp_path, template="preempt", signal_seconds=60)
    before, ranks = _wait_mid_run(cluster, job_id, tmp_path)
    assert sorted(ranks.values()) == [[0, 1], [2, 3]], ranks
    t0 = time.monotonic()
    cluster.run(["scancel", "--signal=TERM", job_id])

    deadline = time.monotonic() + 60
    info: dict[str, str] = {}
    while time.monotonic() < deadline:
        info = cluster.job_info(job_id)
        if info.get("Restarts") == "1" and info.get("JobState") == "PENDING":
            break
        assert info.get("JobState") not in ("COMPLETED", "FAILED", "CANCELLED"), (
            f"job ended instead of requeueing: {info.get('JobState')} {info.get('ExitCode')}\n{_log(tmp_path)}")
        time.sleep(0.3)
    else:
        raise AssertionError(f"job not requeued: {info}\n{_log(tmp_path)}")
    seconds = time.monotonic() - t0
    log = _log(tmp_path)
    print(f"\nSIGTERM: job {job_id} stopped and requeued {seconds:.1f} s after scancel")
    assert "requeueing job" in log and "mpiland: exit status 3" in log, log
    # Every rank on both nodes stopped cleanly (status 3: from its own SIGTERM or rank 0's stop message), none killed.
    assert _exited_with(log, 3) == {0, 1, 2, 3}, log
    partial = _assert_partial(tmp_path / "surface.h5", reference, before, log)

    _wait_completed(cluster, job_id, tmp_path)
    log = _log(tmp_path)
    assert "(restart 1)" in log and "mpiland: exit status 0" in log, log
    _assert_same_surface(tmp_path / "surface.h5", reference, log)
    saved = partial["done"] == 1
    np.testing.assert_array_equal(_read(tmp_path / "surface.h5")["seconds"][saved], partial["seconds"][saved])
