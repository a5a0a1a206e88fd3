"""Summarise a surface file for ``mpiland info FILE``: :func:`summarize` (plain,
JSON-safe data) and :func:`format_summary` (aligned text for the terminal).

Light like the reader (numpy and h5py only, no torch or matplotlib), so that
inspecting a file is quick; the numbers come from :mod:`.measures`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SurfaceFileError
from ..surface.reader import Positions, Spectrum, Surface, best_is, load_surface
from .measures import (DEFAULT_EPSILON, check_flatness_args, flatness_at_centres, flatness_centres, format_number,
                       path_barrier)


def _axis_text(axis: Any) -> str:
    if isinstance(axis, dict):
        lo, hi, num = axis.get("min"), axis.get("max"), axis.get("num")
    elif isinstance(axis, (list, tuple)) and len(axis) == 3:
        lo, hi, num = axis
    else:
        return str(axis)
    if lo is None and hi is None:
        return f"auto (from the models' positions) x {num}"
    return f"[{format_number(lo)}, {format_number(hi)}] x {num}"


def _job_summary(job: dict[str, Any]) -> dict[str, Any]:
    def section(name: str) -> dict[str, Any]:
        v = job.get(name)
        return v if isinstance(v, dict) else {}

    model, directions, grid, data = section("model"), section("directions"), section("grid"), section("data")
    out: dict[str, Any] = {
        "name": job.get("name") or None,
        "model_factory": model.get("factory"),
        "checkpoint": model.get("checkpoint"),
        "directions": {k: directions.get(k) for k in ("kind", "norm", "seed") if k in directions},
        "splits": list(data["splits"]) if isinstance(data.get("splits"), (list, tuple)) else data.get("splits"),
    }
    g = {}
    for ax in ("x", "y"):
        if grid.get(ax) is not None:
            g[ax] = _axis_text(grid[ax])
    out["grid"] = g
    return out


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python and non-finite floats made None (JSON-safe)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, (list, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _positions_summary(p: Positions | None) -> list[dict[str, Any]] | None:
    if p is None:
        return None
    return [{"label": label, "coordinates": tuple(float(c) for c in row)}
            for label, row in zip(p.labels, p.coordinates)]


def _spectrum_summary(name: str, s: Spectrum) -> dict[str, Any]:
    """One point's spectrum for ``info``: its top eigenvalues, the density's range and λmax per group."""
    lo, hi = s.support
    return {"point": name, "label": s.label, "coordinates": tuple(float(c) for c in s.coordinates),
            "split": s.split, "n": s.n, "probes": s.probes, "steps": s.steps, "top": [float(v) for v in s.top],
            "top_converged": s.top_converged, "support": [lo, hi],
            "grid": [float(s.grid[0]), float(s.grid[-1])], "width": s.width,
            "trace": s.trace, "trace_stderr": s.trace_stderr,
            "groups": [{"name": g, "size": int(k), "lam_max": float(a), "lam_min": float(b)}
                       for g, k, a, b in zip(s.groups, s.group_size, s.group_max, s.group_min)]}


def summarize(path: str | Path | Surface, epsilon: float = DEFAULT_EPSILON,
              radius: float | None = None) -> dict[str, Any]:
    """Summarise a surface file (or a surface already in memory) as plain, JSON-safe data (see
    :func:`format_summary` for the text form).

    Keys: ``path``, ``schema`` (int or None for a reference-tool file),
    ``schema_text``, ``mpiland_version``, ``created``, ``fingerprint`` (short)
    and ``fingerprint_full``, ``job`` (or None), ``dims``, ``shape``, ``x``/``y``
    ranges, ``progress`` (``done``: points evaluated, ``skipped``: points adaptive
    refinement left out, which need no evaluation, ``total``, ``percent`` of the
    points done or skipped), ``seconds`` (total, mean per
    done point, or None), ``metrics`` (per metric: min, argmin, max, argmax
    (accuracies and Hessian metrics), finite and nonfinite counts),
    ``nonfinite`` (done points with a non-finite value in any metric),
    ``endpoints`` ([t0, t1] or None), ``models`` (list of label and
    coordinates, or None), ``trajectory`` (labels, coordinates and
    ``explained_variance_ratio``, or None), ``barriers`` (1D paths between models,
    files with ``endpoints``: per loss metric, :func:`~.measures.path_barrier`'s result or None when too
    few values; empty for other files),
    ``flatness_at`` (``origin``: measured at θ*, the origin, for random, file,
    pca and hessian directions; ``models``: at each model of a path or plane;
    :func:`~.measures.flatness_centres`) and ``flatness`` (per ``<split>_loss``, a list
    with one entry per centre, :func:`~.measures.flatness_at_centres` with ``epsilon`` and
    ``radius``: ``label``, ``coordinates``, ``note`` (None when measured, else why
    not: ``outside the grid``, ``skipped by adaptive refinement``, ``not evaluated
    yet``, ``not finite (diverged)``) and, when measured, the flatness keys:
    ``centre`` (grid point used), ``loss``, ``curvature`` (axis -> value; an axis
    without a second difference is left out and named in ``curvature_missing`` with
    the reason), ``basin_width``, ``basin_area``, ``radius``, ``sharpness`` ...;
    None when the grid is not ascending) and ``spectrum``
    (``hessian.spectrum``: per point ``origin``, ``model_<i>``: ``top``
    eigenvalues, the density's ``support`` [smallest, largest node] and ``grid``
    range, ``width`` σ, the quadrature's ``trace`` and ``trace_stderr``, and
    ``groups`` with each parameter group's ``lam_max`` and ``lam_min``; None without
    one), ``origin_curvature`` (per split: the Hessian ``trace`` and its ``trace_stderr`` at the
    origin, and ``along``: axis -> dᵀHd/‖d‖²; None when the file has none). Undefined numbers are
    None, never NaN.
    """
    epsilon, radius = check_flatness_args(epsilon, radius)
    s = path if isinstance(path, Surface) else load_surface(path)
    total = int(np.prod(s.shape))
    n_done = int(s.done.sum())
    n_skipped = int(s.skipped.sum())
    fp = s.attrs.get("fingerprint")
    summary: dict[str, Any] = {
        "path": str(s.path),
        "schema": s.schema,
        "schema_text": str(s.schema) if s.schema is not None else "reference-tool file",
        "mpiland_version": s.attrs.get("mpiland_version"),
        "created": s.attrs.get("created"),
        "fingerprint": fp[:12] if isinstance(fp, str) else None,
        "fingerprint_full": fp if isinstance(fp, str) else None,
        "job": _job_summary(s.job) if s.job else None,
        "dims": s.dims,
        "shape": s.shape,
        "x": {"min": float(s.x.min()), "max": float(s.x.max()), "num": int(s.x.size)} if s.x.size else None,
        "y": ({"min": float(s.y.min()), "max": float(s.y.max()), "num": int(s.y.size)}
              if s.y is not None and s.y.size else None),
        "x_label": s.x_label,
        "y_label": s.y_label if s.dims == 2 else None,
        "splits": s.splits,
        "progress": {"done": n_done, "skipped": n_skipped, "total": total,
                     "percent": 100.0 * (n_done + n_skipped) / total if total else 0.0},
        "seconds": None,
    }
    if s.seconds is not None and n_done:
        secs = s.seconds[s.done]
        secs = secs[np.isfinite(secs)]
        if secs.size:
            summary["seconds"] = {"total": float(secs.sum()), "mean": float(secs.mean())}

    metrics: dict[str, Any] = {}
    any_bad = np.zeros(s.shape, dtype=bool)
    for name in s.metrics:
        comp = s.computed[name]
        raw = s.metrics[name]
        finite = comp & np.isfinite(raw)
        bad = comp & ~np.isfinite(raw)
        if not name.endswith("_stderr"):
            # stderr is legitimately NaN with a single batch
            any_bad |= bad
        info: dict[str, Any] = {"finite": int(finite.sum()), "nonfinite": int(bad.sum()),
                                "min": None, "argmin": None, "max": None, "argmax": None}
        if finite.any():
            v = np.where(finite, raw, np.nan)
            imin = np.unravel_index(int(np.nanargmin(v)), s.shape)
            imax = np.unravel_index(int(np.nanargmax(v)), s.shape)
            info["min"] = float(v[imin])
            info["argmin"] = s.point(imin)
            info["max"] = float(v[imax])
            if best_is(name) == "max":
                info["argmax"] = s.point(imax)
        metrics[name] = info
    summary["metrics"] = metrics
    summary["nonfinite"] = int(any_bad.sum())
    summary["endpoints"] = list(s.endpoints) if s.endpoints else None
    summary["models"] = _positions_summary(s.models)
    summary["trajectory"] = None
    if s.trajectory is not None:
        ratio = s.explained_variance_ratio
        summary["trajectory"] = {"points": len(s.trajectory), "labels": list(s.trajectory.labels),
                                 "coordinates": [tuple(r) for r in s.trajectory.coordinates.tolist()],
                                 "explained_variance_ratio": ratio.tolist() if ratio is not None else None}
    barriers: dict[str, Any] = {}
    if s.dims == 1 and s.endpoints is not None:  # a barrier is that of a path between two models
        for m in s.loss_metrics():
            try:
                barriers[m] = path_barrier(s, m)
            except SurfaceFileError:
                barriers[m] = None
    summary["barriers"] = barriers
    flat: dict[str, Any] = {}
    for m in s.split_losses():
        try:
            entries = flatness_at_centres(s, m, epsilon, radius)
        except SurfaceFileError:
            flat[m] = None
            continue
        for e in entries:  # an axis without a second difference is named in curvature_missing, not given as None
            if e["note"] is None:
                e["curvature"] = {a: v for a, v in e["curvature"].items() if v is not None}
        flat[m] = entries
    summary["flatness_at"] = flatness_centres(s)[0] if s.split_losses() else None
    summary["flatness"] = flat
    summary["spectrum"] = ({name: _spectrum_summary(name, sp) for name, sp in s.spectrum.items()}
                           if s.spectrum else None)
    summary["origin_curvature"] = _origin_curvature(s.attrs) or None
    return _plain(summary)


def _origin_curvature(attrs: dict[str, Any]) -> dict[str, Any]:
    """Per split, the curvature stored at the origin (root attributes ``<split>_hess_trace``,
    ``_hess_trace_stderr`` and ``_hess_curvature_<axis>``): ``trace``, ``trace_stderr`` and ``along``
    (axis -> dᵀHd/‖d‖²)."""
    out: dict[str, Any] = {}

    def entry(split: str) -> dict[str, Any]:
        return out.setdefault(split, {"trace": None, "trace_stderr": None, "along": {}})

    for key, value in attrs.items():
        split, sep, rest = key.partition("_hess_")
        if not (sep and split):
            continue
        if rest in ("trace", "trace_stderr"):
            entry(split)[rest] = float(value)
        elif rest.startswith("curvature_"):
            entry(split)["along"][rest[len("curvature_"):]] = float(value)
    return out


def _point_text(p: tuple[float, ...] | None) -> str:
    if p is None:
        return "-"
    if len(p) == 1:
        return f"x={format_number(p[0])}"
    return f"({format_number(p[0])}, {format_number(p[1])})"


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize`'s result as aligned text lines for the terminal."""
    rows: list[tuple[str, str]] = [("file", summary["path"])]
    schema = summary["schema_text"]
    if summary.get("mpiland_version"):
        schema += f" (written by mpiland {summary['mpiland_version']})"
    rows.append(("schema", schema))
    if summary.get("created"):
        rows.append(("created", str(summary["created"])))
    if summary.get("fingerprint"):
        rows.append(("fingerprint", summary["fingerprint"]))
    job = summary.get("job")
    if job:
        if job.get("name"):
            rows.append(("job", job["name"]))
        if job.get("model_factory"):
            rows.append(("model", str(job["model_factory"])))
        rows.append(("checkpoint", str(job.get("checkpoint") or "none")))
        d = job.get("directions") or {}
        if d:
            parts = [str(d.get("kind", "?"))]
            if "norm" in d:
                parts.append(f"norm {d['norm']}")
            if "seed" in d:
                parts.append(f"seed {d['seed']}")
            rows.append(("directions", ", ".join(parts)))
        if job.get("grid"):
            rows.append(("grid", ", ".join(f"{k} {v}" for k, v in job["grid"].items())))
        if job.get("splits"):
            sp = job["splits"]
            rows.append(("splits", ", ".join(sp) if isinstance(sp, list) else str(sp)))
    shape = " x ".join(str(n) for n in summary["shape"])
    rows.append(("dims", f"{summary['dims']} ({shape} points)"))
    for ax in ("x", "y"):
        a = summary.get(ax)
        if a:
            label = summary.get(f"{ax}_label") or ax
            rows.append((ax, f"{format_number(a['min'])} .. {format_number(a['max'])} ({a['num']} values): {label}"))
    if summary.get("endpoints"):
        t0, t1 = summary["endpoints"]
        rows.append(("endpoints", f"t0={format_number(t0)}, t1={format_number(t1)} (the end models of the path)"))
    p = summary["progress"]
    skipped = p.get("skipped") or 0
    text = f"{p['done'] + skipped}/{p['total']} points done ({p['percent']:.1f}%)"
    if skipped:
        text += f", {skipped} of them skipped by adaptive refinement (not evaluated)"
    rows.append(("progress", text))
    sec = summary.get("seconds")
    if sec:
        rows.append(("time", f"{sec['total']:.1f} s total, {sec['mean']:.3g} s per point"))
    for name, m in summary["metrics"].items():
        if m["min"] is None:
            text = "no finite value yet"
        else:
            text = f"min {format_number(m['min'])} at {_point_text(m['argmin'])}, max {format_number(m['max'])}"
            if m.get("argmax") is not None:
                text += f" at {_point_text(m['argmax'])}"
        if m["nonfinite"]:
            text += f"; {m['nonfinite']} non-finite"
        rows.append((name, text))
    rows.append(("non-finite", f"{summary['nonfinite']} done points with inf/NaN values"))
    rows.extend(_measure_rows(summary))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _short(v: float | None) -> str:
    """A spectrum number for the ``info`` text: 4 significant digits, ``-`` for None."""
    return "-" if v is None else f"{v:.4g}"


