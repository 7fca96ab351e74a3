"""Shortcut measurements of an ESCNN classifier (issue #15): where its evidence sits relative to the
LN's cut edge, and how far its score moves under changes the label does not depend on.

Owns, for one LN image (uint8 RGB canvas, white outside the contour):

* the edge distance map: each pixel's distance to the tissue edge, the boundary between exactly white
  pixels (the masked outside, and the canvas border) and the rest;
* the edge share: the share of trunk channels whose global maximum (the argmax cell of the streamed
  feature map, placed at the centre of its receptive field in input pixels) lies within
  ``within_px`` of that edge; with the share of the logit evidence those channels carry and the
  chance level (the share of tissue pixels within ``within_px`` of the edge);
* score stability: |score(T(image)) - score(image)| for transforms T that keep the label: a sub-pixel
  shift (bilinear resampling), a whole-pixel shift by half the trunk's stride (the stride grid moves,
  no pixel changes), a horizontal flip and a 90 degree rotation; scores as the classifier gives them
  (in all the orientations its spec asks for: with eight, flip and rotation change nothing).

And the per-category summary of those over a manifest split. Models, LN images and the streamed
forward pass are the project's own (:mod:`lnassist.classifier`, :mod:`lnassist.training.data`,
:mod:`lnassist.escnn.streaming`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lnassist.categories import CATEGORIES
from lnassist.classifier import POSITIVE_CLASS, Classifier, score_source
from lnassist.escnn.sources import WHITE, ArraySource, TileSource
from lnassist.escnn.streaming import ForwardResult, StreamingConfig, stream_forward
from lnassist.metrics import delong_auc

EDGE_WITHIN_PX = 40.0
SUBPIXEL_SHIFT_PX = 0.5
TRANSFORMS = ("shift_subpixel", "shift_half_stride", "flip", "rot90")


def read_canvas(source: TileSource) -> np.ndarray:
    """The whole canvas of ``source`` as one uint8 RGB array (LN images at 20x fit in memory)."""
    window = source.read(0, 0, source.height, source.width)
    return np.full((source.height, source.width, 3), WHITE, np.uint8) if window is None else window


def edge_distance_px(image: np.ndarray) -> np.ndarray:
    """Euclidean distance (float32, pixel centres) of every pixel to the nearest pixel on the other
    side of the white/non-white boundary; outside the canvas counts as white."""
    tissue = np.pad((image != WHITE).any(axis=2), 1, constant_values=False).astype(np.uint8)
    to_white = cv2.distanceTransform(tissue, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_tissue = cv2.distanceTransform(1 - tissue, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.where(tissue > 0, to_white, to_tissue)[1:-1, 1:-1]


def argmax_positions_px(fwd: ForwardResult) -> np.ndarray:
    """(channels, 2) input-pixel (y, x) of each channel's global maximum: the centre of the receptive
    field of its argmax cell (cell * stride - padding + (rf - 1) / 2 per axis)."""
    geo = fwd.plan.geometry
    cells = fwd.argmax_cell.cpu().numpy()
    return np.stack(
        [
            [geo.y.center_px(int(r)) for r in cells[:, 0]],
            [geo.x.center_px(int(c)) for c in cells[:, 1]],
        ],
        axis=1,
    )


def channel_edge_distances_px(distance_px: np.ndarray, positions_px: np.ndarray) -> np.ndarray:
    """Edge distance at each position (rounded to the nearest pixel, clipped to the canvas)."""
    h, w = distance_px.shape
    ys = np.clip(np.rint(positions_px[:, 0]).astype(int), 0, h - 1)
    xs = np.clip(np.rint(positions_px[:, 1]).astype(int), 0, w - 1)
    return distance_px[ys, xs]


def _score(classifier: Classifier, image: np.ndarray, streaming: StreamingConfig | None) -> float:
    """The classifier's score as it is applied (all the orientations its spec asks for)."""
    return score_source(classifier, ArraySource(image), streaming).score


