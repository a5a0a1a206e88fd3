"""The Hessian eigenvalue density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019).

For a unit probe v and m Lanczos steps from it, the tridiagonal T = QᵀAQ has
eigenvalues θ_j (the *nodes*) and unit eigenvectors s_j; with *weights*
τ_j = (e₁ᵀs_j)², which sum to 1, the Gauss quadrature Σ_j τ_j f(θ_j) equals
vᵀf(A)v for every polynomial f of degree at most 2m − 1. Probes with
E[vvᵀ] = I/n (Rademacher ±1/√n, or normalised Gaussian vectors) make its mean over
probes an unbiased estimate of (1/n)·tr f(A) = ∫ f dρ, where
ρ = (1/n)·Σ_i δ(λ − λ_i) is the eigenvalue density (it integrates to 1; n·ρ
counts eigenvalues). So the first moment estimates tr A / n (a Hutchinson trace
from the same HVPs), the second ‖A‖_F² / n, with only the probes' variance as error.

The smooth density drawn and stored is ρ_σ(λ) = mean over probes of
Σ_j τ_j·N(λ; θ_j, σ²). Width rule: σ = :data:`WIDTH` (1 %) of the range of all
nodes, θ_max − θ_min: comparable to the mean gap range/m between one probe's
neighbouring nodes at the default 60 steps, so the density is smooth where the
nodes of several probes interleave, while an isolated top eigenvalue stays a peak
of its own. The range counts as at least 1 % of the largest |node| (so a nearly
degenerate spectrum, such as a multiple of the identity, still gets a width), and
as 1 when every node is 0. ρ_σ is evaluated on :data:`POINTS` equally spaced eigenvalues
over [θ_min − 5σ, θ_max + 5σ], so the grid covers every node and the Gaussians'
tails down to 4·10⁻⁶ of their peaks. Its moments are those of the nodes, plus σ²
for the second.

Besides the density, :func:`hessian_spectrum` gives the top-k eigenvalues
(Lanczos to a tolerance, as :func:`~.linalg.top_eigenvectors`) and λmax (and λmin)
of the Hessian's block on each parameter group (:func:`module_groups`: the
parameters of one module, such as ``features.0``), by :class:`~.linalg.Restricted`.
Operators are those of :mod:`.linalg`: a :class:`~.linalg.PointOperator` with θ,
a :class:`~.linalg.SizedOperator`, or a plain matvec with n. Results are numpy
(float64, CPU), so they can be stored and read without torch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .linalg import FIXED, FLOOR, LARGEST, Operator, Restricted, TraceEstimate, _bind, extreme_eigenvalues, lanczos

log = logging.getLogger("mpiland")

RADEMACHER = "rademacher"
GAUSSIAN = "gaussian"
DISTRIBUTIONS = (RADEMACHER, GAUSSIAN)
"""Probe distributions: Rademacher ±1/√n entries (PyHessian), or a Gaussian vector normalised (Ghorbani et al.)."""

WIDTH = 0.01
"""σ of the smoothed density as a fraction of the range of the quadrature nodes."""
PADDING = 5.0
"""The density's grid reaches this many σ beyond the outermost nodes."""
POINTS = 1000
"""Points of the density's grid."""
TOP_LEVEL = "(model)"
"""The group name of parameters that belong to the model itself rather than to a submodule."""


