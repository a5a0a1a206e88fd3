"""The Python API: ml.landscape and ml.directions on objects a notebook holds, against the job-file path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import mpiland as ml
from mpiland.data import load_split
from mpiland.directions import CurvatureInputs, make_directions
from mpiland.jobfile import load_job
from mpiland.lossfns import BUILTIN_LOSSES
from mpiland.models import build_model
from mpiland.spec import DirectionsSpec, HessianSpec
from tests.util import REPO, cli, write_job

FAST = {"device": "cpu", "progress": "none", "settings": {"run.threads": 1}}


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.array_equal(a, b, equal_nan=True))


def _data(n: int = 50, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


# -- the same surface as mpiland run -------------------------------------------------------------------------


def test_api_and_cli_give_bit_identical_surfaces(tmp_path):
    job_path = write_job(tmp_path)
    assert cli("run", str(job_path)).returncode == 0
    job = load_job(job_path)
    model = build_model(job.model)
    split = load_split(job.data, "test")
    d = ml.directions.random(model, seed=3, norm="filter")
    surf = ml.landscape(model, d, {"test": (split.inputs, split.targets)}, x=(-1.0, 1.0, 5), y=(-1.0, 1.0, 4),
                        batch_size=50, **FAST)
    ref = ml.open(tmp_path / "surface.h5")
    assert set(surf.metrics) == set(ref.metrics)
    for m in ref.metrics:
        assert _same(surf.metrics[m], ref.metrics[m]), m
    assert surf.done.all() and _same(surf.x, ref.x) and _same(surf.y, ref.y)


def test_out_writes_a_resumable_surface_file(tmp_path, caplog):
    x, y = _data()
    model = _mlp()
    d = ml.directions.random(model, seed=1)
    out = tmp_path / "s.h5"
    first = ml.landscape(model, d, (x, y), x=(-1, 1, 3), y=(-1, 1, 3), out=out, **FAST)
    assert first is not None and first.path == out and out.exists()
    with caplog.at_level("INFO", logger="mpiland"):
        again = ml.landscape(model, d, (x, y), x=(-1, 1, 3), y=(-1, 1, 3), out=out, **FAST)
    assert "9 of 9 points already done" in caplog.text
    assert _same(again.metrics["data_loss"], first.metrics["data_loss"])
    other = ml.directions.random(model, seed=2)
    with pytest.raises(ml.SurfaceFileError, match="different job"):
        ml.landscape(model, other, (x, y), x=(-1, 1, 3), y=(-1, 1, 3), out=out, **FAST)


def test_without_out_nothing_is_left_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    x, y = _data()
    model = _mlp()
    surf = ml.landscape(model, ml.directions.random(model, dims=1), (x, y), x=(-1, 1, 4), **FAST)
    assert surf.dims == 1 and surf.done.all() and str(surf.path) == "<memory>"
    assert list(tmp_path.iterdir()) == []


# -- data: loaders, datasets, streams ------------------------------------------------------------------------


def _worker_started(_worker: int) -> None:
    marks = os.environ["MPILAND_TEST_MARKS"]
    Path(marks, f"start-{os.getpid()}-{_worker}").touch()


def test_a_loader_gives_the_tensor_result_with_one_set_of_workers(tmp_path, monkeypatch):
    x, y = _data(50)  # batches of 16: the last holds 2
    model = _mlp()
    d = ml.directions.random(model, seed=0)
    marks = tmp_path / "marks"
    marks.mkdir()
    monkeypatch.setenv("MPILAND_TEST_MARKS", str(marks))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False, num_workers=2,
                        worker_init_fn=_worker_started)
    grid = {"x": (-1, 1, 3), "y": (-1, 1, 3)}
    tensors = ml.landscape(model, d, {"test": (x, y)}, batch_size=16, **grid, **FAST)
    streamed = ml.landscape(model, d, {"test": loader}, **grid, **FAST)
    for m in tensors.metrics:
        assert _same(streamed.metrics[m], tensors.metrics[m]), m
    assert len(list(marks.iterdir())) == 2, "each worker starts once for the whole run, not once per point"


@pytest.mark.parametrize("budget", [1024.0, 1e-6])
def test_resident_and_streamed_loaders_agree_with_a_user_loss(budget):
    """A mean-per-batch loss depends on the batches: the loader's own (a smaller last one included) are kept."""
    x, y = _data(50)
    model = _mlp()
    d = ml.directions.random(model, seed=0)
    loss = BUILTIN_LOSSES["cross_entropy"]

    def batch_mean(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return loss(o, t).mean()

    kw = {"x": (-1, 1, 3), "y": (-1, 1, 3), "loss": batch_mean, **FAST}
    tensors = ml.landscape(model, d, (x, y), batch_size=16, **kw)
    loaded = ml.landscape(model, d, DataLoader(TensorDataset(x, y), batch_size=16), memory_budget_mb=budget, **kw)
    assert _same(loaded.metrics["data_loss"], tensors.metrics["data_loss"])
    assert _same(loaded.metrics["data_loss_stderr"], tensors.metrics["data_loss_stderr"])


class DictSet(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "labels": self.y[i]}


class KeywordMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def test_dict_batches_feed_keyword_inputs():
    x, y = _data(40)
    kw_model = KeywordMLP()
    plain = kw_model.net
    kw = {"x": (-1, 1, 3), "batch_size": 16, **FAST}
    ref = ml.landscape(plain, ml.directions.random(plain, dims=1), (x, y), **kw)
    got = ml.landscape(kw_model, ml.directions.random(kw_model, dims=1), DictSet(x, y), **kw)
    # the plain Sequential runs through the Linear-chain plan, the keyword model as a module: equal to rounding
    np.testing.assert_allclose(got.metrics["data_loss"], ref.metrics["data_loss"], rtol=1e-6)
    assert _same(got.metrics["data_acc"], ref.metrics["data_acc"])


# -- metrics -------------------------------------------------------------------------------------------------


class Correct:
    """A metric object in the torchmetrics style: counts correct predictions."""

    def __init__(self) -> None:
        self.right = 0
        self.seen = 0

    def reset(self) -> None:
        self.right = self.seen = 0

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.right += int((outputs.argmax(-1) == targets).sum())
        self.seen += int(targets.numel())

    def compute(self) -> float:
        return self.right / self.seen


def test_user_metrics_come_from_the_same_pass():
    x, y = _data(50)
    model = _mlp()
    counter = Correct()
    surf = ml.landscape(model, ml.directions.random(model), {"test": (x, y)}, x=(-1, 1, 3), y=(-1, 1, 3),
                        batch_size=16, metrics={"hit": lambda o, t: (o.argmax(-1) == t).float(),
                                                "counted": counter}, **FAST)
    assert _same(surf.metrics["test_hit"], surf.metrics["test_acc"])
    assert np.allclose(surf.metrics["test_counted"], surf.metrics["test_acc"], rtol=0, atol=1e-12)
    assert "test_hit_stderr" in surf.metrics and "test_counted_stderr" not in surf.metrics
    assert counter.seen == 0, "the caller's metric object is never updated"


# -- the caller's objects ------------------------------------------------------------------------------------


def test_the_callers_model_and_random_state_are_unchanged():
    x, y = _data(30)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = ml.directions.random(model, seed=0)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)
    rng, threads = torch.get_rng_state(), torch.get_num_threads()
    ml.landscape(model, d, loader, x=(-1, 1, 2), y=(-1, 1, 2), settings={"run.threads": 1, "model.mode": "train"},
                 device="cpu", progress="none")
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == threads
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# -- directions from Python equal the job-file kinds ---------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpts")
    paths = []
    for i in range(4):
        path = tmp / f"m{i}.pt"
        torch.save(_mlp(seed=10 + i).state_dict(), path)
        paths.append(str(path))
    return paths


