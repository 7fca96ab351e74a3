"""Test helpers shared by the tile-source and synthetic-renderer tests."""

from __future__ import annotations

import numpy as np

from lnassist.escnn.sources import WHITE
from lnassist.synth.render import render_region


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


# Cuts of a 700 x 590 window into uneven pieces, as neighbouring tiles of a viewer would ask for them.
PIECE_XS, PIECE_YS = (0, 123, 400, 700), (0, 77, 333, 512, 590)


def render_in_pieces(layout, x0: int, y0: int) -> tuple[np.ndarray, np.ndarray]:
    """(the 700 x 590 window at (x0, y0) rendered whole, the same window stitched from pieces)."""
    whole = render_region(layout, x0, y0, PIECE_XS[-1], PIECE_YS[-1])
    stitched = np.zeros_like(whole)
    for ya, yb in zip(PIECE_YS, PIECE_YS[1:], strict=False):
        for xa, xb in zip(PIECE_XS, PIECE_XS[1:], strict=False):
            stitched[ya:yb, xa:xb] = render_region(layout, x0 + xa, y0 + ya, xb - xa, yb - ya)
    return whole, stitched
