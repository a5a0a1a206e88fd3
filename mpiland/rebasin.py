"""Permutation alignment of two networks by weight matching (Ainsworth, Hayase and Srinivasa 2023, *Git Re-Basin*).

Permuting the hidden units of a layer (its output channels or features, together
with the matching input slices of the layers that read them) leaves the function
a network computes unchanged. Two independently trained networks usually differ
by such a permutation as much as by anything else (Entezari et al. 2022), so the
straight line between them crosses a barrier that permuting one of them first
may remove. Weight matching chooses the permutations of B that bring its weights
closest to A's: it maximises Σ_ℓ ⟨W_ℓ^A, P_ℓ W_ℓ^B P_{ℓ-1}^T⟩ by coordinate descent,
solving one linear assignment per permutation group while the others are held,
in a seeded random order, until no group improves.

The permutation structure is read from the model itself: :func:`permutation_spec`
traces the forward pass with ``torch.fx`` and follows every hidden space from the
layer that makes it to the layers that read it.

- A Linear or Conv1d/2d/3d layer (``groups = 1``) makes a new space of its output
  units; a depthwise convolution keeps its input's space.
- BatchNorm, InstanceNorm, GroupNorm (1 group or one per channel), LayerNorm over
  a (batch, features) activation, PReLU, elementwise activations, softmax,
  dropout, identity, pooling and a global mean over the spatial dimensions carry
  the space through, permuting their own per-unit parameters and running
  statistics (``num_batches_tracked`` is left alone).
- Flattening a (batch, C, H, W) map makes C blocks of H·W features for the
  Linear layer that reads them (``nn.Flatten``, ``torch.flatten(x, 1)``,
  ``x.view(x.size(0), -1)``).
- Adding or multiplying two hidden tensors (residual connections) ties their
  spaces into one permutation (a union-find over spaces).
- The network's input and output spaces are never permuted, and neither is a space
  tied to them (a residual addition of the input itself, say); such a space is
  simply not a permutation group.

Anything else that reads a permuted space (attention, concatenation, grouped
convolutions, indexing, parameters used directly in ``forward``, modules this
module does not know) raises :class:`~mpiland.errors.ModelError` naming it;
the same operations on unpermuted tensors (before the first hidden layer, say)
are fine.

Public functions: :func:`permutation_spec`, :func:`match_states`,
:func:`weight_matching`, :func:`aligned_state` and :func:`align` (``ml.align``).
None of them changes the models it is given: tracing runs on a copy, and the
aligned state is a new ``state_dict``.
"""

from __future__ import annotations

import copy
import importlib
import operator
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from .errors import DependencyError, ModelError

__all__ = ["Alignment", "PermutationGroup", "PermutationSpec", "PermutedAxis", "align", "aligned_state",
           "match_states", "permutation_spec", "weight_matching"]


def _scipy_optimize() -> Any:
    """``scipy.optimize``, imported when a matching is solved: not when mpiland loads this module (a run that
    aligns nothing, or only evaluates, keeps SciPy out of the process)."""
    try:
        return importlib.import_module("scipy.optimize")
    except ImportError:
        raise DependencyError("align: weight matching needs scipy; pip install scipy") from None

StateLike = Union[nn.Module, Mapping[str, torch.Tensor]]
"""A model for alignment: a module (its ``state_dict()``) or a ``state_dict``."""

SUPPORTED = ("Linear, Conv1d/2d/3d (ungrouped or depthwise), BatchNorm, InstanceNorm, GroupNorm, LayerNorm over "
             "features, PReLU, elementwise activations, softmax, dropout, pooling, flatten, a global spatial mean "
             "and residual additions")
"""What :func:`permutation_spec` can follow through a hidden space (named in its errors)."""


