"""Permutation alignment by weight matching (mpiland.rebasin) and ``directions.align`` for model paths."""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mpiland as ml
from mpiland.rebasin import Alignment, align, aligned_state, match_states, permutation_spec, weight_matching
from mpiland.data import digits_split
from mpiland.demo import BasicBlock, digits_cnn, digits_mlp
from mpiland.directions import Directions, make_directions
from mpiland.errors import JobFileError, ModelError
from mpiland.jobfile import load_job
from mpiland.layout import ParamLayout, state_vector
from mpiland.run import run_job
from mpiland.spec import DirectionsSpec

from util import cli, write_job

X_DIGITS = digits_split("test")[0][:64]


# -- models --------------------------------------------------------------------------------------------------


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm parameters and running statistics, so a wrong permutation of them shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
    return model


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return digits_mlp(hidden=24).eval()


def cnn(seed: int) -> nn.Module:
    """conv-BN-ReLU, conv-ReLU, max-pool, Flatten, Linear, ReLU, Linear (8 channels of 4×4 → 128 features)."""
    torch.manual_seed(seed)
    return randomise_bn(digits_cnn(channels=4, hidden=16, batchnorm=True), seed).eval()


class SmallResNet(nn.Module):
    """A stem, an identity-shortcut block, a projection-shortcut block, global average pooling, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.b1 = BasicBlock(4, 4, 1)
        self.b2 = BasicBlock(4, 8, 2)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.b2(self.b1(self.stem(x)))
        return self.head(out.mean(dim=(2, 3)))


class ResMLP(nn.Module):
    """Residual MLP: one square layer whose input and output are the same (tied) space, and a bottleneck."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(64, 16)
        self.square = nn.Linear(16, 16)
        self.up = nn.Linear(16, 32)
        self.norm = nn.LayerNorm(32)
        self.down = nn.Linear(32, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(torch.flatten(x, 1)))
        h = F.relu(h + self.square(h))
        h = h + self.down(F.gelu(self.norm(self.up(h))))
        return self.head(h)


