"""Faults of the output file seen from outside: one ``error:`` line, exit 2, nothing created, nothing lost."""

import hashlib
import os
import shutil
import subprocess

import h5py
import pytest

from util import PYTHON, REPO, cli, write_job

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]


def small_job(tmp_path, **kw):
    return write_job(tmp_path, grid="x = [-1.0, 1.0, 3]", **kw)


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_that_is_a_directory(tmp_path, overwrite):
    job = small_job(tmp_path)
    (tmp_path / "out").mkdir()
    args = ["run", str(job), "--output", str(tmp_path / "out")] + (["--overwrite"] if overwrite else [])
    one_line_error(cli(*args), "is a directory")
    assert (tmp_path / "out").is_dir() and not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("overwrite", [False, True])
def test_output_under_a_regular_file(tmp_path, overwrite):
    job = small_job(tmp_path)
    (tmp_path / "plain.txt").write_text("x")
    args = ["run", str(job), "--output", str(tmp_path / "plain.txt" / "s.h5")] + (["--overwrite"] if overwrite else [])
    one_line_error(cli(*args), "is a file, not a directory")
    assert (tmp_path / "plain.txt").read_text() == "x"


@pytest.fixture
def mount(tmp_path):
    """Mount a tmpfs (root only) and unmount it afterwards: ``mount(size, ro=False)`` -> its path."""
    if not ROOT or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    made = []

    def _mount(size: str, ro: bool = False):
        where = tmp_path / f"mnt{len(made)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        made.append(where)
        return where

    yield _mount
    for where in made:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_output_in_a_read_only_directory(tmp_path, mount):
    job = small_job(tmp_path)
    ro = mount("1m", ro=True)
    one_line_error(cli("run", str(job), "--output", str(ro / "s.h5")), "cannot write in")


def test_output_in_a_read_only_directory_as_user(tmp_path):
    if ROOT:
        pytest.skip("root writes into any mode 0555 directory (the tmpfs test covers root)")
    job = small_job(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    one_line_error(cli("run", str(job), "--output", str(ro / "s.h5")), "cannot write in")


def test_grid_too_large_is_refused_up_front(tmp_path):
    job = small_job(tmp_path)
    proc = cli("run", str(job), "--set", "grid.x=[-1, 1, 100000]", "--set", "grid.y=[-1, 1, 100000]")
    one_line_error(proc, "grid 100000 × 100000 (10000000000 points) needs about")
    assert "GiB of disk" in proc.stderr and "of memory on rank 0" in proc.stderr
    assert not (tmp_path / "surface.h5").exists() and not list(tmp_path.glob(".surface.h5.*"))


def test_grid_larger_than_the_free_disk_is_refused(tmp_path, mount):
    small = mount("256k")
    job = small_job(tmp_path)
    proc = cli("run", str(job), "--output", str(small / "s.h5"), "--set", "grid.x=[-1, 1, 200]",
               "--set", "grid.y=[-1, 1, 200]")
    one_line_error(proc, "free")
    assert list(small.iterdir()) == []


def test_disk_filling_during_creation_leaves_nothing(tmp_path, mount, monkeypatch):
    from mpiland.errors import SurfaceFileError
    from mpiland.jobfile import load_job
    from mpiland.run import run_job
    from mpiland.surface import storage

    small = mount("160k")
    monkeypatch.setattr(storage, "check_room", lambda *a, **k: None)  # as if another program filled the disk
    job = load_job(small_job(tmp_path), values={"output.path": str(small / "s.h5"), "grid.x": [-1.0, 1.0, 100],
                                                "grid.y": [-1.0, 1.0, 100]})
    with pytest.raises(SurfaceFileError, match="cannot create .*is the disk full"):
        run_job(job)
    assert list(small.iterdir()) == []


def test_disk_filling_during_creation_through_the_cli(tmp_path, mount):
    small = mount("160k")
    script = (f"import sys; sys.argv = ['mpiland', 'run', {str(small_job(tmp_path))!r}, '--output', "
              f"{str(small / 's.h5')!r}, '--set', 'grid.x=[-1,1,100]', '--set', 'grid.y=[-1,1,100]']\n"
              "from mpiland.surface import storage\nstorage.check_room = lambda *a, **k: None\n"
              "from mpiland.cli import main\nmain()\n")
    proc = subprocess.run([PYTHON, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # not signal 11
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot create")
    assert list(small.iterdir()) == []


def test_a_run_holding_the_output_makes_another_say_in_use(tmp_path):
    job = small_job(tmp_path)
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from mpiland.surface import lock\nlock.hold(Path(sys.argv[1]))\n"
                               "print('held', flush=True)\ntime.sleep(60)\n", str(tmp_path / "surface.h5")],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        one_line_error(cli("run", str(job)), "is in use by another run")
        one_line_error(cli("run", str(job), "--overwrite"), "is in use by another run")
        assert not (tmp_path / "surface.h5").exists()
    finally:
        holder.kill()
        holder.wait()
    assert cli("run", str(job)).returncode == 0


def test_two_runs_started_together_evaluate_each_point_once(tmp_path):
    job = write_job(tmp_path, model='factory = "tests/models.py:slow_mlp"\nkwargs = { delay = 0.02 }',
                    grid="x = [-1.0, 1.0, 4]\ny = [-1.0, 1.0, 3]", extra="chunk_size = 2\npoints_per_pass = 1\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([PYTHON, "-m", "mpiland", "run", str(job)], cwd=REPO, env=env, text=True,
                              stderr=subprocess.PIPE) for _ in range(2)]
    outs = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    evaluated = 0
    for status, err in outs:
        if status == 0:
            evaluated += int(err.split("done: ")[1].split(" points evaluated")[0])
        else:
            one_line_error(subprocess.CompletedProcess([], status, "", err), "is in use by another run")
    assert evaluated == 12, outs
    with h5py.File(tmp_path / "surface.h5", "r") as f:
        assert f["done"][...].all()


def test_stale_temporary_file_is_removed(tmp_path):
    job = small_job(tmp_path)
    stale = tmp_path / ".surface.h5.999999.part"
    stale.write_bytes(b"\0" * 4096)
    assert cli("run", str(job)).returncode == 0
    assert not stale.exists() and (tmp_path / "surface.h5").exists()


def test_truncated_file_is_unreadable_and_overwrite_replaces_it(tmp_path):
    job = small_job(tmp_path)
    assert cli("run", str(job)).returncode == 0
    out = tmp_path / "surface.h5"
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    proc = cli("run", str(job))
    one_line_error(proc, "cannot be read as HDF5")
    assert "in use" not in proc.stderr.replace("not in use by another run", "")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    again = cli("run", str(job), "--overwrite")
    assert again.returncode == 0, again.stderr
    with h5py.File(out, "r") as f:
        assert f["done"][...].all()
