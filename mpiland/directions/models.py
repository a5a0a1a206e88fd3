"""Landscapes defined by models: interpolation, planes, bilinear patches, curves between modes, PCA.

Each kind turns its checkpoints into an origin, a basis and a coefficient map
(see :mod:`mpiland.directions.base`), plus the models' positions in grid coordinates:

- ``interpolation`` [A, B] (Goodfellow et al. 2015): θ(t) = A + t·(B − A); A at 0, B at 1.
- ``plane`` [θ0, θ1, θ2] (Garipov et al. 2018): orthonormal basis u, v from θ1 − θ0 and
  θ2 − θ0 by Gram–Schmidt; coordinates are distances in parameter space.
- ``bilinear`` [θ00, θ10, θ01, θ11] (Im et al. 2016): θ(a, b) = θ00 + a·(θ10 − θ00)
  + b·(θ01 − θ00) + ab·(θ11 − θ10 − θ01 + θ00); corners at (0|1, 0|1).
- ``bezier`` [start, bends…, end]: the Bézier curve with the bends as control points.
- ``polychain`` [start, bends…, end]: the polygonal chain through them, anchors at t = i/m.
- ``pca`` [checkpoints…]: the top principal directions of the trajectory around θ_final.

The straight line between the end models of a Bézier curve or chain is evaluated
alongside (metrics prefixed ``line_``) unless ``compare_line = false``.

With ``align = true`` (every kind but ``pca``), every model after the first is
permuted to match the first by weight matching (:mod:`mpiland.rebasin`; Ainsworth
et al. 2023) before the path is built: the path (its metrics, its models'
positions and labels) is the aligned one, and the path through the models as
given is evaluated beside it with the same coefficient map (metrics prefixed
``unaligned_``; with the comparison line also ``unaligned_line_``), so one file
holds every metric of the unaligned run too. For a plane the unaligned plane is
evaluated at the same coordinates (distances in parameter space), so its models
lie elsewhere in the grid: their positions are recorded with the alignment. The
settings record, per aligned model, the units the permutation moved, the
sweeps it took and its L2 distance to the first model (over the path's vector:
parameters, and floating buffers with ``states``) before and after.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import torch

from ..rebasin import match_states, permutation_spec
from ..errors import JobFileError
from ..layout import ParamLayout, checkpoint_vector, state_vector
from ..models import expand_checkpoints, load_state
from ..spec import ALIGN_KINDS, DirectionsSpec
from ..trajectory import pca
from .axes import normalize, parameter_mask
from .base import LINE, UNALIGNED, Directions, Trajectory

EPS = 1e-12


class _Common(TypedDict):
    """The :class:`Directions` fields that every path kind fills the same way."""

    layout: ParamLayout
    settings: dict[str, Any]
    origin: torch.Tensor
    sources: tuple[str, ...]


def _labels(paths: list[str], roles: list[str]) -> list[str]:
    """Checkpoint file stems as labels, or the roles when stems repeat."""
    stems = [Path(p).stem for p in paths]
    return stems if len(set(stems)) == len(stems) else roles


def path_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int) -> Directions:
    """Directions of a path kind from checkpoint files; they are loaded into a scratch copy of ``model``.

    With ``spec.align`` the models after the first are aligned to it (:func:`align_models`).
    """
    layout = ParamLayout.from_model(model, spec.states)
    paths = expand_checkpoints(spec.models)
    scratch = copy.deepcopy(model)
    settings = spec.relevant()
    settings["models"] = list(paths)
    if spec.kind != "pca" and len(paths) != len(spec.models):
        raise JobFileError(f"directions.models: a {spec.kind} path lists a checkpoint twice; give distinct files")
    if spec.align and spec.kind not in ALIGN_KINDS:
        raise JobFileError(f"directions.align: aligns the models of a path ({', '.join(ALIGN_KINDS)}); "
                           f"{spec.kind} directions have no path to align: remove it")
    vectors, states = [], []
    for p in paths:
        vectors.append(checkpoint_vector(scratch, p, layout, "directions.models"))
        if spec.align:
            states.append(copy_state(scratch))
    if spec.kind == "pca":
        labels = _labels(paths, [f"checkpoint {i}" for i in range(len(paths))])
        return pca_directions(state_vector(model, layout), layout, spec, vectors, labels, dims, settings,
                              tuple(paths))
    aligned = align_models(scratch, states, vectors, layout) if spec.align else None
    return model_path(spec, layout, vectors, paths, settings, tuple(paths), aligned=aligned)


def copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s ``state_dict`` (the module's own tensors stay untouched)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class AlignedModels(NamedTuple):
    """A path's models after weight matching: state vectors (the first model's as given) and what was done."""

    vectors: list[torch.Tensor]
    records: list[dict[str, Any]]


def align_models(scratch: torch.nn.Module, states: list[dict[str, torch.Tensor]], vectors: list[torch.Tensor],
                 layout: ParamLayout) -> AlignedModels:
    """Permute every model after the first to match the first (weight matching, :mod:`mpiland.rebasin`).

    ``scratch``: a module of the models' architecture, whose graph gives the
    permutation groups (the aligned states are loaded into it, one after the other);
    ``states``: the models' ``state_dict`` copies; ``vectors``: their state vectors
    in ``layout``. Returns the aligned vectors and, per model after the first, a
    record: permuted units, permutable units, sweeps, and the L2 distance to the
    first model before and after. Raises ModelError for an architecture weight
    matching cannot follow.
    """
    spec = permutation_spec(scratch)
    out, records = [vectors[0]], []
    for state, vector in zip(states[1:], vectors[1:]):
        alignment = match_states(spec, states[0], state)
        load_state(scratch, alignment.apply(state), "directions.align", "align models of one architecture")
        moved = state_vector(scratch, layout)
        out.append(moved)
        records.append({"permuted_units": alignment.permuted_units, "units": spec.units,
                        "iterations": alignment.iterations,
                        "distance_before": float((vector - vectors[0]).norm()),
                        "distance_after": float((moved - vectors[0]).norm())})
    return AlignedModels(out, records)


def roles(kind: str, n: int) -> list[str]:
    """The names of a path's models by their role, e.g. A and B of an interpolation."""
    if kind == "interpolation":
        return ["A", "B"]
    if kind == "plane":
        return ["θ0", "θ1", "θ2"]
    if kind == "bilinear":
        return ["θ00", "θ10", "θ01", "θ11"]
    return ["start"] + [f"bend {i}" for i in range(1, n - 1)] + ["end"]


