"""Axis directions around θ*: seeded random ones and ones read from files, normalised (Li et al. 2018).

Vectors follow :class:`~mpiland.layout.ParamLayout`: the model's parameters,
then, with ``states = true``, its floating buffers (BatchNorm running statistics).

Normalisations of random and file directions (Li et al. 2018):

- ``filter``: each filter (slice along dim 0; a row of a fully-connected weight)
  is rescaled to the norm of the same filter of θ. A 1-D tensor counts as one filter.
- ``layer``: each parameter tensor is rescaled to the norm of θ's tensor.
- ``weight``: element-wise, d ← d·|θ|.
- ``model``: the whole vector is rescaled to ‖θ‖ (over the parameters the direction covers).
- ``none``: as drawn or as read.

``ignore = "biasbn"`` zeroes the direction on 1-D tensors (biases and BatchNorm
weights); ``include``/``exclude`` regexes (``re.search`` on parameter names) zero
it elsewhere. Random numbers come from a CPU generator seeded with
``directions.seed``, so every rank and every device gets the same directions; x is
drawn before y, so a 1D job's direction is the 2D job's x direction.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..errors import JobFileError, ModelError
from ..layout import ParamLayout, state_vector
from ..models import read_state_dict
from ..spec import DirectionsSpec
from .base import Directions, axis_label

EPS = 1e-10


def parameter_mask(layout: ParamLayout, spec: DirectionsSpec) -> list[bool]:
    """Which parameter tensors the direction covers (after ignore/include/exclude)."""
    inc = [re.compile(p) for p in spec.include]
    exc = [re.compile(p) for p in spec.exclude]
    mask = []
    for name, shape in zip(layout.names, layout.shapes):
        keep = True
        if spec.ignore == "biasbn" and len(shape) <= 1:
            keep = False
        if inc and not any(r.search(name) for r in inc):
            keep = False
        if any(r.search(name) for r in exc):
            keep = False
        mask.append(keep)
    if not any(mask):
        raise JobFileError("directions: ignore/include/exclude leave no parameter to perturb; relax the patterns")
    return mask


def normalize(direction: torch.Tensor, theta: torch.Tensor, layout: ParamLayout, mask: list[bool], norm: str) -> torch.Tensor:
    """Return ``direction`` normalised against ``theta`` (both flat) and zeroed outside ``mask``."""
    d = direction.clone()
    dv, tv = layout.views(d), layout.views(theta)
    for keep, dp, tp in zip(mask, dv, tv):
        if not keep:
            dp.zero_()
        elif norm == "filter":
            rows_d = dp.reshape(dp.shape[0], -1) if dp.dim() >= 2 else dp.reshape(1, -1)
            rows_t = tp.reshape(tp.shape[0], -1) if tp.dim() >= 2 else tp.reshape(1, -1)
            scale = rows_t.norm(dim=1, keepdim=True) / (rows_d.norm(dim=1, keepdim=True) + EPS)
            rows_d.mul_(scale)
        elif norm == "layer":
            dp.mul_(tp.norm() / (dp.norm() + EPS))
        elif norm == "weight":
            dp.mul_(tp.abs())
    if norm == "model":
        covered = torch.cat([tp.reshape(-1) for keep, tp in zip(mask, tv) if keep])
        d.mul_(covered.norm() / (d.norm() + EPS))
    return d


def _finish_axes(raw: list[torch.Tensor], model: torch.nn.Module, layout: ParamLayout, spec: DirectionsSpec,
                 sources: tuple[str, ...] = ()) -> Directions:
    """Normalise and (optionally) orthogonalise axis directions; the shared tail of random and file kinds."""
    theta = state_vector(model, layout)
    mask = parameter_mask(layout, spec)
    vectors = [normalize(v, theta, layout, mask, spec.norm) for v in raw]
    if len(vectors) == 2 and spec.orthogonalize:
        x, y = vectors
        length = y.norm()
        y = y - (y @ x) / (x @ x) * x
        vectors[1] = y * (length / (y.norm() + EPS))
    settings = spec.relevant()
    labels = tuple(axis_label(a, settings) for a in "xy"[: len(vectors)])
    return Directions(torch.stack(vectors).to(torch.float32), layout, settings, labels=labels,
                      models=(("θ*", (0.0,) * len(vectors)),), sources=sources)


def random_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int) -> Directions:
    """Seeded Gaussian directions, normalised as ``spec`` says; y optionally orthogonal to x."""
    layout = ParamLayout.from_model(model, spec.states)
    gen = torch.Generator().manual_seed(spec.seed)
    raw = [torch.randn(layout.numel, generator=gen, dtype=torch.float32).to(torch.float64) for _ in range(dims)]
    return _finish_axes(raw, model, layout, spec)


def _place(layout: ParamLayout, arrays: dict[str, Any], where: str, required: set[str]) -> torch.Tensor:
    """A flat vector from per-name arrays; names outside the layout are ignored, shapes are checked."""
    index = {n: i for i, n in enumerate(layout.names)}
    missing = sorted(required - set(arrays))
    if missing:
        shown = ", ".join(missing[:6]) + (f", … ({len(missing)} in all)" if len(missing) > 6 else "")
        raise ModelError(f"{where}: has no direction for {shown}; it was made for another model "
                         "(check model.factory and model.kwargs)")
    vec = torch.zeros(layout.numel, dtype=torch.float64)
    views = layout.views(vec)
    for name, arr in arrays.items():
        if name not in index:
            continue
        t = torch.as_tensor(np.asarray(arr)).to(torch.float64)
        i = index[name]
        if tuple(t.shape) != layout.shapes[i] and t.numel() != layout.numel_of(i):
            raise ModelError(f"{where}: direction for {name} has shape {tuple(t.shape)}, the model's is "
                             f"{layout.shapes[i]}; it was made for another model")
        views[i].copy_(t.reshape(layout.shapes[i]))
    return vec


def _read_h5_directions(path: Path, model: torch.nn.Module, layout: ParamLayout, dims: int) -> list[torch.Tensor]:
    where = f"directions.file {str(path)!r}"
    params = set(layout.names[: layout.n_params])
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise JobFileError(f"{where}: cannot be opened as HDF5 ({exc}); give a surface file, a directions file "
                           "or the loss-landscape tool's direction file") from None
    with f:
        if isinstance(f.get("directions"), h5py.Group) and "x" in f["directions"]:
            g = f["directions"]
            names = [str(n.decode() if isinstance(n, bytes) else n) for n in g.attrs["names"]]
            axes = [a for a in "xy"[:dims] if a in g]
            if len(axes) < dims:
                raise JobFileError(f"{where}: holds {len(axes)} direction(s), the grid needs {dims}; "
                                   "use a 2D file or a 1D grid")
            stored = ParamLayout.from_shapes(names, [tuple(s) for s in json.loads(g.attrs["shapes"])])
            return [_place(layout, dict(zip(names, stored.views(torch.from_numpy(g[a][()])))), where, params)
                    for a in axes]
        if "xdirection" not in f:
            raise JobFileError(f"{where}: has neither a directions group (mpiland) nor an xdirection group "
                               "(loss-landscape tool); give a direction file")
        if dims == 2 and "ydirection" not in f:
            raise JobFileError(f"{where}: has no ydirection, the grid is 2D; use a 1D grid or a 2D direction file")
        weights = [n for n, _ in model.named_parameters()]
        state_keys = list(model.state_dict().keys())
        out = []
        for g in ("xdirection", "ydirection")[:dims]:
            grp = f[g]
            arrays = [grp[str(i)][()] for i in range(len(grp))]
            if len(arrays) == len(weights):
                names = weights
            elif len(arrays) == len(state_keys):
                names = state_keys
            else:
                raise ModelError(f"{where}: {g} has {len(arrays)} tensors, the model has {len(weights)} parameters "
                                 f"and {len(state_keys)} state entries; it was made for another model")
            out.append(_place(layout, dict(zip(names, arrays)), where, params))
        return out


def _read_pt_direction(path: Path, layout: ParamLayout) -> torch.Tensor:
    where = f"directions.file {str(path)!r}"
    state = read_state_dict(path, where, JobFileError, "give a state_dict-shaped .pt file per axis")
    return _place(layout, state, where, set(layout.names[: layout.n_params]))


def file_directions(model: torch.nn.Module, spec: DirectionsSpec, dims: int) -> Directions:
    """Directions read from a file: ours, the loss-landscape tool's, or one state_dict per axis."""
    layout = ParamLayout.from_model(model, spec.states)
    paths = [Path(p) for p in spec.file]
    for p in paths:
        if not p.is_file():
            raise JobFileError(f"directions.file {str(p)!r}: file not found; check the path")
    if len(paths) == 1 and paths[0].suffix.lower() not in (".pt", ".pth"):
        raw = _read_h5_directions(paths[0], model, layout, dims)
    else:
        if len(paths) != dims:
            raise JobFileError(f"directions.file: give one .pt file per axis ({dims}), got {len(paths)}")
        raw = [_read_pt_direction(p, layout) for p in paths]
    for axis, v in zip("xy", raw):
        if not torch.isfinite(v).all() or v.abs().max() == 0:
            raise JobFileError(f"directions.file: the {axis} direction is zero or not finite; check the file")
    return _finish_axes(raw, model, layout, spec, sources=tuple(str(p) for p in paths))


