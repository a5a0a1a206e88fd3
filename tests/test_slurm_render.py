"""sbatch scripts rendered from slurm/*.sbatch: golden texts, validation, and the scripts' shell logic.

The golden files in tests/golden/ are the exact expected scripts. After an
intended change to a template or to mpiland/slurm.py, regenerate them with

    MPILAND_UPDATE_GOLDEN=1 python -m pytest tests/test_slurm_render.py

and review the diff (``git diff tests/golden``) before committing.

The shell tests run the rendered scripts with bash and stand-in ``srun`` and
``scontrol`` programs that record their arguments, so they need bash but no SLURM.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from mpiland import slurm
from mpiland.errors import JobFileError, LaunchError, MpilandError
from mpiland.slurm import parse_time_limit, render_sbatch, submit

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MPILAND_UPDATE_GOLDEN") == "1"

CHECKPOINT_LIST = """\
# checkpoints of run 7
ckpt/epoch_001.pt

ckpt/epoch_010.pt
  ckpt/final weights.pt
"""

# Golden file name -> render_sbatch keyword arguments (job file "job.toml" in the working directory).
CASES = {
    "single_4gpu": dict(gpus_per_node=4, time="02:00:00", partition="gpu"),
    "single_cpu": dict(cpus_per_task=2, time="30", output="surfaces/quick.h5",
                       extra_args=["--set", "grid.x=[-1,1,5]"]),
    "multi_2x8": dict(nodes=2, gpus_per_node=8, cpus_per_task=6, time="1-12:00:00", partition="a100"),
    "preempt": dict(template="preempt", gpus_per_node=2, time="04:00:00", signal_seconds=240,
                    output="surfaces/resnet.h5", partition="preemptible"),
    "array": dict(template="array", gpus_per_node=1, time="00:45:00", checkpoints="checkpoints.txt",
                  output="surfaces/run7", extra_args=["--set", "grid.x=[-1, 1, 51]"]),
}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working directory with a job file and a checkpoint list, as the goldens expect."""
    (tmp_path / "job.toml").write_text('[model]\nfactory = "mpiland.models:mlp"\n[grid]\nx = [-1, 1, 5]\n')
    (tmp_path / "checkpoints.txt").write_text(CHECKPOINT_LIST)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- golden texts ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, workdir):
    text = render_sbatch("job.toml", **CASES[name])
    golden = GOLDEN / f"{name}.sbatch"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"{golden} missing; create it with MPILAND_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), (
        f"rendered script differs from {golden.name}; if the change is intended, "
        "regenerate with MPILAND_UPDATE_GOLDEN=1 and review `git diff tests/golden`")