class _Path(NamedTuple):
    """One path's basis (float64), coefficient map, axis labels, models' positions and end points."""

    vectors: torch.Tensor
    coefficient_map: str
    labels: tuple[str, ...]
    positions: list[tuple[float, ...]]
    endpoints: tuple[float, float] | None


def _basis(kind: str, anchors: list[torch.Tensor], names: list[str], labels: list[str], where: str,
           aligned: bool = False) -> _Path:
    """The basis of the path of ``kind`` through ``anchors`` (state vectors), with its positions and labels."""
    theta0 = anchors[0]
    diffs = [a - theta0 for a in anchors[1:]]
    for n, d in zip(names[1:], diffs):
        if float(d.norm()) > EPS:
            continue
        if aligned:
            raise JobFileError(f"{where}: {n!r} is a permutation of {names[0]!r} (the same function), so the "
                               "aligned path has no length there; give distinct models or set "
                               "directions.align = false")
        raise JobFileError(f"{where}: {n!r} is the same model as {names[0]!r}; give distinct models")
    if kind == "interpolation":
        a, b = labels
        return _Path(torch.stack(diffs), "axes", (f"t ({a} → {b})",), [(0.0,), (1.0,)], (0.0, 1.0))
    if kind == "plane":
        d1, d2 = diffs
        u = d1 / d1.norm()
        w = d2 - (d2 @ u) * u
        if float(w.norm()) <= 1e-5 * float(d2.norm()):
            after = " after alignment" if aligned else ""
            raise JobFileError(f"{where}: the three models lie on one line{after}, so they span no plane; "
                               "choose another third model")
        v = w / w.norm()
        pos: list[tuple[float, ...]] = [(0.0, 0.0), (float(d1.norm()), 0.0), (float(d2 @ u), float(d2 @ v))]
        return _Path(torch.stack([u, v]), "axes", (f"distance along {labels[1]} − {labels[0]}",
                                                   f"distance orthogonal to it, towards {labels[2]}"), pos, None)
    if kind == "bilinear":
        d10, d01, d11 = diffs
        corners: list[tuple[float, ...]] = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
        return _Path(torch.stack([d10, d01, d11 - d10 - d01]), "bilinear",
                     (f"a ({labels[0]} → {labels[1]})", f"b ({labels[0]} → {labels[2]})"), corners, None)
    m = len(diffs)
    if kind == "bezier":
        label = f"t along the Bézier curve {labels[0]} → {labels[-1]}"
    else:
        label = f"t along the polygonal chain {labels[0]} → {labels[-1]}"
    return _Path(torch.stack(diffs), kind, (label,), [(i / m,) for i in range(m + 1)], (0.0, 1.0))


