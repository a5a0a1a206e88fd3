"""Names of the surface file's datasets and attributes (docs/schema.md), in one place."""

from __future__ import annotations

XCOORDS, YCOORDS = "xcoordinates", "ycoordinates"
DONE, SECONDS = "done", "seconds"
DIM_X, DIM_Y, DIM_T = "x", "y", "t"
DIMENSIONS = (DIM_X, DIM_Y, DIM_T)
"""The netCDF-4 dimension-scale datasets at the root (schema 2; ``t``: a 1D path between two models)."""
DIRECTIONS, MODELS, TRAJECTORY = "directions", "models", "trajectory"

ATTR_SCHEMA = "mpiland_schema"
ATTR_VERSION = "mpiland_version"
ATTR_CREATED = "created"
ATTR_FINGERPRINT = "fingerprint"
ATTR_METRICS = "metrics"
ATTR_PPP = "points_per_pass"
ATTR_PPP_HISTORY = "points_per_pass_history"
ATTR_THREADS = "threads"
ATTR_THREADS_HISTORY = "threads_history"
ATTR_SETTINGS = "identity_settings"
ATTR_CODE = "identity_code"
DIGEST_PREFIX = "digest_"
COMPONENTS = ("settings", "code", "checkpoints", "data", "origin", "directions")
"""The identity components, each stored as ``digest_<component>`` (in the order a refusal names them)."""


def data_attr(split: str) -> str:
    """The attribute holding one split's data digest: ``digest_data_<split>``."""
    return f"{DIGEST_PREFIX}data_{split}"

SPECTRUM = "spectrum"
"""Group of the Hessian eigenvalue spectra (docs/schema.md); also the key under which the engine's origin
curvature hands them to :func:`~mpiland.surface.writer.create` (they are not root attributes)."""
SPECTRUM_ORIGIN = "origin"
"""The subgroup of the spectrum at the origin; the spectra at a path's models are :func:`spectrum_model`."""
SPECTRUM_ARRAYS = ("nodes", "weights", "grid", "density", "top", "group_max", "group_min", "group_size")
"""The datasets of each spectrum subgroup."""


def spectrum_model(i: int) -> str:
    """The subgroup of the spectrum at model ``i`` of ``models/`` (``model_<i>``, in the models' order)."""
    return f"model_{i}"
