"""Test harness: a real one-node SLURM cluster started on this host (see :mod:`.harness`)."""

from .harness import (
    APT_PACKAGES,
    CPUS,
    MARKER_VAR,
    PARTITION,
    ClusterError,
    SlurmCluster,
    find_binary,
    unavailable_reason,
)

__all__ = [
    "APT_PACKAGES",
    "CPUS",
    "MARKER_VAR",
    "PARTITION",
    "ClusterError",
    "SlurmCluster",
    "find_binary",
    "unavailable_reason",
]
