"""The surface file: schema names, the writer, the reader and the file's identity (docs/schema.md).

Torch-free: nothing here imports torch at module level, so reading and
plotting a surface needs only h5py and numpy.
"""

from __future__ import annotations

from .. import SCHEMA_VERSION
from .writer import SurfaceWriter, check_existing, create, read_done, read_points_per_pass

__all__ = ["SCHEMA_VERSION", "SurfaceWriter", "check_existing", "create", "read_done", "read_points_per_pass"]
