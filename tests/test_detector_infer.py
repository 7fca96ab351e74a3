"""Tiled inference: tile layout, tiled == whole-image logits, output checks."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lnassist.detector import DetectorError
from lnassist.detector.infer import predict_logits, tile_spans
from lnassist.detector.model import CPU, build_detector, to_tensor


def _blobs(height: int = 200, width: int = 232) -> np.ndarray:
    image = np.full((height, width, 3), 240, np.uint8)
    cv2.circle(image, (70, 80), 45, (120, 60, 160), -1)
    cv2.ellipse(image, (170, 130), (40, 55), 30, 0, 360, (200, 120, 180), -1)
    noise = np.random.default_rng(0).integers(-10, 10, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_tile_spans_known_values():
    assert tile_spans(10, 4, 2) == [(0, 4, 0, 3), (2, 6, 3, 5), (4, 8, 5, 7), (6, 10, 7, 10)]
    assert tile_spans(3, 8, 2) == [(0, 3, 0, 3)]
    assert tile_spans(8, 8, 2) == [(0, 8, 0, 8)]


@pytest.mark.parametrize("length", [9, 100, 101, 257, 1000])
@pytest.mark.parametrize(("tile", "overlap"), [(64, 0), (64, 16), (50, 49), (128, 32)])
def test_tile_spans_cover_once_and_keep_a_margin(length, tile, overlap):
    spans = tile_spans(length, tile, overlap)
    kept = np.zeros(length, dtype=int)
    for start, end, keep_start, keep_end in spans:
        assert 0 <= start <= keep_start < keep_end <= end <= length
        assert end - start == min(tile, length)
        kept[keep_start:keep_end] += 1
        # Away from the image border, kept pixels are at least overlap // 2 from the tile border.
        if keep_start > 0:
            assert keep_start - start >= overlap // 2
        if keep_end < length:
            assert end - keep_end >= overlap // 2
    assert (kept == 1).all()


def test_tile_spans_reject_bad_arguments():
    for args in ((10, 0, 0), (10, 4, 4), (10, 4, -1), (0, 4, 1)):
        with pytest.raises(DetectorError):
            tile_spans(*args)


class LocalNet(nn.Module):
    """Three 3 x 3 convolutions: every output pixel sees 3 pixels each way, so tiles overlapping by
    2 x 3 pixels or more must reproduce the whole-image output."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                    nn.Conv2d(8, 1, 3, padding=1)])
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / 255
        for conv in self.convs[:-1]:
            x = torch.tanh(conv(x))
        return self.convs[-1](x)


def test_tiled_equals_untiled_for_a_local_network():
    image = _blobs()
    net = LocalNet()
    whole = predict_logits(net, image, tile_px=256, overlap_px=0)
    np.testing.assert_allclose(whole, net(to_tensor(image)).detach().numpy()[0, 0], atol=1e-6)
    for tile, overlap in ((64, 6), (50, 10), (97, 33)):
        np.testing.assert_allclose(predict_logits(net, image, tile, overlap), whole, atol=1e-5)
    # Too little overlap for the receptive field shows at the seams: the test can fail.
    assert np.abs(predict_logits(net, image, 64, 0) - whole).max() > 1e-3


def test_tiled_close_to_untiled_for_deeplab():
    """DeepLabv3+'s image-pooling branch averages over the whole tile, so tiles are not exact; with
    random weights (measured: correlation 0.95, sign agreement 0.9996) they stay close."""
    image = _blobs()
    model = build_detector(replace(CPU, decoder_channels=32), seed=0)
    whole = predict_logits(model, image, tile_px=256, overlap_px=0)
    tiled = predict_logits(model, image, tile_px=160, overlap_px=96)
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.9
    assert np.mean((whole > 0) == (tiled > 0)) > 0.99


def test_predict_restores_training_mode_and_checks_output():
    net = LocalNet().train()
    predict_logits(net, _blobs(40, 40))
    assert net.training

    class Wrong(nn.Module):
        def forward(self, x):
            return x[:, :2]

    with pytest.raises(DetectorError, match="expected \\(1, 1, H, W\\)"):
        predict_logits(Wrong(), _blobs(40, 40))
    with pytest.raises(DetectorError, match="uint8 RGB"):
        predict_logits(net, np.zeros((10, 10), np.uint8))
