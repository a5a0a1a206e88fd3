"""The modular-addition transformer demo (mpiland/modadd.py): its data, its fixed split, training that gives
the same weights whatever the caller's thread count, and the shipped job file on a small modulus."""

from __future__ import annotations

import json

import pytest
import torch

import mpiland as ml
from mpiland import modadd
from mpiland.errors import DataError, SettingsError
from mpiland.models import load_checkpoint

from util import REPO, cli

transformers = pytest.importorskip("transformers")

P = 11
SMALL = {"n_embd": 16, "n_head": 2}


def test_sequences_are_a_b_equals_answer_and_only_the_answer_is_labelled():
    ids, labels = modadd.data("all", p=P)
    assert ids.shape == labels.shape == (P * P, 4) and ids.dtype == labels.dtype == torch.int64
    a, b = ids[:, 0], ids[:, 1]
    assert torch.equal(ids[:, 2], torch.full_like(a, P)), "the '=' token is p"
    assert torch.equal(ids[:, 3], (a + b) % P)
    assert torch.equal(labels[:, :3], torch.full_like(labels[:, :3], modadd.IGNORE))
    assert torch.equal(labels[:, 3], (a + b) % P)
    assert sorted(zip(a.tolist(), b.tolist())) == [(i, j) for i in range(P) for j in range(P)]


def test_the_split_is_fixed_disjoint_and_covers_every_pair():
    train, test = modadd.data("train", p=P, fraction=0.3), modadd.data("test", p=P, fraction=0.3)
    assert len(train[0]) == round(0.3 * P * P) and len(train[0]) + len(test[0]) == P * P
    pairs = [set(map(tuple, split[0][:, :2].tolist())) for split in (train, test)]
    assert not pairs[0] & pairs[1] and len(pairs[0] | pairs[1]) == P * P
    again = modadd.data("train", p=P, fraction=0.3)
    assert torch.equal(again[0], train[0]) and torch.equal(again[1], train[1])
    other = modadd.data("train", p=P, fraction=0.3, seed=1)
    assert not torch.equal(other[0], train[0]), "the seed chooses the split"
    with pytest.raises(DataError, match="unknown split 'valid'"):
        modadd.data("valid", p=P)
    with pytest.raises(DataError, match="fraction"):
        modadd.data("train", p=P, fraction=1.0)


def _train(folder, threads: int) -> tuple[dict[str, torch.Tensor], list[dict[str, float]]]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = torch.get_rng_state()
    try:
        history = modadd.train(folder, steps=40, mid_step=10, every=20, p=P, model_kwargs=SMALL)
        assert torch.get_num_threads() == threads, "the caller's thread count is restored"
        assert torch.equal(torch.get_rng_state(), rng), "the caller's random state is untouched"
    finally:
        torch.set_num_threads(before)
    return torch.load(folder / "final.pt", weights_only=True), history


def test_training_gives_the_same_weights_on_one_or_two_threads_and_writes_its_checkpoints(tmp_path):
    one, history = _train(tmp_path / "one", 1)
    two, _ = _train(tmp_path / "two", 2)
    assert set(one) == set(two) and all(torch.equal(one[k], two[k]) for k in one)
    folder = tmp_path / "one"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["final.pt", "history.json", "init.pt", "mid.pt", "step_00000.pt", "step_00020.pt",
                     "step_00040.pt"]
    init = torch.load(folder / "init.pt", weights_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = modadd.model(p=P, **SMALL).state_dict()
    assert all(torch.equal(init[k], fresh[k]) for k in fresh), "init.pt is the seeded initialisation"
    assert not all(torch.equal(init[k], one[k]) for k in one)
    assert [h["step"] for h in history] == [0, 20, 40]
    assert history[-1]["train_loss"] < 0.9 * history[0]["train_loss"], "40 AdamW steps lower the training loss"
    assert json.loads((folder / "history.json").read_text()) == history
    net = modadd.model(p=P, **SMALL)
    load_checkpoint(net, folder / "mid.pt")  # the job files' loader reads it strictly


def test_training_refuses_a_mid_step_outside_the_run(tmp_path):
    with pytest.raises(SettingsError, match="mid_step"):
        modadd.train(tmp_path, steps=10, mid_step=10, p=P, model_kwargs=SMALL)


def test_the_shipped_job_file_evaluates_the_answer_loss_of_the_trained_model(tmp_path):
    history = modadd.train(tmp_path / "run", steps=20, mid_step=10, every=20, p=P, model_kwargs=SMALL)
    out = tmp_path / "line.h5"
    done = cli("run", str(REPO / "jobs" / "transformer.toml"), "--output", str(out), "--progress", "none",
               "--set", f'model.checkpoint="{tmp_path / "run" / "final.pt"}"',
               "--set", "model.kwargs={p = 11, n_embd = 16, n_head = 2}", "--set", "data.kwargs={p = 11}",
               "--set", "grid.x=[-0.2, 0.2, 3]", "--unset", "grid.y", "--threads", "1")
    assert done.returncode == 0, done.stderr
    curve = ml.open(out)
    for split in ("train", "test"):
        loss, acc = curve.metrics[f"{split}_loss"], curve.metrics[f"{split}_acc"]
        assert loss.shape == (3,) and bool(torch.isfinite(torch.as_tensor(loss)).all())
        # One answer token per sequence: the token-weighted causal_lm loss at θ* is training's answer loss.
        assert float(loss[1]) == pytest.approx(history[-1][f"{split}_loss"], rel=1e-5)
        assert float(acc[1]) == pytest.approx(history[-1][f"{split}_acc"])
        assert float(curve.metrics[f"{split}_perplexity"][1]) == pytest.approx(
            torch.tensor(history[-1][f"{split}_loss"]).exp().item(), rel=1e-5)
