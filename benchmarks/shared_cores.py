"""Shared cores: the demo job on an idle and on a loaded machine, with the old and the new OpenMP wait default.

    python benchmarks/shared_cores.py [--grid 11] [--repeats 3] [--busy N] [--load torch,spin] [--no-passive] [--json]

Policies. "old" is how mpiland ran before it chose a wait policy: torch's OpenMP
runtime with its own default (GNU libgomp spins about 300,000 times before a
waiting thread sleeps). "new" is mpiland's default: imported before torch, it
sets ``OMP_WAIT_POLICY=PASSIVE`` when it sees other runnable work and keeps the
runtime's default on an idle machine (mpiland.launch.choose_wait_policy).
"passive" (skipped with --no-passive) is ``OMP_WAIT_POLICY=PASSIVE`` set by the
user whatever the load: what always sleeping would cost on idle cores.

Loads. "idle": nothing added by this script. "spin": BUSY processes (default one
per core) running ``while True: pass``. "torch": BUSY processes each running the
demo CNN's forward pass in a loop with torch's default threads and OpenMP
default, as other people's PyTorch jobs or test suites on a shared workstation
do. The load starts before the run (it is running, not starting, when the run
begins) and stops after it. With BUSY neighbours on as many cores, a run's honest
share is about cores ÷ (cores + BUSY) of the machine: loaded ÷ idle near 2× for
"spin" (3× where each neighbour has as many threads as the run, "torch" on 2
cores), and the target is within about 3×.

Each run is a fresh process evaluating ``jobs/quickstart.toml`` on a GRID × GRID
grid into a new surface file (the checkpoint is trained first if missing); the
figure is milliseconds per point of the evaluation phase (set-up excluded).
Conditions alternate (loads, policies, the order reversed every other repeat);
medians of REPEATS runs are reported. Beside each figure stand the 1-minute load
average when the run started and the mean number of runnable tasks while it ran
(/proc/stat: the run's own threads, the load and whatever else the machine does:
on a shared machine "idle" only means that this script adds nothing) and, for
"new", what mpiland saw and chose. With --json it prints one JSON object:
``loaded_over_idle_old``, ``loaded_over_idle_new``, ``idle_new_over_idle_old``
and ``loaded_new_over_loaded_old`` for the first load in --load ("torch" by
default: the kind that collapses the old default), the same per load under
``by_load``, the medians and every run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = REPO / "jobs" / "quickstart.toml"
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")  # mpiland.launch.WAIT_VARS, kept torch-free here

TORCH_NEIGHBOUR = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from mpiland.demo import digits_cnn

model = digits_cnn(channels=8, hidden=32).eval()
x = torch.randn(360, 1, 8, 8)
with torch.inference_mode():
    model(x)
    print("ready", flush=True)
    while True:
        model(x)
"""
"""A neighbour's PyTorch job: imports torch before mpiland, so its OpenMP threads spin as torch's default has them."""


def worker(policy: str, grid: int, output: str, threads: int) -> None:
    """In a fresh process: evaluate the demo job; print points, evaluation seconds and the wait policy as JSON."""
    sys.path.insert(0, str(REPO))
    if policy == "old":
        import torch  # noqa: F401  - first, as before: the OpenMP runtime reads an environment mpiland has not touched
    import mpiland.launch
    from mpiland.jobfile import load_job
    from mpiland.run import run_job

    values = {"output.path": output, "output.overwrite": True, "run.progress": "none", "run.threads": threads,
              "grid.x": [-1.0, 1.0, grid], "grid.y": [-1.0, 1.0, grid]}
    job = load_job(str(JOB), values=values)
    summary = run_job(job)
    wait = mpiland.launch.wait_policy()
    print(json.dumps({"points": summary.points_evaluated, "eval_seconds": summary.eval_seconds,
                      "wait_setting": wait.setting, "wait_source": wait.source, "wait_others": wait.others}))


def runnable() -> int:
    """Tasks runnable right now, machine-wide (``procs_running`` in /proc/stat), less the one reading it."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("procs_running"):
                    return int(line.split()[1]) - 1
    except OSError:
        pass
    return -1


class Sampler:
    """The mean of :func:`runnable` every 50 ms while the ``with`` block runs."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(runnable())
            self._stop.wait(0.05)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float:
        return statistics.mean(self.samples) if self.samples else float("nan")


