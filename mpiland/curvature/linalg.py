"""Linear algebra on a symmetric operator given only as v ↦ A·v: Lanczos, extreme eigenpairs, traces.

Nothing here knows about models. The routines take a :class:`PointOperator`
with θ (an object whose ``at(θ)`` is a :class:`SizedOperator`, such as
:class:`~mpiland.curvature.operator.HessianOperator`), a :class:`SizedOperator`
(a callable with ``n``, ``dtype`` and ``device``), or any callable v ↦ A·v of a
symmetric A with its size n. :class:`Restricted` is A's block on a subset of the
coordinates. Tridiagonal maths is in float64; random vectors come from a seeded
CPU generator, so every device starts from the same vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Protocol, Sequence, runtime_checkable

import torch

log = logging.getLogger("mpiland")

FLOOR = 1e-2
"""Ritz values smaller than this fraction of the spectral radius are judged on an absolute scale."""
BREAKDOWN = 100.0
"""A Lanczos residual below BREAKDOWN · eps(dtype) · ‖T‖ is treated as an exact invariant subspace."""
EXTREMES = "extremes"
LARGEST = "largest"
FIXED = "fixed"

MatVec = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class SizedOperator(Protocol):
    """v ↦ A·v with the size of A and the dtype and device of the vectors it takes."""

    def __call__(self, v: torch.Tensor) -> torch.Tensor: ...

    @property
    def n(self) -> int: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def device(self) -> torch.device: ...


@runtime_checkable
class PointOperator(Protocol):
    """A family of operators A(θ), one per point θ (the Hessian of a loss)."""

    def at(self, theta: torch.Tensor) -> SizedOperator: ...


Operator = PointOperator | SizedOperator | MatVec
"""What the routines accept: an operator with θ, a sized operator, or a plain matvec callable with n."""


class ExtremeEigenvalues(NamedTuple):
    """λmax and λmin (algebraic) of the Hessian, the HVPs spent, and whether the tolerance was met."""

    lam_max: float
    lam_min: float
    iterations: int
    converged: bool


class EigenPairs(NamedTuple):
    """Eigenvalues (k,) in descending order, float64 on the CPU, and unit eigenvectors (k, n) as rows."""

    values: torch.Tensor
    vectors: torch.Tensor


class TraceEstimate(NamedTuple):
    """Hutchinson's estimate of tr H and its standard error (std of the probes / √samples)."""

    trace: float
    stderr: float


class Restricted:
    """P·A·P on the coordinates ``index`` (A's principal sub-block), as an operator on vectors of len(index).

    A vector of the block is scattered into zeros of A's size, multiplied, and read
    back at ``index``: eigenpairs of the block are those of A restricted to the
    subspace, and :meth:`expand` puts a block vector back into A's coordinates.
    """

    def __init__(self, op: SizedOperator, index: torch.Tensor) -> None:
        self.op = op
        self.index = index.to(device=op.device, dtype=torch.long)
        if self.index.dim() != 1 or self.index.numel() == 0:
            raise ValueError("index must be a non-empty 1-D tensor of coordinates")

    @property
    def n(self) -> int:
        return int(self.index.numel())

    @property
    def dtype(self) -> torch.dtype:
        return self.op.dtype

    @property
    def device(self) -> torch.device:
        return self.op.device

    def expand(self, v: torch.Tensor) -> torch.Tensor:
        """Block vectors (..., len(index)) in A's coordinates (..., n), zero outside ``index``."""
        out = torch.zeros(*v.shape[:-1], self.op.n, dtype=v.dtype, device=v.device)
        out[..., self.index.to(v.device)] = v
        return out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.op(self.expand(v.reshape(self.n))).reshape(self.op.n)[self.index]


