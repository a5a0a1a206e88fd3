"""Curve finding between two modes: the trained curve, its resume, the connect command and its ranks."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import mpiland as ml
from mpiland.curves import STATE, curve_weights
from mpiland.data import digits_split
from mpiland.demo import digits_mlp
from mpiland.layout import ParamLayout, state_vector
from tests.util import PYTHON, cli

MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")

EPOCHS = 4


def _train(seed: int) -> torch.nn.Module:
    x, y = digits_split("train")
    torch.manual_seed(seed)
    model = digits_mlp(hidden=32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(8):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def modes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("modes")
    with torch.random.fork_rng(devices=[]):
        a, b = _train(1), _train(2)
    torch.save(a.state_dict(), tmp / "a.pt")
    torch.save(b.state_dict(), tmp / "b.pt")
    return {"a": a, "b": b, "dir": tmp}


def _connect(modes, template=None, **kw):
    args = {"epochs": EPOCHS, "batch_size": 64, "progress": "none", **kw}
    return ml.connect(template or digits_mlp(hidden=32), modes["a"], modes["b"], digits_split("train"), **args)


@pytest.mark.parametrize("curve, bends", [("bezier", 1), ("bezier", 3), ("polychain", 2)])
def test_the_trained_curve_is_the_curve_the_path_kinds_evaluate(curve, bends):
    """θ(t) from the training weights equals origin + basis · c(t) of the bezier/polychain directions."""
    torch.manual_seed(0)
    models = [digits_mlp(hidden=8) for _ in range(bends + 2)]
    layout = ParamLayout.from_model(models[0])
    points = [state_vector(m, layout) for m in models]
    build = ml.directions.bezier if curve == "bezier" else ml.directions.polychain
    d = build(*models, compare_line=False)
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):
        w = curve_weights(curve, t, bends)
        assert w.sum() == pytest.approx(1.0)
        theta = sum(float(wk) * p for wk, p in zip(w, points))
        c = torch.as_tensor(d.coefficients(np.array([[t]])))[0]
        assert torch.allclose(d.origin + c @ d.vectors.double(), theta, atol=1e-5)


def test_the_curve_has_a_lower_barrier_than_the_line(modes):
    result = _connect(modes)
    assert len(result.bends) == 1 and len(result.losses) == EPOCHS and result.losses[-1] < result.losses[0]
    x, y = digits_split("test")
    kw = {"x": (0.0, 1.0, 11), "device": "cpu", "progress": "none", "settings": {"run.threads": 1}}
    curve = ml.landscape(modes["a"], ml.directions.bezier(modes["a"], result.bends[0], modes["b"]),
                         {"test": (x, y)}, **kw)
    line = curve.barrier("line_test_loss")["height"]
    trained = curve.barrier("test_loss")["height"]
    assert line > 0.3 and trained < 0.5 * line, (line, trained)


def test_a_stopped_training_resumes_to_the_same_bends(modes, tmp_path):
    whole = _connect(modes, checkpoint_dir=tmp_path / "whole")
    calls = {"n": 0}

    def stop_after_30() -> bool:
        calls["n"] += 1
        return calls["n"] >= 30

    from mpiland.curves import connect as train
    from mpiland.lossfns import BUILTIN_LOSSES
    from mpiland.spec import ConnectSpec
    spec = ConnectSpec(epochs=EPOCHS, batch_size=64)
    template = digits_mlp(hidden=32)
    a, b = modes["a"].state_dict(), modes["b"].state_dict()
    split = digits_split("train")
    from mpiland.data import Split
    data = Split("train", *split)
    first = train(template, a, b, data, BUILTIN_LOSSES["cross_entropy"], spec, tmp_path / "parts", progress="none",
                  stop=stop_after_30)
    assert first.stopped and (tmp_path / "parts" / STATE).exists()
    rest = train(template, a, b, data, BUILTIN_LOSSES["cross_entropy"], spec, tmp_path / "parts", progress="none")
    assert not rest.stopped and rest.losses == whole.losses
    assert all(torch.equal(rest.bends[0][k], whole.bends[0][k]) for k in whole.bends[0])
    again = train(template, a, b, data, BUILTIN_LOSSES["cross_entropy"], spec, tmp_path / "parts", progress="none")
    assert again.losses == whole.losses, "a finished curve is not trained again"


def test_another_curves_state_is_refused(modes, tmp_path):
    _connect(modes, checkpoint_dir=tmp_path, epochs=1)
    with pytest.raises(ml.CheckpointError, match="another curve"):
        _connect(modes, checkpoint_dir=tmp_path, epochs=1, bends=2)


def test_the_callers_models_and_random_state_are_unchanged(modes):
    before = {k: v.clone() for k, v in modes["a"].state_dict().items()}
    template = digits_mlp(hidden=32)
    rng = torch.get_rng_state()
    _connect(modes, template, epochs=1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in modes["a"].state_dict().items())


def test_identical_ends_are_refused(modes):
    with pytest.raises(ml.SettingsError, match="same"):
        ml.connect(digits_mlp(hidden=32), modes["a"], modes["a"], digits_split("train"), epochs=1, progress="none")


def _job(tmp, modes, extra: str = "") -> str:
    text = textwrap.dedent(f"""\
        name = "connect"
        [model]
        factory = "mpiland.demo:digits_mlp"
        kwargs = {{ hidden = 32 }}
        [data]
        splits = ["test"]
        [grid]
        x = [0.0, 1.0, 11]
        [connect]
        ends = ["{modes['dir'] / 'a.pt'}", "{modes['dir'] / 'b.pt'}"]
        epochs = {EPOCHS}
        batch_size = 64
        checkpoint_dir = "{tmp / 'bends'}"
        [output]
        path = "{tmp / 'curve.h5'}"
        [run]
        threads = 1
        progress = "none"
        """) + extra
    path = tmp / "job.toml"
    path.write_text(text)
    return str(path)


def test_the_connect_command_trains_and_evaluates_the_curve_beside_the_line(modes, tmp_path):
    job = _job(tmp_path, modes)
    done = cli("connect", job)
    assert done.returncode == 0, done.stderr
    assert "loss barrier between the models: test_loss" in done.stderr and "line_test_loss" in done.stderr
    surf = ml.open(tmp_path / "curve.h5")
    assert {"test_loss", "line_test_loss"} <= set(surf.metrics) and surf.done.all()
    assert surf.attrs["line_test_loss_barrier"] > surf.attrs["test_loss_barrier"]
    again = cli("connect", job)
    assert again.returncode == 0 and "11 of 11 points already done" in again.stderr


def test_connect_refuses_a_2d_grid_in_one_line(modes, tmp_path):
    job = _job(tmp_path, modes, "")
    text = open(job).read().replace("x = [0.0, 1.0, 11]", "x = [0.0, 1.0, 11]\ny = [0.0, 1.0, 3]")
    open(job, "w").write(text)
    done = cli("connect", job)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "remove grid.y" in done.stderr


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python")
def test_two_ranks_train_the_same_curve(modes, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    assert cli("connect", _job(one, modes)).returncode == 0
    done = cli("connect", _job(two, modes), launcher=[str(MPIEXEC), "-n", "2"])
    assert done.returncode == 0, done.stderr
    a, b = torch.load(one / "bends" / "bend_1.pt"), torch.load(two / "bends" / "bend_1.pt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5, "the same steps, summed over ranks"


def test_a_curve_through_batchnorm_models_is_evaluated_with_recomputed_statistics(modes, tmp_path):
    from mpiland.jobfile import load_job
    from mpiland.run import curve_job

    job = load_job(_job(tmp_path, modes))
    ends = (str(modes["dir"] / "a.pt"), str(modes["dir"] / "b.pt"))
    plain = curve_job(job, ends, [tmp_path / "bend_1.pt"])
    with_bn = curve_job(job, ends, [tmp_path / "bend_1.pt"], batchnorm=True)
    assert plain.model.bn == "eval" and with_bn.model.bn == "recompute"
    assert with_bn.directions.kind == "bezier" and with_bn.directions.compare_line
    assert with_bn.directions.models == (ends[0], str(tmp_path / "bend_1.pt"), ends[1])


def test_the_saved_bends_are_the_returned_bends_and_another_loss_is_refused(modes, tmp_path):
    result = _connect(modes, checkpoint_dir=tmp_path, epochs=1)
    saved = torch.load(tmp_path / "bend_1.pt")
    assert set(saved) == set(result.bends[0])
    assert all(torch.equal(saved[k], result.bends[0][k]) for k in saved)
    with pytest.raises(ml.CheckpointError, match="another curve"):
        _connect(modes, checkpoint_dir=tmp_path, epochs=1, loss="nll")
