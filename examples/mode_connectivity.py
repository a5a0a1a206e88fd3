"""Mode connectivity on the built-in digits: the straight line, the line after alignment, and a trained curve.

Usage::

    python examples/mode_connectivity.py [OUT_DIR] [--epochs E] [--json]

Two MLPs are trained from different seeds (a few seconds on a CPU). Then:

1. the straight line between them (Goodfellow et al. 2015, Frankle et al. 2020) and its loss barrier;
2. the same line after permuting the second model's hidden units to match the first
   (weight matching, Ainsworth et al. 2023): the barrier left once the permutation
   symmetry is removed;
3. a Bézier curve with one bend trained between the two (Garipov et al. 2018) and its barrier;
4. the loss over the plane through the two models and the bend, with the curve drawn on it.

It writes OUT_DIR/mode_connectivity.png (the three curves beside the plane) and the
surface files, and prints the three barriers (``--json``: one JSON object). The
expected shape, which tests/test_examples.py checks: the line's barrier is well
above the aligned line's, which is at least the trained curve's, which is near 0.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

import mpiland as ml
from mpiland.data import digits_split

HIDDEN = 16
"""Hidden units per layer: narrow enough that alignment leaves a barrier a trained curve removes."""


def make_model(seed: int) -> nn.Module:
    """A two-layer MLP for flattened 8x8 digits, initialised from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, 10))


def train(seed: int, inputs: torch.Tensor, targets: torch.Tensor, epochs: int) -> nn.Module:
    """SGD from ``seed`` (its own batch order too), so the two modes differ only by their seeds."""
    model = make_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(targets), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs[idx]), targets[idx]).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="plots/mode_connectivity", help="output folder")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs of each mode")
    parser.add_argument("--curve-epochs", type=int, default=40, help="training epochs of the curve's bend")
    parser.add_argument("--json", action="store_true", help="print the barriers as one JSON object")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the same weights on every machine: kernels' sums do not depend on threads

    train_x, train_y = digits_split("train")
    test = {"test": digits_split("test")}
    a = train(1, train_x, train_y, args.epochs)
    b = train(2, train_x, train_y, args.epochs)
    b_aligned = make_model(0)
    b_aligned.load_state_dict(ml.align(a, b))
    curve = ml.connect(make_model(0), a, b, (train_x, train_y), bends=1, epochs=args.curve_epochs, batch_size=32,
                       seed=0, progress="none")
    bend = make_model(0)
    bend.load_state_dict(curve.bends[0])

    common = {"device": "cpu", "progress": "none", "settings": {"run.threads": 1}}
    t = (0.0, 1.0, 41)
    line = ml.landscape(a, ml.directions.interpolation(a, b), test, x=t, out=out / "line.h5", overwrite=True,
                        **common)
    aligned = ml.landscape(a, ml.directions.interpolation(a, b_aligned), test, x=t, out=out / "aligned.h5",
                           overwrite=True, **common)
    bezier = ml.landscape(a, ml.directions.bezier(a, bend, b, compare_line=False), test, x=t,
                          out=out / "curve.h5", overwrite=True, **common)
    plane = ml.landscape(a, ml.directions.plane(a, bend, b), test, x=25, y=25, out=out / "plane.h5",
                         overwrite=True, **common)
    assert line is not None and aligned is not None and bezier is not None and plane is not None
    barriers = {name: float(s.barrier("test_loss")["height"])
                for name, s in (("line", line), ("aligned_line", aligned), ("curve", bezier))}

    fig = Figure(figsize=(10, 4), dpi=110, layout="constrained")
    left, right = fig.subplots(1, 2)
    for key, name, s, style in (("line", "straight line", line, "-"),
                                ("aligned_line", "line after alignment", aligned, "--"),
                                ("curve", "trained Bézier curve", bezier, "-.")):
        left.plot(s.x, s.values("test_loss"), style, label=f"{name} (barrier {barriers[key]:.3f})")
    left.set_xlabel("t (first model at 0, second at 1)")
    left.set_ylabel("test loss")
    left.set_title("Paths between two digits MLPs")
    left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), fontsize=8)
    assert plane.y is not None
    values = np.log10(np.maximum(plane.values("test_loss"), 1e-12))
    mesh = right.contourf(plane.x, plane.y, values.T, levels=30, cmap="viridis")
    fig.colorbar(mesh, ax=right, label="log10 test loss")
    positions = plane.models.coordinates if plane.models is not None else np.zeros((0, 2))
    ts = np.linspace(0, 1, 101)
    weights = np.stack([(1 - ts) ** 2, 2 * ts * (1 - ts), ts**2], axis=1)
    path = weights @ positions[:3]
    right.plot(path[:, 0], path[:, 1], color="white", lw=1.5, label="trained curve")
    right.plot(positions[[0, 2], 0], positions[[0, 2], 1], color="white", lw=1, ls="--", label="straight line")
    right.scatter(positions[:, 0], positions[:, 1], color="crimson", zorder=3)
    for (px, py), label in zip(positions, ("A", "bend", "B")):
        right.annotate(label, (px, py), textcoords="offset points", xytext=(4, 4), color="white")
    right.set_aspect("equal")
    right.set_xlabel("distance along bend − A")
    right.set_ylabel("distance orthogonal to it, towards B")
    right.set_title("Plane through A, the bend and B")
    fig.savefig(out / "mode_connectivity.png")
    if args.json:
        print(json.dumps(barriers))
    else:
        for name, value in barriers.items():
            print(f"test-loss barrier, {name.replace('_', ' ')}: {value:.4f}")
        print(f"figure: {out / 'mode_connectivity.png'}")
    return barriers


if __name__ == "__main__":
    main()
