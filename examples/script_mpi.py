"""A loss landscape from a Python script under MPI: every rank runs this file and they share the grid.

Usage::

    mpiexec -n 2 python examples/script_mpi.py surfaces/digits.h5    # two ranks share the grid
    python examples/script_mpi.py surfaces/digits.h5                  # one process, the same file
    srun -n 8 python examples/script_mpi.py surfaces/digits.h5        # a SLURM allocation

    python examples/script_mpi.py OUT.h5 [--points N] [--epochs E] [--overwrite]

It trains a small MLP on the built-in 8x8 digits (seeded, a few seconds on a CPU),
then evaluates the train and test loss and accuracy on an N x N grid (default 21)
of filter-normalised random directions around it, and writes the surface to OUT.h5.
Rank 0 prints a short summary; ``mpiland plot OUT.h5`` draws it and ``mpiland info
OUT.h5`` describes it. The file does not depend on the number of ranks: one process
and ``mpiexec -n 2`` write the same values, bit for bit. Run the same command again
to resume an interrupted run (points in the file are not evaluated again);
``--overwrite`` starts afresh.

The pattern for your own model:

* every rank calls ``ml.landscape`` with the same arguments and ``comm=MPI.COMM_WORLD``;
  mpiland splits the grid among the ranks (one GPU each when there are GPUs) and
  rank 0 writes the file;
* every rank must hold the same model and data. Here rank 0 trains and broadcasts
  the weights; with a checkpoint on disk, every rank simply loads it;
* ``ml.landscape`` returns the Surface on rank 0 and None on the other ranks.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from mpi4py import MPI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mpiland as ml
from mpiland.data import digits_split


def make_model() -> nn.Module:
    """A seeded two-layer MLP for flattened 8x8 digits: the same initial weights on every rank."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def train(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, epochs: int) -> None:
    """A few epochs of SGD with momentum, seeded and on one thread, so that every run gives the same weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        loader = DataLoader(TensorDataset(inputs, targets), batch_size=64, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model.train()
        for _ in range(epochs):
            for xb, yb in loader:
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(xb), yb).backward()
                optimizer.step()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the surface file to write (HDF5), e.g. surfaces/digits.h5")
    parser.add_argument("--points", type=int, default=21, help="grid points per axis (default 21)")
    parser.add_argument("--epochs", type=int, default=8, help="training epochs (default 8)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT instead of resuming it")
    args = parser.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()

    x_train, y_train = digits_split("train")
    x_test, y_test = digits_split("test")
    model = make_model()
    if rank == 0:
        train(model, x_train, y_train, args.epochs)
    model.load_state_dict(comm.bcast(model.state_dict() if rank == 0 else None, root=0))

    directions = ml.directions.random(model, seed=0)  # the same seed on every rank: the same directions
    surf = ml.landscape(model, directions, data={"train": (x_train, y_train), "test": (x_test, y_test)},
                        x=(-1.0, 1.0, args.points), y=(-1.0, 1.0, args.points), out=args.out,
                        overwrite=args.overwrite, comm=comm, name="digits MLP",
                        # One torch thread per rank: the same arithmetic at any number of ranks, so the
                        # files match bit for bit. Leave it out (one rank's share of the cores) for speed.
                        settings={"run.threads": 1})
    if surf is None:  # ranks other than 0
        return 0

    flat = surf.flatness("test_loss")
    loss = surf.values("test_loss")
    i, j = np.unravel_index(np.nanargmin(loss), loss.shape)
    centre = int(np.abs(surf.x - flat["centre"][0]).argmin()), int(np.abs(surf.y - flat["centre"][1]).argmin())
    print(f"{comm.Get_size()} rank(s): {int(surf.done.sum())}/{surf.done.size} points, "
          f"{float(surf.seconds.sum()):.1f} s of evaluation, written to {surf.path}")
    print(f"at the centre ({surf.x[centre[0]]:.2f}, {surf.y[centre[1]]:.2f}): test loss {flat['loss']:.4f}, "
          f"test accuracy {surf.values('test_acc')[centre]:.3f}; "
          f"lowest test loss {loss[i, j]:.4f} at ({surf.x[i]:.2f}, {surf.y[j]:.2f})")
    print(f"basin below L* + {flat['epsilon']}: width x {flat['basin_width']['x']['width']:.3f}, "
          f"y {flat['basin_width']['y']['width']:.3f}; "
          f"sharpness {flat['sharpness']:.3f} within r = {flat['radius']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
