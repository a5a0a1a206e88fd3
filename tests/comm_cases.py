"""Cases for the communicator helpers that hold at any communicator size (1 in-process, 2 under mpiexec).

Every rank runs every case and enters every collective, whatever happens on the
others; :func:`run_all` returns the names of the cases that passed.
"""

from __future__ import annotations

from typing import Any, Callable

from mpiland.comm import Backoff, Comm, SelfComm, agree, isolated
from mpiland.errors import DataError, GridError, LaunchError


def _raises(fn: Callable[[], Any]) -> BaseException | None:
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the cases inspect what was raised
        return exc
    return None


def case_value_everywhere(comm: Comm) -> None:
    assert agree(comm, lambda: comm.Get_rank() * 10) == comm.Get_rank() * 10


def case_error_on_one_rank_only(comm: Comm) -> None:
    last = comm.Get_size() - 1

    def fn() -> int:
        if comm.Get_rank() == last:
            raise DataError("disk gone")
        return 1

    err = _raises(lambda: agree(comm, fn))
    assert isinstance(err, DataError), err
    assert str(err) == ("disk gone" if last == 0 else f"rank {last}: disk gone"), str(err)
    assert getattr(err, "agreed", False) == (comm.Get_size() > 1)


def case_errors_everywhere(comm: Comm) -> None:
    def fn() -> None:
        raise (GridError if comm.Get_rank() == 0 else DataError)(f"bad on {comm.Get_rank()}")

    err = _raises(lambda: agree(comm, fn))
    assert isinstance(err, GridError) and str(err) == "bad on 0", (type(err), err)


def case_agree_after_agree(comm: Comm) -> None:
    # A failed agreement leaves the communicator usable: the next collective matches.
    _raises(lambda: agree(comm, lambda: (_ for _ in ()).throw(DataError("x"))))
    assert agree(comm, lambda: comm.bcast(comm.Get_rank(), root=0)) == 0


def case_isolated_duplicate(comm: Comm) -> None:
    with isolated(comm) as own:
        assert own.Get_size() == comm.Get_size() and own.Get_rank() == comm.Get_rank()
        if isinstance(comm, SelfComm):
            return
        req = own.isend("mine", dest=comm.Get_rank(), tag=7)
        assert not comm.Iprobe(source=comm.Get_rank(), tag=7)  # another context: invisible to the caller
        assert own.recv(source=comm.Get_rank(), tag=7) == "mine"
        req.wait()
        own.Barrier()


def case_isolated_rejects_intercommunicator(comm: Comm) -> None:
    if isinstance(comm, SelfComm) or comm.Get_size() < 2:
        return
    color = comm.Get_rank() % 2
    half = comm.Split(color, comm.Get_rank())  # type: ignore[attr-defined]
    inter = half.Create_intercomm(0, comm, 1 - color, tag=5)
    try:
        err = _raises(lambda: isolated(inter).__enter__())
        assert isinstance(err, LaunchError) and "intercommunicator" in str(err), err
    finally:
        inter.Free()
        half.Free()


def case_backoff(comm: Comm) -> None:
    b = Backoff(first=1e-4, longest=4e-4)
    for _ in range(5):
        b.wait()
    assert b.delay == 4e-4
    b.reset()
    assert b.delay == 0.0


CASES = [case_value_everywhere, case_error_on_one_rank_only, case_errors_everywhere, case_agree_after_agree,
         case_isolated_duplicate, case_isolated_rejects_intercommunicator, case_backoff]


def run_all(comm: Comm) -> list[str]:
    """Run every case on ``comm``; the names of those that passed (an AssertionError propagates)."""
    passed = []
    for case in CASES:
        case(comm)
        comm.Barrier()
        passed.append(case.__name__)
    return passed
