"""A tiny labelled data set (3 small synthetic slides, 6 LNs) shared by the training and evaluation tests."""

from __future__ import annotations

import json
from pathlib import Path

from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

# (split, slide id, seed, categories): both classes in every split.
SLIDES = (
    ("train", "train_a", 3, ("negative", "itc")),
    ("train", "train_b", 4, ("itc", "negative_mimic")),
    ("val", "val_a", 5, ("negative", "itc")),
)


def build_tiny_dataset(root: Path) -> Path:
    """Write the slides and a manifest (synth-dataset's row format) under ``root``; returns the manifest."""
    rows = []
    for split, slide_id, seed, categories in SLIDES:
        rel = f"{split}/{slide_id}.tiff"
        gt = write_slide(root / rel, LayoutConfig(4600, 2600, seed=seed, categories=categories), workers=1)
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
                }
            )
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest
