"""The Hessian eigenvalue spectrum (hessian.spectrum): stochastic Lanczos quadrature against exact Hessians.

The exact Hessians come from torch.autograd.functional.hessian over the flat
parameters of small float64 models (a few hundred parameters), so every number
the spectrum stores is checked against eigvalsh: the quadrature's moments, the
smoothed density, its support, the top eigenvalues and λmax of each parameter
group's block; then a job writes it, the reader, ``info`` and the plot read it.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call

import mpiland as ml
from mpiland.analysis.summary import format_summary, summarize
from mpiland.curvature import (GAUSSIAN, PROBE_SEED_OFFSET, RADEMACHER, HessianOperator, hessian_spectrum,
                               hutchinson_trace, lanczos, lanczos_quadrature, module_groups, probe_vectors,
                               smoothed_density)
from mpiland.data import load_split
from mpiland.errors import SurfaceFileError
from mpiland.jobfile import load_job
from mpiland.layout import ParamLayout
from mpiland.models import build_model
from mpiland.plots import plot_surface, render
from mpiland.run import run_job
from mpiland.surface.reader import load_surface
from mpiland.surface.writer import write_spectrum
from surfaces import write_surface
from util import cli, write_job

SAMPLES = 64


def per_sample_ce(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(outputs, targets, reduction="none")


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The Hessian of the mean cross-entropy over the flat parameters (float64, eval mode)."""
    model = model.double().eval()
    layout = ParamLayout.from_model(model)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, dict(zip(layout.names, layout.views(t))), (x.double(),)), y)

    return torch.autograd.functional.hessian(loss, theta, vectorize=True)


