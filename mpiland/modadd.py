"""Modular addition for a small GPT-2: the grokking task (Power et al. 2022), generated here, no download.

Every pair (a, b) of Z_p is one sequence ``a b = c`` with c = (a + b) mod p; tokens
0 … p−1 are the numbers and p is ``=``. A fixed seeded share of the pairs is the
training split, the rest the test split. Labels follow the HuggingFace convention
(the loss shifts them): -100 everywhere except the answer, so only c, predicted
from the ``=`` position, is scored.

:func:`train` fits :func:`model` on the training split with AdamW and strong weight
decay (full batch, one thread, fixed seeds: the same weights on every machine with
the same torch build and instruction set) and writes ``init.pt``, ``mid.pt``
(memorised: training accuracy 1, test accuracy still low) and ``final.pt``
(generalised), a checkpoint every ``every`` steps and ``history.json``. The job files
``jobs/transformer*.toml`` evaluate the landscape at the three checkpoints
(``loss.name = "causal_lm"``). ``python -m mpiland.modadd train [--out DIR]`` runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import DataError, DependencyError, SettingsError
from .models import save_checkpoint

log = logging.getLogger("mpiland")

P = 59
"""The modulus: 59² = 3,481 pairs."""
TRAIN_FRACTION = 0.3
"""Share of the pairs in the training split (grokking needs a small one: the rest is only reachable by generalising)."""
SPLIT_SEED = 0
IGNORE = -100
"""The label HuggingFace's losses (and mpiland's ``causal_lm``) leave out."""
SPLITS = ("train", "test", "all")


def sequences(p: int = P) -> torch.Tensor:
    """All p² sequences ``a b = c`` as a (p², 4) int64 tensor, a-major (row a·p + b)."""
    if p < 2:
        raise DataError(f"modadd: p must be at least 2, got {p}; use a modulus such as 59 or 97")
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    return torch.stack([a, b, torch.full_like(a, p), (a + b) % p], dim=1)


def split_rows(p: int = P, fraction: float = TRAIN_FRACTION, seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the training and test pairs: a seeded permutation of the p² rows, cut at
    round(fraction·p²); both sorted, so the split depends only on (p, fraction, seed)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"modadd: fraction must lie strictly between 0 and 1, got {fraction}; use e.g. 0.3")
    n = p * p
    cut = int(round(fraction * n))
    if cut < 1 or cut >= n:
        raise DataError(f"modadd: fraction {fraction} leaves an empty split of the {n} pairs; choose it nearer 0.5")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:cut].sort().values, perm[cut:].sort().values


def data(split: str = "test", p: int = P, fraction: float = TRAIN_FRACTION,
         seed: int = SPLIT_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """The job files' data factory: ``(input_ids, labels)`` int64 tensors of shape (n, 4) for ``split``
    (``train``, ``test`` or ``all``); labels are -100 except the answer in the last column."""
    if split not in SPLITS:
        raise DataError(f"modadd: unknown split {split!r}; use one of {', '.join(SPLITS)} in data.splits")
    seqs = sequences(p)
    if split != "all":
        train_rows, test_rows = split_rows(p, fraction, seed)
        seqs = seqs[train_rows if split == "train" else test_rows]
    labels = torch.full_like(seqs, IGNORE)
    labels[:, -1] = seqs[:, -1]
    return seqs.clone(), labels


def model(p: int = P, n_embd: int = 64, n_layer: int = 1, n_head: int = 4, n_inner: int | None = None) -> torch.nn.Module:
    """The job files' model factory: a ``transformers.GPT2LMHeadModel`` over the p + 1 tokens, positions 4,
    no dropout, eager attention (tied input and output embeddings, as GPT-2 has them)."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        raise DependencyError("mpiland.modadd needs the transformers package: pip install transformers "
                            "(or mpiland[hf])") from None
    eager: dict[str, Any] = {"attn_implementation": "eager"}  # a PretrainedConfig keyword, not in GPT2Config's own
    config = GPT2Config(vocab_size=p + 1, n_positions=4, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        n_inner=n_inner if n_inner is not None else 4 * n_embd, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=p, eos_token_id=p, pad_token_id=None, **eager)
    return GPT2LMHeadModel(config)


def _answer_logits(net: torch.nn.Module, seqs: torch.Tensor) -> torch.Tensor:
    """Logits at the ``=`` position, which predict the answer (the sequence without its answer token)."""
    return net(seqs[:, :-1]).logits[:, -1]


