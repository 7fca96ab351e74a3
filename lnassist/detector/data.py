"""Detector training and evaluation data: the slides of a data set manifest at 1.25x with their
ground-truth LN masks rasterised from the LN contours on the same grid.

The manifest (:mod:`lnassist.manifest`) has one row per LN; a slide is read at its row's ``mpp`` when
given, else at its file's resolution. Slides without any LN row are not in a manifest, so every sample
has at least one LN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lnassist.detector import DetectorError
from lnassist.detector.grid import Grid
from lnassist.manifest import read_manifest, resolve_path
from lnassist.slide import DETECTOR_MPP, open_slide


@dataclass
class SlideSample:
    """One slide at the detector's resolution: uint8 RGB image, boolean LN mask, LN count, grid."""

    slide_id: str
    split: str
    path: Path
    image: np.ndarray
    mask: np.ndarray
    n_lns: int
    grid: Grid


def manifest_slides(manifest_path: str | Path, splits: tuple[str, ...]) -> dict[str, list[dict]]:
    """The manifest's rows of ``splits``, grouped by slide path (in manifest order)."""
    by_slide: dict[str, list[dict]] = {}
    for row in read_manifest(manifest_path, splits):
        by_slide.setdefault(row["slide"], []).append(row)
    if not by_slide:
        raise DetectorError(f"{manifest_path}: no rows in split(s) {list(splits)}")
    return by_slide


def load_samples(
    manifest_path: str | Path, splits: tuple[str, ...], mpp: float = DETECTOR_MPP
) -> list[SlideSample]:
    """Read every slide of ``splits`` at ``mpp`` and rasterise its LN contours (pixel-centre rule)."""
    samples = []
    for slide_rel, rows in manifest_slides(manifest_path, splits).items():
        slide = open_slide(resolve_path(manifest_path, slide_rel), mpp=rows[0].get("mpp"))
        grid = Grid.of_slide(slide, mpp)
        contours = [np.asarray(r["contour"], dtype=np.float64) for r in rows]
        samples.append(
            SlideSample(
                slide_id=rows[0]["slide_id"],
                split=rows[0]["split"],
                path=slide.path,
                image=slide.read_thumbnail(mpp),
                mask=grid.rasterise(contours),
                n_lns=len(rows),
                grid=grid,
            )
        )
    return samples
