"""bf16 weights (``model.dtype = "bfloat16"``): θ* and the directions stay float32, each point is computed in
float32 and then rounded into the model, so a bf16 point is the float32 point rounded to bf16, bit for bit."""

import copy

import numpy as np
import pytest
import torch

from mpiland.data import Split, digits_split
from mpiland.demo import digits_cnn, digits_mlp
from mpiland.directions import random_directions
from mpiland.engine import Evaluator
from mpiland.errors import JobFileError
from mpiland.jobfile import job_from_table
from mpiland.spec import DirectionsSpec, LossSpec


@pytest.fixture(scope="module")
def split():
    x, y = digits_split("test")
    return Split("test", x[:120], y[:120])


def _model(kind):
    torch.manual_seed(3)
    model = digits_cnn() if kind == "cnn" else digits_mlp()
    model.eval()
    if kind == "cnn":
        with torch.no_grad():  # BatchNorm statistics away from 0/1, so their rounding to bf16 shows
            model[1].running_mean.uniform_(-0.2, 0.2)
            model[1].running_var.uniform_(0.5, 2.0)
    return model


def _pair(kind, split, **kw):
    model = _model(kind)
    d = random_directions(model, DirectionsSpec(norm="filter", seed=1), 2)
    make = lambda dtype: Evaluator(copy.deepcopy(model), d, [split], LossSpec(), torch.device("cpu"),  # noqa: E731
                                   dtype=dtype, batch_size=64, **kw)
    return make(torch.float32), make(torch.bfloat16)


def _bits(t):
    return t.detach().contiguous().view(torch.int16)


COEFFICIENTS = np.array([[0.0, 0.0], [0.3, -0.7], [1e-3, 2e-4], [-1.5, 0.9]])


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_bf16_point_is_the_float32_point_rounded(kind, split):
    full, half = _pair(kind, split)
    assert half.params.theta0.dtype == torch.float32 and half.params.vectors.dtype == torch.float32
    assert torch.equal(half.params.theta0, full.params.theta0)  # θ* is not rounded before the directions apply
    assert all(p.dtype == torch.bfloat16 for p in half.model.parameters())
    assert all(b.dtype == torch.bfloat16 for b in half.model.buffers() if b.is_floating_point())
    for c in COEFFICIENTS:
        full.set_point(c)
        half.set_point(c)
        assert half.params.master is not None and torch.equal(half.params.master, full.flat)
        for (name, p), q in zip(half.model.named_parameters(), full.model.parameters()):
            assert torch.equal(_bits(p), _bits(q.to(torch.bfloat16))), name
    half.reset()
    assert torch.equal(_bits(half.flat), _bits(full.params.theta0.to(torch.bfloat16)))


def test_bf16_rows_are_the_float32_rows_rounded(split):
    full, half = _pair("cnn", split)
    for ev in (full, half):
        ev.params.reserve(4)
        ev.params.set_rows(COEFFICIENTS)
    assert half.params.rows is not None and full.params.rows is not None
    assert half.params.rows.dtype == torch.bfloat16
    assert torch.equal(_bits(half.params.rows), _bits(full.params.rows.to(torch.bfloat16)))


def test_bf16_small_steps_move_the_point_before_rounding(split):
    # A step below bf16's resolution at θ* still changes the float32 point; rounding θ* first would lose
    # every such step that does not cross a bf16 value (the point would then be θ* rounded, exactly).
    full, half = _pair("cnn", split)
    half.set_point([1e-4, 0.0])
    assert half.params.master is not None
    assert not torch.equal(half.params.master, half.params.theta0)
    full.set_point([1e-4, 0.0])
    assert torch.equal(_bits(half.flat), _bits(full.flat.to(torch.bfloat16)))


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_bf16_values_are_close_to_float32(kind, split):
    full, half = _pair(kind, split)
    coords = np.array([[0.0, 0.0], [0.2, -0.1], [0.5, 0.5]])
    a, _ = full.evaluate_points(coords)
    b, _ = half.evaluate_points(coords)
    assert np.all(np.isfinite(b["test_loss"]))
    np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=3e-2)
    assert np.max(np.abs(b["test_acc"] - a["test_acc"])) <= 0.05
    assert not np.array_equal(b["test_loss"], a["test_loss"])  # the weights really were bf16


def _table(**model):
    return {"model": {"factory": "mpiland.demo:digits_mlp", **model}, "data": {"dataset": "digits"},
            "grid": {"x": [-1, 1, 3]}, "output": {"path": "s.h5"}}


def test_jobfile_takes_bfloat16_weights_but_not_a_bf16_hessian():
    assert job_from_table(_table(dtype="bfloat16")).model.dtype == "bfloat16"
    table = _table()
    table["hessian"] = {"dtype": "bfloat16"}
    with pytest.raises(JobFileError, match="hessian.dtype"):
        job_from_table(table)
    table = _table(dtype="bfloat16")
    table["hessian"] = {"enabled": True}
    with pytest.raises(JobFileError, match="model.dtype"):
        job_from_table(table)