def shift_image(image: np.ndarray, dy_px: float, dx_px: float) -> np.ndarray:
    """``image`` moved down/right by (dy, dx) >= 0 px on a canvas grown by ceil(d), white where
    nothing maps; bilinear for fractions, a plain copy for whole pixels."""
    h, w = image.shape[:2]
    out_h, out_w = h + int(np.ceil(dy_px)), w + int(np.ceil(dx_px))
    if float(dy_px).is_integer() and float(dx_px).is_integer():
        out = np.full((out_h, out_w, 3), WHITE, np.uint8)
        out[int(dy_px) : int(dy_px) + h, int(dx_px) : int(dx_px) + w] = image
        return out
    matrix = np.array([[1.0, 0.0, dx_px], [0.0, 1.0, dy_px]])
    return cv2.warpAffine(
        image,
        matrix,
        (out_w, out_h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(WHITE, WHITE, WHITE),
    )


def transformed(image: np.ndarray, name: str, stride_px: int) -> np.ndarray:
    """``image`` under transform ``name`` (one of :data:`TRANSFORMS`)."""
    if name == "shift_subpixel":
        return shift_image(image, SUBPIXEL_SHIFT_PX, SUBPIXEL_SHIFT_PX)
    if name == "shift_half_stride":
        return shift_image(image, stride_px // 2, stride_px // 2)
    if name == "flip":
        return np.ascontiguousarray(image[:, ::-1])
    if name == "rot90":
        return np.ascontiguousarray(np.rot90(image))
    raise ValueError(f"unknown transform {name!r}; choose from {', '.join(TRANSFORMS)}")


def measure_image(
    classifier: Classifier,
    image: np.ndarray,
    within_px: float = EDGE_WITHIN_PX,
    streaming: StreamingConfig | None = None,
    transforms: tuple[str, ...] = TRANSFORMS,
) -> dict[str, Any]:
    """Edge share and score changes of ``classifier`` (ESCNN) on one LN image; see the module docstring.

    Channels whose maximum is <= 0 (a ReLU trunk's dead channels: their "argmax" is just the first
    cell) are left out of the edge share.
    """
    model = classifier.model
    fwd = stream_forward(model, ArraySource(image), streaming)
    score = _score(classifier, image, streaming)
    distance = edge_distance_px(image)
    channel_distance = channel_edge_distances_px(distance, argmax_positions_px(fwd))
    feature_max = fwd.feature_max.double().cpu().numpy()
    active = feature_max > 0
    near = (channel_distance <= within_px) & active
    weight = model.head.weight.detach().double().cpu().numpy()
    # Each channel's share of the positive-minus-negative logit: (w_pos - w_neg) * max.
    evidence = np.abs((weight[POSITIVE_CLASS] - weight[1 - POSITIVE_CLASS]) * feature_max)
    tissue = (image != WHITE).any(axis=2)
    stride_px = fwd.plan.geometry.y.stride
    scores = {t: _score(classifier, transformed(image, t, stride_px), streaming) for t in transforms}
    return {
        "canvas_px": list(image.shape[:2]),
        "score": score,
        "active_channels": int(active.sum()),
        "edge_channels": [int(c) for c in np.flatnonzero(near)],
        "edge_share": float(near.sum() / max(1, active.sum())),
        "edge_evidence_share": float(evidence[near].sum() / evidence.sum()) if evidence.sum() > 0 else 0.0,
        "edge_area_share": float((distance[tissue] <= within_px).mean()) if tissue.any() else 0.0,
        "channel_edge_distance_px": [round(float(d), 1) for d in channel_distance],
        "scores": scores,
        "abs_delta": {t: abs(s - score) for t, s in scores.items()},
    }


def measure_manifest(
    classifier: Classifier,
    manifest: str | Path,
    split: str,
    within_px: float = EDGE_WITHIN_PX,
    streaming: StreamingConfig | None = None,
    max_nodes: int | None = None,
    on_node: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """:func:`measure_image` on the LNs of ``split`` (manifest order, the first ``max_nodes``), each
    read at the classifier's resolution, white outside its contour, as the evaluation reads it."""
    from lnassist.training.data import images_from_manifest, open_image

    records = []
    for image in images_from_manifest(manifest, split, "ln")[:max_nodes]:
        canvas = read_canvas(open_image(image, classifier.spec.mpp))
        record = {
            "key": image.key,
            "category": image.category,
            "label": image.label,
            **measure_image(classifier, canvas, within_px, streaming),
        }
        records.append(record)
        if on_node is not None:
            on_node(record)
    return records


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per category (and over all nodes): count, mean edge share / evidence share / chance level, and
    mean and max |delta score| per transform; over all nodes also the LN AUC of the unchanged scores."""

    def stats(group: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"nodes": len(group)}
        for key in ("edge_share", "edge_evidence_share", "edge_area_share", "score"):
            out[f"mean_{key}"] = float(np.mean([r[key] for r in group]))
        out["abs_delta"] = {
            t: {
                "mean": float(np.mean([r["abs_delta"][t] for r in group])),
                "max": float(np.max([r["abs_delta"][t] for r in group])),
            }
            for t in group[0]["abs_delta"]
        }
        return out

    by_category = {c: [r for r in records if r["category"] == c] for c in CATEGORIES}
    labels = [r["label"] for r in records]
    overall = stats(records) if records else {"nodes": 0}
    if 2 <= sum(labels) <= len(labels) - 2:
        # What the model has learnt at all: a model that separates nothing has no shortcut to show.
        overall["auc"] = delong_auc(labels, [r["score"] for r in records]).auc
    return {
        "all": overall,
        "by_category": {c: stats(g) for c, g in by_category.items() if g},
    }
