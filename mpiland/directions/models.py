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
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from ..errors import JobFileError
from ..layout import ParamLayout, checkpoint_vector, state_vector
from ..models import expand_checkpoints
from ..spec import DirectionsSpec
from ..trajectory import pca
from .axes import normalize, parameter_mask
from .base import Directions, Trajectory

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
    """Directions of a path kind from checkpoint files; they are loaded into a scratch copy of ``model``."""
    layout = ParamLayout.from_model(model, spec.states)
    paths = expand_checkpoints(spec.models)
    scratch = copy.deepcopy(model)
    settings = spec.relevant()
    settings["models"] = list(paths)
    if spec.kind != "pca" and len(paths) != len(spec.models):
        raise JobFileError(f"directions.models: a {spec.kind} path lists a checkpoint twice; give distinct files")
    vectors = [checkpoint_vector(scratch, p, layout, "directions.models") for p in paths]
    if spec.kind == "pca":
        labels = _labels(paths, [f"checkpoint {i}" for i in range(len(paths))])
        return pca_directions(state_vector(model, layout), layout, spec, vectors, labels, dims, settings,
                              tuple(paths))
    return model_path(spec, layout, vectors, paths, settings, tuple(paths))


def roles(kind: str, n: int) -> list[str]:
    """The names of a path's models by their role, e.g. A and B of an interpolation."""
    if kind == "interpolation":
        return ["A", "B"]
    if kind == "plane":
        return ["θ0", "θ1", "θ2"]
    if kind == "bilinear":
        return ["θ00", "θ10", "θ01", "θ11"]
    return ["start"] + [f"bend {i}" for i in range(1, n - 1)] + ["end"]


def model_path(spec: DirectionsSpec, layout: ParamLayout, anchors: list[torch.Tensor], names: list[str],
               settings: dict[str, Any], sources: tuple[str, ...] = (), where: str = "directions.models") -> Directions:
    """The directions of a path through the models ``anchors`` (state vectors) of kind ``spec.kind``.

    ``names`` name the models in errors and labels (file paths give their stems);
    ``sources`` are files whose digests join the fingerprint.
    """
    theta0 = anchors[0]
    diffs = [a - theta0 for a in anchors[1:]]
    for n, d in zip(names[1:], diffs):
        if float(d.norm()) <= EPS:
            raise JobFileError(f"{where}: {n!r} is the same model as {names[0]!r}; give distinct models")
    kind = spec.kind
    common = _Common(layout=layout, settings=settings, origin=theta0, sources=sources)
    labels = _labels(list(names), roles(kind, len(anchors)))
    if kind == "interpolation":
        a, b = labels
        return Directions(torch.stack(diffs).float(), coefficient_map="axes", labels=(f"t ({a} → {b})",),
                          models=((a, (0.0,)), (b, (1.0,))), endpoints=(0.0, 1.0), **common)
    if kind == "plane":
        d1, d2 = diffs
        u = d1 / d1.norm()
        w = d2 - (d2 @ u) * u
        if float(w.norm()) <= 1e-5 * float(d2.norm()):
            raise JobFileError(f"{where}: the three models lie on one line, so they span no plane; "
                               "choose another third model")
        v = w / w.norm()
        pos = [(0.0, 0.0), (float(d1.norm()), 0.0), (float(d2 @ u), float(d2 @ v))]
        return Directions(torch.stack([u, v]).float(), coefficient_map="axes",
                          labels=(f"distance along {labels[1]} − {labels[0]}",
                                  f"distance orthogonal to it, towards {labels[2]}"),
                          models=tuple(zip(labels, pos)), **common)
    if kind == "bilinear":
        d10, d01, d11 = diffs
        corners = [(0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
        return Directions(torch.stack([d10, d01, d11 - d10 - d01]).float(), coefficient_map="bilinear",
                          labels=(f"a ({labels[0]} → {labels[1]})", f"b ({labels[0]} → {labels[2]})"),
                          models=tuple(zip(labels, corners)), **common)
    m = len(diffs)
    models: tuple[tuple[str, tuple[float, ...]], ...]
    if kind == "bezier":
        models = ((labels[0], (0.0,)), (labels[-1], (1.0,)))
        label = f"t along the Bézier curve {labels[0]} → {labels[-1]}"
    else:
        models = tuple((labels[i], (i / m,)) for i in range(m + 1))
        label = f"t along the polygonal chain {labels[0]} → {labels[-1]}"
    variants = ("", "line_") if spec.compare_line else ("",)
    return Directions(torch.stack(diffs).float(), coefficient_map=kind, labels=(label,), models=models,
                      endpoints=(0.0, 1.0), variants=variants, **common)


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
