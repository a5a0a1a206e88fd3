"""The memory model: its estimate matches what the evaluator allocates, and a job that cannot fit is refused."""

import pytest
import torch
from torch import nn

from mpiland.data import Split
from mpiland.directions import make_directions
from mpiland.engine import EngineOptions, Evaluator
from mpiland.engine.memory import available_bytes, check_evaluator_memory, estimate
from mpiland.errors import DeviceMemoryError
from mpiland.spec import DirectionsSpec, LossSpec


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def _split():
    g = torch.Generator().manual_seed(0)
    return Split("test", torch.rand(40, 64, generator=g), torch.randint(0, 10, (40,), generator=g))


@pytest.mark.parametrize("k, dims", [(1, 1), (4, 2), (16, 2)])
def test_estimate_matches_the_evaluators_parameter_buffers(k, dims):
    model = _model()
    directions = make_directions(model, DirectionsSpec(), dims)
    ev = Evaluator(model, directions, [_split()], LossSpec(), torch.device("cpu"),
                   options=EngineOptions(points_per_pass=k))
    n = sum(p.numel() for p in model.parameters())
    est = estimate(n, 4, dims, points_per_pass=k, chain=ev.plan is not None)
    held = {"weights": ev.params.flat, "origin": ev.params.theta0, "directions": ev.params.vectors}
    for part, tensor in held.items():
        assert tensor.nelement() * tensor.element_size() == est.parts[part], part
    rows = ev.params.rows
    assert (0 if rows is None else rows.nelement() * rows.element_size()) == est.parts.get("points per pass", 0)


def test_a_job_that_cannot_fit_is_refused_in_one_sentence_naming_the_fix():
    model = _model()
    directions = make_directions(model, DirectionsSpec(), 2)
    kw = dict(dtype=torch.float32, points_per_pass=16, batch_memory_mb=512.0, memory_budget_mb=1024.0)
    need = check_evaluator_memory(model, directions, [_split()], device=torch.device("cpu"),
                                  available=10**9, **kw).total
    with pytest.raises(DeviceMemoryError) as err:
        check_evaluator_memory(model, directions, [_split()], device=torch.device("cpu"), available=need - 1, **kw)
    line = str(err.value)
    assert "\n" not in line and f"needs about {need / 2**20:.0f} MiB of host memory" in line
    assert "fewer points per pass (run.points_per_pass)" in line and "a node with more memory" in line
    with pytest.raises(DeviceMemoryError, match="a GPU with more memory"):
        check_evaluator_memory(model, directions, [_split()], device=torch.device("cuda"), available=need - 1, **kw)


def test_ranks_sharing_a_device_are_counted_together():
    model = _model()
    directions = make_directions(model, DirectionsSpec(), 2)
    kw = dict(dtype=torch.float32, points_per_pass=4, batch_memory_mb=64.0, memory_budget_mb=1024.0)
    need = check_evaluator_memory(model, directions, [_split()], device=torch.device("cpu"),
                                  available=10**9, **kw).total
    check_evaluator_memory(model, directions, [_split()], device=torch.device("cpu"), available=4 * need,
                           sharing=4, **kw)
    with pytest.raises(DeviceMemoryError, match="4 ranks share it.*fewer ranks per node"):
        check_evaluator_memory(model, directions, [_split()], device=torch.device("cpu"), available=4 * need - 1,
                               sharing=4, **kw)


def test_available_host_memory_is_read_from_meminfo(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:       16000000 kB\nMemAvailable:    1234 kB\n")
    assert available_bytes(torch.device("cpu"), info) == 1234 * 1024
    assert available_bytes(torch.device("cpu"), tmp_path / "none") is None
