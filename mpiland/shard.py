"""Point groups inside the engine: the ranks of a group set the same points, each evaluates its shard of the data.

A split's batches are numbered 0, 1, … in the order the engine reads them; rank
r of a group of G evaluates batch b when b mod G = r. Every sum the engine keeps
over a split is a sum over batches of per-batch sums, added one batch after the
other in batch order (:class:`~.losses.LossSums`, the Hessian-vector products of
:class:`~mpiland.curvature.operator.HessianOperator`). A group keeps exactly that
order: each rank computes the per-batch sums of its own batches, the group gathers
them, and every rank adds all of them in batch order. Each per-batch sum is the
same computation on the same inputs whichever rank makes it, so a group's values
are bit-identical to one rank's for any G and any number of groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import numpy as np

from .comm import Comm

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This rank's place in its point group: rank ``rank`` of ``size`` on the group's communicator ``comm``."""

    comm: Comm
    size: int
    rank: int

    def mine(self, index: int) -> bool:
        """Whether batch ``index`` of a split is this rank's to evaluate."""
        return index % self.size == self.rank

    def in_order(self, parts: Sequence[tuple[int, T]]) -> list[T]:
        """Every rank's ``(batch index, value)`` parts, gathered over the group and put in batch order
        (collective: every rank of the group calls it, with its own parts)."""
        gathered: list[list[tuple[int, Any]]] = self.comm.allgather(list(parts))
        merged = sorted((p for ranks in gathered for p in ranks), key=lambda p: p[0])
        return [value for _, value in merged]


def ordered_total(parts: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """The float64 sum of ``parts`` added one after the other from zeros, in the order given: the additions a
    single rank makes when it accumulates the same per-batch sums batch after batch."""
    total = np.zeros(shape, dtype=np.float64)
    for p in parts:
        total += p
    return total