def _bind(op: Operator, theta: torch.Tensor | None, n: int | None, dtype: torch.dtype | None,
          device: torch.device | str | None) -> tuple[MatVec, int, torch.dtype, torch.device]:
    """(matvec, n, dtype, device) for an operator with θ, a sized operator, or a plain callable with n."""
    if isinstance(op, PointOperator):
        if theta is None:
            raise ValueError("theta is needed with an operator of θ such as HessianOperator (or pass operator.at(theta))")
        op = op.at(theta)
    elif theta is not None:
        raise ValueError("theta is only used with an operator of θ such as HessianOperator")
    if isinstance(op, SizedOperator):
        if n is not None and n != op.n:
            raise ValueError(f"n = {n} but the operator has {op.n} parameters")
        return op, op.n, dtype or op.dtype, torch.device(device) if device is not None else op.device
    if n is None:
        raise ValueError("n is needed with a plain matvec callable")
    return op, n, dtype or torch.float64, torch.device(device if device is not None else "cpu")


def _random_unit(gen: torch.Generator, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A seeded Gaussian unit vector, drawn on the CPU so that every device gets the same one."""
    q = torch.randn(n, generator=gen, dtype=torch.float64)
    return (q / q.norm()).to(device=device, dtype=dtype)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` minus its projection on the rows of ``basis`` (classical Gram-Schmidt, twice)."""
    for _ in range(2):
        w = w - basis.t() @ (basis @ w)
    return w


def _tridiagonal(alpha: Sequence[float], beta: Sequence[float]) -> torch.Tensor:
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if beta:
        off = torch.tensor(beta, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return t


def _within(change: float, value: float, scale: float, tol: float) -> bool:
    return abs(change) <= tol * max(abs(value), scale)


@dataclass(frozen=True)
class LanczosResult:
    """A Lanczos run, A·Qᵀ ≈ Qᵀ·T: T's diagonal and off-diagonal (float64), the basis Q as rows, the last ‖residual‖."""

    alpha: torch.Tensor
    beta: torch.Tensor
    basis: torch.Tensor
    residual: float
    iterations: int
    converged: bool

    def tridiagonal(self) -> torch.Tensor:
        """T (m × m, float64 on the CPU)."""
        return _tridiagonal(self.alpha.tolist(), self.beta.tolist())

    def ritz_values(self) -> torch.Tensor:
        """Eigenvalues of T, ascending: estimates of A's extreme eigenvalues."""
        return torch.linalg.eigvalsh(self.tridiagonal())

    def ritz_pairs(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The k largest (algebraic) Ritz values, descending; their unit Ritz vectors (k, n); residual norms ‖Ax − θx‖.

        Each vector's sign is fixed so that its largest-magnitude entry is positive.
        """
        values, s = torch.linalg.eigh(self.tridiagonal())
        idx = torch.argsort(values, descending=True)[:k]
        coeffs = s[:, idx].t().to(device=self.basis.device, dtype=self.basis.dtype)
        vectors = coeffs @ self.basis
        vectors = vectors / vectors.norm(dim=1, keepdim=True)
        peak = vectors.gather(1, vectors.abs().argmax(dim=1, keepdim=True))
        vectors = vectors * torch.where(peak < 0, -1.0, 1.0).to(vectors.dtype)
        residuals = self.residual * s[-1, idx].abs()
        return values[idx], vectors, residuals

    def extreme_vectors(self, per_end: int) -> torch.Tensor:
        """Unit Ritz vectors (rows) of the ``per_end`` largest and the ``per_end`` smallest Ritz values, each
        Ritz value once (fewer rows when the run took fewer than 2·per_end steps)."""
        values, s = torch.linalg.eigh(self.tridiagonal())
        m = values.numel()
        idx = sorted(set(range(max(0, m - per_end), m)) | set(range(min(per_end, m))))
        vectors = s[:, idx].t().to(device=self.basis.device, dtype=self.basis.dtype) @ self.basis
        return vectors / vectors.norm(dim=1, keepdim=True)


def lanczos(matvec: MatVec, n: int, k_iter: int, tol: float = 1e-3, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: torch.device | str | None = None, *, which: str = EXTREMES, k: int = 2,
            floor: float = FLOOR, start: torch.Tensor | None = None) -> LanczosResult:
    """Lanczos with full reorthogonalisation on a symmetric A given by ``matvec``, at most ``min(k_iter, n)`` steps.

    The Krylov basis is stored in ``dtype`` on ``device`` (the HVP's precision);
    α, β and T's eigenproblem are float64 on the CPU. Stops early when the
    watched Ritz pairs have residual norms ‖A·x − θx‖ = β_m·|s_m,i| at most
    tol·max(|θ|, floor·ρ) (ρ: the largest |Ritz value|); an eigenvalue of A lies
    within the residual of θ, so the stop bounds the actual error. Watched:
    ``which="extremes"``: the largest and the smallest Ritz value;
    ``which="largest"``: the k largest; ``which="fixed"``: none, so exactly
    ``min(k_iter, n)`` steps are taken (stochastic Lanczos quadrature). (How far a
    Ritz value moved in the last step bounds nothing: between two close eigenvalues
    it creeps, and an earlier rule stopped there up to 1.5 % off.) A breakdown (β ≈ 0: the Krylov space is invariant)
    restarts from a seeded random vector orthogonal to the basis, so repeated
    eigenvalues and a zero operator are handled; after n steps the result is exact.
    A breakdown step never ends a ``largest`` run: the invariant space holds one
    vector per distinct eigenvalue, and a repeated top eigenvalue needs the restart.
    ``start``: the first Lanczos vector (normalised here; a quadrature's probe);
    None draws a seeded Gaussian unit vector.
    """
    if n < 1 or k_iter < 1:
        raise ValueError(f"n and k_iter must be positive, got n = {n}, k_iter = {k_iter}")
    if which not in (EXTREMES, LARGEST, FIXED):
        raise ValueError(f"which must be {EXTREMES!r}, {LARGEST!r} or {FIXED!r}, got {which!r}")
    if which == LARGEST and not 1 <= k <= min(n, k_iter):
        raise ValueError(f"k must be between 1 and min(n, k_iter) = {min(n, k_iter)}, got {k}")
    device = torch.device(device if device is not None else "cpu")
    steps = min(k_iter, n)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.empty(min(steps, 16), n, dtype=dtype, device=device)
    if start is None:
        q = _random_unit(gen, n, dtype, device)
    else:
        q = start.detach().reshape(-1).to(device=device, dtype=torch.float64)
        if q.numel() != n or not float(q.norm()) > 0:
            raise ValueError(f"start must be a non-zero vector of {n} entries, got shape {tuple(start.shape)}")
        q = (q / q.norm()).to(dtype)
    alpha: list[float] = []
    beta: list[float] = []
    breakdown = BREAKDOWN * torch.finfo(dtype).eps
    scale = 0.0
    residual = 0.0
    converged = False
    for j in range(steps):
        if j == basis.shape[0]:
            basis = torch.cat([basis, torch.empty(min(j, steps - j), n, dtype=dtype, device=device)])
        basis[j] = q
        w = matvec(q).detach().to(device=device, dtype=dtype).reshape(n)
        alpha.append(float(torch.dot(q.double(), w.double())))
        span = basis[: j + 1]
        w = _orthogonalise(w, span)
        residual = float(w.double().norm())
        scale = max(scale, abs(alpha[-1]), residual)
        converged = False
        if which != FIXED:  # a fixed run watches nothing: no Ritz values needed until the end
            values, s = torch.linalg.eigh(_tridiagonal(alpha, beta))
            rho = float(values.abs().max())
            if which == EXTREMES:
                watched = [0, len(alpha) - 1]
            else:
                watched = torch.argsort(values, descending=True)[:k].tolist() if j + 1 >= k else []
            # Ritz residual ‖A·x − θx‖ = β·|s_m,i|: some eigenvalue lies within it of θ.
            converged = bool(watched) and all(_within(residual * float(s[-1, i]), float(values[i]), floor * rho, tol)
                                              for i in watched)
        invariant = residual <= breakdown * scale
        if which == LARGEST and invariant:
            converged = False
        if j + 1 == n:
            converged = True
        if converged or j + 1 == steps:
            break
        if invariant:
            beta.append(0.0)
            q = _orthogonalise(_random_unit(gen, n, dtype, device), span)
            q = q / q.norm()
        else:
            beta.append(residual)
            q = w / residual
    m = len(alpha)
    return LanczosResult(torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64),
                         basis[:m], residual, m, converged)


def extreme_eigenpairs(op: Operator, theta: torch.Tensor | None = None, n: int | None = None, *, tol: float = 1e-3,
                       max_iter: int = 100, seed: int = 0, floor: float = FLOOR, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None,
                       start: torch.Tensor | None = None) -> tuple[ExtremeEigenvalues, LanczosResult]:
    """:func:`extreme_eigenvalues` with its Lanczos run, whose Ritz vectors give a neighbour's start
    (:func:`start_from`)."""
    matvec, n, dtype, device = _bind(op, theta, n, dtype, device)
    result = lanczos(matvec, n, max_iter, tol, seed, dtype, device, which=EXTREMES, floor=floor, start=start)
    values = result.ritz_values()
    return ExtremeEigenvalues(float(values[-1]), float(values[0]), result.iterations, result.converged), result


def extreme_eigenvalues(op: Operator, theta: torch.Tensor | None = None, n: int | None = None, *, tol: float = 1e-3,
                        max_iter: int = 100, seed: int = 0, floor: float = FLOOR, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None,
                        start: torch.Tensor | None = None) -> ExtremeEigenvalues:
    """λmax and the algebraically smallest λmin (negative at a saddle) by one Lanczos run.

    Stops when both Ritz pairs' residuals are at most tol relative (see :func:`lanczos`),
    so each value is within about tol·|λ| of an eigenvalue, or after ``max_iter``
    HVPs; ``converged`` says which. Deterministic for a seed (and ``start``).
    ``start``: the first Lanczos vector (:func:`start_from`, :func:`warm_start`); None: the seeded
    random one. The stop rule is the same either way: a start only changes how soon it is met.
    """
    return extreme_eigenpairs(op, theta, n, tol=tol, max_iter=max_iter, seed=seed, floor=floor, dtype=dtype,
                              device=device, start=start)[0]


WARM_PER_END = 1
"""Ritz vectors per end of the spectrum in a warm start (:func:`start_from`; 1 and 2 measured best of 1, 2, 3,
5, 8 from θ*'s vectors on both trained demo CNNs tried, see :mod:`mpiland.curvature.grid`)."""


def start_from(result: LanczosResult, seed: int = 0, per_end: int = WARM_PER_END) -> torch.Tensor:
    """A Lanczos start vector for :func:`extreme_eigenvalues` at points near the one ``result`` ran at.

    The unit sum of the Ritz vectors of the ``per_end`` largest and ``per_end``
    smallest Ritz values of ``result`` (by default λmax's and λmin's), plus the seeded
    random unit vector that a cold start would use, with the same weight; normalised,
    in the run's dtype on its device. The random half keeps every eigenvector in the
    start, so a point whose extreme eigenvectors are far from these costs about what a
    cold start costs (and a new λmin orthogonal to them is still found); the warm half
    gives a nearby point's Ritz vectors a head start at both ends (λmin as well as
    λmax). Deterministic for the run and ``seed``.
    """
    if per_end < 1:
        raise ValueError(f"per_end must be positive, got {per_end}")
    basis = result.basis
    warm = result.extreme_vectors(per_end).double().sum(dim=0)
    cold = _random_unit(torch.Generator().manual_seed(seed), basis.shape[1], torch.float64, basis.device)
    norm = float(warm.norm())
    q = cold + warm / norm if norm > 0 else cold
    return (q / q.norm()).to(basis.dtype)


def warm_start(op: Operator, theta: torch.Tensor | None = None, n: int | None = None, *, tol: float = 1e-3,
               max_iter: int = 100, seed: int = 0, floor: float = FLOOR, per_end: int = WARM_PER_END,
               dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """A Lanczos start vector for points near θ from one Lanczos run at θ (stopped as
    :func:`extreme_eigenvalues` stops, at ``tol``): :func:`start_from` that run. Costs the run's HVPs."""
    if per_end < 1:
        raise ValueError(f"per_end must be positive, got {per_end}")
    _, result = extreme_eigenpairs(op, theta, n, tol=tol, max_iter=max_iter, seed=seed, floor=floor, dtype=dtype,
                                   device=device)
    return start_from(result, seed, per_end)


def top_eigenvectors(matvec: Operator, n: int | None = None, k: int = 2, *, theta: torch.Tensor | None = None,
                     tol: float = 1e-3, max_iter: int = 100, seed: int = 0, floor: float = FLOOR,
                     dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> EigenPairs:
    """The k largest algebraic eigenpairs (PyHessian's top eigenvalues), as Lanczos Ritz pairs.

    Stops when every pair's residual ‖Hx − λx‖ is at most tol·max(|λ|, floor·ρ);
    logs a warning when ``max_iter`` HVPs did not get there. Vectors are unit rows
    in the HVP's dtype, each with its largest-magnitude entry positive.
    """
    matvec, n, dtype, device = _bind(matvec, theta, n, dtype, device)
    result = lanczos(matvec, n, max_iter, tol, seed, dtype, device, which=LARGEST, k=k, floor=floor)
    values, vectors, residuals = result.ritz_pairs(k)
    if not result.converged:
        log.warning("top_eigenvectors: %d Lanczos steps left residuals %s above tol = %g",
                    result.iterations, [f"{float(r):.3g}" for r in residuals], tol)
    return EigenPairs(values, vectors)


def hutchinson_trace(matvec: Operator, n: int | None = None, samples: int = 100, seed: int = 0, *,
                     theta: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                     device: torch.device | str | None = None) -> TraceEstimate:
    """tr H ≈ mean of zᵀHz over ``samples`` seeded Rademacher probes z; stderr = std/√samples (NaN for one probe)."""
    if samples < 1:
        raise ValueError(f"samples must be positive, got {samples}")
    matvec, n, dtype, device = _bind(matvec, theta, n, dtype, device)
    gen = torch.Generator().manual_seed(seed)
    values = torch.empty(samples, dtype=torch.float64)
    for i in range(samples):
        z = (torch.randint(0, 2, (n,), generator=gen, dtype=torch.float64) * 2 - 1).to(device=device, dtype=dtype)
        values[i] = torch.dot(z.double(), matvec(z).double().reshape(n))
    stderr = float(values.std() / math.sqrt(samples)) if samples > 1 else math.nan
    return TraceEstimate(float(values.mean()), stderr)


def exact_trace(matvec: Operator, n: int | None = None, *, theta: torch.Tensor | None = None,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> float:
    """tr H as Σ eᵢᵀHeᵢ over the n unit vectors: n HVPs, for small models and checks."""
    matvec, n, dtype, device = _bind(matvec, theta, n, dtype, device)
    total = 0.0
    e = torch.zeros(n, dtype=dtype, device=device)
    for i in range(n):
        e[i] = 1.0
        total += float(matvec(e).reshape(n)[i])
        e[i] = 0.0
    return total


def directional_curvature(matvec: Operator, d: torch.Tensor, *, theta: torch.Tensor | None = None) -> float:
    """dᵀHd / ‖d‖²: the second derivative of the loss along the unit direction d/‖d‖ (one HVP)."""
    bound = isinstance(matvec, (PointOperator, SizedOperator))
    matvec, n, dtype, device = _bind(matvec, theta, d.numel(), None if bound else d.dtype, None if bound else d.device)
    d = d.detach().reshape(n).to(device=device, dtype=dtype)
    norm2 = float(torch.dot(d.double(), d.double()))
    if norm2 == 0.0:
        raise ValueError("the direction is the zero vector")
    return float(torch.dot(d.double(), matvec(d).double().reshape(n))) / norm2
