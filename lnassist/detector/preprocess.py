"""What the detector does to a 1.25x slide image before the network: glass white balance.

Scanners do not show glass as pure white: the Aperio skin slide's glass is about (244, 243, 243),
others are tinted or darker. The detector learns from synthetic slides whose glass is exactly 255,
and a grey background turns every piece of tissue on it into an "LN" (the real skin excision was
outlined whole; with its glass brought to white, the detector trained with extranodal tissue finds
nothing there). ``balance_glass`` estimates the glass colour from the image itself (the bright end
of its bright, grey pixels: pale fat at 1.25x is nearly as bright and grey, and must not set the
level) and scales each channel so glass becomes 255; an image with too little glass to tell, or
whose glass is already white, is returned unchanged (every synthetic slide of the data sets is).
"""

from __future__ import annotations

import numpy as np

GLASS_MIN_LEVEL = 200  # no channel of a glass pixel is darker than this
GLASS_MAX_SPREAD = 10  # glass is grey: its channels differ by at most this (tissue is coloured)
GLASS_PERCENTILE = 90  # the level: this percentile of the glass candidates, per channel
MIN_GLASS_SHARE = 0.02  # fewer glass pixels than this share: no estimate, no change
WHITE = 255


def _glass_candidates(image: np.ndarray) -> np.ndarray:
    """(H, W) bool: bright, grey pixels (glass, and pale fat)."""
    lo, hi = image.min(-1), image.max(-1)
    return (lo >= GLASS_MIN_LEVEL) & (hi.astype(np.int16) - lo <= GLASS_MAX_SPREAD)


def _level_of(image: np.ndarray, glass: np.ndarray) -> np.ndarray | None:
    if not glass.size or glass.mean() < MIN_GLASS_SHARE:
        return None
    return np.percentile(image[glass], GLASS_PERCENTILE, axis=0)


def glass_level(image: np.ndarray) -> np.ndarray | None:
    """Glass level (R, G, B) of a uint8 RGB image, or None if it has too few glass candidates."""
    image = np.asarray(image)
    return _level_of(image, _glass_candidates(image))


def balance_glass(image: np.ndarray) -> np.ndarray:
    """The image with each channel scaled so its glass level becomes 255 (clipped) and its glass
    candidates set to pure white, as glass is on every slide the detector learnt from; unchanged
    when the glass is already white or cannot be estimated."""
    image = np.asarray(image)
    glass = _glass_candidates(image)
    level = _level_of(image, glass)
    if level is None or (level >= WHITE).all():
        return image
    gain = (WHITE / level).astype(np.float32)
    out = np.clip(image.astype(np.float32) * gain + np.float32(0.5), 0, WHITE).astype(np.uint8)
    # Scaling leaves the glass's noise around 255; the detector reads that grain as tissue texture.
    out[glass] = WHITE
    return out
