"""A lean forward pass for plain feed-forward chains (MLPs): K points per pass with batched products, no vmap.

A model that is an ``nn.Sequential`` (nested ones are flattened) of a leading
``Flatten``, ``Linear`` layers, elementwise activations, ``Dropout`` and ``Identity``
is run by :class:`ChainPlan` itself: the K points' weights are views of the rows of
the K × n parameter buffer, and each layer after the first is one ``baddbmm``. That
removes what the general path pays on a small model: module calls, and the
per-call overhead of vmap over ``functional_call``.

The first layer is linear in the parameters and its input is the data, which is the
same at every point: with W(c) = W₀ + Σⱼ cⱼ Dⱼ and b(c) = b₀ + Σⱼ cⱼ dⱼ (W₀, b₀ the
origin's first layer, Dⱼ, dⱼ the first layer's block of basis vector j),

    x·W(c)ᵀ + b(c) = A₀ + Σⱼ cⱼ Aⱼ,   A₀ = x·W₀ᵀ + b₀,   Aⱼ = x·Dⱼᵀ + dⱼ.

So a point's first layer is one product of its coefficients with A, of inner
dimension m + 1 instead of ``in_features``; for data kept on the device A is
computed once per batch at set-up (:meth:`ChainPlan.precompute`), and for streamed
batches at each pass, with the same operations, so values do not depend on where
the data lives.

The same operations run for one point and for K, row by row, so with one thread a
point's values do not depend on K (checked bitwise by the tests). With more threads
the CPU's GEMM may split a product of another shape differently and round at the last
bit (measured: K = 2, 3, 4 agree, K = 1 and 16 differ at 1e-9 relative on 2 threads),
which is why a file keeps the K it was started with and every rank uses the agreed K;
a CPU run may choose K by measuring (:func:`~mpiland.engine.batching.choose_points_per_pass`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import ParamLayout
from .params import combine_rows

Activation = Callable[[torch.Tensor], torch.Tensor]


def _activation(m: nn.Module) -> Activation | None:
    """The in-place (where torch has one) elementwise function of an activation module, or None."""
    if isinstance(m, nn.ReLU):
        return torch.relu_
    if isinstance(m, nn.LeakyReLU):
        slope = m.negative_slope
        return lambda h: F.leaky_relu_(h, slope)
    if isinstance(m, nn.ReLU6):
        return lambda h: F.hardtanh_(h, 0.0, 6.0)
    if isinstance(m, nn.Tanh):
        return torch.tanh_
    if isinstance(m, nn.Sigmoid):
        return torch.sigmoid_
    if isinstance(m, nn.GELU):
        approximate = m.approximate
        return lambda h: F.gelu(h, approximate=approximate)
    if isinstance(m, nn.SiLU):
        return lambda h: F.silu(h, inplace=True)
    if isinstance(m, nn.ELU):
        alpha = m.alpha
        return lambda h: F.elu_(h, alpha)
    if isinstance(m, nn.Softplus):
        beta, threshold = m.beta, m.threshold
        return lambda h: F.softplus(h, beta, threshold)
    return None


PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.AlphaDropout)
"""Modules that are the identity in eval mode."""


@dataclass(frozen=True)
class _Layer:
    """One Linear layer: where its weight and bias sit in the flat parameters, and what follows it."""

    weight: int
    bias: int | None
    out_features: int
    in_features: int
    activations: tuple[Activation, ...]


def _modules(model: nn.Module) -> list[nn.Module] | None:
    """The chain of leaf modules of a (nested) Sequential, or None for any other model."""
    if not isinstance(model, nn.Sequential):
        return None
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Sequential):
            inner = _modules(m)
            if inner is None:
                return None
            out += inner
        else:
            out.append(m)
    return out


def _hooked(model: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class ChainPlan:
    """The forward pass of a Linear chain for k points whose parameters are the rows of a (K × n) buffer."""

    def __init__(self, layers: list[_Layer], flatten: bool, layout: ParamLayout) -> None:
        self.layers = layers
        self.flatten = flatten
        self.layout = layout
        self.cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]] = {}
        self.scratch: dict[tuple[int, int, int], _Buffer] = {}
        self.views: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor | None]]] = {}
        self.first_weights = torch.empty(0)
        self.first_biases: torch.Tensor | None = None

    @classmethod
    def build(cls, model: nn.Module, layout: ParamLayout) -> ChainPlan | None:
        """The plan of ``model``, or None when it is not a plain chain the plan runs exactly."""
        chain = _modules(model)
        if not chain or _hooked(model) or model.training:
            return None
        index = {name: i for i, name in enumerate(layout.names)}
        names = {id(p): n for n, p in model.named_parameters()}
        flatten = False
        layers: list[_Layer] = []
        for m in chain:
            if isinstance(m, nn.Flatten):
                if layers or flatten or m.start_dim != 1 or m.end_dim != -1:
                    return None
                flatten = True
            elif isinstance(m, nn.Linear):
                w = index.get(names.get(id(m.weight), ""))
                b = None if m.bias is None else index.get(names.get(id(m.bias), ""))
                if w is None or (m.bias is not None and b is None):
                    return None
                layers.append(_Layer(w, b, m.out_features, m.in_features, ()))
            elif isinstance(m, PASS_THROUGH):
                continue
            else:
                act = _activation(m)
                if act is None or not layers:
                    return None
                last = layers[-1]
                layers[-1] = _Layer(last.weight, last.bias, last.out_features, last.in_features,
                                    last.activations + (act,))
        if not layers:
            return None
        return cls(layers, flatten, layout)

    @property
    def first_column(self) -> int:
        """The first column of the flat parameters the pass reads from the rows: the layers after the first
        (the first layer's come from :meth:`prepare`'s products), so the columns before it need not be written
        at each point; 0 when the first layer's parameters do not all come before the others'."""
        offsets = self.layout.offsets
        first = [i for i in (self.layers[0].weight, self.layers[0].bias) if i is not None]
        later = [i for layer in self.layers[1:] for i in (layer.weight, layer.bias) if i is not None]
        start = min((offsets[i] for i in later), default=self.layout.numel)
        return start if all(offsets[i] + self.layout.numel_of(i) <= start for i in first) else 0

    # -- the first layer's products with the data --------------------------------------

    def _inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) if self.flatten else x

    def prepare(self, theta0: torch.Tensor, vectors: torch.Tensor) -> None:
        """Take the first layer of the origin (``theta0``, n) and of each basis vector (``vectors``, m × n):
        the m + 1 weight matrices the first layer's products are taken with."""
        first = self.layers[0]

        def block(i: int, size: int) -> torch.Tensor:  # parameter i of the origin and of each basis vector
            off = self.layout.offsets[i]
            return torch.cat([theta0[None, off: off + size], vectors[:, off: off + size]])

        self.first_weights = block(first.weight, first.out_features * first.in_features).view(
            -1, first.out_features, first.in_features).transpose(1, 2)
        self.first_biases = block(first.bias, first.out_features).unsqueeze(1) if first.bias is not None else None

    def products(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A₀ (1, batch·out) and the rows of A (m × (1, batch·out)) of one batch of inputs."""
        a = torch.matmul(self._inputs(x), self.first_weights)
        if self.first_biases is not None:
            a += self.first_biases
        a = a.reshape(a.shape[0], -1)
        return a[:1], list(a[1:].split(1))

    def precompute(self, batches: list[torch.Tensor], budget_bytes: float) -> int:
        """Keep the products of each batch of inputs kept on the device, while they fit ``budget_bytes``;
        return the bytes used (:meth:`prepare` first)."""
        used = 0
        for x in batches:
            need = self.first_weights.shape[0] * x.shape[0] * self.layers[0].out_features * x.element_size()
            if used + need > budget_bytes:
                break
            # The batch is kept with its products: while the cache holds it, no other tensor can take its address.
            self.cache[_key(x)] = (x, *self.products(x))
            used += need
        return used

    # -- the pass ------------------------------------------------------------------------

    def _scratch(self, layer: int, k: int, n: int, dtype: torch.dtype, device: torch.device) -> _Buffer:
        """The reused output buffer (k, n, out) of a layer before the last, with its views: passes allocate
        nothing that size, which on a CPU would be fresh pages (page faults) at every pass."""
        key = (layer, k, n)
        buf = self.scratch.get(key)
        if buf is None or buf.out.dtype != dtype or buf.out.device != device:
            out = torch.empty(k, n, self.layers[layer].out_features, dtype=dtype, device=device)
            buf = self.scratch[key] = _Buffer(out, out.view(k, -1), out.transpose(1, 2))
        return buf

    def forward(self, rows: torch.Tensor, columns: Sequence[torch.Tensor], k: int, x: torch.Tensor) -> torch.Tensor:
        """Outputs (k, batch, out) of the k points in the first k rows of ``rows`` (K × n), whose coefficient
        columns (m × (k × 1), :func:`~.params.coefficient_columns`) give their first layer: a new tensor (a
        transposed view when there are several layers); the layers before the last write into reused buffers."""
        n = int(x.shape[0])
        last = len(self.layers) - 1

        cached = self.cache.get(_key(x))
        a0, a = cached[1:] if cached is not None else self.products(x)
        if not last:
            h = torch.empty(k, n, self.layers[0].out_features, dtype=rows.dtype, device=rows.device)
            combine_rows(a0, columns, a, h.view(k, -1))
            return _activate(h, self.layers[0].activations)
        buf = self._scratch(0, k, n, rows.dtype, rows.device)
        combine_rows(a0, columns, a, buf.flat)
        _activate(buf.out, self.layers[0].activations)
        for i, (layer, (w, b)) in enumerate(zip(self.layers[1:], self._views(rows, k)), start=1):
            if i < last:
                nxt = self._scratch(i, k, n, rows.dtype, rows.device)
                if b is not None:
                    torch.baddbmm(b, buf.out, w, out=nxt.out)
                else:
                    torch.bmm(buf.out, w, out=nxt.out)
                _activate(nxt.out, layer.activations)
                buf = nxt
            else:
                # The last layer is computed transposed, (k, out, batch), and returned as a (k, batch, out)
                # view: the epilogue's reductions over the outputs then run along contiguous rows of samples.
                out = torch.empty(k, layer.out_features, n, dtype=rows.dtype, device=rows.device)
                if b is not None:
                    torch.baddbmm(b, w, buf.transposed, out=out)
                else:
                    torch.bmm(w, buf.transposed, out=out)
                _activate(out, layer.activations)
        return out.transpose(1, 2)

    def _views(self, rows: torch.Tensor, k: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """Per layer after the first, views of the first k rows: (weightᵀ (k, in, out), bias (k, 1, out)), and
        for the last layer, which is computed transposed, (weight (k, out, in), bias (k, out, 1)); made once
        per buffer and k (the buffer is written in place, so the views stay valid)."""
        key = (rows.data_ptr(), k)
        views = self.views.get(key)
        if views is None:
            rows = rows[:k]
            views = []
            for i, layer in enumerate(self.layers[1:], start=1):
                w = self._weight(rows, layer)
                b = self._bias(rows, layer) if layer.bias is not None else None
                if i < len(self.layers) - 1:
                    views.append((w.transpose(1, 2), b))
                else:
                    views.append((w, None if b is None else b.transpose(1, 2)))
            # views of an earlier buffer would keep it alive: only this buffer's are kept
            self.views = {kk: v for kk, v in self.views.items() if kk[0] == key[0]}
            self.views[key] = views
        return views

    def _weight(self, rows: torch.Tensor, layer: _Layer) -> torch.Tensor:
        off = self.layout.offsets[layer.weight]
        return rows[:, off: off + layer.out_features * layer.in_features].view(-1, layer.out_features,
                                                                                 layer.in_features)

    def _bias(self, rows: torch.Tensor, layer: _Layer) -> torch.Tensor:
        assert layer.bias is not None
        off = self.layout.offsets[layer.bias]
        return rows[:, off: off + layer.out_features].unsqueeze(1)


@dataclass(frozen=True)
class _Buffer:
    """A layer's reused output (k, n, out), as (k, n·out) for the first layer's products, and as (k, out, n)
    for the last layer's transposed product."""

    out: torch.Tensor
    flat: torch.Tensor
    transposed: torch.Tensor


def _activate(h: torch.Tensor, activations: tuple[Activation, ...]) -> torch.Tensor:
    """``h`` after the activations, written back into ``h`` (an activation torch has no in-place form of
    returns a new tensor)."""
    for act in activations:
        y = act(h)
        if y is not h:
            h.copy_(y)
    return h


def _key(x: Any) -> tuple[int, int]:
    """A batch's identity for the first-layer cache: its data pointer and length (resident batches never move)."""
    return (x.data_ptr(), int(x.shape[0])) if isinstance(x, torch.Tensor) else (0, -1)
