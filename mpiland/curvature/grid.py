"""Curvature on the grid: the glue between a job's [hessian] settings and the operator and Lanczos routines.

Per grid point (``hessian.enabled``): λmax and λmin of the loss Hessian by Lanczos,
and |λmin/λmax| (Li et al. 2018, Fig. 7: large where the surface only looks convex),
for each split in ``hessian.splits``. At the origin, once per file: the trace by
Hutchinson's estimator with its standard error, and the curvature dᵀHd/‖d‖² along
each plotted direction. ``directions.kind = "hessian"``: the top-2 eigenvectors at θ*
as the axes (PyHessian's view). ``hessian.spectrum``: the eigenvalue density, top
eigenvalues and λmax per parameter group at a point (:meth:`Curvature.spectrum`,
:mod:`.spectrum`), on the first of ``hessian.splits``.

The Hessian is that of the mean loss over the split's samples (or a seeded subset
of ``hessian.subset`` of them), in eval mode, over the parameters only.

Warm start (``hessian.warm_start``, ``Curvature(warm_start=True)``): a point's Lanczos run
starts from the previous point of its chain (:func:`~.linalg.start_from`: the unit sum of that
point's λmax and λmin Ritz vectors plus, with the same weight, the seeded random start of a cold
run) instead of the random vector alone. A point's value must depend only on the grid and the job,
never on which rank evaluated it, in what order, or whether the run was resumed, so the chains are
fixed by the grid: runs of consecutive points of one grid row, at most ``hessian.chain`` long,
which the chunks keep whole (:func:`mpiland.grid.chain_block`, :func:`mpiland.grid.chain_links`)
and one rank evaluates in order; the first point of a chain starts cold. The random half keeps
every eigenvector in the start, so a λmin whose eigenvector is new at this point is still found.
The stop rule is unchanged (each value within tol of an eigenvalue); only how soon it is met
changes.

Measured on ``jobs/curvature.toml`` (121 points of ±0.5 along θ*'s top two eigenvectors, rows of
11, tol 1e-3), HVPs per point: 21.8 cold, 16.2 along the rows (1.35×; 15.8 at a chained point).
The bound of any start: even the exact eigenvectors of the adjacent grid point, had they been
free, took 14.8 (1.47×); the pure Ritz vectors without the random half 15.7, a linear
extrapolation from the two previous points 15.9; a start from θ*'s Ritz vectors at every point
(one Lanczos run per rank and split first) 19.0. Block Lanczos from [u_max, u_min] took 28.2. The
limit is λmin: its Ritz residual falls by a roughly constant factor per step from any start that
is not already its eigenvector (the adjacent point's λmin vector overlaps this point's by about
0.94, θ*'s by 0.1, a random one by 0.01, and still about 13 steps remain from the adjacent one),
while λmax converges in 5–10 steps either way. A smallest-residual vector of the same Krylov
space (refined Ritz) certifies λmin no sooner (within 0.3 steps).
"""

from __future__ import annotations

import logging
import math

import torch

from ..layout import ParamLayout
from ..shard import Shard
from ..spec import HessianSpec
from .linalg import directional_curvature, extreme_eigenpairs, hutchinson_trace, start_from
from .operator import HessianOperator, LossFn
from .spectrum import HessianSpectrum, hessian_spectrum, module_groups

log = logging.getLogger("mpiland")

PROBE_SEED_OFFSET = 7919
"""The spectrum's probes are seeded with ``hessian.seed`` + this, so they are not the Hutchinson probes
(seeded with ``hessian.seed``) and the two trace estimates are independent checks of each other."""


def metric_names(spec: HessianSpec) -> list[str]:
    """Per-point curvature datasets, in a fixed order."""
    if not spec.enabled:
        return []
    return [f"{s}_hess_{what}" for s in spec.splits for what in ("max", "min", "ratio")]


