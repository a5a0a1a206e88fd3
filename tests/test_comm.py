"""Communicator helpers, the launch check and stop signals, in-process (size 1).

The same comm cases run under ``mpiexec -n 2`` in test_mpi.py.
"""

import os
import signal
import subprocess
import textwrap

import pytest

from mpiland.comm import SelfComm, world_size
from mpiland.errors import LaunchError, WorldTooSmallError
from mpiland.launch import check_launch
from mpiland.signals import StopFlag

from comm_cases import CASES, run_all
from util import PYTHON, REPO


def test_comm_cases_on_selfcomm():
    assert run_all(SelfComm()) == [c.__name__ for c in CASES]


def test_comm_cases_on_a_size_one_mpi_world():
    MPI = pytest.importorskip("mpi4py.MPI")
    assert run_all(MPI.COMM_WORLD) == [c.__name__ for c in CASES]
    assert world_size(MPI.COMM_SELF) == MPI.COMM_WORLD.Get_size()


def test_singleton_launch_raises_world_too_small():
    # Defect 9: WorldTooSmallError was defined and never raised.
    for env, fix in (({"SLURM_STEP_NUM_TASKS": "4"}, "srun --mpi=pmi2"), ({"PMI_SIZE": "2"}, "use the mpiexec of")):
        with pytest.raises(WorldTooSmallError, match=fix) as info:
            check_launch(SelfComm(), env)
        assert isinstance(info.value, LaunchError)


def test_stop_signal_handler_only_sets_a_flag_and_the_loop_logs_once(caplog):
    caplog.set_level("WARNING", logger="mpiland")
    with StopFlag(signals=("SIGUSR1",)) as flag:
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGUSR1)  # a repeat within the grace period is absorbed
        assert flag.signal == "SIGUSR1" and flag.repeats == 1
        assert not caplog.records  # nothing logged from the handler
        assert flag() and flag()
    assert [r.getMessage() for r in caplog.records] == [
        "received SIGUSR1: stopping after the points in flight; the run can be resumed"]


def test_a_stop_signal_after_the_grace_period_ends_the_process():
    code = textwrap.dedent("""\
        import os, signal, time
        from mpiland.signals import StopFlag
        with StopFlag(grace_s=0.0) as flag:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        """)
    proc = subprocess.run([PYTHON, "-c", code], cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGTERM
