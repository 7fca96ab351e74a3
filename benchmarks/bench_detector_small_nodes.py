"""Detectors on small LNs (0.5-0.9 mm), as their small slide holds them and with glass around them.

The data sets' nodes are at least 1 mm across unless ``--smallest-node-um`` says otherwise; the
smallest canvases (``lnassist.synth.layout.SMALLEST_NODE_UM``), such as the DSA tests' 2,000^2 px
slides, hold smaller ones, the node filling most of a 125 px 1.25x image. A small LN embedded on its
own lies on glass. Each seed here is one such small slide (default look, one node, at 2,000^2 and
2,800^2 px: nodes of about 0.55 and 0.8 mm across, equivalent diameters); every detector given reads
its 1.25x image as it is, and the same image in the middle of ``--glass-px`` pixels of white glass on
each side. Per case: nodes found (a component after post-processing with IoU > 0.5 against the
node), other components, and the pooled IoU of the cleaned masks with the truth. Writes
``benchmarks/results/detector_small_nodes.json``.

    python benchmarks/bench_detector_small_nodes.py --model detector-cpu-scanned-v2 \\
        --model detector-cpu-scanned-v3 --seeds 0:12
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from benchmarks.results_file import write_results  # noqa: E402
from lnassist.detector.evaluate import score_in_glass  # noqa: E402
from lnassist.detector.grid import Grid  # noqa: E402
from lnassist.detector.model import load_checkpoint  # noqa: E402
from lnassist.detector.preprocess import balance_glass  # noqa: E402
from lnassist.registry import resolve  # noqa: E402
from lnassist.slide import open_slide  # noqa: E402
from lnassist.synth.generate import write_slide  # noqa: E402
from lnassist.synth.layout import LayoutConfig  # noqa: E402

SLIDE_PX = (2000, 2800)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="registry id or checkpoint (repeat)")
    ap.add_argument("--seeds", default="0:12", help="FIRST:END slide seeds")
    ap.add_argument("--glass-px", type=int, default=128, help="white margin, 1.25x pixels (128: 0.94 mm)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    first, _, end = args.seeds.partition(":")
    t0 = time.perf_counter()
    models = {name: load_checkpoint(resolve("detector", name)[0])[0] for name in args.model}
    cases = {"as scanned": 0, "in glass": args.glass_px}
    totals = {name: {f"{px} {case}": [0, 0, 0, 0, 0] for px in SLIDE_PX for case in cases} for name in models}
    per_slide = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(int(first), int(end)):
            for px in SLIDE_PX:
                path = Path(tmp) / f"small-{px}-{seed}.tiff"
                gt = write_slide(path, LayoutConfig(px, px, seed=seed), workers=2)
                slide = open_slide(path)
                contours = [np.asarray(n["contour"], np.float32) for n in gt["nodes"]]
                diameters_um = [2 * np.sqrt(cv2.contourArea(c) / np.pi) * slide.base_mpp for c in contours]
                row = {"seed": seed, "slide_px": px, "node_diameters_um": [round(d) for d in diameters_um]}
                for name, model in models.items():
                    grid = Grid.of_slide(slide, model.config.mpp)
                    truth = grid.rasterise([c.astype(float) for c in contours])
                    image = balance_glass(slide.read_thumbnail(model.config.mpp))
                    for case, glass_px in cases.items():
                        found, other, inter, union = score_in_glass(model, image, truth, glass_px)
                        acc = totals[name][f"{px} {case}"]
                        for i, v in enumerate((found, len(gt["nodes"]), other, inter, union)):
                            acc[i] += v
                        row[f"{name} {case}"] = [found, other]
                per_slide.append(row)
                print(row, flush=True)
    summary = {
        name: {
            case: {
                "nodes_found": a[0],
                "nodes_true": a[1],
                "other_components": a[2],
                "iou_pooled": round(a[3] / max(a[4], 1), 4),
            }
            for case, a in by_case.items()
        }
        for name, by_case in totals.items()
    }
    write_results(
        "detector_small_nodes.json",
        "detectors on small LNs, as their small slide holds them and with glass around them",
        t0,
        summary,
        per_slide,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
