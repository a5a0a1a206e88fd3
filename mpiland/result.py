"""The surface of the Python API: ``surf = mpiland.open("surf.h5")``, then ``surf.plot()``.

:class:`Surface` is the torch-free reader's :class:`mpiland.surface.reader.Surface`
(every field and helper of it: ``x``, ``y``, ``metrics``, ``done``, ``values(m)``,
...) with the methods a notebook wants: :meth:`~Surface.plot` (a matplotlib
Figure, drawn by :mod:`mpiland.plots` without pyplot), :meth:`~Surface.barrier`
and :meth:`~Surface.flatness` (:mod:`mpiland.analysis.measures`),
:meth:`~Surface.to_xarray`, :meth:`~Surface.summary` (the ``mpiland info``
text) and a short ``repr``.

:func:`open` reads a file; :func:`from_reader` upgrades a surface the reader has
already loaded; :func:`plot_surfaces` draws several surfaces in one figure. Like
the reader, this module needs numpy, h5py and matplotlib, never torch or mpi4py,
so that looking at results is quick and works on a machine without the
evaluation stack; xarray is optional (only :meth:`~Surface.to_xarray` needs it).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np
from matplotlib.figure import Figure

from .analysis.measures import DEFAULT_EPSILON
from .analysis.measures import path_barrier as _path_barrier
from .analysis.measures import flatness as _flatness
from .analysis.summary import format_summary, summarize
from .errors import DependencyError, SurfaceFileError
from .plots.common import DEFAULT_FORMAT, check_formats, check_style
from .plots.surface import image_paths, joint_path, plan_pictures, render_many, save_figure
from .surface import reader
from .surface.netcdf import dimension_names, metric_attributes

if TYPE_CHECKING:
    import xarray

__all__ = ["Surface", "SurfaceFigure", "from_reader", "open", "plot_surfaces"]

_OneKind = Literal["auto", "curve", "contour", "contourf", "heatmap", "surface3d", "spectrum"]


class SurfaceFigure(Figure):
    """A :class:`matplotlib.figure.Figure` that shows itself as a PNG in Jupyter.

    :mod:`mpiland.plots` draws on plain Figures, outside pyplot, so that plotting
    never changes a program's backend or leaves open figures behind. IPython
    draws a plain Figure only once pyplot's inline backend has registered its
    image formatter; without pyplot a notebook would print
    ``<Figure size 700x520 with 2 Axes>``. This subclass adds the
    ``_repr_png_`` hook IPython looks for, and is otherwise the same Figure
    (``savefig``, ``axes``, ``add_subplot`` ...).
    """

    def _repr_png_(self) -> bytes:
        """The figure as PNG bytes (IPython's rich display hook)."""
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        return buf.getvalue()


def _displayable(fig: Figure) -> SurfaceFigure:
    """``fig`` as a :class:`SurfaceFigure` (same object: the subclass only adds a display hook)."""
    # render() creates the Figure itself; SurfaceFigure adds methods and no state, so
    # switching the class of the finished figure is safe.
    fig.__class__ = SurfaceFigure
    assert isinstance(fig, SurfaceFigure)
    return fig


def _attr_value(value: Any) -> Any:
    """A root attribute as plain Python (str, int, float, lists of them); None for a value to leave out."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (str, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_attr_value(v) for v in value]
        return None if any(v is None or isinstance(v, list) for v in items) else items
    return None


class Surface(reader.Surface):
    """One surface file in memory, with plotting, measures and conversion to xarray.

    Every field of :class:`mpiland.surface.reader.Surface` is here: ``path``,
    ``dims``, ``x``, ``y``, ``metrics`` (NaN where not computed), ``computed``,
    ``done``, ``seconds``, ``attrs`` (the file's root attributes), ``job``,
    ``models``, ``trajectory``, ``endpoints``, ``spectrum`` (the Hessian eigenvalue
    spectra of ``hessian.spectrum``: ``surf.spectrum["origin"].top``, ``.density``,
    ``.group_lam_max()``; None when the file has none) ..., and its helpers ``shape``,
    ``values(metric)``, ``default_metric()``. The values are a snapshot taken
    when the file was read: call :func:`open` again to see the progress of a
    running job.

    Get one with :func:`open` (``mpiland.open``) or from ``mpiland.landscape``.
    """

    def __repr__(self) -> str:
        """Name, dimensions, shape, progress, metrics and file, on one line (the arrays are left out)."""
        shape = " x ".join(str(n) for n in self.shape)
        name = f"{self.name!r}, " if self.name else ""
        metrics = ", ".join(self.metrics) or "none"
        return (f"<mpiland.Surface {name}{self.dims}D {shape}, {int(self.done.sum())}/{self.done.size} points done, "
                f"metrics: {metrics}; file {str(self.path)!r}>")

    @overload
    def plot(self, kind: _OneKind = "auto", metric: str | None = None, *, out: str | os.PathLike[str] | None = None,
             log: bool | None = None, levels: int | Sequence[float] | None = None, vmin: float | None = None,
             vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None,
             formats: Sequence[str] | None = None, zmax: float | None = None, style: str = "default",
             others: Sequence[reader.Surface | str | os.PathLike[str]] = ()) -> SurfaceFigure: ...

    @overload
    def plot(self, kind: Literal["all"], metric: str | None = None, *, out: str | os.PathLike[str] | None = None,
             log: bool | None = None, levels: int | Sequence[float] | None = None, vmin: float | None = None,
             vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None,
             formats: Sequence[str] | None = None, zmax: float | None = None, style: str = "default",
             others: Sequence[reader.Surface | str | os.PathLike[str]] = ()) -> list[SurfaceFigure]: ...

    @overload
    def plot(self, kind: str, metric: str | None = None, *, out: str | os.PathLike[str] | None = None,
             log: bool | None = None, levels: int | Sequence[float] | None = None, vmin: float | None = None,
             vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None,
             formats: Sequence[str] | None = None, zmax: float | None = None, style: str = "default",
             others: Sequence[reader.Surface | str | os.PathLike[str]] = ()) -> SurfaceFigure | list[SurfaceFigure]: ...

    def plot(self, kind: str = "auto", metric: str | None = None, *, out: str | os.PathLike[str] | None = None,
             log: bool | None = None, levels: int | Sequence[float] | None = None, vmin: float | None = None,
             vmax: float | None = None, markers: Mapping[str, tuple[float, float]] | None = None,
             formats: Sequence[str] | None = None, zmax: float | None = None, style: str = "default",
             others: Sequence[reader.Surface | str | os.PathLike[str]] = ()) -> SurfaceFigure | list[SurfaceFigure]:
        """Draw the surface and return the figure, which a notebook shows; with ``out``, save it too.

        The picture is the one ``mpiland plot`` writes (:func:`mpiland.plots.render`):
        a curve for a 1D file (every split's loss and accuracy, the straight-line
        comparison, the barrier between the end models), a contour plot for a 2D
        one, with the file's reference models and training trajectory drawn.
        pyplot is not used, so calling this does not change the backend or leave
        figures open; the result is a :class:`SurfaceFigure`, a matplotlib Figure
        that also displays itself in Jupyter.

        Parameters:
            kind: ``"auto"`` (curve for 1D, contour for 2D), ``"all"`` (one figure
                per kind valid for the file), or one of ``curve`` (1D) /
                ``contour``, ``contourf``, ``heatmap``, ``surface3d`` (2D) /
                ``spectrum`` (a file with a Hessian spectrum: its eigenvalue density
                and λmax per parameter group; the other arguments do not apply).
            metric: a dataset such as ``"test_loss"`` or ``"train_acc"``; default:
                the first ``<split>_loss`` (a 1D curve without a metric shows
                every split's loss and accuracy).
            out: also save the figure(s): a ``.png``/``.pdf``/``.svg`` path is
                written as given (with ``kind="all"`` the kind is appended to its
                stem); a directory (existing, ending in ``/``, or without suffix)
                receives ``<file stem>_<kind>_<metric>.<format>`` for each of
                ``formats``. None (the default) saves nothing.
            log: True: logarithmic loss axis, or log-spaced levels and colours; False:
                linear; None (default): log for a positive loss on contours and
                heatmaps, linear for curves and 3D surfaces.
            levels: number of contour levels, or the levels themselves (a heatmap
                then draws discrete bands, a 3D surface contour lines on its floor).
            vmin, vmax: colour limits (the y-axis limits of a curve).
            markers: labelled (x, y) points to mark (vertical lines at x on a curve).
            formats: image formats written when ``out`` is a directory (default
                png, pdf with the paper style).
            zmax: where a 3D surface is clipped (default: a robust top of the
                values, stated on its colourbar when it cuts data).
            style: ``"default"``, or ``"paper"``: a one-column figure (3.3 in wide,
                8 pt text, thin lines), drawn in a matplotlib ``rc_context``.
            others: more surfaces (or their files) drawn with this one: 1D curves
                overlaid in one axes, 2D surfaces as panels side by side on one
                colour scale with one colourbar (:func:`plot_surfaces`).

        Returns:
            One figure, or for ``kind="all"`` a list of them (one per kind).

        Raises:
            SurfaceFileError: an unknown kind or one that does not fit the file's
                dimensions (or ``spectrum`` for a file without one), a metric the
                file lacks or with nothing computed yet,
                a bad marker, or an unsupported image format or ``out`` suffix.
            SettingsError: an unknown style, an option the kind cannot use
                (``levels`` on a curve, ``zmax`` off surface3d), or ``others`` of
                other dimensions.
        """
        return _plot([self, *others], kind, metric, out=out, log=log, levels=levels, vmin=vmin, vmax=vmax,
                     markers=markers, formats=formats, zmax=zmax, style=style)

    def barrier(self, metric: str | None = None) -> dict[str, Any]:
        """The loss barrier along a 1D path between two models (linear mode connectivity).

        The barrier is the largest excess of the loss over the straight line
        between the losses of the two end models (``height`` ≤ 0: the path is
        convex, no barrier). The end models are the file's ``endpoints`` (paths
        of kind ``interpolation``, ``bezier`` or ``polychain``); asked of a 1D
        file without them (a random direction), it measures between the ends of the
        grid, which ``mpiland info`` does not report (they are no models). Points not
        computed, skipped by adaptive refinement, or not finite, are left out. The
        numbers are those of ``mpiland info`` (:func:`mpiland.analysis.measures.path_barrier`).

        Parameters:
            metric: the loss to measure, e.g. ``"train_loss"`` or
                ``"line_test_loss"``; default: the file's first loss.

        Returns:
            ``metric`` (the one used) and :func:`mpiland.analysis.measures.barrier`'s
            keys: ``height``, ``at`` (its t), ``monotonic``, ``t0``/``t1`` and
            ``loss0``/``loss1`` (the end points used), ``points`` and ``ignored``.

        Raises:
            SurfaceFileError: the surface is 2D, the metric is not in the file, or
                fewer than two finite values lie between the end models.
        """
        if self.dims != 1:
            raise SurfaceFileError(f"{self.path}: barrier() needs a 1D path between two models, "
                                   f"this surface is {self.dims}D; use flatness() for a 2D surface")
        chosen = self.check_metric(metric)
        return {"metric": chosen, **_path_barrier(self, chosen)}

    def flatness(self, metric: str | None = None, epsilon: float = DEFAULT_EPSILON,
                 radius: float | None = None, at: tuple[float, ...] | None = None) -> dict[str, Any]:
        """Flatness and sharpness of the basin around a point (by default the origin, θ*).

        The centre is the grid point nearest ``at``, with loss L*. The
        measures are those of ``mpiland info`` and of the file's derived
        attributes (:func:`mpiland.analysis.measures.flatness`): curvature
        along each axis, basin width (and area in 2D) where L ≤ L* + ε, and
        ε-sharpness within ``radius``.

        Parameters:
            metric: the loss to measure; default: the first ``<split>_loss``.
            epsilon: the loss margin ε ≥ 0 that defines the basin.
            radius: the sharpness radius in grid units (> 0); default: the
                largest disc around the centre inside the grid.
            at: the point to measure around, in grid coordinates (default: the
                origin, θ* of random, file, PCA and Hessian directions); e.g.
                ``tuple(surf.models.coordinates[1])`` for a path's second model.

        Returns:
            :func:`mpiland.analysis.measures.flatness`'s dictionary: ``metric``,
            ``centre``, ``loss``, ``threshold``, ``curvature``, ``basin_width``,
            ``basin_area``, ``radius``, ``sharpness``, ``sharpness_relative`` ...

        Raises:
            SurfaceFileError: the metric is not in the file, ``epsilon`` or
                ``radius`` is out of range, or the centre has no finite value.
        """
        return _flatness(self, metric, epsilon, radius, at)

    def to_xarray(self) -> xarray.Dataset:
        """The surface as an :class:`xarray.Dataset`, for labelled slicing, pandas and netCDF.

        Dimensions are those the file declares to netCDF readers (``("x",)``, or
        ``("t",)`` for a path between two models, or ``("x", "y")``) with the grid
        coordinates as coordinate variables, whose ``long_name`` attribute is the
        axis label (e.g. ``"random direction x (filter-normalised)"``; xarray's
        plots use it), so this equals ``xarray.open_dataset(path, engine="h5netcdf")``
        in names and orientation. There is one data variable per metric (with
        ``long_name`` and ``units``), NaN where the point is not computed yet,
        plus ``done`` (bool), ``skipped`` (bool, where adaptive refinement left a
        point out; only when it did) and ``seconds`` when the file has them.
        The file's root attributes become the Dataset's ``attrs`` as plain
        Python values (str, int, float or lists of them, so ``to_netcdf`` and
        ``json.dumps`` take them); ``source`` is the file's path. Models,
        trajectory and endpoints, which are not on the grid, stay on the Surface.

        Returns:
            A new Dataset; the arrays are copies.

        Raises:
            DependencyError: xarray is not installed.
        """
        try:
            import xarray as xr
        except ImportError:
            raise DependencyError("to_xarray needs xarray: pip install xarray") from None
        dims = dimension_names(self.dims, self.endpoints is not None)
        coords: dict[str, Any] = {dims[0]: (dims[0], self.x.copy(), {"long_name": self.x_label})}
        if self.dims == 2:
            assert self.y is not None
            coords["y"] = ("y", self.y.copy(), {"long_name": self.y_label})
        loss = str((self.job or {}).get("loss", {}).get("name", ""))
        data: dict[str, Any] = {m: (dims, self.values(m), metric_attributes(m, loss)) for m in self.metrics}
        data["done"] = (dims, self.done.astype(bool))
        if self.skipped.any():
            data["skipped"] = (dims, self.skipped.copy())
        if self.seconds is not None:
            data["seconds"] = (dims, self.seconds.copy(), {"units": "s"})
        attrs = {k: v for k, v in ((k, _attr_value(v)) for k, v in self.attrs.items()) if v is not None}
        attrs.setdefault("source", str(self.path))
        return xr.Dataset(data, coords=coords, attrs=attrs)

    def summary(self, epsilon: float = DEFAULT_EPSILON, radius: float | None = None) -> str:
        """The text ``mpiland info`` prints: schema, job, progress, minima, barriers and flatness.

        It is computed from this snapshot (:func:`mpiland.analysis.summary.summarize`),
        so it also works for a surface kept in memory (``out=None``); reopen a file a
        job is still writing to see its latest points.

        Parameters:
            epsilon, radius: the flatness settings, as ``mpiland info --epsilon/--radius``.

        Returns:
            Aligned text lines, without a trailing newline.

        Raises:
            SurfaceFileError: ``epsilon``/``radius`` is out of range.
        """
        return format_summary(summarize(self, epsilon=epsilon, radius=radius))


def _plot(surfaces: Sequence[reader.Surface | str | os.PathLike[str]], kind: str, metric: str | None, *,
          out: str | os.PathLike[str] | None, log: bool | None, levels: int | Sequence[float] | None,
          vmin: float | None, vmax: float | None, markers: Mapping[str, tuple[float, float]] | None,
          formats: Sequence[str] | None, zmax: float | None, style: str) -> SurfaceFigure | list[SurfaceFigure]:
    """:meth:`Surface.plot` and :func:`plot_surfaces`: draw the surfaces together, save them when ``out``."""
    loaded = [s if isinstance(s, reader.Surface) else reader.load_surface(Path(s)) for s in surfaces]
    check_style(style)
    plan = plan_pictures(loaded, kind, metric, levels, zmax, markers)
    fmts = check_formats(DEFAULT_FORMAT[style] if formats is None else formats)
    targets = [image_paths(joint_path(loaded), out, d.kind, d.named, fmts, several_kinds=len(plan) > 1)
               if out is not None else [] for d in plan]
    figures = [_displayable(render_many(loaded, d.kind, metric, log=log, levels=d.levels, vmin=vmin, vmax=vmax,
                                        markers=markers, zmax=d.zmax, style=style)) for d in plan]
    for fig, paths in zip(figures, targets):
        save_figure(fig, paths, style)
    return figures if kind == "all" else figures[0]


def plot_surfaces(surfaces: Sequence[reader.Surface | str | os.PathLike[str]], kind: str = "auto",
                  metric: str | None = None, *, out: str | os.PathLike[str] | None = None, log: bool | None = None,
                  levels: int | Sequence[float] | None = None, vmin: float | None = None, vmax: float | None = None,
                  markers: Mapping[str, tuple[float, float]] | None = None, formats: Sequence[str] | None = None,
                  zmax: float | None = None, style: str = "default") -> SurfaceFigure | list[SurfaceFigure]:
    """Draw several surfaces in one figure: 1D curves overlaid, 2D surfaces as panels on one colour scale.

    Li et al.'s small- versus large-batch curves, or one model's train and test
    landscapes beside another's, in one picture: ``ml.plot_surfaces(["small.h5",
    "large.h5"])``. Curves share one axes (accuracies on a second y axis), each file
    in its own line style and named in the legend by its job name (else its file
    stem); 2D kinds draw one panel per surface side by side, sharing colours, levels
    and one colourbar. It is :meth:`Surface.plot` of the first surface with the rest
    as ``others``; with ``out``, files are named after the stems joined by ``_vs_``
    (``small_vs_large_curve.png``).

    Parameters:
        surfaces: :class:`Surface` objects or paths of surface files, all 1D or all 2D.
        kind, metric, out, log, levels, vmin, vmax, markers, formats, zmax, style:
            as :meth:`Surface.plot`; the metric must be in every file.

    Returns:
        One figure, or for ``kind="all"`` a list of them (one per kind).

    Raises:
        SettingsError: no surface, surfaces of different dimensions, an unknown
            style or an option the kind cannot use.
        SurfaceFileError: as :meth:`Surface.plot`, for any of the surfaces.
    """
    return _plot(list(surfaces), kind, metric, out=out, log=log, levels=levels, vmin=vmin, vmax=vmax,
                 markers=markers, formats=formats, zmax=zmax, style=style)


def from_reader(surface: reader.Surface) -> Surface:
    """The API :class:`Surface` holding the same data as a surface the reader loaded.

    Parameters:
        surface: a :class:`mpiland.surface.reader.Surface` (e.g. from
            :func:`mpiland.surface.reader.load_surface`).

    Returns:
        ``surface`` itself when it is already an API Surface, else a new one
        sharing its arrays (nothing is copied or re-read).
    """
    if isinstance(surface, Surface):
        return surface
    return Surface(**{f.name: getattr(surface, f.name) for f in fields(surface)})


def open(path: str | os.PathLike[str]) -> Surface:  # noqa: A001 - the API's name: mpiland.open(path)
    """Read a surface file (mpiland's, or the reference tool's) into a :class:`Surface`.

    The whole file is read into memory and closed again, so a job may keep
    writing it; open it again to see newer points.

    Parameters:
        path: the ``.h5`` file written by ``mpiland run`` or ``mpiland.landscape``.

    Returns:
        The surface, with :meth:`Surface.plot`, :meth:`Surface.barrier`,
        :meth:`Surface.flatness`, :meth:`Surface.to_xarray` and :meth:`Surface.summary`.

    Raises:
        SurfaceFileError: the path does not exist or is a directory, the file is
            not HDF5 or not a surface file, or it was written with a newer schema.
    """
    return from_reader(reader.load_surface(Path(path)))

