"""Linear algebra on a symmetric operator given only as v ↦ A·v: Lanczos, extreme eigenpairs, traces.

Nothing here knows about models: the routines take a :class:`HessianOperator`
with θ, a :class:`BoundHessian` (``operator.at(theta)``), or any callable v ↦ A·v
of a symmetric A with its size n. Tridiagonal maths is in float64; random vectors
come from a seeded CPU generator, so every device starts from the same vectors.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .operator import BoundHessian, HessianOperator, MatVec

log = logging.getLogger("mpiland")

FLOOR = 1e-2
"""Ritz values smaller than this fraction of the spectral radius are judged on an absolute scale."""
BREAKDOWN = 100.0
"""A Lanczos residual below BREAKDOWN · eps(dtype) · ‖T‖ is treated as an exact invariant subspace."""
EXTREMES = "extremes"
LARGEST = "largest"

Operator = HessianOperator | MatVec
"""What the routines accept: an operator (with θ), a bound operator, or a plain matvec callable."""


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




def _bind(op: Operator, theta: torch.Tensor | None, n: int | None, dtype: torch.dtype | None,
          device: torch.device | str | None) -> tuple[MatVec, int, torch.dtype, torch.device]:
    """(matvec, n, dtype, device) for an operator with θ, a bound operator, or a plain callable with n."""
    if isinstance(op, HessianOperator):
        if theta is None:
            raise ValueError("theta is needed with a HessianOperator (or pass operator.at(theta))")
        op = op.at(theta)
    elif theta is not None:
        raise ValueError("theta is only used with a HessianOperator")
    if isinstance(op, BoundHessian):
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


def lanczos(matvec: MatVec, n: int, k_iter: int, tol: float = 1e-3, seed: int = 0, dtype: torch.dtype = torch.float64,
            device: torch.device | str | None = None, *, which: str = EXTREMES, k: int = 2,
            floor: float = FLOOR) -> LanczosResult:
    """Lanczos with full reorthogonalisation on a symmetric A given by ``matvec``, at most ``min(k_iter, n)`` steps.

    The Krylov basis is stored in ``dtype`` on ``device`` (the HVP's precision);
    α, β and T's eigenproblem are float64 on the CPU. Stops early when
    ``which="extremes"``: the largest and smallest Ritz values each moved by at
    most tol·max(|θ|, floor·ρ) in the last step (ρ: the largest |Ritz value|);
    ``which="largest"``: the k largest Ritz pairs have residual norms at most
    tol·max(|θ|, floor·ρ). A breakdown (β ≈ 0: the Krylov space is invariant)
    restarts from a seeded random vector orthogonal to the basis, so repeated
    eigenvalues and a zero operator are handled; after n steps the result is exact.
    A breakdown step never ends a ``largest`` run: the invariant space holds one
    vector per distinct eigenvalue, and a repeated top eigenvalue needs the restart.
    """
    if n < 1 or k_iter < 1:
        raise ValueError(f"n and k_iter must be positive, got n = {n}, k_iter = {k_iter}")
    if which not in (EXTREMES, LARGEST):
        raise ValueError(f"which must be {EXTREMES!r} or {LARGEST!r}, got {which!r}")
    if which == LARGEST and not 1 <= k <= min(n, k_iter):
        raise ValueError(f"k must be between 1 and min(n, k_iter) = {min(n, k_iter)}, got {k}")
    device = torch.device(device if device is not None else "cpu")
    steps = min(k_iter, n)
    gen = torch.Generator().manual_seed(seed)
    basis = torch.empty(min(steps, 16), n, dtype=dtype, device=device)
    q = _random_unit(gen, n, dtype, device)
    alpha: list[float] = []
    beta: list[float] = []
    previous: tuple[float, float] | None = None
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
        values, s = torch.linalg.eigh(_tridiagonal(alpha, beta))
        rho = float(values.abs().max())
        if which == EXTREMES:
            lo, hi = float(values[0]), float(values[-1])
            converged = previous is not None and (_within(hi - previous[1], hi, floor * rho, tol)
                                                  and _within(lo - previous[0], lo, floor * rho, tol))
            previous = (lo, hi)
        elif j + 1 >= k:
            top = torch.argsort(values, descending=True)[:k]
            converged = all(_within(residual * float(s[-1, i]), float(values[i]), floor * rho, tol) for i in top)
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


def extreme_eigenvalues(op: Operator, theta: torch.Tensor | None = None, n: int | None = None, *, tol: float = 1e-3,
                        max_iter: int = 100, seed: int = 0, floor: float = FLOOR, dtype: torch.dtype | None = None,
                        device: torch.device | str | None = None) -> ExtremeEigenvalues:
    """λmax and the algebraically smallest λmin (negative at a saddle) by one Lanczos run.

    Stops when both Ritz values change by at most tol relative (see :func:`lanczos`)
    or after ``max_iter`` HVPs; ``converged`` says which. Deterministic for a seed.
    """
    matvec, n, dtype, device = _bind(op, theta, n, dtype, device)
    result = lanczos(matvec, n, max_iter, tol, seed, dtype, device, which=EXTREMES, floor=floor)
    values = result.ritz_values()
    return ExtremeEigenvalues(float(values[-1]), float(values[0]), result.iterations, result.converged)


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
    bound = isinstance(matvec, (HessianOperator, BoundHessian))
    matvec, n, dtype, device = _bind(matvec, theta, d.numel(), None if bound else d.dtype, None if bound else d.device)
    d = d.detach().reshape(n).to(device=device, dtype=dtype)
    norm2 = float(torch.dot(d.double(), d.double()))
    if norm2 == 0.0:
        raise ValueError("the direction is the zero vector")
    return float(torch.dot(d.double(), matvec(d).double().reshape(n))) / norm2
