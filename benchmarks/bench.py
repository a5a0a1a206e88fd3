"""Speed and memory figures of mpiland, measured in one run and printed as ratios.

    python benchmarks/bench.py [--quick] [--json]

1. Per model (small MLP, digits CNN, ResNet-20 on CIFAR-shaped data, 1,024
   samples each): the bare forward floor, mpiland's time per point one point at a
   time and its ratio to the floor, and points/s with several points per pass
   with the speed-up over the floor (``mpiland bench``).
2. Grid-size independence: the small MLP on an 11×11 and a 101×101 grid through
   the whole ``mpiland run`` path (protocol, chunks, surface file); the ratio of
   their points/s (target: within 10 %).
3. Peak memory (max RSS) of those two runs, each in its own process: it must not
   grow with the grid.
4. With mpiexec available: 1 vs 2 ranks on the same cores (benchmarks/scaling.py).

``--against DIR`` compares with another version of mpiland instead (DIR holds its
``mpiland`` package, e.g. ``git archive <rev> mpiland | tar -x -C DIR``): rounds
alternate one process of each version on the same models (``--models``), each
measuring its own floor, so the ratios of the two compare under the same load.
The load average is printed beside every figure.

Targets (issue "Speed near the hardware limit"): ResNet-20 ratio to floor ≤ 1.05;
batched ≥ 3× the floor's points/s for the MLP and CNN; grid ratio within 10 %.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GRID_JOB = """\
name = "grid-scaling"
[model]
factory = "mpiland.demo:digits_mlp"
[data]
splits = ["test"]
[grid]
x = [-1.0, 1.0, {n}]
y = [-1.0, 1.0, {n}]
[output]
path = "{out}"
overwrite = true
[run]
progress = "none"
"""


def grid_worker(n: int, tmp: str) -> None:
    """In its own process: run the MLP job on an n×n grid; print points/s and peak RSS as JSON."""
    from mpiland.jobfile import parse_job
    from mpiland.run import run_job

    job = parse_job(GRID_JOB.format(n=n, out=f"{tmp}/grid{n}.h5"), source="grid.toml")
    summary = run_job(job)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"grid": n, "points": summary.points_evaluated,
                      "points_per_s": summary.points_evaluated / summary.eval_seconds, "max_rss_mb": rss_mb}))


def run_grid(n: int, tmp: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--grid-worker", str(n), "--tmp", tmp], cwd=REPO,
                          capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"grid run {n}x{n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_worker(model: str, path: str | None, repeats: int) -> None:
    """In its own process: ``mpiland.bench`` of the mpiland found at ``path`` (else this tree) on one model;
    print its result as JSON with the load average before and after."""
    if path:
        sys.path.insert(0, path)
    importlib.import_module("mpiland")  # before torch, so that it chooses the OpenMP wait policy, as a run does
    import torch

    from mpiland.bench import CASES, bench_model
    from mpiland.launch import threads_per_rank, wait_policy

    torch.set_num_threads(threads_per_rank(0, 1))
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    before = os.getloadavg()[0]
    result = bench_model(CASES[model], device, repeats=repeats).to_dict()
    print(json.dumps({**result, "load": [round(before, 2), round(os.getloadavg()[0], 2)],
                      "wait_policy": wait_policy().setting or "default"}))


def compare(against: str, models: list[str], rounds: int, repeats: int, as_json: bool) -> None:
    """Alternate processes of this tree and of the mpiland at ``against`` on each model; print medians."""
    versions = {"this": None, "against": str(Path(against).resolve())}
    # One OpenMP wait policy for every process, chosen here for the load now (an empty value keeps the
    # runtime's default): processes choosing each for itself would compare different policies.
    importlib.import_module("mpiland")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "")}
    if not as_json:
        print(f"OpenMP wait policy for all rounds: {env['OMP_WAIT_POLICY'] or 'the runtime default'}")
    runs: dict[tuple[str, str], list[dict]] = {(m, v): [] for m in models for v in versions}
    for i in range(rounds):
        for m in models:
            for v, path in (versions.items() if i % 2 == 0 else reversed(versions.items())):
                cmd = [sys.executable, __file__, "--bench-worker", m, "--repeats", str(repeats)]
                proc = subprocess.run(cmd + (["--path", path] if path else []), cwd=REPO, env=env,
                                      capture_output=True, text=True)
                if proc.returncode:
                    raise SystemExit(f"{v} ({path or REPO}) failed on {m}:\n{proc.stderr}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                runs[(m, v)].append(r)
                if not as_json:
                    print(f"round {i + 1} {m:8s} {v:7s} load {r['load'][0]:5.2f}-{r['load'][1]:5.2f} "
                          f"({r['wait_policy']})  ratio to floor "
                          f"{r['ratio_to_floor']:.3f}  best K={r['points_per_pass']} speed-up {r['batched_speedup']:.2f}x  "
                          f"points/s {r['points_per_s']}", flush=True)
    for (m, v), rs in runs.items():
        summary = {"model": m, "version": v, "rounds": len(rs),
                   "ratio_to_floor": round(statistics.median(r["ratio_to_floor"] for r in rs), 3),
                   "batched_speedup": round(statistics.median(r["batched_speedup"] for r in rs), 3),
                   "floor_ms_per_point": round(statistics.median(r["floor_s_per_point"] for r in rs) * 1e3, 4),
                   "load": [min(r["load"][0] for r in rs), max(r["load"][1] for r in rs)]}
        if as_json:
            print(json.dumps(summary))
        else:
            print(f"{m:8s} {v:7s} median of {len(rs)} rounds: ratio to floor {summary['ratio_to_floor']:.3f}, "
                  f"batched speed-up {summary['batched_speedup']:.2f}x, floor {summary['floor_ms_per_point']} ms/point "
                  f"(load {summary['load'][0]:.2f}-{summary['load'][1]:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of text")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 rank measurement")
    ap.add_argument("--against", metavar="DIR", help="compare with the mpiland package in DIR, in alternating processes")
    ap.add_argument("--models", default="mlp", help="with --against: comma-separated models (mlp, cnn, resnet20)")
    ap.add_argument("--rounds", type=int, default=4, help="with --against: processes per version and model")
    ap.add_argument("--grid-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    ap.add_argument("--bench-worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.grid_worker:
        grid_worker(args.grid_worker, args.tmp)
        return
    if args.bench_worker:
        bench_worker(args.bench_worker, args.path, args.repeats)
        return
    if args.against:
        compare(args.against, args.models.split(","), args.rounds, 3 if args.quick else 5, args.json)
        return

    importlib.import_module("mpiland")  # before torch, so that it chooses the OpenMP wait policy, as a run does
    import torch

    from mpiland.bench import CASES, bench_model, format_result
    from mpiland.launch import threads_per_rank, wait_policy

    torch.set_num_threads(threads_per_rank(0, 1))
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    load_before = os.getloadavg()[0]
    results = [bench_model(case, device, repeats=3 if args.quick else 7) for case in CASES.values()]
    load_after = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        small, large = run_grid(11, tmp), run_grid(101, tmp)
    grid = {"points_per_s_11x11": round(small["points_per_s"], 1), "points_per_s_101x101": round(large["points_per_s"], 1),
            "grid_rate_ratio": round(large["points_per_s"] / small["points_per_s"], 3),
            "max_rss_mb_11x11": round(small["max_rss_mb"], 1), "max_rss_mb_101x101": round(large["max_rss_mb"], 1),
            "max_rss_ratio": round(large["max_rss_mb"] / small["max_rss_mb"], 3)}
    scaling = None
    if not args.no_scaling:
        proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scaling.py"), "--json", "--axis", "31"],
                              cwd=REPO, capture_output=True, text=True)
        scaling = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None

    if args.json:
        for r in results:
            print(json.dumps({**r.to_dict(), "load": [round(load_before, 2), round(load_after, 2)]}))
        print(json.dumps({"grid_scaling": grid}))
        if scaling:
            print(json.dumps({"rank_scaling": scaling}))
        return
    print(f"load average {load_before:.2f} before the models, {load_after:.2f} after; OpenMP wait policy "
          f"{wait_policy().setting or 'the runtime default'}")
    for r in results:
        print(format_result(r))
    print(f"grid size: 11x11 {grid['points_per_s_11x11']} points/s, 101x101 {grid['points_per_s_101x101']} points/s, "
          f"ratio {grid['grid_rate_ratio']:.3f} (target 0.90..1.10)")
    print(f"peak memory: 11x11 {grid['max_rss_mb_11x11']} MiB, 101x101 {grid['max_rss_mb_101x101']} MiB, "
          f"ratio {grid['max_rss_ratio']:.3f}")
    if scaling:
        print(f"ranks: 1 rank {scaling['points_per_s_1_rank']} points/s, 2 ranks {scaling['points_per_s_2_ranks']} "
              f"points/s on the same cores, efficiency {scaling['efficiency_2_ranks']:.2f} "
              f"(protocol alone {scaling['protocol_efficiency_2_ranks']:.2f})")
    print("targets: resnet20 ratio_to_floor <= 1.05; mlp and cnn batched_speedup >= 3")


if __name__ == "__main__":
    main()
