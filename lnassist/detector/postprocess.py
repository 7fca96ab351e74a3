"""From a predicted LN mask to LN contours: the paper's three steps (Huang et al. 2022, Methods, "LN
detector") and a fourth of ours.

1. Dilate the positive area with a 3 x 3 diamond (cross-shaped) structuring element.
2. Remove connected components (8-connected) of fewer than 4096 pixels: noise.
3. Trace each remaining component's outer boundary with Suzuki & Abe's border following
   (``cv2.findContours`` with ``RETR_EXTERNAL``): one contour per LN; holes are ignored, so a component
   lying inside another's hole is not reported.
4. Ours, not the paper's: split a traced outline where it narrows to a neck (:func:`split_at_necks`).
   Nodes pressed against each other are one component to steps 1-3, however well the network outlines
   each (at 7.36 um/px the capsules between them leave no background pixel); a node's own lobes join
   over a much wider waist than two nodes' capsules do.

Contours are polygons through the centres of the boundary pixels (``CHAIN_APPROX_SIMPLE`` keeps only the
corners of straight runs, which loses nothing). All steps are on the 1.25x grid; ``to_base_px`` maps the
result to base-level pixels with the pixel-centre convention of :mod:`lnassist.detector.grid`.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from lnassist.detector import DetectorError
from lnassist.detector.grid import Grid

MIN_COMPONENT_PX = 4096
"""Components smaller than this (pixels at 1.25x, counted after dilation) are noise (paper)."""
NECK_RATIO = 0.8
"""Step 4 splits an outline where its inscribed radius at the waist is below this share of the smaller
side's largest inscribed radius. On the ground-truth outlines of 162 scanned-look slides (408 nodes, 34
of them in groups the paper's steps join) 0.8 and 0.9 split every group and no single node (0.6 and 0.7
left one group); on the detector's masks of 50 validation slides 0.8 gave the exact count on 50."""
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


def _waists(regions: np.ndarray, depth: np.ndarray) -> dict[tuple[int, int], float]:
    """For each pair of touching regions (8-neighbours), the largest depth along their border (the
    depth of a border pixel pair is the smaller of the two)."""
    waists: dict[tuple[int, int], float] = {}
    height, width = regions.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        first = (slice(0, height - dy), slice(max(-dx, 0), width - max(dx, 0)))
        second = (slice(dy, height), slice(max(dx, 0), width - max(-dx, 0)))
        a, b = regions[first], regions[second]
        da, db = depth[first], depth[second]
        border = (a != b) & (a > 0) & (b > 0)
        pairs = zip(a[border].tolist(), b[border].tolist(), np.minimum(da, db)[border].tolist(), strict=True)
        for r1, r2, d in pairs:
            key = (min(r1, r2), max(r1, r2))
            waists[key] = max(waists.get(key, 0.0), d)
    return waists


def split_at_necks(
    filled: np.ndarray, neck_ratio: float = NECK_RATIO, min_px: int = MIN_COMPONENT_PX
) -> np.ndarray:
    """Labels (0 background, 1..n parts) of one filled component: a watershed of its distance
    transform from every local maximum, then neighbouring parts joined, widest waist (relative to the
    smaller side's largest depth) first, while that waist is at least ``neck_ratio`` or either side is
    under ``min_px`` pixels. One node comes back as one part."""
    filled = _as_binary(filled).astype(bool)
    depth = ndimage.distance_transform_edt(np.pad(filled, 1))[1:-1, 1:-1]
    peaks = peak_local_max(depth, min_distance=3, exclude_border=False, labels=filled.astype(np.int32))
    if len(peaks) < 2:
        return filled.astype(np.int32)
    markers = np.zeros(filled.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-depth, markers, mask=filled)
    n = int(regions.max())
    peak_depth = ndimage.maximum(depth, regions, index=np.arange(n + 1))
    area = np.bincount(regions.ravel(), minlength=n + 1)
    waists = _waists(regions, depth)
    owner = np.arange(n + 1)  # each region's part (union-find without ranks: n is small)

    def part(i: int) -> int:
        while owner[i] != i:
            i = owner[i]
        return int(i)

    while True:
        deepest: dict[int, float] = {}
        size: dict[int, int] = {}
        for i in range(1, n + 1):
            p = part(i)
            deepest[p] = max(deepest.get(p, 0.0), float(peak_depth[i]))
            size[p] = size.get(p, 0) + int(area[i])
        between: dict[tuple[int, int], float] = {}
        for (r1, r2), waist in waists.items():
            p1, p2 = part(r1), part(r2)
            if p1 != p2:
                key = (min(p1, p2), max(p1, p2))
                between[key] = max(between.get(key, 0.0), waist)
        best, best_rank = None, None
        for (p1, p2), waist in between.items():
            rank = (min(size[p1], size[p2]) < min_px, waist / min(deepest[p1], deepest[p2]))
            if (rank[0] or rank[1] >= neck_ratio) and (best_rank is None or rank > best_rank):
                best, best_rank = (p1, p2), rank
        if best is None:
            break
        owner[best[1]] = best[0]
    parts = np.array([part(i) for i in range(n + 1)])
    _, relabelled = np.unique(parts, return_inverse=True)  # background (part 0) stays 0
    return relabelled.reshape(parts.shape)[regions].astype(np.int32)


def node_contours(
    cleaned: np.ndarray, neck_ratio: float = NECK_RATIO, min_px: int = MIN_COMPONENT_PX
) -> list[np.ndarray]:
    """Steps 3 and 4: each outer contour of the cleaned mask, or, where its filled outline splits at a
    neck, the outer contour of each part; (N, 2) int x, y pixel indices, components in OpenCV's order."""
    contours = []
    for contour in outer_contours(cleaned):
        x0, y0 = contour.min(axis=0)
        x1, y1 = contour.max(axis=0) + 1
        filled = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.drawContours(filled, [contour - (x0, y0)], -1, 1, thickness=cv2.FILLED)
        parts = split_at_necks(filled, neck_ratio, min_px)
        if parts.max() < 2:
            contours.append(contour)
            continue
        for label in range(1, int(parts.max()) + 1):
            pieces, _ = cv2.findContours(
                (parts == label).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
            )
            # A part is one piece; should the watershed leave a stray pixel, the part is its largest.
            piece = max(pieces, key=cv2.contourArea)
            contours.append(piece.reshape(-1, 2) + (x0, y0))
    return contours


def mask_to_contours(
    mask: np.ndarray, grid: Grid, min_px: int = MIN_COMPONENT_PX
) -> tuple[list[np.ndarray], np.ndarray]:
    """The whole pipeline on a predicted mask of ``grid``'s size: (contours as float64 (N, 2) x, y in
    base-level pixels, the cleaned mask they outline)."""
    if np.shape(mask) != (grid.height_px, grid.width_px):
        raise DetectorError(
            f"mask shape {np.shape(mask)} does not match the detector grid "
            f"({grid.height_px}, {grid.width_px})"
        )
    cleaned = clean_mask(mask, min_px)
    return [grid.to_base_px(c) for c in node_contours(cleaned, min_px=min_px)], cleaned