def _equal_directions(a, b) -> None:
    assert torch.equal(a.vectors, b.vectors)
    assert (a.origin is None) == (b.origin is None)
    if a.origin is not None:
        assert torch.equal(a.origin, b.origin)
    assert a.labels == b.labels and a.models == b.models and a.coefficient_map == b.coefficient_map
    assert a.variants == b.variants and a.settings == b.settings and a.sources == b.sources


@pytest.mark.parametrize("kind, n, dims, builder", [
    ("interpolation", 2, 1, lambda p, m: ml.directions.interpolation(p[0], p[1], model=m)),
    ("plane", 3, 2, lambda p, m: ml.directions.plane(*p[:3], model=m)),
    ("bilinear", 4, 2, lambda p, m: ml.directions.bilinear(*p, model=m)),
    ("bezier", 3, 1, lambda p, m: ml.directions.bezier(*p[:3], model=m)),
    ("polychain", 4, 1, lambda p, m: ml.directions.polychain(*p, model=m)),
    ("pca", 4, 2, lambda p, m: ml.directions.pca(p, model=m)),
])
def test_path_builders_equal_their_job_file_kinds(checkpoints, kind, n, dims, builder):
    model = _mlp()
    spec = DirectionsSpec(kind=kind, models=tuple(checkpoints[:n]))
    _equal_directions(builder(checkpoints, model), make_directions(model, spec, dims))


