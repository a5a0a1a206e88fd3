"""HuggingFace causal language models: the ``causal_lm`` loss, ModelOutput unwrapping, tied weights, dict
batches, bf16 weights, interpolation between checkpoints and LoRA directions, on a tiny GPT-2 built here
(no download)."""

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import mpiland as ml
from mpiland.engine.losses import LossSums, metric_names, split_metrics
from mpiland.errors import DataError
from mpiland.layout import ParamLayout
from mpiland.lossfns import causal_lm
from mpiland.models import load_checkpoint

transformers = pytest.importorskip("transformers")

VOCAB, SEQ = 13, 8


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """A one-layer GPT-2 (3,648 parameters, the output layer tied to the token embedding), eager attention."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=SEQ,
                                     bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config)
    return model.eval()


def token_data(n: int = 10, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (= ids, with -100 on prompts of unequal lengths), so batches count unequal tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = ids.clone()
    labels[:3, :6] = -100
    labels[7, 1:] = -100
    labels[8, :3] = -100
    return ids, labels


def by_hand(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor, batch: int) -> dict[str, float]:
    """Token-weighted loss and next-token accuracy over the split, and the mean of batch means (to differ)."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    flat_logits, flat_labels = logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100).item()
    kept = flat_labels != -100
    acc = (flat_logits.argmax(-1) == flat_labels)[kept].double().mean().item()
    means = [F.cross_entropy(logits[i:i + batch, :-1].reshape(-1, VOCAB), labels[i:i + batch, 1:].reshape(-1),
                             ignore_index=-100).item() for i in range(0, len(ids), batch)]
    return {"loss": loss, "acc": acc, "batch_means": float(np.mean(means))}


def dict_loader(ids, labels, batch):
    rows = [{"input_ids": i, "attention_mask": torch.ones_like(i), "labels": lab} for i, lab in zip(ids, labels)]
    return DataLoader(rows, batch_size=batch)


@pytest.mark.parametrize("form", ["dict", "tensors"])
def test_causal_lm_loss_is_token_weighted_at_the_origin(form):
    model = tiny_gpt2()
    ids, labels = token_data()
    want = by_hand(model, ids, labels, 4)
    assert abs(want["loss"] - want["batch_means"]) > 1e-3  # a mean of batch means would be caught
    data = dict_loader(ids, labels, 4) if form == "dict" else (ids, labels)
    d = ml.directions.random(model, dims=1, seed=0)
    s = ml.landscape(model, d, data, x=(-0.5, 0.5, 3), loss="causal_lm", batch_size=4, progress="none")
    assert s.metrics["data_loss"][1] == pytest.approx(want["loss"], rel=1e-6)
    assert s.metrics["data_acc"][1] == pytest.approx(want["acc"], abs=1e-12)
    assert np.all(np.isfinite(s.metrics["data_loss_stderr"]))
    assert s.metrics["data_loss"][0] != s.metrics["data_loss"][1]  # the points moved


def test_causal_lm_perplexity_through_the_api():
    model = tiny_gpt2()
    ids, labels = token_data()
    want = by_hand(model, ids, labels, 4)
    s = ml.landscape(model, ml.directions.random(model, dims=1), (ids, labels), x=(-0.5, 0.5, 3), loss="causal_lm",
                     batch_size=4, progress="none")
    assert s.metrics["data_perplexity"][1] == pytest.approx(math.exp(want["loss"]), rel=1e-6)


def test_token_sums_give_loss_perplexity_and_accuracy_per_token():
    model = tiny_gpt2()
    ids, labels = token_data()
    want = by_hand(model, ids, labels, 3)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    sums = LossSums(causal_lm, True, True, 2, torch.device("cpu"))
    for i in range(0, len(ids), 3):  # batches of 3, 3, 3, 1 with 21, 28, 30, 7 counted tokens
        out = logits[i:i + 3]
        sums.add(torch.stack([out, out]), labels[i:i + 3])
    tokens = int((labels[:, 1:] != -100).sum())
    assert sums.units == tokens and sums.samples == tokens and sums.batches == 0
    got = split_metrics("test", sums.result().numpy(), True, perplexity=True)
    np.testing.assert_allclose(got["test_loss"], want["loss"], rtol=1e-6)
    np.testing.assert_allclose(got["test_perplexity"], math.exp(want["loss"]), rtol=1e-6)
    np.testing.assert_allclose(got["test_acc"], want["acc"], rtol=1e-12)
    per_token = causal_lm(logits, labels).double()
    np.testing.assert_allclose(got["test_loss_stderr"], per_token.std().item() / math.sqrt(tokens), rtol=1e-5)
    assert metric_names(["test"], True, perplexity=True) == ["test_loss", "test_loss_stderr", "test_perplexity",
                                                             "test_acc"]
    assert metric_names(["test"], True) == ["test_loss", "test_loss_stderr", "test_acc"]


