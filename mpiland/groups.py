"""Point groups: ranks in groups of G that evaluate the same points together, each on its shard of the data.

Spreading points over ranks leaves ranks idle when a run has fewer points than
ranks (an 11-point path of a language model on 64 GPUs). With ``run.group_size = G``
the ranks of the world form groups of G consecutive ranks; the coordinator of
:mod:`mpiland.protocol` runs among the groups' first ranks (the *leaders*; world
rank 0 leads group 0) and hands chunks to groups. A leader passes each chunk on to
the other ranks of its group (*followers*); every rank of the group sets the same
points and evaluates its shard of each split (:mod:`mpiland.shard`), and the group
combines the per-batch sums in batch order, so values are bit-identical for any G.

Before every pass the group agrees whether to go on (an all-reduce of each rank's
stop flag: the coordinator's stop on the leader, a signal on any rank), so all
ranks of a group run the same passes and the same collectives. Followers wait
for chunks with ``Iprobe`` and a :class:`~mpiland.comm.Backoff` (no spinning core),
and a rank that fails ends the whole job as any failing rank does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .comm import Backoff, Comm
from .errors import SettingsError
from .protocol import ChunkResult, EvaluateChunk, Outcome
from .shard import Shard

TAG_CHUNK = 21
"""Leader → follower: the next chunk (or tuple of chunks) to evaluate, None when the round is over."""


def divisors(n: int) -> list[int]:
    """The divisors of ``n``, smallest first."""
    return [d for d in range(1, n + 1) if n % d == 0]


def ranks_per_group(requested: int, ranks: int, points: int) -> int:
    """The ranks per group: ``requested`` when it divides ``ranks``; for 0 (automatic) the smallest divisor G
    of ``ranks`` for which the ``ranks / G`` groups are no more than the ``points`` to evaluate, so that every
    rank has work. Raises :class:`~mpiland.errors.SettingsError` for a size that cannot form equal groups."""
    if requested < 0:
        raise SettingsError(f"run.group_size = {requested}: give a positive number of ranks per group, or 0 for automatic")
    if requested == 0:  # nothing left to evaluate (a finished file): groups of one
        return next(g for g in divisors(ranks) if ranks // g <= points) if points else 1
    if ranks % requested:
        raise SettingsError(f"run.group_size = {requested} does not divide the {ranks} rank(s) into equal groups; "
                            f"use one of {', '.join(map(str, divisors(ranks)))} (or 0 for automatic)")
    return requested


@dataclass
class PointGroups:
    """This rank's point group: its communicator, and among the leaders the coordinator's communicator."""

    size: int
    """Ranks per group (G)."""
    group: Comm
    leaders: Comm | None
    """The leaders' communicator (the protocol runs on it); None on followers."""

    @property
    def shard(self) -> Shard:
        """This rank's place in its group, for the engine."""
        return Shard(self.group, self.size, self.group.Get_rank())

    @property
    def leader(self) -> bool:
        return self.leaders is not None

    def free(self) -> None:
        """Free the communicators made by :func:`make_groups` (collective over the world)."""
        self.group.Free()
        if self.leaders is not None:
            self.leaders.Free()

    def leading(self, evaluate_chunk: EvaluateChunk) -> EvaluateChunk:
        """The leader's ``evaluate_chunk``: send the chunk to the followers, then evaluate it with them, agreeing
        before each pass whether to go on."""
        group = self.group

        def lead(chunk: int, poll: Callable[[], bool]) -> ChunkResult:
            for rank in range(1, self.size):
                group.send(chunk, dest=rank, tag=TAG_CHUNK)
            return evaluate_chunk(chunk, lambda: bool(group.allreduce(int(poll()))))

        return lead

    def release(self) -> None:
        """The leader: tell the followers the round is over."""
        for rank in range(1, self.size):
            self.group.send(None, dest=rank, tag=TAG_CHUNK)

    def follow(self, evaluate_chunk: EvaluateChunk, stop_requested: Callable[[], bool]) -> Outcome:
        """A follower's round: evaluate every chunk the leader passes on, until it says the round is over."""
        group = self.group
        chunks = points = 0
        stopped = False
        backoff = Backoff()

        def poll() -> bool:
            nonlocal stopped
            stop = bool(group.allreduce(int(stop_requested())))
            stopped = stopped or stop
            return stop

        while True:
            if not group.Iprobe(source=0, tag=TAG_CHUNK):
                backoff.wait()
                continue
            backoff.reset()
            chunk = group.recv(source=0, tag=TAG_CHUNK)
            if chunk is None:
                return Outcome(chunks, points, stopped or stop_requested())
            result = evaluate_chunk(chunk, poll)
            chunks += 1
            points += len(result.points)


def make_groups(comm: Comm, size: int) -> PointGroups | None:
    """Split ``comm`` into groups of ``size`` consecutive ranks (collective); None for groups of one, where
    every rank is its own group and the protocol runs on ``comm`` itself."""
    if size <= 1:
        return None
    from mpi4py import MPI  # size > 1 ranks: MPI is loaded

    rank = comm.Get_rank()
    group = comm.Split(rank // size, rank)
    leaders = comm.Split(0 if rank % size == 0 else MPI.UNDEFINED, rank)
    return PointGroups(size, group, None if leaders == MPI.COMM_NULL else leaders)
