"""Train a model when the job's checkpoint is missing (the demo's path), saving every epoch.

Checkpoints ``epoch_000.pt`` (the initialisation) … ``epoch_NNN.pt`` go to
``train.checkpoint_dir`` (default: the checkpoint's folder), so a trajectory is
there for later PCA or interpolation jobs; the final weights go to
``model.checkpoint``. Only rank 0 trains; the others wait for it.

Training runs on one thread, whatever ``run.threads`` says: a kernel's sums may
round differently with another thread count, and over hundreds of SGD steps that
moved the demo's weights by up to 0.1, so every user's pictures differed. With one
thread the trained model depends only on the job, the torch build and the CPU's
instruction set (the same on every machine of a cluster, or a CI runner).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .data import Split
from .engine import resolve_loss
from .models import outputs_of
from .models import save_checkpoint
from .spec import Job

log = logging.getLogger("mpiland")


def train_model(model: torch.nn.Module, job: Job, split: Split) -> list[Path]:
    """Fit ``model`` on ``split`` with SGD as ``job.train`` says, on one thread (reproducible weights);
    return the checkpoint paths written."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(model, job, split)
    finally:
        torch.set_num_threads(threads)


def _train(model: torch.nn.Module, job: Job, split: Split) -> list[Path]:
    assert job.train is not None and job.model.checkpoint is not None
    spec = job.train
    final = Path(job.model.checkpoint)
    out_dir = Path(spec.checkpoint_dir) if spec.checkpoint_dir else final.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    loss_fn = resolve_loss(job.loss)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    written = [out_dir / "epoch_000.pt"]
    save_checkpoint(model.state_dict(), written[0])
    n = len(split)
    for epoch in range(1, spec.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, spec.batch_size):
            idx = order[start: start + spec.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(outputs_of(model(split.inputs[idx])), split.targets[idx]).mean()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        path = out_dir / f"epoch_{epoch:03d}.pt"
        save_checkpoint(model.state_dict(), path)
        written.append(path)
        log.info("train: epoch %d/%d, mean loss %.4f", epoch, spec.epochs, total / n)
    model.eval()
    save_checkpoint(model.state_dict(), final)
    written.append(final)
    return written