class Case:
    """A 2-layer tanh MLP (244 parameters) on random data, its operator and its exact Hessian."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4)).double()
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(SAMPLES, 10, generator=gen, dtype=torch.float64)
        self.y = torch.randint(0, 4, (SAMPLES,), generator=gen)
        self.layout = ParamLayout.from_model(self.model)
        self.theta = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
        self.hessian = exact_hessian(self.model, self.x, self.y)
        self.eigenvalues = torch.linalg.eigvalsh(self.hessian).numpy()
        self.n = self.layout.numel
        self.op = HessianOperator(self.model, self.layout, [(self.x, self.y)], per_sample_ce, torch.float64)
        self.groups = module_groups(self.layout.names, [self.layout.numel_of(i) for i in range(len(self.layout.names))])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are tiny, and spinning threads on a shared 2-core machine cost 10×."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def case(one_thread) -> Case:
    return Case()


def test_the_case_has_a_spectrum_worth_checking(case: Case) -> None:
    ev = case.eigenvalues
    assert case.n == 244
    assert ev[0] < 0 < ev[-1] and ev[-1] - ev[-2] > 0.1 * ev[-1]  # a saddle; a simple top eigenvalue


@pytest.mark.parametrize("distribution", [RADEMACHER, GAUSSIAN])
def test_each_probe_is_a_gauss_quadrature_exact_to_degree_2m_minus_1(case: Case, distribution: str) -> None:
    """Σ_j τ_j θ_j^k = vᵀH^k v for k ≤ 2m − 1 (here m = 12): the rule itself, probe by probe, to rounding."""
    quad = lanczos_quadrature(case.op, probes=3, steps=12, seed=5, distribution=distribution, theta=case.theta)
    assert quad.nodes.shape == quad.weights.shape == (3, 12)
    np.testing.assert_allclose(quad.weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert bool((np.diff(quad.nodes, axis=1) >= 0).all())
    values, vectors = torch.linalg.eigh(case.hessian)
    scale = float(values.abs().max())
    for p, v in enumerate(probe_vectors(case.n, 3, seed=5, distribution=distribution)):
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-14)
        if distribution == RADEMACHER:
            np.testing.assert_allclose(v.abs().numpy(), 1 / math.sqrt(case.n), rtol=1e-14)
        c = (vectors.t() @ v) ** 2  # vᵀH^k v = Σ_i (u_iᵀv)² λ_i^k
        for k in range(24):
            exact = float((c * values**k).sum())
            assert quad.moments(k)[p] == pytest.approx(exact, abs=1e-10 * scale**k), (p, k)


def test_density_moments_and_shape_match_the_exact_hessian(case: Case) -> None:
    """64 probes × 60 steps. Tolerance of the moments: 4 standard errors of the probes' mean (here about
    10 % of tr H/n and 2 % of ‖H‖_F²/n: the probes' variance, the only error of the quadrature); the
    smoothed density within L1 distance 0.1 of the exact eigenvalues smoothed with the same σ (measured
    0.04)."""
    ev, n = case.eigenvalues, case.n
    result = hessian_spectrum(case.op, theta=case.theta, probes=64, steps=60, top=1, seed=0)
    quad, density = result.quadrature, result.density
    for power, exact in ((1, ev.mean()), (2, (ev**2).mean())):
        per_probe = quad.moments(power)
        stderr = per_probe.std(ddof=1) / math.sqrt(per_probe.size)
        assert stderr < 0.15 * abs(exact)
        assert abs(quad.moment(power) - exact) <= 4 * stderr, (power, quad.moment(power), exact, stderr)
    # the smoothed density: a probability density with the nodes' moments (+ σ² for the second)
    assert density.integral(0) == pytest.approx(1.0, abs=1e-6)
    assert density.integral(1) == pytest.approx(quad.moment(1), abs=1e-8)
    assert density.integral(2) == pytest.approx(quad.moment(2) + density.width**2, abs=1e-8)
    lo, hi = quad.nodes.min(), quad.nodes.max()
    assert density.width == pytest.approx(0.01 * (hi - lo))
    exact_density = np.exp(-0.5 * ((density.grid[:, None] - ev[None]) / density.width) ** 2).sum(axis=1) / (
        n * density.width * math.sqrt(2 * math.pi))
    l1 = float(np.sum(np.abs(density.values - exact_density)[:-1] * np.diff(density.grid)))
    assert l1 < 0.1, l1
    # the support: Ritz values lie in [λmin, λmax] and reach both ends; the grid covers them
    assert ev[0] - 1e-10 <= lo and hi <= ev[-1] + 1e-10
    assert hi == pytest.approx(ev[-1], rel=1e-9)
    assert lo == pytest.approx(ev[0], abs=1e-6 * (ev[-1] - ev[0]))
    assert density.grid[0] < ev[0] and density.grid[-1] > ev[-1]
    assert result.trace.trace == pytest.approx(n * quad.moment(1))


def test_top_eigenvalues_and_group_blocks_match_eigvalsh(case: Case) -> None:
    before = case.op.hvps
    result = hessian_spectrum(case.op, theta=case.theta, probes=2, steps=10, top=5, groups=case.groups,
                              tol=1e-10, max_iter=case.n, seed=0)
    assert result.hvps == case.op.hvps - before > 2 * 10
    np.testing.assert_allclose(result.top, case.eigenvalues[::-1][:5], rtol=1e-8)
    assert result.top_converged
    assert [g.name for g in result.groups] == ["0", "2"]
    for g in result.groups:
        index = case.groups[g.name]
        block = torch.linalg.eigvalsh(case.hessian[index][:, index])
        assert g.size == index.numel() == (176 if g.name == "0" else 68)
        assert g.converged
        assert g.lam_max == pytest.approx(float(block[-1]), rel=1e-8)
        assert g.lam_min == pytest.approx(float(block[0]), abs=1e-8 * float(block.abs().max()))
        assert g.lam_max < case.eigenvalues[-1]  # a block's λmax is at most H's (Cauchy interlacing)


def test_module_groups() -> None:
    groups = module_groups(["scale", "features.0.weight", "features.0.bias", "head.weight", "scale2"], [1, 6, 2, 3, 2])
    assert list(groups) == ["(model)", "features.0", "head"]
    assert groups["(model)"].tolist() == [0, 12, 13]
    assert groups["features.0"].tolist() == list(range(1, 9))
    assert groups["head"].tolist() == [9, 10, 11]


def test_degenerate_operators_and_arguments() -> None:
    """An identity breaks down after one step: the restarted nodes get weight 0, the density sits at 1."""
    quad = lanczos_quadrature(lambda v: v, probes=2, steps=8, n=20)
    np.testing.assert_allclose(quad.moments(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(quad.moments(2), 1.0, rtol=1e-12)
    density = quad.density()
    assert density.width == pytest.approx(1e-4)  # 1 % of a range of at least 1 % of |λ| = 1
    assert density.grid[int(np.argmax(density.values))] == pytest.approx(1.0, abs=2 * density.width)
    zero = lanczos_quadrature(lambda v: 0 * v, probes=1, steps=3, n=5)
    assert np.all(zero.nodes == 0) and smoothed_density(zero.nodes, zero.weights).width == 0.01
    small = lanczos_quadrature(lambda v: torch.arange(1.0, 4.0, dtype=torch.float64) * v, probes=1, steps=10, n=3)
    assert small.steps == 3  # at most n steps: the rule is then the exact spectrum
    np.testing.assert_allclose(small.nodes[0], [1.0, 2.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(small.weights[0], 1 / 3, atol=1e-12)  # Rademacher: equal weight on each
    run = lanczos(lambda v: 2 * v, 4, 3, which="fixed", start=torch.ones(4))
    assert run.iterations == 3 and run.beta[0] == 0.0  # a breakdown at once, then restarts: all 3 steps
    torch.testing.assert_close(run.basis[0], torch.full((4,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="start must be"):
        lanczos(lambda v: v, 4, 3, start=torch.zeros(4))
    with pytest.raises(ValueError, match="distribution"):
        next(probe_vectors(4, 1, distribution="uniform"))
    with pytest.raises(ValueError, match="nodes and weights"):
        smoothed_density(np.zeros((2, 3)), np.zeros((3, 2)))


def test_fixed_lanczos_runs_every_step(case: Case) -> None:
    """``which="fixed"`` never stops on convergence (an extremes run at a loose tol would)."""
    bound = case.op.at(case.theta)
    assert lanczos(bound, case.n, 40, tol=0.5, which="extremes").iterations < 40
    assert lanczos(bound, case.n, 40, tol=0.5, which="fixed").iterations == 40


def test_probes_are_seeded(case: Case) -> None:
    a = lanczos_quadrature(case.op, probes=2, steps=5, seed=3, theta=case.theta)
    b = lanczos_quadrature(case.op, probes=2, steps=5, seed=3, theta=case.theta)
    c = lanczos_quadrature(case.op, probes=2, steps=5, seed=4, theta=case.theta)
    assert np.array_equal(a.nodes, b.nodes) and np.array_equal(a.weights, b.weights)
    assert not np.array_equal(a.nodes, c.nodes)


# ---------------------------------------------------------------------------
# a job writes the spectrum; the reader, info and plot read it

F64 = 'dtype = "float64"'
MLP = f'factory = "mpiland.demo:digits_mlp"\nkwargs = {{ hidden = 4, depth = 1 }}\n{F64}'
DATA = 'splits = ["test"]\nsubset = 100\nbatch_size = 40'


def job_hessian(job, state: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The exact Hessian of the job's mean loss at its model's θ (or at ``state``)."""
    model = build_model(job.model)
    if state is not None:
        model.load_state_dict(state)
    split = load_split(job.data, job.data.splits[0])
    return exact_hessian(model, split.inputs, split.targets)


