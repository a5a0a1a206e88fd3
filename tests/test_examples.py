"""The examples run as documented: the notebook end to end in a Jupyter kernel, the MPI script at 1 and 2 ranks.

The notebook is stored with its outputs so that it reads (figures included) without
running it. After changing it, refresh them with ``python tests/test_examples.py --store``:
that executes it in a scratch directory and writes it back with compact PNGs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
NOTEBOOK = EXAMPLES / "notebook.ipynb"
SCRIPT = EXAMPLES / "script_mpi.py"
PYTHON = sys.executable
MPIEXEC = shutil.which("mpiexec", path=str(Path(PYTHON).parent)) or shutil.which("mpiexec")
MAX_NOTEBOOK_BYTES = 400_000
"""The stored notebook with its figures stays small enough to read comfortably on GitHub and in diffs."""
_stored = NOTEBOOK.read_bytes() if NOTEBOOK.exists() else b""


# -- the notebook ----------------------------------------------------------------------------------------------


def _kernel_dirs(scratch: Path) -> dict[str, str]:
    """Environment that makes kernel "python3" run this interpreter (empty when it already does).

    jupyter_client starts the kernelspec's command, and replaces a bare ``python``
    with ``sys.executable``; a spec naming another interpreter (a user-wide install,
    another virtual environment) would run the notebook against another mpiland.
    Then a spec for this interpreter goes first on a scratch ``JUPYTER_PATH``.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv = KernelSpecManager().get_kernel_spec("python3").argv
    except NoSuchKernel:
        argv = []
    bare = {"python", f"python{sys.version_info[0]}", "python{}.{}".format(*sys.version_info[:2])}
    if argv and (argv[0] in bare or os.path.abspath(argv[0]) == os.path.abspath(PYTHON)):
        return {}
    spec = scratch / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [PYTHON, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    return {"JUPYTER_PATH": os.pathsep.join([str(scratch), os.environ.get("JUPYTER_PATH", "")]).rstrip(os.pathsep)}


def execute_notebook(cwd: Path, check_kernel: bool = False) -> Any:
    """The notebook run in a fresh kernel of this interpreter with ``cwd`` as working directory (a new node).

    ``check_kernel`` appends a cell (to the copy run here) that prints the kernel's ``sys.prefix``.
    A cell that raises fails with nbclient's CellExecutionError, which shows the cell and the traceback.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    if check_kernel:
        nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint('kernel prefix:', sys.prefix)"))
    with tempfile.TemporaryDirectory() as scratch:
        env = _kernel_dirs(Path(scratch))
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            NotebookClient(nb, timeout=240, kernel_name="python3", record_timing=False,
                           resources={"metadata": {"path": str(cwd)}}).execute()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return nb


def _outputs(nb: Any) -> list[Any]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]


def _text(nb: Any, stream: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.output_type == "stream" and o.name == stream)


def _images(nb: Any) -> list[bytes]:
    return [base64.b64decode(o.data["image/png"]) for o in _outputs(nb)
            if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


@pytest.mark.slow
def test_notebook_runs_end_to_end_in_a_jupyter_kernel(tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("nbformat")
    nb = execute_notebook(tmp_path, check_kernel=True)
    outputs = _outputs(nb)
    assert not [o for o in outputs if o.output_type == "error"]
    out, err = _text(nb), _text(nb, "stderr")
    assert f"kernel prefix: {sys.prefix}\n" in out, "the notebook ran in another Python environment"
    assert err == "", f"the notebook writes to stderr (a warning or a progress bar in its stored outputs):\n{err}"
    images = _images(nb)
    assert len(images) == 3 and all(png.startswith(b"\x89PNG") for png in images)  # contour, curve, PCA plane
    for words in ("epoch 8: test accuracy", "basin width", "sharpness", "train_loss: barrier", "test_loss: barrier",
                  "explained variance", "<xarray.Dataset>", "principal direction 1", "225/225 points done"):
        assert words in out, words
    assert not list(tmp_path.glob("*.h5")), "surface files go to surfaces/ only"
    import mpiland as ml

    surf = ml.open(tmp_path / "surfaces" / "digits_pca.h5")
    assert surf.done.all() and surf.trajectory is not None and "test_loss" in surf.metrics
    assert NOTEBOOK.read_bytes() == _stored, "running the notebook must leave the stored one as it was"


def test_stored_notebook_holds_its_outputs_and_stays_small():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    refresh = "store it executed: python tests/test_examples.py --store"
    assert code and all(c.get("execution_count") for c in code), refresh
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "executed in order, once"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for c in code for o in c["outputs"]) == 3
    size = NOTEBOOK.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{size} bytes; {refresh}"


def _compact_png(png: bytes) -> bytes:
    """``png`` with a palette of at most 256 colours: a contour plot shrinks to about a quarter, and looks the same."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    buf = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
        buf, format="PNG", optimize=True)
    return buf.getvalue() if len(buf.getvalue()) < len(png) else png


