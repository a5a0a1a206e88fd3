"""Checks at set-up that the data fits the model and the loss, so a mismatch is one clear line, not a crash.

One batch of every split goes through the model (in eval mode, no gradients, so
no buffer changes) and the loss before any file is created: wrong channels or
spatial sizes, targets of the wrong shape, and class labels outside the model's
outputs (token labels outside the vocabulary, for ``causal_lm``) are reported naming
the split and the shapes.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import DataError, MetricError
from .batching import call_model
from ..lossfns import IGNORE_INDEX
from .losses import CLASS_INDEX_LOSSES, TOKEN_LOSSES, LossFn, LossSums
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
    if builtin and loss_name in TOKEN_LOSSES:
        check_tokens(where, split, out, y, loss_name)
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


def check_tokens(where: str, split: DeviceSplit | BatchSplit, out: torch.Tensor, y: torch.Tensor,
                 loss_name: str) -> None:
    """Raise :class:`DataError` unless logits (batch, seq, V) and integer labels (batch, seq) fit a token loss:
    the same sequence length, at least two positions (a next token to predict), labels in 0..V-1 or
    :data:`~mpiland.lossfns.IGNORE_INDEX` (over the whole split where it is known: resident tensors, or the
    range a loader's batches had at set-up)."""
    if out.dim() != 3:
        raise DataError(f"{where}: {loss_name} needs logits of shape (batch, seq, vocabulary), the model returned "
                        f"{_shape(out)} per sample; return the language model's logits")
    if y.is_floating_point() or y.dim() != 2 or tuple(y.shape) != tuple(out.shape[:2]):
        raise DataError(f"{where}: {loss_name} needs integer labels of shape (batch, seq) matching the logits "
                        f"({_shape(out)} per sample), got {'floating' if y.is_floating_point() else 'integer'} "
                        f"targets of shape {_shape(y)}; give labels = input_ids, with {IGNORE_INDEX} where not counted")
    if y.shape[1] < 2:
        raise DataError(f"{where}: {loss_name} predicts each next token, and sequences of length {y.shape[1]} have "
                        "none; give sequences of two tokens or more")
    if isinstance(split, DeviceSplit):
        kept = split.targets[split.targets != IGNORE_INDEX]
        lo, hi = (int(kept.min()), int(kept.max())) if kept.numel() else (0, 0)
        odd = bool(((split.targets < 0) & (split.targets != IGNORE_INDEX)).any())
    else:
        kept = y[y != IGNORE_INDEX]
        lo, hi = (int(kept.min()), int(kept.max())) if kept.numel() else (0, 0)
        odd = bool(((y < 0) & (y != IGNORE_INDEX)).any())
        if split.labels is not None:  # the range over every batch seen at set-up
            hi = max(hi, split.labels[1])
            odd = odd or split.labels[0] < IGNORE_INDEX
    vocabulary = int(out.shape[-1])
    if odd or lo < 0 or hi >= vocabulary:
        raise DataError(f"{where}: token labels must lie in 0..{vocabulary - 1} (the model's vocabulary) or be "
                        f"{IGNORE_INDEX} (not counted), got labels up to {hi}{' and other negative ones' if odd else ''}; "
                        "fix the labels or the model's vocabulary size")
