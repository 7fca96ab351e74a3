"""Tiny labelled data sets shared by the training, evaluation and retraining tests: 3 small synthetic
slides with 6 LNs (:func:`build_tiny_dataset`), and reviewed LNs as ``lnassist collect`` writes them
(:func:`build_collected_dataset`)."""

from __future__ import annotations

import json
from pathlib import Path

from lnassist.manifest import MANIFEST_NAME, write_manifest
from lnassist.slide import CLASSIFIER_MPP, Slide, open_slide
from lnassist.synth.generate import gt_path_for, write_slide
from lnassist.synth.layout import MAGNIFICATION_20X, MPP_20X, LayoutConfig
from lnassist.synth.tiff import write_pyramid

# (split, slide id, seed, categories): both classes in every split.
SLIDES = (
    ("train", "train_a", 3, ("negative", "itc")),
    ("train", "train_b", 4, ("itc", "negative_mimic")),
    ("val", "val_a", 5, ("negative", "itc")),
)


def _layout(seed: int, categories: tuple[str, ...]) -> LayoutConfig:
    # The "vector" look: the training tests' thresholds were measured on it.
    return LayoutConfig(4600, 2600, seed=seed, categories=categories, look="vector")


def build_tiny_dataset(root: Path) -> Path:
    """Write the slides and a manifest (synth-dataset's row format) under ``root``; returns the manifest."""
    rows = []
    for split, slide_id, seed, categories in SLIDES:
        rel = f"{split}/{slide_id}.tiff"
        gt = write_slide(root / rel, _layout(seed, categories), workers=1)
        for node in gt["nodes"]:
            rows.append(
                {
                    "split": split,
                    "slide": rel,
                    "slide_id": slide_id,
                    "ln_id": node["id"],
                    "label": node["label"],
                    "category": node["category"],
                    "contour": node["contour"],
                    "bbox": node["bbox"],
                    "mpp": gt["mpp"],
                    "ground_truth": gt_path_for(rel).as_posix(),
                }
            )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


# A data set as `lnassist collect` writes it: (Girder item id of the source slide, seed, categories).
# Five source slides, so that the default held-out fraction holds out two; the last has negatives
# only, so not every held-out pair gives an AUC.
COLLECTED_SLIDES = (
    ("65f1a0000000000000000001", 11, ("negative", "itc")),
    ("65f1a0000000000000000002", 12, ("itc", "negative_mimic")),
    ("65f1a0000000000000000003", 13, ("negative", "itc")),
    ("65f1a0000000000000000004", 14, ("itc", "negative")),
    ("65f1a0000000000000000005", 15, ("negative", "negative_mimic")),
)
COLLECTED_TRANSITION = [[0.9, 0.1], [0.2, 0.8]]
REGION_MARGIN_PX = 32  # around each LN's bounding box, at the classifier's resolution


def _write_region(slide: Slide, bbox: list[float], path: Path) -> tuple[float, float, float]:
    """The LN's bounding box (+ margin) as a tiled TIFF at the classifier's mpp; returns the region's
    (left, top) in slide base pixels and the base pixels per region pixel."""
    left = max(0, int(bbox[0]) - REGION_MARGIN_PX)
    top = max(0, int(bbox[1]) - REGION_MARGIN_PX)
    width = min(slide.width_px, int(bbox[2]) + REGION_MARGIN_PX) - left
    height = min(slide.height_px, int(bbox[3]) + REGION_MARGIN_PX) - top
    image = slide.read_region(left, top, width, height, CLASSIFIER_MPP)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_pyramid(
        path,
        image.shape[1],
        image.shape[0],
        lambda x0, y0, w, h: image[y0 : y0 + h, x0 : x0 + w],
        mpp=CLASSIFIER_MPP,
        magnification=MAGNIFICATION_20X * MPP_20X / CLASSIFIER_MPP,
        tile_px=256,
        workers=1,
    )
    return left, top, CLASSIFIER_MPP / slide.base_mpp


def build_collected_dataset(root: Path) -> Path:
    """Write a reviewed-annotation data set (``manifest.jsonl``, ``regions/``, ``snapshot.json``) as
    ``lnassist collect`` would, from small synthetic slides kept in ``root/sources``; returns the
    data set folder ``root/dataset``.

    One region TIFF per LN; the first LN was drawn by a person (no AI fields), the AI got one LN
    wrong, and the snapshot carries a transition matrix."""
    dataset = root / "dataset"
    rows = []
    for item, seed, categories in COLLECTED_SLIDES:
        source = root / "sources" / f"{item}.tiff"
        gt = write_slide(source, _layout(seed, categories), workers=1)
        slide = open_slide(source)
        for node in gt["nodes"]:
            name = f"{item}-{node['id']}"
            left, top, scale = _write_region(slide, node["bbox"], dataset / "regions" / f"{name}.tiff")
            label = node["label"]
            row = {
                "split": "collected",
                "slide": f"regions/{name}.tiff",
                "slide_id": f"{item}:{node['id']}",
                "ln_id": node["id"],
                "contour": [[(x - left) / scale, (y - top) / scale] for x, y in node["contour"]],
                "label": label,
                "mpp": CLASSIFIER_MPP,
                "source_item": item,
                "annotation_id": f"{item[:-4]}ff{node['id']:02d}",
                "annotation_version": 2,
                "reviewer": "pathologist",
                "reviewed_at": "2025-03-01T14:02:11Z",
                "review_state": "reviewed",
            }
            if rows:
                ai_label = 1 - label if len(rows) == 3 else label
                row |= {
                    "ai_label": ai_label,
                    "ai_score": 0.3 + 0.4 * ai_label,
                    "ai_model": "classifier-cpu-v1@1",
                }
            rows.append(row)
    write_manifest(dataset / MANIFEST_NAME, rows)
    snapshot = {
        "format": "lnassist-dataset-snapshot/1",
        "id": "snapshot-test",
        "transition": {"matrix": COLLECTED_TRANSITION},
    }
    (dataset / "snapshot.json").write_text(json.dumps(snapshot))
    return dataset
