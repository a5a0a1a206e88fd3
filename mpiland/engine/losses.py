"""Losses and metrics of one pass: per-unit losses, their weights, and the sums that become metrics.

A built-in loss returns one loss per sample. A user loss may return one loss per
sample (or per token), or one mean per batch, as most code writes
``F.cross_entropy(outputs, targets)``. Per-unit losses count each unit once; a
batch mean counts as many times as the batch has samples, so the mean loss over a
split is the same whether the last batch is smaller or not, and agrees with the
sample-weighted loss whose Hessian :mod:`mpiland.curvature` takes. A token loss
(``causal_lm``) counts tokens: one loss per counted token, accuracy per counted
token, and perplexity exp(mean loss) from the split's summed loss.

Standard errors: per unit, that of the mean over units; for batch means, the
standard error of the ratio estimator Σ wᵢ mᵢ / Σ wᵢ over batches (wᵢ the batch
sizes), which is s/√n for equal weights.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..lossfns import BUILTIN_LOSSES, CLASS_INDEX_LOSSES, TOKEN_LOSSES, LossFn, causal_lm, causal_lm_correct, resolve_loss
from ..spec import LossSpec

__all__ = ["BUILTIN_LOSSES", "CLASS_INDEX_LOSSES", "TOKEN_LOSSES", "LossFn", "LossSums", "mean_and_stderr",
           "metric_names", "resolve_loss", "split_metrics", "wants_accuracy", "wants_perplexity"]

SUMS = 7
"""Sums kept per split and point on the device: Σl, Σl² over units; Σw·m, Σw²·m², Σw²·m, Σw² over batch
means m of weight w (the batch size); correct predictions. Unit, batch and sample counts are kept on the host
(for a token loss the "samples" are the counted tokens, the denominator of its accuracy)."""


ORDERED_BLOCK = 32768
"""Sums over more units than this are taken in blocks of this size (torch's parallel grain), so their order
of summation, and so their rounding, does not depend on the number of threads."""


def ordered_sum(t: torch.Tensor) -> torch.Tensor:
    """Row sums of ``t`` (k, n) in an order fixed by n alone, never by the thread count."""
    k, n = t.shape
    if n <= ORDERED_BLOCK:
        return t.sum(dim=1)
    blocks = -(-n // ORDERED_BLOCK)
    padded = F.pad(t, (0, blocks * ORDERED_BLOCK - n))
    return padded.view(k, blocks, ORDERED_BLOCK).sum(dim=2).sum(dim=1)


def metric_names(splits: list[str], accuracy: bool, perplexity: bool = False) -> list[str]:
    """Dataset names of the metrics the engine produces, in a fixed order (``perplexity``: a token loss's
    ``{split}_perplexity`` after the standard error)."""
    names = []
    for s in splits:
        names += ([f"{s}_loss", f"{s}_loss_stderr"] + ([f"{s}_perplexity"] if perplexity else [])
                  + ([f"{s}_acc"] if accuracy else []))
    return names


def wants_accuracy(spec: LossSpec, targets: torch.Tensor) -> bool:
    """Accuracy applies to classification: integer class targets, one per sample, or a token loss's integer
    labels, one per token (``loss.accuracy = "auto"``)."""
    if spec.accuracy != "auto":
        return spec.accuracy == "true"
    if spec.name in TOKEN_LOSSES:
        return not targets.is_floating_point()
    return not targets.is_floating_point() and targets.dim() == 1


def wants_perplexity(spec: LossSpec, builtin: bool) -> bool:
    """Whether the loss is a built-in token loss, whose metrics include the perplexity exp(mean loss)."""
    return builtin and spec.name in TOKEN_LOSSES


def predictions(out: torch.Tensor) -> torch.Tensor:
    """Predicted classes of outputs (..., C): the arg-max, or ``logit > 0`` for a single output (binary)."""
    if out.shape[-1] == 1:
        return (out[..., 0] > 0).long()
    return out.argmax(dim=-1)


EXP_FLOOR = 80.0
"""log-sum-exp terms are taken from max − EXP_FLOOR up (e^-80 ≈ 1.8e-35, below a float32's resolution at 1)."""


def _work(work: dict[Any, torch.Tensor] | None, key: Any, make: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``work[key]``, made by ``make`` the first time (a new tensor every call without ``work``)."""
    if work is None:
        return make()
    t = work.get(key)
    if t is None:
        if len(work) > 16:  # shapes seen in one run are few; never let an odd caller grow it
            work.clear()
        t = work[key] = make()
    return t


def cross_entropy_terms(out: torch.Tensor, y: torch.Tensor, work: dict[Any, torch.Tensor] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-entropy (k, batch) of outputs (k, batch, C) for class indices ``y`` (batch) in [0, C),
    and whether each sample's class is the predicted one (k, batch).

    Every step runs on the logits laid out as (k, C, batch) (the layout a plan's outputs come in; others
    are transposed once): a reduction over the classes is then an elementwise pass over contiguous rows of
    samples, which a CPU vectorises, instead of a reduction along a short last dimension, which it does not.
    The loss is log Σ exp(o − max) + max − o_y. The prediction is ``argmax``'s, the first maximal index (a
    NaN counting as maximal), found as C − max_j (C − j)·[o_j is maximal or NaN] with comparisons written
    as 0/1 floats (a comparison writing booleans runs several times slower on a CPU). Every reduction runs
    over the classes only, so a row's values do not depend on how many rows there are. ``work``: a dict in
    which the (k, C, batch) intermediates are kept from call to call (fresh pages for them at every call
    would cost more than the arithmetic on a CPU); the returned tensors are always new.
    """
    logits = out.transpose(1, 2)
    if not logits.is_contiguous():
        logits = logits.contiguous()
    k, classes, _ = logits.shape
    flag = logits.dtype if logits.element_size() >= 4 else torch.float32  # exact ranks up to 2^24 classes
    shape, device = tuple(logits.shape), logits.device

    def buffer(i: int, dtype: torch.dtype) -> torch.Tensor:
        return _work(work, (i, shape, dtype, device), lambda: torch.empty(shape, dtype=dtype, device=device))

    rank = _work(work, ("rank", classes, flag, device),
                 lambda: torch.arange(classes, 0, -1, device=device, dtype=flag).view(1, classes, 1))
    top = logits.amax(dim=1, keepdim=True)
    picked = logits.gather(1, y.view(1, 1, -1).expand(k, 1, -1))
    maximal = torch.eq(logits, top, out=buffer(0, flag))
    maximal.add_(torch.ne(logits, logits, out=buffer(1, flag)))
    code = torch.sub(classes, y, out=torch.empty(y.shape, dtype=flag, device=device))  # C − y, as the ranks are
    correct = maximal.mul_(rank).amax(dim=1).eq_(code)
    # Terms below e^-80 cannot change a sum that holds 1 (the maximum's), and they would be denormal: an
    # order of magnitude slower on a CPU far from θ*, where logits differ by hundreds.
    shifted = torch.sub(logits, top, out=buffer(1, logits.dtype)).clamp_(min=-EXP_FLOOR).exp_()
    losses = shifted.sum(dim=1).log_().add_(top[:, 0]).sub_(picked[:, 0])
    return losses, correct.bool()


class LossSums:
    """Per-point sums of one split's losses over its batches, kept on the device (no synchronisation).

    ``fused``: the loss is the built-in cross-entropy and every target is a class index in
    range, so losses and accuracy come from :func:`cross_entropy_terms`. The built-in
    ``causal_lm`` counts tokens: its losses are one per counted token (the same count for
    every point, which share the labels), its accuracy is per counted token and its
    "samples" are the counted tokens. Half-precision outputs (bf16 weights) are taken to
    float32 before any loss, and every sum is float64.
    """

    def __init__(self, loss_fn: LossFn, builtin: bool, accuracy: bool, k: int, device: torch.device,
                 fused: bool = False, work: dict[Any, torch.Tensor] | None = None, batch_means: bool = False) -> None:
        """``work``: intermediates kept between calls of the fused loss (:func:`cross_entropy_terms`);
        ``batch_means``: earlier batches of the split (summed elsewhere) gave batch means, so a one-sample
        batch's single loss is a batch mean too (as :meth:`add` decides for batches it has seen itself)."""
        self.batch_means = batch_means
        self.work = work
        self.loss_fn = loss_fn
        self.fused = fused
        self.builtin = builtin
        self.tokens = builtin and loss_fn is causal_lm
        self.accuracy = accuracy
        self.k = k
        self.acc = torch.zeros(SUMS, k, device=device, dtype=torch.float64)
        self.units = 0
        self.batches = 0
        self.samples = 0

    def _losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Losses of k points (k, values): per sample for built-ins, as the user's loss returns them otherwise."""
        k = out.shape[0]
        if self.builtin:
            targets = y.unsqueeze(0).expand(k, *y.shape).flatten(0, 1)
            return self.loss_fn(out.flatten(0, 1), targets).reshape(k, -1)
        return torch.stack([torch.as_tensor(self.loss_fn(out[i], y)).reshape(-1) for i in range(k)])

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add one batch of k points' outputs (k, batch, ...) with its targets."""
        batch = int(y.shape[0])
        if out.is_floating_point() and out.element_size() < 4:
            out = out.float()
        if self.fused:
            self._add_fused(out, y)
            return
        losses = self._losses(out, y).to(torch.float64)
        if self.tokens:
            self.acc[:2] += torch.stack([ordered_sum(losses), ordered_sum(losses.square())])
            self.units += losses.shape[1]
            correct, counted = causal_lm_correct(out, y)
            if self.accuracy:
                self.acc[6] += correct
            self.samples += counted
            return
        if losses.shape[1] == 1 and (batch > 1 or self.batches or self.batch_means):
            m, w = losses[:, 0], float(batch)
            self.acc[2:6] += torch.stack([m * w, (m * w).square(), m * (w * w), torch.full_like(m, w * w)])
            self.batches += 1
        else:
            self.acc[:2] += torch.stack([ordered_sum(losses), ordered_sum(losses.square())])
            self.units += losses.shape[1]
        if self.accuracy:
            self.acc[6] += (predictions(out) == y).sum(dim=1)
        self.samples += batch

    def _add_fused(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """:meth:`add` for the fused cross-entropy: per-sample losses, their squares and the correct
        predictions summed in float64 by one reduction over the stacked rows (each row summed as alone)."""
        losses, correct = cross_entropy_terms(out, y, self.work)
        wide = losses.to(torch.float64)
        parts = [wide, wide.square()] + ([correct.to(torch.float64)] if self.accuracy else [])
        sums = ordered_sum(torch.cat(parts))
        self.acc[:2] += sums[:2 * self.k].view(2, self.k)
        if self.accuracy:
            self.acc[6] += sums[2 * self.k:]
        self.units += losses.shape[1]
        self.samples += int(y.shape[0])

    def result(self) -> torch.Tensor:
        """The sums (k × SUMS+3): the accumulators, then the unit, batch and sample counts."""
        counts = torch.tensor([self.units, self.batches, self.samples], dtype=torch.float64, device=self.acc.device)
        return torch.cat([self.acc.t(), counts.unsqueeze(0).expand(self.k, 3)], dim=1)


def mean_and_stderr(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error per point from :meth:`LossSums.result` rows (k × SUMS+3)."""
    s, s2, wm, w2m2, w2m, w2, _correct, units, batches, samples = sums.T
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        if not np.any(batches):
            mean = s / units
            var = np.where(units > 1, (s2 - units * mean * mean) / np.maximum(units - 1, 1), np.nan)
            stderr = np.where(np.isfinite(var), np.sqrt(np.maximum(var, 0.0) / units), np.nan)
        else:
            mean = wm / samples
            spread = np.maximum(w2m2 - 2 * mean * w2m + mean * mean * w2, 0.0)
            se2 = np.where(batches > 1, batches / np.maximum(batches - 1, 1) * spread / (samples * samples), np.nan)
            stderr = np.where(np.isfinite(se2), np.sqrt(se2), np.nan)
    return mean, stderr


def split_metrics(name: str, sums: np.ndarray, accuracy: bool, perplexity: bool = False) -> dict[str, np.ndarray]:
    """Loss, standard error, accuracy and (``perplexity``, a token loss) exp(mean loss) of one split from
    :meth:`LossSums.result` rows (k × SUMS+3)."""
    mean, stderr = mean_and_stderr(sums)
    out: dict[str, np.ndarray] = {f"{name}_loss": mean, f"{name}_loss_stderr": stderr}
    if perplexity:
        with np.errstate(over="ignore", invalid="ignore"):
            out[f"{name}_perplexity"] = np.exp(mean)
    if accuracy:
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{name}_acc"] = sums[:, 6] / sums[:, 9]
    return out