@pytest.fixture(scope="module")
def origin_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor, object]:
    tmp = tmp_path_factory.mktemp("spectrum")
    path = write_job(tmp, model=MLP, data=DATA, grid="x = [-0.5, 0.5, 3]",
                     extra='[hessian]\nspectrum = "origin"\nspectrum_probes = 32\nspectrum_top = 3\ntol = 1e-8\n'
                           'max_iter = 310\ndtype = "float64"\ntrace_samples = 200\n')
    job = load_job(path)
    summary = run_job(job)
    return summary.path, job_hessian(job), job


def test_a_job_stores_the_spectrum_of_the_exact_hessian(origin_file) -> None:
    path, hessian, job = origin_file
    ev = torch.linalg.eigvalsh(hessian).numpy()
    n = ev.size
    with h5py.File(path, "r") as f:
        g = f["spectrum"]
        assert list(g) == ["origin"]
        o = g["origin"]
        assert o["nodes"].shape == o["weights"].shape == (32, 60)
        assert o["grid"].shape == o["density"].shape == (1000,)
        assert o.attrs["split"] == "test" and o.attrs["n"] == n == 310
        assert o.attrs["probes"] == 32 and o.attrs["steps"] == 60
    surf = ml.open(path)
    s = surf.spectrum["origin"]
    assert s.label == "origin" and s.coordinates.tolist() == [0.0]
    np.testing.assert_allclose(s.top, ev[::-1][:3], rtol=1e-7)
    assert s.top_converged
    # λmax per module: the blocks of digits_mlp's Linear layers "1" (64·4 + 4) and "3" (4·10 + 10)
    assert s.groups == ["1", "3"] and s.group_size.tolist() == [260, 50]
    offsets = {"1": range(0, 260), "3": range(260, 310)}
    for name, lam in s.group_lam_max().items():
        index = torch.tensor(list(offsets[name]))
        assert lam == pytest.approx(float(torch.linalg.eigvalsh(hessian[index][:, index])[-1]), rel=1e-7)
    # moments against the exact Hessian (4 standard errors of the 32 probes)
    for power, exact in ((1, ev.mean()), (2, (ev**2).mean())):
        per_probe = (s.weights * s.nodes**power).sum(axis=1)
        assert abs(s.moment(power) - exact) <= 4 * per_probe.std(ddof=1) / math.sqrt(32)
    assert s.grid[0] <= ev[0] and s.grid[-1] >= ev[-1]
    assert s.support[1] == pytest.approx(ev[-1], rel=1e-8)
    # the quadrature's trace and the file's Hutchinson trace: independent probes, consistent estimates
    exact = float(ev.sum())
    hutch, hutch_se = float(surf.attrs["test_hess_trace"]), float(surf.attrs["test_hess_trace_stderr"])
    assert abs(s.trace - hutch) <= 4 * math.hypot(s.trace_stderr, hutch_se)
    assert abs(s.trace - exact) <= 4 * s.trace_stderr and abs(hutch - exact) <= 4 * hutch_se
    assert s.trace != hutch  # other probes than Hutchinson's (seed + PROBE_SEED_OFFSET)
    op_trace = hutchinson_trace(lambda v: hessian @ v, n, samples=200, seed=job.hessian.seed)
    assert hutch == pytest.approx(op_trace.trace, rel=1e-9)
    assert PROBE_SEED_OFFSET != 0


