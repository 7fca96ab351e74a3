"""A synthetic lymph-node canvas rendered window by window, for the ESCNN benchmarks.

Only numpy/opencv/torch are needed (it runs on the bare GPU box too). The canvas is white outside an
LN-shaped blob (an ellipse with an irregular, wobbly outline) covering a chosen fraction of the
canvas; inside, an H&E-like texture (pink stroma, purple nuclei) from a periodic block, modulated by
slow row/column brightness waves so that no two tiles hold identical pixels (identical tiles would
tie in the global max pooling and make the argmax statistics unrealistic). The whole canvas is
never held in memory: any window is rendered on demand, deterministically from the seed.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np
import torch
from torch import nn

BLOCK_PX = 1024  # period of the texture block
MASK_CELL_PX = 32  # resolution of the tissue outline


def texture_block(rng: np.random.Generator, size_px: int = BLOCK_PX) -> np.ndarray:
    """A periodic H&E-like RGB block: pink stroma with noise and purple nuclei."""
    base = np.array([228, 178, 206], dtype=np.float32)
    noise = cv2.GaussianBlur(rng.normal(0, 14, (size_px, size_px, 3)).astype(np.float32), (0, 0), 2.0)
    block = base + noise
    nuclei = np.zeros((size_px, size_px), dtype=np.uint8)
    for y, x, r in zip(rng.integers(0, size_px, 5000), rng.integers(0, size_px, 5000),
                       rng.integers(3, 7, 5000), strict=True):
        cv2.circle(nuclei, (int(x), int(y)), int(r), 255, -1)
    purple = np.array([92, 58, 148], dtype=np.float32)
    alpha = cv2.GaussianBlur(nuclei.astype(np.float32) / 255.0, (0, 0), 1.0)[..., None]
    return np.clip(block * (1 - alpha) + purple * alpha, 0, 250).astype(np.uint8)


def blob_mask(rng: np.random.Generator, rows: int, cols: int, fraction: float) -> np.ndarray:
    """Boolean (rows, cols): an irregular ellipse-like blob covering ``fraction`` of the grid."""
    if fraction >= 1.0:
        return np.ones((rows, cols), dtype=bool)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    dy, dx = (yy - rows / 2) / rows, (xx - cols / 2) / cols * 0.8  # a little wider than tall
    theta = np.arctan2(dy, dx)
    outline = np.ones_like(theta)
    for k in range(2, 9):
        outline += rng.uniform(0.02, 0.09) / (k / 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    q = np.hypot(dy, dx) / outline  # the blob of radius r0 is q < r0; pick r0 by the area quantile
    return q < np.quantile(q, fraction)


def _shade(px: np.ndarray, period1: float, period2: float, phase: float) -> np.ndarray:
    """A slow 1..17 grey-level wave along one axis (a product of two incommensurate sines)."""
    return (9 + 8 * np.sin(px / period1 + phase) * np.sin(px / period2)).astype(np.uint8)


class SyntheticLNSource:
    """A ``TileSource`` for a ``height`` x ``width`` synthetic LN canvas; ``read`` is thread-safe.

    ``cache=True`` keeps rendered windows in host memory keyed by position (repeat passes then
    cost nothing to render), up to ``cache_bytes``.
    """

    def __init__(self, height: int, width: int, tissue_fraction: float = 0.5, seed: int = 0,
                 cache: bool = False, cache_bytes: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.height, self.width = height, width
        self.block = texture_block(rng)
        rows, cols = -(-height // MASK_CELL_PX), -(-width // MASK_CELL_PX)
        self.mask = blob_mask(rng, rows, cols, tissue_fraction)
        ys, xs = np.arange(height), np.arange(width)
        # Slow brightness waves (periods not commensurate with the block), subtracted as uint8.
        self.row_shade = _shade(ys, 911.3, 3371.9, rng.uniform(0, 6))
        self.col_shade = _shade(xs, 1297.1, 4049.3, rng.uniform(0, 6))
        self.cache_bytes = cache_bytes if cache else 0
        self._cache: dict[tuple[int, int, int, int], np.ndarray | None] = {}
        self._cached = 0
        self._lock = threading.Lock()

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean())

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        key = (y0, x0, h, w)
        if key in self._cache:
            return self._cache[key]
        window = self._render(y0, x0, h, w)
        size = 0 if window is None else window.nbytes
        with self._lock:
            if self._cached + size <= self.cache_bytes:
                self._cache[key] = window
                self._cached += size
        return window

    def _render(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        c = MASK_CELL_PX
        cy0, cx0 = max(y0, 0) // c, max(x0, 0) // c
        cy1, cx1 = -(-min(y0 + h, self.height) // c), -(-min(x0 + w, self.width) // c)
        cells = self.mask[cy0:cy1, cx0:cx1]
        if not cells.any():
            return None
        b = BLOCK_PX
        rolled = np.roll(self.block, (-(y0 % b), -(x0 % b)), axis=(0, 1))
        window = np.tile(rolled, (-(-h // b), -(-w // b), 1))[:h, :w]
        shade = self.row_shade[y0 : y0 + h, None] + self.col_shade[None, x0 : x0 + w]
        window = cv2.subtract(np.ascontiguousarray(window), np.repeat(shade[..., None], 3, axis=2))
        tissue = np.repeat(np.repeat(cells, c, axis=0), c, axis=1)
        tissue = tissue[y0 - cy0 * c : y0 - cy0 * c + h, x0 - cx0 * c : x0 - cx0 * c + w]
        window[~tissue] = 255
        return window


def seeded_init(model: nn.Module, seed: int, calibration: np.ndarray) -> nn.Module:
    """Random weights that behave like trained ones: He-normal convolutions from an explicit generator,
    frozen batch-norm statistics calibrated on ``calibration`` (a uint8 RGB window) so that every
    normalisation sees unit-variance inputs, and a head scaled to logits of about unit size so that
    the loss is not saturated.

    With uncalibrated statistics (mean 0, variance 1) the activations of a deep ResNet explode,
    the logits saturate the loss and every gradient is zero, which would make the backward pass
    cost nothing and the benchmark meaningless.
    """
    from lnassist.escnn.backbones import FrozenBatchNorm2d
    from lnassist.escnn.model import global_max_pool, window_to_input

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()

        def calibrate(bn: FrozenBatchNorm2d, args: tuple[torch.Tensor]) -> None:
            bn.running_mean.copy_(args[0].mean(dim=(0, 2, 3)))
            bn.running_var.copy_(args[0].var(dim=(0, 2, 3)))

        hooks = [m.register_forward_pre_hook(calibrate) for m in model.modules()
                 if isinstance(m, FrozenBatchNorm2d)]
        try:
            pooled = global_max_pool(model.trunk(window_to_input(calibration)))
        finally:
            for h in hooks:
                h.remove()
        # Logits of about unit scale on the calibration window.
        model.head.weight.mul_(1.0 / (2.0 * float(pooled.pow(2).mean())) ** 0.5)
    return model
