"""Curvature on the grid: per-point Hessian eigenvalues, Hessian directions, trace and directional curvature."""

import copy
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpiland.data import load_split
from mpiland.demo import digits_cnn, digits_mlp
from mpiland.curvature import FLOOR, Curvature
from mpiland.directions import CurvatureInputs, make_directions, parameter_mask
from mpiland.engine import EngineOptions, Evaluator
from mpiland.grid import chain_block, chain_links
from mpiland.errors import EXIT_INTERRUPTED, JobFileError
from mpiland.jobfile import load_job
from mpiland.layout import ParamLayout
from mpiland.models import build_model
from mpiland.run import run_job
from mpiland.spec import DataSpec, DirectionsSpec, HessianSpec, LossSpec, resolve_directions

from util import cli, interrupted_run, write_job

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


def bn_cnn(seed):
    """A small digits CNN with BatchNorm; running statistics far from what the data gives."""
    torch.manual_seed(seed)
    model = digits_cnn(channels=2, hidden=8)
    with torch.no_grad():
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.3, 3.0)
    return model.eval()


@pytest.mark.parametrize("bn, states", [("recompute", "false"), ("eval", "true")], ids=["bn-recompute", "states"])
def test_float64_curvature_uses_each_points_batchnorm_statistics(tmp_path, bn, states):
    """Along an interpolation between two BatchNorm CNNs the statistics change at every point (re-estimated, or
    interpolated with the parameters): float64 eigenvalues agree with float32 ones instead of using θ*'s statistics."""
    paths = []
    for i, seed in enumerate((1, 2)):
        paths.append(tmp_path / f"m{i}.pt")
        torch.save(bn_cnn(seed).state_dict(), paths[-1])
    files = {}
    for dtype in ("float32", "float64"):
        job = write_job(tmp_path, name=f"{dtype}.toml", output=f"{dtype}.h5", grid="x = [0.0, 1.0, 3]",
                        model=f'factory = "mpiland.demo:digits_cnn"\nkwargs = {{ channels = 2, hidden = 8 }}\n'
                              f'bn = "{bn}"\nbn_batches = 2',
                        data='splits = ["test"]\nsubset = 60\nbatch_size = 60',
                        directions=f'kind = "interpolation"\nmodels = ["{paths[0]}", "{paths[1]}"]\nstates = {states}',
                        extra=f'[hessian]\nenabled = true\ntol = 1e-6\nmax_iter = 400\ndtype = "{dtype}"\n'
                              'trace_samples = 0\n')
        files[dtype] = run_job(load_job(job)).path
    with h5py.File(files["float32"], "r") as f32, h5py.File(files["float64"], "r") as f64:
        lam = {m: (f32[m][...], f64[m][...]) for m in ("test_hess_max", "test_hess_min")}
    assert np.unique(np.round(lam["test_hess_max"][1], 3)).size == 3  # the points differ
    np.testing.assert_allclose(lam["test_hess_max"][1], lam["test_hess_max"][0], rtol=1e-4)
    np.testing.assert_allclose(lam["test_hess_min"][1], lam["test_hess_min"][0], rtol=1e-3,
                               atol=1e-4 * np.abs(lam["test_hess_max"][1]).max())


def per_sample_ce(outputs, targets):
    return F.cross_entropy(outputs, targets, reduction="none")


def model_hessian(model, x, y):
    """The exact float64 Hessian of the mean cross-entropy over the model's parameters (flat, in layout order)."""
    ref = copy.deepcopy(model).double().eval()
    layout = ParamLayout.from_model(ref)

    def loss(theta):
        out = torch.func.functional_call(ref, dict(zip(layout.names, layout.views(theta))), (x.double(),))
        return per_sample_ce(out, y).mean()

    return torch.autograd.functional.hessian(loss, torch.cat([p.detach().reshape(-1) for p in ref.parameters()]))


@pytest.mark.parametrize("keys", [dict(include=("weight",)), dict(exclude=(r"^3\.",)),
                                  dict(exclude=(r"^1\.weight",), ignore="biasbn")],
                         ids=["include", "exclude", "exclude+biasbn"])
def test_hessian_directions_are_eigenvectors_of_the_covered_block(keys):
    """include/exclude/ignore select parameters: the directions are the top eigenpairs of H's block on them (P·H·P)
    and vanish elsewhere."""
    torch.manual_seed(0)
    model = digits_mlp(hidden=4, depth=1)
    split = load_split(DataSpec(dataset="digits", subset=80), "test")
    layout = ParamLayout.from_model(model)
    spec = DirectionsSpec(kind="hessian", **keys)
    mask = parameter_mask(layout, resolve_directions(spec))
    covered = torch.cat([torch.full((layout.numel_of(i),), keep) for i, keep in enumerate(mask)])
    assert 0 < int(covered.sum()) < layout.numel
    inputs = CurvatureInputs(HessianSpec(tol=1e-9, max_iter=400, dtype="float64"), split, per_sample_ce, 32,
                             torch.device("cpu"), torch.float32)
    d = make_directions(copy.deepcopy(model), spec, 2, inputs)
    h = model_hessian(model, split.inputs, split.targets)
    values, vectors = torch.linalg.eigh(h[covered][:, covered])
    assert float(d.vectors[:, ~covered].abs().max()) == 0.0
    np.testing.assert_allclose(d.settings["eigenvalues"], values.flip(0)[:2].numpy(), rtol=1e-6)
    for axis in range(2):
        assert abs(float(d.vectors[axis, covered].double() @ vectors[:, -1 - axis])) > 0.999
    assert d.settings["parameters"] == int(covered.sum())


