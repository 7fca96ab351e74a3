"""Detector accuracy against the inference tile size, side by side in one run.

DeepLabv3+'s image-pooling branch averages each channel over the whole input, so what the network
predicts at a pixel depends on how much slide the tile around it holds. This scores every detector
given on every data set split given, once per tile setting, with ``lnassist.detector.evaluate``
(pooled postprocessed and outlined IoU, LN counts), and writes
``benchmarks/results/detector_tiles.json``.

The data sets are ``lnassist synth-dataset`` folders, e.g. (the ones of the committed results)::

    lnassist synth-dataset D/vector --seed 0                       # the default cards' data
    lnassist synth-dataset D/scanned --seed 0 --look scanned
    lnassist synth-dataset D/unseen --seed 7 --look scanned --n-train 0 --n-val 0 --n-test 0 --n-unseen 12

    python benchmarks/bench_detector_tiles.py --model detector-cpu-v1 --model detector-cpu-scanned-v2 \\
        --data vector=D/vector/manifest.jsonl:test --data scanned-val=D/scanned/manifest.jsonl:val \\
        --data scanned=D/scanned/manifest.jsonl:test --data unseen=D/unseen/manifest.jsonl:unseen \\
        --tiles 512:128,1024:256
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from lnassist.detector.data import load_samples  # noqa: E402
from lnassist.detector.evaluate import evaluate_samples  # noqa: E402
from lnassist.detector.model import load_checkpoint  # noqa: E402
from lnassist.registry import resolve  # noqa: E402

KEYS = ("postprocessed_iou_pooled", "outlined_iou_pooled", "n_lns_true", "n_lns_predicted", "n_slides")


def data_arg(text: str) -> tuple[str, Path, str]:
    """``NAME=MANIFEST:SPLIT`` (also read by bench_detector_necks.py)."""
    name, _, rest = text.partition("=")
    manifest, _, split = rest.rpartition(":")
    if not (name and manifest and split):
        raise argparse.ArgumentTypeError(f"expected NAME=MANIFEST:SPLIT, got {text!r}")
    return name, Path(manifest), split


def _tiles(text: str) -> list[tuple[int, int]]:
    try:
        return [(int(t), int(o)) for t, o in (pair.split(":") for pair in text.split(","))]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected TILE:OVERLAP[,TILE:OVERLAP...], got {text!r}") from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, help="detector registry id or checkpoint")
    parser.add_argument("--data", action="append", type=data_arg, required=True, help="NAME=MANIFEST:SPLIT")
    parser.add_argument("--tiles", type=_tiles, default=[(512, 128), (1024, 256)], help="TILE:OVERLAP,...")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "detector_tiles.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    samples = {
        name: (str(manifest), split, load_samples(manifest, (split,))) for name, manifest, split in args.data
    }
    rows = []
    for model_name in args.model:
        model, _ = load_checkpoint(resolve("detector", model_name)[0])  # a registry id or a .pt path
        for data_name, (manifest, split, slides) in samples.items():
            for tile_px, overlap_px in args.tiles:
                started = time.perf_counter()
                summary = evaluate_samples(model, slides, tile_px, overlap_px)["summary"]
                row = {
                    "model": model_name,
                    "data": data_name,
                    "manifest": manifest,
                    "split": split,
                    "tile_px": tile_px,
                    "overlap_px": overlap_px,
                    **{k: summary[k] for k in KEYS},
                    "seconds": round(time.perf_counter() - started, 1),
                }
                print(json.dumps(row), flush=True)
                rows.append(row)
    result = {
        "benchmark": "detector_tiles",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "torch": torch.__version__,
        "command": " ".join(["python", "benchmarks/bench_detector_tiles.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
