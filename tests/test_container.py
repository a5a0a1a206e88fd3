"""docker/container-test.sh (``make container-test``) and the Dockerfile it builds, without building.

Building the image and running the checks inside it takes about ten minutes, so
it is a Makefile target of its own; these tests cover what can go wrong before
that: the script's options and the build context it hands to podman.
"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docker" / "container-test.sh"
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def run_script(*args):
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_help_lists_the_options():
    res = run_script("--help")
    assert res.returncode == 0
    assert "--no-build" in res.stdout and "--context DIR" in res.stdout and "MPILAND_IMAGE" in res.stdout
    assert "set -euo" not in res.stdout


def test_unknown_option_is_a_usage_error():
    res = run_script("--bogus")
    assert res.returncode == 2
    assert res.stderr.strip() == "container-test: unknown option --bogus (see --help)"


def test_context_holds_the_project_and_no_local_state(tmp_path):
    ctx = tmp_path / "ctx"
    res = run_script("--context", str(ctx))
    assert res.returncode == 0, res.stderr
    for needed in ("docker/Dockerfile", "docker/install-mpio-env.sh", "setup.cfg", "pyproject.toml",
                   "mpiland/__init__.py", "jobs/quickstart.toml", "tests/test_mpio.py", "tests/util.py"):
        assert (ctx / needed).is_file(), needed
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    present = [f for f in tracked.splitlines() if (ROOT / f).exists()]
    assert all((ctx / f).exists() for f in present)
    ignored = subprocess.run(["git", "check-ignore", ".venv", "surfaces", "runs"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    assert ignored and not any((ctx / p).exists() for p in ignored)
    assert not list(ctx.rglob("__pycache__"))
    # a second call must not write into an existing folder
    again = run_script("--context", str(ctx))
    assert again.returncode != 0 and "must not exist" in again.stderr


def test_dockerfile_takes_the_base_and_torch_the_script_passes():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=", text, re.M) and re.search(r"^FROM \$\{BASE\}$", text, re.M)
    assert re.search(r"^ARG TORCH=", text, re.M) and '--torch "$TORCH"' in text
    assert "ENTRYPOINT [" not in text  # `podman run IMAGE mpirun ...` runs the command as given
    script = SCRIPT.read_text()
    assert '--build-arg BASE="$BASE"' in script and '--build-arg TORCH="$TORCH"' in script
    assert re.search(r"^ARG MPILAND_WHEEL_CACHE=$", text, re.M) and "MPILAND_WHEEL_CACHE" not in text.split("ENV ")[1]
