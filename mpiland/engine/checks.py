"""Checks at set-up that the data fits the model and the loss, so a mismatch is one clear line, not a crash.

One batch of every split goes through the model (in eval mode, no gradients, so
no buffer changes) and the loss before any file is created: wrong channels or
spatial sizes, targets of the wrong shape, and class labels outside the model's
outputs are reported naming the split and the shapes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import DataError, MetricError
from .batching import call_model
from .losses import CLASS_INDEX_LOSSES, LossFn, LossSums
from .placement import BatchSplit, DeviceSplit


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"


def _shape(t: torch.Tensor | dict[str, torch.Tensor]) -> str:
    if isinstance(t, dict):
        return ", ".join(f"{k} {_shape(v)}" for k, v in t.items())
    return "×".join(str(s) for s in t.shape[1:]) or "scalar"


def check_data_fits(model: nn.Module, split: DeviceSplit | BatchSplit, loss_fn: LossFn, loss_name: str,
                    builtin: bool, accuracy: bool, batch_size: int, device: torch.device,
                    metric_fns: Sequence[LossFn] = ()) -> None:
    """Raise :class:`DataError` unless one batch of ``split`` runs through ``model``, the loss and the metrics
    (a :class:`MetricError` of a user loss or metric names it)."""
    x, y = split.first_batch(batch_size, device)
    where = f"data split {split.name!r}"
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = call_model(model, x)
    except Exception as exc:  # the user's model on the user's data: report it as a data mismatch
        raise DataError(f"{where}: inputs of shape {_shape(x)} (per sample) do not fit the model ({_reason(exc)}); "
                        "check that the data (data.factory) is what the model (model.factory) takes") from None
    finally:
        model.train(training)
    if not isinstance(out, torch.Tensor):
        raise DataError(f"{where}: the model returned {type(out).__name__}, expected a tensor of outputs; "
                        "wrap the model so that forward returns the logits")
    if builtin and loss_name in CLASS_INDEX_LOSSES and not y.is_floating_point():
        if y.dim() != 1:
            raise DataError(f"{where}: {loss_name} needs one class index per sample, got targets of shape "
                            f"{_shape(y)} per sample; return 1-D integer labels")
        if isinstance(split, DeviceSplit):
            lo, hi = int(split.targets.min()), int(split.targets.max())
        else:  # every batch was seen at set-up
            lo, hi = split.labels if split.labels is not None else (int(y.min()), int(y.max()))
        classes = int(out.shape[-1])
        if lo < 0 or hi >= classes:
            raise DataError(f"{where}: labels range over {lo}..{hi} but the model has {classes} outputs; "
                            "fix the labels or the model's number of classes")
    try:
        with torch.inference_mode():
            LossSums(loss_fn, builtin, accuracy, 1, device).add(out.unsqueeze(0), y)
            for fn in metric_fns:
                LossSums(fn, False, False, 1, device).add(out.unsqueeze(0), y)
    except MetricError:
        raise
    except Exception as exc:  # the loss on the user's targets
        raise DataError(f"{where}: targets of shape {_shape(y)} do not fit loss {loss_name!r} with outputs of shape "
                        f"{_shape(out)} ({_reason(exc)}); check the data's targets and loss.name") from None
