"""Directions from Python objects: the builders behind ``ml.directions.random(...)`` and the rest.

Each builder makes the same :class:`~mpiland.directions.Directions` as the job-file
kind of its name (the same normalisation, seeds, labels and recorded settings), from
what a notebook holds: models may be ``nn.Module`` objects, ``state_dict`` mappings or
checkpoint paths. Path kinds need one module for the architecture: the first module
among the models, else ``model=``. Nothing passed in is changed: checkpoints and
state dicts are loaded into a scratch copy, and Hessian directions are computed on
a copy of the model.

The path builders take ``align=True`` as a job file takes ``directions.align``:
the models after the first are permuted to match it by weight matching
(:mod:`mpiland.rebasin`), the path runs through the aligned models and the path
through the models as given is evaluated beside it (metrics ``unaligned_*``).
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

from ..comm import Comm, agree, world
from ..data import as_tensors
from ..errors import CheckpointError, ModelError, SettingsError
from ..launch import resolve_device
from ..layout import ParamLayout, checkpoint_vector, state_vector
from ..lossfns import loss_function
from ..models import expand_checkpoints, load_state
from ..spec import IGNORES, NORMS, DirectionsSpec, HessianSpec
from .axes import file_directions, random_directions
from .base import Directions
from .eigen import CurvatureInputs, hessian_directions
from .models import copy_state, align_models, model_path, pca_directions, roles

ModelLike = Union[nn.Module, Mapping[str, torch.Tensor], str, "os.PathLike[str]"]
"""A model of a path: a module (its state), a state_dict, or a checkpoint file."""


def _choice(name: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(options)}")
    return str(value)


def _module(model: Any, builder: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ModelError(f"{builder}: model must be a torch nn.Module (the model at θ*), got {type(model).__name__}")
    if not any(True for _ in model.parameters()):
        raise ModelError(f"{builder}: the model has no parameters")
    return model


def _dims(dims: Any) -> int:
    if dims not in (1, 2):
        raise SettingsError(f"dims={dims!r}: a landscape has 1 or 2 axes")
    return int(dims)


def _axis_spec(kind: str, seed: int, norm: str, ignore: str, include: Sequence[str], exclude: Sequence[str],
               orthogonalize: bool, states: bool, file: tuple[str, ...] = ()) -> DirectionsSpec:
    return DirectionsSpec(kind=kind, seed=int(seed), norm=_choice("norm", norm, NORMS),
                          ignore=_choice("ignore", ignore, IGNORES), include=tuple(include), exclude=tuple(exclude),
                          orthogonalize=bool(orthogonalize), states=bool(states), file=file)


def random(model: nn.Module, *, dims: int = 2, seed: int = 0, norm: str = "filter", ignore: str = "biasbn",
           include: Sequence[str] = (), exclude: Sequence[str] = (), orthogonalize: bool = False,
           states: bool = False) -> Directions:
    """Seeded Gaussian directions around ``model``'s parameters θ*, normalised (Li et al. 2018).

    ``norm``: filter, layer, weight, model or none; ``ignore="biasbn"`` leaves biases
    and BatchNorm parameters fixed; ``include``/``exclude``: regexes on parameter
    names; ``orthogonalize``: make y orthogonal to x; ``states``: also perturb
    floating buffers. x is drawn before y, so ``dims=1`` gives the x direction of
    ``dims=2``. The same as a job file's ``kind = "random"`` with these keys.
    Raises SettingsError for a bad value, ModelError for a model without parameters.
    """
    spec = _axis_spec("random", seed, norm, ignore, include, exclude, orthogonalize, states)
    return random_directions(_module(model, "random"), spec, _dims(dims))


def from_file(model: nn.Module, *paths: str | os.PathLike[str], dims: int = 2, norm: str = "none",
              ignore: str = "none", include: Sequence[str] = (), exclude: Sequence[str] = (),
              orthogonalize: bool = False, states: bool = False) -> Directions:
    """Directions read from a file: an mpiland surface or directions file, the loss-landscape tool's
    direction file, or one state_dict-shaped ``.pt`` file per axis (``kind = "file"``).

    Raises SettingsError for no path, JobFileError/ModelError for a file that is
    missing or made for another model.
    """
    if not paths:
        raise SettingsError("from_file: give the direction file (or one .pt file per axis)")
    spec = _axis_spec("file", 0, norm, ignore, include, exclude, orthogonalize, states,
                      file=tuple(str(p) for p in paths))
    return file_directions(_module(model, "from_file"), spec, _dims(dims))


def _reference(models: Sequence[Any], model: nn.Module | None, builder: str) -> nn.Module:
    """The module whose architecture the path's models share: ``model``, else the first module among them."""
    if model is not None:
        return _module(model, builder)
    for m in models:
        if isinstance(m, nn.Module):
            return m
    raise ModelError(f"{builder}: every model is a path or a state_dict; pass model= (an nn.Module of their "
                     "architecture) so they can be loaded")


