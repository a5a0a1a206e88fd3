"""Names of the surface file's datasets and attributes (docs/schema.md), in one place."""

from __future__ import annotations

XCOORDS, YCOORDS = "xcoordinates", "ycoordinates"
DONE, SECONDS = "done", "seconds"
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
