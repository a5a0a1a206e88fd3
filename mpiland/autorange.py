"""Automatic grid range (``grid.x = "auto"``): a short pre-scan along each axis picks a symmetric range.

For random, file and Hessian directions an axis given as ``"auto"`` (or a bare
``num``) takes its range from a 1D pre-scan through the centre: the loss at the
origin L0, then along the axis (the other coordinate 0) at ±``max``·2^-j for
j = 6, 5, …, 0 (doubling steps outward), each side stopping at the first point
where the loss reaches ``rise`` × L0 (or is not finite). The side's crossing is
interpolated between its last two points, on the parabola through its last three
(exact for a quadratic loss; linearly where that parabola does not cross there);
a side that never rises counts as ``max``. The range is ±R with R the larger of the two crossings,
rounded up to two significant digits (so rounding-level differences between
launches do not move it) and clipped to ``max``. The scan runs on rank 0 and the
range is broadcast, so every rank and every launch uses the same grid; a resumed
file keeps the range it was made with. The scan is stored in the file's
``autorange/`` group (docs/schema.md). Nothing here imports torch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .errors import GridError

STEPS = 6
"""The smallest pre-scan step is ``max / 2**STEPS``; each side takes at most ``STEPS + 1`` points."""
GROUP = "autorange"


@dataclass(frozen=True)
class AxisScan:
    """The pre-scan of one axis: coordinates and losses (the centre included), crossings and the range."""

    coordinates: np.ndarray
    values: np.ndarray
    crossings: tuple[float, float]
    range: float


@dataclass(frozen=True)
class AutoRange:
    """The pre-scan of a grid's automatic axes ("x", "y"), the metric and settings used, its cost."""

    metric: str
    rise: float
    max: float
    centre: float
    axes: dict[str, AxisScan] = field(default_factory=dict)
    points: int = 0
    seconds: float = 0.0

    def write(self, f: Any) -> None:
        """Store the scan as the ``autorange/`` group of an open h5py file (replacing one there)."""
        if GROUP in f:
            del f[GROUP]
        g = f.create_group(GROUP)
        a = g.attrs
        a["metric"], a["rise"], a["max"], a["centre_loss"] = self.metric, self.rise, self.max, self.centre
        a["points"], a["seconds"] = self.points, self.seconds
        a["axes"] = list(self.axes)
        for name, scan in self.axes.items():
            g.create_dataset(f"{name}_coordinates", data=scan.coordinates)
            g.create_dataset(f"{name}_values", data=scan.values)
            a[f"{name}_crossings"] = np.asarray(scan.crossings, dtype=np.float64)
            a[f"{name}_range"] = np.array([-scan.range, scan.range], dtype=np.float64)


def read_ranges(f: Any, rise: float, limit: float, metric: str) -> dict[str, float] | None:
    """The ranges stored in an open file's ``autorange/`` group when it was made with these settings, else None."""
    g = f.get(GROUP)
    if g is None:
        return None
    a = g.attrs
    if str(a.get("metric")) != metric or float(a.get("rise", -1)) != rise or float(a.get("max", -1)) != limit:
        return None
    return {str(name): float(np.asarray(a[f"{name}_range"])[1]) for name in a.get("axes", [])}


def round_up(value: float) -> float:
    """``value`` (> 0) rounded up to two significant digits, e.g. 0.8312 -> 0.84."""
    exponent = math.floor(math.log10(value)) - 1
    digits = math.ceil(round(value / 10.0 ** exponent, 9))
    return float(f"{digits}e{exponent}")


def _crossing(run: list[tuple[float, float]], target: float) -> float:
    """Where a side's loss reaches ``target`` between its last two points (t, loss): on the parabola through
    its last three (the centre counts), else on the line through the last two; the last t when its loss
    is not finite."""
    (t0, l0), (t1, l1) = run[-2], run[-1]
    if not math.isfinite(l1) or l1 == l0:
        return t1
    if len(run) >= 3 and all(math.isfinite(v) for _, v in run[-3:]):
        ts, ls = zip(*run[-3:])
        coefficients = np.polyfit(ts, np.asarray(ls) - target, 2)
        roots = [r.real for r in np.roots(coefficients) if abs(r.imag) < 1e-12 and t0 <= r.real <= t1]
        if roots:
            return float(min(roots))
    return t0 + (t1 - t0) * min(1.0, max(0.0, (target - l0) / (l1 - l0)))


Evaluate = Callable[[np.ndarray], np.ndarray]
"""Losses at grid coordinates (k × dims), the same on every call for the same points."""


def scan(evaluate: Evaluate, dims: int, axes: list[str], rise: float, limit: float, metric: str) -> AutoRange:
    """Pre-scan the automatic ``axes`` of a ``dims``-dimensional grid with ``evaluate``; see the module docstring.

    Raises GridError when the loss at the centre is not a positive finite number.
    """
    start = time.perf_counter()
    centre = float(evaluate(np.zeros((1, dims)))[0])
    if not (math.isfinite(centre) and centre > 0):
        raise GridError(f"grid.x/y = \"auto\" picks the range where {metric} reaches grid.auto_rise × its value at "
                        f"the centre, which is {centre}: it needs a positive loss there; give [min, max, num]")
    target = rise * centre
    steps = [limit * 2.0 ** (j - STEPS) for j in range(STEPS + 1)]
    sides = [(axis, sign) for axis in axes for sign in (-1.0, 1.0)]
    seen: dict[tuple[str, float], list[tuple[float, float]]] = {side: [(0.0, centre)] for side in sides}
    open_sides = list(sides)
    points = 1
    for t in steps:
        if not open_sides:
            break
        coords = np.zeros((len(open_sides), dims))
        for row, (axis, sign) in enumerate(open_sides):
            coords[row, "xy".index(axis)] = sign * t
        losses = evaluate(coords)
        points += len(open_sides)
        for (axis, sign), loss in zip(list(open_sides), losses):
            seen[(axis, sign)].append((t, float(loss)))
            if not math.isfinite(float(loss)) or loss >= target:
                open_sides.remove((axis, sign))
    result: dict[str, AxisScan] = {}
    for axis in axes:
        crossings = []
        for sign in (-1.0, 1.0):
            run = seen[(axis, sign)]
            last = run[-1][1]
            crossings.append(_crossing(run, target) if (not math.isfinite(last) or last >= target) else math.nan)
        reach = [c if math.isfinite(c) else limit for c in crossings]
        value = min(limit, round_up(max(max(reach), limit * 2.0 ** -STEPS * 1e-3)))
        pairs = sorted({(sign * t + 0.0, loss) for sign in (-1.0, 1.0) for t, loss in seen[(axis, sign)]})
        result[axis] = AxisScan(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]),
                                (-crossings[0], crossings[1]), value)
    return AutoRange(metric, rise, limit, centre, result, points, time.perf_counter() - start)
