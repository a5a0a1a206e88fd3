"""The parallel-HDF5 writer for real: every rank writes its chunks through MPI-IO.

Runs in the environment that docker/install-mpio-env.sh builds (h5py against
Debian's parallel HDF5, launched with Debian's MPICH), named by the environment
variable MPILAND_MPIO_PYTHON (``make test`` sets it when .venv-mpio exists).
"""

import os
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest

from util import REPO, cli, write_job

MPIO_PYTHON = os.environ.get("MPILAND_MPIO_PYTHON", "")
MPIEXEC = shutil.which("mpiexec.mpich") or shutil.which("mpiexec.hydra")
pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not MPIO_PYTHON or not Path(MPIO_PYTHON).exists(),
                       reason="MPILAND_MPIO_PYTHON is not set (build one with docker/install-mpio-env.sh)"),
    pytest.mark.skipif(MPIEXEC is None, reason="Debian's mpiexec.mpich is not installed"),
]
METRICS = ("test_loss", "test_acc", "test_loss_stderr", "done")


def run_mpio(n, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "MPI_", "HYDRA_"))}
    return subprocess.run([MPIEXEC, "-n", str(n), MPIO_PYTHON, "-m", "mpiland", "run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def values(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in METRICS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mpio")
    job = write_job(tmp, model='factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 16 }',
                    grid="x = [-1.0, 1.0, 7]\ny = [-1.0, 1.0, 5]", output="ref.h5")
    assert cli("run", str(job)).returncode == 0
    return tmp, job, values(tmp / "ref.h5")


def test_h5py_has_mpi():
    out = subprocess.run([MPIO_PYTHON, "-c", "import h5py; print(h5py.get_config().mpi)"], capture_output=True, text=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("writer", ["mpio", "gather"])
def test_writers_match_single_process(reference, n, writer):
    tmp, job, ref = reference
    out = tmp / f"{writer}{n}.h5"
    proc = run_mpio(n, str(job), "--output", str(out), "--writer", writer, "--chunk-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert f"writer {writer}" in proc.stderr
    got = values(out)
    for k in METRICS:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=f"{k}, {writer} writer, {n} ranks")


def test_auto_picks_mpio_and_resumes(reference):
    tmp, job, ref = reference
    out = tmp / "resume.h5"
    assert run_mpio(2, str(job), "--output", str(out)).returncode == 0
    with h5py.File(out, "r+") as f:
        f["done"][3:, :] = 0
        f["test_loss"][3:, :] = np.nan
    proc = run_mpio(3, str(job), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "writer mpio" in proc.stderr and "resuming" in proc.stderr
    got = values(out)
    for k in METRICS:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_refinement_through_mpio_matches_one_process(tmp_path):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 17]\ny = [-1.0, 1.0, 9]", output="one.h5")
    assert cli("run", str(job), "--set", "grid.refine=true", "--set", "grid.refine_tol=0.5").returncode == 0
    ref = values(tmp_path / "one.h5")
    assert (ref["done"] == 2).any() and (ref["done"] == 1).any() and not (ref["done"] == 0).any()
    proc = run_mpio(2, str(job), "--output", str(tmp_path / "two.h5"), "--writer", "mpio", "--chunk-size", "3",
                    "--set", "grid.refine=true", "--set", "grid.refine_tol=0.5")
    assert proc.returncode == 0, proc.stderr
    assert "writer mpio" in proc.stderr
    got = values(tmp_path / "two.h5")
    for k in METRICS:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_mpio_writer_in_point_groups_writes_from_the_leaders_only(reference):
    """Two groups of two ranks with the MPI-IO writer: only leaders hold results; the file is the one-rank file."""
    tmp, job, ref = reference
    out = tmp / "groups.h5"
    proc = run_mpio(4, str(job), "--output", str(out), "--writer", "mpio", "--group-size", "2", "--chunk-size", "3")
    assert proc.returncode == 0, proc.stderr
    assert "point groups: 2 group(s) of 2 rank(s)" in proc.stderr and "writer mpio" in proc.stderr
    got = values(out)
    for k in METRICS:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
