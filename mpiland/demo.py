"""Small real models for the built-in digits demo and the tests."""

from __future__ import annotations

from torch import nn


def digits_cnn(channels: int = 8, hidden: int = 32, batchnorm: bool = True) -> nn.Module:
    """A small CNN for 8×8 digits: conv(-BN)-ReLU, conv-ReLU, max-pool, two fully-connected layers."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(1, c, 3, padding=1),
        nn.BatchNorm2d(c) if batchnorm else nn.Identity(),
        nn.ReLU(),
        nn.Conv2d(c, 2 * c, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * c * 16, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def digits_mlp(hidden: int = 64, depth: int = 2) -> nn.Module:
    """A ReLU MLP for flattened 8×8 digits."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)
