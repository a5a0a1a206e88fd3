"""Named exceptions for user errors.

Every class here describes a mistake the user can fix (a bad job file, a missing
checkpoint, an impossible grid, a wrong launch). The CLI prints such an error as
one line, ``error: <message>``, and exits with :data:`EXIT_USAGE` without a
traceback. Anything else is a bug or a system failure and aborts the job.
"""

EXIT_USAGE = 2
"""Exit status for user errors."""

EXIT_INTERRUPTED = 3
"""Exit status after SIGTERM/SIGUSR1/SIGUSR2: finished chunks are saved, the run can resume."""


class MpilandError(Exception):
    """Base class of user errors: the message names the problem and the fix."""


class SettingsError(MpilandError):
    """A setting has a bad value: a job-file key, a command-line option or a Python argument."""


class JobFileError(SettingsError):
    """The job file is missing, is not valid TOML, or a key has a bad value."""


class ModelError(MpilandError):
    """The model factory cannot be imported or called, or its output is not a module."""


class CheckpointError(MpilandError):
    """The checkpoint is missing, unreadable, or does not match the model's keys and shapes."""


class DataError(MpilandError):
    """The data set cannot be built or has an unusable shape."""


class GridError(MpilandError):
    """The grid is empty or its ranges are reversed."""


class SurfaceFileError(MpilandError):
    """The surface file cannot be used: other job, newer schema, or not a surface file."""


class LaunchError(MpilandError):
    """The processes were launched wrongly (e.g. singletons under srun without PMI)."""


class WorldTooSmallError(LaunchError):
    """The job needs more ranks than were launched."""


class DeviceMemoryError(SettingsError):
    """The job cannot fit the device's (or host's) free memory; the message names what to lower."""


class MetricError(MpilandError):
    """A user loss or metric cannot be used: wrong output shape, not a number, or it raised."""


class DependencyError(MpilandError):
    """A feature needs an optional package that is not installed (the message names the pip command)."""
