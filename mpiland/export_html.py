"""A surface as one self-contained interactive web page, drawn with Plotly.

The page embeds plotly.js and the data (numeric arrays as base64 float64, so the
values are the file's to the bit), so it opens offline in any browser and requests
nothing. A 2D file gives a 3D surface one can rotate beside a contour map of the
same metric; a 1D file gives a line plot. A dropdown chooses the metric; hovering
a point shows its coordinates, every exported metric there and whether it was
evaluated, is pending, or was skipped by adaptive refinement (those stay gaps:
the page shows the stored values, NaN where none). The reference models
(``models/``) and the projected training trajectory (``trajectory/``) are drawn
when the file has them: on the map, and on the surface at the chosen metric's
height (interpolated between grid points); on a curve the models are vertical
lines.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np

from .errors import SurfaceFileError
from .surface.reader import Positions, Surface, best_is

PLOT_ID = "mpiland-surface"
"""The id of the page's plot element (``document.getElementById`` gives the Plotly graph)."""

COLOURS = "Viridis"


def _label(text: str) -> str:
    """A label for Plotly's title and hover text, which read a subset of HTML: its markup characters escaped."""
    return html.escape(text, quote=False)


def _hover(coords: list[str], names: list[str]) -> str:
    """The hover template: the point's coordinates, each metric (``customdata``) and its state (``text``)."""
    lines = [f"{_label(c)} = %{{{axis}:.6~g}}" for c, axis in zip(coords, "xy")]
    lines += [f"{_label(n)} = %{{customdata[{k}]:.6~g}}" for k, n in enumerate(names)]
    return "<br>".join(lines + ["%{text}"]) + "<extra></extra>"


def _states(surface: Surface) -> np.ndarray:
    """Each grid point's state as a word, in the grid's shape."""
    return np.select([surface.done, surface.skipped], ["evaluated", "skipped by adaptive refinement"],
                     "not computed yet")


def _heights(surface: Surface, values: np.ndarray, positions: Positions) -> np.ndarray:
    """``values`` interpolated bilinearly at 2D ``positions`` from the finite grid values around each.

    The weights of the corners that are NaN or infinite go to the others (a model on
    a grid point gets that point's value even beside a gap); NaN outside the grid or
    where no corner is finite.
    """
    from scipy.interpolate import RegularGridInterpolator  # type: ignore[import-untyped, unused-ignore]

    assert surface.y is not None
    if surface.x.size < 2 or surface.y.size < 2:
        return np.full(len(positions), np.nan)
    ix, iy = np.argsort(surface.x), np.argsort(surface.y)
    axes, v = (surface.x[ix], surface.y[iy]), values[np.ix_(ix, iy)]
    ok = np.isfinite(v)

    def interpolate(grid: np.ndarray) -> np.ndarray:
        f = RegularGridInterpolator(axes, grid, bounds_error=False, fill_value=np.nan)
        return np.asarray(f(positions.coordinates), dtype=np.float64)

    total, weight = interpolate(np.where(ok, v, 0.0)), interpolate(ok.astype(np.float64))
    out = np.full(len(positions), np.nan)
    np.divide(total, weight, out=out, where=weight > 0)
    return out


def build_figure(surface: Surface, fields: dict[str, np.ndarray]) -> Any:
    """The page's Plotly figure (a ``plotly.graph_objects.Figure``) for ``fields`` (name -> grid array).

    Every trace that belongs to one metric is named after it and visible only
    while the dropdown shows that metric (the first at first). Raises
    :class:`~mpiland.errors.SurfaceFileError` when there is no metric to draw.
    """
    import plotly.graph_objects as go  # type: ignore[import-untyped, import-not-found, unused-ignore]

    if not fields:
        raise SurfaceFileError(f"{surface.path}: has no metric datasets to draw; export another surface file")
    names = list(fields)
    title = _label(surface.name or surface.path.name)
    if surface.dims == 1:
        fig, owners = _curve(go, surface, fields)
        axis_key = "yaxis.title.text"
    else:
        fig, owners = _plane(go, surface, fields)
        axis_key = "scene.zaxis.title.text"
    buttons = [dict(label=n, method="update",
                    args=[{"visible": [o is None or o == n for o in owners]}, {axis_key: _label(n)}])
               for n in names]
    fig.update_layout(title=dict(text=title), template="plotly_white", height=680,
                      margin=dict(l=60, r=40, t=90, b=60),
                      legend=dict(orientation="h", yanchor="bottom", y=-0.12, x=0),
                      updatemenus=[dict(buttons=buttons, direction="down", showactive=True,
                                        x=1.0, xanchor="right", y=1.12, yanchor="top")])
    return fig


