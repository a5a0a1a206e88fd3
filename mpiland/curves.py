"""Curve finding between two modes (Garipov et al. 2018, "Loss Surfaces, Mode Connectivity, and Fast
Ensembling of DNNs"): train the bends of a Bézier curve or polygonal chain between fixed end models.

The curve θ(t) through the ends A, B and bends P₁…P_N is the one the ``bezier`` and
``polychain`` path kinds evaluate (:mod:`mpiland.directions.models`). Training
minimises the expected loss over t ~ U(0, 1): every step draws one t and one
batch, and takes an SGD step (momentum, weight decay on the bends only) on the
batch's mean loss at θ(t), with BatchNorm in training mode (batch statistics), as
Garipov et al. do; evaluating the curve afterwards should recompute BatchNorm
statistics at each t (``model.bn = "recompute"``). Bends start on the straight
line, at t = i/(N+1). The learning rate follows their schedule: constant for the
first half of the epochs, then linear down to 1 % at 90 %, then constant.

Everything is seeded (batch order, t, dropout) without touching the caller's random
state. After every epoch the bends are saved as checkpoints (``bend_1.pt`` …, the
first end's state with the bend's parameters) with the training state
(``connect_state.pt``: epoch, step, momentum buffers, losses): a killed run
resumes from there, and a finished one is not trained again.

Under MPI the ranks share each step's batch (data parallel): every rank uses the
same t and a fixed slice of the batch, and the gradients are summed over ranks.
Data rather than t parallelism keeps each step's estimator the one a single
process takes (one t per batch, as in the paper), so for models without BatchNorm
or dropout the bends do not depend on the number of ranks beyond rounding (with
them, batch statistics and dropout masks are per rank's slice of the batch).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .comm import Comm, agree, world
from .data import Split
from .digest import tensors_digest
from .models import outputs_of
from .errors import CheckpointError, SettingsError
from .layout import ParamLayout, state_vector
from .models import save_checkpoint
from .lossfns import LossFn
from .progress import bar_class, in_notebook
from .spec import CURVES, ConnectSpec

log = logging.getLogger("mpiland")

STATE = "connect_state.pt"


@dataclass(frozen=True)
class CurveResult:
    """The trained bends: their checkpoint files (none without a checkpoint folder), state dicts, and the mean
    training loss of every epoch; ``stopped``: a stop signal ended the training early (its state is saved)."""

    paths: list[Path]
    bends: list[dict[str, torch.Tensor]]
    losses: list[float]
    stopped: bool = False


def curve_weights(curve: str, t: float, bends: int) -> np.ndarray:
    """Weights of the points (A, P₁…P_N, B) at t: Bernstein polynomials, or the chain's linear pieces."""
    n = bends + 1
    if curve == "bezier":
        return np.array([math.comb(n, k) * t**k * (1 - t) ** (n - k) for k in range(n + 1)])
    seg = min(int(t * n), n - 1)
    s = t * n - seg
    w = np.zeros(n + 1)
    w[seg], w[seg + 1] = 1 - s, s
    return w


def _lr_factor(progress: float) -> float:
    """Garipov et al.'s schedule: 1 up to half the epochs, linear to 0.01 at 90 %, then 0.01."""
    if progress <= 0.5:
        return 1.0
    if progress <= 0.9:
        return 1.0 - 0.99 * (progress - 0.5) / 0.4
    return 0.01


def _config(spec: ConnectSpec, a: torch.Tensor, b: torch.Tensor, split: Split, layout: ParamLayout,
            loss_name: str) -> str:
    """What the saved training state must match to be resumed (ends, data, loss, settings, layout)."""
    settings = {k: getattr(spec, k) for k in ("curve", "bends", "epochs", "lr", "momentum", "weight_decay",
                                                "batch_size", "seed")}
    settings["loss"] = loss_name
    text = json.dumps([settings, list(layout.names), tensors_digest(a, b, split.inputs, split.targets)])
    return hashlib.sha256(text.encode()).hexdigest()


