"""How much memory one rank's evaluator needs, and a refusal up front when the device does not have it.

The model of docs/memory.md, in bytes per rank for a model of n parameters of
``e`` bytes each (4 for float32):

- the flat parameter buffer the model reads: n·e, and θ* kept beside it: n·e;
- the direction vectors: m·n·e for m vectors (the grid's dims, times the blocks of
  a path with a comparison line);
- K points per pass: a K × n buffer, K·n·e (none at K = 1, except for a Linear
  chain run by batched products, which writes its one point there); with an automatic K
  the engine keeps it and the activations under ``run.batch_memory_mb``;
- the data kept on the device: what fits ``data.memory_budget_mb`` (streamed data
  holds one batch at a time);
- ``model.bn = "recompute"``: the drawn training inputs;
- curvature: the Lanczos basis, two vectors per step up to ``hessian.max_iter``
  in ``hessian.dtype``, and 26 vectors more for the gradient, its product and the
  autograd graph (measured, docs/memory.md);
- activations: K times one point's activations on one batch, where the caller
  knows them.

:func:`estimate` adds these up; :func:`check_fits` refuses an estimate above what
:func:`available_bytes` reports (CUDA: the free memory ``torch.cuda.mem_get_info``
gives; a CPU: ``MemAvailable`` of /proc/meminfo) with one sentence naming the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import DeviceMemoryError

CURVATURE_VECTORS_PER_STEP = 2
"""Vectors of n per Lanczos step: the basis row, and the old basis while a grown one is copied over."""
CURVATURE_EXTRA_VECTORS = 26
"""Vectors of n beside the basis: the double-backward graph, gradients and the origin's trace probes
(measured by benchmarks/memory.py: 282 and 437 bytes per parameter at max_iter 20 and 40, docs/memory.md)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one rank needs on its device, by part (the parts of docs/memory.md)."""

    parts: dict[str, int] = field(default_factory=dict)
    n_params: int = 0
    points_per_pass: int = 1

    @property
    def total(self) -> int:
        """All parts together."""
        return sum(self.parts.values())

    def describe(self) -> str:
        """The parts in MiB, largest first (for logs and refusals)."""
        items = sorted(self.parts.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in items if size)


def estimate(n_params: int, element_size: int, vector_rows: int, *, points_per_pass: int = 1,
             batch_memory_mb: float = 0.0, data_bytes: int = 0, bn_bytes: int = 0, curvature_iter: int = 0,
             curvature_element_size: int = 4, chain: bool = False, activations: int = 0) -> MemoryEstimate:
    """The device bytes of an evaluator (see the module docstring).

    ``points_per_pass`` 0 (automatic): the K × n buffer and activations are bounded
    by ``batch_memory_mb``, which is counted instead; ``curvature_iter`` 0: no curvature.
    ``chain``: a Linear chain run by batched products (:mod:`.plan`), whose points
    sit in the K × n buffer at K = 1 too. ``activations``: bytes of one point's
    activations on one batch (:func:`~.batching.activation_bytes`), counted K times.
    """
    per_vector = n_params * element_size
    # Half-precision weights: θ*, the directions and each point are kept in float32 (engine/params.py).
    master = n_params * max(element_size, 4)
    parts = {"weights": per_vector, "origin": master, "directions": vector_rows * master}
    if element_size < 4:
        parts["float32 point"] = master * max(points_per_pass, 1)
    if points_per_pass == 0:
        parts["points per pass"] = int(batch_memory_mb * 2**20)
    elif points_per_pass > 1 or chain:
        parts["points per pass"] = points_per_pass * per_vector
    if points_per_pass and activations:
        parts["activations"] = points_per_pass * activations
    parts["data"] = data_bytes
    parts["batchnorm"] = bn_bytes
    if curvature_iter:
        vectors = CURVATURE_VECTORS_PER_STEP * curvature_iter + CURVATURE_EXTRA_VECTORS
        parts["curvature"] = vectors * n_params * curvature_element_size
    return MemoryEstimate(parts, n_params, points_per_pass)


def available_bytes(device: torch.device, meminfo: str | Path = "/proc/meminfo") -> int | None:
    """Free memory of ``device``: CUDA's free bytes, or a CPU's ``MemAvailable`` (None where neither is known)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            for line in Path(meminfo).read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(est: MemoryEstimate, available: int | None, device: torch.device, sharing: int = 1) -> None:
    """Raise :class:`~mpiland.errors.DeviceMemoryError` (one sentence naming the fix) when ``sharing`` ranks
    that each need ``est`` exceed ``available`` bytes."""
    if available is None or est.total * sharing <= available:
        return
    where = "GPU" if device.type == "cuda" else "host"
    fixes = []
    if est.parts.get("points per pass"):
        fixes.append("fewer points per pass (run.points_per_pass) or a smaller run.batch_memory_mb")
    if est.parts.get("data"):
        fixes.append("a smaller data.memory_budget_mb")
    if est.parts.get("curvature"):
        fixes.append("a smaller hessian.max_iter")
    if sharing > 1:
        fixes.append(f"fewer ranks per {'GPU' if device.type == 'cuda' else 'node'}")
    fixes.append("a GPU with more memory" if device.type == "cuda" else "a node with more memory")
    raise DeviceMemoryError(f"this job needs about {est.total / 2**20:.0f} MiB of {where} memory per rank "
                        f"({est.describe()}){f', {sharing} ranks share it,' if sharing > 1 else ''} but {device} has {available / 2**20:.0f} MiB free: use "
                        f"{', '.join(fixes)}")