def _bound(value: float | None, at_edge: bool) -> str:
    return ("≥" if at_edge and value is not None else "") + format_number(value)


def _measure_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """Text rows for the models, the trajectory, the barriers and the flatness of a summary."""
    rows: list[tuple[str, str]] = []
    models = summary.get("models")
    if models:
        rows.append(("models", ", ".join(f"{m['label']} at {_point_text(m['coordinates'])}" for m in models)))
    traj = summary.get("trajectory")
    if traj:
        labels = traj["labels"]
        rows.append(("trajectory", f"{traj['points']} checkpoints, {labels[0]} .. {labels[-1]}"))
        ratio = traj.get("explained_variance_ratio")
        if ratio:
            parts = [f"PC{i + 1} {100 * r:.1f} %" if r is not None else f"PC{i + 1} -" for i, r in enumerate(ratio)]
            rows.append(("variance", ", ".join(parts) + " of the trajectory's variance"))
    for m, b in (summary.get("barriers") or {}).items():
        if b is None:
            rows.append(("barrier", f"{m}: too few finite values"))
            continue
        text = f"{m}: {format_number(b['height'])}"
        if b["at"] is not None:
            text += f" at t={format_number(b['at'])}"
        text += (f" between t={format_number(b['t0'])} ({format_number(b['loss0'])})"
                 f" and t={format_number(b['t1'])} ({format_number(b['loss1'])}), "
                 + ("monotonic" if b["monotonic"] else "not monotonic"))
        if b["ignored"]:
            text += f"; {b['ignored']} non-finite points ignored"
        rows.append(("barrier", text))
    for m, entries in (summary.get("flatness") or {}).items():
        if entries is None:
            rows.append(("flatness", f"{m}: the grid is not ascending"))
            continue
        rows.extend(("flatness", _flatness_text(m, f)) for f in entries)
    for split, c in (summary.get("origin_curvature") or {}).items():
        parts = []
        if c["trace"] is not None:
            parts.append(f"Hessian trace {_short(c['trace'])}" + (f" ± {_short(c['trace_stderr'])}"
                                                                   if c["trace_stderr"] is not None else ""))
        if c["along"]:
            parts.append("dᵀHd/‖d‖² along " + ", ".join(f"{a} {_short(v)}" for a, v in c["along"].items()))
        if parts:
            rows.append(("curvature", f"{split} at the origin: " + "; ".join(parts)))
    for sp in (summary.get("spectrum") or {}).values():
        where = "origin" if sp["point"] == "origin" else f"model {sp['label']} at {_point_text(sp['coordinates'])}"
        top = ", ".join(_short(v) for v in sp["top"])
        text = (f"{where} on {sp['split']}, {sp['probes']} probes x {sp['steps']} steps: top {top}"
                f"{'' if sp['top_converged'] else ' (not converged)'}; density over "
                f"[{_short(sp['support'][0])}, {_short(sp['support'][1])}], "
                f"σ {_short(sp['width'])}")
        if sp["trace"] is not None:  # a single probe has no standard error: say nothing rather than "± -"
            text += f"; trace {_short(sp['trace'])}" + (f" ± {_short(sp['trace_stderr'])}"
                                                       if sp["trace_stderr"] is not None else "")
        rows.append(("spectrum", text))
        groups = ", ".join(f"{g['name']} {_short(g['lam_max'])}" for g in sp["groups"])
        if groups:
            rows.append(("λmax by group", groups))
    return rows


