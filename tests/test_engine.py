import copy

import numpy as np
import pytest
import torch
from torch import nn

from mpiland.data import Split, digits_split
from mpiland.demo import digits_cnn, digits_mlp
from mpiland.directions import random_directions
from mpiland.layout import ParamLayout
from mpiland.engine import Evaluator
from mpiland.spec import DirectionsSpec, LossSpec

from util import plain_metrics


@pytest.fixture(scope="module")
def test_split():
    x, y = digits_split("test")
    return Split("test", x[:200], y[:200])


def make(model, split, norm="filter", seed=0, **kw):
    d = random_directions(model, DirectionsSpec(norm=norm, seed=seed), 2)
    return Evaluator(copy.deepcopy(model), d, [split], LossSpec(), torch.device("cpu"), batch_size=64, **kw), d


def test_origin_equals_plain_evaluation(test_split):
    torch.manual_seed(1)
    model = digits_cnn()
    model.eval()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 2.0)
    ev, _ = make(model, test_split)
    values, seconds = ev.evaluate_points(np.zeros((1, 2)))
    loss, acc = plain_metrics(model, test_split.inputs, test_split.targets)
    assert values["test_loss"][0] == pytest.approx(loss, rel=1e-6)
    assert values["test_acc"][0] == pytest.approx(acc)
    assert seconds[0] > 0


def test_random_point_equals_hand_set_weights(test_split):
    torch.manual_seed(2)
    model = digits_cnn()
    ev, d = make(model, test_split)
    a, b = 0.37, -0.81
    values, _ = ev.evaluate_points(np.array([[a, b]]))
    by_hand = copy.deepcopy(model)
    layout = ParamLayout.from_model(by_hand)
    dx, dy = layout.views(d.vectors[0]), layout.views(d.vectors[1])
    with torch.no_grad():
        for p, u, v in zip(by_hand.parameters(), dx, dy):
            p.add_(a * u + b * v)
    loss, acc = plain_metrics(by_hand, test_split.inputs, test_split.targets)
    assert values["test_loss"][0] == pytest.approx(loss, rel=1e-5)
    assert values["test_acc"][0] == pytest.approx(acc)
    ev.reset()
    back, _ = ev.evaluate_points(np.zeros((1, 2)))
    assert back["test_loss"][0] == pytest.approx(plain_metrics(model, test_split.inputs, test_split.targets)[0], rel=1e-6)


def test_stderr_is_the_standard_error_of_per_sample_losses(test_split):
    model = digits_mlp(hidden=16)
    ev, _ = make(model, test_split)
    values, _ = ev.evaluate_points(np.array([[0.2, 0.1]]))
    ev.set_point([0.2, 0.1])
    with torch.no_grad():
        per = nn.functional.cross_entropy(ev.model(test_split.inputs), test_split.targets, reduction="none").double()
    assert values["test_loss_stderr"][0] == pytest.approx((per.std() / len(per) ** 0.5).item(), rel=1e-6)


def _surface(model, split, norm):
    ev, _ = make(model, split, norm=norm, seed=4)
    xs = np.linspace(-1, 1, 5)
    coords = np.array([[a, b] for a in xs for b in xs])
    return ev.evaluate_points(coords)[0]["test_loss"]


def test_filter_normalisation_is_scale_invariant(test_split):
    torch.manual_seed(3)
    model = digits_mlp(hidden=32, depth=2)
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        scaled[1].weight.mul_(10.0)
        scaled[1].bias.mul_(10.0)
        scaled[3].weight.div_(10.0)
    base = plain_metrics(model, test_split.inputs, test_split.targets)[0]
    assert plain_metrics(scaled, test_split.inputs, test_split.targets)[0] == pytest.approx(base, rel=1e-5)
    np.testing.assert_allclose(_surface(scaled, test_split, "filter"), _surface(model, test_split, "filter"), rtol=1e-4)
    none_a, none_b = _surface(model, test_split, "none"), _surface(scaled, test_split, "none")
    assert np.max(np.abs(none_a - none_b)) > 0.1 * np.max(np.abs(none_a))


def test_divergent_points_are_stored_not_raised(test_split):
    model = digits_mlp(hidden=16)
    ev, _ = make(model, test_split, norm="none")
    values, _ = ev.evaluate_points(np.array([[1e30, 1e30], [0.0, 0.0]]))
    assert not np.isfinite(values["test_loss"][0])
    assert np.isfinite(values["test_loss"][1])


def test_streamed_equals_resident(test_split):
    model = digits_cnn()
    resident, _ = make(model, test_split)
    streamed, _ = make(model, test_split, memory_budget_mb=1e-4)
    assert resident.resident and not streamed.resident
    pts = np.array([[0.1, 0.2], [-0.5, 0.3]])
    a, _ = resident.evaluate_points(pts)
    b, _ = streamed.evaluate_points(pts)
    for m in a:
        np.testing.assert_array_equal(a[m], b[m])


def test_update_is_one_flat_buffer_shared_by_the_model(test_split):
    model = digits_cnn()
    ev, _ = make(model, test_split)
    storage = ev.flat.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == storage for p in ev.model.parameters())


def test_train_mode_restores_batchnorm_buffers(test_split):
    model = digits_cnn()
    ev, _ = make(model, test_split, mode="train")
    before = ev.model[1].running_mean.clone()
    first, _ = ev.evaluate_points(np.array([[0.3, 0.3]]))
    assert torch.equal(ev.model[1].running_mean, before)
    again, _ = ev.evaluate_points(np.array([[0.3, 0.3]]))
    assert first["test_loss"][0] == again["test_loss"][0]


def test_float64_model(test_split):
    model = digits_mlp(hidden=16)
    d = random_directions(model, DirectionsSpec(), 2)
    ev = Evaluator(copy.deepcopy(model), d, [test_split], LossSpec(), torch.device("cpu"), dtype=torch.float64)
    values, _ = ev.evaluate_points(np.zeros((1, 2)))
    ref = plain_metrics(copy.deepcopy(model).double(), test_split.inputs.double(), test_split.targets)[0]
    assert values["test_loss"][0] == pytest.approx(ref, rel=1e-12)


def test_batched_points_equal_one_at_a_time(test_split):
    from mpiland.engine import EngineOptions

    model = digits_cnn()
    d = random_directions(model, DirectionsSpec(seed=8), 2)
    coords = np.array([[a, b] for a in np.linspace(-1, 1, 4) for b in np.linspace(-0.5, 0.5, 3)])
    results = {}
    for k in (1, 5):
        ev = Evaluator(copy.deepcopy(model), d, [test_split], LossSpec(), torch.device("cpu"), batch_size=64,
                       options=EngineOptions(points_per_pass=k))
        assert ev.points_per_pass == k
        results[k] = ev.evaluate_points(coords)[0]
    for m in results[1]:
        np.testing.assert_allclose(results[5][m], results[1][m], rtol=1e-5, atol=1e-7, err_msg=m)


def test_batched_user_loss(test_split):
    from mpiland.engine import EngineOptions

    model = digits_mlp(hidden=16)
    d = random_directions(model, DirectionsSpec(), 2)
    out = {}
    for k in (1, 3):
        ev = Evaluator(copy.deepcopy(model), d, [test_split], LossSpec(name="tests/losses.py:batch_mean_ce"),
                       torch.device("cpu"), batch_size=64, options=EngineOptions(points_per_pass=k))
        out[k] = ev.evaluate_points(np.array([[0.1, 0.0], [0.0, 0.3], [0.2, 0.2]]))[0]
    np.testing.assert_allclose(out[3]["test_loss"], out[1]["test_loss"], rtol=1e-5)
    assert np.all(np.isfinite(out[3]["test_loss_stderr"]))  # per batch: 200 samples / 64 = 4 units


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = digits_mlp(hidden=8)

    def forward(self, x):
        out = self.net(x)
        return out if out.sum().item() > -1e9 else -out


def test_models_vmap_cannot_run_fall_back_with_a_reason(test_split):
    from mpiland.engine import EngineOptions

    model = DataDependent()
    d = random_directions(model, DirectionsSpec(), 2)
    ev = Evaluator(model, d, [test_split], LossSpec(), torch.device("cpu"), options=EngineOptions(points_per_pass=8))
    assert ev.points_per_pass == 1 and "vmap cannot run this model" in ev.fallback_reason
    train = Evaluator(digits_cnn(), random_directions(digits_cnn(), DirectionsSpec(), 1), [test_split], LossSpec(),
                      torch.device("cpu"), mode="train", options=EngineOptions(points_per_pass=8))
    assert train.points_per_pass == 1 and "train" in train.fallback_reason


def test_auto_points_per_pass_is_deterministic_and_bounded(test_split):
    from mpiland.engine import MAX_POINTS_PER_PASS, EngineOptions

    model = digits_mlp(hidden=16)
    d = random_directions(model, DirectionsSpec(), 2)
    ev = Evaluator(model, d, [test_split], LossSpec(), torch.device("cpu"), options=EngineOptions())
    assert 1 < ev.max_points_per_pass() <= MAX_POINTS_PER_PASS
    cnn = digits_cnn()
    conv = Evaluator(cnn, random_directions(cnn, DirectionsSpec(), 2), [test_split], LossSpec(), torch.device("cpu"),
                     options=EngineOptions())
    assert conv.plan is None and conv.points_per_pass == 1  # under vmap, K is never a timing-dependent choice
    tiny = Evaluator(digits_mlp(hidden=16), d, [test_split], LossSpec(), torch.device("cpu"),
                     options=EngineOptions(batch_memory_mb=1e-3))
    assert tiny.max_points_per_pass() == 1
@pytest.mark.parametrize("options, rtol", [({"autocast": "bf16"}, 3e-2), ({"channels_last": True}, 1e-5),
                                           ({"compile": True, "points_per_pass": 1}, 1e-5)])
def test_precision_layout_and_compile_options(test_split, options, rtol):
    from mpiland.engine import EngineOptions

    model = digits_cnn()
    d = random_directions(model, DirectionsSpec(seed=4), 2)
    pts = np.array([[0.0, 0.0], [0.3, -0.2]])
    ref = Evaluator(copy.deepcopy(model), d, [test_split], LossSpec(), torch.device("cpu"),
                    options=EngineOptions(points_per_pass=1)).evaluate_points(pts)[0]
    got = Evaluator(copy.deepcopy(model), d, [test_split], LossSpec(), torch.device("cpu"),
                    options=EngineOptions(**options)).evaluate_points(pts)[0]
    np.testing.assert_allclose(got["test_loss"], ref["test_loss"], rtol=rtol)