def test_one_counted_token_per_sample_is_not_a_batch_mean():
    # The modular-addition case: every label -100 but the answer, one loss per sample.
    model = tiny_gpt2()
    ids, _ = token_data()
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    sums = LossSums(causal_lm, True, True, 1, torch.device("cpu"))
    sums.add(logits[:1, None].transpose(0, 1), labels[:1])
    sums.add(logits[1:, None].transpose(0, 1), labels[1:])
    assert sums.units == len(ids) and sums.batches == 0
    want = F.cross_entropy(logits[:, -2], ids[:, -1]).item()
    assert split_metrics("t", sums.result().numpy(), True)["t_loss"][0] == pytest.approx(want, rel=1e-6)


def test_labels_outside_the_vocabulary_are_a_data_error():
    model = tiny_gpt2()
    ids, labels = token_data()
    labels[4, 5] = VOCAB
    with pytest.raises(DataError, match="vocabulary"):
        ml.landscape(model, ml.directions.random(model, dims=1), (ids, labels), x=(-0.5, 0.5, 3), loss="causal_lm",
                     progress="none")


def test_tied_output_layer_is_one_parameter_and_a_safetensors_checkpoint_loads(tmp_path):
    model = tiny_gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    layout = ParamLayout.from_model(model)
    assert "lm_head.weight" not in layout.names
    assert layout.numel == sum(p.numel() for p in model.parameters()) == 3648
    other = tiny_gpt2(seed=5)
    other.save_pretrained(tmp_path)  # model.safetensors stores the tied pair once
    load_checkpoint(model, tmp_path / "model.safetensors")
    assert model.lm_head.weight is model.transformer.wte.weight
    assert torch.equal(model.transformer.wte.weight, other.transformer.wte.weight)


class CheckedGPT2(transformers.GPT2LMHeadModel):
    """GPT-2 whose forward checks its embedding on the host first: control flow on a parameter's values,
    which vmap cannot run over batched parameters."""

    def forward(self, input_ids=None, **kw):
        if not bool(torch.isfinite(self.transformer.wte.weight).all()):
            raise ValueError("the token embedding is not finite")
        return super().forward(input_ids=input_ids, **kw)


def test_points_per_pass_over_gpt2_agree_with_one_point_per_pass():
    model = tiny_gpt2()
    ids, labels = token_data()
    d = ml.directions.random(model, dims=1, seed=0)
    runs = [ml.landscape(model, d, dict_loader(ids, labels, 4), x=(-0.5, 0.5, 5), loss="causal_lm", progress="none",
                         settings={"run.points_per_pass": k}) for k in (1, 4)]
    np.testing.assert_allclose(runs[1].metrics["data_loss"], runs[0].metrics["data_loss"], rtol=1e-5)
    np.testing.assert_allclose(runs[1].metrics["data_acc"], runs[0].metrics["data_acc"])


def test_an_hf_model_vmap_cannot_run_falls_back_to_one_point_per_pass(caplog):
    plain = tiny_gpt2()
    model = CheckedGPT2(plain.config).eval()
    model.load_state_dict(plain.state_dict())
    ids, labels = token_data()
    d = ml.directions.random(model, dims=1, seed=0)
    with caplog.at_level(logging.INFO, logger="mpiland"):
        s = ml.landscape(model, d, (ids, labels), x=(-0.5, 0.5, 3), loss="causal_lm", progress="none",
                         settings={"run.points_per_pass": 4})
    reasons = [r.getMessage() for r in caplog.records if "one point per pass" in r.getMessage()]
    assert reasons and "vmap cannot run this model" in reasons[0]
    assert s.metrics["data_loss"][1] == pytest.approx(by_hand(plain, ids, labels, 512)["loss"], rel=1e-6)


