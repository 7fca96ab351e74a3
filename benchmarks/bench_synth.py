"""Benchmark of the synthetic-slide generator: wall time and peak RSS of writing whole slides.

Each size and look runs in a fresh subprocess (so peak RSS is per slide), writing the pyramidal TIFF
and its ground truth exactly as ``python -m lnassist synth`` does. Results: benchmarks/results/synth.json.

    python benchmarks/bench_synth.py [--sizes 10000 20000] [--looks vector scanned] [--workers 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "synth.json"

_CHILD = """
import json, resource, sys, time
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig
size, seed, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
out, look = sys.argv[4], sys.argv[5]
t0 = time.perf_counter()
gt = write_slide(out, LayoutConfig(size, size, seed=seed, look=look), workers=workers)
wall = time.perf_counter() - t0
print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n_nodes": len(gt["nodes"]), "categories": [n["category"] for n in gt["nodes"]],
                  "levels": gt["levels"]}))
"""


def run_one(size: int, seed: int, workers: int, look: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "bench.tiff")
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, str(size), str(seed), str(workers), out, look],
            check=True,
            capture_output=True,
            text=True,
        )
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["file_mb"] = os.path.getsize(out) / 2**20
    megapixels = size * size / 1e6
    res.update(look=look, size_px=size, megapixels=megapixels, mpix_per_s=megapixels / res["wall_s"])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000])
    ap.add_argument("--looks", nargs="+", default=["vector", "scanned"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    runs = []
    for size, look in [(s, lk) for s in args.sizes for lk in args.looks]:
        r = run_one(size, args.seed, args.workers, look)
        print(
            f"{size} x {size} {look}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, "
            f"{r['mpix_per_s']:.1f} MP/s, {r['n_nodes']} LNs",
            flush=True,
        )
        runs.append(r)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "synth slide write (layout + render + pyramidal JPEG TIFF + ground truth)",
                "command": " ".join([Path(sys.executable).name, *sys.argv]),
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": {
                    "cpus": os.cpu_count(),
                    "platform": platform.platform(),
                    "python": platform.python_version(),
                },
                "workers": args.workers,
                "seed": args.seed,
                "runs": runs,
            },
            indent=1,
        )
    )
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
