"""Shortcut measurements against known truth: edge distances of a drawn square, channel maxima placed
near or far from the edge by hand-built trunks, zero score change for a shift-invariant model and a
large one for an aliasing model, the transforms themselves and the per-category summary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lnassist.classifier import Classifier, ClassifierSpec
from lnassist.escnn.model import ESCNNModel
from lnassist.escnn.shortcut import (
    TRANSFORMS,
    edge_distance_px,
    measure_image,
    shift_image,
    summarise,
    transformed,
)

GRAY = (200, 200, 200)


def tissue_square(size_px: int = 300, edge_px: int = 50) -> np.ndarray:
    image = np.full((size_px, size_px, 3), 255, np.uint8)
    image[edge_px:-edge_px, edge_px:-edge_px] = GRAY
    return image


def classifier(trunk: nn.Module, channels: int, weights: list[list[float]], stride: int = 1) -> Classifier:
    """A classifier whose trunk is one convolution with the given per-channel RGB weights (kernel
    ``stride`` x ``stride``, averaging, at that stride): channel c responds to sum_k w[c][k] * RGB_k."""
    conv = trunk[0]
    with torch.no_grad():
        kernel = torch.tensor(weights, dtype=torch.float32)[:, :, None, None] / (stride * stride)
        conv.weight.copy_(kernel.expand_as(conv.weight))
    model = ESCNNModel(trunk, channels, 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[-1.0] * channels, [1.0] * channels]))
        model.head.bias.zero_()
    return Classifier(model.eval(), ClassifierSpec(backbone="tiny"), {})


def one_conv(channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, channels, stride, stride=stride, bias=False))


def test_edge_distance_of_a_square_and_of_tissue_at_the_canvas_border():
    distance = edge_distance_px(tissue_square())
    assert distance[50, 150] == 1 and distance[49, 150] == 1  # the two pixels either side of the edge
    assert distance[150, 150] == 100 and distance[0, 150] == 50
    assert distance[45, 45] == pytest.approx(np.hypot(5, 5), abs=1e-3)  # Euclidean around the corner
    full = np.full((20, 30, 3), 100, np.uint8)  # all tissue: its edge is the canvas border
    assert edge_distance_px(full)[0, 10] == 1 and edge_distance_px(full)[10, 15] == 10


# Spot rows 56-59: centre 57.5 -> pixel 58, 9 px from the white row 49; rows 148-151: 100 px from row 250.
@pytest.mark.parametrize(("marker_row", "distance_px", "share"), [(56, 9, 1.0), (148, 100, 0.0)])
def test_edge_share_is_one_for_a_maximum_near_the_edge_and_zero_far_from_it(marker_row, distance_px, share):
    image = tissue_square()
    image[marker_row : marker_row + 4, 148:152, 0] = 0  # a red-free 4x4 spot on the stride grid
    clf = classifier(one_conv(1, 4), 1, [[-1.0, 0.0, 0.0]], stride=4)
    result = measure_image(clf, image, within_px=40, transforms=())
    # The argmax cell covers the spot; its receptive-field centre is the spot's centre.
    assert result["channel_edge_distance_px"][0] == distance_px
    assert result["edge_share"] == share and result["active_channels"] == 1
    assert result["edge_evidence_share"] == share


def test_edge_share_counts_channels_and_leaves_dead_ones_out():
    image = tissue_square()
    image[56:60, 148:152, 0] = 0  # red-free spot 6 px inside the edge
    image[148:152, 148:152, 2] = 0  # blue-free spot in the middle
    # Channels: red-free (near), blue-free (far), and one that is never positive (dead).
    clf = classifier(one_conv(3, 4), 3, [[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [-10.0, -10.0, -10.0]], stride=4)
    result = measure_image(clf, image, within_px=40, transforms=())
    assert result["active_channels"] == 2 and result["edge_channels"] == [0]
    assert result["edge_share"] == 0.5
    assert result["edge_area_share"] == pytest.approx(1 - 120**2 / 200**2, abs=0.01)  # the 40 px band


def test_shift_invariant_model_scores_do_not_move_and_an_aliasing_one_does():
    image = np.full((160, 160, 3), 255, np.uint8)
    yy, xx = np.mgrid[:160, :160]
    image[(yy - 80) ** 2 + (xx - 70) ** 2 < 45**2] = (120, 80, 160)
    # 1x1 convolution at stride 1, global max: no grid, no edge effect, nothing aliases.
    invariant = classifier(one_conv(1, 1), 1, [[-1.0, -1.0, -1.0]])
    result = measure_image(invariant, image, transforms=TRANSFORMS)
    assert set(result["abs_delta"]) == set(TRANSFORMS)
    assert max(result["abs_delta"].values()) < 1e-9
    # 1x1 convolution sampled every 16 px: a one-pixel dark dot on the grid is seen, moved off it, not.
    image[96, 96] = (10, 10, 10)
    aliasing = classifier(nn.Sequential(nn.Conv2d(3, 1, 1, stride=16, bias=False)), 1, [[-1.0, -1.0, -1.0]])
    moved = measure_image(aliasing, image, transforms=("shift_half_stride", "shift_subpixel"))
    assert moved["abs_delta"]["shift_half_stride"] > 0.1
    assert moved["abs_delta"]["shift_subpixel"] > 0.05  # the dot spreads over four pixels

    # Scored in all eight orientations, the same model no longer sees the flip or the quarter turn.
    assert moved["score"] > 0.6
    turned = measure_image(aliasing, image, transforms=("flip", "rot90"))
    assert min(turned["abs_delta"].values()) > 0.1
    aliasing.spec = ClassifierSpec(backbone="tiny", orientations=8)
    averaged = measure_image(aliasing, image, transforms=("flip", "rot90", "shift_half_stride"))
    assert max(averaged["abs_delta"]["flip"], averaged["abs_delta"]["rot90"]) < 1e-9
    assert averaged["abs_delta"]["shift_half_stride"] > 0.01  # the grid still matters for a shift


def test_transforms_move_pixels_as_named():
    image = np.full((5, 7, 3), 255, np.uint8)
    image[1, 2] = (0, 0, 0)
    half = shift_image(image, 0.5, 0.5)
    assert half.shape == (6, 8, 3)
    assert half[1:3, 2:4, 0].tolist() == [[191, 191], [191, 191]]  # a quarter of the dark pixel each
    whole = transformed(image, "shift_half_stride", 16)
    assert whole.shape == (13, 15, 3) and whole[9, 10, 0] == 0
    assert transformed(image, "flip", 16)[1, 4, 0] == 0
    assert (
        transformed(image, "rot90", 16).shape == (7, 5, 3) and transformed(image, "rot90", 16)[4, 1, 0] == 0
    )
    with pytest.raises(ValueError, match="unknown transform"):
        transformed(image, "zoom", 16)


def test_summary_splits_by_category():
    def record(category: str, share: float, delta: float, score: float) -> dict:
        return {
            "category": category,
            "label": int(category == "itc"),
            "edge_share": share,
            "edge_evidence_share": share,
            "edge_area_share": 0.1,
            "score": score,
            "abs_delta": {"flip": delta},
        }

    records = [record("itc", 1.0, 0.2, 0.6), record("itc", 0.5, 0.1, 0.3), record("negative", 0.0, 0.0, 0.4)]
    summary = summarise(records)
    assert summary["all"]["nodes"] == 3 and summary["all"]["mean_edge_share"] == pytest.approx(0.5)
    assert "auc" not in summary["all"]  # one negative: no AUC
    itc = summary["by_category"]["itc"]
    assert itc["nodes"] == 2 and itc["mean_edge_share"] == 0.75
    assert itc["abs_delta"]["flip"] == {"mean": pytest.approx(0.15), "max": 0.2}
    assert set(summary["by_category"]) == {"itc", "negative"}
    # Positives 0.6 and 0.3 against negatives 0.4 and 0.2: 3 of 4 pairs ordered.
    assert summarise([*records, record("negative", 0.0, 0.0, 0.2)])["all"]["auc"] == pytest.approx(0.75)
