"""Which file belongs to which job: every job key is kept or refused for a reason, judged by content."""

import h5py
import numpy as np
import pytest

from mpiland.jobfile import _SCHEMA, load_job
from mpiland.surface import COMPONENTS, DIGEST_PREFIX, settings_that_count

from util import cli, write_job

COVERED = {
    "checkpoint": "the checkpoint file's digest (digest_checkpoints) and θ* (digest_origin)",
    "origin": "θ*, the model's full state (digest_origin)",
    "data": "the evaluated tensors per split (digest_data_<split>)",
    "directions": "the direction vectors used (digest_directions)",
    "train": "only trains a missing checkpoint: its digest counts",
    "place": "placement, scheduling or output: values do not change",
    "rounding": "rounding level only; the file keeps its points per pass",
}

# key: (changed value, "keep" or "refuse", why); CONTEXT: overrides both jobs of a row need to be valid
CONTEXT = {
    "directions.file": {"directions.kind": "file", "directions.file": ["a.h5"]},
    "directions.models": {"directions.kind": "pca", "directions.models": ["a.pt"]},
    "directions.align": {"directions.kind": "interpolation", "directions.models": ["a.pt", "b.pt"], "grid.y": None},
}
ALSO = {"directions.kind": {"directions.models": ["a.pt"]}}  # overrides only the changed job needs
BEZIER = {"directions.kind": "bezier", "directions.models": ["a.pt", "b.pt", "c.pt"], "grid.y": None}
TABLE = {
    "model.factory": ("mpiland.demo:digits_cnn", "refuse", "another network (its source counts too)"),
    "model.kwargs": ({"hidden": 8}, "refuse", "another architecture"),
    "model.checkpoint": ("elsewhere.pt", "keep", COVERED["checkpoint"]),
    "model.seed": (7, "keep", COVERED["origin"] + ": refused when it changes θ*"),
    "model.dtype": ("float64", "refuse", "arithmetic precision"),
    "model.mode": ("train", "refuse", "batch statistics instead of running ones"),
    "model.bn": ("recompute", "refuse", "BatchNorm statistics per point"),
    "model.bn_batches": (3, "keep", "only used with bn = recompute (then it counts)"),
    "train.epochs": (2, "keep", COVERED["train"]),
    "train.lr": (0.5, "keep", COVERED["train"]),
    "train.momentum": (0.5, "keep", COVERED["train"]),
    "train.weight_decay": (0.1, "keep", COVERED["train"]),
    "train.batch_size": (16, "keep", COVERED["train"]),
    "train.seed": (4, "keep", COVERED["train"]),
    "train.checkpoint_dir": ("ckpts", "keep", COVERED["train"]),
    "data.dataset": (None, "keep", COVERED["data"] + " (digits is its only value today)"),
    "data.factory": ("tests/data.py:f", "keep", COVERED["data"] + " and the factory source (digest_code)"),
    "data.kwargs": ({"n": 3}, "keep", COVERED["data"]),
    "data.splits": (["train", "test"], "refuse", "other metrics"),
    "data.subset": (60, "keep", COVERED["data"]),
    "data.seed": (9, "keep", COVERED["data"] + " (counts with bn = recompute)"),
    "data.batch_size": (7, "keep", "built-in losses are per sample (counts for user losses, train mode, recompute)"),
    "data.memory_budget_mb": (1.0, "keep", COVERED["place"]),
    "data.stream": ("true", "keep", COVERED["data"] + ": a streamed split's digest is of its batches, so reading "
                    "it another way refuses by the data digest"),
    "loss.name": ("mse", "refuse", "another function"),
    "loss.accuracy": ("false", "refuse", "other metrics"),
    "loss.metrics": ({"top1": "tests/losses.py:mean_ce"}, "refuse", "other metrics (and their source joins the code)"),
    "directions.kind": ("pca", "refuse", "another coefficient map and meaning"),
    "directions.seed": (99, "keep", COVERED["directions"]),
    "directions.norm": ("layer", "keep", COVERED["directions"]),
    "directions.ignore": ("none", "keep", COVERED["directions"]),
    "directions.include": (["0"], "keep", COVERED["directions"]),
    "directions.exclude": (["1"], "keep", COVERED["directions"]),
    "directions.orthogonalize": (True, "keep", COVERED["directions"]),
    "directions.models": (["a.pt", "b.pt"], "keep", COVERED["directions"] + " and the models' digests"),
    "directions.file": (["d.h5"], "keep", COVERED["directions"] + " and the file's digest"),
    "directions.states": (True, "keep", COVERED["directions"] + " (the layout names the buffers)"),
    "directions.compare_line": (False, "keep", "only Bézier curves and chains evaluate the line (then it counts)"),
    "grid.x": ([-2.0, 2.0, 5], "refuse", "other coordinates"),
    "grid.y": ([-2.0, 2.0, 4], "refuse", "other coordinates"),
    "grid.margin": (0.5, "keep", "only used by an automatic range (then it counts)"),
    "grid.auto_rise": (2.0, "keep", "only used by a pre-scanned range, which the identity holds as grid.x/grid.y "
                       "(a rise that moves the range refuses the file)"),
    "grid.auto_max": (0.5, "keep", "only used by a pre-scanned range, which the identity holds as grid.x/grid.y"),
    "grid.refine": (True, "keep", "which points are evaluated, not their values; refine = false on a refined "
                    "file fills in the skipped points"),
    "grid.refine_tol": (0.5, "keep", "which points refinement evaluates, not their values"),
    "grid.refine_levels": (1, "keep", "which points refinement evaluates, not their values"),
    "hessian.enabled": (True, "refuse", "curvature metrics"),
    "hessian.splits": (["test"], "keep", "only used with curvature (then every hessian key counts)"),
    "hessian.subset": (10, "keep", "only used with curvature"),
    "hessian.tol": (0.1, "keep", "only used with curvature"),
    "hessian.max_iter": (5, "keep", "only used with curvature"),
    "hessian.dtype": ("float64", "keep", "only used with curvature"),
    "hessian.seed": (1, "keep", "only used with curvature"),
    "hessian.trace_samples": (3, "keep", "only used with curvature"),
    "hessian.warm_start": (True, "keep", "only used with curvature"),
    "hessian.chain": (4, "keep", "only used by a warm-started curvature"),
    "hessian.spectrum": ("origin", "refuse", "a spectrum stored in the file (then every hessian key counts)"),
    "hessian.spectrum_probes": (3, "keep", "only used with a spectrum"),
    "hessian.spectrum_steps": (9, "keep", "only used with a spectrum"),
    "hessian.spectrum_top": (2, "keep", "only used with a spectrum"),
    "directions.align": (True, "keep", COVERED["directions"] + " (the aligned models' vectors)"),
    "connect.ends": (["a.pt", "b.pt"], "keep", "only trains bends: their checkpoints' digests count"),
    "connect.curve": ("polychain", "keep", "only trains bends: their checkpoints' digests count"),
    "connect.bends": (2, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.epochs": (2, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.lr": (0.5, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.momentum": (0.5, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.weight_decay": (0.1, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.batch_size": (16, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.seed": (3, "keep", "only trains bends: their checkpoints' digests count"),
    "connect.checkpoint_dir": ("bends", "keep", "only trains bends: their checkpoints' digests count"),
    "output.path": ("other.h5", "keep", COVERED["place"]),
    "output.overwrite": (True, "keep", COVERED["place"]),
    "run.device": ("cpu", "keep", COVERED["place"]),
    "run.chunk_size": (3, "keep", COVERED["place"]),
    "run.writer": ("gather", "keep", COVERED["place"]),
    "run.threads": (2, "keep", COVERED["place"]),
    "run.progress": ("bar", "keep", COVERED["place"]),
    "run.points_per_pass": (3, "keep", COVERED["rounding"]),
    "run.group_size": (2, "keep", "which ranks share a point; values are bit-identical for any group size"),
    "run.batch_memory_mb": (64.0, "keep", COVERED["place"]),
    "run.autocast": ("bf16", "refuse", "mixed precision changes values beyond rounding"),
    "run.channels_last": (True, "keep", "memory layout: rounding level"),
    "run.compile": (True, "keep", "compiled kernels: rounding level"),
}


def test_table_lists_every_job_key():
    keys = {f"{section}.{key}" for section, table in _SCHEMA.items() for key in table}
    assert keys == set(TABLE)


@pytest.mark.parametrize("key", sorted(TABLE))
def test_each_job_key_keeps_or_refuses_the_file(tmp_path, key):
    value, verdict, why = TABLE[key]
    if value is None:
        pytest.skip(f"{key} has a single valid value: {why}")
    path = write_job(tmp_path, directions="seed = 3")
    context = CONTEXT.get(key, {})
    base = settings_that_count(load_job(path, values=context))
    changed = settings_that_count(load_job(path, values={**context, key: value, **ALSO.get(key, {})}))
    assert (changed != base) == (verdict == "refuse"), f"{key}: expected {verdict} ({why})"


@pytest.mark.parametrize("key, value, context", [
    ("data.batch_size", 7, {"loss.name": "tests/losses.py:mean_ce"}),
    ("data.batch_size", 7, {"model.mode": "train"}),
    ("data.batch_size", 7, {"loss.metrics": {"top1": "tests/losses.py:mean_ce"}}),
    ("data.seed", 9, {"model.bn": "recompute"}),
    ("model.bn_batches", 3, {"model.bn": "recompute"}),
    ("directions.compare_line", False, BEZIER),
    ("hessian.tol", 0.1, {"hessian.enabled": True}),
    ("hessian.warm_start", True, {"hessian.enabled": True}),
    ("hessian.chain", 4, {"hessian.enabled": True, "hessian.warm_start": True}),
])
def test_conditional_keys_count_where_they_change_values(tmp_path, key, value, context):
    path = write_job(tmp_path, directions="seed = 3")
    base = settings_that_count(load_job(path, values=context))
    assert settings_that_count(load_job(path, values={**context, key: value})) != base


def _digests(path):
    with h5py.File(path, "r") as f:
        return {k: str(f.attrs[DIGEST_PREFIX + k]) for k in COMPONENTS}


def test_file_stores_each_component_digest(tmp_path):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]")
    assert cli("run", str(job)).returncode == 0
    with h5py.File(tmp_path / "surface.h5", "r") as f:
        assert len(f.attrs["fingerprint"]) == 64
        assert len(str(f.attrs["digest_data_test"])) == 64
        assert "model.factory" in str(f.attrs["identity_settings"])
    assert all(len(v) == 64 for v in _digests(tmp_path / "surface.h5").values())


def test_batch_size_of_a_builtin_loss_resumes(tmp_path):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]")
    assert cli("run", str(job)).returncode == 0
    again = cli("run", str(job), "--set", "data.batch_size=7")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stderr and "0 points evaluated" in again.stderr


FACTORY = '''import torch
def data(split, scale=1.0):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 8, 8, generator=g) * {scale}
    return x, torch.randint(0, 10, (40,), generator=g)
'''


def test_changed_data_factory_source_refuses(tmp_path):
    (tmp_path / "mydata.py").write_text(FACTORY.format(scale=1.0))
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]",
                    data=f'factory = "{tmp_path}/mydata.py:data"\nsplits = ["test"]\nbatch_size = 16')
    assert cli("run", str(job)).returncode == 0
    (tmp_path / "mydata.py").write_text(FACTORY.format(scale=2.0))
    proc = cli("run", str(job))
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "was made by a different job: other code (source of data.factory differs)" in line
    assert "pass --overwrite" in line


