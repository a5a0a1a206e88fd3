"""The Hessian eigenvalue spectrum of a surface file (``hessian.spectrum``): ``plot --kind spectrum``.

Two panels: the smoothed eigenvalue density on a logarithmic axis (as Ghorbani et
al. 2019 and PyHessian draw it, so the few large outliers show beside the bulk
near zero), one curve per point of the file's ``spectrum/`` group (the origin and,
with ``"models"``, each model of the path), with the top eigenvalues marked by
dotted lines (a model at the origin is drawn once, for both); and λmax of each
parameter group's Hessian block as horizontal bars, grouped by point.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..errors import SurfaceFileError
from ..surface.reader import Spectrum, Surface

KIND = "spectrum"
"""The plot kind of this module."""

FLOOR = 1e-7
"""Densities below this fraction of the highest peak are drawn at it (the logarithmic axis's floor)."""


def require_spectrum(surface: Surface) -> dict[str, Spectrum]:
    """The file's spectra (subgroup -> :class:`Spectrum`), else SurfaceFileError."""
    if not surface.spectrum:
        raise SurfaceFileError(f"{surface.path}: has no Hessian spectrum to plot; run its job with "
                               'hessian.spectrum = "origin" (or "models" on a path) to store one')
    return surface.spectrum


def _points(spectra: dict[str, Spectrum]) -> dict[str, tuple[str, Spectrum]]:
    """Subgroup -> (legend label, spectrum); a model at the origin stands for it (their numbers are the same)."""
    at_origin = [name for name, s in spectra.items() if name != "origin" and not np.any(s.coordinates)]
    out: dict[str, tuple[str, Spectrum]] = {}
    for name, s in spectra.items():
        if name == "origin" and at_origin:
            continue
        label = "origin" if name == "origin" else f"model {s.label}"
        out[name] = (f"{label} (origin)" if name in at_origin else label, s)
    return out


def draw_spectrum(fig: Figure, surface: Surface) -> None:
    """Draw the density panel and the per-group λmax panel of ``surface``'s spectra on ``fig``."""
    spectra = _points(require_spectrum(surface))
    grid = fig.add_gridspec(1, 2, width_ratios=(3, 2), wspace=0.45)
    ax, bars = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    peak = max(float(np.max(s.density)) for _, s in spectra.values())
    floor = peak * FLOOR if peak > 0 else FLOOR
    first = next(iter(spectra.values()))[1]
    for i, (label, s) in enumerate(spectra.values()):
        colour = f"C{i % 10}"
        ax.semilogy(s.grid, np.maximum(s.density, floor), color=colour, lw=1.4,
                    label=f"{label}: λmax {s.lam_max:.4g}, σ {s.width:.2g}")
        for j, value in enumerate(s.top):
            ax.axvline(float(value), color=colour, ls=":", lw=0.9, alpha=0.8,
                       label=f"top {s.top.size} eigenvalues" if j == 0 and i == 0 else None)
    ax.set_ylim(floor, peak * 3)
    ax.set_xlabel("eigenvalue λ")
    ax.set_ylabel("density ρ(λ) (log scale)")
    ax.set_title(f"Hessian eigenvalue density on {first.split}\n({first.probes} probes × {first.steps} Lanczos "
                 f"steps, n = {first.n:,} parameters)", fontsize="medium")
    ax.legend(loc="upper right", fontsize="small", framealpha=0.8)
    names = first.groups
    if names:
        height = 0.8 / len(spectra)
        y = np.arange(len(names))
        for i, (label, s) in enumerate(spectra.values()):
            values = [s.group_lam_max().get(g, np.nan) for g in names]
            bars.barh(y - 0.4 + height * (i + 0.5), values, height=height, color=f"C{i % 10}", label=label)
        bars.set_yticks(y, [f"{g} ({int(k):,})" for g, k in zip(names, first.group_size)], fontsize="small")
        bars.invert_yaxis()
        bars.axvline(0.0, color="black", lw=0.6)
        if len(spectra) > 1:
            bars.legend(loc="lower right", fontsize="small", framealpha=0.8)
    else:
        bars.text(0.5, 0.5, "no parameter groups", ha="center", va="center", transform=bars.transAxes)
    bars.set_xlabel("λmax of the group's Hessian block")
    bars.set_title("λmax per parameter group\n(module, parameters)", fontsize="medium")
    if surface.name:
        fig.suptitle(surface.name, fontsize="medium")