def _where_text(f: dict[str, Any]) -> str:
    """Where a flatness entry is measured: ``θ* (0, 0)``, ``the origin (x=0)``, or a model off the grid
    point used (``final (0.98, 1), grid point (1, 1)``)."""
    label = "the origin" if f["label"] == "origin" else f["label"]
    def point(p: Any) -> str:
        return f"({_point_text(tuple(p))})" if len(p) == 1 else _point_text(tuple(p))

    text = f"{label} {point(f['coordinates'])}"
    centre = f.get("centre")
    if centre is not None and not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
                                      for a, b in zip(centre, f["coordinates"])):
        text += f", grid point {point(centre)}"
    return text


def _flatness_text(m: str, f: dict[str, Any]) -> str:
    """One ``flatness`` row of ``info``: the measures of metric ``m`` at one centre, or why there are none."""
    if f["note"] is not None:
        return f"{m} at {_where_text(f)}: {f['note']}"
    axes = list(f["basin_width"])
    curv = ", ".join(f"{a} {format_number(f['curvature'][a])}" for a in axes if a in f["curvature"])
    width = ", ".join(f"{a} {_bound(f['basin_width'][a]['width'], f['basin_width'][a]['lower_bound'])}"
                      for a in axes)
    text = (f"{m} at {_where_text(f)} = {format_number(f['loss'])}, ε {format_number(f['epsilon'])}: "
            + (f"curvature {curv}; " if curv else "") + f"basin width {width}")
    area = f.get("basin_area")
    if area:
        text += f"; area {_bound(area['area'], area['lower_bound'])}"
        if area["fraction"] is not None:
            text += f" ({100 * area['fraction']:.3g} % of the grid)"
    if f["sharpness"] is not None:
        text += (f"; sharpness {format_number(f['sharpness'])} ({format_number(f['sharpness_relative'])} %) "
                 f"within r={format_number(f['radius'])}")
    reasons: dict[str, list[str]] = {}
    for a, why in (f.get("curvature_missing") or {}).items():
        reasons.setdefault(why, []).append(a)
    for why, names in reasons.items():
        text += f" (no second difference along {' and '.join(names)}: {why})"
    return text
