"""Pictures of a training trajectory projected on its principal components:
the PCA path, Andrews curves and a radar chart (:func:`plot_trajectory`).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib import colors as mcolors
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..errors import SurfaceFileError
from .common import FORMATS, ORDER_CMAP, check_formats, line_width, spread

_RADAR_MAX = 8

def andrews_curves(coords: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Andrews curves (Andrews 1972) of the rows of ``coords`` (T, k) at the angles ``s`` (S,).

    Row x gives f(s) = x1/√2 + x2 sin s + x3 cos s + x4 sin 2s + x5 cos 2s + …;
    checkpoints close in all k components have close curves, so the plot shows
    the whole trajectory, not just two components. Returns shape (T, S).
    """
    c = _checked_array(coords, "coords", ndim=2)
    angles = _checked_array(s, "s", ndim=1)
    basis = np.empty((c.shape[1], angles.size))
    basis[0] = 1.0 / np.sqrt(2.0)
    for j in range(1, c.shape[1]):
        n = (j + 1) // 2
        basis[j] = np.sin(n * angles) if j % 2 else np.cos(n * angles)
    return c @ basis


def _checked_array(value: object, name: str, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SurfaceFileError(f"{name} must be an array of numbers, got {type(value).__name__}; "
                               "pass the projected checkpoints as floats") from None
    if arr.ndim != ndim or not np.isfinite(arr).all():
        raise SurfaceFileError(f"{name} must be a {ndim}D array of finite numbers, got shape {arr.shape}"
                               f"{'' if np.isfinite(arr).all() else ' with inf/NaN'}; pass finite projections")
    return arr


def _trajectory_stem(out: str | os.PathLike[str]) -> pathlib.Path:
    """``out`` as a path stem: a directory gets ``trajectory``, an image suffix is dropped."""
    target = pathlib.Path(out)
    if target.is_dir() or os.fspath(out).endswith(("/", os.sep)):
        return target / "trajectory"
    if target.suffix.lower().lstrip(".") in FORMATS:
        return target.with_suffix("")
    return target


def _order_colourbar(fig: Figure, ax, mappable, labels: Sequence[str]) -> None:
    """A colourbar of training order, its ticks named by checkpoint labels."""
    cbar = fig.colorbar(mappable, ax=ax, label="training order")
    ticks = spread(len(labels), 5)
    cbar.set_ticks(ticks)
    cbar.set_ticklabels([labels[i] for i in ticks])
    cbar.ax.minorticks_off()


def _pca_figure(c: np.ndarray, labels: list[str], explained: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.0, 5.4))
    ax = fig.add_subplot()
    order = np.arange(c.shape[0])
    norm = mcolors.Normalize(0, max(c.shape[0] - 1, 1))
    ax.plot(c[:, 0], c[:, 1], "-", color="0.6", lw=1.0, zorder=1)
    sc = ax.scatter(c[:, 0], c[:, 1], c=order, cmap=ORDER_CMAP, norm=norm, s=30, edgecolors="black",
                    linewidths=0.3, zorder=2)
    ax.plot(c[:1, 0], c[:1, 1], "o", ms=12, mfc="none", mec="black", mew=1.5, zorder=3)
    ax.plot(c[-1:, 0], c[-1:, 1], "s", ms=12, mfc="none", mec="black", mew=1.5, zorder=3)
    middle = (c[:, 0].min() + c[:, 0].max()) / 2
    for i, word in ((0, "start"), (c.shape[0] - 1, "end")):
        right = c[i, 0] > middle  # label towards the inside of the axes
        ax.annotate(f"{word}: {labels[i]}", (c[i, 0], c[i, 1]), xytext=(-10 if right else 10, 8),
                    textcoords="offset points", ha="right" if right else "left", fontsize=8,
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", alpha=0.8), zorder=4)
    ax.set_xlabel(f"PC1 ({100 * explained[0]:.1f} % of variance)")
    ax.set_ylabel(f"PC2 ({100 * explained[1]:.1f} % of variance)")
    ax.set_title(f"Training trajectory in its first two principal components\n"
                 f"({c.shape[0]} checkpoints, {100 * explained[:2].sum():.1f} % of the variance shown)")
    ax.grid(True, alpha=0.3)
    _order_colourbar(fig, ax, sc, labels)
    return fig


def _andrews_figure(c: np.ndarray, labels: list[str]) -> Figure:
    fig = Figure(figsize=(7.0, 5.0))
    ax = fig.add_subplot()
    angles = np.linspace(-np.pi, np.pi, 256)
    curves = andrews_curves(c, angles)
    lines = LineCollection([np.column_stack([angles, f]) for f in curves], cmap=ORDER_CMAP,
                           norm=mcolors.Normalize(0, max(c.shape[0] - 1, 1)), linewidths=1.2, alpha=0.85)
    lines.set_array(np.arange(c.shape[0]))
    ax.add_collection(lines)
    ax.set_xlim(-np.pi, np.pi)
    pad = 0.05 * max(float(np.ptp(curves)), 1e-12)
    ax.set_ylim(float(curves.min()) - pad, float(curves.max()) + pad)
    ax.set_xticks([-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi], ["−π", "−π/2", "0", "π/2", "π"])
    ax.set_xlabel("s")
    ax.set_ylabel("f(s) = PC1/√2 + PC2 sin s + PC3 cos s + …")
    ax.set_title(f"Andrews curves of the training trajectory ({c.shape[1]} components)")
    ax.grid(True, alpha=0.3)
    _order_colourbar(fig, ax, lines, labels)
    return fig


def turning_point(coords: np.ndarray) -> int:
    """The index of the trajectory's turning point: the checkpoint farthest from the straight line
    between the first and the last (in all components), where the path bends most; 0 for a straight path."""
    c = _checked_array(coords, "coords", ndim=2)
    chord = c[-1] - c[0]
    rel = c - c[0]
    length = float(np.linalg.norm(chord))
    if length > 0:
        rel = rel - np.outer(rel @ chord / length ** 2, chord)
    distance = np.linalg.norm(rel, axis=1)
    return int(np.argmax(distance)) if distance.max() > 0 else 0


def _radar_figure(c: np.ndarray, labels: list[str], explained: np.ndarray) -> Figure:
    fig = Figure(figsize=(7.6, 6.0))
    ax = fig.add_subplot(projection="polar")
    t, k = c.shape
    lo, hi = c.min(axis=0), c.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    scaled = np.where(hi > lo, (c - lo) / span, 0.5)
    angles = np.linspace(0, 2 * np.pi, k, endpoint=False)
    closed = np.append(angles, angles[0])
    cmap = colormaps[ORDER_CMAP]
    turn = turning_point(c)
    shown = spread(t, _RADAR_MAX)
    if turn not in shown:  # the turning point instead of the evenly spaced checkpoint nearest it
        inner = [i for i in shown if 0 < i < t - 1]
        shown = sorted((set(shown) - {min(inner, key=lambda i: abs(i - turn))}) | {turn})
    for i in shown:
        colour = cmap(i / max(t - 1, 1))
        r = np.append(scaled[i], scaled[i, 0])
        ax.plot(closed, r, color=colour, lw=line_width(1.0), ls="--" if i == turn and 0 < i < t - 1 else "-",
                label=f"{labels[i]} (turning point)" if i == turn and 0 < i < t - 1 else labels[i])
        ax.fill(closed, r, color=colour, alpha=0.06)
    ax.set_xticks(angles, [f"PC{j + 1}\n{100 * explained[j]:.1f} %" for j in range(k)], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.5, 1], ["min", "", "max"], fontsize=7)
    which = (f"{len(shown)} of {t} checkpoints, evenly spaced, with the turning point" if len(shown) < t
             else f"all {t} checkpoints")
    ax.set_title(f"Training trajectory, radar chart ({which})\n"
                 "each axis scaled from its minimum to its maximum over the checkpoints", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.08, 1.0), fontsize=8, title="checkpoint", title_fontsize=8)
    return fig


