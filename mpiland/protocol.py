"""Coordinator/worker protocol: rank 0 hands out chunks on request and evaluates chunks itself.

Messages carry chunk numbers and one chunk's results, never the grid. A worker
asks for its next chunk *before* evaluating the current one, so the answer is
waiting when it finishes. Rank 0 evaluates too (no device sits idle); between its
own points it answers requests and takes results, so a worker waits at most one of
rank 0's points for an answer, and with the request sent a whole chunk ahead it
normally does not wait at all. At size 1 the same loop runs with nobody to serve.

Serving has a cost s per chunk (take a result, deliver it, answer a request): with R
ranks, S points per chunk and c seconds per point it takes a share ρ = (R − 1)·s/(S·c)
of rank 0's time, and while rank 0 evaluates one of its own points the workers'
answers wait. Once rank 0 has measured that share above :data:`SERVE_ONLY_SHARE`
(after one result per worker), it stops taking chunks itself and only serves:
1/R of the devices for answers that are never late (docs/scale.md). If serving
still takes more than twice that share, it hands out consecutive chunks together
(up to :data:`MAX_BATCH` in one assignment, answered with one result), which
divides the per-chunk cost by the batch; so the coordinator keeps up however many
ranks there are, without a chunk size chosen in advance. Which rank evaluates a
point, and in which chunk, never changes its values.

A stop request (signal) on any rank ends dispatch: rank 0 answers "no more work"
and sends every worker still at work a stop message, which workers look for
(``Iprobe``) before each point, so every rank drops the unevaluated rest of its
current chunk within one point; every finished point is still delivered. A
worker's stop reaches rank 0 with its result and from there the other workers.

The communicator must be mpiland's own (see :func:`mpiland.comm.isolated`): any
message with a tag not listed here is an error, never silently taken. Waiting
ranks poll with ``Iprobe`` and a :class:`~mpiland.comm.Backoff` instead of a
blocking receive, which busy-polls a core in MPICH and Open MPI.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .comm import Backoff, Comm

TAG_REQUEST = 11
TAG_ASSIGN = 12
TAG_RESULT = 13
TAG_STOP = 14
TAGS = {TAG_REQUEST: "request", TAG_ASSIGN: "assign", TAG_RESULT: "result", TAG_STOP: "stop"}

SERVE_ONLY_SHARE = 0.25
"""Rank 0 stops evaluating once serving the workers has taken more than this share of its wall time."""
MIN_RESULTS_TO_JUDGE = 8
"""Results rank 0 has served (and at least one per worker) before it judges its serving share."""
MAX_BATCH = 16
"""The most consecutive chunks rank 0 hands out in one assignment when serving one at a time cannot keep up."""

log = logging.getLogger("mpiland")


class ProtocolError(RuntimeError):
    """A message the protocol does not know arrived on its communicator (a bug, not a user error)."""


@dataclass
class ChunkResult:
    """The points of one chunk that were evaluated, with their values (None when written locally)."""

    chunk: int
    points: np.ndarray
    values: dict[str, np.ndarray] | None
    seconds: np.ndarray | None
    stop: bool = False
    loss: np.ndarray | None = None
    """Adaptive refinement: the values of the metric it judges by, for rank 0 also when ``values`` stay local."""


@dataclass(frozen=True)
class Release:
    """Rank 0's "no more work" answer; ``stop_sent``: a stop message was sent to this worker before it."""

    stop_sent: bool


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


def _unknown(source: int, tag: int) -> ProtocolError:
    return ProtocolError(f"unexpected message with tag {tag} from rank {source} on mpiland's communicator "
                         f"(known tags: {', '.join(f'{t} {n}' for t, n in TAGS.items())})")


def run_protocol(comm: Comm, n_chunks: int, evaluate_chunk: EvaluateChunk, deliver: Deliver,
                 stop_requested: Callable[[], bool]) -> Outcome:
    """Evaluate ``n_chunks`` chunks over all ranks of ``comm``; rank 0 receives every result via ``deliver``.

    ``evaluate_chunk(chunk, poll)`` must call ``poll()`` before each point and stop
    when it returns True. Raises :class:`ProtocolError` on a message it did not send.
    """
    if comm.Get_rank() == 0:
        return _Coordinator(comm, n_chunks, evaluate_chunk, deliver, stop_requested).run()
    return _Worker(comm, evaluate_chunk, stop_requested).run()


