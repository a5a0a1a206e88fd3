"""The built-in per-sample loss functions, and the loss a name (or an import string) stands for.

Built-ins return one loss per sample (``causal_lm``: per counted token), so a split's
mean loss does not depend on the batch size; a user loss is called as the user wrote it (:mod:`mpiland.engine.losses`
weights a mean per batch by the batch's size).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from .errors import JobFileError, SettingsError
from .spec import LossSpec
from .userimport import qualified_name, resolve_callable

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if not targets.is_floating_point() and outputs.dim() == 2 and outputs.shape[1] > 1:
        targets = F.one_hot(targets, outputs.shape[1])
    targets = targets.to(outputs.dtype).reshape(outputs.shape)
    return F.mse_loss(outputs, targets, reduction="none").reshape(outputs.shape[0], -1).mean(dim=1)


IGNORE_INDEX = -100
"""A ``causal_lm`` label that is not predicted (padding, prompt tokens): HuggingFace's convention."""


def causal_lm(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of logits (batch, seq, V) for labels (batch, seq), one loss per counted token.

    HuggingFace's convention for causal language models: labels are the input ids,
    so the logits at position t predict the label at t + 1, and a label of
    :data:`IGNORE_INDEX` is not counted. The losses come in order (sample, then
    position), one per counted token, so a split's mean is the token-weighted mean
    Σ token losses / counted tokens however the batches split the tokens.
    Computed in float32 at least (bf16 logits lose the loss's small differences).
    """
    logits = outputs[:, :-1].reshape(-1, outputs.shape[-1])
    labels = targets[:, 1:].reshape(-1)
    kept = labels != IGNORE_INDEX
    logits = logits[kept]
    if logits.element_size() < 4:
        logits = logits.float()
    return F.cross_entropy(logits, labels[kept], reduction="none")


def causal_lm_correct(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Correct next-token predictions per point of logits (k, batch, seq, V) for labels (batch, seq):
    argmax of the logits at t equal to the label at t + 1, counted tokens only; and the counted tokens."""
    labels = targets[:, 1:]
    kept = labels != IGNORE_INDEX
    hit = (outputs[:, :, :-1].argmax(dim=-1) == labels) & kept
    return hit.flatten(1).sum(dim=1), int(kept.sum())


BUILTIN_LOSSES: dict[str, LossFn] = {
    "cross_entropy": lambda o, t: F.cross_entropy(o, t, reduction="none"),
    "nll": lambda o, t: F.nll_loss(o, t, reduction="none"),
    "mse": _mse,
    "causal_lm": causal_lm,
}
CLASS_INDEX_LOSSES = ("cross_entropy", "nll")
"""Built-in losses whose targets are class indices into the last dimension of the outputs."""
TOKEN_LOSSES = ("causal_lm",)
"""Built-in losses over the tokens of sequences: one loss per counted token, accuracy per token, perplexity."""


def resolve_loss(spec: LossSpec) -> LossFn:
    """The loss function named by ``loss.name``: per-sample (per-token) for built-ins, as the user wrote it otherwise."""
    if spec.name in BUILTIN_LOSSES:
        return BUILTIN_LOSSES[spec.name]
    return resolve_callable(spec.name, "loss.name", JobFileError)


def loss_function(loss: Any) -> tuple[str, LossFn]:
    """The recorded name and the function of a loss given from Python: a built-in name, a ``module:callable``
    string or a callable ``(outputs, targets)``; SettingsError otherwise."""
    if isinstance(loss, str) and (loss in BUILTIN_LOSSES or ":" in loss):
        return loss, resolve_loss(LossSpec(name=loss)) if loss in BUILTIN_LOSSES else resolve_callable(
            loss, "loss", SettingsError)
    if callable(loss):
        return qualified_name(loss), loss
    raise SettingsError(f"loss={loss!r}: give one of {', '.join(BUILTIN_LOSSES)}, 'module:callable' or a callable "
                        "(outputs, targets) -> per-sample losses")
