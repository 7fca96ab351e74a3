"""Test helpers shared by the tile-source tests."""

from __future__ import annotations

import numpy as np

from lnassist.escnn.sources import WHITE


def stitch(source, tile_px: int) -> np.ndarray:
    """The whole canvas of ``source`` assembled from tile_px windows (the last ones truncated)."""
    out = np.full((source.height, source.width, 3), WHITE, dtype=np.uint8)
    for y0 in range(0, source.height, tile_px):
        for x0 in range(0, source.width, tile_px):
            h, w = min(tile_px, source.height - y0), min(tile_px, source.width - x0)
            window = source.read(y0, x0, h, w)
            if window is not None:
                assert window.shape == (h, w, 3) and window.dtype == np.uint8
                out[y0 : y0 + h, x0 : x0 + w] = window
    return out
