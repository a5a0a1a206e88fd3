"""Losses and metrics: batch means weighted by batch size, binary accuracy, sums independent of threads."""

import numpy as np
import pytest
import torch
from torch import nn

from mpiland.curvature import HessianOperator, hessian_batches
from mpiland.data import Split, digits_split
from mpiland.demo import digits_mlp
from mpiland.directions import random_directions
from mpiland.engine import Evaluator, resolve_loss
from mpiland.layout import ParamLayout, flat_parameters
from mpiland.spec import DirectionsSpec, HessianSpec, LossSpec

ORIGIN = np.zeros((1, 2))


@pytest.fixture(scope="module")
def test_split():
    x, y = digits_split("test")
    return Split("test", x, y)


def _evaluate(model, split, loss, batch_size, **kw):
    d = random_directions(model, DirectionsSpec(seed=2), 2)
    ev = Evaluator(model, d, [split], loss, torch.device("cpu"), batch_size=batch_size, **kw)
    return ev.evaluate_points(ORIGIN)[0]


def test_a_batch_mean_loss_is_weighted_by_batch_size_and_agrees_with_the_hessian(test_split):
    """359 samples in batches of 100: the last batch has 59, so an unweighted mean of batch means is wrong."""
    torch.manual_seed(0)
    model = digits_mlp(hidden=16)
    per_sample = _evaluate(model, test_split, LossSpec(), 100)["test_loss"][0]
    batch_mean = _evaluate(model, test_split, LossSpec(name="tests/losses.py:batch_mean_ce"), 100)["test_loss"][0]
    assert batch_mean == pytest.approx(per_sample, rel=1e-6)  # a float32 batch mean vs float64 sums
    spec = HessianSpec(splits=("test",))
    loss_fn = resolve_loss(LossSpec(name="tests/losses.py:batch_mean_ce"))
    op = HessianOperator(model, ParamLayout.from_model(model),
                         hessian_batches(test_split.inputs, test_split.targets, spec, 100, torch.device("cpu"),
                                         torch.float32), loss_fn)
    curvature_loss, _ = op.loss_and_grad(flat_parameters(model, torch.float32))
    assert batch_mean == pytest.approx(curvature_loss, rel=1e-6)


def test_batch_mean_standard_error_is_that_of_the_weighted_mean(test_split):
    torch.manual_seed(0)
    model = digits_mlp(hidden=16)
    got = _evaluate(model, test_split, LossSpec(name="tests/losses.py:batch_mean_ce"), 100)["test_loss_stderr"][0]
    with torch.no_grad():
        model.eval()
        means, sizes = [], []
        for start in range(0, len(test_split), 100):
            x, y = test_split.inputs[start: start + 100], test_split.targets[start: start + 100]
            means.append(nn.functional.cross_entropy(model(x), y).double().item())
            sizes.append(len(y))
    m, w = np.array(means), np.array(sizes, dtype=np.float64)
    mean = (w * m).sum() / w.sum()
    n = len(m)
    expected = np.sqrt(n / (n - 1) * ((w * (m - mean)) ** 2).sum() / w.sum() ** 2)
    assert got == pytest.approx(expected, rel=1e-9)


class OneLogit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def test_accuracy_of_a_single_logit_model_is_logit_above_zero(test_split):
    torch.manual_seed(1)
    model = OneLogit()
    labels = (test_split.targets >= 5).long()
    split = Split("test", test_split.inputs, labels)
    got = _evaluate(model, split, LossSpec(name="tests/losses.py:binary_logits"), 64)["test_acc"][0]
    with torch.no_grad():
        expected = ((model(split.inputs)[:, 0] > 0).long() == labels).double().mean().item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got < 1.0


def test_sums_do_not_depend_on_the_thread_count():
    """One batch of 100,000 samples: torch splits such a sum between threads; mpiland's order is fixed."""
    gen = torch.Generator().manual_seed(0)
    split = Split("test", torch.randn(100_000, 64, generator=gen), torch.randint(0, 10, (100_000,), generator=gen))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 10))
    before = torch.get_num_threads()
    try:
        values = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            values.append(_evaluate(model, split, LossSpec(), 200_000, memory_budget_mb=4096))
    finally:
        torch.set_num_threads(before)
    for name in values[0]:
        np.testing.assert_array_equal(values[0][name], values[1][name], err_msg=name)
