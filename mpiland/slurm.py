"""SLURM batch scripts for mpiland jobs: render them from the templates in ``slurm/`` and submit them.

Four templates (plain text files in the repository's ``slurm/`` directory):

``single``
    one node, ``--ntasks-per-node=G --gpus-per-node=G`` (one rank per GPU);
``multi``
    the same on several nodes;
``preempt``
    ``--requeue`` and ``--signal=USR1@SECONDS``: the ranks save their finished
    chunks and exit with :data:`~mpiland.errors.EXIT_INTERRUPTED` before the time
    limit, and the script requeues the job, which resumes the same surface file;
``array``
    a job array over a checkpoint list file, one surface per checkpoint.

Every script launches ``srun --mpi=pmi2 ${MPILAND_PYTHON:-python} -m mpiland run
JOB ...``. Each ``{{name}}`` placeholder of a template is filled by
:func:`render_sbatch`; an ``#SBATCH`` line whose value is unset (no partition,
no GPUs) is left out, and template lines starting with ``##`` are notes that are
not copied.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, cast

from .errors import JobFileError, LaunchError

def _template_dir() -> Path:
    """The source tree's ``slurm/`` when run from a checkout, else the copy installed under ``share/``."""
    if os.environ.get("MPILAND_SLURM_TEMPLATES"):
        return Path(os.environ["MPILAND_SLURM_TEMPLATES"])
    source = Path(__file__).resolve().parent.parent / "slurm"
    installed = Path(sys.prefix) / "share" / "mpiland" / "slurm"
    return source if source.is_dir() or not installed.is_dir() else installed


TEMPLATE_DIR = _template_dir()
"""Directory of the ``*.sbatch`` templates (override with ``MPILAND_SLURM_TEMPLATES``)."""

TemplateName = Literal["auto", "single", "multi", "preempt", "array"]

TEMPLATES = ("single", "multi", "preempt", "array")
"""Template names; ``auto`` picks ``single`` for one node and ``multi`` otherwise."""

DEFAULT_CPUS_PER_TASK = 4
"""CPUs per rank when ``cpus_per_task`` is not given."""

DEFAULT_SIGNAL_SECONDS = 300
"""How long before the time limit the preempt template has SLURM send SIGUSR1."""

DEFAULT_ARRAY_OUTPUT = "surfaces"
"""Output directory of the array template when ``output`` is not given."""

SBATCH_TIMEOUT_S = 120

# SLURM time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME_RE = re.compile(
    r"^(?:(?P<days>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$"
)
_UNLIMITED = ("UNLIMITED", "INFINITE")


class _SbatchTemplate(string.Template):
    """``{{name}}`` placeholders; a ``{{`` not followed by ``name}}`` is an error."""

    delimiter = "{{"
    # string.Template compiles this string into a Pattern when the class is created, so the
    # attribute is a Pattern from then on (the stub knows only that type).
    pattern = cast("re.Pattern[str]", r"""
        \{\{(?:
          (?P<escaped>(?!))|
          (?P<named>[a-z_][a-z0-9_]*)\}\}|
          (?P<braced>(?!))|
          (?P<invalid>)
        )
    """)


def parse_time_limit(value: str) -> int | None:
    """Seconds of a SLURM time limit (``"90"``, ``"1:30:00"``, ``"2-00:00:00"``...); None for UNLIMITED.

    Raises :class:`~mpiland.errors.LaunchError` for anything SLURM would not accept.
    """
    text = str(value).strip()
    if text.upper() in _UNLIMITED:
        return None
    m = _TIME_RE.match(text)
    if m is None:
        raise LaunchError(
            f"time limit {value!r} is not a SLURM time; use MINUTES, HH:MM:SS or D-HH:MM:SS, e.g. --time 01:30:00")
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "days" in g:
        seconds = g["days"] * 86400 + g["dh"] * 3600 + g.get("dm", 0) * 60 + g.get("ds", 0)
        sub_minute_fields = [g.get("dm", 0), g.get("ds", 0)]
        sub_day_fields = [g["dh"]]
    else:
        parts = [g[k] for k in ("a", "b", "c") if k in g]
        if len(parts) == 1:  # minutes
            seconds, sub_minute_fields = parts[0] * 60, []
        elif len(parts) == 2:  # minutes:seconds
            seconds, sub_minute_fields = parts[0] * 60 + parts[1], [parts[1]]
        else:  # hours:minutes:seconds
            seconds, sub_minute_fields = parts[0] * 3600 + parts[1] * 60 + parts[2], parts[1:]
        sub_day_fields = []
    if any(f >= 60 for f in sub_minute_fields) or any(h >= 24 for h in sub_day_fields):
        raise LaunchError(
            f"time limit {value!r} has a field out of range (minutes and seconds 0-59, hours 0-23 after a day count); "
            "write it as e.g. --time 01:30:00")
    if seconds <= 0:
        raise LaunchError(f"time limit {value!r} is zero; give a positive --time, e.g. --time 01:00:00")
    return seconds