# -- the permutation structure -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermutedAxis:
    """One axis of one ``state_dict`` entry that a permutation group reorders.

    ``block`` consecutive indices belong to each unit (H·W for the features a
    flattened convolution map gives a Linear layer, else 1). ``parameter`` is
    False for buffers (running statistics): they are permuted but do not enter
    the matching objective.
    """

    key: str
    axis: int
    block: int = 1
    parameter: bool = True


@dataclass(frozen=True)
class PermutationGroup:
    """One hidden space: ``size`` units, named after the first layer that makes it, and the axes it permutes."""

    name: str
    size: int
    axes: tuple[PermutedAxis, ...]


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation groups of an architecture (see :func:`permutation_spec`)."""

    groups: tuple[PermutationGroup, ...]

    @property
    def units(self) -> int:
        """The number of hidden units that can be permuted (the sum of the groups' sizes)."""
        return sum(g.size for g in self.groups)

    def keys(self) -> list[str]:
        """The ``state_dict`` entries some group permutes, in group order, each once."""
        return list(dict.fromkeys(ax.key for g in self.groups for ax in g.axes))


FIXED = 0
"""The union-find id of unpermuted spaces: the network's input and output, and tensors of unknown structure."""


@dataclass(frozen=True)
class _Space:
    """Where a traced tensor's permutable units are.

    ``kind``: "features" for a (batch, features) activation, "channels" for a
    (batch, channels, *spatial) map of ``rank`` dimensions, "fixed" for a tensor
    nothing permutes, "param" for a parameter or buffer read directly by ``forward``.
    """

    group: int
    kind: str
    rank: int = 0


_FIXED_SPACE = _Space(FIXED, "fixed")
_PARAM_SPACE = _Space(FIXED, "param")
_META = None
"""What a node that is not a tensor (a size, a shape, a dtype) carries."""


class _UnionFind:
    """Hidden spaces, the unions residual connections make, and which of them are tied to the fixed space."""

    def __init__(self) -> None:
        self.parent = [FIXED]
        self.size = [0]
        self.name = ["input/output"]

    def new(self, size: int, name: str) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.name.append(name)
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> int | None:
        """The root of the union of ``a`` and ``b``; None when their sizes differ (they cannot be one space)."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if FIXED in (ra, rb):
            keep, drop = FIXED, rb if ra == FIXED else ra
        else:
            if self.size[ra] != self.size[rb]:
                return None
            keep, drop = min(ra, rb), max(ra, rb)  # the older space names the group
        self.parent[drop] = keep
        return keep

    def fixed(self, g: int) -> bool:
        return self.find(g) == FIXED


_ACTIVATION_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid,
    nn.Softmax, nn.LogSoftmax, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_POOL_MODULES: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d)
_CONV_RANK: dict[type[nn.Module], int] = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}

_ACTIVATION_FUNCTIONS: set[Callable[..., Any]] = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.softplus, F.softsign, F.tanhshrink, F.logsigmoid, F.sigmoid, F.tanh,
    F.softmax, F.log_softmax, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.exp, torch.abs, torch.neg, torch.square,
    torch.sqrt, torch.clamp, torch.clip, torch.softmax, torch.log_softmax, operator.neg, operator.pos}
_POOL_FUNCTIONS: set[Callable[..., Any]] = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.lp_pool1d, F.lp_pool2d}
_BINARY_FUNCTIONS: set[Callable[..., Any]] = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div}
_ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "abs", "neg", "square",
                       "sqrt", "clamp", "clamp_", "clip", "softmax", "log_softmax", "contiguous", "clone", "detach",
                       "float", "double", "half", "bfloat16", "to", "type_as"}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_META_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}
_META_ATTRIBUTES = {"shape", "dtype", "device", "ndim", "is_cuda", "requires_grad", "layout"}


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    """The nodes among ``node``'s arguments (nested in tuples, lists and keyword arguments too)."""
    found: list[fx.Node] = []

    def keep(n: fx.Node) -> fx.Node:
        found.append(n)
        return n

    fx.node.map_arg((node.args, node.kwargs), keep)
    return found


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``name`` of a call, given by keyword or at position ``index`` (the tensor is position 0)."""
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[index] if len(node.args) > index else default


def _int_dims(value: Any) -> tuple[int, ...] | None:
    """``value`` as a tuple of ints (an int or a sequence of ints), else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
        return tuple(value)
    return None


class _Tracer:
    """Walks a traced graph, giving every node a :class:`_Space` and recording the axes each space permutes."""

    def __init__(self, model: nn.Module, graph: fx.Graph) -> None:
        self.model = model
        self.graph = graph
        self.uf = _UnionFind()
        self.spaces: dict[fx.Node, _Space | None] = {}
        self.axes: dict[tuple[str, int], int] = {}
        self.module_groups: dict[str, int] = {}
        self.touches: list[tuple[str, list[int]]] = []
        self.parameters = {name for name, _ in model.named_parameters()}
        self.state = model.state_dict()

    # -- bookkeeping -------------------------------------------------------------------------------------

    def space(self, node: Any) -> _Space | None:
        return self.spaces.get(node) if isinstance(node, fx.Node) else _META

    def permuted(self, s: _Space | None) -> bool:
        """Whether ``s`` may be permuted (so far: a later union with the fixed space can still pin it)."""
        return s is not None and s.kind in ("features", "channels") and not self.uf.fixed(s.group)

    def touch(self, what: str, spaces: Iterable[_Space | None]) -> _Space:
        """An operation that cannot carry a permutation: an error unless its spaces end up unpermuted."""
        groups = [s.group for s in spaces if s is not None and s.kind in ("features", "channels")]
        if groups:
            self.touches.append((what, groups))
        return _FIXED_SPACE

    def record(self, module: str, pname: str, axis: int, group: int) -> None:
        """Entry ``module.pname`` (when the module has it) is permuted along ``axis`` by ``group``."""
        key = f"{module}.{pname}" if module else pname
        if key not in self.state or self.state[key] is None:
            return
        seen = self.axes.get((key, axis))
        if seen is not None and self.uf.union(seen, group) is None:
            raise ModelError(f"align: {key!r} is used with spaces of different sizes; weight matching supports "
                             f"{SUPPORTED}")
        self.axes[(key, axis)] = group if seen is None else self.uf.find(group)

    def new_units(self, target: str, x: _Space, free: bool, size: int) -> int:
        """A Linear or ungrouped conv layer: its input axis follows ``x``'s group (unless unpermuted), and its
        ``size`` output units are a new group (weight rows and bias); return that group."""
        if not free:
            self.record(target, "weight", 1, x.group)
        g = self.make_group(target, size)
        self.record(target, "weight", 0, g)
        self.record(target, "bias", 0, g)
        return g

    def make_group(self, target: str, size: int) -> int:
        """The output space of the layer ``target`` (the same one if the layer is called again)."""
        if target not in self.module_groups:
            self.module_groups[target] = self.uf.new(size, target)
        return self.module_groups[target]

    # -- the walk ----------------------------------------------------------------------------------------

    def run(self) -> None:
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.spaces[node] = _FIXED_SPACE
            elif node.op == "get_attr":
                self.spaces[node] = _PARAM_SPACE
            elif node.op == "call_module":
                self.spaces[node] = self.call_module(node)
            elif node.op == "call_function":
                self.spaces[node] = self.call_function(node)
            elif node.op == "call_method":
                self.spaces[node] = self.call_method(node)
            elif node.op == "output":
                for n in _tensor_args(node):
                    s = self.spaces.get(n)
                    if s is not None:
                        self.uf.union(s.group, FIXED)

    def check(self) -> None:
        """Raise ModelError for the first unsupported operation on a space that is permuted after all."""
        for what, groups in self.touches:
            if any(not self.uf.fixed(g) for g in groups):
                raise ModelError(f"align: {what} reads permuted hidden units, which weight matching cannot "
                                 f"follow; it supports {SUPPORTED}")

    def call_module(self, node: fx.Node) -> _Space | None:
        target = str(node.target)
        module = self.model.get_submodule(target)
        what = f"layer {target!r} ({type(module).__name__})"
        inputs = [self.space(a) for a in _tensor_args(node)]
        x = self.space(node.args[0]) if node.args else None
        if len(inputs) != 1 or x is None:
            return self.touch(what, inputs)
        free = not self.permuted(x)
        if isinstance(module, nn.Linear):
            if not free and x.kind != "features":
                return self.touch(f"{what}, applied to a convolution's map without flattening it,", [x])
            return _Space(self.new_units(target, x, free, module.out_features), "features")
        conv_rank = _CONV_RANK.get(type(module))
        if conv_rank is not None:
            assert isinstance(module, nn.modules.conv._ConvNd)
            if not free and x.kind != "channels":
                return self.touch(f"{what}, applied to features rather than channels,", [x])
            depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
            if depthwise:
                if not free:
                    self.record(target, "weight", 0, x.group)
                    self.record(target, "bias", 0, x.group)
                return _Space(x.group, "channels", conv_rank) if not free else _FIXED_SPACE
            if module.groups != 1:
                return self.touch(f"{what}, a grouped convolution ({module.groups} groups),", [x])
            return _Space(self.new_units(target, x, free, module.out_channels), "channels", conv_rank)
        if free:
            # Unpermuted input: the module's output is unpermuted too (and nothing of it is recorded).
            return _FIXED_SPACE
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
            for pname in ("weight", "bias", "running_mean", "running_var"):
                self.record(target, pname, 0, x.group)
            return x
        if isinstance(module, nn.GroupNorm):
            if module.num_groups not in (1, module.num_channels):
                return self.touch(f"{what} with {module.num_groups} groups of channels (1 or one per channel "
                                  "can be permuted)", [x])
            self.record(target, "weight", 0, x.group)
            self.record(target, "bias", 0, x.group)
            return x
        if isinstance(module, nn.LayerNorm):
            if x.kind != "features" or len(module.normalized_shape) != 1:
                return self.touch(f"{what} over {tuple(module.normalized_shape)} of a {x.kind} tensor", [x])
            self.record(target, "weight", 0, x.group)
            self.record(target, "bias", 0, x.group)
            return x
        if isinstance(module, nn.PReLU):
            if module.num_parameters > 1:
                self.record(target, "weight", 0, x.group)
            return x
        if isinstance(module, _ACTIVATION_MODULES):
            return x
        if isinstance(module, _POOL_MODULES):
            return x if x.kind == "channels" else self.touch(f"{what} over features", [x])
        if isinstance(module, nn.Flatten):
            return self.flatten(x, module.start_dim, module.end_dim, what)
        return self.touch(what, inputs)

    def flatten(self, x: _Space, start: Any, end: Any, what: str) -> _Space:
        """``flatten(start, end)``: a (batch, C, …) map to (batch, C·…) features in C blocks."""
        if not self.permuted(x):
            return _FIXED_SPACE
        if start != 1 or end != -1 or isinstance(start, bool) or isinstance(end, bool):
            return self.touch(f"{what} from dimension {start} to {end} (only flatten(1, -1) keeps whole units)", [x])
        return _Space(x.group, "features")

    def binary(self, what: str, operands: list[_Space | None]) -> _Space | None:
        """Elementwise arithmetic: scalars carry a space; two tensors must share theirs (a residual union)."""
        tensors = [s for s in operands if s is not None]
        if not tensors:
            return _META
        if any(s.kind == "param" for s in tensors) and any(self.permuted(s) for s in tensors):
            return self.touch(f"{what} with a parameter read directly in forward", tensors)
        out = tensors[0]
        for s in tensors[1:]:
            if self.permuted(out) and self.permuted(s) and out.kind != s.kind:
                return self.touch(f"{what} of a {out.kind} and a {s.kind} tensor", [out, s])
            root = self.uf.union(out.group, s.group)
            if root is None:
                return self.touch(f"{what} of spaces with {self.uf.size[self.uf.find(out.group)]} and "
                                  f"{self.uf.size[self.uf.find(s.group)]} units", [out, s])
            kind = out.kind if self.permuted(out) else s.kind
            rank = out.rank if self.permuted(out) else s.rank
            out = _Space(root, kind, rank) if root != FIXED else _FIXED_SPACE
        return out

    def mean(self, x: _Space, dims: tuple[int, ...] | None, keepdim: bool, what: str) -> _Space:
        """A mean over spatial dimensions of a map (global average pooling) keeps its channels."""
        if not self.permuted(x):
            return _FIXED_SPACE
        if x.kind != "channels" or dims is None or not x.rank:
            return self.touch(f"{what} (only a mean over a map's spatial dimensions keeps its units)", [x])
        norm = {d + x.rank if d < 0 else d for d in dims}
        if norm & {0, 1} or not norm <= set(range(2, x.rank)):
            return self.touch(f"{what} over dimensions {dims} (only a mean over a map's spatial dimensions keeps "
                              "its units)", [x])
        if keepdim:
            return x
        rank = x.rank - len(norm)
        return _Space(x.group, "features") if rank == 2 else _Space(x.group, "channels", rank)

    def call_function(self, node: fx.Node) -> _Space | None:
        fn = node.target
        what = f"function {getattr(fn, '__name__', str(fn))} (node {node.name!r})"
        inputs = [self.space(a) for a in _tensor_args(node)]
        x = self.space(node.args[0]) if node.args else None
        if fn is getattr:
            return _META if len(node.args) > 1 and node.args[1] in _META_ATTRIBUTES else self.touch(what, inputs)
        if fn is operator.getitem:
            return _META if x is None else self.touch(f"{what} (indexing)", inputs)
        if all(not self.permuted(s) and (s is None or s.kind != "param") for s in inputs):
            if fn in _BINARY_FUNCTIONS:
                return self.binary(what, inputs)
            return _META if all(s is None for s in inputs) else _FIXED_SPACE
        if fn in _BINARY_FUNCTIONS:
            return self.binary(what, inputs)
        if x is None or len([s for s in inputs if s is not None]) != 1:
            return self.touch(what, inputs)
        if fn in _ACTIVATION_FUNCTIONS:
            return x
        if fn in _POOL_FUNCTIONS:
            return x if x.kind == "channels" else self.touch(f"{what} over features", [x])
        if fn is torch.flatten:
            return self.flatten(x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1), what)
        if fn is torch.mean:
            dims = _int_dims(_arg(node, 1, "dim", None))
            return self.mean(x, dims, bool(_arg(node, 2, "keepdim", False)), what)
        if fn is torch.reshape:
            return self.reshape(x, list(node.args[1:]), what)
        return self.touch(what, inputs)

    def reshape(self, x: _Space, shape: list[Any], what: str) -> _Space:
        """``view``/``reshape`` to (batch, -1) or (-1, n): a flatten from dimension 1."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = list(shape[0])
        if len(shape) == 2 and (shape[1] == -1 or shape[0] == -1):
            return self.flatten(x, 1, -1, what)
        return self.touch(f"{what} to {len(shape)} dimensions (only (batch, -1) keeps whole units)", [x])

    def call_method(self, node: fx.Node) -> _Space | None:
        name = str(node.target)
        what = f"tensor method .{name}() (node {node.name!r})"
        inputs = [self.space(a) for a in _tensor_args(node)]
        x = self.space(node.args[0]) if node.args else None
        if name in _META_METHODS:
            return _META
        if name in _BINARY_METHODS:
            return self.binary(what, inputs)
        if x is None:
            return self.touch(what, inputs)
        if all(not self.permuted(s) and (s is None or s.kind != "param") for s in inputs):
            return _FIXED_SPACE
        if len([s for s in inputs if s is not None]) != 1 or not self.permuted(x):
            return self.touch(what, inputs)
        if name in _ACTIVATION_METHODS:
            return x
        if name == "flatten":
            return self.flatten(x, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1), what)
        if name == "mean":
            dims = _int_dims(_arg(node, 1, "dim", None))
            return self.mean(x, dims, bool(_arg(node, 2, "keepdim", False)), what)
        if name in ("view", "reshape"):
            return self.reshape(x, list(node.args[1:]), what)
        return self.touch(what, inputs)

    def spec(self) -> PermutationSpec:
        """The permutation groups found: every space not tied to the input or output, with its axes."""
        by_root: dict[int, list[PermutedAxis]] = {}
        for (key, axis), group in self.axes.items():
            root = self.uf.find(group)
            if root == FIXED:
                continue
            size = self.uf.size[root]
            length = int(self.state[key].shape[axis])
            if length % size:
                raise ModelError(f"align: {key!r} has {length} entries along axis {axis}, which do not split into "
                                 f"the {size} units of its space; weight matching supports {SUPPORTED}")
            by_root.setdefault(root, []).append(PermutedAxis(key, axis, length // size, key in self.parameters))
        groups = tuple(PermutationGroup(self.uf.name[root], self.uf.size[root], tuple(by_root[root]))
                       for root in sorted(by_root))
        return PermutationSpec(groups)


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The permutation groups of ``model``'s architecture, read from its ``torch.fx`` graph.

    Why: weight matching needs to know which axes of which tensors one permutation
    of hidden units reorders; reading them from the traced forward pass covers
    sequential models and residual blocks alike, with no per-architecture table.

    Parameters: ``model``, any module ``torch.fx.symbolic_trace`` can trace (it is
    traced on a copy, so the model is not changed). Returns a
    :class:`PermutationSpec` (groups in the order their first layers run; it may
    hold no group, e.g. for a model without hidden layers). Raises ModelError for
    a model fx cannot trace, or one that reads a permuted space with an operation
    the permutation cannot follow (the message names it and what is supported).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"align: the model must be a torch nn.Module, got {type(model).__name__}")
    scratch = copy.deepcopy(model)
    try:
        traced = fx.symbolic_trace(scratch)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(f"align: torch.fx cannot trace {type(model).__name__} ({exc.__class__.__name__}: {first}), "
                         "so its hidden units are unknown; alignment needs a forward without data-dependent "
                         "control flow") from None
    walk = _Tracer(scratch, traced.graph)
    walk.run()
    walk.check()
    return walk.spec()


# -- weight matching -----------------------------------------------------------------------------------------


def _take(t: torch.Tensor, axis: int, perm: torch.Tensor, block: int) -> torch.Tensor:
    """``t`` with the units of ``axis`` (``block`` consecutive indices each) in the order ``perm``."""
    if block > 1:
        perm = (perm[:, None] * block + torch.arange(block)[None, :]).reshape(-1)
    return t.index_select(axis, perm.to(t.device))


@dataclass(frozen=True, eq=False)
class Alignment:
    """The permutations weight matching found: aligned unit i of each group is B's unit ``perms[name][i]``.

    ``spec`` is the architecture's permutation structure, ``iterations`` the
    number of sweeps over the groups until none improved (or ``max_iter``),
    ``objective`` the matching objective Σ⟨W_A, π(W_B)⟩ over the permuted
    parameters before and after.
    """

    spec: PermutationSpec
    perms: dict[str, torch.Tensor]
    iterations: int = 0
    objective: tuple[float, float] = (0.0, 0.0)
    converged: bool = True

    @property
    def permuted_units(self) -> int:
        """How many hidden units moved (are not mapped to themselves)."""
        return int(sum(int((p != torch.arange(p.numel())).sum()) for p in self.perms.values()))

    def apply(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A new ``state_dict``: ``state`` with every permuted axis reordered, the other entries copied.

        Raises ModelError when ``state`` lacks an entry the permutation reorders.
        """
        out = {k: v.detach().clone() for k, v in state.items()}
        for group in self.spec.groups:
            perm = self.perms[group.name]
            for ax in group.axes:
                if ax.key not in out:
                    raise ModelError(f"align: the state_dict has no {ax.key!r}, which the permutation of "
                                     f"{group.name!r} reorders; give a state of the aligned architecture")
                out[ax.key] = _take(out[ax.key], ax.axis, perm, ax.block)
        return out


