"""Where the evaluation data lives: resident on the device for the whole run, or streamed from host memory.

Data sits on the device when all splits fit ``data.memory_budget_mb``; otherwise
it stays in (pinned, on a GPU) host memory and each batch is copied with a
non-blocking transfer. Either way the engine iterates the same batches in the
same order, so values do not depend on where the data lives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..data import Split


@dataclass
class DeviceSplit:
    """One split's tensors where the engine reads them."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    resident: bool

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) batches on ``device``, in order."""
        n = self.inputs.shape[0]
        for start in range(0, n, batch_size):
            x = self.inputs[start: start + batch_size]
            y = self.targets[start: start + batch_size]
            if not self.resident:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            yield x, y


def fits(splits: list[Split], memory_budget_mb: float) -> bool:
    """Whether all splits together fit the device memory budget."""
    return sum(s.nbytes for s in splits) <= memory_budget_mb * 2**20


def place_split(split: Split, device: torch.device, dtype: torch.dtype, resident: bool,
                channels_last: bool = False) -> DeviceSplit:
    """The split's inputs cast to the model's dtype (floating inputs only), on the device or pinned on the host."""
    inputs = split.inputs.to(dtype) if split.inputs.is_floating_point() else split.inputs
    if channels_last and inputs.dim() == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    targets = split.targets
    if resident:
        return DeviceSplit(split.name, inputs.to(device), targets.to(device), True)
    if device.type == "cuda":
        inputs, targets = inputs.pin_memory(), targets.pin_memory()
    return DeviceSplit(split.name, inputs, targets, False)


def synchronize(device: torch.device) -> None:
    """Wait for queued device work so that wall-clock timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
