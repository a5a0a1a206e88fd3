"""Data that does not fit: a job file's loaders and iterable datasets are streamed, never materialised."""

import h5py
import numpy as np
import pytest
import torch

from mpiland.data import Split, Stream, bn_inputs, job_split, load_split, stream_bn_inputs, stream_samples
from mpiland.errors import DataError
from mpiland.spec import DataSpec

from util import cli, write_job

FACTORIES = '''import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset
from mpiland.data import digits_split

SCALE = {scale}

def tensors(split, n=120):
    x, y = digits_split(split)
    return x[:n] * SCALE, y[:n]

class Lazy(IterableDataset):
    """Samples made from their index as they are read: nothing is held."""
    def __init__(self, split, n):
        self.split, self.n = split, n
    def __iter__(self):
        x, y = tensors(self.split, self.n)
        for i in range(self.n):
            yield x[i], y[i]

class Mapped(Dataset):
    def __init__(self, split, n):
        self.x, self.y = tensors(split, n)
    def __len__(self):
        return len(self.y)
    def __getitem__(self, i):
        return self.x[i], self.y[i]

def loader(split, n=120):
    return DataLoader(TensorDataset(*tensors(split, n)), batch_size=50)

def iterable(split, n=120):
    return Lazy(split, n)

def mapped(split, n=120):
    return Mapped(split, n)
'''


def _factories(tmp_path, scale=1.0):
    path = tmp_path / "streamdata.py"
    path.write_text(FACTORIES.format(scale=scale))
    return path


def _spec(tmp_path, name, **kw):
    return DataSpec(dataset=None, factory=f"{_factories(tmp_path)}:{name}", **kw)


def _values(path):
    with h5py.File(path, "r") as f:
        return f["test_loss"][...], str(f.attrs["digest_data_test"])


def test_loaders_and_iterables_stream_and_map_style_datasets_are_read_as_tensors(tmp_path):
    assert isinstance(job_split(_spec(tmp_path, "loader"), "test"), Stream)
    assert isinstance(job_split(_spec(tmp_path, "iterable"), "test"), Stream)
    assert isinstance(job_split(_spec(tmp_path, "mapped"), "test"), Split)
    assert isinstance(job_split(_spec(tmp_path, "mapped", stream="true"), "test"), Stream)
    assert isinstance(job_split(_spec(tmp_path, "tensors", stream="true"), "test"), Split)
    joined = job_split(_spec(tmp_path, "iterable", stream="false"), "test")
    direct = job_split(_spec(tmp_path, "tensors"), "test")
    assert isinstance(joined, Split) and torch.equal(joined.inputs, direct.inputs)


def test_subset_of_a_stream_is_the_tensors_subset(tmp_path):
    want = load_split(_spec(tmp_path, "tensors", subset=30, seed=4), "test")
    for name, stream in (("loader", "auto"), ("mapped", "true")):
        got = job_split(_spec(tmp_path, name, subset=30, seed=4, stream=stream), "test")
        assert isinstance(got, Stream)
        xs, ys = zip(*got.batches())
        assert torch.equal(torch.cat(xs), want.inputs) and torch.equal(torch.cat(ys), want.targets)
    with pytest.raises(DataError, match="data.subset draws samples by index, which an IterableDataset has none"):
        job_split(_spec(tmp_path, "iterable", subset=30), "test")


def test_steps_that_need_tensors_refuse_a_stream_naming_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"\[train\] trains.*returns a DataLoader, which is streamed; set "
                                        "data.stream = false"):
        load_split(_spec(tmp_path, "loader"), "train", "[train] trains the model")
    assert len(load_split(_spec(tmp_path, "loader", stream="false"), "train")) == 120


def test_batchnorm_and_hessian_samples_from_a_stream_are_the_tensors_ones(tmp_path):
    tensors = load_split(_spec(tmp_path, "tensors"), "train")
    for name in ("loader", "iterable"):
        stream = job_split(_spec(tmp_path, name), "train")
        assert isinstance(stream, Stream)
        assert torch.equal(stream_bn_inputs(stream, 2, 16, 5), bn_inputs(tensors, 2, 16, 5))
        order = torch.randperm(120, generator=torch.Generator().manual_seed(1))[:40]
        picked = stream_samples(stream, lambda n: order, "test")
        assert torch.equal(picked.inputs, tensors.inputs[order]) and torch.equal(picked.targets, tensors.targets[order])


def test_streamed_job_matches_tensors_resumes_and_refuses_other_data(tmp_path):
    factories = _factories(tmp_path)
    grid = "x = [-1.0, 1.0, 3]"
    ref = write_job(tmp_path, grid=grid, output="tensors.h5", name="t.toml",
                    data=f'factory = "{factories}:tensors"\nsplits = ["test"]\nbatch_size = 50')
    assert cli("run", str(ref)).returncode == 0
    job = write_job(tmp_path, grid=grid, output="stream.h5",
                    data=f'factory = "{factories}:iterable"\nsplits = ["test"]\nbatch_size = 50\n'
                         "memory_budget_mb = 0.01")
    first = cli("run", str(job))
    assert first.returncode == 0, first.stderr
    assert "streamed from host memory" in first.stderr
    streamed, digest = _values(tmp_path / "stream.h5")
    np.testing.assert_allclose(streamed, _values(tmp_path / "tensors.h5")[0], rtol=1e-6)
    again = cli("run", str(job))
    assert again.returncode == 0 and "resuming" in again.stderr and "0 points evaluated" in again.stderr
    assert _values(tmp_path / "stream.h5")[1] == digest
    proc = cli("run", str(job), "--set", "data.kwargs={ n = 100 }")  # the same code, other samples
    assert proc.returncode == 2
    assert "other data (data digest differs for test)" in proc.stderr.strip().splitlines()[-1]


def test_hessian_directions_from_a_stream_need_a_subset(tmp_path):
    factories = _factories(tmp_path)
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]", directions='kind = "hessian"',
                    data=f'factory = "{factories}:loader"\nsplits = ["test"]\nbatch_size = 50',
                    extra="[hessian]\nmax_iter = 10\n")
    proc = cli("run", str(job))
    assert proc.returncode == 2
    assert "set hessian.subset = N to draw N samples from the stream" in proc.stderr.strip().splitlines()[-1]
    assert cli("run", str(job), "--set", "hessian.subset=60").returncode == 0


def test_batchnorm_recompute_from_a_streamed_train_split_matches_tensors(tmp_path):
    factories = _factories(tmp_path)
    model = 'factory = "mpiland.demo:digits_cnn"\nbn = "recompute"\nbn_batches = 2'
    values = []
    for name in ("tensors", "loader"):
        job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]", model=model, output=f"{name}.h5", name=f"{name}.toml",
                        data=f'factory = "{factories}:{name}"\nsplits = ["test"]\nbatch_size = 50')
        proc = cli("run", str(job))
        assert proc.returncode == 0, proc.stderr
        values.append(_values(tmp_path / f"{name}.h5")[0])
    np.testing.assert_allclose(values[1], values[0], rtol=1e-5)


def test_training_on_a_streamed_split_is_refused_at_the_cli(tmp_path):
    factories = _factories(tmp_path)
    model = f'factory = "mpiland.demo:digits_mlp"\ncheckpoint = "{tmp_path}/missing.pt"'
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]", model=model, extra="[train]\nepochs = 1\n",
                    data=f'factory = "{factories}:loader"\nsplits = ["test"]\nbatch_size = 50')
    proc = cli("run", str(job))
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "[train] trains the model on the train split as tensors in memory" in line
    assert "set data.stream = false" in line and "Traceback" not in proc.stderr
