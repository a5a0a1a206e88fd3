"""The Linear-chain plan (batched products, precomputed first layer) and the fused cross-entropy epilogue."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mpiland.data import Split, Stream, digits_split
from mpiland.demo import digits_cnn, digits_mlp
from mpiland.directions import random_directions
from mpiland.engine import Evaluator, EngineOptions
from mpiland.engine.batching import MEASURED_SIZES
from mpiland.engine.losses import LossSums, cross_entropy_terms, resolve_loss
from mpiland.engine.plan import ChainPlan
from mpiland.layout import ParamLayout
from mpiland.spec import DirectionsSpec, LossSpec

from util import plain_metrics

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split():
    x, y = digits_split("test")
    return Split("test", x[:300], y[:300])


def evaluator(model, split, k, dims=2, **kw):
    d = random_directions(model, DirectionsSpec(seed=3), dims)
    return Evaluator(copy.deepcopy(model), d, [split], LossSpec(), CPU, batch_size=128,
                     options=EngineOptions(points_per_pass=k), **kw)


def test_plan_is_built_only_for_plain_linear_chains():
    mlp = digits_mlp(hidden=16).eval()
    assert ChainPlan.build(mlp, ParamLayout.from_model(mlp)) is not None
    gelu = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(64, 8), nn.GELU(), nn.Dropout(0.5)), nn.Linear(8, 10))
    assert ChainPlan.build(gelu.eval(), ParamLayout.from_model(gelu)) is not None
    cnn = digits_cnn().eval()
    assert ChainPlan.build(cnn, ParamLayout.from_model(cnn)) is None
    layernorm = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.LayerNorm(8), nn.Linear(8, 10)).eval()
    assert ChainPlan.build(layernorm, ParamLayout.from_model(layernorm)) is None
    late_flatten = nn.Sequential(nn.Linear(64, 8), nn.Flatten(), nn.Linear(8, 10)).eval()
    assert ChainPlan.build(late_flatten, ParamLayout.from_model(late_flatten)) is None
    assert ChainPlan.build(digits_mlp(hidden=16).train(), ParamLayout.from_model(mlp)) is None
    hooked = digits_mlp(hidden=16).eval()
    hooked[1].register_forward_hook(lambda m, i, o: o * 2)
    assert ChainPlan.build(hooked, ParamLayout.from_model(hooked)) is None


@pytest.mark.parametrize("model", [digits_mlp(hidden=16, depth=3),
                                   nn.Sequential(nn.Flatten(), nn.Linear(64, 12, bias=False), nn.Tanh(),
                                                 nn.Linear(12, 10), nn.Sigmoid()),
                                   nn.Sequential(nn.Flatten(), nn.Linear(64, 10))])
def test_plan_values_equal_the_model_run_point_by_point(split, model):
    torch.manual_seed(0)
    model = model.eval()
    points = np.array([[0.0, 0.0], [0.4, -0.3], [-1.0, 2.0]])
    ev = evaluator(model, split, 4)
    assert ev.plan is not None and ev.plan.cache  # the first layer is precomputed for the resident batches
    got = ev.evaluate_points(points)[0]
    d = ev.directions
    for i, (a, b) in enumerate(points):
        m = copy.deepcopy(model)
        theta = torch.nn.utils.parameters_to_vector(model.parameters()) + a * d.vectors[0] + b * d.vectors[1]
        torch.nn.utils.vector_to_parameters(theta, m.parameters())
        loss, acc = plain_metrics(m, split.inputs, split.targets)
        assert got["test_loss"][i] == pytest.approx(loss, rel=1e-5)
        assert got["test_acc"][i] == pytest.approx(acc, abs=1e-12)


def test_values_do_not_depend_on_points_per_pass(split):
    """K is measured on a CPU for a plan, so at one thread it must not change a single bit of any value (with
    more threads the GEMM library may split products of other shapes differently: docs in engine/plan.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _values_do_not_depend_on_points_per_pass(split)
    finally:
        torch.set_num_threads(threads)


def _values_do_not_depend_on_points_per_pass(split):
    model = digits_mlp(hidden=16).eval()
    coords = np.random.default_rng(5).uniform(-2, 2, size=(37, 2))
    runs = [evaluator(model, split, k).evaluate_points(coords)[0] for k in (1, 3, 16)]
    assert runs[0].keys() == runs[1].keys() == runs[2].keys()
    for other in runs[1:]:
        for m, v in runs[0].items():
            assert np.array_equal(v, other[m], equal_nan=True), m
    # passes grouped as a run's chunks group them, and a call stopped part-way, give the same bits too
    ev = evaluator(model, split, 3)
    groups = [slice(0, 2), slice(2, 5), slice(5, 8), slice(8, 37)]
    calls = iter([False, False, True])
    part, seconds = ev.evaluate_points(coords, groups[:3], lambda: next(calls))
    assert len(seconds) == 5 and np.all(seconds > 0)
    assert np.array_equal(part["test_loss"], runs[0]["test_loss"][:5])


def test_automatic_points_per_pass_is_measured_for_a_plan(split):
    ev = evaluator(digits_mlp(hidden=16).eval(), split, 0)
    assert ev.plan is not None and ev.points_per_pass in MEASURED_SIZES
    assert ev.points_per_pass <= ev.max_points_per_pass()


def test_streamed_batches_and_a_small_budget_take_the_plain_first_layer(split):
    model = digits_mlp(hidden=16).eval()
    coords = np.array([[0.3, 0.7], [-0.5, 0.1]])
    ref = evaluator(model, split, 2).evaluate_points(coords)[0]
    small = evaluator(model, split, 2, memory_budget_mb=split.nbytes / 2**20 + 1e-3)
    assert small.plan is not None and not small.plan.cache
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.inputs, split.targets), batch_size=128)
    d = random_directions(model, DirectionsSpec(seed=3), 2)
    streamed = Evaluator(copy.deepcopy(model), d, [Stream("test", loader)], LossSpec(), CPU, memory_budget_mb=0.0,
                         options=EngineOptions(points_per_pass=2))
    assert streamed.plan is not None and not streamed.plan.cache and not streamed.resident
    for ev in (small, streamed):  # the same operations wherever the data lives: the same bits
        got = ev.evaluate_points(coords)[0]
        for m, v in ref.items():
            assert np.array_equal(got[m], v), m


