"""Data that does not fit the model or the loss is one line at set-up (exit 2), and no file is created."""

import pytest

from util import cli, write_job

CNN = 'factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 8 }'


@pytest.mark.parametrize("factory, words", [
    ("wrong_channels", ["inputs of shape 3×8×8", "do not fit the model"]),
    ("wrong_size", ["inputs of shape 1×6×6", "do not fit the model"]),
    ("label_out_of_range", ["labels range over 0..12", "10 outputs"]),
    ("two_dimensional_targets", ["one class index per sample", "shape 2"]),
])
def test_data_that_does_not_fit_is_one_line_and_creates_nothing(tmp_path, factory, words):
    job = write_job(tmp_path, model=CNN, data=f'factory = "tests/datasets.py:{factory}"\nsplits = ["test"]')
    proc = cli("run", str(job))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: data split 'test'"), proc.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert not (tmp_path / "surface.h5").exists()
    assert not list(tmp_path.glob(".surface.h5*"))