def clean_env() -> dict[str, str]:
    """This environment without any OpenMP wait variable."""
    return {k: v for k, v in os.environ.items() if k not in WAIT_VARS}


def start_load(kind: str, n: int) -> list[subprocess.Popen]:
    """``n`` neighbours of ``kind`` ("spin" or "torch"), running by the time this returns."""
    if kind == "idle":
        return []
    if kind == "spin":
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
        time.sleep(0.5)  # on the scheduler's run queue, not starting
        return procs
    procs = [subprocess.Popen([sys.executable, "-c", TORCH_NEIGHBOUR, str(REPO)], env=clean_env(),
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for proc in procs:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            stop_load(procs)
            raise SystemExit("a torch neighbour did not start")
    time.sleep(0.5)
    return procs


def stop_load(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.kill()
    for proc in procs:
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def measure(policy: str, grid: int, threads: int, tmp: Path, index: int) -> dict:
    """One run in a fresh process, with every OpenMP wait variable removed from its environment ("passive": but one)."""
    env = clean_env()
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = tmp / f"run{index}.h5"
    cmd = [sys.executable, __file__, "--worker", "old" if policy == "old" else "new", "--grid", str(grid),
           "--output", str(out), "--threads", str(threads)]
    load1 = os.getloadavg()[0]
    with Sampler() as sampler:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"run failed ({policy}):\n{proc.stderr}")
    out.unlink(missing_ok=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = {"old": "torch-first", "new": "mpiland", "passive": "user"}[policy]
    if result["wait_source"] != expected or (policy == "passive" and result["wait_setting"] != "OMP_WAIT_POLICY=PASSIVE"):
        raise SystemExit(f"the {policy} run did not get the {policy} wait policy: {result}")
    result.update(policy=policy, ms_per_point=1e3 * result["eval_seconds"] / result["points"],
                  load1_at_start=round(load1, 2), runnable_mean=round(sampler.mean, 2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=11, help="points per axis (default 11: 121 points)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per condition (default 3)")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                    help="neighbour processes in the loaded runs (default: one per core)")
    ap.add_argument("--load", default="torch,spin", help="loads besides idle, comma-separated (default torch,spin)")
    ap.add_argument("--threads", type=int, default=0, help="run.threads (default 0: the cores, as in the demo)")
    ap.add_argument("--no-passive", action="store_true", help="skip the always-PASSIVE runs")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    ap.add_argument("--worker", choices=["old", "new"], help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.grid, args.output, args.threads)
        return
    kinds = [k for k in args.load.split(",") if k]
    if not kinds or set(kinds) - {"spin", "torch"}:
        ap.error("--load takes spin, torch or both")

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    cores = os.cpu_count() or 1
    loads = ["idle", *kinds]
    policies = ("old", "new") if args.no_passive else ("old", "new", "passive")
    say(f"{cores} cores, {args.busy} neighbour process(es) per load ({', '.join(kinds)}), {args.grid}x{args.grid} "
        f"grid, {args.repeats} repeats; load average at start {os.getloadavg()[0]:.2f}")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mpiland-shared-") as tmp_name:
        tmp = Path(tmp_name)
        measure("new", args.grid, args.threads, tmp, 0)  # trains runs/quickstart if needed; warms caches
        index = 1
        for repeat in range(args.repeats):
            order = loads if repeat % 2 == 0 else loads[::-1]
            for load in order:
                neighbours = start_load(load, args.busy)
                try:
                    for policy in (policies if repeat % 2 == 0 else policies[::-1]):
                        result = measure(policy, args.grid, args.threads, tmp, index)
                        index += 1
                        result.update(load=load, repeat=repeat)
                        runs.append(result)
                        chose = ""
                        if policy == "new":
                            chose = (f"; saw {result['wait_others']:.1f} other runnable, chose "
                                     f"{result['wait_setting'] or 'the default'}")
                        say(f"  {load:5s} {policy:7s}: {result['ms_per_point']:7.2f} ms/point   load average "
                            f"{result['load1_at_start']:.2f}, {result['runnable_mean']:.1f} runnable tasks during "
                            f"the run{chose}")
                finally:
                    stop_load(neighbours)
                if neighbours:
                    time.sleep(1.0)  # let the neighbours' exit settle

    def median(load: str, policy: str) -> float:
        return statistics.median(r["ms_per_point"] for r in runs if r["load"] == load and r["policy"] == policy)

    def mean_of(key: str, load: str) -> float:
        return round(statistics.mean(r[key] for r in runs if r["load"] == load), 2)

    ms = {f"{load}_{policy}": round(median(load, policy), 3) for load in loads for policy in policies}

    def ratios(load: str) -> dict:
        out = {"loaded_over_idle_old": round(ms[f"{load}_old"] / ms["idle_old"], 3),
               "loaded_over_idle_new": round(ms[f"{load}_new"] / ms["idle_new"], 3),
               "loaded_new_over_loaded_old": round(ms[f"{load}_new"] / ms[f"{load}_old"], 3),
               "new_chose_passive": sum(r["wait_setting"] == "OMP_WAIT_POLICY=PASSIVE" for r in runs
                                        if r["load"] == load and r["policy"] == "new"),
               "load1_mean": mean_of("load1_at_start", load), "runnable_mean": mean_of("runnable_mean", load)}
        if "passive" in policies:
            out["loaded_over_idle_passive"] = round(ms[f"{load}_passive"] / ms["idle_passive"], 3)
        return out

    by_load = {load: ratios(load) for load in kinds}
    idle = {"idle_new_over_idle_old": round(ms["idle_new"] / ms["idle_old"], 3),
            "new_chose_passive": sum(r["wait_setting"] == "OMP_WAIT_POLICY=PASSIVE" for r in runs
                                     if r["load"] == "idle" and r["policy"] == "new"),
            "load1_mean": mean_of("load1_at_start", "idle"), "runnable_mean": mean_of("runnable_mean", "idle")}
    if "passive" in policies:
        idle["idle_passive_over_idle_old"] = round(ms["idle_passive"] / ms["idle_old"], 3)
    first = by_load[kinds[0]]
    report = {
        "cores": cores, "busy_processes": args.busy, "loads": kinds, "grid": args.grid, "points": runs[0]["points"],
        "repeats": args.repeats, "threads": args.threads, "ms_per_point_median": ms,
        "loaded_over_idle_old": first["loaded_over_idle_old"], "loaded_over_idle_new": first["loaded_over_idle_new"],
        "idle_new_over_idle_old": idle["idle_new_over_idle_old"],
        "loaded_new_over_loaded_old": first["loaded_new_over_loaded_old"],
        "idle": idle, "by_load": by_load, "runs": runs,
    }
    if args.json:
        print(json.dumps(report))
        return
    print(f"median ms/point ({args.repeats} runs each):")
    for load in loads:
        print(f"  {load:5s} " + ", ".join(f"{policy} {ms[f'{load}_{policy}']:.2f}" for policy in policies))
    print(f"idle: new / old {idle['idle_new_over_idle_old']:.2f} (target: 1 within noise); new chose PASSIVE in "
          f"{idle['new_chose_passive']} of {args.repeats}; load average {idle['load1_mean']}, "
          f"{idle['runnable_mean']} runnable tasks"
          + (f"; always PASSIVE / old {idle['idle_passive_over_idle_old']:.2f}" if "passive" in policies else ""))
    for load, r in by_load.items():
        print(f"{load}: loaded / idle old {r['loaded_over_idle_old']:.2f}, new {r['loaded_over_idle_new']:.2f}"
              + (f", always PASSIVE {r['loaded_over_idle_passive']:.2f}" if "passive" in policies else "")
              + f" (target: within about 3); new / old {r['loaded_new_over_loaded_old']:.2f}; new chose PASSIVE in "
              f"{r['new_chose_passive']} of {args.repeats}; load average {r['load1_mean']}, "
              f"{r['runnable_mean']} runnable tasks")


if __name__ == "__main__":
    main()