def store_notebook() -> None:
    """Execute the notebook in a scratch directory and write it back with its outputs (compact PNGs, streams merged)."""
    import nbformat

    with tempfile.TemporaryDirectory() as scratch:
        t0 = time.perf_counter()
        nb = execute_notebook(Path(scratch))
        seconds = time.perf_counter() - t0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        cell.metadata = {}
        merged: list[Any] = []
        for o in cell.outputs:
            last = merged[-1] if merged else None
            if last is not None and o.output_type == last.output_type == "stream" and last.name == o.name:
                last.text += o.text
                continue
            if "data" in o and "image/png" in o.data:
                o.data["image/png"] = base64.b64encode(_compact_png(base64.b64decode(o.data["image/png"]))).decode()
            merged.append(o)
        cell.outputs = merged
    nbformat.write(nb, NOTEBOOK)
    print(f"{NOTEBOOK.relative_to(REPO)}: executed in {seconds:.1f} s, {NOTEBOOK.stat().st_size} bytes")


# -- the MPI script --------------------------------------------------------------------------------------------


def _script(out: Path, launcher: list[str], points: int = 11) -> subprocess.CompletedProcess:
    cmd = launcher + [PYTHON, str(SCRIPT), str(out), "--points", str(points)]
    return subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.mpi
@pytest.mark.slow
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH or beside python")
def test_script_under_mpiexec_writes_the_file_of_one_process(tmp_path):
    import mpiland as ml

    one = _script(tmp_path / "one.h5", [])
    assert one.returncode == 0, one.stderr
    two = _script(tmp_path / "two.h5", [MPIEXEC, "-n", "2"])
    assert two.returncode == 0, two.stderr
    for proc, ranks in ((one, 1), (two, 2)):
        lines = proc.stdout.splitlines()
        assert len(lines) == 3 and lines[0].startswith(f"{ranks} rank(s): 121/121 points"), proc.stdout  # rank 0 only
        assert "test loss" in lines[1] and "sharpness" in lines[2]
    a, b = ml.open(tmp_path / "one.h5"), ml.open(tmp_path / "two.h5")
    assert a.done.all() and b.done.all()
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert set(a.metrics) == set(b.metrics) == {f"{s}_{m}" for s in ("train", "test")
                                                 for m in ("loss", "acc", "loss_stderr")}
    for m in a.metrics:
        assert np.array_equal(a.metrics[m], b.metrics[m], equal_nan=True), m
    assert a.attrs["fingerprint"] == b.attrs["fingerprint"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--store"]:
        sys.exit("usage: python tests/test_examples.py --store   (re-execute examples/notebook.ipynb and store its "
                 "outputs)")
    store_notebook()


@pytest.mark.slow
def test_mode_connectivity_has_the_expected_shape(tmp_path):
    """Line barrier ≫ barrier after alignment > barrier of the trained curve ≈ 0.

    Measured with the example's seeds (one thread): line 1.49, aligned 0.070, curve −0.011.
    The margins below are about half of what was measured, so a platform's rounding cannot
    flip them but a broken alignment or curve training does.
    """
    done = subprocess.run([PYTHON, str(EXAMPLES / "mode_connectivity.py"), str(tmp_path), "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    b = json.loads(done.stdout.strip().splitlines()[-1])
    assert b["line"] > 10 * b["aligned_line"], b
    assert b["aligned_line"] - b["curve"] > 0.04, b
    assert abs(b["curve"]) < 0.03, b
    assert (tmp_path / "mode_connectivity.png").stat().st_size > 20_000
    for name in ("line", "aligned", "curve", "plane"):
        assert (tmp_path / f"{name}.h5").exists()
