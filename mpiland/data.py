"""Evaluation data: whole tensors per split, or a split streamed batch by batch from a DataLoader.

A job file's data (the built-in digits set, a user factory) is materialised once
per process as ``(inputs, targets)`` tensors (:class:`Split`), so the engine can
keep it resident on the device. Data handed over from Python may also be a
``DataLoader`` or a ``Dataset`` (:class:`Stream`): it is read through mpiland's own
loader over the same dataset, in dataset order, with persistent workers, so no
worker is started per grid point and the caller's loader (and the global RNG a
shuffling sampler would draw from) is never touched. A batch is ``(inputs,
targets)`` or a dict whose ``labels`` (or ``label``, ``targets``, ``target``, ``y``)
entry holds the targets and whose other entries are the model's keyword inputs.
The digits file is read with numpy directly: importing scikit-learn (and SciPy with
it) into an evaluation process slows torch's forward pass.
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass
from importlib import resources
from typing import Any, Callable, Iterator, Mapping, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, RandomSampler, SequentialSampler, Subset

from .errors import DataError
from .spec import DataSpec
from .userimport import resolve_callable

log = logging.getLogger("mpiland")

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


def _factory_result(spec: DataSpec, split: str) -> tuple[object, str]:
    """What ``data.factory`` returns for ``split``, and how errors name it (the factory's own error reported)."""
    assert spec.factory is not None
    fn = resolve_callable(spec.factory, "data.factory", DataError)
    where = f"data.factory {spec.factory!r} (split={split!r})"
    try:
        return fn(split=split, **spec.kwargs), where
    except Exception as exc:  # the user's code: report, do not crash with its traceback
        raise DataError(f"{where} raised {exc.__class__.__name__}: {exc}") from exc


def streams(obj: object, setting: str) -> bool:
    """Whether a factory's result is read batch by batch under ``data.stream = setting``: a DataLoader or an
    IterableDataset unless "false", any other Dataset only with "true"; tensors never (they are in memory)."""
    if setting == "false" or not isinstance(obj, (DataLoader, Dataset)):
        return False
    return setting == "true" or isinstance(obj, (DataLoader, IterableDataset))


def _subset_indices(n: int, spec: DataSpec, split: str) -> torch.Tensor:
    """The seeded ``data.subset`` of ``n`` sample indices, sorted (the same for tensors and streams)."""
    if spec.subset > n:
        raise DataError(f"data.subset = {spec.subset} exceeds the {n} samples of split {split!r}; lower it or set 0 "
                        "for all")
    gen = torch.Generator().manual_seed(spec.seed)
    return torch.randperm(n, generator=gen)[: spec.subset].sort().values


def _stream_of(obj: DataLoader[Any] | Dataset[Any], spec: DataSpec, split: str, where: str) -> Stream:
    """A factory's loader or dataset as a :class:`Stream`, ``data.subset`` drawn from a map-style dataset's indices."""
    dataset = obj.dataset if isinstance(obj, DataLoader) else obj
    if spec.subset:
        plain = not isinstance(obj, DataLoader) or (
            obj.batch_size is not None and isinstance(obj.sampler, (SequentialSampler, RandomSampler)))
        if isinstance(dataset, IterableDataset) or not plain:
            kind = "an IterableDataset" if isinstance(dataset, IterableDataset) else "a loader with its own sampler"
            raise DataError(f"{where}: data.subset draws samples by index, which {kind} has none of; set "
                            "data.subset = 0 and limit the samples in the factory")
        try:
            n = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise DataError(f"{where}: data.subset needs the dataset's len(); set data.subset = 0 or give the "
                            "dataset a __len__") from None
        dataset = Subset(dataset, _subset_indices(n, spec, split).tolist())
        if isinstance(obj, DataLoader):  # the loader's settings over the subset (the caller's loader untouched)
            obj = DataLoader(dataset, batch_size=obj.batch_size, drop_last=obj.drop_last, **loader_options(obj))
        else:
            obj = dataset
    if isinstance(obj, DataLoader):
        return stream_loader(obj, split)
    return Stream(split, DataLoader(obj, batch_size=spec.batch_size, generator=own_generator()))


def job_split(spec: DataSpec, split: str) -> "Split | Stream":
    """One evaluated split of a job file: a :class:`Stream` when ``data.stream`` says the factory's loader or
    dataset is read batch by batch (never materialised), else host tensors (:func:`load_split`)."""
    if spec.factory is None:
        return load_split(spec, split)
    obj, where = _factory_result(spec, split)
    if streams(obj, spec.stream):
        assert isinstance(obj, (DataLoader, Dataset))
        return _stream_of(obj, spec, split, where)
    return _as_split(obj, spec, split, where)


def load_split(spec: DataSpec, split: str, purpose: str = "") -> Split:
    """Build one split as host tensors, applying the seeded subset.

    A factory's result that ``data.stream`` streams is refused with a
    :class:`DataError` naming ``purpose`` (what needs the tensors, e.g. "[train]
    trains the model") and the fix; with ``data.stream = false`` a loader's
    batches are read into memory.
    """
    if spec.factory is None:
        inputs, targets = digits_split(split)
        return _subsetted(inputs, targets, spec, split)
    obj, where = _factory_result(spec, split)
    if streams(obj, spec.stream):
        kind = "a DataLoader" if isinstance(obj, DataLoader) else type(obj).__name__
        raise DataError(f"{where}: {purpose or 'this step needs the split as tensors in memory'}, but the factory "
                        f"returns {kind}, which is streamed; set data.stream = false to read it into memory, or "
                        "return (inputs, targets) tensors for this split")
    return _as_split(obj, spec, split, where)


def _as_split(obj: object, spec: DataSpec, split: str, where: str) -> Split:
    """A factory's result read into host tensors (a loader's or iterable dataset's batches joined), subset applied."""
    if isinstance(obj, (DataLoader, IterableDataset)):
        stream = stream_loader(obj, split) if isinstance(obj, DataLoader) else \
            Stream(split, DataLoader(obj, batch_size=spec.batch_size, generator=own_generator()))
        joined = _joined(stream)
        inputs, targets = joined.inputs, joined.targets
    else:
        inputs, targets = _materialise(obj, where)
    return _subsetted(inputs, targets, spec, split)


def _subsetted(inputs: torch.Tensor, targets: torch.Tensor, spec: DataSpec, split: str) -> Split:
    """The split with the seeded ``data.subset`` applied, as contiguous host tensors."""
    if spec.subset:
        idx = _subset_indices(len(targets), spec, split)
        inputs, targets = inputs[idx], targets[idx]
    return Split(split, inputs.contiguous(), targets.contiguous())


Inputs = Union[torch.Tensor, dict[str, torch.Tensor]]
"""A batch's model inputs: one tensor (``model(x)``) or keyword tensors (``model(**x)``)."""

TARGET_KEYS = ("labels", "label", "targets", "target", "y")
"""Keys of a dict batch that hold the targets, in the order they are looked for."""

DEFAULT_SPLIT = "data"
"""The split name of data given without a name (metrics ``data_loss``, ``data_acc``)."""


def split_batch(batch: Any, where: str) -> tuple[Inputs, torch.Tensor]:
    """``(inputs, targets)`` of one batch a loader yields: a pair, or a dict with a targets key."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, targets = batch
    elif isinstance(batch, Mapping):
        key = next((k for k in TARGET_KEYS if k in batch), None)
        if key is None:
            raise DataError(f"{where}: a batch dict needs the targets under one of {', '.join(TARGET_KEYS)}; "
                            f"it has {', '.join(map(str, batch)) or 'no keys'}")
        inputs = {str(k): v for k, v in batch.items() if k != key}
        targets = batch[key]
    else:
        shape = f"a {type(batch).__name__}" + (f" of {len(batch)} items" if isinstance(batch, (tuple, list)) else "")
        raise DataError(f"{where}: the loader yields {shape}; each batch must be (inputs, targets) or a dict "
                        "with a 'labels' entry")
    if not isinstance(targets, torch.Tensor):
        raise DataError(f"{where}: batch targets are {type(targets).__name__}, expected a tensor; "
                        "collate the targets into a tensor")
    if isinstance(inputs, dict):
        bad = [k for k, v in inputs.items() if not isinstance(v, torch.Tensor)]
        if bad or not inputs:
            raise DataError(f"{where}: every model input of a dict batch must be a tensor "
                            f"({', '.join(bad) or 'none given'}); collate them into tensors")
    elif not isinstance(inputs, torch.Tensor):
        raise DataError(f"{where}: batch inputs are {type(inputs).__name__}, expected a tensor or a dict of tensors")
    return inputs, targets


@dataclass(frozen=True)
class Stream:
    """One split read batch by batch from mpiland's own loader over a dataset (never materialised)."""

    name: str
    loader: DataLoader[Any]

    def batches(self) -> Iterator[tuple[Inputs, torch.Tensor]]:
        """``(inputs, targets)`` batches on the host, in the loader's (sequential) order.

        The dataset is read under a fixed seed of its own (the caller's random state is
        restored afterwards), so random choices made in the main process are the same at
        every point; a loader's error is one :class:`DataError`.
        """
        where = f"data split {self.name!r}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            try:
                for batch in self.loader:
                    yield split_batch(batch, where)
            except DataError:
                raise
            except Exception as exc:  # the user's dataset, collate function or workers
                first = str(exc).strip().splitlines()
                raise DataError(f"{where}: reading the loader raised {exc.__class__.__name__}"
                                f"{': ' + first[0] if first else ''}; check the dataset and its collate_fn") from exc


def own_generator() -> torch.Generator:
    """A seeded generator for mpiland's loaders, so that reading data leaves every other random state alone."""
    return torch.Generator().manual_seed(0)


def loader_options(loader: DataLoader[Any]) -> dict[str, Any]:
    """The settings of ``loader`` that a copy over the same dataset keeps, with persistent workers."""
    workers = int(loader.num_workers)
    # Its own generator: iterating a loader draws a base seed, which must come from neither the global RNG
    # nor the caller's generator (the caller's random state is never changed).
    options: dict[str, Any] = {"num_workers": workers, "collate_fn": loader.collate_fn, "generator": own_generator(),
                               "pin_memory": loader.pin_memory, "timeout": loader.timeout,
                               "worker_init_fn": loader.worker_init_fn,
                               "multiprocessing_context": loader.multiprocessing_context}
    if workers:
        options.update(persistent_workers=True, prefetch_factor=loader.prefetch_factor)
    return options


def stream_loader(loader: DataLoader[Any], name: str) -> Stream:
    """A :class:`Stream` over ``loader``'s dataset: its batch size, collation and workers, in dataset order.

    A shuffling loader is read in dataset order instead (a mean over the whole
    split does not depend on order, and fixed batches keep values reproducible);
    workers persist across grid points.
    """
    options = loader_options(loader)
    dataset = loader.dataset
    shuffled = isinstance(loader.sampler, RandomSampler)
    if shuffled:
        log.info("data split %r: evaluated in dataset order (the loader's shuffling is not used)", name)
    sampler: Any = None if shuffled else loader.sampler  # None: sequential
    batch_sampler: Any = loader.batch_sampler
    if not isinstance(dataset, IterableDataset):
        # Another random sampler (a subset, weighted sampling, a custom batch sampler) is drawn once, with a
        # generator of its own, and that draw is used at every point: the same samples everywhere, and the
        # caller's random state untouched.
        if sampler is not None and not isinstance(sampler, SequentialSampler):
            sampler = drawn_once(sampler)
        if batch_sampler is not None and loader.batch_size is None:
            batch_sampler = drawn_once(batch_sampler)
    if isinstance(dataset, IterableDataset):
        own = DataLoader(dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **options)
    elif loader.batch_sampler is None:  # automatic batching off: the dataset yields batches
        own = DataLoader(dataset, batch_size=None, sampler=sampler, **options)
    elif loader.batch_size is not None:
        own = DataLoader(dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                         **options)
    else:  # the caller's own batch sampler decides the batches
        own = DataLoader(dataset, batch_sampler=batch_sampler, **options)
    return Stream(name, own)


def drawn_once(sampler: Any) -> list[Any]:
    """The indices (or batches of indices) ``sampler`` yields, drawn once under a seeded random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return list(sampler)


def as_split(obj: Any, name: str, batch_size: int) -> "Split | Stream":
    """One split of Python data: ``(inputs, targets)`` tensors as a :class:`Split`, a loader or dataset as a :class:`Stream`."""
    where = f"data split {name!r}"
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(t, torch.Tensor) for t in obj):
        inputs, targets = _materialise(tuple(obj), where)
        return Split(name, inputs.contiguous(), targets.contiguous())
    if isinstance(obj, DataLoader):
        return stream_loader(obj, name)
    if isinstance(obj, Dataset):
        return Stream(name, DataLoader(obj, batch_size=batch_size, generator=own_generator()))
    raise DataError(f"{where}: expected a DataLoader, a Dataset or an (inputs, targets) pair of tensors, "
                    f"got {type(obj).__name__}")


def as_splits(data: Any, batch_size: int) -> "list[Split | Stream]":
    """The named splits of Python data: a dict of name -> data, or one unnamed split (named ``data``)."""
    if isinstance(data, Mapping):
        if not data:
            raise DataError("data: the dict of splits is empty; give at least one, e.g. data={'test': loader}")
        bad = [k for k in data if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise DataError(f"data: split names must be identifiers (they name datasets such as test_loss), "
                            f"got {bad[0]!r}")
        return [as_split(v, k, batch_size) for k, v in data.items()]
    return [as_split(data, DEFAULT_SPLIT, batch_size)]


def as_tensors(obj: Any, name: str, batch_size: int) -> Split:
    """One split of Python data as whole tensors (a loader's or dataset's batches are concatenated), for
    methods that draw samples at random (curve training, Hessian-vector products)."""
    split = as_split(obj, name, batch_size)
    return split if isinstance(split, Split) else _joined(split)


def _joined(stream: Stream) -> Split:
    """A stream's batches concatenated into host tensors."""
    inputs, targets = [], []
    for x, y in stream.batches():
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data split {stream.name!r}: dict batches cannot be joined into tensors here; give "
                            "(inputs, targets) tensors or a loader of them")
        inputs.append(x)
        targets.append(y)
    if not inputs:
        raise DataError(f"data split {stream.name!r}: the loader yields no batches; give it a non-empty dataset")
    return Split(stream.name, torch.cat(inputs), torch.cat(targets))


