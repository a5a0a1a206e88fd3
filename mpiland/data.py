"""Evaluation data: the built-in digits set and user factories, as whole tensors per split.

Data is materialised once per process as ``(inputs, targets)`` tensors so the
engine can keep it resident on the device and never starts DataLoader workers per
grid point. The digits file is read with numpy directly: importing scikit-learn
(and SciPy with it) into an evaluation process slows torch's forward pass.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from .errors import DataError
from .spec import DataSpec
from .userimport import resolve_callable

DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 20180101


@dataclass(frozen=True)
class Split:
    """One split's tensors on the host."""

    name: str
    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def nbytes(self) -> int:
        return self.inputs.element_size() * self.inputs.nelement() + self.targets.element_size() * self.targets.nelement()


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``(images[N, 1, 8, 8] in [0, 1] float32, labels[N] int64)``."""
    with resources.files("mpiland.datasets").joinpath("digits.csv.gz").open("rb") as fh:
        table = np.loadtxt(gzip.open(fh), delimiter=",", dtype=np.float32)
    images = (table[:, :64] / 16.0).reshape(-1, 1, 8, 8).astype(np.float32)
    labels = table[:, 64].astype(np.int64)
    return images, labels


def digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed digits train/test split (80/20, a seeded permutation that never changes)."""
    images, labels = load_digits_arrays()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(labels))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    idx = order[:n_test] if split == "test" else order[n_test:]
    idx = np.sort(idx)
    return torch.from_numpy(images[idx]), torch.from_numpy(labels[idx])


def _materialise(obj: object, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        inputs, targets = obj
    elif isinstance(obj, torch.utils.data.Dataset):
        try:
            n = len(obj)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"{where}: the dataset has no len(); return a map-style Dataset or (inputs, targets) tensors") from None
        if n == 0:
            raise DataError(f"{where}: the dataset is empty")
        items = [obj[i] for i in range(n)]
        try:
            inputs = torch.stack([torch.as_tensor(it[0]) for it in items])
            targets = torch.stack([torch.as_tensor(it[1]) for it in items])
        except (TypeError, IndexError, RuntimeError) as exc:
            raise DataError(f"{where}: dataset items must be (input, target) pairs of equal shapes ({exc})") from None
    else:
        raise DataError(f"{where}: expected a torch Dataset or an (inputs, targets) tuple of tensors, got {type(obj).__name__}")
    if inputs.shape[0] != targets.shape[0]:
        raise DataError(f"{where}: {inputs.shape[0]} inputs but {targets.shape[0]} targets; they must match")
    if inputs.shape[0] == 0:
        raise DataError(f"{where}: the split is empty")
    return inputs, targets


def load_split(spec: DataSpec, split: str) -> Split:
    """Build one split as host tensors, applying the seeded subset."""
    if spec.factory is not None:
        fn = resolve_callable(spec.factory, "data.factory", DataError)
        where = f"data.factory {spec.factory!r} (split={split!r})"
        try:
            obj = fn(split=split, **spec.kwargs)
        except Exception as exc:  # the user's code: report, do not crash with its traceback
            raise DataError(f"{where} raised {exc.__class__.__name__}: {exc}") from exc
        inputs, targets = _materialise(obj, where)
    else:
        inputs, targets = digits_split(split)
    if spec.subset:
        if spec.subset > len(targets):
            raise DataError(f"data.subset = {spec.subset} exceeds the {len(targets)} samples of split {split!r}; lower it or set 0 for all")
        gen = torch.Generator().manual_seed(spec.seed)
        idx = torch.randperm(len(targets), generator=gen)[: spec.subset].sort().values
        inputs, targets = inputs[idx], targets[idx]
    return Split(split, inputs.contiguous(), targets.contiguous())
