"""Curvature of the loss: Hessian-vector products (:mod:`.operator`), Lanczos and traces
(:mod:`.linalg`, operator-agnostic), and curvature at every grid point (:mod:`.grid`)."""

from __future__ import annotations

from .grid import Curvature, axis_labels, hessian_batches, metric_names
from .linalg import (BREAKDOWN, EXTREMES, FLOOR, LARGEST, EigenPairs, ExtremeEigenvalues, LanczosResult, MatVec,
                     Operator, PointOperator, Restricted, SizedOperator, TraceEstimate, directional_curvature,
                     exact_trace, extreme_eigenvalues, hutchinson_trace, lanczos, top_eigenvectors)
from .operator import BoundHessian, HessianOperator

__all__ = ["BREAKDOWN", "EXTREMES", "FLOOR", "LARGEST", "BoundHessian", "Curvature", "EigenPairs",
           "ExtremeEigenvalues", "HessianOperator", "LanczosResult", "MatVec", "Operator", "PointOperator",
           "Restricted", "SizedOperator", "TraceEstimate", "axis_labels",
           "directional_curvature", "exact_trace", "extreme_eigenvalues", "hessian_batches", "hutchinson_trace",
           "lanczos", "metric_names", "top_eigenvectors"]
