"""Checks for docker/install-mpio-env.sh and the environment it builds.

The parallel-HDF5 tests run plain h5py (no mpiland code) under Debian's
mpiexec.mpich in the interpreter named by MPILAND_MPIO_PYTHON (``make test``
sets it when .venv-mpio exists), or in the current one if its h5py has MPI;
elsewhere they are skipped.
"""

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "install-mpio-env.sh"


def run_script(*args):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_help_prints_usage():
    res = run_script("--help")
    assert res.returncode == 0
    assert "VENV_DIR [--torch SPEC] [--project DIR]" in res.stderr


@pytest.mark.parametrize(
    "args",
    [(), ("--bogus", "/tmp/x"), ("a", "b"), ("venv", "--torch")],
    ids=["no-venv", "unknown-option", "two-venvs", "torch-without-spec"],
)
def test_bad_arguments_exit_2_before_doing_anything(args):
    res = run_script(*args)
    assert res.returncode == 2, res.stderr
    assert "Usage:" in res.stderr


def test_project_without_metadata_is_refused(tmp_path):
    res = run_script(str(tmp_path / "venv"), "--project", str(tmp_path))
    assert res.returncode == 1
    assert "no setup.cfg" in res.stderr
    assert not (tmp_path / "venv").exists()


def _mpio_python():
    """The interpreter of the parallel-HDF5 venv, or a reason to skip."""
    python = os.environ.get("MPILAND_MPIO_PYTHON") or sys.executable
    if not shutil.which("mpiexec.mpich"):
        return None, "Debian's mpiexec.mpich is not installed"
    probe = subprocess.run(
        [python, "-c", "import h5py, mpi4py; print(h5py.get_config().mpi)"],
        capture_output=True, text=True,
    )
    if probe.stdout.strip() != "True":
        return None, f"{python} has no h5py built with MPI (see docker/install-mpio-env.sh)"
    return python, None


WRITER = textwrap.dedent(
    """
    import sys
    import h5py
    import numpy as np
    from mpi4py import MPI

    path, nrows, ncols = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    comm = MPI.COMM_WORLD
    rank, size = comm.rank, comm.size
    mine = list(range(rank, nrows, size))  # uneven round-robin split

    with h5py.File(path, "w", driver="mpio", comm=comm) as f:
        # metadata operations are collective: every rank makes the same calls
        f.attrs["ranks"] = size
        loss = f.create_dataset("loss", (nrows, ncols), dtype="f8", fillvalue=np.nan)
        owner = f.create_dataset("owner", (nrows,), dtype="i4", fillvalue=-1)
        # raw data writes are independent: each rank writes only its rows
        for i in mine:
            loss[i, :] = i * 100.0 + np.arange(ncols)
            owner[i] = rank
    comm.Barrier()
    if rank == 0:
        with h5py.File(path, "r") as f:
            assert not np.isnan(f["loss"][...]).any()
    """
)


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [2, 3])
def test_mpio_ranks_write_their_own_rows(tmp_path, nranks):
    python, reason = _mpio_python()
    if reason:
        pytest.skip(reason)
    h5py = pytest.importorskip("h5py")  # reading back needs no MPI
    import numpy as np

    nrows, ncols = 7, 5
    writer = tmp_path / "writer.py"
    writer.write_text(WRITER)
    out = tmp_path / "surface.h5"
    # not inherited from an outer launcher, if pytest itself runs under one
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "MPI_", "HYDRA_"))}
    res = subprocess.run(
        ["mpiexec.mpich", "-launcher", "fork", "-n", str(nranks),
         python, str(writer), str(out), str(nrows), str(ncols)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )
    assert res.returncode == 0, res.stdout + res.stderr

    with h5py.File(out, "r") as f:
        assert f.attrs["ranks"] == nranks
        expected = np.arange(nrows)[:, None] * 100.0 + np.arange(ncols)
        np.testing.assert_array_equal(f["loss"][...], expected)
        np.testing.assert_array_equal(f["owner"][...], np.arange(nrows) % nranks)