def test_bf16_gpt2_is_close_to_float32():
    model = tiny_gpt2()
    ids, labels = token_data()
    d = ml.directions.random(model, dims=1, seed=0)
    full = ml.landscape(model, d, (ids, labels), x=(-0.5, 0.5, 3), loss="causal_lm", progress="none")
    half = ml.landscape(model, d, (ids, labels), x=(-0.5, 0.5, 3), loss="causal_lm", progress="none",
                        settings={"model.dtype": "bfloat16"})
    np.testing.assert_allclose(half.metrics["data_loss"], full.metrics["data_loss"], rtol=2e-2)
    assert not np.array_equal(half.metrics["data_loss"], full.metrics["data_loss"])
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is left as it was


def test_interpolation_between_a_base_and_a_fine_tuned_checkpoint(tmp_path):
    base, tuned = tiny_gpt2(), tiny_gpt2()
    ids, labels = token_data()
    opt = torch.optim.SGD(tuned.parameters(), lr=0.5)
    tuned.train()
    for _ in range(5):
        opt.zero_grad()
        tuned(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    tuned.eval()
    base.save_pretrained(tmp_path / "base")
    tuned.save_pretrained(tmp_path / "tuned")
    d = ml.directions.interpolation(str(tmp_path / "base" / "model.safetensors"),
                                    str(tmp_path / "tuned" / "model.safetensors"), model=tiny_gpt2())
    s = ml.landscape(tiny_gpt2(seed=9), d, (ids, labels), x=(0.0, 1.0, 3), loss="causal_lm", progress="none")
    ends = [by_hand(m, ids, labels, 512)["loss"] for m in (base, tuned)]
    np.testing.assert_allclose(s.metrics["data_loss"][[0, 2]], ends, rtol=1e-5)
    assert ends[1] < ends[0]


def test_lora_directions_move_only_the_adapter():
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(tiny_gpt2(), peft.LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"],
                                                             lora_dropout=0.0))
    with torch.no_grad():  # a trained adapter: B away from its zero initialisation
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(2))
    model.eval()
    ids, labels = token_data()
    d = ml.directions.random(model, dims=2, seed=0, include=["lora_"])
    layout = d.layout
    for name, vector in zip(layout.names, layout.views(d.vectors[0])):
        assert bool(vector.abs().sum() > 0) == ("lora_" in name), name
    s = ml.landscape(model, d, (ids, labels), x=(-0.5, 0.5, 3), y=(-0.5, 0.5, 3), loss="causal_lm",
                     progress="none")
    want = by_hand(model, ids, labels, 512)
    assert s.metrics["data_loss"][1, 1] == pytest.approx(want["loss"], rel=1e-6)
    assert np.ptp(s.metrics["data_loss"]) > 1e-4


def test_hessian_vector_products_of_a_causal_lm_are_token_weighted():
    """Curvature of a token loss: H·v over batches of unequal token counts equals the HVP of the split's
    token-weighted mean cross-entropy, computed over all tokens at once."""
    from torch.func import functional_call

    from mpiland.curvature.operator import HessianOperator
    from mpiland.lossfns import BUILTIN_LOSSES

    model = tiny_gpt2()
    layout = ParamLayout.from_model(model)
    ids, labels = token_data()
    batches = [(ids[i:i + 4], labels[i:i + 4]) for i in range(0, len(ids), 4)]
    op = HessianOperator(model, layout, batches, BUILTIN_LOSSES["causal_lm"])
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    v = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0))

    def mean_loss(t: torch.Tensor) -> torch.Tensor:
        params = dict(zip(layout.names, layout.views(t)))
        logits = functional_call(model, params, (ids,)).logits
        return F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)

    _, want = torch.autograd.functional.hvp(mean_loss, theta, v)
    got = op.matvec(theta, v)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    loss, _ = op.loss_and_grad(theta)
    assert loss == pytest.approx(float(mean_loss(theta)), rel=1e-6)