def resnet(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return randomise_bn(SmallResNet(), seed).eval()


def resmlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return ResMLP().eval()


FACTORIES = {"mlp": mlp, "cnn": cnn, "resnet": resnet, "resmlp": resmlp}
# The permutation groups each architecture has: (name, units).
GROUPS = {
    "mlp": [("1", 24), ("3", 24)],
    "cnn": [("0", 4), ("3", 8), ("7", 16)],
    # The stem's channels run through b1 (identity shortcut); b2's output is tied to its projection shortcut.
    "resnet": [("stem.0", 4), ("b1.conv1", 4), ("b2.conv1", 8), ("b2.conv2", 8)],
    # inp's space runs through both residual additions (square's input and output, down's output).
    "resmlp": [("inp", 16), ("up", 32)],
}


def outputs(model: nn.Module, x: torch.Tensor = X_DIGITS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def loaded(factory, state: dict[str, torch.Tensor]) -> nn.Module:
    m = factory(0)
    m.load_state_dict(state)
    return m.eval()


def random_alignment(model: nn.Module, seed: int) -> Alignment:
    """Random permutations of every group (none the identity)."""
    spec = permutation_spec(model)
    gen = torch.Generator().manual_seed(seed)
    perms = {}
    for g in spec.groups:
        perm = torch.arange(g.size)
        while torch.equal(perm, torch.arange(g.size)):
            perm = torch.randperm(g.size, generator=gen)
        perms[g.name] = perm
    return Alignment(spec, perms)


def hand_permuted_cnn(model: nn.Module, seed: int) -> nn.Module:
    """The CNN with its hidden units permuted by hand (independently of mpiland.align)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    c1, c2, h = model[0].out_channels, model[3].out_channels, model[7].out_features
    p1, p2, p3 = (torch.randperm(n, generator=gen) for n in (c1, c2, h))
    s = {k: v.clone() for k, v in model.state_dict().items()}
    t = dict(s)
    t["0.weight"], t["0.bias"] = s["0.weight"][p1], s["0.bias"][p1]
    for k in ("weight", "bias", "running_mean", "running_var"):
        t[f"1.{k}"] = s[f"1.{k}"][p1]
    t["3.weight"], t["3.bias"] = s["3.weight"][p2][:, p1], s["3.bias"][p2]
    blocks = s["7.weight"].view(h, c2, -1)  # Flatten: channel c covers features c·16 … c·16 + 15
    t["7.weight"], t["7.bias"] = blocks[p3][:, p2].reshape(h, -1), s["7.bias"][p3]
    t["9.weight"] = s["9.weight"][:, p3]
    out.load_state_dict(t)
    return out


def hand_permuted_mlp(model: nn.Module, seed: int) -> nn.Module:
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    s = model.state_dict()
    p1, p2 = torch.randperm(s["1.bias"].numel(), generator=gen), torch.randperm(s["3.bias"].numel(), generator=gen)
    out.load_state_dict({"1.weight": s["1.weight"][p1], "1.bias": s["1.bias"][p1],
                         "3.weight": s["3.weight"][p2][:, p1], "3.bias": s["3.bias"][p2],
                         "5.weight": s["5.weight"][:, p2], "5.bias": s["5.bias"]})
    return out


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs")


# -- (a) a permuted copy: the same function, and weight matching finds the permutation -----------------------


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_the_permutation_structure_is_read_from_the_model(arch):
    spec = permutation_spec(FACTORIES[arch](0))
    assert [(g.name, g.size) for g in spec.groups] == GROUPS[arch]


def test_flattened_channels_are_blocks_of_the_linear_layer_features():
    spec = permutation_spec(cnn(0))
    by_name = {g.name: g for g in spec.groups}
    axes = {(ax.key, ax.axis): ax for ax in by_name["3"].axes}
    assert axes[("7.weight", 1)].block == 16 and axes[("3.weight", 0)].block == 1
    first = {(ax.key, ax.axis): ax.parameter for ax in by_name["0"].axes}
    assert first == {("0.weight", 0): True, ("0.bias", 0): True, ("1.weight", 0): True, ("1.bias", 0): True,
                     ("1.running_mean", 0): False, ("1.running_var", 0): False, ("3.weight", 1): True}


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_a_permuted_copy_computes_the_same_function_and_matching_recovers_it(arch):
    factory = FACTORIES[arch]
    model = factory(1)
    permuted = loaded(factory, aligned_state(model, random_alignment(model, seed=5)))
    assert not all(torch.equal(v, permuted.state_dict()[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(outputs(permuted), outputs(model), rtol=1e-5, atol=1e-5)
    alignment = weight_matching(model, permuted)
    assert alignment.converged and alignment.permuted_units > 0
    assert_same_state(aligned_state(permuted, alignment), model.state_dict())


@pytest.mark.parametrize("arch, permute", [("mlp", hand_permuted_mlp), ("cnn", hand_permuted_cnn)])
def test_matching_undoes_a_permutation_made_by_hand(arch, permute):
    model = FACTORIES[arch](2)
    permuted = permute(model, seed=3).eval()
    torch.testing.assert_close(outputs(permuted), outputs(model), rtol=1e-5, atol=1e-5)
    assert_same_state(align(model, permuted), model.state_dict())
    # From state dicts, with the architecture given separately:
    assert_same_state(align(model.state_dict(), permuted.state_dict(), model=FACTORIES[arch](9)), model.state_dict())


def test_the_module_is_callable_as_align():
    a, b = mlp(3), mlp(4)
    assert_same_state(ml.align(a, b, seed=2), align(a, b, seed=2))


# -- (b) two independent models: the same function as B, closer to A -----------------------------------------


def trained(factory, seed: int, steps: int = 30) -> nn.Module:
    """A few SGD steps on digits (one thread: small models train faster so on a shared machine)."""
    model = factory(seed).train()
    x, y = digits_split("train")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(steps):
            idx = torch.randint(0, len(y), (128,), generator=gen)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a if a[k].is_floating_point()) ** 0.5)


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_aligning_independent_models_keeps_b_s_function_and_brings_it_closer(arch):
    factory = FACTORIES[arch]
    a, b = trained(factory, 10), trained(factory, 11)
    alignment = weight_matching(a, b, seed=1)
    state = aligned_state(b, alignment)
    moved = loaded(factory, state)
    torch.testing.assert_close(outputs(moved), outputs(b), rtol=1e-4, atol=1e-5)
    before, after = distance(a.state_dict(), b.state_dict()), distance(a.state_dict(), state)
    assert after < before
    start, end = alignment.objective
    assert end > start
    if arch in ("cnn", "resnet"):  # the step counters stay as they were
        assert state["1.num_batches_tracked" if arch == "cnn" else "stem.1.num_batches_tracked"].item() > 0
        for k, v in b.state_dict().items():
            if k.endswith("num_batches_tracked"):
                assert torch.equal(state[k], v)


def test_matching_is_seeded_and_repeatable():
    a, b = mlp(20), mlp(21)
    first, again = weight_matching(a, b, seed=4), weight_matching(a, b, seed=4)
    assert all(torch.equal(first.perms[k], again.perms[k]) for k in first.perms)
    one = match_states(permutation_spec(a), a.state_dict(), b.state_dict(), max_iter=1)
    assert one.iterations == 1


# -- (c) unsupported layers ----------------------------------------------------------------------------------


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.head(self.attn(h, h, h)[0])


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


class Branching(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


@pytest.mark.parametrize("model, fragment", [
    (Attention(), "layer 'attn' (MultiheadAttention)"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(16, 2)),
     "layer '2' (Conv2d), a grouped convolution (2 groups)"),
    (Concat(), "function cat"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.LayerNorm([4, 6, 6]), nn.Flatten(), nn.Linear(144, 2)),
     "layer '1' (LayerNorm)"),
    (nn.Sequential(nn.Linear(8, 4), nn.Embedding(4, 3)), "layer '1' (Embedding)"),
    (Branching(), "torch.fx cannot trace Branching"),
])
def test_unsupported_layers_are_named(model, fragment):
    with pytest.raises(ModelError, match="align: ") as info:
        permutation_spec(model)
    assert fragment in str(info.value)
    assert "traced" in str(info.value) or "supports Linear, Conv1d/2d/3d" in str(info.value)


def test_unknown_operations_on_unpermuted_tensors_are_fine():
    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 8), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.cat([x, x.flip(1)], dim=1)  # unknown operations on the (unpermuted) input
            return F.log_softmax(self.fc2(F.relu(self.fc1(x))), dim=1)

    spec = permutation_spec(Model())
    assert [(g.name, g.size) for g in spec.groups] == [("fc1", 8)]


def test_other_architectures_are_refused():
    a = mlp(0)
    with pytest.raises(ModelError, match="one architecture"):
        weight_matching(a, digits_mlp(hidden=12))


# -- (d) the caller's models are never changed ----------------------------------------------------------------


class Counting(nn.Module):
    """A forward with a side effect: tracing it on the caller's module would change the module."""

    def __init__(self) -> None:
        super().__init__()
        self.net = digits_cnn(channels=4, hidden=16, batchnorm=True)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x)


def test_the_callers_models_are_unchanged():
    torch.manual_seed(0)
    a, b = Counting().train(), Counting().eval()
    randomise_bn(b, 3)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in (a, b)]
    state_b = b.state_dict()
    aligned = align(a, b)
    spec = permutation_spec(a)
    assert spec.groups
    for m, ref in zip((a, b), before):
        assert_same_state(m.state_dict(), ref)
        assert m.calls == 0
    assert a.training and not b.training
    assert_same_state(state_b, before[1])
    aligned["net.0.weight"].zero_()  # the result shares no storage with B
    assert_same_state(b.state_dict(), before[1])


