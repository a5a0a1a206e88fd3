import pytest
import torch
from torch import nn

from mpiland.directions import random_directions
from mpiland.layout import ParamLayout, flat_parameters
from mpiland.errors import JobFileError
from mpiland.spec import DirectionsSpec


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 5))


def per_param(model, vec):
    return dict(zip(ParamLayout.from_model(model).names, ParamLayout.from_model(model).views(vec)))


def test_filter_norms_equal_theta_filter_norms_and_biasbn_zero():
    m = model()
    d = random_directions(m, DirectionsSpec(norm="filter", ignore="biasbn"), 2)
    for vec in d.vectors:
        parts = per_param(m, vec)
        for name, p in m.named_parameters():
            if p.dim() <= 1:
                assert torch.count_nonzero(parts[name]) == 0, name
            else:
                got = parts[name].reshape(p.shape[0], -1).double().norm(dim=1)
                want = p.detach().reshape(p.shape[0], -1).double().norm(dim=1)
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_filter_without_ignore_treats_1d_tensors_as_one_filter():
    m = model()
    d = random_directions(m, DirectionsSpec(norm="filter", ignore="none"), 1)
    parts = per_param(m, d.vectors[0])
    for name, p in m.named_parameters():
        if p.dim() == 1:
            assert parts[name].double().norm().item() == pytest.approx(p.detach().double().norm().item(), rel=1e-5)


def test_layer_norm_per_tensor():
    m = model()
    d = random_directions(m, DirectionsSpec(norm="layer", ignore="none"), 1)
    parts = per_param(m, d.vectors[0])
    for name, p in m.named_parameters():
        assert parts[name].double().norm().item() == pytest.approx(p.detach().double().norm().item(), rel=1e-5)


def test_weight_norm_is_elementwise_abs_theta():
    m = model()
    spec = DirectionsSpec(norm="weight", ignore="none", seed=7)
    raw = random_directions(m, DirectionsSpec(norm="none", ignore="none", seed=7), 1).vectors[0]
    got = random_directions(m, spec, 1).vectors[0]
    torch.testing.assert_close(got, (raw.double() * flat_parameters(m).abs()).float())


def test_model_norm_whole_vector():
    m = model()
    d = random_directions(m, DirectionsSpec(norm="model", ignore="biasbn"), 1).vectors[0].double()
    theta = torch.cat([p.detach().reshape(-1).double() for p in m.parameters() if p.dim() > 1])
    assert d.norm().item() == pytest.approx(theta.norm().item(), rel=1e-5)


def test_none_is_raw_gaussian_and_seeded():
    m = model()
    a = random_directions(m, DirectionsSpec(norm="none", ignore="none", seed=5), 2).vectors
    b = random_directions(m, DirectionsSpec(norm="none", ignore="none", seed=5), 2).vectors
    c = random_directions(m, DirectionsSpec(norm="none", ignore="none", seed=6), 2).vectors
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(5)
    torch.testing.assert_close(a[0], torch.randn(a.shape[1], generator=gen))


def test_1d_direction_is_the_2d_x_direction():
    m = model()
    one = random_directions(m, DirectionsSpec(seed=9), 1).vectors
    two = random_directions(m, DirectionsSpec(seed=9), 2).vectors
    assert torch.equal(one[0], two[0])


def test_include_exclude():
    m = model()
    d = random_directions(m, DirectionsSpec(norm="layer", ignore="none", include=[r"^4\."], exclude=[r"bias$"]), 1)
    parts = per_param(m, d.vectors[0])
    for name, v in parts.items():
        assert (torch.count_nonzero(v) > 0) == (name == "4.weight"), name
    with pytest.raises(JobFileError, match="leave no parameter"):
        random_directions(m, DirectionsSpec(include=["nomatch"]), 1)


def test_orthogonalize():
    m = model()
    plain = random_directions(m, DirectionsSpec(seed=2), 2).vectors.double()
    ortho = random_directions(m, DirectionsSpec(seed=2, orthogonalize=True), 2).vectors.double()
    assert abs((ortho[0] @ ortho[1]).item()) < 1e-6 * ortho[0].norm().item() * ortho[1].norm().item()
    assert ortho[1].norm().item() == pytest.approx(plain[1].norm().item(), rel=1e-6)
    assert torch.equal(ortho[0], plain[0])
