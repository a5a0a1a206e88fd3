"""Where the evaluation data lives: resident on the device for the whole run, or streamed.

Tensor splits sit on the device when all splits fit ``data.memory_budget_mb``;
otherwise they stay in (pinned, on a GPU) host memory and each batch is copied
with a non-blocking transfer. A split read from a loader (:class:`~mpiland.data.Stream`)
is read once at set-up: its batches are checked, digested and, while they fit
what the budget leaves, kept on the device (:class:`BatchSplit`); a split that
does not fit is read from its loader again at every pass. Either way the engine
iterates the same batches in the same order, so values do not depend on where
the data lives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset

from ..data import Inputs, Split, Stream, drawn_once, loader_options
from ..digest import update_batch
from ..errors import DataError
from ..shard import Shard


@dataclass
class DeviceSplit:
    """One split's tensors where the engine reads them."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor
    resident: bool
    _views: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict, repr=False,
                                                                       compare=False)

    def batches(self, batch_size: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(inputs, targets) batches on ``device``, in order (a resident split's batch views made once)."""
        if self.resident:
            views = self._views.get(batch_size)
            if views is None:
                views = self._views[batch_size] = list(zip(self.inputs.split(batch_size), self.targets.split(batch_size)))
            yield from views
            return
        n = self.inputs.shape[0]
        for start in range(0, n, batch_size):
            x = self.inputs[start: start + batch_size]
            y = self.targets[start: start + batch_size]
            if not self.resident:
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
            yield x, y


    def first_batch(self, batch_size: int, device: torch.device) -> tuple[Inputs, torch.Tensor]:
        """The first batch, on ``device`` (set-up checks)."""
        return next(self.batches(batch_size, device))

    def first_inputs(self, n: int, device: torch.device) -> Inputs:
        """The first ``n`` inputs, on ``device`` (probes of memory and vmap)."""
        return self.inputs[:n].to(device)


def batch_bytes(inputs: Inputs, targets: torch.Tensor) -> int:
    """Bytes of one batch's inputs (a tensor or a dict of them) and targets."""
    tensors = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    return sum(t.element_size() * t.nelement() for t in tensors + [targets])


def _cast(inputs: Inputs, dtype: torch.dtype, channels_last: bool) -> Inputs:
    """Floating inputs in the model's dtype (integer ones, token ids, stay as they are)."""
    if isinstance(inputs, dict):
        return {k: _cast(v, dtype, channels_last) for k, v in inputs.items()}  # type: ignore[misc]
    x = inputs.to(dtype) if inputs.is_floating_point() else inputs
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def to_device(inputs: Inputs, device: torch.device, non_blocking: bool = False) -> Inputs:
    """``inputs`` (a tensor or a dict of tensors) on ``device``."""
    if isinstance(inputs, dict):
        return {k: v.to(device, non_blocking=non_blocking) for k, v in inputs.items()}
    return inputs.to(device, non_blocking=non_blocking)


def first_rows(inputs: Inputs, n: int) -> Inputs:
    """The first ``n`` samples of ``inputs``."""
    if isinstance(inputs, dict):
        return {k: v[:n] for k, v in inputs.items()}
    return inputs[:n]


@dataclass
class BatchSplit:
    """One split read from a loader: its batches kept on the device, or read from the loader at every pass.

    ``digest`` is the SHA-256 of its batches in order (the surface file's data identity).
    """

    name: str
    stream: Stream
    digest: str
    samples: int
    first: tuple[Inputs, torch.Tensor]
    kept: list[tuple[Inputs, torch.Tensor]] = field(default_factory=list)
    labels: tuple[int, int] | None = None
    """The smallest and largest integer target over all batches (None for floating targets)."""
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    own: Stream | None = None
    """In a point group, a loader over this rank's batches alone (map-style datasets; None: read them all)."""
    own_indices: list[int] = field(default_factory=list)
    """The batch numbers ``own`` yields, in order."""

    @property
    def resident(self) -> bool:
        return bool(self.kept)

    def batches(self, _batch_size: int, device: torch.device) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """The loader's batches on ``device``, in order (the batch size is the loader's)."""
        if self.kept:
            yield from self.kept
            return
        for x, y in self.stream.batches():
            yield self.on_device(x, y, device)

    def on_device(self, x: Inputs, y: torch.Tensor, device: torch.device) -> tuple[Inputs, torch.Tensor]:
        """A batch read from the loader, cast to the model's dtype and layout, on ``device``."""
        cast = _cast(x, self.dtype, self.channels_last)
        return to_device(cast, device, non_blocking=True), y.to(device, non_blocking=True)

    def first_batch(self, _batch_size: int, _device: torch.device) -> tuple[Inputs, torch.Tensor]:
        """The loader's first batch, on the device (kept from set-up: probes never read the loader again)."""
        return self.first

    def first_inputs(self, n: int, _device: torch.device) -> Inputs:
        """The first ``n`` inputs of the first batch, on the device."""
        return first_rows(self.first[0], n)


def indexed_batches(d: "DeviceSplit | BatchSplit", batch_size: int, device: torch.device,
                    shard: Shard | None = None) -> Iterator[tuple[int, Inputs, torch.Tensor]]:
    """``(batch number, inputs, targets)`` of the batches this rank evaluates, in order: every batch, or in a
    point group those of its shard (:mod:`mpiland.shard`), never copying or reading another rank's batch where it can
    be skipped (a streamed iterable dataset is read whole, and the other ranks' batches dropped unused)."""
    if shard is None:
        for i, (x, y) in enumerate(d.batches(batch_size, device)):
            yield i, x, y
        return
    if isinstance(d, DeviceSplit) and not d.resident:
        for i, start in enumerate(range(0, int(d.inputs.shape[0]), batch_size)):
            if shard.mine(i):
                x = d.inputs[start: start + batch_size].to(device, non_blocking=True)
                yield i, x, d.targets[start: start + batch_size].to(device, non_blocking=True)
        return
    if isinstance(d, BatchSplit) and not d.kept and d.own is not None:
        for i, (x, y) in zip(d.own_indices, d.own.batches()):
            yield (i, *d.on_device(x, y, device))
        return
    if isinstance(d, BatchSplit) and not d.kept:
        for i, (x, y) in enumerate(d.stream.batches()):
            if shard.mine(i):
                yield (i, *d.on_device(x, y, device))
        return
    for i, (x, y) in enumerate(d.batches(batch_size, device)):
        if shard.mine(i):
            yield i, x, y


def shard_stream(d: BatchSplit, shard: Shard) -> None:
    """Give a streamed split of a map-style dataset a loader over this rank's batches alone (batch b when
    b mod G = r: the batches of the split's own loader, drawn once), so each rank of a point group reads only
    its shard; an iterable dataset has no batch to skip to and is read whole."""
    loader = d.stream.loader
    if d.kept or isinstance(loader.dataset, IterableDataset):
        return
    options = loader_options(loader)
    # Drawn as Stream.batches reads the loader: the same batches the whole split has.
    batches = drawn_once(loader.batch_sampler if loader.batch_sampler is not None else loader.sampler)
    indices = [i for i in range(len(batches)) if shard.mine(i)]
    mine = [batches[i] for i in indices]
    own = (DataLoader(loader.dataset, batch_sampler=mine, **options) if loader.batch_sampler is not None
           else DataLoader(loader.dataset, batch_size=None, sampler=mine, **options))
    d.own, d.own_indices = Stream(d.stream.name, own), indices


def place_stream(stream: Stream, device: torch.device, dtype: torch.dtype, budget_bytes: float,
                 channels_last: bool = False) -> BatchSplit:
    """Read ``stream`` once: check and digest its batches, and keep them on the device if they fit ``budget_bytes``."""
    h = hashlib.sha256()
    kept: list[tuple[Inputs, torch.Tensor]] = []
    first: tuple[Inputs, torch.Tensor] | None = None
    labels: tuple[int, int] | None = None
    keeping, total, samples = True, 0, 0
    for x, y in stream.batches():
        x = _cast(x, dtype, channels_last)
        if first is None:
            first = (to_device(x, device), y.to(device))
        update_batch(h, x, y)
        if not y.is_floating_point() and y.numel():
            lo, hi = int(y.min()), int(y.max())
            labels = (lo, hi) if labels is None else (min(labels[0], lo), max(labels[1], hi))
        samples += int(y.shape[0]) if y.dim() else 1
        total += batch_bytes(x, y)
        keeping = keeping and total <= budget_bytes
        if keeping:
            kept.append((to_device(x, device), y.to(device)))
        else:
            kept.clear()
    if first is None or samples == 0:
        raise DataError(f"data split {stream.name!r}: the loader yields no batches; give it a non-empty dataset")
    return BatchSplit(stream.name, stream, h.hexdigest(), samples, first, kept, labels, dtype, channels_last)


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
