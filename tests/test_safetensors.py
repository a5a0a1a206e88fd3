"""Checkpoints in safetensors are read by content (no pickle, no code), tied weights included, like torch files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mpiland
from mpiland.demo import digits_mlp
from mpiland.errors import CheckpointError
from mpiland.models import is_safetensors, load_checkpoint, read_state_dict

from util import cli, write_job

st = pytest.importorskip("safetensors.torch")

MLP = 'factory = "mpiland.demo:digits_mlp"\nkwargs = { hidden = 16 }'


def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    return {k: v.clone() for k, v in digits_mlp(hidden=16).state_dict().items()}


def test_a_safetensors_checkpoint_gives_the_surface_of_the_same_torch_checkpoint(tmp_path: Path) -> None:
    state = _trained_state()
    torch.save(state, tmp_path / "m.pt")
    st.save_file(state, str(tmp_path / "m.weights"))  # named oddly on purpose: read by content
    assert is_safetensors(tmp_path / "m.weights") and not is_safetensors(tmp_path / "m.pt")
    for name, ckpt in (("pt.h5", "m.pt"), ("st.h5", "m.weights")):
        job = write_job(tmp_path, model=f'{MLP}\ncheckpoint = "{tmp_path / ckpt}"', output=name, name=f"{name}.toml")
        proc = cli("run", str(job))
        assert proc.returncode == 0, proc.stderr
    a, b = mpiland.open(tmp_path / "pt.h5"), mpiland.open(tmp_path / "st.h5")
    for m in a.metrics:
        np.testing.assert_array_equal(a.values(m), b.values(m))


class Tied(torch.nn.Module):
    """A language-model shape: the output layer shares the embedding's weight."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4)
        self.head = torch.nn.Linear(4, 7, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_stored_once_load_into_both_names(tmp_path: Path) -> None:
    source = Tied()
    st.save_model(source, str(tmp_path / "tied.safetensors"))  # stores the shared tensor under one name
    assert len(read_state_dict(tmp_path / "tied.safetensors", "x")) == 1
    target = Tied()
    load_checkpoint(target, tmp_path / "tied.safetensors")
    assert torch.equal(target.head.weight, source.embed.weight) and target.head.weight is target.embed.weight


def test_a_damaged_safetensors_file_is_one_clear_line(tmp_path: Path) -> None:
    st.save_file(_trained_state(), str(tmp_path / "m.safetensors"))
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[: len(data) // 2])
    job = write_job(tmp_path, model=f'{MLP}\ncheckpoint = "{tmp_path / "m.safetensors"}"')
    proc = cli("run", str(job))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be read as a safetensors file" in lines[0], proc.stderr
    assert not (tmp_path / "surface.h5").exists()


def test_without_the_package_the_error_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    st.save_file(_trained_state(), str(tmp_path / "m.safetensors"))
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(CheckpointError, match="pip install safetensors"):
        load_checkpoint(digits_mlp(hidden=16), tmp_path / "m.safetensors")