def _vector(obj: Any, scratch: nn.Module, layout: ParamLayout, where: str,
            keep_state: bool = False) -> tuple[torch.Tensor, str, str | None, dict[str, torch.Tensor] | None]:
    """State vector, label and source file of one model of a path; with ``keep_state``, a copy of its state_dict."""
    state: dict[str, torch.Tensor] | None = None
    if isinstance(obj, nn.Module):
        if ParamLayout.from_model(obj, layout.states) != layout:
            raise ModelError(f"{where}: has other parameters (names or shapes) than the path's first model")
        if keep_state:
            state = copy_state(obj)
        return state_vector(obj, layout), f"{type(obj).__name__} in memory", None, state
    if isinstance(obj, Mapping):
        load_state(scratch, obj, where, "give a state_dict of the same architecture")
        state = copy_state(scratch) if keep_state else None
        return state_vector(scratch, layout), "state_dict in memory", None, state
    if isinstance(obj, (str, os.PathLike)):
        vector = checkpoint_vector(scratch, str(obj), layout, where)
        state = copy_state(scratch) if keep_state else None
        return vector, str(obj), str(obj), state
    raise CheckpointError(f"{where}: is a {type(obj).__name__}; give an nn.Module, a state_dict or a checkpoint path")


def _path(kind: str, models: Sequence[Any], model: nn.Module | None, states: bool,
          compare_line: bool = True, align: bool = False) -> Directions:
    ref = _reference(models, model, kind)
    spec = DirectionsSpec(kind=kind, states=bool(states), compare_line=bool(compare_line), align=bool(align))
    layout = ParamLayout.from_model(ref, spec.states)
    scratch = copy.deepcopy(ref)
    found = [_vector(m, scratch, layout, f"{kind} model {i}", spec.align) for i, m in enumerate(models)]
    settings = spec.relevant()
    settings["models"] = [label for _, label, _, _ in found]
    role = roles(kind, len(found))
    names = [Path(label).stem if source else role[i] for i, (_, label, source, _) in enumerate(found)]
    sources = tuple(source for _, _, source, _ in found if source is not None)
    vectors = [v for v, _, _, _ in found]
    aligned = None
    if spec.align:
        aligned = align_models(scratch, [s for _, _, _, s in found if s is not None], vectors, layout)
    return model_path(spec, layout, vectors, names, settings, sources, where=kind, aligned=aligned)


def interpolation(a: ModelLike, b: ModelLike, *, model: nn.Module | None = None, states: bool = False,
                  align: bool = False) -> Directions:
    """The line θ(t) = A + t·(B − A) (Goodfellow et al. 2015): A at t = 0, B at t = 1; a 1D landscape.

    ``states``: interpolate floating buffers (BatchNorm statistics) too. ``align``:
    B permuted to match A first, the unaligned line beside it (``directions.align``).
    Raises ModelError/CheckpointError for models that do not share an architecture.
    """
    return _path("interpolation", [a, b], model, states, align=align)


def plane(a: ModelLike, b: ModelLike, c: ModelLike, *, model: nn.Module | None = None,
          states: bool = False, align: bool = False) -> Directions:
    """The plane through three models (Garipov et al. 2018): orthonormal axes from b − a and c − a, in
    parameter-space distance; a 2D landscape. ``align``: b and c permuted to match a first, the unaligned
    plane evaluated beside it at the same coordinates. Raises JobFileError for three models on one line."""
    return _path("plane", [a, b, c], model, states, align=align)


def bilinear(a: ModelLike, b: ModelLike, c: ModelLike, d: ModelLike, *, model: nn.Module | None = None,
             states: bool = False, align: bool = False) -> Directions:
    """The bilinear patch with corners a (0, 0), b (1, 0), c (0, 1), d (1, 1) (Im et al. 2016); 2D.

    ``align``: b, c and d permuted to match a first, the unaligned patch beside it.
    """
    return _path("bilinear", [a, b, c, d], model, states, align=align)


def _curve(kind: str, models: Sequence[Any], model: nn.Module | None, compare_line: bool, states: bool,
           align: bool) -> Directions:
    if len(models) < 3:
        raise SettingsError(f"{kind}: give the start, at least one bend and the end (3 models or more), "
                            f"got {len(models)}")
    return _path(kind, models, model, states, compare_line, align)


def bezier(*models: ModelLike, model: nn.Module | None = None, compare_line: bool = True,
           states: bool = False, align: bool = False) -> Directions:
    """The Bézier curve from the first model to the last with the others as control points; 1D, t in [0, 1].

    ``compare_line``: also evaluate the straight line between the end models (metrics ``line_*``).
    ``align``: every model after the first permuted to match it (each on its own), the unaligned curve
    and line beside them (``unaligned_*``, ``unaligned_line_*``).
    """
    return _curve("bezier", models, model, compare_line, states, align)


