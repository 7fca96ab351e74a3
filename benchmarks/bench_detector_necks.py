"""Nodes pressed together: LN counts with and without the post-processing's neck split, side by side.

The paper's steps (dilation, small components dropped, outer contours) join nodes whose masks touch;
step 4 of :mod:`lnassist.detector.postprocess` splits an outline at a waist narrower than
``NECK_RATIO`` of the smaller side's inscribed radius. For each data set split given this scores, from
one prediction per slide, the LN count of the paper's steps alone and of the split at several ratios
(LNs predicted, slides with the exact count), and the same on the ground-truth outlines themselves
(rasterised, cleaned as a prediction would be): nodes split in two (over-split) and outlines holding two
nodes (merged). Writes ``benchmarks/results/detector_necks.json``.

    python benchmarks/bench_detector_necks.py --model detector-cpu-scanned-v2 \\
        --data card=D/scanned/manifest.jsonl:test --data val=S2/manifest.jsonl:val \\
        --data test=S2/manifest.jsonl:test --data unseen=S2/manifest.jsonl:unseen

(``D/scanned``: ``lnassist synth-dataset D/scanned --seed 0``; ``S2``: ``lnassist synth-dataset S2
--config models/synth-scanned-v2.yaml``.)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import torch  # noqa: E402
from bench_detector_tiles import data_arg  # noqa: E402

from lnassist.detector.data import load_samples, manifest_slides  # noqa: E402
from lnassist.detector.infer import detect_image  # noqa: E402
from lnassist.detector.model import load_checkpoint  # noqa: E402
from lnassist.detector.postprocess import NECK_RATIO, clean_mask, node_contours, outer_contours  # noqa: E402
from lnassist.registry import resolve  # noqa: E402

RATIOS = (0.6, 0.7, NECK_RATIO, 0.9)


def _counts(masks: list[np.ndarray], truths: list[int]) -> dict:
    """Per post-processing: LNs predicted and the share of slides with the exact count."""
    out = {}
    for name, count in [("paper", lambda m: len(outer_contours(m)))] + [
        (f"neck_{r}", lambda m, r=r: len(node_contours(m, r))) for r in RATIOS
    ]:
        found = [count(m) for m in masks]
        out[name] = {
            "n_lns_predicted": sum(found),
            "count_exact_fraction": float(np.mean([f == t for f, t in zip(found, truths, strict=True)])),
        }
    return out


def _truth_outlines(samples, manifest: Path, split: str) -> dict:
    """The split on ground-truth outlines: nodes cut in two, outlines left holding two nodes."""
    per_slide = list(manifest_slides(manifest, (split,)).values())  # load_samples' order
    result = {}
    for ratio in RATIOS:
        over, merged = 0, 0
        for sample, rows in zip(samples, per_slide, strict=True):
            nodes = [sample.grid.rasterise([np.asarray(r["contour"], float)]) for r in rows]
            parts = np.zeros(sample.mask.shape, np.int32)
            for index, contour in enumerate(node_contours(clean_mask(sample.mask), ratio), start=1):
                cv2.drawContours(parts, [contour.astype(np.int32)], -1, index, thickness=cv2.FILLED)
            for node in nodes:
                _, pixels = np.unique(parts[node & (parts > 0)], return_counts=True)
                over += len(pixels) > 1 and np.sort(pixels)[-2] > 0.2 * node.sum()
            for label in range(1, parts.max() + 1):
                part = parts == label
                merged += sum((part & node).sum() > 0.2 * node.sum() for node in nodes) > 1
        result[f"neck_{ratio}"] = {"over_split_nodes": int(over), "merged_outlines": int(merged)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="detector registry id or checkpoint")
    parser.add_argument("--data", action="append", type=data_arg, required=True, help="NAME=MANIFEST:SPLIT")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "detector_necks.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(resolve("detector", args.model)[0])
    rows = []
    for name, manifest, split in args.data:
        samples = load_samples(manifest, (split,))
        masks = [detect_image(model, s.image, s.grid).cleaned_mask for s in samples]
        row = {
            "data": name,
            "manifest": str(manifest),
            "split": split,
            "n_slides": len(samples),
            "n_lns_true": sum(s.n_lns for s in samples),
            "predicted": _counts(masks, [s.n_lns for s in samples]),
            "truth_outlines": {
                "paper_components": sum(len(outer_contours(clean_mask(s.mask))) for s in samples),
                **_truth_outlines(samples, manifest, split),
            },
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    result = {
        "benchmark": "detector_necks",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "model": args.model,
        "neck_ratio_default": NECK_RATIO,
        "command": " ".join(["python", "benchmarks/bench_detector_necks.py", *(argv or sys.argv[1:])]),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