class _Coordinator:
    def __init__(self, comm: Comm, n_chunks: int, evaluate_chunk: EvaluateChunk, deliver: Deliver,
                 stop_requested: Callable[[], bool]) -> None:
        self.comm = comm
        self.n_chunks = n_chunks
        self.evaluate_chunk = evaluate_chunk
        self.deliver = deliver
        self.stop_requested = stop_requested
        self.workers = comm.Get_size() - 1
        self.next_chunk = 0
        self.outstanding = 0
        self.released: set[int] = set()
        self.stop_sent: set[int] = set()
        self.stopping = False
        self.MPI: Any = _mpi() if self.workers else None  # None at size 1: nobody to talk to
        self.status: Any = self.MPI.Status() if self.MPI is not None else None
        self.pending_sends: list[Any] = []
        self.serve_only = False
        self.batch = 1  # chunks per assignment
        self.serving = 0.0  # seconds spent in _handle since `started`
        self.results = 0  # worker results handled since `started`
        self.started = time.perf_counter()

    def _take(self) -> int | None:
        if self.stopping or self.next_chunk >= self.n_chunks:
            return None
        chunk = self.next_chunk
        self.next_chunk += 1
        return chunk

    def _send(self, obj: Any, dest: int, tag: int) -> None:
        self.pending_sends.append(self.comm.isend(obj, dest=dest, tag=tag))
        if len(self.pending_sends) > 2 * self.workers:
            self.pending_sends = [r for r in self.pending_sends if not r.test()[0]]

    def _stop(self) -> None:
        """Stop dispatch, and tell every worker still at work to drop the rest of its chunk."""
        if self.stopping:
            return
        self.stopping = True
        for rank in range(1, self.workers + 1):
            if rank not in self.released:
                self.stop_sent.add(rank)
                self._send(None, rank, TAG_STOP)

    def _handle(self, source: int, tag: int) -> None:
        if tag not in (TAG_REQUEST, TAG_RESULT):
            raise _unknown(source, tag)
        start = time.perf_counter()
        try:
            self._serve(source, tag)
        finally:
            self.serving += time.perf_counter() - start

    def _serve(self, source: int, tag: int) -> None:
        msg = self.comm.recv(source=source, tag=tag)
        if tag == TAG_REQUEST:
            batch = self._take_batch()
            if not batch:
                self.released.add(source)
                self._send(Release(source in self.stop_sent), source, TAG_ASSIGN)
            else:
                self.outstanding += 1
                self._send(batch[0] if len(batch) == 1 else tuple(batch), source, TAG_ASSIGN)
        else:
            self.outstanding -= 1
            self.results += 1
            if msg.stop:
                self._stop()
            self.deliver(msg)

    def _take_batch(self) -> list[int]:
        """The chunks of the next assignment: ``self.batch`` of them while enough are left for every worker
        to get several, else one."""
        left = self.n_chunks - self.next_chunk
        size = min(self.batch, max(1, left // (2 * max(self.workers, 1))))
        batch = []
        for _ in range(size):
            chunk = self._take()
            if chunk is None:
                break
            batch.append(chunk)
        return batch

    def _judge_load(self) -> None:
        """Serve only once serving takes more than :data:`SERVE_ONLY_SHARE` of rank 0's time; then double the
        chunks per assignment (up to :data:`MAX_BATCH`) while it takes more than twice that."""
        if self.results < max(MIN_RESULTS_TO_JUDGE, self.workers):
            return
        now = time.perf_counter()
        share = self.serving / max(now - self.started, 1e-9)
        if not self.serve_only:
            if share > SERVE_ONLY_SHARE:
                self.serve_only = True
                log.info("rank 0 spends %.0f %% of its time serving %d workers: it stops evaluating and only "
                         "serves (a larger run.chunk_size lowers that share)", 100 * share, self.workers)
        elif share > 2 * SERVE_ONLY_SHARE and self.batch < MAX_BATCH:
            self.batch *= 2
            log.info("rank 0 spends %.0f %% of its time serving: it hands out %d chunks at a time",
                     100 * share, self.batch)
        else:
            return
        self.serving, self.results, self.started = 0.0, 0, now  # judge the new setting on its own

    def _check_stop(self) -> None:
        if not self.stopping and self.stop_requested():
            self._stop()

    def poll(self) -> bool:
        """Serve every message waiting now; True when the run should stop."""
        self._check_stop()
        while self.workers and self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=self.status):
            self._handle(self.status.Get_source(), self.status.Get_tag())
            self._check_stop()
        return self.stopping

    def poll_once(self) -> bool:
        """Serve at most one waiting message; True if there was one."""
        self._check_stop()
        if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=self.status):
            self._handle(self.status.Get_source(), self.status.Get_tag())
            return True
        return False

    def run(self) -> Outcome:
        chunks = points = 0
        backoff = Backoff()
        while True:
            self.poll()
            self._judge_load()
            chunk = None if self.serve_only else self._take()
            if chunk is not None:
                result = self.evaluate_chunk(chunk, self.poll)
                chunks += 1
                points += len(result.points)
                if result.stop:
                    self._stop()
                self.deliver(result)
                continue
            if len(self.released) == self.workers and self.outstanding == 0:
                break
            # Nothing left for rank 0 itself: wait for workers without spinning a core.
            if self.poll_once():
                backoff.reset()
            else:
                backoff.wait()
        for req in self.pending_sends:
            req.wait()
        return Outcome(chunks, points, self.stopping)


