"""Coordinator/worker protocol: rank 0 hands out chunks on request and evaluates chunks itself.

Messages carry chunk numbers and one chunk's results, never the grid. A worker
asks for its next chunk *before* evaluating the current one, so the answer is
waiting when it finishes. Rank 0 evaluates too (no device sits idle); between its
own points it answers requests and takes results, so a worker waits at most one of
rank 0's points for an answer, and with the request sent a whole chunk ahead it
normally does not wait at all. At size 1 the same loop runs with nobody to serve.

A stop request (signal) on any rank ends dispatch: rank 0 answers "no more work",
ranks drop the unevaluated rest of their current chunk, and every finished point
is still delivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

IDLE_SLEEP_S = 0.002
TAG_REQUEST = 11
TAG_ASSIGN = 12
TAG_RESULT = 13


@dataclass
class ChunkResult:
    """The points of one chunk that were evaluated, with their values (None when written locally)."""

    chunk: int
    points: np.ndarray
    values: dict[str, np.ndarray] | None
    seconds: np.ndarray | None
    stop: bool = False


EvaluateChunk = Callable[[int, Callable[[], bool]], ChunkResult]
Deliver = Callable[[ChunkResult], None]


@dataclass
class Outcome:
    """What the protocol did on this rank."""

    chunks_evaluated: int
    points_evaluated: int
    stopped: bool


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


def run_protocol(comm: Any, n_chunks: int, evaluate_chunk: EvaluateChunk, deliver: Deliver,
                 stop_requested: Callable[[], bool]) -> Outcome:
    """Evaluate ``n_chunks`` chunks over all ranks of ``comm``; rank 0 receives every result via ``deliver``."""
    if comm.Get_rank() == 0:
        return _Coordinator(comm, n_chunks, evaluate_chunk, deliver, stop_requested).run()
    return _worker(comm, evaluate_chunk, stop_requested)


class _Coordinator:
    def __init__(self, comm: Any, n_chunks: int, evaluate_chunk: EvaluateChunk, deliver: Deliver,
                 stop_requested: Callable[[], bool]) -> None:
        self.comm = comm
        self.n_chunks = n_chunks
        self.evaluate_chunk = evaluate_chunk
        self.deliver = deliver
        self.stop_requested = stop_requested
        self.workers = comm.Get_size() - 1
        self.next_chunk = 0
        self.outstanding = 0
        self.released = 0
        self.stopping = False
        self.MPI = _mpi() if self.workers else None
        self.status = self.MPI.Status() if self.workers else None
        self.pending_sends: list[Any] = []

    def _take(self) -> int | None:
        if self.stopping or self.next_chunk >= self.n_chunks:
            return None
        chunk = self.next_chunk
        self.next_chunk += 1
        return chunk

    def _handle(self, source: int, tag: int) -> None:
        msg = self.comm.recv(source=source, tag=tag)
        if tag == TAG_REQUEST:
            chunk = self._take()
            if chunk is None:
                self.released += 1
            else:
                self.outstanding += 1
            self.pending_sends.append(self.comm.isend(chunk, dest=source, tag=TAG_ASSIGN))
            if len(self.pending_sends) > 2 * self.workers:
                self.pending_sends = [r for r in self.pending_sends if not r.test()[0]]
        elif tag == TAG_RESULT:
            self.outstanding -= 1
            if msg.stop:
                self.stopping = True
            self.deliver(msg)

    def poll(self) -> bool:
        """Serve every message waiting now; True when the run should stop."""
        if self.stop_requested():
            self.stopping = True
        while self.workers and self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=self.status):
            self._handle(self.status.Get_source(), self.status.Get_tag())
        return self.stopping

    def poll_once(self) -> bool:
        """Serve at most one waiting message; True if there was one."""
        if self.stop_requested():
            self.stopping = True
        if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=self.status):
            self._handle(self.status.Get_source(), self.status.Get_tag())
            return True
        return False

    def run(self) -> Outcome:
        chunks = points = 0
        while True:
            self.poll()
            chunk = self._take()
            if chunk is not None:
                result = self.evaluate_chunk(chunk, self.poll)
                chunks += 1
                points += len(result.points)
                if result.stop:
                    self.stopping = True
                self.deliver(result)
                continue
            if self.released == self.workers and self.outstanding == 0:
                break
            # Nothing left for rank 0 itself: wait for workers without spinning a core
            # (MPI's blocking probe busy-polls and would slow a worker sharing the node).
            if not self.poll_once():
                time.sleep(IDLE_SLEEP_S)
        for req in self.pending_sends:
            req.wait()
        return Outcome(chunks, points, self.stopping)


def _worker(comm: Any, evaluate_chunk: EvaluateChunk, stop_requested: Callable[[], bool]) -> Outcome:
    # Invariant: exactly one request is outstanding at the top of the loop, so each
    # received answer matches one request, and "no more work" ends the loop cleanly.
    chunks = points = 0
    stopped = False
    sends = [comm.isend(None, dest=0, tag=TAG_REQUEST)]
    while True:
        chunk = comm.recv(source=0, tag=TAG_ASSIGN)
        if chunk is None:
            break
        sends.append(comm.isend(None, dest=0, tag=TAG_REQUEST))
        if stop_requested():
            result = ChunkResult(chunk, np.empty(0, dtype=np.int64), None, None)
        else:
            result = evaluate_chunk(chunk, stop_requested)
            chunks += 1
            points += len(result.points)
        result.stop = result.stop or stop_requested()
        stopped = stopped or result.stop
        sends.append(comm.isend(result, dest=0, tag=TAG_RESULT))
        sends = [r for r in sends if not r.test()[0]]
    for req in sends:
        req.wait()
    return Outcome(chunks, points, stopped)