def model_path(spec: DirectionsSpec, layout: ParamLayout, anchors: list[torch.Tensor], names: list[str],
               settings: dict[str, Any], sources: tuple[str, ...] = (), where: str = "directions.models",
               aligned: AlignedModels | None = None) -> Directions:
    """The directions of a path through the models ``anchors`` (state vectors) of kind ``spec.kind``.

    ``names`` name the models in errors and labels (file paths give their stems);
    ``sources`` are files whose digests join the fingerprint. ``aligned``: the
    models after alignment (:func:`align_models`); then the path runs through
    them and the path through ``anchors`` is the "unaligned_" block beside it, and
    ``settings["alignment"]`` records, per aligned model, what alignment did.
    """
    kind = spec.kind
    common = _Common(layout=layout, settings=settings, origin=anchors[0], sources=sources)
    labels = _labels(list(names), roles(kind, len(anchors)))
    plain = _basis(kind, anchors, list(names), labels, where)
    path = plain if aligned is None else _basis(kind, aligned.vectors, list(names), labels, where, aligned=True)
    shapes = ("", LINE) if kind in ("bezier", "polychain") and spec.compare_line else ("",)
    blocks: tuple[str, ...] = ("",)
    vectors = path.vectors
    if aligned is not None:
        blocks = ("", UNALIGNED)
        vectors = torch.cat([path.vectors, plain.vectors])
        records = []
        for i, (label, record) in enumerate(zip(labels[1:], aligned.records), start=1):
            entry = {"model": label, **record}
            if kind == "plane":
                entry["unaligned_position"] = list(plain.positions[i])
            records.append(entry)
        settings["alignment"] = records
    models: tuple[tuple[str, tuple[float, ...]], ...]
    if kind == "bezier":
        models = ((labels[0], path.positions[0]), (labels[-1], path.positions[-1]))
    else:
        models = tuple(zip(labels, path.positions))
    return Directions(vectors.float(), coefficient_map=path.coefficient_map, labels=path.labels, models=models,
                      endpoints=path.endpoints, variants=tuple(b + v for b in blocks for v in shapes), blocks=blocks,
                      **common)


def pca_directions(final: torch.Tensor, layout: ParamLayout, spec: DirectionsSpec, checkpoints: list[torch.Tensor],
                   labels: list[str], dims: int, settings: dict[str, Any], sources: tuple[str, ...] = ()) -> Directions:
    """PCA directions of the trajectory ``checkpoints`` (state vectors) around ``final`` (θ*), projected onto them."""
    mask = parameter_mask(layout, spec)
    rows = [normalize(c - final, final, layout, mask, "none").to(torch.float32) for c in checkpoints]
    result = pca(torch.stack(rows), dims)
    ratio = result.explained_variance_ratio
    axes = tuple(f"principal direction {i + 1} of the trajectory" for i in range(dims))
    trajectory = Trajectory(result.coordinates, tuple(labels), ratio)
    settings["explained_variance_ratio"] = [float(r) for r in ratio]
    return Directions(result.components.float(), layout, settings, labels=axes,
                      models=(("θ*", (0.0,) * dims),), trajectory=trajectory, sources=sources)