def test_hessian_directions_refuse_norm(tmp_path):
    path = write_job(tmp_path, directions='kind = "hessian"\nnorm = "filter"')
    with pytest.raises(JobFileError, match=r"^directions\.norm: Hessian eigenvectors .*remove the key"):
        load_job(path)
    with pytest.raises(JobFileError, match=r"^directions\.norm:"):
        make_directions(digits_mlp(hidden=4, depth=1), DirectionsSpec(kind="hessian", norm="layer"), 2,
                        CurvatureInputs(HessianSpec(), load_split(DataSpec(dataset="digits", subset=20), "test"),
                                        per_sample_ce, 20, torch.device("cpu"), torch.float32))


HESS = ("test_hess_max", "test_hess_min", "test_hess_ratio")


def grid_problem(hidden=16, depth=2, span=0.2, n=3):
    """An untrained digits MLP, seeded filter-normalised random directions and an n × n grid of ±span."""
    torch.manual_seed(0)
    model = digits_mlp(hidden=hidden, depth=depth).eval()
    split = load_split(DataSpec(dataset="digits", subset=120), "test")
    directions = make_directions(model, DirectionsSpec(seed=3, norm="filter"), 2)
    x = np.linspace(-span, span, n)
    return model, directions, split, np.array([(a, b) for a in x for b in x])


def curvature_evaluator(model, directions, split, warm, points_per_pass=1, **hessian):
    ev = Evaluator(model, directions, [split], LossSpec(), torch.device("cpu"), batch_size=50,
                   options=EngineOptions(points_per_pass=points_per_pass),
                   hessian=HessianSpec(enabled=True, splits=("test",), trace_samples=0, warm_start=warm, **hessian))
    assert ev.curvature.warm_start is warm  # hessian.warm_start reaches the curvature
    return ev


def point_eigenvalues(ev, coefficients, split):
    """The exact float64 eigenvalues of the Hessian at origin + basis · c (as the evaluator sets the point)."""
    ev.set_point(coefficients)
    model = copy.deepcopy(ev.model)
    with torch.no_grad():
        for p, v in zip(model.parameters(), ParamLayout.from_model(model).views(ev.curvature.theta(ev.flat))):
            p.copy_(v)
    return torch.linalg.eigvalsh(model_hessian(model, split.inputs, split.targets))


def grid_links(n, chain=16, points_per_pass=1):
    """The warm-start links of a whole n × n grid evaluated in order, and its blocks (a run's chunks)."""
    block = chain_block(points_per_pass, n, chain)
    return chain_links(np.arange(n * n), n, block), block


def test_warm_start_values_agree_with_cold_ones_within_the_tolerance():
    """Warm-started λmax and λmin are within the stop rule's bound tol·max(|λ|, 0.01·ρ) of the exact extreme
    eigenvalues at every point, as cold ones are, so the two differ by at most twice that."""
    model, directions, split, coords = grid_problem(hidden=4, depth=1, span=0.5)
    tol = 1e-3
    links, _ = grid_links(3)
    got = {warm: curvature_evaluator(model, directions, split, warm).evaluate_points(coords, links=links)[0]
           for warm in (False, True)}
    assert not np.array_equal(got[True]["test_hess_min"], got[False]["test_hess_min"])  # the start did change
    heads = ~links
    for m in HESS:  # the first point of each chain starts cold
        np.testing.assert_array_equal(got[True][m][heads], got[False][m][heads])
    ev = curvature_evaluator(model, directions, split, False)
    for i, c in enumerate(directions.coefficients(coords)):
        exact = point_eigenvalues(ev, c, split)
        rho = float(exact.abs().max())
        for values in got.values():
            for m, ref in (("test_hess_max", float(exact[-1])), ("test_hess_min", float(exact[0]))):
                bound = tol * max(abs(values[m][i]), FLOOR * rho)
                assert abs(values[m][i] - ref) <= bound * 1.001 + 1e-6, (i, m)
        for m in ("test_hess_max", "test_hess_min"):
            bound = tol * max(abs(got[False][m][i]), FLOOR * rho)
            assert abs(got[True][m][i] - got[False][m][i]) <= 2 * bound * 1.001 + 1e-6


