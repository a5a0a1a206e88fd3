"""Numbers about a finished landscape, computed from its surface file (torch-free).

:mod:`.measures` holds the measures (loss barrier, flatness, the derived
attributes a finished run stores) and is re-exported here; :mod:`.summary`
turns a file into the ``mpiland info`` report and is imported on its own, so
that plotting, which needs only the measures, does not load the summary code.
"""

from __future__ import annotations

from .measures import (DEFAULT_EPSILON, barrier, derived_attributes, flatness, flatness_at_centres, flatness_centres,
                       path_barrier, store_derived)

__all__ = ["DEFAULT_EPSILON", "barrier", "derived_attributes", "flatness", "flatness_at_centres", "flatness_centres",
           "path_barrier", "store_derived"]