def probe_vectors(n: int, probes: int, seed: int = 0, distribution: str = RADEMACHER) -> Iterator[torch.Tensor]:
    """``probes`` unit vectors of length n (float64, CPU) with E[vvᵀ] = I/n, one at a time, from a seeded generator.

    Rademacher: entries ±1/√n (each probe drawn as ``randint(0, 2, (n,))`` after the
    ones before it); Gaussian: ``randn(n)`` normalised. The same seed gives the same
    probes on every device.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    if n < 1 or probes < 1:
        raise ValueError(f"n and probes must be positive, got n = {n}, probes = {probes}")
    gen = torch.Generator().manual_seed(seed)
    for _ in range(probes):
        if distribution == RADEMACHER:
            v = (torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(n)
        else:
            v = torch.randn(n, generator=gen, dtype=torch.float64)
            v = v / v.norm()
        yield v


@dataclass(frozen=True)
class Density:
    """A smoothed eigenvalue density: ``values`` at the eigenvalues ``grid`` (float64), Gaussian width ``width``."""

    grid: np.ndarray
    values: np.ndarray
    width: float

    def integral(self, power: int = 0) -> float:
        """∫ λ^power ρ_σ(λ) dλ over the grid (trapezoidal rule): 1, then the moments (the second plus σ²)."""
        y = self.grid**power * self.values
        return float(np.sum((y[1:] + y[:-1]) * np.diff(self.grid)) / 2)


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, *, width: float = WIDTH, points: int = POINTS,
                     padding: float = PADDING) -> Density:
    """ρ_σ(λ) = mean over the rows of Σ_j weights·N(λ; nodes, σ²), on ``points`` eigenvalues.

    ``nodes`` and ``weights`` are (probes, m); σ = ``width`` × the nodes' range, at least
    1 % of the largest |node| (the width rule of this module's docstring); the grid
    spans ``padding``·σ beyond them.
    """
    nodes = np.asarray(nodes, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if nodes.shape != weights.shape or nodes.ndim != 2 or nodes.size == 0:
        raise ValueError(f"nodes and weights must be (probes, m) arrays of one shape, got {nodes.shape} "
                         f"and {weights.shape}")
    if not width > 0 or points < 2:
        raise ValueError(f"width must be positive and points at least 2, got width = {width}, points = {points}")
    lo, hi = float(nodes.min()), float(nodes.max())
    scale = max(hi - lo, WIDTH * max(abs(lo), abs(hi))) or 1.0
    sigma = width * scale
    grid = np.linspace(lo - padding * sigma, hi + padding * sigma, points)
    values = np.zeros(points)
    flat_nodes, flat_weights = nodes.reshape(-1), weights.reshape(-1)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi) * nodes.shape[0])
    for start in range(0, flat_nodes.size, 4096):  # bounded (points × 4096) blocks
        z = (grid[:, None] - flat_nodes[None, start: start + 4096]) / sigma
        values += np.exp(-0.5 * z * z) @ flat_weights[start: start + 4096]
    return Density(grid, values * norm, sigma)


@dataclass(frozen=True)
class Quadrature:
    """Gauss quadrature rules of stochastic Lanczos quadrature: one row of nodes and weights per probe.

    ``nodes`` (probes, m) are each tridiagonal's eigenvalues, ascending; ``weights``
    the squared first components of its eigenvectors (each row sums to 1).
    """

    nodes: np.ndarray
    weights: np.ndarray

    @property
    def probes(self) -> int:
        return int(self.nodes.shape[0])

    @property
    def steps(self) -> int:
        return int(self.nodes.shape[1])

    def moments(self, power: int) -> np.ndarray:
        """Σ_j τ_j θ_j^power per probe: exactly vᵀA^power v for power ≤ 2m − 1 (up to rounding)."""
        return (self.weights * self.nodes**power).sum(axis=1)

    def moment(self, power: int) -> float:
        """The mean over probes: an estimate of tr(A^power)/n = ∫ λ^power dρ."""
        return float(self.moments(power).mean())

    def trace(self, n: int) -> TraceEstimate:
        """tr A ≈ n·(first moment), with its standard error n·std/√probes (NaN for one probe)."""
        first = self.moments(1)
        stderr = float(n * first.std(ddof=1) / math.sqrt(first.size)) if first.size > 1 else math.nan
        return TraceEstimate(float(n * first.mean()), stderr)

    def density(self, width: float = WIDTH, points: int = POINTS) -> Density:
        """The smoothed density of these rules (:func:`smoothed_density`)."""
        return smoothed_density(self.nodes, self.weights, width=width, points=points)


def lanczos_quadrature(op: Operator, probes: int = 8, steps: int = 60, *, seed: int = 0,
                       distribution: str = RADEMACHER, theta: torch.Tensor | None = None, n: int | None = None,
                       dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Quadrature:
    """Stochastic Lanczos quadrature: ``min(steps, n)`` Lanczos steps (full reorthogonalisation) from each probe.

    Probes are :func:`probe_vectors` (n, probes, seed, distribution); each costs one
    HVP per step. A breakdown (the probe's Krylov space is invariant) restarts
    Lanczos orthogonally, and the nodes it adds get weight 0, so the rule stays exact.
    """
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    matvec, n, dtype, device = _bind(op, theta, n, dtype, device)
    m = min(steps, n)
    nodes = np.empty((probes, m))
    weights = np.empty((probes, m))
    for p, v in enumerate(probe_vectors(n, probes, seed, distribution)):
        run = lanczos(matvec, n, m, 0.0, seed, dtype, device, which=FIXED, start=v)
        values, vectors = torch.linalg.eigh(run.tridiagonal())
        nodes[p] = values.numpy()
        weights[p] = (vectors[0] ** 2).numpy()
    return Quadrature(nodes, weights)


def module_groups(names: Sequence[str], sizes: Sequence[int]) -> dict[str, torch.Tensor]:
    """Parameter groups by owning module: flat indices per module, in order of first appearance.

    ``names`` and ``sizes`` describe consecutive tensors of the flat vector
    (``named_parameters()`` order); ``features.0.weight`` and ``features.0.bias``
    form the group ``features.0``. Parameters of the model itself (names without a
    dot) form :data:`TOP_LEVEL`.
    """
    if len(names) != len(sizes):
        raise ValueError(f"{len(names)} names but {len(sizes)} sizes")
    parts: dict[str, list[torch.Tensor]] = {}
    offset = 0
    for name, size in zip(names, sizes):
        module = name.rpartition(".")[0] or TOP_LEVEL
        parts.setdefault(module, []).append(torch.arange(offset, offset + size))
        offset += size
    return {module: torch.cat(ranges) for module, ranges in parts.items() if sum(r.numel() for r in ranges)}


@dataclass(frozen=True)
class GroupCurvature:
    """λmax and λmin of the Hessian's block on one parameter group (``size`` parameters), and their Lanczos run."""

    name: str
    size: int
    lam_max: float
    lam_min: float
    iterations: int
    converged: bool


@dataclass(frozen=True)
class HessianSpectrum:
    """The spectrum at one point: quadrature, smoothed density, top eigenvalues, per-group extremes.

    ``n``: parameters; ``top``: the largest eigenvalues, descending, with whether
    Lanczos met the tolerance for them; ``trace``: n·(first moment) with its
    standard error; ``hvps`` and ``seconds``: what it all cost.
    """

    n: int
    distribution: str
    quadrature: Quadrature
    density: Density
    top: np.ndarray
    top_converged: bool
    groups: tuple[GroupCurvature, ...]
    trace: TraceEstimate
    hvps: int
    seconds: float


class _Counted:
    """A sized operator that counts its products (the HVPs a spectrum costs)."""

    def __init__(self, matvec: object, n: int, dtype: torch.dtype, device: torch.device) -> None:
        self._matvec = matvec
        self._n, self._dtype, self._device = n, dtype, device
        self.calls = 0

    @property
    def n(self) -> int:
        return self._n

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out: torch.Tensor = self._matvec(v)  # type: ignore[operator]
        return out


def top_eigenvalues(op: Operator, k: int, *, theta: torch.Tensor | None = None, n: int | None = None,
                    tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
                    floor: float = FLOOR) -> tuple[np.ndarray, bool]:
    """The k largest eigenvalues, descending (the Ritz values :func:`~.linalg.top_eigenvectors` stops on),
    and whether their residuals met ``tol``; k is at most min(n, max_iter)."""
    matvec, n, dtype, device = _bind(op, theta, n, None, None)
    k = max(1, min(k, n, max_iter))
    run = lanczos(matvec, n, max_iter, tol, seed, dtype, device, which=LARGEST, k=k, floor=floor)
    values = torch.sort(run.ritz_values(), descending=True).values[:k]
    return values.numpy(), run.converged


def group_extremes(op: Operator, groups: Mapping[str, torch.Tensor], *, theta: torch.Tensor | None = None,
                   n: int | None = None, tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
                   floor: float = FLOOR) -> tuple[GroupCurvature, ...]:
    """λmax and λmin of each group's principal block P·A·P (:class:`~.linalg.Restricted`), in ``groups`` order."""
    matvec, n, dtype, device = _bind(op, theta, n, None, None)
    sized = matvec if isinstance(matvec, _Counted) else _Counted(matvec, n, dtype, device)
    out = []
    for name, index in groups.items():
        block = Restricted(sized, index)
        res = extreme_eigenvalues(block, tol=tol, max_iter=max_iter, seed=seed, floor=floor)
        out.append(GroupCurvature(name, block.n, res.lam_max, res.lam_min, res.iterations, res.converged))
    return tuple(out)


def hessian_spectrum(op: Operator, *, theta: torch.Tensor | None = None, n: int | None = None, probes: int = 8,
                     steps: int = 60, top: int = 5, groups: Mapping[str, torch.Tensor] | None = None,
                     tol: float = 1e-3, max_iter: int = 100, seed: int = 0, distribution: str = RADEMACHER,
                     width: float = WIDTH, points: int = POINTS) -> HessianSpectrum:
    """Density (:func:`lanczos_quadrature`, ``probes`` × ``steps`` HVPs), top-``top`` eigenvalues and, for each
    of ``groups``, the block's λmax and λmin (each Lanczos to ``tol``, at most ``max_iter`` HVPs).

    Probes are seeded with ``seed``; the Lanczos start vectors of the top and group
    runs too. ``groups`` None: none.
    """
    t0 = time.perf_counter()
    matvec, n, dtype, device = _bind(op, theta, n, None, None)
    counted = _Counted(matvec, n, dtype, device)
    quad = lanczos_quadrature(counted, probes, steps, seed=seed, distribution=distribution)
    values, converged = top_eigenvalues(counted, top, tol=tol, max_iter=max_iter, seed=seed)
    if not converged:
        log.warning("Hessian spectrum: the top %d eigenvalues did not meet tol = %g in %d Lanczos steps",
                    values.size, tol, max_iter)
    blocks = group_extremes(counted, groups or {}, tol=tol, max_iter=max_iter, seed=seed)
    loose = [g.name for g in blocks if not g.converged]
    if loose:
        log.warning("Hessian spectrum: λmax/λmin of %s did not meet tol = %g in %d Lanczos steps",
                    ", ".join(loose), tol, max_iter)
    return HessianSpectrum(n, distribution, quad, quad.density(width, points), values, converged, blocks,
                           quad.trace(n), counted.calls, time.perf_counter() - t0)
