"""Measures of a finished landscape, from the values of its surface file.

:func:`barrier` (the loss barrier along a 1D path between two models),
:func:`flatness` (curvature, basin width and area, ε-sharpness around one
point), :func:`flatness_at_centres` (it at the points that matter,
:func:`flatness_centres`: θ* at the origin, or each model of a path or plane)
and :func:`derived_attributes` (both, as the root attributes a finished run
stores; :func:`store_derived` writes them). Points adaptive refinement skipped
are never used as values. Like the reader, numpy and h5py only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import SurfaceFileError
from ..surface.reader import Surface, load_surface

DEFAULT_EPSILON = 0.1
"""Default loss margin ε of :func:`flatness` (basin = points with L ≤ L* + ε)."""


def format_number(v: float | None) -> str:
    """A number for messages and the ``info`` text: 6 significant digits, ``-`` for None."""
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.6g}"


def _coords(point: tuple[float, ...]) -> str:
    """A point for messages: ``(0.05)``, ``(0, 2.5)``."""
    return "(" + ", ".join(format_number(float(v)) for v in point) + ")"


def _nearest(c: np.ndarray, value: float) -> int:
    return int(np.argmin(np.abs(c - value)))


def barrier(t: np.ndarray, loss: np.ndarray, endpoints: tuple[float, float] | None = None) -> dict[str, Any]:
    """The loss barrier of a 1D path between two models (Goodfellow et al. 2015, Frankle et al. 2020).

    The end points are the grid points nearest ``endpoints`` = (t0, t1) (the models'
    positions, e.g. the file's ``endpoints`` attribute), else the ends of the grid;
    only the points between them count, so a path extrapolated past the models
    does not change the result. Non-finite losses are left out (``ignored`` says
    how many lay in the range). Returns ``height`` = max over the points strictly
    between the end points of L(t) minus the straight line between the end-point
    losses (≤ 0 when the path is convex; None without an inner point), ``at`` =
    its t, ``monotonic`` (L non-increasing or non-decreasing between the ends),
    ``t0``/``t1``/``loss0``/``loss1`` (the end points used), ``points`` (finite
    points used) and ``ignored``.
    """
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    loss = np.asarray(loss, dtype=np.float64).reshape(-1)
    if t.size != loss.size:
        raise SurfaceFileError(f"barrier: {t.size} coordinates but {loss.size} loss values; "
                               "give one loss per point of the path")
    if not np.isfinite(t).all():
        raise SurfaceFileError("barrier: the path coordinates are not all finite; give finite t values")
    ok = np.isfinite(loss)
    if ok.sum() < 2:
        raise SurfaceFileError(f"barrier: the path has {int(ok.sum())} finite loss values, at least 2 are "
                               "needed; evaluate more points (or wait for the run to finish)")
    step = float(np.diff(np.sort(t)).max())
    if endpoints is None:
        want = (float(t.min()), float(t.max()))
    else:
        want = (float(endpoints[0]), float(endpoints[1]))
        for w in want:
            if not math.isfinite(w) or not t.min() - step / 2 <= w <= t.max() + step / 2:
                raise SurfaceFileError(f"barrier: end point t={w} lies outside the path "
                                       f"[{format_number(float(t.min()))}, {format_number(float(t.max()))}]; "
                                       "give end points inside the evaluated range")
    # End points: the nearest finite grid points, not further out than half a step
    # (a divergent end model is replaced by its inner neighbour, never an extrapolated point).
    near = ok & (t >= min(want) - step / 2) & (t <= max(want) + step / 2)
    if not near.any():
        raise SurfaceFileError(f"barrier: no finite loss value between the end points {want}; "
                               "evaluate more points (or wait for the run to finish)")
    tf, lf = t[near], loss[near]
    i0, i1 = _nearest(tf, want[0]), _nearest(tf, want[1])
    if i0 == i1:
        raise SurfaceFileError(f"barrier: both end points {want} fall on the same finite grid point "
                               f"t={format_number(float(tf[i0]))}; give end points further apart or a finer grid")
    t0, t1, l0, l1 = float(tf[i0]), float(tf[i1]), float(lf[i0]), float(lf[i1])
    lo, hi = min(t0, t1), max(t0, t1)
    span_lo, span_hi = min(lo, *want), max(hi, *want)
    ignored = int((~ok & (t >= span_lo) & (t <= span_hi)).sum())
    between = (tf >= lo) & (tf <= hi)
    order = np.argsort(tf[between], kind="stable")
    ts, ls = tf[between][order], lf[between][order]
    chord = l0 + (ts - t0) * (l1 - l0) / (t1 - t0)
    inner = (ts > lo) & (ts < hi)
    height = at = None
    if inner.any():
        excess = np.where(inner, ls - chord, -np.inf)
        k = int(np.argmax(excess))
        height, at = float(excess[k]), float(ts[k])
    steps = np.diff(ls)
    tol = 1e-9 * (1.0 + float(np.abs(ls).max()))
    monotonic = bool((steps <= tol).all() or (steps >= -tol).all())
    return {"height": height, "at": at, "monotonic": monotonic, "t0": t0, "t1": t1,
            "loss0": l0, "loss1": l1, "points": int(ts.size), "ignored": ignored}


def path_barrier(surface: Surface, metric: str) -> dict[str, Any]:
    """:func:`barrier` of ``metric`` along a 1D file's path between its end models (``endpoints``) from its
    evaluated points: points skipped by adaptive refinement (never evaluated) are left out, so
    ``ignored`` counts only pending and divergent points."""
    keep = ~surface.skipped
    return barrier(surface.x[keep], surface.values(metric)[keep], surface.endpoints)


def _number(value: Any) -> float:
    """``value`` as a float, NaN when it is not a real number."""
    if isinstance(value, (bool, str, bytes)):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def check_flatness_args(epsilon: Any, radius: Any) -> tuple[float, float | None]:
    """Validated (epsilon, radius) of :func:`flatness` as floats."""
    eps = _number(epsilon)
    if not (math.isfinite(eps) and eps >= 0):
        raise SurfaceFileError(f"epsilon must be a finite number ≥ 0 (a loss margin), got {epsilon!r}")
    if radius is None:
        return eps, None
    r = _number(radius)
    if not (math.isfinite(r) and r > 0):
        raise SurfaceFileError(f"radius must be a finite number > 0 (in grid units), got {radius!r}; "
                               "leave it out for the largest radius inside the grid")
    return eps, r


def _second_difference(c: np.ndarray, v: np.ndarray, i: int) -> float | None:
    """f''(c[i]) from the three points around i (any spacing); None at an edge or a non-finite neighbour."""
    if i == 0 or i == c.size - 1 or not np.isfinite(v[i - 1:i + 2]).all():
        return None
    hl, hr = c[i] - c[i - 1], c[i + 1] - c[i]
    return float(2.0 * (hl * v[i + 1] - (hl + hr) * v[i] + hr * v[i - 1]) / (hl * hr * (hl + hr)))


def _basin_interval(c: np.ndarray, v: np.ndarray, i: int, threshold: float) -> dict[str, Any]:
    """The connected interval around ``c[i]`` where ``v <= threshold``, crossings interpolated linearly.

    ``at_edge``: it reaches an end of the line; ``lower_bound``: the width is only
    a lower bound, because the interval reaches an end or stops next to a point
    without a finite value (not evaluated yet, or divergent), where the crossing
    is unknown.
    """
    inside = np.isfinite(v) & (v <= threshold)

    def walk(step: int) -> tuple[float, bool, bool]:
        k = i
        while 0 <= k + step < c.size and inside[k + step]:
            k += step
        n = k + step
        if not 0 <= n < c.size:
            return float(c[k]), True, True
        if not math.isfinite(v[n]):
            return float(c[k]), False, True
        frac = (threshold - v[k]) / (v[n] - v[k])
        return float(c[k] + frac * (c[n] - c[k])), False, False

    lower, edge_lo, open_lo = walk(-1)
    upper, edge_hi, open_hi = walk(1)
    return {"width": upper - lower, "lower": lower, "upper": upper, "at_edge": edge_lo or edge_hi,
            "lower_bound": open_lo or open_hi}


def _cell_sizes(c: np.ndarray) -> np.ndarray:
    """Length of grid line each coordinate stands for (half cells at the ends): they sum to the range."""
    if c.size < 2:
        return np.zeros(c.size)
    mid = (c[1:] + c[:-1]) / 2
    return np.diff(np.concatenate([[c[0]], mid, [c[-1]]]))


def _region(mask: np.ndarray, start: tuple[int, ...]) -> np.ndarray:
    """The 4-connected component of the 2D ``mask`` containing ``start``.

    Runs of True along each row are joined with the overlapping runs of the next
    row (union-find over runs), so the cost is one numpy pass per row plus a few
    Python steps per run, whatever the shape of the basin.
    """
    region = np.zeros(mask.shape, dtype=bool)
    if not mask[start]:
        return region
    runs: list[tuple[int, int, int]] = []  # (row, first column, last column + 1)
    rows: list[list[int]] = []
    for i, row in enumerate(mask):
        edges = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
        first, stop = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        rows.append(list(range(len(runs), len(runs) + first.size)))
        runs.extend((i, int(a), int(b)) for a, b in zip(first, stop))
    parent = list(range(len(runs)))

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for above, below in zip(rows, rows[1:]):
        a = b = 0
        while a < len(above) and b < len(below):
            _, a0, a1 = runs[above[a]]
            _, b0, b1 = runs[below[b]]
            if a0 < b1 and b0 < a1:  # the runs share a column
                parent[root(above[a])] = root(below[b])
            if a1 <= b1:
                a += 1
            else:
                b += 1
    i0, j0 = start
    home = root(next(k for k in rows[i0] if runs[k][1] <= j0 < runs[k][2]))
    for k, (i, c0, c1) in enumerate(runs):
        if root(k) == home:
            region[i, c0:c1] = True
    return region


def _grid_axes(surface: Surface) -> list[tuple[str, np.ndarray]]:
    """The named, checked (increasing) coordinate axes of a surface."""
    axes = [("x", surface.x)] + ([("y", surface.y)] if surface.dims == 2 and surface.y is not None else [])
    for name, c in axes:
        if c.size and not (np.diff(c) > 0).all():
            raise SurfaceFileError(f"{surface.path}: {name}coordinates are not increasing, so neighbours "
                                   "on the grid are unknown; recreate the file with an ascending grid")
    return axes


def _locate(surface: Surface, at: tuple[float, ...]) -> tuple[int, ...] | None:
    """Index of the grid point nearest ``at``; None when ``at`` lies outside the grid by more than half a
    grid step along some axis (a model the grid does not reach)."""
    index = []
    for (_, c), p in zip(_grid_axes(surface), at):
        if not c.size:
            return None
        lo = (c[1] - c[0]) / 2 if c.size > 1 else 0.0
        hi = (c[-1] - c[-2]) / 2 if c.size > 1 else 0.0
        tol = 1e-9 * (1.0 + abs(float(c[0])) + abs(float(c[-1])))
        if not c[0] - lo - tol <= p <= c[-1] + hi + tol:
            return None
        index.append(_nearest(c, p))
    return tuple(index)


def _inside_radius(surface: Surface, centre: tuple[float, ...]) -> float:
    """The largest radius around ``centre`` that stays inside the grid (0 on an edge)."""
    return float(min(min(p - c[0], c[-1] - p) for (_, c), p in zip(_grid_axes(surface), centre)))


def flatness_centres(surface: Surface) -> tuple[str, list[tuple[str, tuple[float, ...]]]]:
    """Where flatness is measured: ``("models", [(label, position), …])``, each model of ``models/`` in
    its order, when a model lies away from the origin (interpolation, plane, bilinear, Bézier curve,
    chain: the origin is only their first model); else ``("origin", [(label, origin)])``, the trained
    model θ* at the origin (random, file, pca and hessian directions, reference-tool files), labelled as
    the file's single model or ``origin``."""
    models = surface.models
    if models is not None and len(models) and bool(np.any(models.coordinates != 0)):
        return "models", [(str(label), tuple(float(v) for v in row))
                          for label, row in zip(models.labels, models.coordinates)]
    label = str(models.labels[0]) if models is not None and len(models) == 1 else "origin"
    return "origin", [(label, (0.0,) * surface.dims)]


def _centre_problem(surface: Surface, metric: str, index: tuple[int, ...] | None) -> str | None:
    """Why nothing is measured around grid point ``index`` (None when it can be): outside the grid,
    skipped by adaptive refinement, not evaluated yet, or a non-finite value."""
    if index is None:
        return "outside the grid"
    if surface.skipped[index]:
        return "skipped by adaptive refinement"
    if not surface.computed[metric][index]:
        return "not evaluated yet"
    if not math.isfinite(float(surface.metrics[metric][index])):
        return "not finite (diverged)"
    return None


def _at_bend(surface: Surface, index: tuple[int, ...]) -> bool:
    """Whether grid point ``index`` of a 1D path is the nearest one to a model strictly between its end
    models: a bend of a polygonal chain, where the path changes direction, so a second difference
    across it measures the bend rather than the landscape."""
    models = surface.models
    if surface.dims != 1 or surface.endpoints is None or models is None or len(models) < 3:
        return False
    lo, hi = sorted(surface.endpoints)
    inner = [float(t) for t in models.coordinates[:, 0] if lo < t < hi]
    return any(_nearest(surface.x, t) == index[0] for t in inner)


def _evaluated_line(surface: Surface, values: np.ndarray, index: tuple[int, ...],
                    axis: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Coordinates and values of the grid line through ``index`` along ``axis`` without the points skipped
    by adaptive refinement (they were never evaluated: measures use the evaluated points on either
    side), and the position of ``index`` on it."""
    sel: list[Any] = list(index)
    sel[axis] = slice(None)
    c = _grid_axes(surface)[axis][1]
    keep = ~surface.skipped[tuple(sel)]
    return c[keep], values[tuple(sel)][keep], int(keep[:index[axis]].sum())


def _fill_skipped(surface: Surface, values: np.ndarray) -> np.ndarray:
    """``values`` with the points skipped by adaptive refinement filled linearly along x from the
    nearest known finite points, then along y from those and the ones just filled (bilinear in a
    refinement cell, as pictures fill them); NaN where no line has a known finite point on both sides."""
    out = values.copy()
    have = ~surface.skipped
    if have.all():
        return out
    for axis, (_, c) in enumerate(_grid_axes(surface)):
        for line in np.ndindex(*(n for k, n in enumerate(values.shape) if k != axis)):
            sel: list[Any] = list(line)
            sel.insert(axis, slice(None))
            v, known_here = out[tuple(sel)], have[tuple(sel)]  # views: filling them fills ``out``/``have``
            known, pos = np.flatnonzero(known_here), np.flatnonzero(~known_here)
            right = np.searchsorted(known, pos)
            ok = (right > 0) & (right < known.size)
            p, lo, hi = pos[ok], known[right[ok] - 1], known[right[ok] % max(known.size, 1)]
            both = np.isfinite(v[lo]) & np.isfinite(v[hi])
            p, lo, hi = p[both], lo[both], hi[both]
            v[p] = v[lo] + (c[p] - c[lo]) * (v[hi] - v[lo]) / (c[hi] - c[lo])
            known_here[p] = True
    return out


def flatness(surface: Surface, metric: str | None = None, epsilon: float = DEFAULT_EPSILON,
             radius: float | None = None, at: tuple[float, ...] | None = None) -> dict[str, Any]:
    """Flatness and sharpness of the basin around one point, from the file's grid values.

    The centre is the grid point nearest ``at`` (default: the origin, (0, 0) or
    0 in 1D, the trained model θ* of random, file, pca and hessian directions; give a
    model's position for the others, see :func:`flatness_at_centres`), with loss L*.
    Returns ``metric``, ``centre`` (its coordinates), ``loss`` (L*), ``epsilon``,
    ``threshold`` (L* + ε), per axis (``x``, and ``y`` in 2D): ``curvature``
    (second difference at the centre from its evaluated neighbours, exact for a
    quadratic at any spacing; None where there is none) with ``curvature_missing``
    (axis -> why: ``on the grid edge``, ``next to a point without a finite value``,
    ``at a bend of the chain``: a polygonal chain's inner model, where the path turns)
    and ``basin_width`` (``width``, ``lower``, ``upper``, ``at_edge`` and
    ``lower_bound`` of the connected interval through the centre where L ≤ L* + ε,
    crossings interpolated; ``lower_bound`` means the width is at least that: the
    interval reaches the grid edge or a point without a finite value);
    ``basin_area`` in 2D (``area`` of the connected region around the centre
    where L ≤ L* + ε, its ``fraction`` of the grid, ``points``, ``estimated``
    (of them, points skipped by adaptive refinement, judged by the values
    interpolated there), ``at_edge`` and ``lower_bound``; None in 1D);
    ``radius`` (default: the largest disc around the centre inside the grid),
    ``sharpness`` (max of L − L* over the evaluated grid points within it, None
    for radius 0), ``sharpness_relative`` (Keskar et al. 2017: 100·(max L − L*)/(1 + L*)),
    ``sharpness_at``, ``nonfinite`` (evaluated points within the radius left out
    as inf/NaN) and ``unevaluated`` (points within the radius not evaluated:
    pending or skipped by refinement). Points skipped by adaptive refinement are
    never used as values. ``metric`` defaults to the first ``<split>_loss``.
    """
    epsilon, radius = check_flatness_args(epsilon, radius)
    metric = _flatness_metric(surface, metric)
    where = _check_point(surface, at)
    index = _locate(surface, where)
    if index is None:
        ranges = " x ".join(f"[{format_number(float(c[0]))}, {format_number(float(c[-1]))}]"
                            for _, c in _grid_axes(surface))
        raise SurfaceFileError(f"{surface.path}: the point {_coords(where)} lies outside the grid {ranges}, so "
                               "flatness there is undefined; give a point inside the grid")
    problem = _centre_problem(surface, metric, index)
    centre = _coords(surface.point(index))
    if problem == "skipped by adaptive refinement":
        raise SurfaceFileError(f"{surface.path}: {metric} at the centre {centre} was skipped by adaptive "
                               "refinement (never evaluated), so flatness there is undefined; measure "
                               "around an evaluated point (at=...)")
    if problem == "not evaluated yet":
        raise SurfaceFileError(f"{surface.path}: {metric} at the centre {centre} is not evaluated yet, so "
                               "flatness is undefined; finish the run (run the same command again)")
    if problem is not None:
        raise SurfaceFileError(f"{surface.path}: {metric} at the centre {centre} is not a finite computed "
                               "value, so flatness is undefined; check the run for divergence")
    return _measure(surface, metric, surface.values(metric), epsilon, radius, index)


def _flatness_metric(surface: Surface, metric: str | None) -> str:
    """The checked metric of the flatness measures; default: the first ``<split>_loss``."""
    if metric is None:
        plain = surface.split_losses()
        metric = plain[0] if plain else surface.default_metric()
    return surface.check_metric(metric)


def _check_point(surface: Surface, at: tuple[float, ...] | None) -> tuple[float, ...]:
    """``at`` (default: the origin) as a tuple of ``dims`` finite floats."""
    if at is None:
        return (0.0,) * surface.dims
    try:
        point = tuple(_number(v) for v in at)
    except TypeError:
        point = ()
    if len(point) != surface.dims or not all(math.isfinite(v) for v in point):
        raise SurfaceFileError(f"at must be {surface.dims} finite grid coordinates (a point of this "
                               f"{surface.dims}D surface), got {at!r}")
    return point


def _measure(surface: Surface, metric: str, values: np.ndarray, epsilon: float, radius: float | None,
             centre_idx: tuple[int, ...]) -> dict[str, Any]:
    """:func:`flatness`'s measures around the evaluated, finite grid point ``centre_idx``."""
    axes = _grid_axes(surface)
    centre = surface.point(centre_idx)
    l_star = float(values[centre_idx])
    threshold = l_star + epsilon
    curvature: dict[str, float | None] = {}
    missing: dict[str, str] = {}
    widths: dict[str, dict[str, Any]] = {}
    for axis, (name, c) in enumerate(axes):
        line_c, line_v, i = _evaluated_line(surface, values, centre_idx, axis)
        if _at_bend(surface, centre_idx):
            curvature[name], missing[name] = None, "at a bend of the chain"
            widths[name] = _basin_interval(line_c, line_v, i, threshold)
            continue
        curvature[name] = _second_difference(line_c, line_v, i)
        if curvature[name] is None:
            edge = centre_idx[axis] in (0, c.size - 1)
            missing[name] = "on the grid edge" if edge else "next to a point without a finite value"
        widths[name] = _basin_interval(line_c, line_v, i, threshold)

    area = None
    if surface.dims == 2 and surface.y is not None:
        filled = _fill_skipped(surface, values)
        region = _region(np.isfinite(filled) & (filled <= threshold), centre_idx)
        cells = np.outer(_cell_sizes(surface.x), _cell_sizes(surface.y))
        total = float(cells.sum())
        a = float(cells[region].sum())
        edge = bool(region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any())
        near = np.zeros_like(region)
        near[1:] |= region[:-1]
        near[:-1] |= region[1:]
        near[:, 1:] |= region[:, :-1]
        near[:, :-1] |= region[:, 1:]
        open_side = bool((near & ~region & ~np.isfinite(filled)).any())
        area = {"area": a, "fraction": a / total if total > 0 else None, "points": int(region.sum()),
                "estimated": int((region & surface.skipped).sum()), "at_edge": edge,
                "lower_bound": edge or open_side}

    mesh = np.meshgrid(*(c for _, c in axes), indexing="ij")
    dist = np.sqrt(sum((m - p) ** 2 for m, p in zip(mesh, centre)))
    if radius is None:
        radius = _inside_radius(surface, centre)
    disc = dist <= radius * (1 + 1e-9)
    evaluated = surface.computed[metric] & ~surface.skipped
    finite = disc & evaluated & np.isfinite(values)
    sharp = rel = sharp_at = None
    if radius > 0 and finite.any():
        masked = np.where(finite, values, -np.inf)
        k = np.unravel_index(int(np.argmax(masked)), masked.shape)
        sharp = float(masked[k]) - l_star
        rel = 100.0 * sharp / (1.0 + l_star)
        sharp_at = surface.point(tuple(int(i) for i in k))
    return {"metric": metric, "centre": centre, "loss": l_star, "epsilon": epsilon,
            "threshold": threshold, "curvature": curvature, "curvature_missing": missing,
            "basin_width": widths, "basin_area": area,
            "radius": radius, "sharpness": sharp, "sharpness_relative": rel, "sharpness_at": sharp_at,
            "nonfinite": int((disc & evaluated & ~np.isfinite(values)).sum()),
            "unevaluated": int((disc & ~evaluated).sum())}


def flatness_at_centres(surface: Surface, metric: str | None = None, epsilon: float = DEFAULT_EPSILON,
                        radius: float | None = None) -> list[dict[str, Any]]:
    """:func:`flatness` at each point that matters (:func:`flatness_centres`: θ* at the origin, or each
    model of a path or plane), in order.

    Each entry has ``label``, ``coordinates`` (the model's position) and ``note``:
    None when measured, then also :func:`flatness`'s keys (``centre`` is the grid
    point nearest the position), else why nothing is measured there (``outside the
    grid``, ``skipped by adaptive refinement``, ``not evaluated yet``, ``not finite
    (diverged)``) and no numbers.
    """
    epsilon, radius = check_flatness_args(epsilon, radius)
    metric = _flatness_metric(surface, metric)
    values = surface.values(metric)
    out: list[dict[str, Any]] = []
    for label, position in flatness_centres(surface)[1]:
        index = _locate(surface, position)
        note = _centre_problem(surface, metric, index)
        entry: dict[str, Any] = {"label": label, "coordinates": position, "note": note}
        if note is None and index is not None:
            entry.update(_measure(surface, metric, values, epsilon, radius, index))
        out.append(entry)
    return out


def _attr_float(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def derived_attributes(surface: Surface) -> dict[str, Any]:
    """The measures a finished run stores as root attributes (float, NaN = undefined; int 0/1 flags).

    For a 1D path between models (a file with ``endpoints``: interpolations, Bézier
    curves, chains), for every metric ``M`` ending in ``_loss`` (``line_`` ones
    included), the barrier between the end models (a curve along a random direction
    through θ* joins no two models, so it gets none):
    ``M_barrier`` (max of L minus the straight line between the end-point losses;
    ≤ 0 for a convex path), ``M_barrier_at`` (its t), ``M_monotonic`` (1 when L
    is monotonic between the end points). For a 1D or 2D file, for every plain
    ``<split>_loss`` ``M``, :func:`flatness` with the default ε and radius at
    each centre of :func:`flatness_centres`:
    ``M_curvature_x``/``_y`` (second difference at the centre),
    ``M_basin_width_x``/``_y`` and ``M_basin_width_x_edge``/``_y_edge`` (1: the
    width is a lower bound, the interval reaches the grid edge or a point without
    a finite value), in 2D ``M_basin_area``, ``M_basin_area_fraction`` and
    ``M_basin_area_edge``, ``M_sharpness`` (max L − L* within the radius) and
    ``M_sharpness_relative`` (100·(max L − L*)/(1 + L*)); plus ``flatness_at``
    (``origin`` or ``models``), ``flatness_epsilon`` and ``flatness_radius``.
    With ``flatness_at = "origin"`` (θ*) each is a scalar and
    ``flatness_centre`` is the grid point used; with ``"models"`` each is an
    array with one value per model of ``models/``, in its order, with
    ``flatness_models`` (their labels) and ``flatness_centre_x``/``_y`` (the grid
    point used for each). A metric whose values do not allow a measure (too
    few finite points, a divergent or unevaluated centre, a model outside the
    grid) gets no barrier attributes and NaN flatness values (flags 0).
    """
    out: dict[str, Any] = {}
    if surface.dims == 1 and surface.endpoints is not None:
        for m in surface.loss_metrics():
            try:
                b = path_barrier(surface, m)
            except SurfaceFileError:
                continue
            out[f"{m}_barrier"] = _attr_float(b["height"])
            out[f"{m}_barrier_at"] = _attr_float(b["at"])
            out[f"{m}_monotonic"] = int(b["monotonic"])
    losses = surface.split_losses()
    if not losses:
        return out
    kind, centres = flatness_centres(surface)

    def pack(values: list[Any], flag: bool = False) -> Any:
        """One value per centre: a scalar for the origin, an array in the models' order for models."""
        if kind == "models":
            return np.asarray(values, dtype=np.int64 if flag else np.float64)
        return values[0]

    axes = ("x",) if surface.dims == 1 else ("x", "y")
    for m in losses:
        try:
            found = flatness_at_centres(surface, m)
        except SurfaceFileError:  # a grid that is not ascending
            found = [{"note": "no grid"}] * len(centres)
        fs = [f if f["note"] is None else None for f in found]
        for ax in axes:
            ws = [f["basin_width"][ax] if f else None for f in fs]
            out[f"{m}_curvature_{ax}"] = pack([_attr_float(f["curvature"][ax] if f else None) for f in fs])
            out[f"{m}_basin_width_{ax}"] = pack([_attr_float(w["width"] if w else None) for w in ws])
            out[f"{m}_basin_width_{ax}_edge"] = pack([int(bool(w and w["lower_bound"])) for w in ws], flag=True)
        if surface.dims == 2:
            areas = [f["basin_area"] if f else None for f in fs]
            out[f"{m}_basin_area"] = pack([_attr_float(a["area"] if a else None) for a in areas])
            out[f"{m}_basin_area_fraction"] = pack([_attr_float(a["fraction"] if a else None) for a in areas])
            out[f"{m}_basin_area_edge"] = pack([int(bool(a and a["lower_bound"])) for a in areas], flag=True)
        out[f"{m}_sharpness"] = pack([_attr_float(f["sharpness"] if f else None) for f in fs])
        out[f"{m}_sharpness_relative"] = pack([_attr_float(f["sharpness_relative"] if f else None) for f in fs])
    try:
        located = [_locate(surface, position) for _, position in centres]
    except SurfaceFileError:  # a grid that is not ascending: no centre
        located = [None] * len(centres)
    points = [surface.point(i) if i is not None else (math.nan,) * surface.dims for i in located]
    out["flatness_at"] = kind
    out["flatness_epsilon"] = float(DEFAULT_EPSILON)
    out["flatness_radius"] = pack([_inside_radius(surface, p) if i is not None else math.nan
                                   for i, p in zip(located, points)])
    if kind == "models":
        out["flatness_models"] = [label for label, _ in centres]
        for k, ax in enumerate(axes):
            out[f"flatness_centre_{ax}"] = np.asarray([p[k] for p in points], dtype=np.float64)
    else:
        out["flatness_centre"] = np.asarray(points[0], dtype=np.float64)
    return out


def store_derived(path: str | Path) -> dict[str, Any]:
    """Store barrier and flatness numbers of a finished surface as root attributes (docs/schema.md); return them."""
    values = derived_attributes(load_surface(path))
    with h5py.File(path, "r+") as f:
        for key, value in values.items():
            f.attrs[key] = value
    return values
