"""Test harness: a real one-node SLURM cluster started on this host (see :mod:`.harness`), and a multi-node one
whose compute nodes are network namespaces (see :mod:`.netns`)."""

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
from .netns import MultiNodeCluster, netns_unavailable_reason

__all__ = [
    "APT_PACKAGES",
    "CPUS",
    "MARKER_VAR",
    "PARTITION",
    "ClusterError",
    "MultiNodeCluster",
    "SlurmCluster",
    "find_binary",
    "netns_unavailable_reason",
    "unavailable_reason",
]