def bn_inputs(split: Split, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The training inputs that re-estimate BatchNorm statistics (``model.bn = "recompute"``): ``batches``
    batches of ``batch_size`` samples drawn without replacement by a generator seeded with ``seed``."""
    n = min(len(split), batches * batch_size)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return split.inputs[order]


def stream_samples(stream: Stream, draw: Callable[[int], torch.Tensor], purpose: str) -> Split:
    """The samples ``draw(n)`` picks (indices into the ``n`` samples of ``stream``, in the order wanted), read
    from the stream in two passes (one counts, one keeps only the picked rows), so only they are in memory.

    The stream's sample order is the dataset's, so the picks are the samples a
    materialised split would give for the same indices.
    """
    n = 0
    for _, y in stream.batches():
        n += int(y.shape[0]) if y.dim() else 1
    if n == 0:
        raise DataError(f"data split {stream.name!r}: the loader yields no batches; give it a non-empty dataset")
    order = draw(n)
    wanted = torch.zeros(n, dtype=torch.bool)
    wanted[order] = True
    xs, ys, seen = [], [], 0
    for x, y in stream.batches():
        if not isinstance(x, torch.Tensor):
            raise DataError(f"data split {stream.name!r}: {purpose} from tensor inputs; the loader yields dict "
                            "batches: give (inputs, targets) batches for this split")
        rows = int(y.shape[0]) if y.dim() else 1
        pick = wanted[seen: seen + rows].nonzero().squeeze(1)
        if len(pick):
            xs.append(x[pick].clone())
            ys.append(y[pick].clone())
        seen += rows
    inputs, targets = torch.cat(xs), torch.cat(ys)
    # rows came in stream order; put them in the order drawn
    position = torch.full((n,), -1, dtype=torch.long)
    position[order.sort().values] = torch.arange(len(order))
    return Split(stream.name, inputs[position[order]], targets[position[order]])


def stream_bn_inputs(stream: Stream, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """:func:`bn_inputs` of a streamed training split: the same seeded samples, read from the stream without
    materialising it (only the drawn samples are kept)."""
    def draw(n: int) -> torch.Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:min(n, batches * batch_size)]

    purpose = 'model.bn = "recompute" re-estimates BatchNorm statistics'
    return stream_samples(stream, draw, purpose).inputs