@pytest.mark.parametrize("layout", ["samples-major", "classes-major"])
def test_fused_cross_entropy_matches_torch_far_from_the_minimum(layout):
    """Both layouts the epilogue gets: (k, batch, C) contiguous (a module's outputs) and the (k, C, batch)
    tensor a plan returns as a transposed view."""
    torch.manual_seed(0)
    out = torch.randn(3, 50, 7, dtype=torch.float64) * torch.tensor([1.0, 100.0, 1e4]).view(3, 1, 1).double()
    if layout == "classes-major":
        out = out.transpose(1, 2).contiguous().transpose(1, 2)
    out[0, :5] = 0.0  # ties: argmax takes the first maximal index
    out[0, 5, 3] = out[0, 5, 5] = 1e3
    y = torch.randint(0, 7, (50,))
    y[:5] = torch.tensor([0, 1, 6, 0, 3])
    y[5] = 3
    losses, correct = cross_entropy_terms(out, y)
    for i in range(3):
        ref = F.cross_entropy(out[i], y, reduction="none")
        torch.testing.assert_close(losses[i], ref, rtol=1e-12, atol=1e-12)
        assert torch.equal(correct[i], out[i].argmax(dim=-1) == y)
    # a diverged point: NaN and infinite logits are predicted as argmax predicts them
    odd = torch.tensor([[[1.0, float("nan"), 3.0, float("nan")], [float("inf"), float("inf"), 0, 0],
                         [float("-inf")] * 4, [0.0, 2.0, 2.0, 1.0]]])
    if layout == "classes-major":
        odd = odd.transpose(1, 2).contiguous().transpose(1, 2)
    for label in range(4):
        targets = torch.full((4,), label)
        losses, correct = cross_entropy_terms(odd, targets)
        assert torch.equal(correct[0], odd[0].argmax(dim=-1) == targets)
        torch.testing.assert_close(losses[0], F.cross_entropy(odd[0], targets, reduction="none"), equal_nan=True)


def test_fused_cross_entropy_rows_do_not_depend_on_the_other_rows():
    """A point's losses and predictions are the same bits alone and among 16 others, in float32, for a
    batch whose length is no multiple of a vector's width; and equal torch's loss and argmax."""
    torch.manual_seed(1)
    logits = (torch.randn(16, 10, 77) * 30).transpose(1, 2)  # the plan's layout
    logits[3, :4] = 0.0  # ties
    y = torch.randint(0, 10, (77,))
    losses, correct = cross_entropy_terms(logits, y)
    for i in (0, 3, 15):
        alone = cross_entropy_terms(logits[i: i + 1], y)
        assert torch.equal(alone[0][0], losses[i]) and torch.equal(alone[1][0], correct[i])
        torch.testing.assert_close(losses[i], F.cross_entropy(logits[i], y, reduction="none"), rtol=1e-6, atol=1e-5)
        assert torch.equal(correct[i], logits[i].argmax(dim=-1) == y)


def test_fused_sums_equal_the_plain_loss_sums():
    """The fused epilogue's float64 sums (loss, its square, correct predictions) against the same sums of
    torch's own cross-entropy and argmax over two batches."""
    torch.manual_seed(2)
    fused = LossSums(resolve_loss(LossSpec()), True, True, 5, CPU, fused=True)
    plain = LossSums(resolve_loss(LossSpec()), True, True, 5, CPU)
    for n in (40, 13):
        out, y = torch.randn(5, n, 10) * 4, torch.randint(0, 10, (n,))
        fused.add(out, y)
        plain.add(out, y)
    a, b = fused.result(), plain.result()
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    assert torch.equal(a[:, 6], b[:, 6]) and torch.equal(a[:, 7:], b[:, 7:])


def test_a_plan_writes_only_the_columns_its_later_layers_read(split):
    """The first layer's parameters come from the precomputed products: the rows before the second layer's
    are never written per point and hold the origin's."""
    model = digits_mlp(hidden=16).eval()
    ev = evaluator(model, split, 4)
    start = ev.layout.offsets[2]  # the second Linear's weight
    assert ev.plan.first_column == ev.params.row_start == start
    ev.evaluate_points(np.array([[0.5, -1.0], [2.0, 1.0]]))
    assert torch.equal(ev.params.rows[:, :start], ev.params.theta0[:start].expand(4, -1))
    single = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    assert evaluator(single, split, 1).plan.first_column == ParamLayout.from_model(single).numel


def test_fused_epilogue_only_for_the_builtin_cross_entropy(split):
    model = digits_mlp(hidden=16).eval()
    d = random_directions(model, DirectionsSpec(seed=3), 2)
    assert evaluator(model, split, 1).fused_loss
    for loss in (LossSpec(name="nll"), LossSpec(name="mse")):
        assert not Evaluator(copy.deepcopy(model), d, [split], loss, CPU).fused_loss
    user = Evaluator(copy.deepcopy(model), d, [split], LossSpec(name="x:y"), CPU,
                     loss_fn=lambda o, t: F.cross_entropy(o, t, reduction="none"))
    assert not user.fused_loss