def _curve(go: Any, surface: Surface, fields: dict[str, np.ndarray]) -> tuple[Any, list[str | None]]:
    """A 1D file: one line per metric, the models as labelled vertical lines."""
    names = list(fields)
    custom = np.stack([fields[n] for n in names], axis=-1)
    hover = _hover([surface.x_label], names)
    fig = go.Figure()
    for k, n in enumerate(names):
        fig.add_trace(go.Scatter(x=surface.x, y=fields[n], name=n, mode="lines+markers", customdata=custom,
                                 text=_states(surface), hovertemplate=hover, visible=k == 0, showlegend=False))
    if surface.models is not None:
        for t, label in zip(surface.models.coordinates[:, 0], surface.models.labels):
            fig.add_vline(x=float(t), line=dict(color="black", dash="dash", width=1),
                          annotation=dict(text=_label(label), textangle=-90, yanchor="top"))
    fig.update_layout(xaxis=dict(title=dict(text=_label(surface.x_label))),
                      yaxis=dict(title=dict(text=_label(names[0]))))
    return fig, list(names)


def _plane(go: Any, surface: Surface, fields: dict[str, np.ndarray]) -> tuple[Any, list[str | None]]:
    """A 2D file: per metric a 3D surface and a contour map, with the models and the trajectory on both."""
    from plotly.subplots import make_subplots  # type: ignore[import-untyped, import-not-found, unused-ignore]

    assert surface.y is not None
    names = list(fields)
    custom = np.stack([fields[n].T for n in names], axis=-1)  # (ny, nx, metrics): Plotly's z[j][i] is (x[i], y[j])
    states = _states(surface).T
    hover = _hover([surface.x_label, surface.y_label], names)
    fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "xy"}]], column_widths=[0.55, 0.45],
                        horizontal_spacing=0.07)
    owners: list[str | None] = []
    marks = [(p, kind) for p, kind in ((surface.trajectory, "trajectory"), (surface.models, "models"))
             if p is not None]
    for k, n in enumerate(names):
        common = dict(x=surface.x, y=surface.y, z=fields[n].T, name=n, customdata=custom, text=states,
                      hovertemplate=hover, colorscale=COLOURS, reversescale=best_is(n) == "max", visible=k == 0)
        fig.add_trace(go.Surface(**common, showscale=False), row=1, col=1)
        fig.add_trace(go.Contour(**common, ncontours=30, colorbar=dict(title=dict(text=_label(n), side="right"),
                                                                        len=0.9)), row=1, col=2)
        owners += [n, n]
        for positions, kind in marks:
            z = _heights(surface, fields[n], positions)
            fig.add_trace(go.Scatter3d(x=positions.coordinates[:, 0], y=positions.coordinates[:, 1], z=z,
                                       name=kind, legendgroup=kind, showlegend=False, visible=k == 0,
                                       text=[_label(s) for s in positions.labels],
                                       hovertemplate="%{text}<extra></extra>", **_style(kind, three_d=True)),
                          row=1, col=1)
            owners.append(n)
    for positions, kind in marks:
        fig.add_trace(go.Scatter(x=positions.coordinates[:, 0], y=positions.coordinates[:, 1], name=kind,
                                 legendgroup=kind, text=[_label(s) for s in positions.labels],
                                 hovertemplate=f"%{{text}}<br>{_label(surface.x_label)} = %{{x:.6~g}}<br>"
                                               f"{_label(surface.y_label)} = %{{y:.6~g}}<extra></extra>",
                                 **_style(kind, three_d=False)), row=1, col=2)
        owners.append(None)
    x_title, y_title = dict(text=_label(surface.x_label)), dict(text=_label(surface.y_label))
    fig.update_layout(scene=dict(xaxis=dict(title=x_title), yaxis=dict(title=y_title),
                                 zaxis=dict(title=dict(text=_label(names[0]))),
                                 aspectratio=dict(x=1, y=1, z=0.7)),
                      xaxis=dict(title=x_title), yaxis=dict(title=y_title))
    return fig, owners


def _style(kind: str, three_d: bool) -> dict[str, Any]:
    """Markers (and the line of a trajectory) for ``models`` or ``trajectory``."""
    if kind == "models":
        return dict(mode="markers+text", textposition="top center",
                    marker=dict(symbol="diamond" if three_d else "star", size=6 if three_d else 14, color="red",
                                line=dict(color="white", width=1)))
    return dict(mode="lines+markers", line=dict(color="white" if not three_d else "black", width=2),
                marker=dict(size=3 if three_d else 6, color="white", line=dict(color="black", width=1)))


def write_html(surface: Surface, fields: dict[str, np.ndarray], path: Path) -> None:
    """Write the page for ``fields`` (exported name -> grid array) of ``surface`` to ``path``.

    The page holds plotly.js itself (no CDN) and a ``<title>`` of the job or file name.
    """
    import plotly.io as pio  # type: ignore[import-untyped, import-not-found, unused-ignore]

    fig = build_figure(surface, fields)
    page = pio.to_html(fig, include_plotlyjs=True, full_html=True, div_id=PLOT_ID,
                       config={"displaylogo": False, "responsive": True})
    title = html.escape(surface.name or surface.path.name)
    page = page.replace("</head>", f"<title>{title}</title>\n</head>", 1)
    path.write_text(page, encoding="utf-8")
