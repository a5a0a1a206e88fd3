"""BatchNorm statistics recomputed at every point (``model.bn = "recompute"``).

An interpolated or perturbed BatchNorm network evaluated with θ*'s running
statistics is judged unfairly (mode-connectivity work re-estimates them): before
each point the running statistics are reset and re-estimated, as a cumulative
average, from a fixed set of seeded training batches; the point is then
evaluated in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batchnorm_modules(model: nn.Module) -> list[_BatchNorm]:
    """The model's BatchNorm layers (any dimension)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


class BatchNormRecompute:
    """Re-estimates the running statistics of ``model``'s BatchNorm layers from ``inputs``."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, batch_size: int) -> None:
        self.model = model
        self.modules = batchnorm_modules(model)
        self.inputs = inputs
        self.batch_size = batch_size

    def __call__(self) -> None:
        """Reset the statistics and re-estimate them (cumulative average) with one pass over the inputs."""
        momenta = [m.momentum for m in self.modules]
        for m in self.modules:
            m.reset_running_stats()
            m.momentum = None
        self.model.train()
        try:
            with torch.no_grad():
                for start in range(0, self.inputs.shape[0], self.batch_size):
                    self.model(self.inputs[start: start + self.batch_size])
        finally:
            for m, momentum in zip(self.modules, momenta):
                m.momentum = momentum
            self.model.eval()
