"""User metrics: more numbers per point from the same forward pass as the loss.

A metric is one of:

- a callable ``(outputs, targets) -> tensor`` giving one value per sample (or per
  token), or one mean per batch; it is averaged like a user loss
  (:mod:`.losses`: a batch mean counts as many times as the batch has samples),
  and stored as ``<split>_<name>`` with its standard error ``<split>_<name>_stderr``;
- an object with ``update(outputs, targets)`` and ``compute()`` (the torchmetrics
  convention), for metrics that are not means (AUROC, F1, perplexity of a sum):
  each point gets a fresh copy (``reset()`` first when it has one), the caller's
  object is never updated, and ``compute()`` must give one number; stored as
  ``<split>_<name>``.

A job file names callables as import strings (``[loss] metrics = {top5 =
"metrics.py:top5"}``); Python callers pass the objects themselves.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ..errors import JobFileError, MetricError
from ..userimport import resolve_callable

RESERVED = ("loss", "loss_stderr", "acc", "perplexity")
"""Metric names that would clash with the datasets of the loss."""


@dataclass(frozen=True)
class Metric:
    """One user metric: its name and the callable or update/compute object."""

    name: str
    fn: Any

    @property
    def stateful(self) -> bool:
        """Whether it is an update/compute object rather than a per-sample callable."""
        return hasattr(self.fn, "update") and hasattr(self.fn, "compute")


def check_name(name: Any) -> str:
    """``name`` if it can name a metric dataset; MetricError otherwise."""
    if not isinstance(name, str) or not name.isidentifier():
        raise MetricError(f"metric name {name!r}: use an identifier such as top5 (it names datasets like test_top5)")
    if name in RESERVED or name.endswith("_stderr"):
        raise MetricError(f"metric name {name!r} clashes with the loss's datasets; choose another name")
    return name


def resolve_metrics(metrics: Mapping[str, Any] | None) -> list[Metric]:
    """The user metrics in order: import strings (job files) resolved, objects checked."""
    out = []
    for name, fn in (metrics or {}).items():
        check_name(name)
        if isinstance(fn, str):
            fn = resolve_callable(fn, f"loss.metrics.{name}", JobFileError)
        metric = Metric(name, fn)
        if not metric.stateful and not callable(fn):
            raise MetricError(f"metric {name!r} is a {type(fn).__name__}; give a callable (outputs, targets) -> "
                              "tensor, or an object with update() and compute()")
        out.append(metric)
    return out


def metric_names(splits: list[str], metrics: list[Metric]) -> list[str]:
    """Dataset names of the user metrics, per split in a fixed order."""
    names = []
    for s in splits:
        for m in metrics:
            names += [f"{s}_{m.name}"] if m.stateful else [f"{s}_{m.name}", f"{s}_{m.name}_stderr"]
    return names


def checked(what: str, fn: Callable[[torch.Tensor, torch.Tensor], Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn`` (a user loss or metric, ``what`` in messages) with its result checked: one value per sample or per batch."""

    def call(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        try:
            value = fn(out, y)
        except Exception as exc:  # the user's code: report it with its cause, not a deep traceback
            raise MetricError(f"{what} raised {exc.__class__.__name__}: {exc}") from exc
        if not isinstance(value, torch.Tensor):
            try:
                value = torch.as_tensor(value, dtype=torch.float64, device=out.device)
            except (TypeError, ValueError, RuntimeError):
                raise MetricError(f"{what} returned {type(value).__name__}; return a tensor of one value per "
                                  "sample, or one number per batch") from None
        batch = int(y.shape[0]) if y.dim() else 1
        if value.numel() != 1 and (value.dim() == 0 or value.shape[0] != batch):
            raise MetricError(f"{what} returned shape {tuple(value.shape)} for a batch of {batch}; return one value "
                              "per sample (shape [batch] or [batch, ...]) or one number per batch")
        if value.is_complex():
            raise MetricError(f"{what} returned a {value.dtype} tensor; return real numbers")
        return value

    return call


def fresh(metric: Metric, device: torch.device) -> Any:
    """A new copy of an update/compute metric for one point (the caller's object is left as it is)."""
    obj = copy.deepcopy(metric.fn)
    if hasattr(obj, "to"):
        obj = obj.to(device)
    if hasattr(obj, "reset"):
        obj.reset()
    return obj


def updated(metric: Metric, obj: Any, out: torch.Tensor, y: torch.Tensor) -> None:
    """Add one batch of one point's outputs to an update/compute metric's copy."""
    try:
        obj.update(out, y)
    except Exception as exc:  # the user's code
        raise MetricError(f"metric {metric.name!r}: update() raised {exc.__class__.__name__}: {exc}") from exc


def computed(metric: Metric, obj: Any) -> float:
    """The one number an update/compute metric gives for a point."""
    try:
        value = obj.compute()
    except Exception as exc:  # the user's code
        raise MetricError(f"metric {metric.name!r}: compute() raised {exc.__class__.__name__}: {exc}") from exc
    array = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if array.size != 1:
        raise MetricError(f"metric {metric.name!r}: compute() returned {array.size} numbers; it must return one")
    return float(array.reshape(()))
