"""Detector inference: logits of a whole 1.25x image by tiles, and ``detect_slide`` (slide -> LN contours).

Large 1.25x images (a 75 x 25 mm slide is about 10,000 x 3,400 px) are run in square tiles that overlap
by ``overlap_px``; each output pixel is taken from the one tile whose kept part covers it, the kept parts
meeting in the middle of each overlap (centre-crop stitching), so every pixel is predicted at least
``overlap_px / 2`` pixels away from a tile border unless it is near the image border. For a network whose
receptive field is within that margin, tiled and whole-image logits are identical; DeepLabv3+'s image
pooling branch sees the whole tile, so its tiled logits differ slightly (measured in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from lnassist.detector import DetectorError
from lnassist.detector.grid import Grid
from lnassist.detector.model import to_tensor
from lnassist.detector.postprocess import MIN_COMPONENT_PX, mask_to_contours
from lnassist.detector.preprocess import balance_glass
from lnassist.slide import DETECTOR_MPP, Slide

# DeepLabv3+'s image-pooling branch averages over the whole tile, so a tile much larger than the
# training crops (256 px) gives the network a context it never saw: whole 750 px synthetic slides in
# one tile scored outlined IoU 0.924 on the scanned test split against 0.965 in 512 px tiles
# (benchmarks/bench_detector_tiles.py).
DEFAULT_TILE_PX = 512
DEFAULT_OVERLAP_PX = 128
DETECTIONS_FORMAT = "lnassist-detections/1"


def tile_spans(length_px: int, tile_px: int, overlap_px: int) -> list[tuple[int, int, int, int]]:
    """Tiles along one axis as (tile start, tile end, kept start, kept end), kept parts covering
    [0, length_px) exactly once. The last tile is moved back to end at the image border."""
    if tile_px <= 0 or not 0 <= overlap_px < tile_px or length_px <= 0:
        raise DetectorError(
            f"need length > 0, tile > 0 and 0 <= overlap < tile; got {length_px}, {tile_px}, {overlap_px}"
        )
    if length_px <= tile_px:
        return [(0, length_px, 0, length_px)]
    starts = list(range(0, length_px - tile_px, tile_px - overlap_px)) + [length_px - tile_px]
    # Neighbouring kept parts meet in the middle of the two tiles' overlap.
    cuts = [0] + [(nxt + start + tile_px) // 2 for start, nxt in zip(starts, starts[1:], strict=False)]
    cuts.append(length_px)
    return [(s, s + tile_px, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]


def predict_logits(
    model: nn.Module,
    image: np.ndarray,
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
) -> np.ndarray:
    """float32 (H, W) LN logits of a uint8 RGB (H, W, 3) image, run tile by tile in eval mode on the
    model's device (the model's training flag is restored afterwards)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
        raise DetectorError(f"expected a uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows, cols = tile_spans(height, tile_px, overlap_px), tile_spans(width, tile_px, overlap_px)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    logits = np.empty((height, width), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for y0, y1, keep_y0, keep_y1 in rows:
                for x0, x1, keep_x0, keep_x1 in cols:
                    tile = model(to_tensor(image[y0:y1, x0:x1]).to(device))
                    if tile.shape != (1, 1, y1 - y0, x1 - x0):
                        raise DetectorError(
                            f"the network returned {tuple(tile.shape)} for a "
                            f"{y1 - y0} x {x1 - x0} tile; expected (1, 1, H, W) logits"
                        )
                    kept = tile[0, 0, keep_y0 - y0 : keep_y1 - y0, keep_x0 - x0 : keep_x1 - x0]
                    logits[keep_y0:keep_y1, keep_x0:keep_x1] = kept.float().cpu().numpy()
    finally:
        model.train(was_training)
    return logits


@dataclass
class DetectorOutput:
    """What the detector found on one 1.25x image: LN contours (float64 (N, 2) x, y in base-level pixels),
    the predicted mask and the cleaned mask (after dilation and small-component removal) on ``grid``.
    (The detection stage of an analysis, with its model and timings, is
    :class:`lnassist.results.Detection`.)"""

    contours_base_px: list[np.ndarray]
    mask: np.ndarray
    cleaned_mask: np.ndarray
    grid: Grid


def detect_image(
    model: nn.Module,
    image: np.ndarray,
    grid: Grid,
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
    min_component_px: int = MIN_COMPONENT_PX,
    region_base_px: tuple[float, float, float, float] | None = None,
) -> DetectorOutput:
    """Predict the LN mask of a 1.25x image laid on ``grid`` (logit > 0) and post-process it.

    The image's glass is first balanced to white (:mod:`lnassist.detector.preprocess`).
    ``region_base_px`` (x, y, width, height) restricts the predicted mask before post-processing,
    so LNs crossing the region's border are cut there."""
    mask = predict_logits(model, balance_glass(image), tile_px, overlap_px) > 0
    if region_base_px is not None:
        mask &= grid.rectangle_mask(*region_base_px)
    contours, cleaned = mask_to_contours(mask, grid, min_component_px)
    return DetectorOutput(contours, mask, cleaned, grid)


def detect_slide(
    slide: Slide,
    model: nn.Module,
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
    min_component_px: int = MIN_COMPONENT_PX,
    mpp: float = DETECTOR_MPP,
) -> DetectorOutput:
    """Read the whole slide at the detector's resolution and detect its LNs."""
    grid = Grid.of_slide(slide, mpp)
    return detect_image(model, slide.read_thumbnail(mpp), grid, tile_px, overlap_px, min_component_px)


def detection_to_json(detection: DetectorOutput, **context: Any) -> dict[str, Any]:
    """JSON-able detections: one entry per LN with its polygon in base-level pixels; ``context``
    (slide path, base mpp, checkpoint, ...) is copied in."""
    lns = []
    for number, contour in enumerate(detection.contours_base_px, start=1):
        x, y = contour[:, 0], contour[:, 1]
        lns.append(
            {
                "id": number,
                "contour": np.round(contour, 2).tolist(),
                "bbox": [float(x.min()), float(y.min()), float(x.max()), float(y.max())],
            }
        )
    return {
        "format": DETECTIONS_FORMAT,
        **context,
        "detector_grid_px": [detection.grid.width_px, detection.grid.height_px],
        "base_px_per_detector_px": list(detection.grid.base_px_per_px),
        "coordinates": "base-level pixels; vertices at the centres of the detector mask's boundary pixels",
        "n_lns": len(lns),
        "lns": lns,
    }