def test_paths_accept_modules_and_state_dicts(checkpoints):
    a, b = _mlp(1), _mlp(2)
    from_objects = ml.directions.interpolation(a, b.state_dict())
    torch.save(a.state_dict(), Path(checkpoints[0]).with_name("a.pt"))
    torch.save(b.state_dict(), Path(checkpoints[0]).with_name("b.pt"))
    from_files = ml.directions.interpolation(str(Path(checkpoints[0]).with_name("a.pt")),
                                             str(Path(checkpoints[0]).with_name("b.pt")), model=a)
    assert torch.equal(from_objects.vectors, from_files.vectors) and torch.equal(from_objects.origin, from_files.origin)
    assert from_objects.labels == ("t (A → B)",)


@pytest.mark.parametrize("norm, ignore, orth", [("filter", "biasbn", False), ("layer", "none", True)])
def test_random_equals_its_job_file_kind(norm, ignore, orth):
    model = _mlp()
    spec = DirectionsSpec(kind="random", seed=5, norm=norm, ignore=ignore, orthogonalize=orth)
    got = ml.directions.random(model, seed=5, norm=norm, ignore=ignore, orthogonalize=orth)
    _equal_directions(got, make_directions(model, spec, 2))
    assert torch.equal(ml.directions.random(model, seed=5, dims=1, norm=norm, ignore=ignore).vectors[0],
                       got.vectors[0]) or orth


def test_from_file_equals_its_job_file_kind(tmp_path):
    model = _mlp()
    out = tmp_path / "s.h5"
    ml.landscape(model, ml.directions.random(model, seed=4), _data(), x=(-1, 1, 2), y=(-1, 1, 2), out=out, **FAST)
    spec = DirectionsSpec(kind="file", file=(str(out),))
    _equal_directions(ml.directions.from_file(model, out), make_directions(model, spec, 2))


def test_hessian_equals_its_job_file_kind():
    model = _mlp()
    x, y = _data(40)
    from mpiland.data import Split
    spec = DirectionsSpec(kind="hessian")
    inputs = CurvatureInputs(HessianSpec(splits=("data",)), Split("data", x, y), BUILTIN_LOSSES["cross_entropy"],
                             512, torch.device("cpu"), torch.float32)
    import copy
    ref = make_directions(copy.deepcopy(model), spec, 2, inputs)
    before = [p.clone() for p in model.parameters()]
    got = ml.directions.hessian(model, (x, y), device="cpu")
    _equal_directions(got, ref)
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))


# -- errors: one named sentence ------------------------------------------------------------------------------


def _one_sentence(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 300
    return text


def test_directions_of_another_model_are_refused():
    other = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with pytest.raises(ml.ModelError) as exc:
        ml.landscape(_mlp(), ml.directions.random(other), _data(), x=(-1, 1, 2), y=(-1, 1, 2), **FAST)
    assert "another model" in _one_sentence(exc)


def test_an_empty_loader_is_refused():
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)), batch_size=4)
    model = _mlp()
    with pytest.raises(ml.DataError) as exc:
        ml.landscape(model, ml.directions.random(model), {"test": empty}, x=(-1, 1, 2), y=(-1, 1, 2), **FAST)
    assert "no batches" in _one_sentence(exc)