def split_bytes(splits: Sequence[Any], memory_budget_mb: float) -> int:
    """Bytes of data an evaluator keeps on the device: tensor splits when they fit the budget (streamed splits
    at most the budget, one batch when they do not fit is not counted)."""
    tensors = sum(int(s.nbytes) for s in splits if hasattr(s, "nbytes"))
    budget = int(memory_budget_mb * 2**20)
    return tensors if tensors <= budget else 0


def check_evaluator_memory(model: torch.nn.Module, directions: Any, splits: Sequence[Any], *, dtype: torch.dtype,
                           device: torch.device, points_per_pass: int, batch_memory_mb: float,
                           memory_budget_mb: float, bn_data: torch.Tensor | None = None, hessian: Any = None,
                           activations: int = 0, available: int | None = None, sharing: int = 1) -> MemoryEstimate:
    """Estimate an evaluator's device memory from its constructor's arguments and refuse it up front when
    ``available`` bytes (None: :func:`available_bytes` of ``device``) do not hold it; returns the estimate.

    ``sharing``: ranks whose evaluators share the device (the node's ranks on a CPU).
    ``activations``: one point's activation bytes on one batch where known (0: not counted). Call it before
    the evaluator allocates anything. On a CPU the data and direction
    tensors the evaluator reads in place are already in memory, so they are not counted."""
    n = sum(p.numel() for p in model.parameters())
    if getattr(directions, "layout", None) is not None:
        n = int(directions.layout.numel)
    element = torch.empty(0, dtype=dtype).element_size()
    bn = 0 if bn_data is None else bn_data.nelement() * (element if bn_data.is_floating_point()
                                                          else bn_data.element_size())
    curvature = 0
    if hessian is not None and (hessian.enabled or getattr(hessian, "spectrum", "none") != "none"):
        curvature = int(hessian.max_iter)
    rows, data = int(directions.vectors.shape[0]), split_bytes(splits, memory_budget_mb)
    if device.type == "cpu":  # host tensors the evaluator uses as they are: already in memory when this runs
        data = 0
        rows = 0 if directions.vectors.dtype == dtype else rows
    est = estimate(n, element, rows, points_per_pass=points_per_pass,
                   batch_memory_mb=batch_memory_mb, data_bytes=data,
                   bn_bytes=bn, curvature_iter=curvature,
                   curvature_element_size=torch.empty(0, dtype=getattr(torch, hessian.dtype)).element_size()
                   if curvature else 4, chain=True, activations=activations)  # an upper bound: whether a plan runs is decided later
    check_fits(est, available_bytes(device) if available is None else available, device, sharing)
    return est
