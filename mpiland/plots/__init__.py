"""Figures of surface files: a curve for 1D files; contours, heatmaps and 3D surfaces for 2D.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the
non-interactive Agg canvas (PNG) or the PDF/SVG canvases; pyplot is not used,
so plotting needs no display, leaves no open figures behind and does not change
the backend of a program (or notebook) that imports this package.

Points not computed yet are left blank, and so are computed points whose value
is ±inf or NaN (divergent). Colour limits and contour levels default to a
robust range around the basin, so a few huge values at the edge of the grid do
not flatten the picture; ``vmin``/``vmax``/``levels`` override them
(:mod:`.scales`).

What the file knows is drawn without being asked: the reference models
(``models/``), a projected training trajectory (``trajectory/``, with the
explained variance in the axis labels), and on 1D curves the straight-line
comparison (``line_*`` metrics, dashed) and the loss barrier between the end
models (:mod:`.curve`). :func:`plot_trajectory` draws a training trajectory on
its own (PCA path, Andrews curves, radar chart; :mod:`.trajectory`). A file with a
Hessian spectrum (``hessian.spectrum``) also has the kind ``spectrum``: the
eigenvalue density on a log scale with the top eigenvalues marked, and λmax per
parameter group (:mod:`.spectrum`).

Plotting reads files with :mod:`mpiland.surface.reader` and takes its numbers
from :mod:`mpiland.analysis.measures`; it never imports the ``info`` summary.
"""

from __future__ import annotations

from .common import FORMATS
from .spectrum import draw_spectrum
from .surface import KINDS, KINDS_1D, KINDS_2D, KINDS_SPECTRUM, plot_surface, render
from .trajectory import andrews_curves, plot_trajectory, trajectory_figures

__all__ = ["FORMATS", "KINDS", "KINDS_1D", "KINDS_2D", "KINDS_SPECTRUM", "andrews_curves", "draw_spectrum",
           "plot_surface", "plot_trajectory", "render", "trajectory_figures"]
