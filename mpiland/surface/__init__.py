"""The surface file: schema names, the writer, the reader and the file's identity (docs/schema.md).

Torch-free: nothing here imports torch at module level, so reading and
plotting a surface needs only h5py and numpy. ``names`` holds the dataset and
attribute names, ``writer`` creates and fills a file, ``identity`` decides which
file belongs to which job (resume, create or refuse), ``lock`` keeps one run per
output, ``storage`` picks the writer the file system allows and checks the grid
fits, and ``reader`` loads a file for analysis and plots.
"""

from __future__ import annotations

from ..version import SCHEMA_VERSION
from .identity import Identity, decide, job_identity, open_surface, settings_that_count
from .lock import release as release_output
from .names import (ATTR_FINGERPRINT, ATTR_METRICS, ATTR_PPP, ATTR_PPP_HISTORY, ATTR_SCHEMA, ATTR_SETTINGS,
                    COMPONENTS, DIGEST_PREFIX, DONE, SECONDS, XCOORDS, YCOORDS)
from .storage import choose_writer, mpio_safe
from .writer import MARK_SECONDS, SurfaceWriter, create, open_writer, read_done, read_points_per_pass

__all__ = ["SCHEMA_VERSION", "ATTR_FINGERPRINT", "ATTR_METRICS", "ATTR_PPP", "ATTR_PPP_HISTORY", "ATTR_SCHEMA",
           "ATTR_SETTINGS", "COMPONENTS", "DIGEST_PREFIX", "DONE", "SECONDS", "XCOORDS", "YCOORDS", "Identity",
           "MARK_SECONDS", "SurfaceWriter", "choose_writer", "create", "decide", "job_identity", "mpio_safe",
           "open_surface", "open_writer", "read_done", "read_points_per_pass", "release_output",
           "settings_that_count"]
