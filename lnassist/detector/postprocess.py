"""The paper's conversion of a predicted LN mask into LN contours (Huang et al. 2022, Methods, "LN detector").

1. Dilate the positive area with a 3 x 3 diamond (cross-shaped) structuring element.
2. Remove connected components (8-connected) of fewer than 4096 pixels: noise.
3. Trace each remaining component's outer boundary with Suzuki & Abe's border following
   (``cv2.findContours`` with ``RETR_EXTERNAL``): one contour per LN; holes are ignored, so a component
   lying inside another's hole is not reported.

Contours are polygons through the centres of the boundary pixels (``CHAIN_APPROX_SIMPLE`` keeps only the
corners of straight runs, which loses nothing). All steps are on the 1.25x grid; ``to_base_px`` maps the
result to base-level pixels with the pixel-centre convention of :mod:`lnassist.detector.grid`.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from lnassist.detector import DetectorError
from lnassist.detector.grid import Grid

MIN_COMPONENT_PX = 4096
"""Components smaller than this (pixels at 1.25x, counted after dilation) are noise (paper)."""
DIAMOND_3X3 = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
"""The radius-1 diamond: the pixel and its 4 neighbours."""
# findContours follows 8-connected foreground, so components are counted the same way.
_CONNECTIVITY = 8


def _as_binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise DetectorError(f"a detector mask is a non-empty 2-D array, got shape {mask.shape}")
    return (mask != 0).astype(np.uint8)


def dilate_diamond(mask: np.ndarray) -> np.ndarray:
    """Boolean mask dilated by the 3 x 3 diamond; pixels outside the image count as background."""
    binary = _as_binary(mask)
    return cv2.dilate(binary, DIAMOND_3X3, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def remove_small_components(mask: np.ndarray, min_px: int = MIN_COMPONENT_PX) -> np.ndarray:
    """Boolean mask keeping only the 8-connected components of at least ``min_px`` pixels."""
    if min_px < 1:
        raise DetectorError(f"the minimum component size must be >= 1 pixel, got {min_px}")
    binary = _as_binary(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=_CONNECTIVITY)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    keep[0] = False  # label 0 is the background
    return keep[labels]


def clean_mask(mask: np.ndarray, min_px: int = MIN_COMPONENT_PX) -> np.ndarray:
    """Steps 1 and 2: dilation by the diamond, then removal of components under ``min_px`` pixels."""
    return remove_small_components(dilate_diamond(mask), min_px)


def outer_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Step 3: the outer boundary of each 8-connected component as an (N, 2) int array of x, y pixel
    indices, in OpenCV's order (by the top-most, then left-most pixel of each component, bottom first)."""
    contours, _ = cv2.findContours(_as_binary(mask), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours]


def outlined_mask(cleaned: np.ndarray) -> np.ndarray:
    """The area the outer contours of a cleaned mask enclose: the mask with its holes filled (a hole
    is background no 4-connected path links to the image border, as 8-connected foreground encloses).

    What an LN annotation covers: a deposit the network left out of a node's middle is still inside
    the node's contour, and the classifier reads it."""
    return ndimage.binary_fill_holes(_as_binary(cleaned))


def mask_to_contours(
    mask: np.ndarray, grid: Grid, min_px: int = MIN_COMPONENT_PX
) -> tuple[list[np.ndarray], np.ndarray]:
    """The whole paper pipeline on a predicted mask of ``grid``'s size: (contours as float64 (N, 2) x, y
    in base-level pixels, the cleaned mask they outline)."""
    if np.shape(mask) != (grid.height_px, grid.width_px):
        raise DetectorError(
            f"mask shape {np.shape(mask)} does not match the detector grid "
            f"({grid.height_px}, {grid.width_px})"
        )
    cleaned = clean_mask(mask, min_px)
    return [grid.to_base_px(c) for c in outer_contours(cleaned)], cleaned
