"""Curvature of the loss: Hessian-vector products (:mod:`.operator`), Lanczos and traces
(:mod:`.linalg`, operator-agnostic), the eigenvalue density by stochastic Lanczos quadrature
(:mod:`.spectrum`), and curvature at every grid point (:mod:`.grid`)."""

from __future__ import annotations

from .grid import PROBE_SEED_OFFSET, WARM_START, Curvature, axis_labels, hessian_batches, metric_names
from .linalg import (BREAKDOWN, EXTREMES, FIXED, FLOOR, LARGEST, WARM_PER_END, EigenPairs, ExtremeEigenvalues,
                     LanczosResult, MatVec, Operator, PointOperator, Restricted, SizedOperator, TraceEstimate,
                     directional_curvature, exact_trace, extreme_eigenpairs, extreme_eigenvalues, hutchinson_trace,
                     lanczos, start_from, top_eigenvectors, warm_start)
from .operator import BoundHessian, HessianOperator
from .spectrum import (GAUSSIAN, RADEMACHER, Density, GroupCurvature, HessianSpectrum, Quadrature, group_extremes,
                       hessian_spectrum, lanczos_quadrature, module_groups, probe_vectors, smoothed_density,
                       top_eigenvalues)

__all__ = ["BREAKDOWN", "EXTREMES", "FIXED", "FLOOR", "GAUSSIAN", "LARGEST", "PROBE_SEED_OFFSET",
           "RADEMACHER", "WARM_PER_END", "WARM_START", "BoundHessian", "Curvature", "Density", "EigenPairs",
           "ExtremeEigenvalues", "GroupCurvature", "HessianOperator", "HessianSpectrum", "LanczosResult",
           "MatVec", "Operator", "PointOperator", "Quadrature", "Restricted", "SizedOperator",
           "TraceEstimate", "axis_labels", "directional_curvature", "exact_trace", "extreme_eigenpairs",
           "extreme_eigenvalues", "group_extremes", "hessian_batches", "hessian_spectrum", "hutchinson_trace",
           "lanczos", "lanczos_quadrature", "metric_names", "module_groups", "probe_vectors",
           "smoothed_density", "start_from", "top_eigenvalues", "top_eigenvectors", "warm_start"]
