"""Curvature of the loss at a point given as a flat parameter vector: Hessian-vector products, eigenvalues, traces.

Everything here works on a model whose parameters are described by a
:class:`~mpiland.directions.ParamLayout`, at a point θ given as one flat vector,
so the engine can call it at every grid point without copying the model:

- :class:`HessianOperator` gives H(θ)·v of the mean loss over resident batches
  (double backward through ``torch.func.functional_call``), never the Hessian.
- :func:`lanczos` (full reorthogonalisation, tridiagonal maths in float64) gives
  :func:`extreme_eigenvalues` (λmax and the algebraically smallest λmin) and
  :func:`top_eigenvectors` (the largest algebraic eigenpairs, as PyHessian uses).
- :func:`hutchinson_trace`, :func:`exact_trace` and :func:`directional_curvature`.

The routines take either a :class:`HessianOperator` with θ, a :class:`BoundHessian`
(``operator.at(theta)``), or any callable v ↦ A·v of a symmetric A with its size n.
Random vectors come from a seeded CPU generator: every device starts from the same
vectors, and a run repeats exactly for a fixed seed.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import nn
from torch.func import functional_call

from .directions import ParamLayout

log = logging.getLogger("mpiland")

MatVec = Callable[[torch.Tensor], torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

FLOOR = 1e-2
"""Ritz values smaller than this fraction of the spectral radius are judged on an absolute scale."""
BREAKDOWN = 100.0
"""A Lanczos residual below BREAKDOWN · eps(dtype) · ‖T‖ is treated as an exact invariant subspace."""
EXTREMES = "extremes"
LARGEST = "largest"


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


@dataclass
class _Graph:
    """One batch's gradient at the cached θ, with the graph that differentiates it once more."""

    loss: torch.Tensor
    grad: torch.Tensor
    nbytes: int