def hessian_batches(inputs: torch.Tensor, targets: torch.Tensor, spec: HessianSpec, batch_size: int,
             device: torch.device, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if spec.subset and spec.subset < inputs.shape[0]:
        order = torch.randperm(inputs.shape[0], generator=torch.Generator().manual_seed(spec.seed))[: spec.subset]
        inputs, targets = inputs[order.to(inputs.device)], targets[order.to(targets.device)]
    x = inputs.to(device=device, dtype=dtype if inputs.is_floating_point() else inputs.dtype)
    y = targets.to(device)
    return [(x[i: i + batch_size], y[i: i + batch_size]) for i in range(0, x.shape[0], batch_size)]


WARM_START = False
"""The default of ``hessian.warm_start``: off. Chained starts take 1.35× fewer HVPs on the demo job, but a chain
is evaluated by one rank in order, so chunks hold whole chains and a small grid over many ranks balances worse."""


class Curvature:
    """Hessian operators of one model replica, one per split, over its parameters (a prefix of the flat buffer).

    ``warm_start``: a point that :meth:`at_point` is told is ``linked`` starts from the
    vectors of the point evaluated before it on the same ``chain`` (see the module docstring).
    """

    def __init__(self, model: torch.nn.Module, splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: LossFn, spec: HessianSpec, batch_size: int, device: torch.device,
                 model_dtype: torch.dtype, *, warm_start: bool = WARM_START) -> None:
        self.spec = spec
        self.layout = ParamLayout.from_model(model)
        dtype = getattr(torch, spec.dtype)
        self.ops = {name: HessianOperator(model, self.layout,
                                          hessian_batches(x, y, spec, batch_size, device, model_dtype), loss_fn, dtype)
                    for name, (x, y) in splits.items() if name in spec.splits}
        self.warm_start = warm_start
        self.previous: dict[tuple[int, str], torch.Tensor] = {}

    def use_shard(self, shard: Shard | None) -> None:
        """Sum every HVP over a point group's shards of the batches (:mod:`mpiland.shard`): each rank
        takes its own batches, all ranks get the same product, bit for bit the one rank's sum over all."""
        for op in self.ops.values():
            op.shard = shard

    def theta(self, flat: torch.Tensor) -> torch.Tensor:
        """The parameter part of the flat buffer (buffers of a states layout follow it)."""
        return flat[: self.layout.numel]

    def at_point(self, flat: torch.Tensor, linked: bool = False, chain: int = 0) -> dict[str, float]:
        """λmax, λmin and |λmin/λmax| per split at the point now in ``flat``.

        With ``warm_start``, ``linked``: the point is the next of the chain ``chain`` (one per coefficient
        set of a path's variants), whose previous point this object evaluated last on that chain; its
        Lanczos runs start from that point's vectors. Unlinked points start cold and begin a chain.
        """
        out: dict[str, float] = {}
        for name, op in self.ops.items():
            key = (chain, name)
            start = None
            if self.warm_start and linked:
                start = self.previous.get(key)
                if start is None:
                    raise RuntimeError(f"Curvature.at_point: linked = True, but chain {chain} has no previous point "
                                       f"on split {name!r}; the first point of a chain is not linked")
            res, run = extreme_eigenpairs(op, theta=self.theta(flat), tol=self.spec.tol, max_iter=self.spec.max_iter,
                                          seed=self.spec.seed, start=start)
            if self.warm_start:
                self.previous[key] = start_from(run, self.spec.seed)
            op.clear_cache()
            ratio = abs(res.lam_min / res.lam_max) if res.lam_max != 0 else math.nan
            out.update({f"{name}_hess_max": res.lam_max, f"{name}_hess_min": res.lam_min,
                        f"{name}_hess_ratio": ratio})
        return out

    def hvps(self) -> int:
        """HVPs so far on every split."""
        return sum(op.hvps for op in self.ops.values())

    @property
    def spectrum_split(self) -> str:
        """The split the spectrum is taken on: the first of ``hessian.splits`` that has an operator."""
        for name in self.spec.splits:
            if name in self.ops:
                return name
        if not self.ops:
            raise ValueError("no split has a Hessian operator: hessian.splits names none of the evaluated splits")
        return next(iter(self.ops))

    def spectrum(self, flat: torch.Tensor) -> HessianSpectrum:
        """The Hessian spectrum at the point now in ``flat`` (:func:`~.spectrum.hessian_spectrum`) on
        :attr:`spectrum_split`: ``spectrum_probes`` Rademacher probes × ``spectrum_steps`` Lanczos steps,
        the top ``spectrum_top`` eigenvalues, and λmax/λmin of each module's parameter block, with
        ``hessian.tol``/``max_iter``; probes seeded with ``hessian.seed`` + :data:`PROBE_SEED_OFFSET`, so
        every point of a file gets the same probes."""
        spec = self.spec
        name = self.spectrum_split
        op = self.ops[name]
        n = self.layout.n_params
        groups = module_groups(self.layout.names[:n], [self.layout.numel_of(i) for i in range(n)])
        try:
            result = hessian_spectrum(op.at(self.theta(flat)), probes=spec.spectrum_probes,
                                      steps=spec.spectrum_steps, top=spec.spectrum_top, groups=groups, tol=spec.tol,
                                      max_iter=spec.max_iter, seed=spec.seed + PROBE_SEED_OFFSET)
        finally:
            op.clear_cache()
        log.info("Hessian spectrum on %s: %d probes x %d Lanczos steps, top %d eigenvalues, λmax of %d parameter "
                 "groups: %d HVPs in %.1f s", name, result.quadrature.probes, result.quadrature.steps,
                 result.top.size, len(result.groups), result.hvps, result.seconds)
        return result

    def at_origin(self, flat: torch.Tensor, basis: torch.Tensor, axes: tuple[str, ...]) -> dict[str, float]:
        """Root attributes: trace (Hutchinson) with its standard error, and dᵀHd/‖d‖² along each basis vector."""
        out: dict[str, float] = {}
        theta = self.theta(flat)
        for name, op in self.ops.items():
            if self.spec.trace_samples:
                tr = hutchinson_trace(op, theta=theta, samples=self.spec.trace_samples, seed=self.spec.seed)
                out[f"{name}_hess_trace"] = tr.trace
                out[f"{name}_hess_trace_stderr"] = tr.stderr
            for axis, d in zip(axes, basis):
                part = d[: self.layout.numel]
                if float(part.abs().max()) > 0:
                    out[f"{name}_hess_curvature_{axis}"] = directional_curvature(op, part, theta=theta)
            op.clear_cache()
        return out


def axis_labels(dims: int) -> tuple[str, ...]:
    """Axis names for the origin attributes (x, y, then basis_2 …) of ``dims`` basis vectors."""
    return tuple("xy"[i] if i < 2 else f"basis_{i}" for i in range(dims))

