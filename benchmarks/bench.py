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

Targets (issue "Speed near the hardware limit"): ResNet-20 ratio to floor ≤ 1.05;
batched ≥ 3× the floor's points/s for the MLP and CNN; grid ratio within 10 %.
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (noisier)")
    ap.add_argument("--json", action="store_true", help="JSON lines instead of text")
    ap.add_argument("--no-scaling", action="store_true", help="skip the 1 vs 2 rank measurement")
    ap.add_argument("--grid-worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.grid_worker:
        grid_worker(args.grid_worker, args.tmp)
        return

    import torch

    from mpiland.bench import CASES, bench_model, format_result
    from mpiland.launch import threads_per_rank

    torch.set_num_threads(threads_per_rank(0, 1))
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    results = [bench_model(case, device, repeats=3 if args.quick else 7) for case in CASES.values()]
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
            print(json.dumps(r.to_dict()))
        print(json.dumps({"grid_scaling": grid}))
        if scaling:
            print(json.dumps({"rank_scaling": scaling}))
        return
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
