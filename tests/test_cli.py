"""Each user-error class ends with one line ``error: ...`` and exit status 2; nothing computed is lost."""

import hashlib

import torch

from mpiland.demo import digits_mlp

from util import cli, write_job


def one_line_error(proc, fragment):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_job_key(tmp_path):
    job = write_job(tmp_path, directions='norm = "filtr"')
    one_line_error(cli("run", str(job)), 'directions.norm: expected one of auto|filter|layer|weight|model|none, got "filtr"')


def test_missing_job_file(tmp_path):
    one_line_error(cli("run", str(tmp_path / "nope.toml")), "not found")


def test_impossible_grid(tmp_path):
    job = write_job(tmp_path)
    one_line_error(cli("run", str(job), "--set", "grid.x=[1, -1, 3]"), "grid.x: min (1) is greater than max (-1)")


def test_missing_checkpoint(tmp_path):
    job = write_job(tmp_path, model=f'factory = "mpiland.demo:digits_mlp"\ncheckpoint = "{tmp_path}/none.pt"')
    one_line_error(cli("run", str(job)), "file not found")


def test_mismatched_checkpoint(tmp_path):
    state = digits_mlp(hidden=16).state_dict()
    state["extra.weight"] = torch.zeros(2)
    del state["1.bias"]
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ck.pt")
    job = write_job(tmp_path, model=f'factory = "mpiland.demo:digits_mlp"\nkwargs = {{ hidden = 8 }}\ncheckpoint = "{tmp_path}/ck.pt"')
    proc = cli("run", str(job))
    one_line_error(proc, "does not fit the model")
    for part in ("missing: 1.bias", "unexpected: extra.weight", "mismatched: 1.weight (16, 64) vs model (8, 64)"):
        assert part in proc.stderr


def test_bad_factory(tmp_path):
    job = write_job(tmp_path, model='factory = "no_such_pkg.models:net"')
    one_line_error(cli("run", str(job)), "model.factory: module 'no_such_pkg.models' not found")


def test_bad_data(tmp_path):
    job = write_job(tmp_path, data="subset = 99999")
    one_line_error(cli("run", str(job)), "data.subset = 99999 exceeds")


def test_singleton_launch_is_named(tmp_path):
    job = write_job(tmp_path)
    proc = cli("run", str(job), env={"SLURM_STEP_NUM_TASKS": "4"})
    one_line_error(proc, "launched 4 singleton processes")
    assert "srun --mpi=pmi2" in proc.stderr


def test_other_job_on_same_file_is_refused_and_file_kept(tmp_path):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]")
    assert cli("run", str(job)).returncode == 0
    out = tmp_path / "surface.h5"
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    other = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]", directions="seed = 99", name="other.toml")
    one_line_error(cli("run", str(other)), "was made by a different job")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert cli("run", str(other), "--overwrite").returncode == 0
    again = cli("run", str(other), "--overwrite")  # the same job: resumed, never redone
    assert again.returncode == 0 and "0 points evaluated" in again.stderr
    bf16 = cli("run", str(other), "--autocast", "bf16")  # mixed precision changes values: another job
    one_line_error(bf16, "was made by a different job")


def test_debug_shows_traceback(tmp_path):
    job = write_job(tmp_path, directions='norm = "filtr"')
    proc = cli("run", str(job), "--debug")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_plot_and_info_errors(tmp_path):
    one_line_error(cli("info", str(tmp_path / "missing.h5")), "")
    (tmp_path / "junk.h5").write_text("not hdf5")
    one_line_error(cli("plot", str(tmp_path / "junk.h5")), "")


def test_help_and_module_entry():
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("run", "plot", "info"):
        assert command in proc.stdout


def test_runs_without_a_loadable_mpi_library(tmp_path):
    job = write_job(tmp_path, grid="x = [-1.0, 1.0, 3]")
    proc = cli("run", str(job), env={"MPI4PY_LIBMPI": str(tmp_path / "no-libmpi.so")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("running as a single process") == 1
    assert (tmp_path / "surface.h5").exists()


def test_trajectory_command_writes_three_pictures(tmp_path):
    for epoch in range(4):
        torch.manual_seed(epoch)
        torch.save(digits_mlp(hidden=8).state_dict(), tmp_path / f"epoch_{epoch}.pt")
    proc = cli("trajectory", str(tmp_path / "epoch_*.pt"), "--out", str(tmp_path / "traj"))
    assert proc.returncode == 0, proc.stderr
    written = proc.stdout.split()
    assert [p.rsplit("_", 1)[1] for p in written] == ["pca.png", "andrews.png", "radar.png"]
    assert all((tmp_path / p).stat().st_size > 1000 for p in written)
    one_line_error(cli("trajectory", str(tmp_path / "epoch_0.pt")), "at least 2 checkpoints")
    one_line_error(cli("trajectory", str(tmp_path / "none_*.pt")), "matches no file")


def test_path_job_with_a_missing_model_file(tmp_path):
    job = write_job(tmp_path, grid="x = 5",
                    directions=f'kind = "interpolation"\nmodels = ["{tmp_path}/a.pt", "{tmp_path}/b.pt"]')
    one_line_error(cli("run", str(job)), "directions.models")


def test_directory_given_as_the_job_file_is_one_line(tmp_path):
    # Defect 11: click printed its usage block (several lines) for a directory where a file is expected.
    one_line_error(cli("run", str(tmp_path) + "/"), "is a directory")
    one_line_error(cli("run", "--chunk-size", "many", str(tmp_path)), "--chunk-size")
    one_line_error(cli("no-such-command"), "no-such-command")


def test_help_and_version_still_exit_zero():
    from mpiland import __version__

    version = cli("--version")
    assert version.returncode == 0 and __version__ in version.stdout
    assert cli("run", "--help").returncode == 0 and "JOB_FILE" in cli("run", "-h").stdout


def test_a_message_with_embedded_newlines_prints_as_one_line(capsys):
    # Defect 11: an HDF5 message with an embedded newline gave a two-line error.
    import pytest

    from mpiland.cli import _fail
    from mpiland.errors import SurfaceFileError

    with pytest.raises(SystemExit) as info:
        _fail(SurfaceFileError("cannot open out.h5: Unable to synchronously open file\n  (file signature not found)"),
              debug=False)
    assert info.value.code == 2
    assert capsys.readouterr().err == ("error: cannot open out.h5: Unable to synchronously open file "
                                       "(file signature not found)\n")


def test_unset_makes_a_2d_job_1d_and_names_a_missing_key(tmp_path):
    import h5py

    job = write_job(tmp_path)
    proc = cli("run", str(job), "--unset", "grid.y", "--output", str(tmp_path / "line.h5"))
    assert proc.returncode == 0, proc.stderr
    with h5py.File(tmp_path / "line.h5") as f:
        assert "ycoordinates" not in f and f["test_loss"].shape == (5,)
    one_line_error(cli("run", str(job), "--unset", "grid.z"), "--unset 'grid.z': the job does not set grid.z")