@contextmanager
def _eval_mode(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Run the modules with ``training`` off and switch it back on afterwards where it was on."""
    training = [m for m in modules if m.training]
    for m in training:
        m.training = False
    try:
        yield
    finally:
        for m in training:
            m.training = True


class HessianOperator:
    """H(θ)·v of the mean loss of ``model`` over ``batches``, for θ given as a flat vector.

    The model runs through ``torch.func.functional_call`` with parameter views of θ
    and (copies, when cast, of) its buffers, in eval mode (BatchNorm running
    statistics, no dropout): its parameters, buffers and training flags are left
    as they were. Batches are weighted by their sample counts: a built-in loss
    returns per-sample losses, a user loss may return the batch mean; either way
    the batch's mean loss counts ``len(batch) / samples``.

    HVPs are double backward (reverse over reverse): measured faster on CPU than
    forward-over-reverse ``jvp(grad(f))`` (trained digits MLP 2.0 vs 4.0 ms,
    digits CNN 17.7 vs 24.8 ms per HVP over 359 samples, float32, 2 threads).
    The gradient graph of each batch is kept for the current θ while it fits
    ``cache_mb``, so repeated HVPs at one point (Lanczos, Hutchinson) cost one
    backward pass each instead of forward + backward + backward (1.0 and 10.1 ms
    above); a change of θ's values, or :meth:`clear_cache`, frees it.

    ``dtype=torch.float64`` evaluates in double precision without touching the
    caller's model: θ, the inputs and floating buffers are cast copies (the data
    costs twice its float32 memory) and each HVP is about 1.5× (MLP) to 4–5× (CNN)
    slower on a CPU, far more on GPUs with slow float64 arithmetic.
    """

    def __init__(self, model: nn.Module, layout: ParamLayout, batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                 loss_fn: LossFn, dtype: torch.dtype = torch.float32, *, cache_mb: float = 512.0) -> None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if layout != ParamLayout.from_model(model):
            raise ValueError("the layout does not describe this model's parameters (names or shapes differ)")
        if not batches:
            raise ValueError("at least one batch is needed")
        self.model = model
        self._submodules = list(model.modules())
        self.layout = layout
        self.loss_fn = loss_fn
        self.dtype = dtype
        self.device = batches[0][0].device
        with torch.inference_mode(False):
            self.batches = [(self._cast(x), self._cast(y)) for x, y in batches]
            self.buffers = {name: self._cast(b) for name, b in model.named_buffers()}
        self.samples = sum(int(x.shape[0]) for x, _ in self.batches)
        self.cache_bytes = int(cache_mb * 2**20)
        self.hvps = 0
        self._key: torch.Tensor | None = None
        self._leaf: torch.Tensor | None = None
        self._graphs: dict[int, _Graph] = {}
        self._cached = 0

    @property
    def n(self) -> int:
        """Number of parameters (the size of θ and of the Hessian)."""
        return self.layout.numel

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the device, in the operator's dtype when floating, never an inference tensor (autograd saves it)."""
        dtype = self.dtype if t.is_floating_point() else t.dtype
        if t.dtype != dtype or t.device != self.device:
            return t.to(device=self.device, dtype=dtype)
        return t.clone() if t.is_inference() else t

    def at(self, theta: torch.Tensor) -> BoundHessian:
        """v ↦ H(θ)·v at a fixed θ, for the Lanczos and trace routines."""
        return BoundHessian(self, theta)

    def clear_cache(self) -> None:
        """Free the gradient graphs kept for the current θ."""
        self._graphs.clear()
        self._cached = 0
        self._key = None
        self._leaf = None

    @contextmanager
    def _autograd(self) -> Iterator[None]:
        with torch.inference_mode(False), torch.enable_grad(), _eval_mode(self._submodules):
            yield

    def _point(self, theta: torch.Tensor) -> torch.Tensor:
        """The leaf that stands for θ; a θ other than the last one drops the cached graphs."""
        if theta.shape != (self.n,):
            raise ValueError(f"theta must be a flat vector of {self.n} parameters, got shape {tuple(theta.shape)}")
        key = self._key
        same = (key is not None and key.dtype == theta.dtype and key.device == theta.device
                and torch.equal(key, theta))
        if not same or self._leaf is None:
            self.clear_cache()
            self._key = theta.detach().clone()
            self._leaf = self._key.to(device=self.device, dtype=self.dtype).detach().requires_grad_(True)
        assert self._leaf is not None
        return self._leaf

    def _batch_loss(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss weighted by its share of all samples."""
        params = dict(zip(self.layout.names, self.layout.views(theta)))
        out = functional_call(self.model, (params, self.buffers), (x,))
        return self.loss_fn(out, y).mean() * (x.shape[0] / self.samples)

    def _graph(self, i: int, leaf: torch.Tensor) -> _Graph:
        """Batch ``i``'s weighted loss and gradient with its graph; kept while the cache budget allows."""
        cached = self._graphs.get(i)
        if cached is not None:
            return cached
        x, y = self.batches[i]
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        measure = self._cached < self.cache_bytes
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t) if measure else nullcontext()
        with hooks:
            loss = self._batch_loss(leaf, x, y)
            (grad,) = torch.autograd.grad(loss, leaf, create_graph=True, allow_unused=True)
        if grad is None:
            grad = torch.zeros_like(leaf, requires_grad=False)
        for t in (x, leaf):
            storages.pop(t.untyped_storage().data_ptr(), None)
        graph = _Graph(loss, grad, sum(storages.values()) + grad.nbytes)
        if measure and self._cached + graph.nbytes <= self.cache_bytes:
            self._graphs[i] = graph
            self._cached += graph.nbytes
        return graph

    def matvec(self, theta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """H(θ)·v of the mean loss over all samples, in the operator's dtype; one HVP."""
        with self._autograd():
            leaf = self._point(theta)
            v = v.detach().to(device=self.device, dtype=self.dtype)
            if v.shape != leaf.shape:
                raise ValueError(f"v must have shape {tuple(leaf.shape)}, got {tuple(v.shape)}")
            out = torch.zeros_like(v)
            for i in range(len(self.batches)):
                graph = self._graph(i, leaf)
                if graph.grad.requires_grad:
                    (hv,) = torch.autograd.grad(graph.grad, leaf, v, retain_graph=i in self._graphs,
                                                allow_unused=True)
                    if hv is not None:
                        out += hv
        self.hvps += 1
        return out

    def loss_and_grad(self, theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Mean loss and its gradient at θ (free after HVPs at the same θ whose graphs are cached)."""
        with self._autograd():
            leaf = self._point(theta)
            loss = 0.0
            grad = torch.zeros_like(leaf, requires_grad=False)
            for i in range(len(self.batches)):
                graph = self._graph(i, leaf)
                loss += float(graph.loss.detach())
                grad += graph.grad.detach()
        return loss, grad


@dataclass(frozen=True)
class BoundHessian:
    """v ↦ H(θ)·v at a fixed θ, with the size, dtype and device the routines below need."""

    operator: HessianOperator
    theta: torch.Tensor

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.operator.matvec(self.theta, v)

    @property
    def n(self) -> int:
        return self.operator.n

    @property
    def dtype(self) -> torch.dtype:
        return self.operator.dtype

    @property
    def device(self) -> torch.device:
        return self.operator.device


Curvature = HessianOperator | MatVec


def _bind(op: Curvature, theta: torch.Tensor | None, n: int | None, dtype: torch.dtype | None,
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


def extreme_eigenvalues(op: Curvature, theta: torch.Tensor | None = None, n: int | None = None, *, tol: float = 1e-3,
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


def top_eigenvectors(matvec: Curvature, n: int | None = None, k: int = 2, *, theta: torch.Tensor | None = None,
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


def hutchinson_trace(matvec: Curvature, n: int | None = None, samples: int = 100, seed: int = 0, *,
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


def exact_trace(matvec: Curvature, n: int | None = None, *, theta: torch.Tensor | None = None,
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


def directional_curvature(matvec: Curvature, d: torch.Tensor, *, theta: torch.Tensor | None = None) -> float:
    """dᵀHd / ‖d‖²: the second derivative of the loss along the unit direction d/‖d‖ (one HVP)."""
    bound = isinstance(matvec, (HessianOperator, BoundHessian))
    matvec, n, dtype, device = _bind(matvec, theta, d.numel(), None if bound else d.dtype, None if bound else d.device)
    d = d.detach().reshape(n).to(device=device, dtype=dtype)
    norm2 = float(torch.dot(d.double(), d.double()))
    if norm2 == 0.0:
        raise ValueError("the direction is the zero vector")
    return float(torch.dot(d.double(), matvec(d).double().reshape(n))) / norm2
