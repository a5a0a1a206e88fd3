"""Figures of surface files: a curve for 1D files; contours, heatmaps and 3D surfaces for 2D.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the
non-interactive Agg canvas (PNG) or the PDF/SVG canvases; pyplot is not used,
so plotting needs no display, leaves no open figures behind and does not change
the backend of a program (or notebook) that imports this package.

Points not computed yet are left blank, and so are computed points whose value
is ±inf or NaN (divergent); points adaptive refinement skipped are filled by
linear interpolation from the measured ones (:func:`drawn_values`), and no
marker claims a measurement there. Contour levels and colours of a loss are
log-spaced by default, from the minimum to the maximum (or a robust top when a
few divergent values lie far above the rest), so the basin shows; ``log``,
``vmin``/``vmax``/``levels`` and (3D) ``zmax`` override them (:mod:`.scales`).
Contour labels are placed so that they overlap neither each other nor the marked
points (:mod:`.labels`); legends sit below the axes, outside the data. Several
files draw together (:func:`plot_surfaces`): 1D curves overlaid, 2D surfaces as
panels on one colour scale. ``style="paper"`` draws one-column figures (3.3 in,
8 pt text, thin lines) in a matplotlib ``rc_context``, as vector PDF by default.

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

from .common import COLOURS, FORMATS, STYLES, drawn_values, style_context
from .spectrum import draw_spectrum
from .surface import (KINDS, KINDS_1D, KINDS_2D, KINDS_SPECTRUM, plot_surface, plot_surfaces, render,
                      render_many)
from .trajectory import andrews_curves, plot_trajectory, trajectory_figures

__all__ = ["COLOURS", "FORMATS", "KINDS", "KINDS_1D", "KINDS_2D", "KINDS_SPECTRUM", "STYLES", "andrews_curves",
           "draw_spectrum", "drawn_values", "plot_surface", "plot_surfaces", "plot_trajectory", "render",
           "render_many", "style_context", "trajectory_figures"]
