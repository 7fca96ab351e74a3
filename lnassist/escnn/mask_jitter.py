"""Mask jitter: the LN contour's cut edge moved and softened at random, per training image (issue #15).

An LN image is white outside its contour, so its tissue ends in a sharp cut edge that a classifier
can learn as a shortcut (where the edge falls on the stride grid, what lies just inside it). Mask
jitter moves that edge by a random signed distance (``offset_px`` < 0 erodes, > 0 dilates: the
tissue the contour cut off comes back) and feathers it: pixels blend linearly to white over
``feather_px`` across the moved edge.

The tissue weight of a pixel is a function of its signed distance to the contour, computed by a
distance transform of the polygon mask of a window enlarged by the jitter's reach. That is exact
for every distance the weight depends on, so a pixel's weight depends only on its canvas position,
never on the window that computed it: a jittered source keeps the tiling invariance of
:mod:`lnassist.escnn.augment`. Training only; evaluation reads the LN unjittered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from lnassist.errors import LnassistError
from lnassist.slide import WHITE


class MaskJitterError(LnassistError):
    """Invalid mask jitter configuration or parameters."""


@dataclass(frozen=True)
class MaskJitterConfig:
    """Ranges of the per-image mask jitter, in canvas pixels at the classifier's resolution.

    About +-2 um of edge and up to 2 um of feather at 0.46 um/px: the contour's own uncertainty
    (a drawn or detected outline), small against any lesion.
    """

    offset_px: tuple[float, float] = (-4.0, 4.0)
    feather_px: tuple[float, float] = (0.0, 4.0)

    def __post_init__(self) -> None:
        lo, hi = self.offset_px
        if not lo <= hi:
            raise MaskJitterError(f"offset_px must be (low, high) with low <= high, got {self.offset_px}")
        lo, hi = self.feather_px
        if not 0.0 <= lo <= hi:
            raise MaskJitterError(
                f"feather_px must be (low, high) with 0 <= low <= high, got {self.feather_px}"
            )


@dataclass(frozen=True)
class MaskJitter:
    """The jitter of one image: edge moved by ``offset_px`` (< 0 erodes), blended over ``feather_px``."""

    offset_px: float
    feather_px: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.offset_px) and math.isfinite(self.feather_px) and self.feather_px >= 0):
            raise MaskJitterError(f"offset_px must be finite and feather_px >= 0, got {self}")

    @property
    def reach_px(self) -> int:
        """How far from the contour a pixel's weight can differ from the plain mask's (plus one)."""
        return math.ceil(abs(self.offset_px) + self.feather_px / 2 + 0.5) + 1


def draw_mask_jitter(cfg: MaskJitterConfig, rng: np.random.Generator) -> MaskJitter:
    """Draw one image's jitter from ``rng``."""
    return MaskJitter(float(rng.uniform(*cfg.offset_px)), float(rng.uniform(*cfg.feather_px)))


def signed_distance_px(inside: np.ndarray, clamp_px: int) -> np.ndarray:
    """Signed distance (float32) of each pixel centre to the mask's edge, > 0 inside, clamped to
    +-``clamp_px``. The edge lies halfway between an inside and an outside pixel, so neighbours
    across it are at +-0.5. Exact (Euclidean) wherever the nearest pixel across the edge lies in
    the array: for a crop whose pixels are at least ``clamp_px`` from the array's border."""
    inside_u8 = np.ascontiguousarray(inside, dtype=np.uint8)
    to_outside = cv2.distanceTransform(inside_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_inside = cv2.distanceTransform(1 - inside_u8, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = np.where(inside_u8 > 0, to_outside - 0.5, 0.5 - to_inside)
    return np.clip(signed, -clamp_px, clamp_px).astype(np.float32)


def tissue_weight(inside: np.ndarray, jitter: MaskJitter) -> np.ndarray:
    """Weight in [0, 1] (float32) of the tissue at each pixel of the jittered mask.

    ``inside`` is the plain polygon mask; the result is exact for pixels at least
    ``jitter.reach_px`` from the array's border.
    """
    moved = signed_distance_px(inside, jitter.reach_px) + np.float32(jitter.offset_px)
    if jitter.feather_px == 0:
        return (moved > 0).astype(np.float32)
    return np.clip(moved / np.float32(jitter.feather_px) + np.float32(0.5), 0.0, 1.0)


def blend_to_white(pixels: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """uint8 RGB ``weight * pixels + (1 - weight) * white``, rounded; weight 1 keeps a pixel exactly."""
    faded = WHITE - weight[..., None] * (WHITE - pixels.astype(np.float32))
    return np.rint(faded).astype(np.uint8)
