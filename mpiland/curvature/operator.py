"""Hessian-vector products of a model's mean loss at a point given as a flat parameter vector.

:class:`HessianOperator` gives H(θ)·v of the sample-weighted mean loss over
resident batches (double backward through ``torch.func.functional_call``), never
the Hessian; :class:`BoundHessian` fixes θ for the routines of
:mod:`mpiland.curvature.linalg`. The model's parameters, buffers and training
flags are never changed.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..shard import Shard
from ..models import outputs_of
from ..layout import ParamLayout
from ..lossfns import BUILTIN_LOSSES, IGNORE_INDEX, TOKEN_LOSSES

log = logging.getLogger("mpiland")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class _Graph:
    """One batch's gradient at the cached θ, with the graph that differentiates it once more."""

    loss: torch.Tensor
    grad: torch.Tensor
    nbytes: int


@contextmanager
def _eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run the modules with ``training`` off and switch it back on afterwards where it was on."""
    training = [m for m in modules if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


class HessianOperator:
    """H(θ)·v of the mean loss of ``model`` over ``batches``, for θ given as a flat vector.

    The model runs through ``torch.func.functional_call`` with parameter views of θ
    and (copies, when cast, of) its buffers, in eval mode (BatchNorm running
    statistics, no dropout): its parameters, buffers and training flags are left
    as they were. Batches are weighted by their sample counts: a built-in loss
    returns per-sample losses, a user loss may return the batch mean; either way
    the batch's mean loss counts ``len(batch) / samples``.

    HVPs are double backward (reverse over reverse): measured faster on CPU than
    forward-over-reverse ``jvp(grad(f))`` (trained digits MLP 2.0 vs 4.0 ms,
    digits CNN 17.7 vs 24.8 ms per HVP over 359 samples, float32, 2 threads).
    The gradient graph of each batch is kept for the current θ while it fits
    ``cache_mb``, so repeated HVPs at one point (Lanczos, Hutchinson) cost one
    backward pass each instead of forward + backward + backward (1.0 and 10.1 ms
    above); a change of θ's values, or :meth:`clear_cache`, frees it.

    ``dtype=torch.float64`` evaluates in double precision without touching the
    caller's model: θ, the inputs and floating buffers are cast copies (the data
    costs twice its float32 memory; the buffers are cast again at each new point,
    so recomputed BatchNorm statistics count) and each HVP is about 1.5× (MLP) to 4–5× (CNN)
    slower on a CPU, far more on GPUs with slow float64 arithmetic.
    """

    def __init__(self, model: nn.Module, layout: ParamLayout, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: LossFn, dtype: torch.dtype = torch.float32, *, cache_mb: float = 512.0) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if layout != ParamLayout.from_model(model):
            raise ValueError("the layout does not describe this model's parameters (names or shapes differ)")
        if not batches:
            raise ValueError("at least one batch is needed")
        self.model = model
        self._submodules = list(model.modules())
        self.layout = layout
        self.loss_fn = loss_fn
        self.dtype = dtype
        self.device = batches[0][0].device
        with torch.inference_mode(False):
            self.batches = [(self._cast(x), self._cast(y)) for x, y in batches]
            self.buffers = {name: self._cast(b) for name, b in model.named_buffers()}
        self._versions: tuple[tuple[int, int], ...] = ()
        self.samples = sum(int(x.shape[0]) for x, _ in self.batches)
        self.tokens = (sum(int((y[:, 1:] != IGNORE_INDEX).sum()) for _, y in self.batches)
                       if loss_fn is BUILTIN_LOSSES[TOKEN_LOSSES[0]] else 0)
        """Counted tokens of all batches, for the built-in token loss (0 for other losses)."""
        self.cache_bytes = int(cache_mb * 2**20)
        self.hvps = 0
        self._key: torch.Tensor | None = None
        self._leaf: torch.Tensor | None = None
        self._graphs: dict[int, _Graph] = {}
        self._cached = 0
        self.shard: Shard | None = None
        """A point group's place (:mod:`mpiland.shard`): this rank's batches only, summed over the group."""

    @property
    def n(self) -> int:
        """Number of parameters (the size of θ and of the Hessian)."""
        return self.layout.numel

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the device, in the operator's dtype when floating, never an inference tensor (autograd saves it)."""
        dtype = self.dtype if t.is_floating_point() else t.dtype
        if t.dtype != dtype or t.device != self.device:
            return t.to(device=self.device, dtype=dtype)
        return t.clone() if t.is_inference() else t

    def at(self, theta: torch.Tensor) -> BoundHessian:
        """v ↦ H(θ)·v at a fixed θ, for the Lanczos and trace routines."""
        return BoundHessian(self, theta)

    def clear_cache(self) -> None:
        """Free the gradient graphs kept for the current θ; the next HVP reads the model's buffers again."""
        self._graphs.clear()
        self._cached = 0
        self._key = None
        self._leaf = None

    @contextmanager
    def _autograd(self) -> Iterator[None]:
        with torch.inference_mode(False), torch.enable_grad(), _eval_mode(self._submodules):
            yield

    def _point(self, theta: torch.Tensor) -> torch.Tensor:
        """The leaf that stands for θ; a new point drops the cached graphs and takes the model's buffers afresh.

        A new point: θ's values differ from the last ones, or a buffer was written in
        place (a version counter moved: BatchNorm statistics reset and recomputed, or
        a buffer that is a view of a flat state vector rewritten). The buffers are
        read at each new point, so a float64 operator's cast copies are each point's
        statistics, as the float32 operator (which uses the tensors themselves) sees them.
        """
        if theta.shape != (self.n,):
            raise ValueError(f"theta must be a flat vector of {self.n} parameters, got shape {tuple(theta.shape)}")
        sources = list(self.model.named_buffers())
        versions = tuple((id(b), -1 if b.is_inference() else b._version) for _, b in sources)
        key = self._key
        same = (key is not None and key.dtype == theta.dtype and key.device == theta.device
                and versions == self._versions and torch.equal(key, theta))
        if not same or self._leaf is None:
            self.clear_cache()
            self.buffers = {name: self._cast(b) for name, b in sources}
            self._versions = versions
            self._key = theta.detach().clone()
            self._leaf = self._key.to(device=self.device, dtype=self.dtype).detach().requires_grad_(True)
        assert self._leaf is not None
        return self._leaf

    def _batch_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss weighted by its share of all samples (for a token loss, its token losses'
        sum over all counted tokens: the split's mean is token-weighted, as the engine's is)."""
        params = dict(zip(self.layout.names, self.layout.views(theta)))
        out = outputs_of(functional_call(self.model, (params, self.buffers), (x,)))
        if self.tokens:
            return self.loss_fn(out, y).sum() / self.tokens
        return self.loss_fn(out, y).mean() * (x.shape[0] / self.samples)

    def _graph(self, i: int, leaf: torch.Tensor) -> _Graph:
        """Batch ``i``'s weighted loss and gradient with its graph; kept while the cache budget allows."""
        cached = self._graphs.get(i)
        if cached is not None:
            return cached
        x, y = self.batches[i]
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        measure = self._cached < self.cache_bytes
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else nullcontext()
        with hooks:
            loss = self._batch_loss(leaf, x, y)
            (grad,) = torch.autograd.grad(loss, leaf, create_graph=True, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(leaf, requires_grad=False)
        for t in (x, leaf):
            storages.pop(t.untyped_storage().data_ptr(), None)
        graph = _Graph(loss, grad, sum(storages.values()) + grad.nbytes)
        if measure and self._cached + graph.nbytes <= self.cache_bytes:
            self._graphs[i] = graph
            self._cached += graph.nbytes
        return graph

    def matvec(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H(θ)·v of the mean loss over all samples, in the operator's dtype; one HVP."""
        with self._autograd():
            leaf = self._point(theta)
            v = v.detach().to(device=self.device, dtype=self.dtype)
            if v.shape != leaf.shape:
                raise ValueError(f"v must have shape {tuple(leaf.shape)}, got {tuple(v.shape)}")
            out = torch.zeros_like(v)
            parts = []
            for i in self._own():
                graph = self._graph(i, leaf)
                if graph.grad.requires_grad:
                    (hv,) = torch.autograd.grad(graph.grad, leaf, v, retain_graph=i in self._graphs,
                                                allow_unused=True)
                    if hv is not None:
                        if self.shard is None:
                            out += hv
                        else:
                            parts.append((i, hv.detach().cpu()))
            if self.shard is not None:
                for hv in self.shard.in_order(parts):  # the one-rank sum's additions, in batch order
                    out += hv.to(self.device)
        self.hvps += 1
        return out

    def _own(self) -> range:
        """The batches this rank differentiates: all of them, or its shard's in a point group."""
        if self.shard is None:
            return range(len(self.batches))
        return range(self.shard.rank, len(self.batches), self.shard.size)

    def loss_and_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient at θ (free after HVPs at the same θ whose graphs are cached)."""
        with self._autograd():
            leaf = self._point(theta)
            loss = 0.0
            grad = torch.zeros_like(leaf, requires_grad=False)
            parts = [(i, self._graph(i, leaf)) for i in self._own()]
            terms = [(float(g.loss.detach()), g.grad.detach()) for _, g in parts]
            if self.shard is not None:
                terms = self.shard.in_order([(i, (lo, gr.cpu())) for (i, _), (lo, gr) in zip(parts, terms)])
            for lo, gr in terms:
                loss += lo
                grad += gr.to(self.device)
        return loss, grad


@dataclass(frozen=True)
class BoundHessian:
    """v ↦ H(θ)·v at a fixed θ, with the size, dtype and device the routines below need."""

    operator: HessianOperator
    theta: torch.Tensor

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.operator.matvec(self.theta, v)

    @property
    def n(self) -> int:
        return self.operator.n

    @property
    def dtype(self) -> torch.dtype:
        return self.operator.dtype

    @property
    def device(self) -> torch.device:
        return self.operator.device
