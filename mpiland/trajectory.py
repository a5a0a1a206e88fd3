"""Principal directions of a training trajectory (Li et al. 2018, §7) and the projected path.

The checkpoints θ_1…θ_T are turned into differences d_i = θ_i − θ_final; their
principal directions come from the T × T Gram matrix of the centred differences
(as scikit-learn's PCA centres them), so only the T difference vectors are ever
held, never an n × n matrix or a full SVD of the T × n one. The projections of
the uncentred differences on the unit directions are the trajectory drawn over
the surface (θ_final at the origin).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import torch

from .errors import CheckpointError
from .models import read_state_dict

EPS = 1e-12


@dataclass(frozen=True)
class PCAResult:
    """Unit principal directions (k × n), their explained-variance ratios, and the projected checkpoints (T × k)."""

    components: torch.Tensor
    explained_variance_ratio: np.ndarray
    coordinates: np.ndarray


def pca(differences: torch.Tensor, k: int = 2) -> PCAResult:
    """Top-``k`` principal directions of the rows of ``differences`` (T × n, θ_i − θ_final).

    Signs are fixed so that the first checkpoint projects to a coordinate ≤ 0 on
    every direction: training moves towards positive coordinates.
    """
    t = differences.shape[0]
    if t < 2:
        raise CheckpointError("a trajectory needs at least 2 checkpoints; give more directions.models")
    d = differences.to(torch.float64)
    centred = d - d.mean(dim=0, keepdim=True)
    gram = centred @ centred.t()
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)
    evals, evecs = evals[order].clamp_min(0.0), evecs[:, order]
    total = float(evals.sum())
    if total <= EPS:
        raise CheckpointError("the trajectory's checkpoints are all identical; give checkpoints from different "
                              "training steps")
    usable = int((evals > EPS * total).sum())
    if usable < k:
        raise CheckpointError(f"the trajectory spans {usable} direction(s), {k} are needed; give more distinct "
                              "checkpoints or use a 1D grid")
    comps = (centred.t() @ evecs[:, :k]) / evals[:k].sqrt()
    comps = comps.t().contiguous()
    comps = comps / comps.norm(dim=1, keepdim=True)
    coords = d @ comps.t()
    signs = torch.where(coords[0] > 0, -1.0, 1.0).to(torch.float64)
    comps = comps * signs[:, None]
    coords = coords * signs[None, :]
    ratio = (evals[:k] / total).numpy()
    return PCAResult(comps, ratio, coords.numpy())


def state_dict_vector(path: str, skip_statistics: bool = True) -> tuple[list[str], torch.Tensor]:
    """A checkpoint's floating tensors as one flat float64 vector, with their names (no model needed).

    ``skip_statistics`` leaves out BatchNorm running statistics, which are not parameters.
    """
    state = read_state_dict(path, f"checkpoint {path!r}", fix="give state_dict files")
    names = [n for n, v in state.items() if v.is_floating_point()
             and not (skip_statistics and fnmatch.fnmatch(n, "*running_[mv][ea][ar]*"))]
    return names, torch.cat([state[n].reshape(-1).to(torch.float64) for n in names])


def checkpoint_pca(paths: list[str], final: str | None = None, k: int = 2,
                   skip_statistics: bool = True) -> PCAResult:
    """PCA of a list of state_dict checkpoints read without a model (``mpiland trajectory``)."""
    if len(paths) < 2:
        raise CheckpointError("a trajectory needs at least 2 checkpoints; give more files")
    names0, vec0 = state_dict_vector(final or paths[-1], skip_statistics)
    rows = []
    for p in paths:
        names, vec = state_dict_vector(p, skip_statistics)
        if names != names0 or vec.numel() != vec0.numel():
            raise CheckpointError(f"checkpoint {p!r} has other tensors than {final or paths[-1]!r}; give checkpoints "
                                  "of one model")
        rows.append((vec - vec0).to(torch.float32))
    return pca(torch.stack(rows), k)
