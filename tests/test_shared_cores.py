"""On a busy machine idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE), so shared cores do not collapse a run.

The command line and ``import mpiland`` (before torch) choose the policy from the
other work they see, unless the user's environment chose one; imported after
torch, mpiland changes nothing and says so. What the OpenMP runtime actually read
is checked through libgomp's own report (``OMP_DISPLAY_ENV=verbose`` prints its
spin count at start-up: 0 for PASSIVE, 300000 for its default, 3e10 for ACTIVE).
"Busy" is made by processes that spin on the CPU for the moment it takes; no test
measures time.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest

import mpiland as ml
import mpiland.launch
from mpiland.launch import (BUSY_POLICY, BUSY_THRESHOLD, WAIT_VARS, WaitPolicy, choose_wait_policy, log_waiting,
                            other_load)
from tests.util import REPO, write_job

SPIN = re.compile(r"GOMP_SPINCOUNT = '(\d+)'")


def _env(**values: str) -> dict[str, str]:
    """This environment without any OpenMP wait variable (the pytest process may have one), plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
    return {**env, "PYTHONUNBUFFERED": "1", **values}


@contextmanager
def busy_machine() -> Iterator[None]:
    """Enough processes spinning on the CPU for :func:`other_load` to see a busy machine, while the block runs."""
    total = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(math.ceil(2 * BUSY_THRESHOLD * total / usable))]
    try:
        time.sleep(0.3)  # running, not starting
        yield
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(**env), capture_output=True, text=True,
                          timeout=120)


def _spin_count(stderr: str) -> int:
    """The spin count libgomp reported at start-up (the test is skipped for another OpenMP runtime)."""
    found = SPIN.findall(stderr)
    if not found:
        pytest.skip("torch's OpenMP runtime is not GNU libgomp (no GOMP_SPINCOUNT in OMP_DISPLAY_ENV's report)")
    return int(found[0])


# --- the command line -------------------------------------------------------------------------------------------

