"""mpiland: distributed loss-landscape evaluation for PyTorch models.

The Python API, in one screen::

    import mpiland as ml
    d = ml.directions.random(model, seed=0)                    # or interpolation(a, b), plane, pca, hessian, ...
    surf = ml.landscape(model, d, data={"test": loader}, x=(-1, 1, 51), y=(-1, 1, 51), out="surf.h5")
    surf.plot("contour"); surf.flatness(); surf.to_xarray()
    surf = ml.open("surf.h5")                                  # the same Surface, read from a file

Names load on first use: ``import mpiland`` itself imports neither torch nor
h5py, so ``ml.open`` and plotting stay quick; ``ml.landscape`` and
``ml.directions`` bring in torch when they are first touched. User errors are the
:mod:`mpiland.errors` classes, all subclasses of :class:`MpilandError`.

Imported before torch on a busy machine, mpiland sets ``OMP_WAIT_POLICY=PASSIVE``
unless the environment already sets ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` or
``KMP_BLOCKTIME``: torch's idle OpenMP threads then sleep instead of spinning on
cores other processes need, which would make every point many times slower. On
an idle machine it keeps the runtime's default (spinning is faster there).
Imported after torch it changes nothing (the OpenMP runtime has read its
environment already); see :func:`mpiland.launch.choose_wait_policy`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (CheckpointError, DataError, DependencyError, DeviceMemoryError, GridError, JobFileError,
                     LaunchError, MetricError, ModelError, MpilandError, SettingsError, SurfaceFileError, WorldTooSmallError)
from .launch import choose_wait_policy as _choose_wait_policy
from .version import SCHEMA_VERSION, __version__

_choose_wait_policy()  # before anything imports torch: its OpenMP runtime reads the policy only once

if TYPE_CHECKING:
    from . import directions
    from .api import connect, landscape
    from .rebasin import align
    from .result import Surface, open, plot_surfaces

_LAZY = {"landscape": ("mpiland.api", "landscape"), "connect": ("mpiland.api", "connect"),
         "align": ("mpiland.rebasin", "align"),
         "open": ("mpiland.result", "open"), "plot_surfaces": ("mpiland.result", "plot_surfaces"),
         "Surface": ("mpiland.result", "Surface"), "directions": ("mpiland.directions", "")}
"""Public name -> (module, attribute; "" for the module itself), imported on first access."""

__all__ = ["SCHEMA_VERSION", "CheckpointError", "DataError", "DependencyError", "DeviceMemoryError", "GridError", "JobFileError",
           "LaunchError", "MetricError", "ModelError", "MpilandError", "SettingsError", "Surface",
           "SurfaceFileError", "WorldTooSmallError", "__version__", "align", "connect", "directions", "landscape",
           "open", "plot_surfaces"]


def __getattr__(name: str) -> Any:
    """Import a public name of :data:`_LAZY` when it is first used."""
    if name not in _LAZY:
        raise AttributeError(f"module 'mpiland' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    if attribute:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
