"""Stopping a single-process run with signals: exit 3, the file resumes, and a resume completes identically."""

import signal

import h5py
import numpy as np

from mpiland.errors import EXIT_INTERRUPTED

from util import cli, interrupted_run, write_job

METRICS = ("test_loss", "test_acc", "test_loss_stderr", "done")


def read(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][...] for k in METRICS}


def signalled_run(args, signals, delay=1.0, gap=0.2):
    """Start ``mpiland run ARGS``; ``delay`` s after evaluation starts send each of ``signals``, ``gap`` s apart."""
    return interrupted_run(args, delay, signals=tuple(signals), gap=gap, timeout=60)


def test_two_sigterms_stop_once_and_the_run_resumes_identically(tmp_path):
    # Defect 5: the second SIGTERM (SLURM can send more than one) killed the process outright.
    job = write_job(tmp_path, model='factory = "tests/models.py:slow_mlp"\nkwargs = { delay = 0.05 }',
                    grid="x = [-1.0, 1.0, 8]\ny = [-1.0, 1.0, 6]", extra="chunk_size = 4\npoints_per_pass = 1\n")
    status, err = signalled_run([str(job)], [signal.SIGTERM, signal.SIGTERM])
    assert status == EXIT_INTERRUPTED, err
    assert err.count("received SIGTERM") == 1, err
    done = read(tmp_path / "surface.h5")["done"]
    assert 0 < done.sum() < done.size
    assert cli("run", str(job)).returncode == 0
    resumed = read(tmp_path / "surface.h5")
    assert resumed["done"].all()
    assert cli("run", str(job), "--output", str(tmp_path / "ref.h5")).returncode == 0
    ref = read(tmp_path / "ref.h5")
    for k in METRICS:
        np.testing.assert_array_equal(resumed[k], ref[k], err_msg=k)
