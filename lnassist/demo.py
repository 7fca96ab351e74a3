"""The demo: the project end to end on an embedded default, for a newcomer's first look.

It generates a synthetic LN slide (every category present), writes an overview PNG with the
ground-truth LN contours, then runs the LN analysis on it with the shipped models (detector,
classifier, heatmaps) and writes what ``lnassist analyze`` writes: the DSA annotation documents,
the summary and the overlay PNG. Each found LN is matched to the ground-truth node it lies on.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from lnassist.categories import CATEGORIES
from lnassist.outputs import local_paths, write_analysis
from lnassist.pipeline import AnalysisConfig, analyze
from lnassist.slide import DETECTOR_MPP, describe, open_slide

DEMO_SIZE_PX = 12_000  # the smallest canvas that holds a macrometastatic node beside the others
DEMO_CATEGORIES = ("macro", "micro", "itc", "negative_mimic", "negative")
OVERVIEW_MPP = DETECTOR_MPP / 2
# BGR colours for the overview, one per category: positives warm, negatives cool.
CATEGORY_BGR = {
    "macro": (0, 0, 200),
    "micro": (0, 110, 255),
    "itc": (0, 200, 255),
    "negative_mimic": (200, 120, 0),
    "negative": (60, 160, 0),
}
assert set(CATEGORY_BGR) == set(CATEGORIES)


def overview_png(slide_path: Path, ground_truth: dict, out_png: Path, mpp: float = OVERVIEW_MPP) -> None:
    """The slide at ``mpp``, each LN contour (base px in the ground truth) drawn in its category colour."""
    slide = open_slide(slide_path)
    image = cv2.cvtColor(slide.read_thumbnail(mpp), cv2.COLOR_RGB2BGR)
    scale = slide.base_mpp / mpp
    for node in ground_truth["nodes"]:
        contour = np.round(np.asarray(node["contour"]) * scale).astype(np.int32)
        colour = CATEGORY_BGR[node["category"]]
        cv2.polylines(image, [contour], isClosed=True, color=colour, thickness=3)
        x, y = contour.min(axis=0)
        cv2.putText(
            image,
            f"LN{node['id']} {node['category']}",
            (int(x), max(int(y) - 6, 14)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5,
            colour,
            1,
            cv2.LINE_AA,
        )
    if not cv2.imwrite(str(out_png), image):
        raise OSError(f"could not write {out_png}")


def run_demo(out_dir: Path, seed: int, size_px: int) -> dict:
    from lnassist.synth.generate import write_slide
    from lnassist.synth.layout import LayoutConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    slide_path = out_dir / "demo-slide.tiff"
    started = time.perf_counter()
    truth = write_slide(
        slide_path, LayoutConfig(size_px, size_px, seed=seed, categories=DEMO_CATEGORIES), overwrite=True
    )
    generated_s = time.perf_counter() - started
    slide = open_slide(slide_path)
    overview = out_dir / "demo-overview.png"
    overview_png(slide_path, truth, overview)
    analysis = analyze(slide, AnalysisConfig())
    outputs = local_paths(out_dir / "analysis")
    write_analysis(
        analysis, outputs, analysis.provenance("lnassist demo", {"seed": seed}), slide=slide, overwrite=True
    )
    found = []
    for ln in analysis.lns:
        centre = ln.contour_base_px.mean(axis=0)
        node = next((n for n in truth["nodes"] if _inside(centre, n["contour"])), None)
        found.append(
            {
                "ln_id": ln.ln_id,
                "score": round(ln.score, 4),
                "positive": ln.positive,
                "truth": node["category"] if node else None,
            }
        )
    return {
        "slide": describe(slide),
        "ground_truth_lns": [
            {"id": n["id"], "category": n["category"], "label": n["label"]} for n in truth["nodes"]
        ],
        "slide_label": truth["slide_label"],
        "generate_s": round(generated_s, 1),
        "analysis": {
            "counts": analysis.counts,
            "threshold": analysis.threshold,
            "lns": found,
            "timings_s": analysis.timings_s,
        },
        "outputs": {
            "slide": str(slide_path),
            "overview_png": str(overview),
            **{k: str(v) for k, v in outputs.items()},
        },
    }


def _inside(point: np.ndarray, contour: list) -> bool:
    return (
        cv2.pointPolygonTest(np.asarray(contour, np.float32), (float(point[0]), float(point[1])), False) >= 0
    )
