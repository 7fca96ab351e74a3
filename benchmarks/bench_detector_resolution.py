"""Detectors on the same sections at 20x and at 40x, and on 1.25x images a little softer, side by side.

How sharp the 1.25x image a detector reads is depends on the scanner and on how the slide's pyramid
was made: a 40x slide's 1.25x image comes from its 4 um/px level, resampled 1.84x; a 20x synthetic
slide's is its own 7.36 um/px level. Each seed here is one synthetic section (default look, 4 x 3 mm)
written at 0.46 and at 0.25 um/px from the same scene (``lnassist.synth.layout``: the same tissue in
each slide's own pixels); every detector given then reads the 20x image as it is, moved by half a
pixel (bilinear), blurred (Gaussian sigma 0.5 and 1 px), and the 40x slide's image. Per case: LNs
found against the truth and the pooled IoU of the outlines (filled contours) with the truth's.
Writes ``benchmarks/results/detector_resolution.json``.

    python benchmarks/bench_detector_resolution.py --model detector-cpu-v1 \\
        --model detector-cpu-scanned-v2 --model detector-cpu-scanned-v3 --seeds 0:12
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
from lnassist.detector.grid import Grid  # noqa: E402
from lnassist.detector.infer import detect_image  # noqa: E402
from lnassist.detector.model import load_checkpoint  # noqa: E402
from lnassist.registry import resolve  # noqa: E402
from lnassist.slide import open_slide  # noqa: E402
from lnassist.synth.generate import write_slide  # noqa: E402
from lnassist.synth.layout import SCENE_MPP, LayoutConfig  # noqa: E402

SECTION_UM = (4000.0, 3000.0)
MPP_40X = 0.25
WHITE = (255, 255, 255)
CASES = ("20x", "20x moved 0.5 px", "20x blur 0.5 px", "20x blur 1 px", "40x")


def _variants(image: np.ndarray) -> dict[str, np.ndarray]:
    shift = np.float32([[1, 0, 0.5], [0, 1, 0.5]])
    return {
        "20x": image,
        "20x moved 0.5 px": cv2.warpAffine(image, shift, image.shape[1::-1], borderValue=WHITE),
        "20x blur 0.5 px": cv2.GaussianBlur(image, (0, 0), 0.5),
        "20x blur 1 px": cv2.GaussianBlur(image, (0, 0), 1.0),
    }


def _sections(seeds: range, work: Path) -> list[dict]:
    """Per seed: the ground truth and the 20x and 40x slide paths of one section."""
    w20, h20 = (int(round(um / SCENE_MPP)) for um in SECTION_UM)
    sizes = {SCENE_MPP: (w20, h20), MPP_40X: (int(w20 * SCENE_MPP / MPP_40X), int(h20 * SCENE_MPP / MPP_40X))}
    out = []
    for seed in seeds:
        section = {"seed": seed, "paths": {}, "truth": {}}
        for mpp, size in sizes.items():
            path = section["paths"][mpp] = work / f"section-{seed}-{mpp}.tiff"
            gt = write_slide(path, LayoutConfig(*size, seed=seed, mpp=mpp), workers=2)
            section["truth"][mpp] = [np.asarray(n["contour"], float) for n in gt["nodes"]]
        out.append(section)
    return out


def _score(model, image: np.ndarray, grid: Grid, truth: list[np.ndarray]) -> tuple[int, int, int]:
    """(LNs found, intersection px, union px) of the outlines against the truth on ``grid``."""
    found = detect_image(model, image, grid).contours_base_px
    predicted, true = grid.rasterise(found), grid.rasterise(truth)
    return len(found), int((predicted & true).sum()), int((predicted | true).sum())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, help="registry id or checkpoint (repeat)")
    ap.add_argument("--seeds", default="0:12", help="FIRST:END slide seeds")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    first, _, end = args.seeds.partition(":")
    t0 = time.perf_counter()
    models = {name: load_checkpoint(resolve("detector", name)[0])[0] for name in args.model}
    results: dict[str, dict] = {name: {case: [0, 0, 0, 0] for case in CASES} for name in models}
    per_slide = []
    with tempfile.TemporaryDirectory() as tmp:
        for section in _sections(range(int(first), int(end)), Path(tmp)):
            row = {"seed": section["seed"], "n_lns_true": len(section["truth"][SCENE_MPP])}
            for mpp, path in section["paths"].items():
                slide = open_slide(path)
                for name, model in models.items():
                    grid = Grid.of_slide(slide, model.config.mpp)
                    image = slide.read_thumbnail(model.config.mpp)
                    truth = section["truth"][mpp]
                    images = _variants(image) if mpp == SCENE_MPP else {"40x": image}
                    for case, img in images.items():
                        found, inter, union = _score(model, img, grid, truth)
                        acc = results[name][case]
                        acc[0] += found
                        acc[1] += len(truth)
                        acc[2] += inter
                        acc[3] += union
                        row[f"{name} {case}"] = found
            per_slide.append(row)
            print(row, flush=True)
    summary = {
        name: {
            case: {
                "n_lns_predicted": a[0],
                "n_lns_true": a[1],
                "outlined_iou_pooled": round(a[2] / max(a[3], 1), 4),
            }
            for case, a in cases.items()
        }
        for name, cases in results.items()
    }
    write_results(
        "detector_resolution.json",
        "detectors on one section at 20x and 40x, and on softer 1.25x images",
        t0,
        summary,
        per_slide,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
