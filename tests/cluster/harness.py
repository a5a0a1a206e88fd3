"""A throw-away one-node SLURM cluster for tests.

:class:`SlurmCluster` writes a minimal ``slurm.conf`` into a private temporary
directory, generates a munge key, and starts ``munged``, ``slurmctld`` and
``slurmd`` on this host as root, all pointing at that directory (own munge
socket, own ports, own state and spool directories), so it neither needs nor
touches ``/etc/slurm`` or a system munge. Clients find the cluster through the
``SLURM_CONF`` environment variable (see :meth:`SlurmCluster.env`).

The configuration is made for containers: no cgroups (``proctrack/linuxproc``,
``task/none``), ``SlurmdParameters=config_overrides`` so the node always
advertises ``CPUS`` CPUs whatever the hardware says, ``MpiDefault=pmi2``,
short timeouts, and job requeueing allowed.

Debian/Ubuntu packages: ``slurmctld slurmd munge slurm-client``.

Stopping cancels every job, terminates the daemons (SIGTERM, then SIGKILL), and
ends the job processes that outlived them; those are recognised by the marker
variable ``MPILAND_TEST_CLUSTER=<state dir>`` in their environment, which the
daemons and every client started through :meth:`SlurmCluster.env` carry.

Command-line use (keeps the cluster up until Ctrl-C)::

    python -m tests.cluster.harness      # or: python tests/cluster/harness.py
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRED_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "sinfo", "scontrol", "scancel")
"""Programs the harness needs (from the packages slurmctld, slurmd, munge, slurm-client)."""

APT_PACKAGES = ("slurmctld", "slurmd", "munge", "slurm-client")
"""The Debian packages that provide :data:`REQUIRED_BINARIES`."""

MARKER_VAR = "MPILAND_TEST_CLUSTER"
"""Environment variable whose value (the state directory) marks this cluster's processes."""

CPUS = 2
"""CPUs the node advertises."""

PARTITION = "debug"

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
                "BOOT_FAIL", "DEADLINE")
"""Job states after which a job does not run again by itself."""

_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def find_binary(name: str) -> str | None:
    """Path of ``name`` on PATH or in the sbin directories (daemons live there), or None."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = Path(d, name)
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (one sentence), or None if it can."""
    missing = [b for b in REQUIRED_BINARIES if find_binary(b) is None]
    if missing:
        return (
            f"SLURM/munge programs not installed ({', '.join(missing)} missing); "
            f"install them with: apt-get install -y {' '.join(APT_PACKAGES)}"
        )
    if os.geteuid() != 0:
        return "starting slurmd/slurmctld/munged needs root; run the SLURM cluster tests as root (e.g. in CI)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_memory_mb() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return max(256, int(line.split()[1]) // 1024 - 512)
    except OSError:
        pass
    return 1024


class ClusterError(RuntimeError):
    """The cluster did not come up; the message includes the daemon logs."""


