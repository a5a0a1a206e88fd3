"""Directions in parameter space: what a grid coordinate means as a parameter vector.

Every kind of landscape is an origin θ₀ plus a basis with a coefficient map
(:class:`Directions`). :func:`make_directions` is the one dispatcher over every
``directions.kind``:

- ``random`` and ``file`` (:mod:`.axes`): axis directions around θ*, normalised;
- ``interpolation``, ``plane``, ``bilinear``, ``bezier``, ``polychain`` and ``pca``
  (:mod:`.models`): directions defined by models and trajectories;
- ``hessian`` (:mod:`.eigen`): the top Hessian eigenvectors at θ*.

The same kinds from Python objects (modules, state dicts, checkpoint paths) are
the builders of :mod:`.build`, re-exported here: ``ml.directions.random(model)``,
``interpolation(a, b)``, ``plane``, ``bilinear``, ``bezier``, ``polychain``, ``pca``,
``hessian(model, data)`` and ``from_file(model, path)``.
"""

from __future__ import annotations

import torch

from ..spec import DirectionsSpec, resolve_directions
from .axes import file_directions, normalize, parameter_mask, random_directions
from .base import COEFFICIENT_MAPS, Directions, Trajectory, axis_label
from .build import (ModelLike, bezier, bilinear, from_file, hessian, interpolation, pca, plane, polychain,
                    random)
from .eigen import CurvatureInputs, hessian_directions
from .models import path_directions

__all__ = ["COEFFICIENT_MAPS", "CurvatureInputs", "Directions", "ModelLike", "Trajectory", "axis_label", "bezier",
           "bilinear", "file_directions", "from_file", "hessian", "hessian_directions", "interpolation",
           "make_directions", "normalize", "parameter_mask", "path_directions", "pca", "plane", "polychain",
           "random", "random_directions"]


def make_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int,
                    curvature: CurvatureInputs | None = None) -> Directions:
    """The directions of any kind for ``model`` (whose state is θ* for random, file and Hessian kinds).

    ``curvature``: data, loss and placement for ``kind = "hessian"`` (required there).
    ``auto`` settings of ``spec`` are resolved first, so Python and job files agree.
    """
    spec = resolve_directions(spec)
    if spec.kind == "random":
        return random_directions(model, spec, dims)
    if spec.kind == "file":
        return file_directions(model, spec, dims)
    if spec.kind == "hessian":
        if curvature is None:
            raise ValueError("Hessian directions need data and a loss: pass curvature=CurvatureInputs(...)")
        return hessian_directions(model, spec, dims, curvature)
    return path_directions(model, spec, dims)
