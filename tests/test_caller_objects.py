"""The caller's objects are never changed: a model handed to the engine, and the global RNG state."""

import numpy as np
import torch

from mpiland.data import Split, digits_split
from mpiland.demo import digits_cnn
from mpiland.directions import random_directions
from mpiland.engine import Evaluator
from mpiland.models import build_model
from mpiland.spec import DirectionsSpec, LossSpec, ModelSpec


def test_evaluator_leaves_the_callers_model_as_it_was():
    x, y = digits_split("test")
    torch.manual_seed(0)
    model = digits_cnn(channels=4, hidden=8)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    d = random_directions(model, DirectionsSpec(seed=1, states=True), 2)
    ev = Evaluator(model, d, [Split("test", x, y)], LossSpec(), torch.device("cpu"), batch_size=100,
                   dtype=torch.float64)
    ev.evaluate_points(np.array([[0.5, -0.5], [1.0, 1.0]]))
    assert model.training
    assert [p.untyped_storage().data_ptr() for p in model.parameters()] == storages
    for k, v in model.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    assert all(p.requires_grad for p in model.parameters())


def test_build_model_leaves_the_global_rng_state_alone():
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_model(ModelSpec(factory="mpiland.demo:digits_mlp", seed=7))
    assert torch.equal(torch.get_rng_state(), before)
    b = build_model(ModelSpec(factory="mpiland.demo:digits_mlp", seed=7))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