def test_cli_run_uses_the_policy_it_logs_and_a_users_policy_wins(tmp_path):
    """`mpiland run` with no wait variable: libgomp's spin count is the one its DEBUG line names (0 when it chose
    PASSIVE, 300000 when it kept the default); with OMP_WAIT_POLICY=ACTIVE it spins. How the threads wait does
    not change a single value of the surface."""
    surfaces = {}
    for label, extra in (("default", {}), ("active", {"OMP_WAIT_POLICY": "ACTIVE"})):
        job = write_job(tmp_path, output=f"{label}.h5", name=f"{label}.toml")
        job.write_text(job.read_text().replace("threads = 1", "threads = 2"))  # two threads: there is waiting to do
        proc = subprocess.run([sys.executable, "-m", "mpiland", "run", str(job), "--debug"], cwd=REPO,
                              env=_env(OMP_DISPLAY_ENV="verbose", **extra), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        spins = _spin_count(proc.stderr)
        if label == "default":
            if "OpenMP threads sleep while they wait (OMP_WAIT_POLICY=PASSIVE: the machine was busy" in proc.stderr:
                assert spins == 0, proc.stderr
            else:
                assert "OpenMP threads spin, then sleep, while they wait (the OpenMP runtime's default: the machine " \
                       "was idle" in proc.stderr, proc.stderr
                assert spins == 300000, proc.stderr
        else:
            assert spins > 300000, proc.stderr
            assert "(OMP_WAIT_POLICY=ACTIVE, set by the user)" in proc.stderr
        surfaces[label] = ml.open(tmp_path / f"{label}.h5")
    default, active = surfaces["default"], surfaces["active"]
    assert default.done.all() and set(default.metrics) == set(active.metrics)
    for name in default.metrics:
        assert np.array_equal(default.metrics[name], active.metrics[name], equal_nan=True), name


MAIN = """
import os, sys
import mpiland.cli
sys.argv = ["mpiland", "--version"]
try:
    mpiland.cli.main()
except SystemExit:
    pass
print("OMP_WAIT_POLICY=" + os.environ.get("OMP_WAIT_POLICY", "<unset>"))
"""


@pytest.mark.parametrize("env, expected", [
    ({}, BUSY_POLICY),
    ({"OMP_WAIT_POLICY": "active"}, "active"),
    ({"OMP_WAIT_POLICY": ""}, ""),
    ({"GOMP_SPINCOUNT": "1000"}, "<unset>"),
    ({"KMP_BLOCKTIME": "0"}, "<unset>"),
])
def test_the_cli_on_a_busy_machine_sets_the_policy_only_when_the_environment_has_none(env, expected):
    with busy_machine():
        proc = _python(MAIN, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"OMP_WAIT_POLICY={expected}"


# --- the Python API ---------------------------------------------------------------------------------------------

API = """
import os, sys
{first}
import mpiland.launch
import torch
torch.ones(4).sum()  # the OpenMP runtime is loaded with torch: its report is on stderr by now
policy = mpiland.launch.wait_policy()
print(os.environ.get("OMP_WAIT_POLICY", "<unset>"), policy.source, policy.others, "torch" in sys.modules)
"""


def test_importing_mpiland_before_torch_on_a_busy_machine_makes_threads_sleep():
    with busy_machine():
        proc = _python(API.format(first=""), OMP_DISPLAY_ENV="verbose")
    assert proc.returncode == 0, proc.stderr
    policy, source, others, torch_loaded = proc.stdout.split()
    assert (policy, source, torch_loaded) == (BUSY_POLICY, "mpiland", "True") and float(others) >= BUSY_THRESHOLD
    assert _spin_count(proc.stderr) == 0


def test_importing_mpiland_before_torch_chooses_from_the_load_it_records():
    proc = _python(API.format(first=""), OMP_DISPLAY_ENV="verbose")
    assert proc.returncode == 0, proc.stderr
    policy, source, others, _ = proc.stdout.split()
    assert source == "mpiland"
    busy = float(others) >= BUSY_THRESHOLD
    assert policy == (BUSY_POLICY if busy else "<unset>")
    assert _spin_count(proc.stderr) == (0 if busy else 300000)


def test_importing_mpiland_after_torch_changes_nothing_and_says_so():
    with busy_machine():
        proc = _python(API.format(first="import torch"), OMP_DISPLAY_ENV="verbose")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["<unset>", "torch-first", "None", "True"]
    assert _spin_count(proc.stderr) == 300000  # libgomp's own default, as before mpiland chose one


def test_importing_mpiland_stays_torch_free():
    proc = _python("import sys, mpiland.launch as l; print('torch' in sys.modules, l.wait_policy().source)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "mpiland"]


# --- the decision, the measurement and the log ------------------------------------------------------------------

def test_the_choice_follows_the_load_unless_the_user_or_torch_came_first(monkeypatch):
    env: dict[str, str] = {}
    assert choose_wait_policy(env, {}, load=0.0) == WaitPolicy("", "mpiland", 0.0) and env == {}
    assert choose_wait_policy(env, {}, load=BUSY_THRESHOLD) == WaitPolicy("OMP_WAIT_POLICY=PASSIVE", "mpiland",
                                                                          BUSY_THRESHOLD)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setattr(mpiland.launch, "other_load", lambda **_: None)  # no way to tell: the safe side
    env = {}
    assert choose_wait_policy(env, {}).setting == "OMP_WAIT_POLICY=PASSIVE" and env == {"OMP_WAIT_POLICY": "PASSIVE"}
    for name in WAIT_VARS:
        env = {name: "7"}
        assert choose_wait_policy(env, {}, load=4.0) == WaitPolicy(f"{name}=7", "user") and env == {name: "7"}
    env = {}
    assert choose_wait_policy(env, {"torch": object()}, load=4.0) == WaitPolicy("", "torch-first") and env == {}
    assert not WaitPolicy("OMP_WAIT_POLICY=passive", "user").spins
    assert WaitPolicy("OMP_WAIT_POLICY=PASSIVE GOMP_SPINCOUNT=1000", "user").spins
    assert WaitPolicy("", "torch-first").spins and WaitPolicy("OMP_WAIT_POLICY=ACTIVE", "user").spins


@pytest.mark.skipif(not os.path.exists("/proc/loadavg"), reason="measured from /proc/loadavg")
def test_other_load_sees_busy_processes_but_not_the_launchers_own_ranks():
    with busy_machine():
        assert other_load(env={}) >= BUSY_THRESHOLD
        assert other_load(env={"OMPI_COMM_WORLD_LOCAL_SIZE": "100000"}) == 0.0


def test_spinning_threads_on_a_busy_machine_are_named_at_info(caplog):
    late = WaitPolicy("", "torch-first")
    with caplog.at_level(logging.DEBUG, logger="mpiland"):
        message = log_waiting(2, late, others=3.0)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "torch was imported before mpiland" in message and "import mpiland before torch" in message
    assert "(3.0 other runnable task(s))" in message
    quiet = [(1, late, 3.0), (2, late, 0.0), (2, WaitPolicy("OMP_WAIT_POLICY=PASSIVE", "mpiland", 3.0), 3.0),
             (2, WaitPolicy("", "mpiland", 0.0), 3.0)]  # mpiland's own choice is DEBUG even if the load came later
    for threads, policy, others in quiet:
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="mpiland"):
            log_waiting(threads, policy, others=others)
        assert [r.levelno for r in caplog.records] == [logging.DEBUG], (threads, policy, others)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="mpiland"):
        message = log_waiting(2, WaitPolicy("OMP_WAIT_POLICY=ACTIVE", "user"), others=1.0)
    assert caplog.records[0].levelno == logging.INFO and "unset them or set OMP_WAIT_POLICY=PASSIVE" in message