def _state(obj: StateLike, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if isinstance(obj, Mapping):
        return dict(obj)
    raise ModelError(f"align: {what} is a {type(obj).__name__}; give an nn.Module or a state_dict")


def _check_shapes(spec: PermutationSpec, a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    for key in spec.keys():
        for name, state in (("A", a), ("B", b)):
            if key not in state:
                raise ModelError(f"align: model {name} has no {key!r}; align two models of one architecture")
        if a[key].shape != b[key].shape:
            raise ModelError(f"align: {key!r} is {tuple(a[key].shape)} in model A but {tuple(b[key].shape)} in "
                             "model B; align two models of one architecture")


def match_states(spec: PermutationSpec, state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor],
                 *, max_iter: int = 100, seed: int = 0) -> Alignment:
    """Weight matching of ``state_b`` to ``state_a`` over the groups of ``spec`` (Ainsworth et al. 2023, alg. 1).

    Why: the permutations of B's hidden units that maximise Σ⟨W_A, π(W_B)⟩ over the
    parameters (equivalently, minimise the L2 distance between A and permuted B)
    put B in A's basin when the models are permutations of each other or nearly so.

    Each sweep visits the groups in an order drawn from ``seed``; for each, the
    other groups' permutations are held and a linear assignment
    (``scipy.optimize.linear_sum_assignment``) gives the best permutation of this
    one, kept when it raises the objective. Sweeps stop when none improves, or
    after ``max_iter``. The objective uses parameters only (running statistics are
    permuted with their units but do not steer the match) and is computed in
    float64 on the CPU, so the result does not depend on the device.

    Parameters: ``spec`` from :func:`permutation_spec`; ``state_a``, ``state_b``:
    ``state_dict`` mappings of that architecture (not changed); ``max_iter``: the
    most sweeps; ``seed``: the order of the groups. Returns an :class:`Alignment`.
    Raises ModelError for states of another architecture, DependencyError
    without scipy, ValueError for ``max_iter`` < 1.
    """
    optimize = _scipy_optimize()
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    _check_shapes(spec, state_a, state_b)
    keys = spec.keys()
    wa = {k: state_a[k].detach().to("cpu", torch.float64) for k in keys}
    wb = {k: state_b[k].detach().to("cpu", torch.float64) for k in keys}
    perms = {g.name: torch.arange(g.size) for g in spec.groups}
    # Per entry: every (axis, group name, block) that permutes it.
    entry_axes: dict[str, list[tuple[int, str, int]]] = {}
    for g in spec.groups:
        for ax in g.axes:
            entry_axes.setdefault(ax.key, []).append((ax.axis, g.name, ax.block))

    def permuted_b(key: str, skip: tuple[int, str]) -> torch.Tensor:
        t = wb[key]
        for axis, name, block in entry_axes[key]:
            if (axis, name) != skip:
                t = _take(t, axis, perms[name], block)
        return t

    parameters = [k for k in keys if any(ax.key == k and ax.parameter for g in spec.groups for ax in g.axes)]

    def objective() -> float:
        total = 0.0
        for key in parameters:
            t = wb[key]
            for axis, name, block in entry_axes[key]:
                t = _take(t, axis, perms[name], block)
            total += float((wa[key] * t).sum())
        return total

    start = objective()
    gen = torch.Generator().manual_seed(int(seed))
    iterations, converged = 0, False
    for _ in range(max_iter):
        iterations += 1
        improved = False
        for i in torch.randperm(len(spec.groups), generator=gen).tolist():
            g = spec.groups[i]
            n = g.size
            cost = torch.zeros(n, n, dtype=torch.float64)
            for ax in g.axes:
                if not ax.parameter:
                    continue
                a = wa[ax.key].movedim(ax.axis, 0).reshape(n, -1)
                b = permuted_b(ax.key, (ax.axis, g.name)).movedim(ax.axis, 0).reshape(n, -1)
                cost += a @ b.t()
            c = cost.numpy()
            _, cols = optimize.linear_sum_assignment(c, maximize=True)
            rows = np.arange(n)
            old = float(c[rows, perms[g.name].numpy()].sum())
            new = float(c[rows, cols].sum())
            if new > old + 1e-12 * max(1.0, abs(old)):
                perms[g.name] = torch.as_tensor(cols, dtype=torch.long)
                improved = True
        if not improved:
            converged = True
            break
    return Alignment(spec, perms, iterations, (start, objective()), converged)


def weight_matching(model_a: StateLike, model_b: StateLike, *, model: nn.Module | None = None, max_iter: int = 100,
                    seed: int = 0) -> Alignment:
    """The permutations of ``model_b``'s hidden units that best match ``model_a`` (weight matching).

    Why: to compare two trained networks (interpolate between them, measure their
    distance) up to the permutation symmetry of their hidden units.

    Parameters: ``model_a``, ``model_b``: modules or ``state_dict`` mappings of
    one architecture (neither is changed); ``model``: a module of that
    architecture whose graph gives the permutation structure (default: ``model_a``,
    else ``model_b``, whichever is a module); ``max_iter``, ``seed``: see
    :func:`match_states`. Returns an :class:`Alignment`; apply it with
    :func:`aligned_state`. Raises ModelError for an unsupported or untraceable
    architecture or models that differ in it.
    """
    ref = model if model is not None else next((m for m in (model_a, model_b) if isinstance(m, nn.Module)), None)
    if ref is None:
        raise ModelError("align: both models are state_dicts; pass model= (an nn.Module of their architecture) "
                         "so the permutation structure can be read from it")
    spec = permutation_spec(ref)
    return match_states(spec, _state(model_a, "model A"), _state(model_b, "model B"), max_iter=max_iter, seed=seed)


def aligned_state(model_b: StateLike, alignment: Alignment) -> dict[str, torch.Tensor]:
    """``model_b``'s ``state_dict`` with its hidden units permuted by ``alignment``.

    Why: loading it into a module of the architecture gives a network computing the
    same function as B whose weights are as close to A's as the permutations allow.

    Parameters: ``model_b``, a module or a ``state_dict`` (not changed);
    ``alignment`` from :func:`weight_matching`. Returns a new dict with every
    entry of B (tensors are copies): weights, biases and BatchNorm running
    statistics permuted, ``num_batches_tracked`` and unpermuted entries as they
    were. Raises ModelError when B lacks an entry the permutation reorders.
    """
    return alignment.apply(_state(model_b, "model B"))


def align(model_a: StateLike, model_b: StateLike, **kw: Any) -> dict[str, torch.Tensor]:
    """``model_b``'s ``state_dict`` permuted to match ``model_a`` (weight matching, then :func:`aligned_state`).

    Keywords are :func:`weight_matching`'s (``model``, ``max_iter``, ``seed``).
    Returns the new ``state_dict``; neither model is changed. Raises ModelError as
    :func:`weight_matching` does.
    """
    return aligned_state(model_b, weight_matching(model_a, model_b, **kw))
