"""Model factories used by the tests' job files (referenced as tests/models.py:NAME)."""

import time

import torch
from torch import nn


class SlowMLP(nn.Module):
    """A digits MLP whose forward sleeps, so a run lasts long enough to be interrupted."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.delay)
        return self.net(x)


def slow_mlp(delay: float = 0.05) -> nn.Module:
    return SlowMLP(delay)


def other_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))


def failing_on_rank(rank: int = 1, after: int = 3) -> nn.Module:
    """A model whose forward raises on one MPI rank after some calls (to test whole-job abort)."""
    from mpi4py import MPI

    class Failing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if MPI.COMM_WORLD.Get_rank() == rank and self.calls > after:
                raise RuntimeError(f"simulated failure on rank {rank}")
            time.sleep(0.02)
            return self.net(x)

    return Failing()


def linear() -> nn.Module:
    """A linear classifier: with an MSE loss its Hessian is the same at every θ (a quadratic loss)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def vmap_fails_on_rank(rank: int = 1) -> nn.Module:
    """A digits MLP that vmap cannot run on one MPI rank (so ranks disagree on points per pass)."""
    from mpi4py import MPI

    class Picky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batched = torch._C._functorch.is_batchedtensor(self.net[1].weight)
            if batched and MPI.COMM_WORLD.Get_rank() == rank:
                raise RuntimeError("this rank cannot run a batched pass")
            return self.net(x)

    return Picky()
