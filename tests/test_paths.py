"""Direction kinds beyond random: model paths, planes, bilinear patches, curves, PCA, files, BN recompute."""

import copy

import h5py
import numpy as np
import pytest
import torch

from mpiland.data import Split, digits_split
from mpiland.demo import digits_cnn
from mpiland.directions import make_directions
from mpiland.layout import ParamLayout, state_vector
from mpiland.engine import Evaluator
from mpiland.errors import CheckpointError, GridError, JobFileError, ModelError
from mpiland.jobfile import load_job
from mpiland.spec import DirectionsSpec, LossSpec
from mpiland.run import run_job
from mpiland.trajectory import pca

from util import plain_metrics, write_job


@pytest.fixture(scope="module")
def split():
    x, y = digits_split("test")
    return Split("test", x[:150], y[:150])


def net(seed, batchnorm=False):
    torch.manual_seed(seed)
    m = digits_cnn(channels=4, hidden=16, batchnorm=batchnorm)
    if batchnorm:
        with torch.no_grad():
            m[1].running_mean.uniform_(-0.3, 0.3)
            m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def save(tmp_path, models):
    paths = []
    for i, m in enumerate(models):
        p = tmp_path / f"m{i}.pt"
        torch.save(m.state_dict(), p)
        paths.append(str(p))
    return paths


def evaluator(model, d, split, **kw):
    return Evaluator(copy.deepcopy(model), d, [split], LossSpec(), torch.device("cpu"), batch_size=64, **kw)


def loss_of(model, split):
    return plain_metrics(copy.deepcopy(model), split.inputs, split.targets)[0]


def spec(kind, paths, **kw):
    return DirectionsSpec(kind=kind, models=tuple(paths), norm="none", ignore="none", **kw)


def test_interpolation_values_at_the_models_are_their_losses(tmp_path, split):
    a, b = net(1), net(2)
    paths = save(tmp_path, [a, b])
    d = make_directions(net(0), spec("interpolation", paths), 1)
    ev = evaluator(a, d, split)
    values, _ = ev.evaluate_points(np.array([[0.0], [1.0], [-0.5]]))
    assert values["test_loss"][0] == pytest.approx(loss_of(a, split), rel=1e-5)
    assert values["test_loss"][1] == pytest.approx(loss_of(b, split), rel=1e-5)
    extrap = copy.deepcopy(a)
    with torch.no_grad():
        for pe, pa, pb in zip(extrap.parameters(), a.parameters(), b.parameters()):
            pe.copy_(1.5 * pa - 0.5 * pb)
    assert values["test_loss"][2] == pytest.approx(loss_of(extrap, split), rel=1e-5)
    assert [label for label, _ in d.models] == ["m0", "m1"] and d.endpoints == (0.0, 1.0)


def test_plane_coordinates_of_the_three_models_are_exact(tmp_path, split):
    models = [net(1), net(2), net(3)]
    paths = save(tmp_path, models)
    d = make_directions(net(0), spec("plane", paths), 2)
    u, v = d.vectors.double()
    assert float(u @ u) == pytest.approx(1, abs=1e-6) and float(v @ v) == pytest.approx(1, abs=1e-6)
    assert abs(float(u @ v)) < 1e-6
    layout = ParamLayout.from_model(models[0])
    thetas = [state_vector(m, layout) for m in models]
    positions = np.array([pos for _, pos in d.models])
    assert positions[0].tolist() == [0.0, 0.0] and positions[1][1] == 0.0
    for theta, pos in zip(thetas, positions):
        rebuilt = d.origin + d.vectors.double().t() @ torch.as_tensor(pos)
        torch.testing.assert_close(rebuilt, theta, atol=1e-5, rtol=1e-5)
    values, _ = evaluator(models[0], d, split).evaluate_points(positions)
    for got, m in zip(values["test_loss"], models):
        assert got == pytest.approx(loss_of(m, split), rel=1e-5)


def test_bilinear_corners_exact_and_interior_matches_formula(tmp_path, split):
    models = [net(1), net(2), net(3), net(4)]
    paths = save(tmp_path, models)
    d = make_directions(net(0), spec("bilinear", paths), 2)
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.3, 0.6]], dtype=float)
    values, _ = evaluator(models[0], d, split).evaluate_points(corners)
    for got, m in zip(values["test_loss"][:4], models):
        assert got == pytest.approx(loss_of(m, split), rel=1e-5)
    a, b = 0.3, 0.6
    w = [(1 - a) * (1 - b), a * (1 - b), (1 - a) * b, a * b]
    mixed = copy.deepcopy(models[0])
    with torch.no_grad():
        for ps in zip(mixed.parameters(), *(m.parameters() for m in models)):
            ps[0].copy_(sum(wi * p for wi, p in zip(w, ps[1:])))
    assert values["test_loss"][4] == pytest.approx(loss_of(mixed, split), rel=1e-5)