def _checked_trajectory(coords: np.ndarray, labels: Sequence[str],
                        explained: np.ndarray) -> tuple[np.ndarray, list[str], np.ndarray]:
    c = _checked_array(coords, "coords", ndim=2)
    if c.shape[0] < 2 or c.shape[1] < 2:
        raise SurfaceFileError(f"a trajectory needs at least 2 checkpoints on at least 2 principal components, "
                               f"got {c.shape[0]} x {c.shape[1]}; give more checkpoints")
    names = [str(v) for v in labels]
    if len(names) != c.shape[0]:
        raise SurfaceFileError(f"{len(names)} labels for {c.shape[0]} checkpoints; give one label per checkpoint")
    ratio = _checked_array(explained, "explained", ndim=1)
    if ratio.size != c.shape[1] or (ratio < 0).any():
        raise SurfaceFileError(f"explained must hold {c.shape[1]} non-negative variance ratios (one per component), "
                               f"got {ratio.tolist()}")
    return c, names, ratio


def trajectory_figures(coords: np.ndarray, labels: Sequence[str], explained: np.ndarray) -> dict[str, Figure]:
    """The three pictures of :func:`plot_trajectory` as Figures, keyed ``pca``, ``andrews``, ``radar``."""
    c, names, ratio = _checked_trajectory(coords, labels, explained)
    return {"pca": _pca_figure(c, names, ratio), "andrews": _andrews_figure(c, names),
            "radar": _radar_figure(c, names, ratio)}


def plot_trajectory(coords: np.ndarray, labels: Sequence[str], explained: np.ndarray,
                    out: str | os.PathLike[str], formats: Sequence[str] = ("png",)) -> list[pathlib.Path]:
    """Draw a training trajectory projected on its top k ≥ 2 principal components; return the files.

    ``coords`` (T, k): the T checkpoints' projections, in training order;
    ``labels``: T names (e.g. ``epoch_003``); ``explained`` (k,): explained
    variance ratios. ``out`` is a path stem (a directory gets ``trajectory``):
    writes ``<out>_pca``, ``<out>_andrews`` and ``<out>_radar`` in every format:
    the PC1/PC2 path coloured by training order, the Andrews curves of all k
    components, and a radar chart of at most 8 checkpoints: evenly spaced ones and
    the turning point (:func:`turning_point`, dashed).
    """
    _checked_trajectory(coords, labels, explained)
    fmts = check_formats(formats)
    stem = _trajectory_stem(out)
    written: list[pathlib.Path] = []
    for part, fig in trajectory_figures(coords, labels, explained).items():
        try:
            for fmt in fmts:
                target = stem.with_name(f"{stem.name}_{part}.{fmt}")
                target.parent.mkdir(parents=True, exist_ok=True)
                fig.savefig(target, format=fmt, dpi=150 if fmt == "png" else None, bbox_inches="tight")
                written.append(target)
        finally:
            fig.clear()
    return written
