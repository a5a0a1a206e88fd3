"""The package version and the surface-file schema version (importing this loads nothing else)."""

__version__ = "0.1.0"

SCHEMA_VERSION = 2
"""Version of the surface-file layout (docs/schema.md) this mpiland writes and reads."""