def _evaluate(net: torch.nn.Module, seqs: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        logits = _answer_logits(net, seqs)
        loss = torch.nn.functional.cross_entropy(logits, seqs[:, -1]).item()
        acc = (logits.argmax(-1) == seqs[:, -1]).double().mean().item()
    return loss, acc


def _lr_factor(step: int, steps: int, warmup: int, decay_from: float) -> float:
    """Linear warm-up over ``warmup`` steps, constant, then a cosine decay to 0 over the last
    (1 − decay_from)·steps, so the end of the run sits still instead of on one of the loss spikes
    that a large learning rate gives after grokking."""
    if step < warmup:
        return (step + 1) / warmup
    start = int(decay_from * steps)
    if step < start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - start) / max(1, steps - start)))


def train(out: str | Path = "runs/modadd", steps: int = 1200, mid_step: int = 200, every: int = 100,
          lr: float = 3e-3, weight_decay: float = 1.0, warmup: int = 20, decay_from: float = 0.7,
          seed: int = 0, p: int = P, fraction: float = TRAIN_FRACTION, split_seed: int = SPLIT_SEED,
          model_kwargs: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """Train :func:`model` on the training split (full batch AdamW, betas 0.9/0.98) for ``steps`` steps;
    write ``init.pt``, ``mid.pt`` (after ``mid_step`` steps), ``final.pt``, ``step_NNNNN.pt`` every
    ``every`` steps and ``history.json`` to ``out``; return the history (per ``every`` steps: train and
    test loss and answer accuracy, seconds).

    Runs on one thread (restored afterwards) with the model initialised from ``seed`` in a forked RNG,
    so the weights do not depend on the caller's thread count or random state.
    """
    if not 0 < mid_step < steps:
        raise SettingsError(f"modadd.train: mid_step must lie between 0 and steps ({steps}), got {mid_step}")
    if every < 1:
        raise SettingsError(f"modadd.train: every must be at least 1, got {every}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = model(p=p, **(model_kwargs or {}))
            return _train(net, Path(out), steps, mid_step, every, lr, weight_decay, warmup, decay_from,
                          p, fraction, split_seed)
    finally:
        torch.set_num_threads(threads)


def _train(net: torch.nn.Module, out: Path, steps: int, mid_step: int, every: int, lr: float,
           weight_decay: float, warmup: int, decay_from: float, p: int, fraction: float,
           split_seed: int) -> list[dict[str, float]]:
    out.mkdir(parents=True, exist_ok=True)
    seqs = sequences(p)
    train_rows, test_rows = split_rows(p, fraction, split_seed)
    train_seqs, test_seqs = seqs[train_rows], seqs[test_rows]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, steps, warmup, decay_from))
    history: list[dict[str, float]] = []
    start = time.perf_counter()

    def record(step: int) -> None:
        net.eval()
        tr, te = _evaluate(net, train_seqs), _evaluate(net, test_seqs)
        net.train()
        history.append({"step": step, "train_loss": tr[0], "train_acc": tr[1], "test_loss": te[0],
                        "test_acc": te[1], "seconds": time.perf_counter() - start})
        log.info("modadd: step %d/%d, train loss %.4f acc %.3f, test loss %.4f acc %.3f",
                 step, steps, tr[0], tr[1], te[0], te[1])

    net.train()
    for step in range(steps + 1):
        if step in (0, mid_step, steps) or step % every == 0:
            net.eval()
            state = net.state_dict()
            if step % every == 0:
                save_checkpoint(state, out / f"step_{step:05d}.pt")
                record(step)
            if step == 0:
                save_checkpoint(state, out / "init.pt")
            if step == mid_step:
                save_checkpoint(state, out / "mid.pt")
            net.train()
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(_answer_logits(net, train_seqs), train_seqs[:, -1])
        loss.backward()
        opt.step()
        sched.step()
    net.eval()
    if steps % every:
        record(steps)
    save_checkpoint(net.state_dict(), out / "final.pt")
    (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")
    return history


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mpiland.modadd train [--out DIR] [--steps N]``: train and print the curves."""
    parser = argparse.ArgumentParser(prog="python -m mpiland.modadd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("train", help="train the modular-addition GPT-2 and write its checkpoints")
    cmd.add_argument("--out", default="runs/modadd", help="checkpoint folder (default: runs/modadd)")
    cmd.add_argument("--steps", type=int, default=1200, help="training steps (default: 1200)")
    cmd.add_argument("--mid-step", type=int, default=200, help="step of mid.pt (default: 200)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        history = train(args.out, steps=args.steps, mid_step=args.mid_step)
    except (SettingsError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = history[-1]
    print(f"trained {args.steps} steps in {last['seconds']:.1f} s: train acc {last['train_acc']:.3f}, "
          f"test acc {last['test_acc']:.3f}; checkpoints in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