def polychain(*models: ModelLike, model: nn.Module | None = None, compare_line: bool = True,
              states: bool = False, align: bool = False) -> Directions:
    """The polygonal chain through the models, model i at t = i/m; 1D, t in [0, 1].

    ``compare_line`` and ``align`` as for :func:`bezier`.
    """
    return _curve("polychain", models, model, compare_line, states, align)


def pca(checkpoints: Sequence[ModelLike] | str, *, model: nn.Module | None = None, dims: int = 2,
        ignore: str = "none", include: Sequence[str] = (), exclude: Sequence[str] = (),
        states: bool = False, labels: Sequence[str] | None = None) -> Directions:
    """The top principal directions of a training trajectory around θ* (Li et al. 2018, section 7).

    ``checkpoints``: the trajectory's models in order, or a glob such as
    ``"runs/epoch_*.pt"`` (natural order). θ* is ``model``'s state when given, else the
    last checkpoint. The checkpoints' projections are the trajectory of the plots,
    labelled by ``labels`` (e.g. ``[f"epoch {i}" for i in ...]``), else by file stems
    or ``checkpoint i``. Raises SettingsError for fewer than 2 checkpoints or a
    ``labels`` list of another length.
    """
    items: list[Any] = expand_checkpoints([checkpoints]) if isinstance(checkpoints, str) else list(checkpoints)
    if len(items) < 2:
        raise SettingsError(f"pca: a trajectory needs at least 2 checkpoints, got {len(items)}")
    ref = _reference(items + ([model] if model is not None else []), model, "pca")
    spec = DirectionsSpec(kind="pca", ignore=_choice("ignore", ignore, IGNORES), include=tuple(include),
                          exclude=tuple(exclude), states=bool(states))
    layout = ParamLayout.from_model(ref, spec.states)
    scratch = copy.deepcopy(ref)
    found = [_vector(m, scratch, layout, f"pca checkpoint {i}") for i, m in enumerate(items)]
    final = state_vector(model, layout) if model is not None else found[-1][0]
    settings = spec.relevant()
    settings["models"] = [label for _, label, _, _ in found]
    stems = [Path(label).stem if source else f"checkpoint {i}" for i, (_, label, source, _) in enumerate(found)]
    names = stems if len(set(stems)) == len(stems) else [f"checkpoint {i}" for i in range(len(found))]
    if labels is not None:
        names = [str(x) for x in labels]
        if len(names) != len(found):
            raise SettingsError(f"pca: {len(names)} labels for {len(found)} checkpoints; give one label each")
    d = pca_directions(final, layout, spec, [v for v, _, _, _ in found], names, _dims(dims), settings,
                       tuple(s for _, _, s, _ in found if s is not None))
    # Without model=, θ* is the last checkpoint: say so in the directions, whatever model they are used with.
    return d if model is not None else replace(d, origin=final)


def hessian(model: nn.Module, data: Any, *, dims: int = 2, loss: str | Any = "cross_entropy", batch_size: int = 512,
            subset: int = 0, tol: float = 1e-3, max_iter: int = 100, seed: int = 0, dtype: str = "float32",
            device: str = "auto", ignore: str = "none", include: Sequence[str] = (), exclude: Sequence[str] = (),
            comm: Comm | None = None) -> Directions:
    """The top-``dims`` eigenvectors of the loss Hessian at θ* (unit vectors; PyHessian's axes).

    ``data``: (inputs, targets) tensors, a Dataset or a DataLoader (its batches are
    concatenated); ``loss``: a built-in name or a callable (outputs, targets) ->
    per-sample losses; Lanczos on Hessian-vector products stops at relative Ritz
    residual ``tol`` or ``max_iter`` products. ``include``/``exclude``/``ignore``
    restrict the Hessian to some parameters. With ``comm``, rank 0 computes and every
    rank gets the same vectors. The model is not changed (a copy is used).
    """
    ranks = world(comm)

    def compute() -> Directions | None:
        if ranks.Get_rank() != 0:
            return None
        module = _module(model, "hessian")
        _, loss_fn = loss_function(loss)
        spec = DirectionsSpec(kind="hessian", ignore=_choice("ignore", ignore, IGNORES), include=tuple(include),
                              exclude=tuple(exclude))
        hspec = HessianSpec(splits=("data",), subset=int(subset), tol=float(tol), max_iter=int(max_iter),
                            dtype=_choice("dtype", dtype, ("float32", "float64")), seed=int(seed))
        dev = resolve_device(device, 0)
        inputs = CurvatureInputs(hspec, as_tensors(data, "data", batch_size), loss_fn, batch_size, dev,
                                 next(module.parameters()).dtype)
        return hessian_directions(copy.deepcopy(module), spec, _dims(dims), inputs)

    found = agree(ranks, compute)
    result: Directions = ranks.bcast(found, root=0)
    return result
