"""Detector evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from lnassist.detector import DetectorError
from lnassist.detector.evaluate import SCORED_MASKS, intersection_union, iou, pixel_accuracy, summarise


def test_iou_and_pixel_accuracy_by_hand():
    predicted = np.zeros((4, 4), dtype=bool)
    predicted[0:2, 0:2] = True  # 4 px
    truth = np.zeros((4, 4), dtype=bool)
    truth[0:2, 0:3] = True  # 6 px, containing the prediction
    assert intersection_union(predicted, truth) == (4, 6)
    assert iou(predicted, truth) == pytest.approx(4 / 6)
    assert pixel_accuracy(predicted, truth) == pytest.approx(14 / 16)
    shifted = np.zeros((4, 4), dtype=bool)
    shifted[2:4, 2:4] = True
    assert iou(predicted, shifted) == 0.0
    assert pixel_accuracy(predicted, shifted) == pytest.approx(8 / 16)


def test_empty_masks_agree():
    empty = np.zeros((3, 5), dtype=bool)
    assert iou(empty, empty) == 1.0
    assert pixel_accuracy(empty, empty) == 1.0


def test_mismatched_masks_raise():
    with pytest.raises(DetectorError, match="shape"):
        iou(np.zeros((3, 3)), np.zeros((3, 4)))
    with pytest.raises(DetectorError, match="shape"):
        pixel_accuracy(np.zeros((0, 3)), np.zeros((0, 3)))


def _row(intersection: int, union: int, agree: int, pixels: int, n_true: int, n_predicted: int) -> dict:
    row = {
        "pixels": pixels,
        "n_lns_true": n_true,
        "n_lns_predicted": n_predicted,
        "count_error": n_predicted - n_true,
    }
    for name in SCORED_MASKS:
        row.update(
            {
                f"{name}_intersection_px": intersection,
                f"{name}_union_px": union,
                f"{name}_agree_px": agree,
                f"{name}_iou": intersection / union,
            }
        )
    return row


def test_summary_pools_and_averages_by_hand():
    rows = [_row(90, 100, 980, 1000, 3, 3), _row(10, 50, 400, 500, 2, 4), _row(0, 10, 90, 100, 1, 0)]
    summary = summarise(rows)
    assert summary["n_slides"] == 3
    assert summary["mask_iou_pooled"] == pytest.approx(100 / 160)
    assert summary["mask_iou_mean"] == pytest.approx((0.9 + 0.2 + 0.0) / 3)
    assert summary["mask_pixel_accuracy"] == pytest.approx(1470 / 1600)
    assert summary["count_error_mean_abs"] == pytest.approx(1.0)
    assert summary["count_error_mean"] == pytest.approx(1 / 3)
    assert summary["count_exact_fraction"] == pytest.approx(1 / 3)
    assert (summary["n_lns_true"], summary["n_lns_predicted"]) == (6, 7)
    with pytest.raises(DetectorError):
        summarise([])