def _combined(first: int, results: list[ChunkResult]) -> ChunkResult:
    """One result for an assignment of consecutive chunks (``first`` the first): their points in order."""
    if len(results) == 1:
        return results[0]
    if not results:
        return ChunkResult(first, np.empty(0, dtype=np.int64), None, None)

    def joined(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if any(a is None for a in arrays) else np.concatenate(arrays)  # type: ignore[arg-type]

    values = None
    if all(r.values is not None for r in results):
        values = {k: np.concatenate([r.values[k] for r in results]) for k in results[0].values}  # type: ignore[index,union-attr]
    points = joined([r.points for r in results])
    assert points is not None
    return ChunkResult(first, points, values, joined([r.seconds for r in results]),
                       stop=any(r.stop for r in results), loss=joined([r.loss for r in results]))


class _Worker:
    # Invariant: exactly one request is outstanding at the top of the loop, so each
    # received assignment matches one request, and a Release ends the loop cleanly.

    def __init__(self, comm: Comm, evaluate_chunk: EvaluateChunk, stop_requested: Callable[[], bool]) -> None:
        self.comm = comm
        self.evaluate_chunk = evaluate_chunk
        self.stop_requested = stop_requested
        self.stop_received = False
        self.MPI = _mpi()
        self.status = self.MPI.Status()

    def _take_stop(self) -> None:
        self.comm.recv(source=0, tag=TAG_STOP)
        self.stop_received = True

    def poll(self) -> bool:
        """True when this rank or rank 0 asked for a stop (one ``Iprobe``: cheap enough before every point)."""
        if not self.stop_received and self.comm.Iprobe(source=0, tag=TAG_STOP):
            self._take_stop()
        return self.stop_received or self.stop_requested()

    def _next_assignment(self) -> Any:
        backoff = Backoff()
        while True:
            if self.comm.Iprobe(source=self.MPI.ANY_SOURCE, tag=self.MPI.ANY_TAG, status=self.status):
                source, tag = self.status.Get_source(), self.status.Get_tag()
                if source != 0 or tag not in (TAG_ASSIGN, TAG_STOP):
                    raise _unknown(source, tag)
                if tag == TAG_STOP:
                    self._take_stop()
                    backoff.reset()
                    continue
                return self.comm.recv(source=0, tag=TAG_ASSIGN)
            backoff.wait()

    def run(self) -> Outcome:
        chunks = points = 0
        stopped = False
        sends = [self.comm.isend(None, dest=0, tag=TAG_REQUEST)]
        while True:
            chunk = self._next_assignment()
            if isinstance(chunk, Release):
                if chunk.stop_sent and not self.stop_received:
                    self._take_stop()  # sent before the release: take it so nothing is left pending
                break
            sends.append(self.comm.isend(None, dest=0, tag=TAG_REQUEST))
            batch = list(chunk) if isinstance(chunk, tuple) else [chunk]
            results = []
            for c in batch:
                if self.poll():
                    break
                results.append(self.evaluate_chunk(c, self.poll))
                chunks += 1
                if results[-1].stop:
                    break
            result = _combined(batch[0], results)
            points += len(result.points)
            result.stop = result.stop or self.poll()
            stopped = stopped or result.stop
            sends.append(self.comm.isend(result, dest=0, tag=TAG_RESULT))
            sends = [r for r in sends if not r.test()[0]]
        for req in sends:
            req.wait()
        return Outcome(chunks, points, stopped or self.stop_received)