def combine(models, weights):
    out = copy.deepcopy(models[0])
    with torch.no_grad():
        for ps in zip(out.parameters(), *(m.parameters() for m in models)):
            ps[0].copy_(sum(w * p for w, p in zip(weights, ps[1:])))
    return out


def test_bezier_and_polychain_follow_their_formulas_with_the_line_alongside(tmp_path, split):
    models = [net(1), net(2), net(3)]
    paths = save(tmp_path, models)
    t = np.array([[0.0], [0.25], [0.5], [1.0], [1.2]])
    bez = make_directions(net(0), spec("bezier", paths), 1)
    chain = make_directions(net(0), spec("polychain", paths), 1)
    vb, _ = evaluator(models[0], bez, split).evaluate_points(t)
    vc, _ = evaluator(models[0], chain, split).evaluate_points(t)
    assert set(vb) == {"test_loss", "test_acc", "test_loss_stderr", "line_test_loss", "line_test_acc",
                       "line_test_loss_stderr"}
    for i, ti in enumerate(t[:, 0]):
        bern = [(1 - ti) ** 2, 2 * ti * (1 - ti), ti ** 2]
        assert vb["test_loss"][i] == pytest.approx(loss_of(combine(models, bern), split), rel=1e-5)
        s = min(max(int(ti * 2), 0), 1)
        frac = ti * 2 - s
        hat = [0.0, 0.0, 0.0]
        hat[s], hat[s + 1] = 1 - frac, frac
        assert vc["test_loss"][i] == pytest.approx(loss_of(combine(models, hat), split), rel=1e-5)
        line = loss_of(combine([models[0], models[2]], [1 - ti, ti]), split)
        assert vb["line_test_loss"][i] == pytest.approx(line, rel=1e-5)
        assert vc["line_test_loss"][i] == pytest.approx(line, rel=1e-5)
    assert vc["test_loss"][2] == pytest.approx(loss_of(models[1], split), rel=1e-5)  # the bend is on the chain
    assert [pos[0] for _, pos in chain.models] == [0.0, 0.5, 1.0]
    no_line = make_directions(net(0), spec("bezier", paths, compare_line=False), 1)
    assert no_line.variants == ("",)


def test_pca_matches_numpy_svd_and_is_orthonormal():
    gen = torch.Generator().manual_seed(0)
    diffs = torch.randn(7, 40, generator=gen, dtype=torch.float64) * torch.linspace(3, 0.1, 40, dtype=torch.float64)
    result = pca(diffs, 2)
    comps = result.components
    torch.testing.assert_close(comps @ comps.t(), torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)
    centred = diffs.numpy() - diffs.numpy().mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    for k in range(2):
        assert abs(float(np.dot(comps[k].numpy(), vt[k]))) == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(result.explained_variance_ratio, s[:2] ** 2 / (s ** 2).sum(), rtol=1e-9)
    np.testing.assert_allclose(result.coordinates, diffs.numpy() @ comps.numpy().T, rtol=1e-9)
    assert (result.coordinates[0] <= 0).all()


