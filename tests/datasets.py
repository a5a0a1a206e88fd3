"""Data factories used by the tests' job files (referenced as tests/datasets.py:NAME)."""

import torch

from mpiland.data import digits_split


def missing_on_rank(split: str, rank: int = 1, n: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits split, except on one MPI rank, where the data file is 'missing' (a node without it)."""
    from mpi4py import MPI

    if MPI.COMM_WORLD.Get_rank() == rank:
        raise FileNotFoundError(f"/scratch/data/{split}.npz")
    x, y = digits_split(split)
    return x[:n], y[:n]


def digits_head(split: str, n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` digits of a split (a size that is not a multiple of the test batch sizes)."""
    x, y = digits_split(split)
    return x[:n], y[:n]


def wrong_channels(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Three-channel inputs for a one-channel model."""
    x, y = digits_head(split)
    return x.expand(-1, 3, -1, -1).contiguous(), y


def wrong_size(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """6×6 images for a model made for 8×8."""
    x, y = digits_head(split)
    return x[:, :, :6, :6].contiguous(), y


def label_out_of_range(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A label 12 among ten classes."""
    x, y = digits_head(split)
    y = y.clone()
    y[-1] = 12
    return x, y


def two_dimensional_targets(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two integer targets per sample for a single-label classification loss."""
    x, y = digits_head(split)
    return x, torch.stack([y, y], dim=1)