def _positive_int(name: str, value: object, flag: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LaunchError(f"{name} must be a whole number >= 1, got {value!r}; pass e.g. {flag} 1")
    return value


def template_path(name: str) -> Path:
    """Path of the template file ``name`` (one of :data:`TEMPLATES`)."""
    if name not in TEMPLATES:
        raise LaunchError(f"unknown SLURM template {name!r}; use one of auto, {', '.join(TEMPLATES)}")
    path = TEMPLATE_DIR / f"{name}.sbatch"
    if not path.is_file():
        raise LaunchError(
            f"SLURM template {path} is missing; reinstall mpiland (the templates go to <prefix>/share/mpiland/slurm) "
            "or point MPILAND_SLURM_TEMPLATES at a directory holding the *.sbatch templates")
    return path


def fill_template(text: str, values: dict[str, object]) -> str:
    """Fill ``{{name}}`` placeholders; drop ``##`` lines and lines whose placeholders are all None.

    A placeholder name without a key in ``values`` raises :class:`KeyError`.
    """
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("##"):
            continue
        tmpl = _SbatchTemplate(line)
        names = [m.group("named") for m in tmpl.pattern.finditer(line) if m.group("named")]
        for n in names:
            if n not in values:
                raise KeyError(f"template placeholder {{{{{n}}}}} has no value")
        if names and all(values[n] is None for n in names):
            continue
        out.append(tmpl.substitute({n: "" if values[n] is None else str(values[n]) for n in names}))
    return "\n".join(out) + "\n"


def _job_name(job_path: Path, name: str | None) -> str:
    raw = name if name is not None else f"mpiland-{job_path.stem}"
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("_")
    return clean or "mpiland"


def count_checkpoints(path: str | os.PathLike) -> int:
    """Number of checkpoint lines in a list file (blank lines and ``#`` comments skipped)."""
    p = Path(path)
    try:
        lines = p.read_text().splitlines()
    except FileNotFoundError:
        raise JobFileError(f"checkpoint list {p} not found; write one checkpoint path per line into it") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobFileError(f"checkpoint list {p} cannot be read ({exc}); give a text file with one path per line"
                           ) from None
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not entries:
        raise JobFileError(f"checkpoint list {p} has no checkpoint paths; write one path per line into it")
    quoted = [e for e in entries if "'" in e]
    if quoted:
        raise JobFileError(f"checkpoint path {quoted[0]!r} in {p} contains a single quote; rename the file")
    return len(entries)


def render_sbatch(
    job_path: str | os.PathLike,
    *,
    nodes: int = 1,
    gpus_per_node: int = 0,
    time: str = "01:00:00",
    partition: str | None = None,
    template: TemplateName | str = "auto",
    cpus_per_task: int | None = None,
    checkpoints: str | os.PathLike | None = None,
    output: str | os.PathLike | None = None,
    extra_args: Sequence[str] = (),
    ntasks_per_node: int | None = None,
    signal_seconds: int = DEFAULT_SIGNAL_SECONDS,
    job_name: str | None = None,
) -> str:
    """Return the text of an sbatch script that runs ``mpiland run job_path`` under SLURM.

    Args:
        job_path: the job file (must exist); written into the script as given, so a
            relative path is taken from the directory where the script is submitted.
        nodes: number of nodes (``auto`` picks ``single`` for 1, ``multi`` for more).
        gpus_per_node: GPUs per node; one rank per GPU. 0 = CPU-only job (no ``--gpus-per-node``).
        time: SLURM time limit (``MINUTES``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``UNLIMITED``).
        partition: ``--partition``, or None for the cluster's default partition.
        template: ``auto``, ``single``, ``multi``, ``preempt`` or ``array``.
        cpus_per_task: CPUs (torch threads) per rank; default :data:`DEFAULT_CPUS_PER_TASK`.
        checkpoints: for ``array`` (required there): a text file with one checkpoint
            path per line; the array has one task per path.
        output: the surface file (``--output``; default: the job file's ``output.path``);
            for ``array``, the directory of the surfaces (default ``surfaces``).
        extra_args: more arguments for ``mpiland run`` (e.g. ``["--set", "grid.x=[-1,1,21]"]``),
            each shell-quoted into the script.
        ntasks_per_node: ranks per node; default ``gpus_per_node``, or 1 for a CPU-only job.
        signal_seconds: for ``preempt``: send SIGUSR1 this many seconds before the time limit.
        job_name: ``--job-name``; default ``mpiland-<job file stem>``.

    Raises:
        JobFileError: the job file or checkpoint list is missing or unusable.
        LaunchError: an option is out of range, the template is unknown, or the
            template does not fit the options (e.g. ``array`` without ``checkpoints``).
    """
    nodes = _positive_int("nodes", nodes, "--nodes")
    if isinstance(gpus_per_node, bool) or not isinstance(gpus_per_node, int) or gpus_per_node < 0:
        raise LaunchError(f"gpus_per_node must be a whole number >= 0, got {gpus_per_node!r}; "
                          "pass e.g. --gpus-per-node 4 (0 for a CPU-only job)")
    if cpus_per_task is None:
        cpus_per_task = DEFAULT_CPUS_PER_TASK
    cpus_per_task = _positive_int("cpus_per_task", cpus_per_task, "--cpus-per-task")
    if ntasks_per_node is None:
        ntasks_per_node = gpus_per_node or 1
    ntasks_per_node = _positive_int("ntasks_per_node", ntasks_per_node, "--ntasks-per-node")
    time = str(time).strip()
    limit = parse_time_limit(time)
    if partition is not None:
        partition = str(partition).strip()
        if not re.fullmatch(r"[A-Za-z0-9_.,-]+", partition):
            raise LaunchError(f"partition {partition!r} is not a SLURM partition name; "
                              "pass a name from `sinfo -s`, e.g. --partition gpu")

    if template == "auto":
        template = "single" if nodes == 1 else "multi"
    path = template_path(template)
    if template == "single" and nodes != 1:
        raise LaunchError(f"the single template runs on one node but nodes={nodes}; use --template multi")
    if template != "array" and checkpoints is not None:
        raise LaunchError(f"a checkpoint list is only used by the array template; add --template array "
                          f"(the {template} template would ignore it)")

    job = Path(job_path)
    if not job.is_file():
        raise JobFileError(f"job file {job} not found; give the path of an existing job TOML file")

    extra = [str(a) for a in extra_args]
    values: dict[str, object] = {
        "job_name": _job_name(job, job_name),
        "nodes": nodes,
        "ntasks_per_node": ntasks_per_node,
        "gpus_per_node": gpus_per_node or None,
        "cpus_per_task": cpus_per_task,
        "time": time,
        "partition": partition,
    }
    run_args = [shlex.quote(str(job_path))]
    if template == "array":
        if checkpoints is None:
            raise LaunchError("the array template needs a checkpoint list; pass checkpoints=FILE "
                              "(--checkpoints FILE) with one checkpoint path per line")
        if any(a == "--output" or a.startswith("--output=") or a == "-o" for a in extra):
            raise LaunchError("the array template names each surface after its checkpoint; "
                              "give the surfaces' directory as output instead of --output in the extra arguments")
        n = count_checkpoints(checkpoints)
        values["array_last"] = n - 1
        values["checkpoints"] = shlex.quote(str(checkpoints))
        values["output_dir"] = shlex.quote(str(output if output is not None else DEFAULT_ARRAY_OUTPUT))
    elif output is not None:
        run_args += ["--output", shlex.quote(str(output))]
    if template == "preempt":
        if isinstance(signal_seconds, bool) or not isinstance(signal_seconds, int) or not 1 <= signal_seconds <= 65535:
            raise LaunchError(f"signal_seconds must be between 1 and 65535, got {signal_seconds!r}")
        if limit is not None and signal_seconds >= limit:
            raise LaunchError(
                f"time limit {time} leaves no time before the SIGUSR1 sent {signal_seconds} s ahead of it; "
                f"give a --time longer than {math.ceil(signal_seconds / 60)} minutes or a smaller --signal-seconds")
        values["signal_seconds"] = signal_seconds
    run_args += [shlex.quote(a) for a in extra]
    values["run_args"] = " ".join(run_args)
    return fill_template(path.read_text(), values)


def submit(script_text: str, *, workdir: str | os.PathLike) -> str:
    """Submit a batch script with ``sbatch --parsable`` from ``workdir``; return the job id.

    The script is passed on standard input, so relative paths in it are taken
    from ``workdir``. Raises :class:`~mpiland.errors.LaunchError` if sbatch is
    missing, times out, or refuses the script.
    """
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError("sbatch is not on PATH; run this on a SLURM login node, "
                          "or save the script and submit it there with sbatch")
    wd = Path(workdir)
    if not wd.is_dir():
        raise LaunchError(f"working directory {wd} does not exist; submit from an existing directory")
    try:
        proc = subprocess.run([sbatch, "--parsable"], input=script_text, cwd=wd, capture_output=True, text=True,
                              timeout=SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"sbatch did not answer within {SBATCH_TIMEOUT_S} s; check that slurmctld is reachable "
                          "(scontrol ping) and submit again") from None
    except OSError as exc:
        raise LaunchError(f"sbatch could not be started ({exc}); check the SLURM installation") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit status {proc.returncode}"
        raise LaunchError(f"sbatch failed ({detail}); fix what it names and submit again")
    job_id = proc.stdout.strip().splitlines()[-1].split(";")[0].strip() if proc.stdout.strip() else ""
    if not job_id:
        raise LaunchError(f"sbatch printed no job id (output: {proc.stdout.strip()!r}); check squeue for the job")
    return job_id