# -- Directions with per-variant blocks ---------------------------------------------------------------------


def test_variants_use_their_own_blocks_of_the_basis():
    layout = ParamLayout.from_shapes(["w"], [(3,)])
    d = Directions(torch.randn(4, 3), layout, {}, coefficient_map="bezier", blocks=("", "unaligned_"),
                   variants=("", "line_", "unaligned_", "unaligned_line_"))
    t = np.array([[0.25], [1.0]])
    bern = np.stack([2 * t[:, 0] * (1 - t[:, 0]), t[:, 0] ** 2], axis=1)
    np.testing.assert_allclose(d.coefficients(t, ""), np.hstack([bern, np.zeros((2, 2))]))
    np.testing.assert_allclose(d.coefficients(t, "unaligned_"), np.hstack([np.zeros((2, 2)), bern]))
    np.testing.assert_allclose(d.coefficients(t, "line_"), [[0, 0.25, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(d.coefficients(t, "unaligned_line_"), [[0, 0, 0, 0.25], [0, 0, 0, 1]])
    assert d.rows("unaligned_line_") == slice(2, 4) and d.block_size == 2 and d.dims == 4
    with pytest.raises(ValueError, match="unknown variant"):
        Directions(torch.randn(2, 3), layout, {}, variants=("", "other_"))
    with pytest.raises(ValueError, match="equal blocks"):
        Directions(torch.randn(3, 3), layout, {}, blocks=("", "unaligned_"))


# -- (e) directions.align in a job file ---------------------------------------------------------------------

CNN_FACTORY = 'factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 16, batchnorm = true }'


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("align")
    paths = []
    for i in range(4):
        path = tmp / f"m{i}.pt"
        torch.save(trained(cnn, 30 + i).state_dict(), path)
        paths.append(str(path))
    return paths


def _job(tmp_path, kind, paths, align_, name, extra=""):
    models = ", ".join(f'"{p}"' for p in paths)
    directions = f'kind = "{kind}"\nmodels = [{models}]\nstates = true{extra}' + ("\nalign = true" if align_ else "")
    return write_job(tmp_path, model=CNN_FACTORY, grid="x = [0.0, 1.0, 5]", directions=directions,
                     output=f"{name}.h5", name=f"{name}.toml")


def _values(path):
    with h5py.File(path, "r") as f:
        names = [k for k in f if isinstance(f[k], h5py.Dataset) and f[k].shape == (5,) and k.startswith(
            ("test_", "line_", "unaligned_"))]
        values = {k: f[k][...] for k in names}
        return values, dict(f["directions"].attrs), f["models/coordinates"][...], list(f["models"].attrs["labels"])


@pytest.mark.parametrize("kind, n", [("interpolation", 2), ("bezier", 3)])
def test_align_in_a_job_file_evaluates_the_unaligned_path_beside_the_aligned_one(tmp_path, checkpoints, kind, n):
    paths = checkpoints[:n]
    aligned_job = _job(tmp_path, kind, paths, True, "aligned")
    proc = cli("run", str(aligned_job))
    assert proc.returncode == 0, proc.stderr
    plain = run_job(load_job(_job(tmp_path, kind, paths, False, "plain")))
    got, attrs, coords, labels = _values(aligned_job.with_suffix(".h5"))
    ref, ref_attrs, ref_coords, ref_labels = _values(plain.path)
    assert "test_loss" in got and "unaligned_test_loss" in got
    assert set(got) == set(ref) | {f"unaligned_{k}" for k in ref}
    for k, v in ref.items():
        # Every metric of the plain run, prefixed unaligned_. The engine writes a point from the whole basis
        # (aligned and unaligned blocks, zeros for the other block), so the parameters may round differently
        # in the last bit than with the plain run's basis: equal to float32 rounding, not bit for bit.
        np.testing.assert_allclose(got[f"unaligned_{k}"], v, rtol=1e-6, atol=1e-8, err_msg=k)
    assert np.abs(got["test_loss"][1:-1] - ref["test_loss"][1:-1]).max() > 1e-3  # the aligned path is another
    # t = 0 is the first model on both paths; at t = 1 the aligned end is a permutation of the end model
    # (with states = true its BatchNorm statistics are moved too), so it computes the same function.
    np.testing.assert_array_equal(got["test_loss"][0], got["unaligned_test_loss"][0])
    np.testing.assert_allclose(got["test_loss"][-1], got["unaligned_test_loss"][-1], rtol=1e-5)
    np.testing.assert_array_equal(coords, ref_coords)
    assert labels == ref_labels
    records = json.loads(attrs["alignment"])
    assert [r["model"] for r in records] == [f"m{i}" for i in range(1, n)]
    for r in records:
        assert 0 < r["permuted_units"] <= r["units"] == 28
        assert r["distance_after"] < r["distance_before"]
    assert attrs["align"] and "align" not in ref_attrs


def test_the_unaligned_block_is_the_plain_paths_basis_bit_for_bit(checkpoints):
    model = cnn(0)
    for kind, n, dims in (("interpolation", 2, 1), ("plane", 3, 2), ("bilinear", 4, 2), ("polychain", 3, 1)):
        spec = DirectionsSpec(kind=kind, models=tuple(checkpoints[:n]))
        plain = make_directions(model, spec, dims)
        aligned = make_directions(model, DirectionsSpec(kind=kind, models=tuple(checkpoints[:n]), align=True), dims)
        assert aligned.blocks == ("", "unaligned_")
        assert torch.equal(aligned.vectors[aligned.rows("unaligned_")], plain.vectors)
        assert torch.equal(aligned.origin, plain.origin)
        assert not torch.equal(aligned.vectors[aligned.rows("")], plain.vectors)
        coords = np.random.default_rng(0).uniform(-0.5, 1.5, (7, dims))
        for variant in plain.variants:
            got = aligned.coefficients(coords, "unaligned_" + variant)
            np.testing.assert_array_equal(got[:, aligned.rows("unaligned_")], plain.coefficients(coords, variant))
            assert not got[:, aligned.rows("")].any()
        if kind == "plane":
            records = aligned.settings["alignment"]
            np.testing.assert_allclose([r["unaligned_position"] for r in records],
                                       [pos for _, pos in plain.models[1:]])


def test_aligning_a_permuted_copy_gives_a_path_of_no_length(tmp_path, checkpoints):
    model = cnn(0)
    model.load_state_dict(torch.load(checkpoints[0]))
    permuted = hand_permuted_cnn(model, seed=1)
    torch.save(permuted.state_dict(), tmp_path / "perm.pt")
    spec = DirectionsSpec(kind="interpolation", models=(checkpoints[0], str(tmp_path / "perm.pt")), align=True)
    with pytest.raises(JobFileError, match=r"perm.pt' is a permutation of '.*m0.pt' \(the same function\)"):
        make_directions(model, spec, 1)


# -- (f) the Python builders with align=True equal the job-file kinds ---------------------------------------


def _equal_directions(a: Directions, b: Directions) -> None:
    assert torch.equal(a.vectors, b.vectors) and torch.equal(a.origin, b.origin)
    assert a.labels == b.labels and a.models == b.models and a.coefficient_map == b.coefficient_map
    assert a.variants == b.variants and a.blocks == b.blocks and a.settings == b.settings
    assert a.sources == b.sources and a.endpoints == b.endpoints


@pytest.mark.parametrize("kind, n, dims, builder", [
    ("interpolation", 2, 1, lambda p, m: ml.directions.interpolation(p[0], p[1], model=m, align=True)),
    ("plane", 3, 2, lambda p, m: ml.directions.plane(*p[:3], model=m, align=True)),
    ("bilinear", 4, 2, lambda p, m: ml.directions.bilinear(*p, model=m, align=True)),
    ("bezier", 3, 1, lambda p, m: ml.directions.bezier(*p[:3], model=m, align=True)),
    ("polychain", 4, 1, lambda p, m: ml.directions.polychain(*p, model=m, align=True)),
])
def test_builders_with_align_equal_the_job_file_kinds(checkpoints, kind, n, dims, builder):
    model = cnn(0)
    job = make_directions(model, DirectionsSpec(kind=kind, models=tuple(checkpoints[:n]), align=True), dims)
    _equal_directions(builder(checkpoints, model), job)
    assert job.settings["align"] is True and len(job.settings["alignment"]) == n - 1


def test_builders_align_modules_and_state_dicts_like_files(checkpoints):
    a = cnn(0)
    a.load_state_dict(torch.load(checkpoints[0]))
    b_state = torch.load(checkpoints[1])
    d = ml.directions.interpolation(a, b_state, align=True)
    layout = ParamLayout.from_model(a)
    b = cnn(0)
    b.load_state_dict(aligned_state(b_state, weight_matching(a, b_state)))
    torch.testing.assert_close(d.origin + d.vectors[0].double(), state_vector(b, layout), rtol=0, atol=1e-6)
    files = ml.directions.interpolation(checkpoints[0], checkpoints[1], model=a, align=True)
    assert torch.equal(d.vectors, files.vectors)
    assert d.settings["alignment"][0]["permuted_units"] == files.settings["alignment"][0]["permuted_units"]


def test_the_align_command_saves_a_model_of_the_same_function(tmp_path):
    from tests.util import cli, write_job

    from mpiland.demo import digits_mlp

    torch.manual_seed(1)
    a = digits_mlp(hidden=16)
    torch.manual_seed(2)
    b = digits_mlp(hidden=16)
    torch.save(a.state_dict(), tmp_path / "a.pt")
    torch.save(b.state_dict(), tmp_path / "b.pt")
    job = write_job(tmp_path)  # the digits MLP with 16 hidden units: the same architecture
    done = cli("align", str(job), str(tmp_path / "a.pt"), str(tmp_path / "b.pt"), "--out", str(tmp_path / "b2.pt"))
    assert done.returncode == 0, done.stderr
    assert "hidden units moved" in done.stdout
    aligned = digits_mlp(hidden=16)
    aligned.load_state_dict(torch.load(tmp_path / "b2.pt"))
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), b(x), rtol=1e-5, atol=1e-5)
    missing = cli("align", str(job), str(tmp_path / "a.pt"), str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c.pt"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "not found" in missing.stderr
