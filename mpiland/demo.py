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


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3×3 conv-BN layers and a shortcut (a 1×1 conv-BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = nn.functional.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return nn.functional.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet for 32×32 images (He et al. 2016, §4.2): 3 stages of n basic blocks, 16/32/64 channels."""

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        return self.head(out.mean(dim=(2, 3)))


def resnet20(num_classes: int = 10) -> nn.Module:
    """ResNet-20 for CIFAR-shaped input (about 0.27 M parameters)."""
    return ResNetCIFAR(20, num_classes)


def synthetic_cifar(split: str, n: int = 1024, seed: int = 0) -> tuple:
    """Random CIFAR-shaped data (n × 3 × 32 × 32, 10 classes) for benchmarks; no download."""
    import torch

    gen = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen)