def test_changed_data_content_refuses(tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 1, 8, 8), dtype=np.float32))
    (tmp_path / "filedata.py").write_text(
        "import numpy as np, torch, pathlib\n"
        "def data(split):\n"
        f"    x = torch.from_numpy(np.load('{tmp_path}/x.npy'))\n"
        "    return x, torch.arange(40) % 10\n")
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]",
                    data=f'factory = "{tmp_path}/filedata.py:data"\nsplits = ["test"]\nbatch_size = 16')
    assert cli("run", str(job)).returncode == 0
    np.save(tmp_path / "x.npy", np.random.default_rng(1).random((40, 1, 8, 8), dtype=np.float32))
    proc = cli("run", str(job))
    assert proc.returncode == 2, proc.stderr
    assert "other data (data digest differs for test)" in proc.stderr.strip().splitlines()[-1]


def test_changed_model_source_refuses(tmp_path):
    src = "import torch.nn as nn\ndef net():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.{act}())\n"
    (tmp_path / "net.py").write_text(src.format(act="ReLU"))
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]", model=f'factory = "{tmp_path}/net.py:net"')
    assert cli("run", str(job)).returncode == 0
    (tmp_path / "net.py").write_text(src.format(act="Tanh"))
    proc = cli("run", str(job))
    assert proc.returncode == 2 and "source of model.factory differs" in proc.stderr, proc.stderr


def test_tampered_direction_digest_refuses(tmp_path):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]")
    assert cli("run", str(job)).returncode == 0
    with h5py.File(tmp_path / "surface.h5", "r+") as f:  # as if the vectors had been built elsewhere
        f.attrs["digest_directions"] = "0" * 64
    proc = cli("run", str(job))
    assert proc.returncode == 2 and "other directions (directions digest differs)" in proc.stderr, proc.stderr
