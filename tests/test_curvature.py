"""Curvature on the grid: per-point Hessian eigenvalues, Hessian directions, trace and directional curvature."""

import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpiland.data import load_split
from mpiland.errors import JobFileError
from mpiland.jobfile import load_job
from mpiland.models import build_model
from mpiland.run import run_job

from util import write_job

F64 = 'dtype = "float64"'


def full_hessian(job):
    """The exact Hessian of the job's mean loss at its model's θ, by autograd over the flat parameters."""
    model = build_model(job.model).double().eval()
    split = load_split(job.data, job.data.splits[0])
    x, y = split.inputs.double(), split.targets
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        params, off = {}, 0
        for n, s in zip(names, shapes):
            params[n] = flat[off: off + s.numel()].reshape(s)
            off += s.numel()
        out = torch.func.functional_call(model, params, (x,))
        if job.loss.name == "mse":
            return F.mse_loss(out, F.one_hot(y, 10).double())
        return F.cross_entropy(out, y)

    return torch.autograd.functional.hessian(loss, theta)


@pytest.mark.parametrize("points_per_pass", [1, 3])
def test_quadratic_loss_gives_the_exact_eigenvalues_everywhere(tmp_path, points_per_pass):
    job_path = write_job(tmp_path, model=f'factory = "tests/models.py:linear"\n{F64}',
                         data='splits = ["test"]\nsubset = 80\nbatch_size = 30',
                         extra=f'points_per_pass = {points_per_pass}\n[loss]\nname = "mse"\n[hessian]\nenabled = true\ntol = 1e-9\nmax_iter = 400\n'
                               'dtype = "float64"\ntrace_samples = 0\n', grid="x = [-1.0, 1.0, 3]\ny = [-1.0, 1.0, 2]")
    job = load_job(job_path)
    eig = torch.linalg.eigvalsh(full_hessian(job))
    lam_max, lam_min = float(eig[-1]), float(eig[0])
    summary = run_job(job)
    with h5py.File(summary.path, "r") as f:
        assert f["done"][...].all()
        np.testing.assert_allclose(f["test_hess_max"][...], lam_max, rtol=1e-7)
        np.testing.assert_allclose(f["test_hess_min"][...], lam_min, atol=1e-7 * lam_max)
        np.testing.assert_allclose(f["test_hess_ratio"][...], abs(lam_min / lam_max), atol=1e-7)
        assert "test_hess_trace" not in f.attrs  # trace_samples = 0


def test_hessian_directions_trace_and_curvature_match_the_full_hessian(tmp_path):
    job_path = write_job(tmp_path, model=f'factory = "mpiland.demo:digits_mlp"\nkwargs = {{ hidden = 4, depth = 1 }}\n{F64}',
                         data='splits = ["test"]\nsubset = 100\nbatch_size = 40', directions='kind = "hessian"',
                         extra='[hessian]\ntol = 1e-8\nmax_iter = 300\ndtype = "float64"\ntrace_samples = 400\n',
                         grid="x = [-0.5, 0.5, 3]\ny = [-0.5, 0.5, 3]")
    job = load_job(job_path)
    evals, evecs = torch.linalg.eigh(full_hessian(job))
    summary = run_job(job)
    with h5py.File(summary.path, "r") as f:
        g = f["directions"]
        for axis, k in (("x", -1), ("y", -2)):
            v = torch.from_numpy(g[axis][...]).double()
            assert float(v.norm()) == pytest.approx(1.0, abs=1e-5)
            assert abs(float(v @ evecs[:, k])) > 0.999
            assert f.attrs[f"test_hess_curvature_{axis}"] == pytest.approx(float(evals[k]), rel=1e-4)
        np.testing.assert_allclose(json.loads(g.attrs["eigenvalues"]), [float(evals[-1]), float(evals[-2])], rtol=1e-6)
        trace, stderr = f.attrs["test_hess_trace"], f.attrs["test_hess_trace_stderr"]
        assert abs(trace - float(evals.sum())) < 4 * stderr
        assert "Hessian eigenvector 1" in f.attrs["x_label"]
        assert "test_hess_max" not in f  # per-point eigenvalues are opt-in


@pytest.mark.parametrize("extra, fragment", [
    ('[hessian]\nsplits = ["train"]\n', "hessian.splits: train is not evaluated"),
    ('[model]\nfactory = "mpiland.demo:digits_mlp"\nmode = "train"\n[hessian]\nenabled = true\n', "eval mode"),
])
def test_curvature_job_errors(tmp_path, extra, fragment):
    path = write_job(tmp_path)
    text = path.read_text()
    if "[model]" in extra:
        text = text.replace('[model]\nfactory = "mpiland.demo:digits_mlp"\nkwargs = { hidden = 16 }\n', "")
    path.write_text(text + extra)
    with pytest.raises(JobFileError, match=fragment):
        load_job(path)


def test_batched_passes_give_the_eigenvalues_of_each_point(tmp_path):
    files = {}
    for k in (1, 3):
        job = write_job(tmp_path, name=f"k{k}.toml", output=f"k{k}.h5", grid="x = [-1.0, 1.0, 3]\ny = [-1.0, 1.0, 2]",
                        extra=f"points_per_pass = {k}\n[hessian]\nenabled = true\nsubset = 60\ntrace_samples = 0\n")
        files[k] = run_job(load_job(job)).path
    with h5py.File(files[1], "r") as one, h5py.File(files[3], "r") as three:
        assert three.attrs["points_per_pass"] == 3
        hess = one["test_hess_max"][...]
        assert np.unique(np.round(hess, 3)).size == hess.size  # the points differ
        for m in ("test_hess_max", "test_hess_min"):
            np.testing.assert_allclose(three[m][...], one[m][...], rtol=1e-6)
