"""Regenerate the README's demo pictures and its demo timing table, from the demo itself.

Usage::

    python benchmarks/readme.py [--fresh] [--img docs/img] [--json]

Runs the six demo jobs of ``make demo`` (jobs/quickstart.toml … jobs/chain.toml) as a
newcomer does, one ``mpiland run`` each, timing them; ``--fresh`` first removes
``runs/quickstart`` and the demo's surfaces, so the table includes training the
demo CNN. Then it draws the README's pictures into ``--img`` (the contour and curve
of the quickstart jobs, the PCA plane with the trajectory, the polygonal chain beside
the straight line) and prints a Markdown
table of seconds per job with the machine (CPU model, cores) and its load before
and after, which is what the README quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mpiland as ml

REPO = Path(__file__).resolve().parent.parent
JOBS = ("quickstart", "quickstart-1d", "interpolation", "pca", "plane", "chain")
PICTURES = {"quickstart-contour.png": ("quickstart", "contour"), "quickstart-curve.png": ("quickstart-1d", "curve"),
            "pca-contour.png": ("pca", "contour"), "chain-curve.png": ("chain", "curve")}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="train the demo CNN again (remove runs/quickstart)")
    parser.add_argument("--img", default=str(REPO / "docs" / "img"), help="where the pictures go")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.fresh:
        shutil.rmtree(REPO / "runs" / "quickstart", ignore_errors=True)
        for job in JOBS:
            (REPO / "surfaces" / f"{job}.h5").unlink(missing_ok=True)
    load_before = os.getloadavg()
    seconds: dict[str, float] = {}
    for job in JOBS:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mpiland", "run", f"jobs/{job}.toml", "--overwrite", "--progress",
                        "none"], cwd=REPO, check=True, capture_output=True, text=True)
        seconds[job] = time.perf_counter() - t0
    load_after = os.getloadavg()

    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    for name, (job, kind) in PICTURES.items():
        fig = ml.open(REPO / "surfaces" / f"{job}.h5").plot(kind)
        fig.savefig(img / name, dpi=110, bbox_inches="tight")
    result = {"machine": f"{_cpu()}, {_cores()} cores", "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in load_after], "fresh": args.fresh,
              "seconds": {k: round(v, 1) for k, v in seconds.items()}, "total": round(sum(seconds.values()), 1)}
    if args.json:
        print(json.dumps(result))
        return result
    print(f"machine: {result['machine']}; load (1, 5, 15 min) before {result['load_before']}, "
          f"after {result['load_after']}; {'training included' if args.fresh else 'trained model reused'}")
    print("| job | seconds |\n|---|---|")
    for job, s in result["seconds"].items():
        print(f"| `jobs/{job}.toml` | {s} |")
    print(f"| all six | {result['total']} |")
    print(f"pictures: {', '.join(str(img / n) for n in PICTURES)}")
    return result


if __name__ == "__main__":
    main()
