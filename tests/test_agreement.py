"""Every collective is entered by every rank: disagreements between ranks end in one agreed outcome, never a hang.

Scenarios under ``mpiexec -n 2`` where one rank differs from the other: it cannot run
a batched pass (points per pass), or its data is missing (Hessian directions, which
rank 0 computes and broadcasts).
"""

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from util import PYTHON, cli, write_job

MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python")]


def test_ranks_that_disagree_on_points_per_pass_agree_on_one(tmp_path):
    """Rank 1 cannot vmap the model: both ranks must use one point per pass, and the file says so."""
    job = write_job(tmp_path, model='factory = "tests/models.py:vmap_fails_on_rank"\nkwargs = { rank = 1 }',
                    extra="points_per_pass = 4\nchunk_size = 2\n")
    ref = tmp_path / "ref.h5"
    assert cli("run", str(job), "--output", str(ref), "--points-per-pass", "1").returncode == 0
    out = tmp_path / "two.h5"
    proc = cli("run", str(job), "--output", str(out), launcher=[MPIEXEC, "-n", "2"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        assert b["done"][...].all()
        assert int(b.attrs["points_per_pass"]) == 1
        for name in ("test_loss", "test_acc", "test_loss_stderr"):
            np.testing.assert_array_equal(b[name][...], a[name][...], err_msg=name)


def test_data_missing_on_one_rank_with_hessian_directions_is_one_error(tmp_path):
    """Rank 1 cannot load its data while rank 0 computes the Hessian directions: exit 2, no hang, no file."""
    job = write_job(tmp_path, directions='kind = "hessian"',
                    data='factory = "tests/datasets.py:missing_on_rank"\nsplits = ["test"]\nbatch_size = 50',
                    extra="[hessian]\nmax_iter = 20\n")
    proc = cli("run", str(job), launcher=[MPIEXEC, "-n", "2"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "rank 1" in errors[0] and "FileNotFoundError" in errors[0], proc.stderr
    assert not (tmp_path / "surface.h5").exists()
