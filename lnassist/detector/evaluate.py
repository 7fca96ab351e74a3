"""Detector evaluation against ground-truth LN masks: IoU, pixel accuracy and LN count error.

All masks are on the detector's 1.25x grid. Three predicted masks are scored: ``mask`` (the network's
output, logit > 0; most likely what the paper's IoU 0.8473 and accuracy 92.83% measure), ``postprocessed``
(after dilation and small-component removal: the area the reported contours outline, holes aside) and
``outlined`` (the postprocessed mask with its holes filled: exactly what the LN contours enclose).
The LN count is the number of contours after post-processing; count error = predicted - true.
Pooled IoU sums intersections and unions over slides; the mean IoU averages the per-slide values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import nn

from lnassist.detector import DetectorError
from lnassist.detector.data import SlideSample, load_samples
from lnassist.detector.infer import DEFAULT_OVERLAP_PX, DEFAULT_TILE_PX, detect_image, predict_logits
from lnassist.detector.postprocess import MIN_COMPONENT_PX, clean_mask, outlined_mask
from lnassist.slide import DETECTOR_MPP


def _pair(predicted: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted, truth = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    if predicted.shape != truth.shape or predicted.size == 0:
        raise DetectorError(f"masks must have one non-empty shape, got {predicted.shape} and {truth.shape}")
    return predicted, truth


def intersection_union(predicted: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    predicted, truth = _pair(predicted, truth)
    return int(np.count_nonzero(predicted & truth)), int(np.count_nonzero(predicted | truth))


def iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1.0 when both are empty (they agree everywhere)."""
    intersection, union = intersection_union(predicted, truth)
    return intersection / union if union else 1.0


def pixel_accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of pixels where the masks agree."""
    predicted, truth = _pair(predicted, truth)
    return float(np.count_nonzero(predicted == truth)) / predicted.size


SCORED_MASKS = ("mask", "postprocessed", "outlined")


NODE_MATCH_IOU = 0.5
"""A predicted component is a found node when its IoU with the true mask exceeds this."""


def score_in_glass(
    model: nn.Module, image: np.ndarray, truth: np.ndarray, glass_px: int
) -> tuple[int, int, int, int]:
    """(nodes found, other components, intersection px, union px) of the cleaned mask of ``image``
    (1.25x, glass balanced) read with ``glass_px`` of white around it, against the boolean ``truth`` of
    one node: how a small LN embedded on its own, with glass all round, is seen."""
    padded = np.pad(image, ((glass_px, glass_px), (glass_px, glass_px), (0, 0)), constant_values=255)
    height, width = truth.shape
    cleaned = clean_mask(predict_logits(model, padded) > 0)[
        glass_px : glass_px + height, glass_px : glass_px + width
    ]
    n, labels = cv2.connectedComponents(cleaned.astype(np.uint8), connectivity=8)
    found = sum(iou(labels == k, truth) > NODE_MATCH_IOU for k in range(1, n))
    inter, union = intersection_union(cleaned, truth)
    return found, n - 1 - found, inter, union


def score_slide(
    model: nn.Module,
    sample: SlideSample,
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
    min_component_px: int = MIN_COMPONENT_PX,
) -> dict[str, Any]:
    """Detect on one sample and score it (JSON-able)."""
    detection = detect_image(model, sample.image, sample.grid, tile_px, overlap_px, min_component_px)
    row: dict[str, Any] = {
        "slide_id": sample.slide_id,
        "slide": str(sample.path),
        "pixels": int(sample.mask.size),
    }
    for name, predicted in (
        ("mask", detection.mask),
        ("postprocessed", detection.cleaned_mask),
        ("outlined", outlined_mask(detection.cleaned_mask)),
    ):
        intersection, union = intersection_union(predicted, sample.mask)
        row[f"{name}_intersection_px"] = intersection
        row[f"{name}_union_px"] = union
        row[f"{name}_agree_px"] = int(np.count_nonzero(predicted == sample.mask))
        row[f"{name}_iou"] = intersection / union if union else 1.0
        row[f"{name}_pixel_accuracy"] = row[f"{name}_agree_px"] / sample.mask.size
    row["n_lns_true"] = sample.n_lns
    row["n_lns_predicted"] = len(detection.contours_base_px)
    row["count_error"] = row["n_lns_predicted"] - sample.n_lns
    return row


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Pooled and mean scores over per-slide rows from :func:`score_slide`."""
    if not rows:
        raise DetectorError("nothing to summarise: no slides were scored")
    summary: dict[str, Any] = {"n_slides": len(rows)}
    pixels = sum(r["pixels"] for r in rows)
    for name in SCORED_MASKS:
        union = sum(r[f"{name}_union_px"] for r in rows)
        intersection = sum(r[f"{name}_intersection_px"] for r in rows)
        summary[f"{name}_iou_pooled"] = intersection / union if union else 1.0
        summary[f"{name}_iou_mean"] = float(np.mean([r[f"{name}_iou"] for r in rows]))
        summary[f"{name}_pixel_accuracy"] = sum(r[f"{name}_agree_px"] for r in rows) / pixels
    errors = np.array([r["count_error"] for r in rows])
    summary["count_error_mean_abs"] = float(np.abs(errors).mean())
    summary["count_error_mean"] = float(errors.mean())
    summary["count_exact_fraction"] = float(np.mean(errors == 0))
    summary["n_lns_true"] = int(sum(r["n_lns_true"] for r in rows))
    summary["n_lns_predicted"] = int(sum(r["n_lns_predicted"] for r in rows))
    return summary


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[SlideSample],
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
    min_component_px: int = MIN_COMPONENT_PX,
) -> dict[str, Any]:
    """{"summary": pooled / mean scores, "slides": per-slide rows}, JSON-able."""
    rows = [score_slide(model, s, tile_px, overlap_px, min_component_px) for s in samples]
    return {"summary": summarise(rows), "slides": rows}


def evaluate_manifest(
    manifest_path: str | Path,
    model: nn.Module,
    split: str = "test",
    mpp: float = DETECTOR_MPP,
    tile_px: int = DEFAULT_TILE_PX,
    overlap_px: int = DEFAULT_OVERLAP_PX,
    min_component_px: int = MIN_COMPONENT_PX,
) -> dict[str, Any]:
    """Evaluate ``model`` on the slides of one split of a manifest, read at ``mpp``."""
    samples = load_samples(manifest_path, (split,), mpp)
    report = evaluate_samples(model, samples, tile_px, overlap_px, min_component_px)
    return {"manifest": str(manifest_path), "split": split, "mpp": mpp, **report}
