"""benchmarks/coordinator.py at 8 ranks for about a second: the real protocol, and JSON figures that add up."""

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from util import PYTHON, REPO

MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python")]


def bench(*args):
    proc = subprocess.run([PYTHON, str(REPO / "benchmarks" / "coordinator.py"), *args, "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_eight_ranks_figures():
    out = bench("--ranks", "8", "--chunk", "2", "--cost", "0.02", "--seconds", "1")
    assert out["cost_s"] == 0.02 and out["cores"] >= 1
    (run,) = out["runs"]
    assert run["ranks"] == 8 and run["chunk_size"] == 2
    assert run["points"] == round(1 * 8 / 0.02) and run["missing_points"] == 0
    assert run["chunks"] == math.ceil(run["points"] / 2)
    assert run["ideal_s"] == pytest.approx(run["points"] * 0.02 / 8, abs=1e-3)
    assert run["ideal_points_per_s"] == pytest.approx(8 / 0.02)
    # one rank alone would reach 1/8; sharing the work must beat that by far
    assert 0.3 < run["efficiency"] <= 1.0
    assert run["efficiency"] <= run["protocol_efficiency"] * 1.01 and run["protocol_efficiency"] <= 1.0
    assert run["cost_measured_s"] >= 0.02
    assert 0.0 <= run["worker_idle_fraction"] <= run["worker_idle_fraction_max"] < 1.0
    assert run["chunks_per_s"] == pytest.approx(run["chunks"] / run["protocol_s"], rel=0.1)
    assert 0.0 < run["rank0_service_s_per_chunk"] < 0.02 and 0.0 < run["rank0_load"] < 1.0
    assert 0.0 < run["rank0_points_share"] < 2.0
    assert run["launch_s"] >= run["protocol_s"] and 0.0 <= run["start_skew_s"] < run["protocol_s"]


def test_bad_rank_list_is_one_sentence():
    proc = subprocess.run([PYTHON, str(REPO / "benchmarks" / "coordinator.py"), "--ranks", "8,x"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "'x' in '8,x' is not a whole number" in proc.stderr and "Traceback" not in proc.stderr