def test_no_stale_goldens():
    assert {p.stem for p in GOLDEN.glob("*.sbatch")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rendered_script_is_valid_bash(name, workdir):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    script = workdir / "s.sh"
    script.write_text(render_sbatch("job.toml", **CASES[name]))
    r = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_auto_picks_single_or_multi(workdir):
    assert "#SBATCH --nodes=1\n" in render_sbatch("job.toml", gpus_per_node=2)
    assert render_sbatch("job.toml", gpus_per_node=2) == render_sbatch("job.toml", gpus_per_node=2,
                                                                       template="single")
    assert render_sbatch("job.toml", nodes=3) == render_sbatch("job.toml", nodes=3, template="multi")
    assert "#SBATCH --nodes=3\n" in render_sbatch("job.toml", nodes=3)


def test_unset_lines_are_left_out(workdir):
    text = render_sbatch("job.toml")
    assert "--partition" not in text and "--gpus-per-node" not in text
    assert "{{" not in text and "\n##" not in text
    assert "#SBATCH --ntasks-per-node=1\n" in text
    assert f"#SBATCH --cpus-per-task={slurm.DEFAULT_CPUS_PER_TASK}\n" in text


def test_launch_line(workdir):
    for name, kwargs in CASES.items():
        text = render_sbatch("job.toml", **kwargs)
        assert "srun --mpi=pmi2 --kill-on-bad-exit=1 ${MPILAND_PYTHON:-python} -m mpiland run job.toml" in text, name


def test_every_template_file_is_used():
    assert {p.stem for p in slurm.TEMPLATE_DIR.glob("*.sbatch")} == set(slurm.TEMPLATES)


def test_fill_template_rules():
    text = "##note\n#SBATCH --a={{a}}\n#SBATCH --b={{b}}\necho {{a}}-{{a}}\n"
    assert slurm.fill_template(text, {"a": 1, "b": None}) == "#SBATCH --a=1\necho 1-1\n"
    with pytest.raises(KeyError):
        slurm.fill_template("x {{missing}}\n", {})
    with pytest.raises(ValueError):
        slurm.fill_template("x {{Bad Name}}\n", {})


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(nodes=0), LaunchError, "--nodes"),
        (dict(nodes=1.5), LaunchError, "--nodes"),
        (dict(gpus_per_node=-1), LaunchError, "--gpus-per-node"),
        (dict(cpus_per_task=0), LaunchError, "--cpus-per-task"),
        (dict(ntasks_per_node=0), LaunchError, "--ntasks-per-node"),
        (dict(time="1h"), LaunchError, "HH:MM:SS"),
        (dict(time="01:60:00"), LaunchError, "out of range"),
        (dict(time="1-24:00"), LaunchError, "out of range"),
        (dict(time="0"), LaunchError, "positive"),
        (dict(template="gpu"), LaunchError, "single, multi, preempt, array"),
        (dict(template="single", nodes=2), LaunchError, "--template multi"),
        (dict(template="array"), LaunchError, "--checkpoints"),
        (dict(template="array", checkpoints="missing.txt"), JobFileError, "one checkpoint path per line"),
        (dict(template="array", checkpoints="empty.txt"), JobFileError, "no checkpoint paths"),
        (dict(template="array", checkpoints="checkpoints.txt", extra_args=["--output", "x.h5"]), LaunchError,
         "directory"),
        (dict(checkpoints="checkpoints.txt"), LaunchError, "--template array"),
        (dict(template="preempt", time="00:04:00"), LaunchError, "--time longer"),
        (dict(template="preempt", signal_seconds=0), LaunchError, "between 1 and 65535"),
        (dict(partition="gpu; rm -rf /"), LaunchError, "sinfo"),
    ],
)
def test_validation(kwargs, error, words, workdir):
    (workdir / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(error) as info:
        render_sbatch("job.toml", **kwargs)
    message = str(info.value)
    assert words in message
    assert "\n" not in message


def test_missing_job_file(workdir):
    with pytest.raises(JobFileError, match="job file nope.toml not found"):
        render_sbatch("nope.toml")


def test_errors_are_user_errors():
    assert issubclass(LaunchError, MpilandError) and issubclass(JobFileError, MpilandError)


@pytest.mark.parametrize(
    "text, seconds",
    [("90", 5400), ("5:30", 330), ("01:00:00", 3600), ("48:00:00", 172800), ("2-0", 172800),
     ("1-12:30", 131400), ("1-00:00:01", 86401), ("UNLIMITED", None), ("infinite", None)],
)
def test_parse_time_limit(text, seconds):
    assert parse_time_limit(text) == seconds


# -- the scripts' shell logic, with stand-in srun and scontrol ---------------------------


def _stub(bindir: Path, name: str, body: str) -> None:
    p = bindir / name
    p.write_text("#!/bin/bash\n" + body)
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _run_script(workdir: Path, text: str, srun_status: int = 0, **env_extra: str) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    bindir = workdir / "bin"
    bindir.mkdir(exist_ok=True)
    _stub(bindir, "srun", f'for a in "$@"; do printf "%s\\n" "$a"; done > srun.args\nexit {srun_status}\n')
    _stub(bindir, "scontrol", 'printf "%s\\n" "$*" >> scontrol.calls\n')
    script = workdir / "job.sbatch"
    script.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM") and k != "MPILAND_PYTHON"}
    env.update(PATH=f"{bindir}:{env.get('PATH', '/usr/bin:/bin')}", SLURM_JOB_ID="77", SLURM_CPUS_PER_TASK="3",
               SLURM_JOB_NODELIST="node1", **env_extra)
    return subprocess.run([bash, str(script)], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)


def test_single_script_runs_srun(workdir):
    r = _run_script(workdir, render_sbatch("job.toml", **CASES["single_cpu"]), MPILAND_PYTHON="/opt/py/bin/python")
    assert r.returncode == 0, r.stderr
    assert (workdir / "srun.args").read_text().splitlines() == [
        "--mpi=pmi2", "--kill-on-bad-exit=1", "/opt/py/bin/python", "-m", "mpiland", "run", "job.toml",
        "--output", "surfaces/quick.h5", "--set", "grid.x=[-1,1,5]"]


def test_single_script_passes_failure_on(workdir):
    r = _run_script(workdir, render_sbatch("job.toml"), srun_status=2)
    assert r.returncode == 2
    assert not (workdir / "scontrol.calls").exists()


@pytest.mark.parametrize("status, requeued", [(3, True), (0, False), (2, False), (1, False)])
def test_preempt_script_requeues_on_interrupt(workdir, status, requeued):
    r = _run_script(workdir, render_sbatch("job.toml", **CASES["preempt"]), srun_status=status)
    assert r.returncode == status, r.stderr
    calls = workdir / "scontrol.calls"
    assert (calls.read_text() if calls.exists() else "") == ("requeue 77\n" if requeued else "")
    args = (workdir / "srun.args").read_text().splitlines()
    assert args[:3] == ["--mpi=pmi2", "--kill-on-bad-exit=1", "python"] and args[-2:] == ["--output", "surfaces/resnet.h5"]


@pytest.mark.parametrize(
    "task, checkpoint, surface",
    [("0", "ckpt/epoch_001.pt", "surfaces/run7/epoch_001.h5"),
     ("1", "ckpt/epoch_010.pt", "surfaces/run7/epoch_010.h5"),
     ("2", "ckpt/final weights.pt", "surfaces/run7/final weights.h5")],
)
def test_array_script_picks_its_checkpoint(workdir, task, checkpoint, surface):
    text = render_sbatch("job.toml", **CASES["array"])
    assert "#SBATCH --array=0-2\n" in text
    r = _run_script(workdir, text, SLURM_ARRAY_TASK_ID=task)
    assert r.returncode == 0, r.stderr
    assert (workdir / "srun.args").read_text().splitlines() == [
        "--mpi=pmi2", "--kill-on-bad-exit=1", "python", "-m", "mpiland", "run", "job.toml", "--set", "grid.x=[-1, 1, 51]",
        "--set", f"model.checkpoint='{checkpoint}'", "--output", surface]
    assert (workdir / "surfaces" / "run7").is_dir()


def test_array_script_refuses_a_task_beyond_the_list(workdir):
    r = _run_script(workdir, render_sbatch("job.toml", **CASES["array"]), SLURM_ARRAY_TASK_ID="3")
    assert r.returncode == 2
    assert "no checkpoint number 3" in r.stderr
    assert not (workdir / "srun.args").exists()


# -- submit ----------------------------------------------------------------------


def _fake_sbatch(tmp_path: Path, monkeypatch, body: str) -> None:
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    _stub(bindir, "sbatch", body)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ.get('PATH', '')}")


def test_submit_returns_job_id(tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, 'cat > "$PWD/submitted.sh"\necho "$*" > args\necho "4242;cluster1"\n')
    assert submit("#!/bin/bash\necho hi\n", workdir=tmp_path) == "4242"
    assert (tmp_path / "submitted.sh").read_text() == "#!/bin/bash\necho hi\n"
    assert (tmp_path / "args").read_text().strip() == "--parsable"


def test_submit_reports_sbatch_failure(tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, 'echo "sbatch: error: invalid partition specified: gpu" >&2\nexit 1\n')
    with pytest.raises(LaunchError, match="invalid partition specified: gpu") as info:
        submit("#!/bin/bash\n", workdir=tmp_path)
    assert "\n" not in str(info.value)


def test_submit_without_sbatch(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match="sbatch is not on PATH"):
        submit("#!/bin/bash\n", workdir=tmp_path)


def test_submit_missing_workdir(tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, "echo 1\n")
    with pytest.raises(LaunchError, match="does not exist"):
        submit("#!/bin/bash\n", workdir=tmp_path / "nope")
