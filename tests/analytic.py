"""A model whose loss is a known function of the grid coordinates (referenced as tests/analytic.py:NAME).

The model's only parameter is a vector ``w`` of two numbers, zero at θ*, and it outputs
``w`` for every sample; with the file directions (1, 0) and (0, 1) written by
:func:`write_axes`, grid point (a, b) is w = (a, b). The losses below are then plain
functions of (a, b), the same for every sample.
"""

from pathlib import Path

import torch
from torch import nn


class Point(nn.Module):
    """Outputs its parameter vector ``w`` (zero at θ*) for every sample."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w.expand(x.shape[0], 2) + 0 * x[:, :1]


def point() -> nn.Module:
    return Point()


def data(split: str, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples whose values do not matter (every sample sees the same w)."""
    return torch.zeros(n, 1), torch.zeros(n)


def bowl(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 + 5a² + 20b² per sample: along x it reaches 3 (3× the centre) at |a| = √0.4, along y at |b| = √0.1."""
    a, b = outputs[:, 0], outputs[:, 1]
    return 1 + 5 * a ** 2 + 20 * b ** 2


def well(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A sharp minimum on a plateau: 2 − exp(−(a² + b²)/(2·0.15²)) per sample."""
    r2 = outputs[:, 0] ** 2 + outputs[:, 1] ** 2
    return 2 - torch.exp(-r2 / (2 * 0.15 ** 2))


def bowl_values(a, b):
    """:func:`bowl` at grid coordinates (numpy arrays)."""
    return 1 + 5 * a ** 2 + 20 * b ** 2


def write_axes(folder: Path) -> list[str]:
    """The two direction files (w = (1, 0) and (0, 1)) for ``directions.file``; returns their paths."""
    paths = []
    for i in range(2):
        w = torch.zeros(2)
        w[i] = 1.0
        path = folder / f"axis{i}.pt"
        torch.save({"w": w}, path)
        paths.append(str(path))
    return paths