class Triples(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.zeros(6), torch.tensor(0), torch.tensor(1.0)


def test_a_loader_of_the_wrong_structure_is_refused():
    model = _mlp()
    with pytest.raises(ml.DataError) as exc:
        ml.landscape(model, ml.directions.random(model), DataLoader(Triples(), batch_size=4), x=(-1, 1, 2),
                     y=(-1, 1, 2), **FAST)
    assert "(inputs, targets)" in _one_sentence(exc)


def test_a_metric_of_the_wrong_shape_is_refused():
    model = _mlp()
    with pytest.raises(ml.MetricError) as exc:
        ml.landscape(model, ml.directions.random(model), _data(), x=(-1, 1, 2), y=(-1, 1, 2),
                     metrics={"bad": lambda o, t: o[:3, 0]}, **FAST)
    text = _one_sentence(exc)
    assert "'bad'" in text and "per sample" in text


@pytest.mark.parametrize("kwargs, error, words", [
    ({"x": (1, -1, 3)}, ml.GridError, "greater than max"),
    ({"loss": "hinge"}, ml.SettingsError, "loss='hinge'"),
    ({"settings": {"run.points_per_pass": -1}}, ml.SettingsError, "run.points_per_pass"),
    ({"y": None}, ml.GridError, "2 axes but the grid 1"),
    ({"metrics": {"loss": lambda o, t: o}}, ml.MetricError, "clashes"),
])
def test_bad_arguments_name_the_argument(kwargs, error, words):
    model = _mlp()
    args = {"x": (-1, 1, 2), "y": (-1, 1, 2), **FAST, **kwargs}
    if "settings" in kwargs:
        args["settings"] = {"run.threads": 1, **kwargs["settings"]}
    with pytest.raises(error) as exc:
        ml.landscape(model, ml.directions.random(model), _data(), **args)
    assert words in _one_sentence(exc)


def test_importing_mpiland_loads_neither_torch_nor_h5py():
    code = "import sys, mpiland; print('torch' in sys.modules, 'h5py' in sys.modules, sorted(mpiland.__all__)[:3])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.startswith("False False")


def test_every_public_name_resolves_and_has_a_docstring():
    for name in ml.__all__:
        value = getattr(ml, name)
        if callable(value) or isinstance(value, type(ml)):
            assert (value.__doc__ or "").strip(), name
    for name in ("random", "interpolation", "plane", "bilinear", "bezier", "polychain", "pca", "hessian",
                 "from_file"):
        assert getattr(ml.directions, name).__doc__.strip()


def test_an_in_memory_surface_has_its_summary_and_analyses():
    a, b = _mlp(1), _mlp(2)
    surf = ml.landscape(a, ml.directions.interpolation(a, b), _data(), x=(-0.25, 1.25, 7), **FAST)
    assert "7/7 points done" in surf.summary()
    barrier = surf.barrier()
    assert barrier["metric"] == "data_loss" and np.isfinite(barrier["height"])


def test_pca_labels_name_the_trajectory():
    states = [_mlp(seed).state_dict() for seed in range(4)]
    model = _mlp(9)
    d = ml.directions.pca(states, model=model, labels=[f"epoch {i}" for i in range(4)])
    assert d.trajectory.labels == ("epoch 0", "epoch 1", "epoch 2", "epoch 3")
    with pytest.raises(ml.SettingsError, match="4 checkpoints"):
        ml.directions.pca(states, model=model, labels=["a"])


def test_batchnorm_statistics_are_recomputed_from_the_training_split():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    for m in (a, b):
        m.train()
        with torch.no_grad():
            m(torch.randn(64, 6) * 3 + 1)  # running statistics away from the defaults
        m.eval()
    data = {"train": _data(60, seed=1), "test": _data(40, seed=2)}
    d = ml.directions.interpolation(a, b)
    kw = {"x": (0, 1, 3), "device": "cpu", "progress": "none"}
    plain = ml.landscape(a, d, data, settings={"run.threads": 1}, **kw)
    again = ml.landscape(a, d, data, settings={"run.threads": 1, "model.bn": "recompute"}, **kw)
    assert not np.allclose(plain.metrics["test_loss"], again.metrics["test_loss"])
    with pytest.raises(ml.SettingsError, match="bn_data"):
        ml.landscape(a, d, data["test"], settings={"run.threads": 1, "model.bn": "recompute"}, **kw)


@pytest.mark.parametrize("key", ["data.subset", "directions.seed", "model.checkpoint", "grid.x", "train.epochs"])
def test_settings_the_arguments_give_are_refused_not_ignored(key):
    model = _mlp()
    with pytest.raises(ml.SettingsError, match=key):
        ml.landscape(model, ml.directions.random(model), _data(), x=(-1, 1, 2), y=(-1, 1, 2), device="cpu",
                     progress="none", settings={key: 1})


def test_random_samplers_are_drawn_once_and_leave_the_random_state_alone():
    from torch.utils.data import WeightedRandomSampler

    x, y = _data(50)
    model = _mlp()
    d = ml.directions.random(model, dims=1)
    loader = DataLoader(TensorDataset(x, y), batch_size=8, sampler=WeightedRandomSampler(torch.ones(50), 30))
    rng = torch.get_rng_state()
    first = ml.landscape(model, d, loader, x=(-1, 1, 3), **FAST)
    second = ml.landscape(model, d, loader, x=(-1, 1, 3), **FAST)
    assert torch.equal(torch.get_rng_state(), rng)
    assert _same(first.metrics["data_loss"], second.metrics["data_loss"])


class LateBadLabels(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, i: int):
        return torch.zeros(6), torch.tensor(7 if i == 39 else 0)


def test_labels_out_of_range_in_a_later_batch_are_a_data_error():
    model = _mlp()
    with pytest.raises(ml.DataError, match="0..7"):
        ml.landscape(model, ml.directions.random(model), DataLoader(LateBadLabels(), batch_size=8), x=(-1, 1, 2),
                     y=(-1, 1, 2), **FAST)


class BrokenCompute(Correct):
    def compute(self) -> float:
        raise ZeroDivisionError("no samples")


def test_a_broken_metric_object_is_refused_at_set_up():
    model = _mlp()
    with pytest.raises(ml.MetricError, match="compute"):
        ml.landscape(model, ml.directions.random(model), _data(), x=(-1, 1, 2), y=(-1, 1, 2),
                     metrics={"broken": BrokenCompute()}, **FAST)