def test_info_and_plot_of_the_spectrum(origin_file, tmp_path: Path) -> None:
    path, hessian, _ = origin_file
    ev = torch.linalg.eigvalsh(hessian).numpy()
    proc = cli("info", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)["spectrum"]["origin"]
    np.testing.assert_allclose(info["top"], ev[::-1][:3], rtol=1e-7)
    assert info["support"][0] <= info["support"][1] == pytest.approx(ev[-1], rel=1e-8)
    assert [g["name"] for g in info["groups"]] == ["1", "3"] and info["groups"][0]["lam_max"] > 0
    text = format_summary(summarize(path))
    assert "spectrum" in text and "λmax by group" in text and f"{ev[-1]:.4g}" in text
    written = plot_surface(path, kind="spectrum", out=tmp_path)
    assert [p.name for p in written] == ["surface_spectrum.png"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and written[0].stat().st_size > 10_000
    fig = render(load_surface(path), "spectrum")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert fig.axes[0].get_yscale() == "log"
    assert len(fig.axes[1].patches) == 2  # one bar per parameter group
    names = [p.name for p in plot_surface(path, kind="all", out=tmp_path / "all")]
    assert names == ["surface_curve.png", "surface_spectrum.png"]
    assert ml.open(path).plot("spectrum").axes[0].get_yscale() == "log"
    drawn = cli("plot", str(path), "--kind", "spectrum", "--out", str(tmp_path / "cli"))
    assert drawn.returncode == 0, drawn.stderr
    assert (tmp_path / "cli" / "surface_spectrum.png").exists()


def test_a_file_without_a_spectrum_is_refused_by_the_spectrum_plot(tmp_path: Path) -> None:
    x = np.linspace(-1, 1, 5)
    path = write_surface(tmp_path / "plain.h5", x, None, {"test_loss": x**2}, done=np.ones(5))
    surf = load_surface(path)
    assert surf.spectrum is None and summarize(path)["spectrum"] is None
    with pytest.raises(SurfaceFileError, match=r"has no Hessian spectrum to plot; run its job with hessian\.spectrum"):
        plot_surface(path, kind="spectrum")
    with pytest.raises(SurfaceFileError, match="has no Hessian spectrum"):
        render(surf, "spectrum")
    assert [p.name for p in plot_surface(path, kind="all", out=tmp_path)] == ["plain_curve.png"]


def test_a_damaged_spectrum_group_is_reported(origin_file, tmp_path: Path) -> None:
    path = tmp_path / "damaged.h5"
    path.write_bytes(origin_file[0].read_bytes())
    with h5py.File(path, "r+") as f:
        del f["spectrum/origin/weights"]
        f["spectrum/origin/weights"] = np.zeros((3, 2))
    with pytest.raises(SurfaceFileError, match="spectrum/origin: nodes .* and weights .* differ.*damaged"):
        load_surface(path)


def test_spectra_at_the_models_of_a_path(tmp_path: Path) -> None:
    """``"models"``: the spectrum at B (t = 1 of A + t·(B − A)) is that of B's exact Hessian."""
    states = []
    for seed, name in ((11, "a.pt"), (12, "b.pt")):
        torch.manual_seed(seed)
        state = build_model(load_job(write_job(tmp_path, model=MLP)).model).state_dict()
        state = {k: v + 0.3 * torch.randn_like(v) for k, v in state.items()}
        torch.save(state, tmp_path / name)
        states.append(state)
    path = write_job(tmp_path, model=MLP, data=DATA, grid="x = [0.0, 1.0, 2]",
                     directions=f'kind = "interpolation"\nmodels = ["{tmp_path / "a.pt"}", "{tmp_path / "b.pt"}"]',
                     extra='[hessian]\nspectrum = "models"\nspectrum_probes = 2\nspectrum_steps = 20\n'
                           'spectrum_top = 2\ntol = 1e-8\nmax_iter = 310\ndtype = "float64"\ntrace_samples = 0\n')
    job = load_job(path)
    surf = ml.open(run_job(job).path)
    assert surf.spectrum is not None and list(surf.spectrum) == ["origin", "model_0", "model_1"]
    origin, a, b = surf.spectrum.values()
    assert (a.label, b.label) == ("a", "b") and b.coordinates.tolist() == [1.0]
    assert np.array_equal(a.nodes, origin.nodes)  # model A is the origin of the path
    for s, state in ((a, states[0]), (b, states[1])):
        ev = torch.linalg.eigvalsh(job_hessian(job, state)).numpy()
        # the path's basis B − A is float32, so the engine's B is B to that rounding (~1e-8 relative)
        np.testing.assert_allclose(s.top, ev[::-1][:2], rtol=1e-6)
        slack = 1e-6 * (ev[-1] - ev[0])
        assert ev[0] - slack <= s.support[0] and s.support[1] <= ev[-1] + slack
    assert abs(b.top[0] - a.top[0]) > 1e-3 * abs(a.top[0])  # two different points
    text = format_summary(summarize(surf))
    assert "model b at x=1" in text
    legend = render(surf, "spectrum").axes[0].get_legend()
    assert [t.get_text().split(":")[0] for t in legend.get_texts()] == ["model a (origin)", "top 2 eigenvalues",
                                                                        "model b"]
    with h5py.File(surf.path, "r") as f:
        assert "test_hess_trace" not in f.attrs and "spectrum" not in f.attrs


def test_writer_round_trip_keeps_every_member(origin_file, tmp_path: Path) -> None:
    """The reader's record written again (writer.write_spectrum) reads back the same."""
    s = load_surface(origin_file[0]).spectrum
    assert s is not None
    other = replace(s["origin"], label="copy", groups=[], group_size=np.zeros(0), group_max=np.zeros(0),
                    group_min=np.zeros(0))
    path = tmp_path / "round.h5"
    path.write_bytes(origin_file[0].read_bytes())
    with h5py.File(path, "r+") as f:
        del f["spectrum"]
        write_spectrum(f, {"origin": s["origin"], "model_0": other})
    back = load_surface(path).spectrum
    assert back is not None and list(back) == ["origin", "model_0"]
    for name in ("nodes", "weights", "grid", "density", "top", "group_max", "group_min", "group_size"):
        assert np.array_equal(getattr(back["origin"], name), getattr(s["origin"], name)), name
    assert back["origin"].groups == s["origin"].groups and back["model_0"].groups == []
    assert back["origin"].trace == s["origin"].trace and back["origin"].width == s["origin"].width
