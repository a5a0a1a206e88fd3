"""Training a missing checkpoint gives the same weights whatever the thread count (the demo's pictures)."""

from __future__ import annotations

import torch

from util import cli, write_job

MODEL = 'factory = "mpiland.demo:digits_cnn"\nkwargs = { channels = 4, hidden = 8 }\ncheckpoint = "{ckpt}"'
TRAIN = "\n[train]\nepochs = 2\nbatch_size = 64\nseed = 0\n"


def _trained(tmp_path, threads: int) -> dict[str, torch.Tensor]:
    folder = tmp_path / f"t{threads}"
    folder.mkdir()
    job = write_job(folder, model=MODEL.replace("{ckpt}", str(folder / "final.pt")), grid="x = [-1.0, 1.0, 2]",
                    extra=TRAIN)
    text = job.read_text().replace("threads = 1", f"threads = {threads}")
    job.write_text(text)
    done = cli("run", str(job))
    assert done.returncode == 0, done.stderr
    return torch.load(folder / "final.pt")


def test_the_trained_model_does_not_depend_on_the_thread_count(tmp_path):
    one, two = _trained(tmp_path, 1), _trained(tmp_path, 2)
    assert set(one) == set(two)
    assert all(torch.equal(one[k], two[k]) for k in one), "one thread for training, whatever run.threads says"
