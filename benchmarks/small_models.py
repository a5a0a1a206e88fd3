"""A small model against its floor on an idle and on a loaded machine: one point per pass and batched points.

    python benchmarks/small_models.py [--model mlp] [--repeats 3] [--busy N] [--load torch|spin] [--json]

Each run is a fresh process running ``mpiland bench --model MODEL`` in-process
(:func:`mpiland.bench.bench_model`: rounds that alternate the bare forward floor and
mpiland over the same resident data, so the load is the same for both), with
mpiland's default OpenMP wait policy (imported before torch: PASSIVE when other work
is runnable, the runtime's default on an idle machine). Conditions: "idle" (nothing
added by this script) and BUSY neighbours (default one per core) of the kind
``--load`` names, started before the run and stopped after it (the neighbours of
``benchmarks/shared_cores.py``: "torch" runs the demo CNN's forward pass in a loop
with torch's defaults, "spin" is ``while True: pass``). Conditions alternate, the
order reversed every other repeat. Reported per condition, medians of REPEATS runs:
mpiland's time per point at one point per pass over the floor's (``ratio_to_floor``)
and the best batched rate over the floor's rate (``batched_speedup``, with the points
per pass it was reached at), beside the 1-minute load average at the start and the
mean number of runnable tasks during the run. ``--json``: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from shared_cores import Sampler, clean_env, start_load, stop_load  # noqa: E402


def worker(model: str) -> None:
    """In a fresh process: the bench of ``model`` on the CPU; print its ratios and the wait policy as JSON."""
    sys.path.insert(0, str(REPO))
    import mpiland.launch  # before torch, as the mpiland command imports it
    from mpiland.bench import CASES, bench_model

    import torch

    r = bench_model(CASES[model], torch.device("cpu"))
    wait = mpiland.launch.wait_policy()
    print(json.dumps({"ratio_to_floor": r.ratio_to_floor, "batched_speedup": r.batched_speedup,
                      "points_per_pass": r.points_per_pass, "floor_ms": 1e3 * r.floor_s_per_point,
                      "ms_per_point": 1e3 * r.s_per_point, "threads": r.threads, "wait_setting": wait.setting,
                      "wait_others": wait.others}))


def measure(model: str) -> dict:
    """One bench in a fresh process with no OpenMP wait variable of this environment (mpiland chooses)."""
    load1 = os.getloadavg()[0]
    with Sampler() as sampler:
        proc = subprocess.run([sys.executable, __file__, "--worker", model], cwd=REPO, env=clean_env(),
                              capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"the bench failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(load1_at_start=round(load1, 2), runnable_mean=round(sampler.mean, 2))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mlp", choices=["mlp", "cnn", "resnet20"], help="bench model (default mlp)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per condition (default 3)")
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1,
                    help="neighbour processes in the loaded runs (default: one per core)")
    ap.add_argument("--load", default="torch", choices=["torch", "spin"], help="the neighbours' kind (default torch)")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of text")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    say(f"{os.cpu_count()} cores; {args.model}; idle and beside {args.busy} {args.load} neighbour(s); "
        f"{args.repeats} repeats; load average at start {os.getloadavg()[0]:.2f}")
    conditions = ["idle", args.load]
    runs: list[dict] = []
    for repeat in range(args.repeats):
        for condition in conditions if repeat % 2 == 0 else conditions[::-1]:
            neighbours = start_load("idle" if condition == "idle" else args.load, args.busy)
            try:
                result = measure(args.model)
            finally:
                stop_load(neighbours)
            result.update(condition=condition, repeat=repeat)
            runs.append(result)
            say(f"  {condition:5s}: ratio to floor {result['ratio_to_floor']:.2f} at 1 point per pass, batched "
                f"{result['batched_speedup']:.2f}x (K = {result['points_per_pass']}); floor {result['floor_ms']:.3f} "
                f"ms; load average {result['load1_at_start']:.2f}, {result['runnable_mean']:.1f} runnable tasks; "
                f"wait policy {result['wait_setting'] or 'the runtime default'}")

    def summary(condition: str) -> dict:
        mine = [r for r in runs if r["condition"] == condition]
        return {key: round(statistics.median(r[key] for r in mine), 3)
                for key in ("ratio_to_floor", "batched_speedup", "floor_ms", "load1_at_start", "runnable_mean")}

    report = {"model": args.model, "cores": os.cpu_count(), "busy": args.busy, "load": args.load,
              "repeats": args.repeats, "idle": summary("idle"), "loaded": summary(args.load), "runs": runs}
    if args.json:
        print(json.dumps(report))
        return
    for condition, key in (("idle", "idle"), (args.load, "loaded")):
        s = report[key]
        assert isinstance(s, dict)
        print(f"{condition:5s} (median of {args.repeats}): ratio to floor {s['ratio_to_floor']:.2f} at one point per "
              f"pass (target <= 1.3), batched {s['batched_speedup']:.2f}x the floor's points/s (target >= 2); "
              f"load average {s['load1_at_start']}, {s['runnable_mean']} runnable tasks")


if __name__ == "__main__":
    main()