@pytest.mark.parametrize("chain", [16, 2])
def test_warm_start_values_do_not_depend_on_order_chunking_or_resume(chain):
    """The chains are fixed by the grid (runs of a row, at most hessian.chain long): whole chains in any
    order, in one evaluator or a fresh one per chain (another rank, a resumed run), with another number of
    points per pass, give the same bits as the grid in order."""
    model, directions, split, coords = grid_problem(n=4)
    n = len(coords)
    links, block = grid_links(4, chain)
    assert block == min(4, chain) and links.sum() == n - n // block
    ref = curvature_evaluator(model, directions, split, True).evaluate_points(coords, links=links)[0]
    chains = [np.arange(b, b + block) for b in range(0, n, block)]
    got = {}
    ev = curvature_evaluator(model, directions, split, True, points_per_pass=2)  # one evaluator, shuffled
    assert ev.points_per_pass == 2
    for c in np.random.default_rng(0).permutation(len(chains)):
        points = chains[c]
        values = ev.evaluate_points(coords[points], links=chain_links(points, 4, block))[0]
        got.update({int(j): {m: values[m][k] for m in HESS} for k, j in enumerate(points)})
    for points in chains[::-1]:  # a fresh evaluator per chain
        fresh = curvature_evaluator(model, directions, split, True)
        values = fresh.evaluate_points(coords[points], links=chain_links(points, 4, block))[0]
        for m in HESS:
            np.testing.assert_array_equal(values[m], ref[m][points], err_msg=m)
    for m in HESS:
        np.testing.assert_array_equal(np.array([got[i][m] for i in range(n)]), ref[m], err_msg=m)


def test_warm_start_takes_fewer_hvps_per_point():
    """HVPs counted, not timed: on this 6 × 6 grid (±0.05 along filter-normalised random directions of an
    untrained digits MLP, 120 samples, tol 1e-3) 18.7 per point along rows of 6 against 23.4 cold were
    measured (0.80×)."""
    model, directions, split, coords = grid_problem(span=0.05, n=6)
    links, _ = grid_links(6)
    hvps = {}
    for warm in (False, True):
        ev = curvature_evaluator(model, directions, split, warm)
        ev.evaluate_points(coords, links=links)
        hvps[warm] = ev.curvature.hvps() / len(coords)
    assert hvps[True] <= 0.85 * hvps[False], hvps


def test_a_linked_point_needs_the_point_before_it():
    model, _, split, _ = grid_problem()
    spec = HessianSpec(enabled=True, splits=("test",))
    curvature = Curvature(model, {"test": (split.inputs, split.targets)}, per_sample_ce, spec, 50,
                          torch.device("cpu"), torch.float32, warm_start=True)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    with pytest.raises(RuntimeError, match="no previous point"):
        curvature.at_point(flat, linked=True)
    cold = Curvature(model, {"test": (split.inputs, split.targets)}, per_sample_ce, spec, 50,
                     torch.device("cpu"), torch.float32, warm_start=False)
    assert curvature.at_point(flat) == cold.at_point(flat)  # a chain's first point is a cold start
    with pytest.raises(RuntimeError, match="chain 1"):
        curvature.at_point(flat, linked=True, chain=1)  # chains are kept apart
    again = curvature.at_point(flat, linked=True)  # from its own vectors: the same point, fewer HVPs
    before = curvature.hvps()
    curvature.at_point(flat, linked=True)
    assert curvature.hvps() - before < cold.hvps()
    assert again["test_hess_max"] == pytest.approx(cold.at_point(flat)["test_hess_max"], rel=2e-3)


def test_a_warm_started_run_stopped_by_a_signal_resumes_to_the_same_file(tmp_path):
    """SIGTERM while a chain is being evaluated: the chain is finished first (its rest would start cold on a
    resume), so the file holds whole chains and the resumed file is the one an uninterrupted run makes."""
    job = write_job(tmp_path, model='factory = "tests/models.py:slow_mlp"\nkwargs = { delay = 0.02 }',
                    grid="x = [-1.0, 1.0, 4]\ny = [-1.0, 1.0, 8]",
                    extra="points_per_pass = 1\n[hessian]\nenabled = true\nsubset = 40\ntrace_samples = 0\n"
                          "warm_start = true\nchain = 8\n")
    status, rest = interrupted_run([str(job)], delay=1.5)
    assert status == EXIT_INTERRUPTED, rest
    with h5py.File(tmp_path / "surface.h5", "r") as f:
        done = f["done"][...].reshape(-1, 8)  # chains are the rows of 8
    assert 0 < done.sum() < done.size
    assert set(done.sum(axis=1).tolist()) <= {0, 8}, done  # whole chains only
    assert cli("run", str(job)).returncode == 0
    assert cli("run", str(job), "--output", str(tmp_path / "ref.h5")).returncode == 0
    with h5py.File(tmp_path / "surface.h5", "r") as a, h5py.File(tmp_path / "ref.h5", "r") as b:
        assert a["done"][...].all()
        for m in HESS:
            np.testing.assert_array_equal(a[m][...], b[m][...], err_msg=m)
