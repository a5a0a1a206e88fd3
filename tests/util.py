"""Shared helpers for the tests: small job files and a plain reference evaluation."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def write_job(tmp: Path, *, grid: str = "x = [-1.0, 1.0, 5]\ny = [-1.0, 1.0, 4]", extra: str = "",
              model: str = 'factory = "mpiland.demo:digits_mlp"\nkwargs = { hidden = 16 }',
              directions: str = 'seed = 3\nnorm = "filter"', data: str = 'splits = ["test"]\nsubset = 120\nbatch_size = 50',
              output: str = "surface.h5", name: str = "job.toml") -> Path:
    """A small job file in ``tmp`` (checkpoint-free digits MLP unless ``model`` says otherwise)."""
    text = textwrap.dedent(f"""\
        name = "test"
        [model]
        {{model}}
        [data]
        {{data}}
        [directions]
        {{directions}}
        [grid]
        {{grid}}
        [output]
        path = "{tmp / output}"
        [run]
        threads = 1
        progress = "none"
        """).format(model=model, data=data, directions=directions, grid=grid)
    path = tmp / name
    path.write_text(text + extra)
    return path


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None,
        launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m mpiland ARGS`` (optionally under a launcher) and capture its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = (launcher or []) + [PYTHON, "-m", "mpiland", *args]
    return subprocess.run(cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def plain_metrics(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` in eval mode, computed the obvious way."""
    model.eval()
    with torch.no_grad():
        out = model(inputs)
        loss = torch.nn.functional.cross_entropy(out, targets).item()
        acc = (out.argmax(1) == targets).double().mean().item()
    return loss, acc


def interrupted_run(args: list[str], delay: float, launcher: list[str] | None = None,
                    signals: tuple[int, ...] = (signal.SIGTERM,), gap: float = 0.2,
                    timeout: float = 30) -> tuple[int, str]:
    """Start ``mpiland run ARGS``, send each of ``signals`` (``gap`` s apart) ``delay`` s after evaluation starts.

    Returns (status, stderr).
    """
    proc = subprocess.Popen((launcher or []) + [PYTHON, "-m", "mpiland", "run", *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "points pending" in line:
            break
    time.sleep(delay)
    for i, sig in enumerate(signals):
        if i:
            time.sleep(gap)
        proc.send_signal(sig)
    rest = "".join(seen) + proc.stderr.read()
    return proc.wait(timeout=timeout), rest