def _bend_state(template: dict[str, torch.Tensor], layout: ParamLayout, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """A full state dict: the first end's state with the bend's parameters."""
    state = {k: v.detach().clone() for k, v in template.items()}
    for name, view in zip(layout.names, layout.views(vector.detach().to(torch.float64))):
        state[name] = view.to(template[name].dtype).clone()
    return state


def _check(spec: ConnectSpec) -> None:
    if spec.curve not in CURVES:
        raise SettingsError(f"connect.curve = {spec.curve!r}: choose {' or '.join(CURVES)}")
    for key in ("bends", "epochs", "batch_size", "seed"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and key != "seed"):
            raise SettingsError(f"connect: {key} = {value!r}; give an integer" + (" of at least 1" if key != "seed" else ""))
    for key in ("lr", "momentum", "weight_decay"):
        value = getattr(spec, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
                or (key == "lr" and value == 0):
            raise SettingsError(f"connect: {key} = {value!r}; give a finite number" + (" > 0" if key == "lr" else " >= 0"))


def connect(model: nn.Module, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], split: Split,
            loss_fn: LossFn, spec: ConnectSpec, checkpoint_dir: str | os.PathLike[str] | None, *,
            loss_name: str = "", comm: Comm | None = None, progress: str = "auto",
            stop: Callable[[], bool] | None = None) -> CurveResult:
    """Train the bends of ``spec.curve`` between the models ``a`` and ``b`` (state dicts of ``model``'s
    architecture) on ``split``; save them in ``checkpoint_dir`` (None: keep them in memory only),
    resuming what a previous run saved there.

    ``model`` is only a template: it is copied, never changed; training runs on its
    device and in its dtype. ``loss_name`` names the loss in the saved state, so a
    resume with another loss is refused. ``stop()`` True ends the run after the
    current step with the state saved (``stopped`` in the result). Raises
    SettingsError for bad settings, CheckpointError when ``checkpoint_dir`` holds the
    training state of another curve.
    """
    _check(spec)
    ranks = world(comm)
    rank = ranks.Get_rank()
    out = Path(checkpoint_dir) if checkpoint_dir is not None else None
    work = _copy(model, a)
    template = _copy(model, a).state_dict()  # the bends' buffers: the first end's (recomputed when evaluated)
    layout = ParamLayout.from_model(work)
    first = next(work.parameters())
    theta_a = state_vector(work, layout)
    theta_b = state_vector(_copy(model, b), layout)
    if float((theta_b - theta_a).norm()) == 0.0:
        raise SettingsError("connect: the two end models are the same; give two different modes")
    config = _config(spec, theta_a, theta_b, split, layout, loss_name)
    n = spec.bends
    line = [theta_a + (i / (n + 1)) * (theta_b - theta_a) for i in range(1, n + 1)]
    bends = nn.Parameter(torch.stack(line).to(device=first.device, dtype=first.dtype))
    opt = torch.optim.SGD([bends], lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    saved = ranks.bcast(agree(ranks, lambda: _read_state(out, config) if rank == 0 and out is not None else None),
                        root=0)
    epoch, step, partial, losses = _resume(saved, bends, opt)
    if saved is not None and rank == 0 and epoch < spec.epochs:
        log.info("connect: resuming %s in epoch %d of %d", out, epoch + 1, spec.epochs)
    ends = (theta_a.to(bends), theta_b.to(bends))
    train = _Training(work, layout, ends, bends, opt, split, loss_fn, spec, ranks)
    stopped = False
    batches = -(-len(split) // spec.batch_size)
    bar = _bar(spec.epochs * batches, epoch * batches + step, progress) if rank == 0 else None
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        while epoch < spec.epochs and not stopped:
            for group in opt.param_groups:
                group["lr"] = spec.lr * _lr_factor(epoch / spec.epochs)
            gen = torch.Generator().manual_seed(spec.seed * 100003 + epoch)
            order = torch.randperm(len(split), generator=gen)
            ts = torch.rand(batches, generator=gen, dtype=torch.float64)
            total = partial
            for k in range(step, batches):
                torch.manual_seed((spec.seed * 100003 + epoch) * 100003 + k)  # dropout: the same after a resume
                idx = order[k * spec.batch_size: (k + 1) * spec.batch_size]
                batch_loss = train.step(idx, float(ts[k]))
                total += batch_loss
                step = k + 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{batch_loss / len(idx):.4f}")
                if stop is not None and step < batches and bool(ranks.allreduce(int(stop()))):
                    stopped = True
                    break
            partial = total
            if not stopped:
                losses.append(total / len(split))
                epoch, step, partial = epoch + 1, 0, 0.0
                if rank == 0:
                    log.info("connect: epoch %d/%d, mean curve loss %.4f", epoch, spec.epochs, losses[-1])
            if rank == 0 and out is not None:
                _write(out, config, template, layout, bends, opt, epoch, step, losses, partial)
    if bar is not None:
        bar.close()
    states = [_bend_state(template, layout, bends[i]) for i in range(n)]
    paths = [out / f"bend_{i + 1}.pt" for i in range(n)] if out is not None else []
    ranks.Barrier()
    return CurveResult(paths, states, losses, stopped)


def _resume(saved: dict[str, Any] | None, bends: nn.Parameter,
            opt: torch.optim.Optimizer) -> tuple[int, int, float, list[float]]:
    """Epoch, step, partial loss sum and losses of a saved state, loaded into the bends and the optimizer."""
    if saved is None:
        return 0, 0, 0.0, []
    with torch.no_grad():
        bends.copy_(saved["bends"])
    if "momentum" in saved:
        opt.state[bends]["momentum_buffer"] = saved["momentum"].to(bends).clone()
    return int(saved["epoch"]), int(saved["step"]), float(saved["partial"]), [float(v) for v in saved["losses"]]


@dataclass
class _Training:
    """One SGD step of the bends: θ(t) on the curve, the loss of this rank's slice of the batch, the gradient
    summed over ranks."""

    work: nn.Module
    layout: ParamLayout
    ends: tuple[torch.Tensor, torch.Tensor]
    bends: nn.Parameter
    opt: torch.optim.Optimizer
    split: Split
    loss_fn: LossFn
    spec: ConnectSpec
    ranks: Comm

    def step(self, idx: torch.Tensor, t: float) -> float:
        """Take the step for batch ``idx`` at ``t``; return the batch's summed loss (over all ranks)."""
        rank, size = self.ranks.Get_rank(), self.ranks.Get_size()
        mine = idx[rank * len(idx) // size: (rank + 1) * len(idx) // size]
        self.opt.zero_grad(set_to_none=True)
        w = torch.as_tensor(curve_weights(self.spec.curve, t, self.spec.bends)).to(self.bends)
        theta = w[0] * self.ends[0] + w[-1] * self.ends[1] + (w[1:-1, None] * self.bends).sum(dim=0)
        self.work.train()
        if len(mine):
            x = self.split.inputs[mine].to(self.bends.device)
            out = outputs_of(torch.func.functional_call(self.work, dict(zip(self.layout.names,
                                                                            self.layout.views(theta))), (x,)))
            # a mean over the slice's units (samples, tokens, or one batch mean) weighted by its samples
            values = torch.as_tensor(self.loss_fn(out, self.split.targets[mine].to(self.bends.device)))
            loss_sum = values.to(self.bends.dtype).mean() * len(mine)
        else:
            loss_sum = theta.sum() * 0
        (loss_sum / len(idx)).backward()
        batch_loss = float(loss_sum.detach())
        if size > 1:
            assert self.bends.grad is not None
            grad = self.ranks.allreduce(self.bends.grad.cpu().numpy())
            self.bends.grad = torch.from_numpy(np.asarray(grad)).to(self.bends)
            batch_loss = float(self.ranks.allreduce(batch_loss))
        self.opt.step()
        return batch_loss


def _copy(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    work = copy.deepcopy(model)
    try:
        work.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"connect: an end model does not fit the model ({str(exc).splitlines()[0]}); "
                              "give checkpoints of model.factory's architecture") from None
    return work


def _bar(total: int, initial: int, progress: str) -> Any:
    """A bar over training steps with the running curve loss: for ``bar``, and for ``auto`` on a terminal or
    in Jupyter; None otherwise (``lines`` and logs get one line per epoch from the logger)."""
    notebook = in_notebook()
    live = progress == "bar" or (progress == "auto" and (sys.stderr.isatty() or notebook))
    if not live:
        return None
    return bar_class(notebook)(total=total, initial=initial, unit="step", desc="connect", leave=True)


def _read_state(out: Path, config: str) -> dict[str, Any] | None:
    path = out / STATE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: say so, never guess
        raise CheckpointError(f"{path}: cannot be read ({exc.__class__.__name__}); delete it to train the curve "
                              "again") from None
    if state.get("config") != config:
        raise CheckpointError(f"{path} holds the training of another curve (other ends, data or settings); "
                              "choose another connect.checkpoint_dir or delete it")
    return dict(state)


def _write(out: Path, config: str, template: dict[str, torch.Tensor], layout: ParamLayout, bends: torch.Tensor,
           opt: torch.optim.Optimizer, epoch: int, step: int, losses: list[float], partial: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for i in range(bends.shape[0]):
        save_checkpoint(_bend_state(template, layout, bends[i]), out / f"bend_{i + 1}.pt")
    state: dict[str, Any] = {"config": config, "epoch": epoch, "step": step, "bends": bends.detach().clone(),
                             "losses": torch.tensor(losses, dtype=torch.float64), "partial": partial}
    buffer = opt.state.get(bends, {}).get("momentum_buffer") if bends in opt.state else None
    if buffer is not None:
        state["momentum"] = buffer.detach().clone()
    save_checkpoint(state, out / STATE)