class SlurmCluster:
    """A one-node SLURM cluster living in a temporary directory.

    Use :meth:`start` / :meth:`stop` (or the object as a context manager),
    then run clients with ``env=cluster.env()`` or through :meth:`run`.
    """

    slurmd_timeout = 10
    """``SlurmdTimeout``: seconds without an answer from a slurmd after which its node is declared down."""

    message_timeout = 10
    """``MessageTimeout``: seconds an RPC (such as the controller's ping of a node) may take."""

    def __init__(self, root: str | os.PathLike | None = None, *, cpus: int = CPUS):
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mpiland-slurm-"))
        self.cpus = cpus
        self.hostname = socket.gethostname().split(".")[0]
        self.controller_addr = "127.0.0.1"
        # Job ids differ between clusters: MPICH names its shared-memory segments after the job and step, and a
        # job killed with SIGKILL leaves its segments in /dev/shm, where a later job with the same id would attach.
        self.first_job_id = 1000 + secrets.randbelow(50_000_000)
        self.node_names = [self.hostname]
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.logs = self.root / "log"
        self._procs: dict[str, subprocess.Popen] = {}
        self.startup_seconds: float | None = None

    # -- configuration -------------------------------------------------

    def slurm_conf_text(self) -> str:
        """The slurm.conf of this cluster."""
        r = self.root
        return f"""\
# Test cluster written by tests/cluster/harness.py; do not use in production.
ClusterName=mpilandtest
FirstJobId={self.first_job_id}
SlurmctldHost={self.hostname}({self.controller_addr})
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job may start again this many seconds after it ended (default 120).
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
TmpFS={r}/tmp
# Containers: no cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=pmi2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule at once after submissions and every 2 s (requeued jobs whose begin time has come).
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
# Short timeouts so that tests and teardown are quick.
SlurmctldTimeout=10
SlurmdTimeout={self.slurmd_timeout}
MessageTimeout={self.message_timeout}
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=600
{self.nodes_conf_text()}"""

    def nodes_conf_text(self) -> str:
        """The NodeName and PartitionName lines of slurm.conf: this host as the one node."""
        return (f"NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_real_memory_mb()} "
                f"State=UNKNOWN\nPartitionName={PARTITION} Nodes={self.hostname} Default=YES MaxTime=INFINITE "
                "State=UP\n")

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for clients (sbatch, srun, sinfo, ...) of this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        env[MARKER_VAR] = str(self.root)
        return env

    # -- lifecycle -----------------------------------------------------

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        """Write the configuration, start the daemons, and wait until the node is idle."""
        reason = unavailable_reason()
        if reason:
            raise ClusterError(reason)
        t0 = time.monotonic()
        for sub in ("state", "spool", "run", "log", "tmp", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o755)
        self.ctld_port = _free_port()
        self.slurmd_port = _free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = _free_port()
        self.conf.write_text(self.slurm_conf_text())
        try:
            self._start_munge()
            self._spawn(
                "slurmctld",
                [find_binary("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)],
            )
            self._wait_for(self._controller_up, timeout, "slurmctld did not answer")
            self._start_slurmd()
            self._wait_for(self._node_idle, timeout, "the node did not become idle")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _start_slurmd(self) -> None:
        """Start the compute node daemon(s)."""
        self._spawn("slurmd", [find_binary("slurmd"), "-D", "-f", str(self.conf)])

    def _start_munge(self) -> None:
        key = self.root / "munge" / "munge.key"
        mungekey = find_binary("mungekey")
        if mungekey:
            subprocess.run([mungekey, "--create", f"--keyfile={key}"], check=True, capture_output=True)
        else:
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        self._spawn(
            "munged",
            [
                find_binary("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                f"--log-file={self.logs / 'munged.log'}",
                f"--seed-file={self.root / 'munge' / 'munged.seed'}",
            ],
        )
        self._wait_for(self.munge_socket.exists, 20.0, "munged did not create its socket")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.logs / f"{name}.stdout", "ab")
        try:
            self._procs[name] = subprocess.Popen(
                argv, env=self.env(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            out.close()

    def _wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self._procs.items():
                if p.poll() is not None:
                    raise ClusterError(f"{name} exited with status {p.returncode} while starting.\n{self.log_tail()}")
            if predicate():
                return
            time.sleep(0.2)
        raise ClusterError(f"{what} within {timeout:.0f} s.\n{self.log_tail()}")

    def _controller_up(self) -> bool:
        r = self.run(["scontrol", "ping"], check=False, timeout=15)
        return r.returncode == 0 and "UP" in r.stdout

    def node_state(self, node: str | None = None) -> str:
        """The state sinfo reports for ``node`` (default: the first node), e.g. ``idle``; "" if unknown."""
        name = self.node_names[0] if node is None else node
        r = self.run(["sinfo", "-h", "-N", "-n", name, "-o", "%T"], check=False, timeout=15)
        return r.stdout.strip() if r.returncode == 0 else ""

    def _node_idle(self) -> bool:
        return all(self.node_state(n) == "idle" for n in self.node_names)

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, end leftover job processes, remove the directory."""
        if self._procs.get("slurmctld") and self._procs["slurmctld"].poll() is None:
            self.run(["scancel", "--full", "--partition", PARTITION], check=False, timeout=15)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = self.run(["squeue", "-h", "-o", "%i"], check=False, timeout=15)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.3)
        for name in [n for n in self._procs if n.startswith("slurmd")] + ["slurmctld", "munged"]:
            p = self._procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self._kill_leftovers()
        self._procs.clear()
        if self._own_root and os.environ.get("MPILAND_KEEP_CLUSTER_DIR") != "1":
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_leftovers(self) -> None:
        """SIGKILL the processes (slurmstepd, job scripts, ranks) that carry this cluster's marker."""
        marker = f"{MARKER_VAR}={self.root}".encode()
        me = os.getpid()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                try:
                    os.kill(int(entry.name), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 60, cwd=None, env_extra=None
            ) -> subprocess.CompletedProcess:
        """Run a client command against this cluster and capture its output."""
        env = self.env()
        if env_extra:
            env.update(env_extra)
        exe = find_binary(argv[0]) or argv[0]
        r = subprocess.run([exe, *argv[1:]], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed with status {r.returncode}: {r.stderr.strip()}")
        return r

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        """``scontrol show job -o`` as one dict of KEY=VALUE fields per record (an array job has several)."""
        r = self.run(["scontrol", "show", "job", "-o", str(job_id)], check=False, timeout=15)
        if r.returncode != 0:
            return []
        records = []
        for line in r.stdout.splitlines():
            info: dict[str, str] = {}
            for field in line.split():
                if "=" in field:
                    k, _, v = field.partition("=")
                    info.setdefault(k, v)
            if info:
                records.append(info)
        return records

    def job_info(self, job_id: str) -> dict[str, str]:
        """The first record of ``scontrol show job`` ({} once the record is gone)."""
        records = self.job_records(job_id)
        return records[0] if records else {}

    def job_state(self, job_id: str) -> str:
        return self.job_info(job_id).get("JobState", "")

    def wait_records(self, job_id: str, timeout: float = 120.0) -> list[dict[str, str]]:
        """Wait until every record of the job (every task of an array) has ended; return the records."""
        deadline = time.monotonic() + timeout
        records: list[dict[str, str]] = []
        while time.monotonic() < deadline:
            records = self.job_records(job_id)
            if records and all(r.get("JobState") in FINAL_STATES for r in records):
                return records
            time.sleep(1.0)
        states = ", ".join(f"{r.get('JobId')}: {r.get('JobState')}" for r in records) or "no record"
        raise ClusterError(f"job {job_id} not finished after {timeout:.0f} s ({states}).\n{self.log_tail()}")

    def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, str]:
        """Wait until the job has ended; return its record."""
        return self.wait_records(job_id, timeout)[0]

    def log_tail(self, lines: int = 25) -> str:
        out = []
        for log in sorted(self.logs.glob("*")) if self.logs.is_dir() else []:
            try:
                text = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if text:
                out.append(f"--- {log.name} ---")
                out.extend(text)
        return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover - manual use
    c = SlurmCluster()
    c.start()
    print(f"cluster up in {c.startup_seconds:.1f} s; use: export SLURM_CONF={c.conf} {MARKER_VAR}={c.root}")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