def test_pca_of_a_straight_line_trajectory_is_a_straight_evenly_spaced_line():
    step = torch.randn(30, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    final = torch.zeros(30, dtype=torch.float64)
    thetas = [final + (i - 5) * step for i in range(6)]
    result = pca(torch.stack([t - final for t in thetas]), 1)
    coords = result.coordinates[:, 0]
    np.testing.assert_allclose(np.diff(coords), np.full(5, float(step.norm())), rtol=1e-9)
    assert result.explained_variance_ratio[0] == pytest.approx(1.0)
    with pytest.raises(CheckpointError, match="spans 1 direction"):
        pca(torch.stack([t - final for t in thetas]), 2)


def test_pca_job_stores_trajectory_and_covers_it(tmp_path):
    models = [net(s) for s in range(5)]
    paths = save(tmp_path, models)
    job = write_job(tmp_path, grid="x = 6\ny = 5",
                    model=f'factory = "mpiland.demo:digits_cnn"\nkwargs = {{ channels = 4, hidden = 16, '
                          f'batchnorm = false }}\ncheckpoint = "{paths[-1]}"',
                    directions=f'kind = "pca"\nmodels = ["{tmp_path}/m*.pt"]')
    summary = run_job(load_job(job))
    with h5py.File(summary.path, "r") as f:
        coords = f["trajectory/coordinates"][...]
        assert coords.shape == (5, 2)
        np.testing.assert_allclose(coords[-1], [0, 0], atol=1e-5)
        x, y = f["xcoordinates"][...], f["ycoordinates"][...]
        assert x.min() < coords[:, 0].min() and x.max() > coords[:, 0].max()
        assert y.min() < coords[:, 1].min() and y.max() > coords[:, 1].max()
        ratio = f["trajectory"].attrs["explained_variance_ratio"]
        assert 0 < ratio[1] <= ratio[0] < 1
        assert list(f["trajectory"].attrs["labels"]) == ["m0", "m1", "m2", "m3", "m4"]
        assert f["done"][...].all()


def test_recompute_bn_differs_from_eval_and_equals_a_hand_computation(tmp_path, split):
    a, b = net(1, batchnorm=True), net(2, batchnorm=True)
    paths = save(tmp_path, [a, b])
    d = make_directions(a, spec("interpolation", paths), 1)
    train_x, _ = digits_split("train")
    bn_x = train_x[:96]
    plain = evaluator(a, d, split)
    recompute = evaluator(a, d, split, bn_data=bn_x)
    t = np.array([[0.5]])
    v_eval = plain.evaluate_points(t)[0]["test_loss"][0]
    v_rec = recompute.evaluate_points(t)[0]["test_loss"][0]
    mid = combine([a, b], [0.5, 0.5])
    mid.load_state_dict({**mid.state_dict(), **{k: v for k, v in a.state_dict().items() if "running" in k}})
    assert v_eval == pytest.approx(loss_of(mid, split), rel=1e-5)
    bn = mid[1]
    with torch.no_grad():
        h = mid[0](bn_x[:64]), mid[0](bn_x[64:])
        mean = sum(x.mean(dim=(0, 2, 3)) for x in h) / 2
        var = sum(x.var(dim=(0, 2, 3), unbiased=True) for x in h) / 2
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    assert v_rec == pytest.approx(loss_of(mid, split), rel=1e-5)
    assert abs(v_rec - v_eval) > 1e-3


def test_states_interpolates_running_statistics(tmp_path, split):
    a, b = net(1, batchnorm=True), net(2, batchnorm=True)
    paths = save(tmp_path, [a, b])
    with_states = make_directions(a, spec("interpolation", paths, states=True), 1)
    assert with_states.layout.states and "1.running_mean" in with_states.layout.names
    got = evaluator(a, with_states, split).evaluate_points(np.array([[1.0]]))[0]["test_loss"][0]
    assert got == pytest.approx(loss_of(b, split), rel=1e-5)
    params_only = make_directions(a, spec("interpolation", paths), 1)
    other = evaluator(a, params_only, split).evaluate_points(np.array([[1.0]]))[0]["test_loss"][0]
    assert abs(other - got) > 1e-4  # B's weights with A's statistics


def reference_file(path, model, vectors):
    """A direction file in the loss-landscape tool's layout: xdirection/ydirection, one dataset per parameter."""
    layout = ParamLayout.from_model(model)
    with h5py.File(path, "w") as f:
        for group, vec in zip(("xdirection", "ydirection"), vectors):
            g = f.create_group(group)
            for i, part in enumerate(layout.views(vec)):
                g.create_dataset(str(i), data=part.numpy())


def grid_values(path):
    with h5py.File(path, "r") as f:
        return f["test_loss"][...], f["done"][...]


def test_reference_and_own_direction_files_give_the_same_surface(tmp_path):
    model = 'factory = "mpiland.demo:digits_mlp"\nkwargs = { hidden = 16 }'
    grid = "x = [-1.0, 1.0, 4]\ny = [-1.0, 1.0, 3]"
    first = run_job(load_job(write_job(tmp_path, model=model, grid=grid, output="random.h5", name="r.toml")))
    with h5py.File(first.path, "r") as f:
        vectors = [torch.from_numpy(f["directions/x"][...]), torch.from_numpy(f["directions/y"][...])]
    torch.manual_seed(0)
    from mpiland.demo import digits_mlp
    reference_file(tmp_path / "ref_dirs.h5", digits_mlp(hidden=16), vectors)
    from_ref = run_job(load_job(write_job(tmp_path, model=model, grid=grid, output="ref.h5", name="f.toml",
                                          directions=f'kind = "file"\nfile = "{tmp_path}/ref_dirs.h5"')))
    from_own = run_job(load_job(write_job(tmp_path, model=model, grid=grid, output="own.h5", name="o.toml",
                                          directions=f'kind = "file"\nfile = "{first.path}"')))
    ref, _ = grid_values(first.path)
    for other in (from_ref.path, from_own.path):
        got, done = grid_values(other)
        assert done.all()
        np.testing.assert_array_equal(got, ref)


def test_state_dict_direction_files(tmp_path, split):
    model = net(1)
    layout = ParamLayout.from_model(model)
    gen = torch.Generator().manual_seed(4)
    files = []
    vecs = []
    for axis in "xy":
        vec = torch.randn(layout.numel, generator=gen, dtype=torch.float64)
        vecs.append(vec)
        sd = dict(zip(layout.names, (v.float() for v in layout.views(vec))))
        torch.save(sd, tmp_path / f"{axis}.pt")
        files.append(str(tmp_path / f"{axis}.pt"))
    d = make_directions(model, DirectionsSpec(kind="file", file=tuple(files), norm="none", ignore="none"), 2)
    torch.testing.assert_close(d.vectors, torch.stack(vecs).float())
    normed = make_directions(model, DirectionsSpec(kind="file", file=tuple(files), norm="filter", ignore="biasbn"), 2)
    bias = layout.names.index("0.bias")
    assert torch.count_nonzero(layout.views(normed.vectors[0])[bias]) == 0
    torch.save({"other.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="has no direction for"):
        make_directions(model, DirectionsSpec(kind="file", file=(str(tmp_path / "bad.pt"),), norm="none"), 1)


@pytest.mark.parametrize("directions, grid, error, fragment", [
    ('kind = "interpolation"\nmodels = ["a.pt"]', "x = [0.0, 1.0, 3]", JobFileError, "exactly 2"),
    ('kind = "interpolation"\nmodels = ["a.pt", "b.pt"]', "x = [0.0, 1.0, 3]\ny = [0.0, 1.0, 3]", JobFileError,
     "1D path; remove grid.y"),
    ('kind = "plane"\nmodels = ["a.pt", "b.pt", "c.pt"]', "x = [0.0, 1.0, 3]", JobFileError, "add grid.y"),
    ('kind = "bilinear"\nmodels = ["a.pt", "b.pt", "c.pt"]', "x = 3\ny = 3", JobFileError, "exactly 4"),
    ('kind = "interpolation"\nmodels = ["a.pt", "b.pt"]\nnorm = "filter"', "x = 5", JobFileError,
     "defined by its models"),
    ('seed = 1', "x = 5", GridError, "need [min, max, num]"),
    ('kind = "file"', "x = [0.0, 1.0, 3]", JobFileError, "needs a file"),
    ('models = ["a.pt"]', "x = [0.0, 1.0, 3]", JobFileError, "is for path kinds"),
])
def test_job_errors_for_paths(tmp_path, directions, grid, error, fragment):
    with pytest.raises(error, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_job(write_job(tmp_path, directions=directions, grid=grid))


def test_missing_and_collinear_models_are_user_errors(tmp_path, split):
    a, b = net(1), net(2)
    paths = save(tmp_path, [a, b])
    with pytest.raises(CheckpointError, match="matches no file"):
        make_directions(a, spec("pca", [str(tmp_path / "nothing*.pt")]), 2)
    with pytest.raises(CheckpointError, match="file not found"):
        make_directions(a, spec("interpolation", [paths[0], str(tmp_path / "missing.pt")]), 1)
    mid = combine([a, b], [0.5, 0.5])
    torch.save(mid.state_dict(), tmp_path / "mid.pt")
    with pytest.raises(JobFileError, match="lie on one line"):
        make_directions(a, spec("plane", [paths[0], paths[1], str(tmp_path / "mid.pt")]), 2)
    with pytest.raises(JobFileError, match="lists a checkpoint twice"):
        make_directions(a, spec("interpolation", [paths[0], paths[0]]), 1)
    torch.save(a.state_dict(), tmp_path / "copy.pt")
    with pytest.raises(JobFileError, match="same model"):
        make_directions(a, spec("interpolation", [paths[0], str(tmp_path / "copy.pt")]), 1)


def test_changing_a_model_file_is_another_job(tmp_path):
    a, b = net(1), net(2)
    paths = save(tmp_path, [a, b])
    model = 'factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 16, batchnorm = false }'
    job = write_job(tmp_path, model=model, grid="x = 5",
                    directions=f'kind = "interpolation"\nmodels = ["{paths[0]}", "{paths[1]}"]')
    first = run_job(load_job(job))
    with h5py.File(first.path, "r") as f:
        np.testing.assert_allclose(f["xcoordinates"][...], [-0.25, 0.125, 0.5, 0.875, 1.25])
        np.testing.assert_array_equal(f["models/coordinates"][...], [[0.0], [1.0]])
        assert list(f["models"].attrs["labels"]) == ["m0", "m1"]
        np.testing.assert_array_equal(f.attrs["endpoints"], [0.0, 1.0])
        assert "test_loss_barrier" in f.attrs and f["directions"].attrs["coefficient_map"] == "axes"
    assert run_job(load_job(job)).points_evaluated == 0  # same job: resumed, nothing left
    torch.save(net(3).state_dict(), paths[1])
    from mpiland.errors import SurfaceFileError
    with pytest.raises(SurfaceFileError, match="different job"):
        run_job(load_job(job))
