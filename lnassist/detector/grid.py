"""The detector's pixel grid over a slide, and conversions between its pixels and base-level pixels.

Convention: detector pixel (row i, column j) covers the base-level rectangle
x in [j * sx, (j + 1) * sx), y in [i * sy, (i + 1) * sy), where (sx, sy) = ``base_px_per_px`` are the
slide's base-level size divided by the size of its 1.25x image (``Slide.size_at(DETECTOR_MPP)``; equal to
DETECTOR_MPP / base_mpp up to the rounding of that size). A point given in pixel indices (as OpenCV
contours are: the centre of pixel j is j) lies at base x = (j + 0.5) * sx.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lnassist.slide import DETECTOR_MPP, Slide, polygon_mask


@dataclass(frozen=True)
class Grid:
    """A ``height_px`` x ``width_px`` detector image; a pixel spans ``base_px_per_px`` (x, y) base pixels."""

    width_px: int
    height_px: int
    base_px_per_px: tuple[float, float]

    @classmethod
    def of_slide(cls, slide: Slide, mpp: float = DETECTOR_MPP) -> Grid:
        width_px, height_px = slide.size_at(mpp)
        return cls(width_px, height_px, (slide.width_px / width_px, slide.height_px / height_px))

    def to_base_px(self, points_px: np.ndarray) -> np.ndarray:
        """(N, 2) x, y in pixel indices (pixel centres) -> float64 (N, 2) base-level pixels."""
        points = np.asarray(points_px, dtype=np.float64).reshape(-1, 2)
        return (points + 0.5) * np.asarray(self.base_px_per_px)

    def rectangle_mask(
        self, x_base_px: float, y_base_px: float, width_base_px: float, height_base_px: float
    ) -> np.ndarray:
        """Boolean (height_px, width_px) mask of the pixels touched by a base-pixel rectangle."""
        sx, sy = self.base_px_per_px
        keep = np.zeros((self.height_px, self.width_px), dtype=bool)
        rows = slice(math.floor(y_base_px / sy), math.ceil((y_base_px + height_base_px) / sy))
        keep[rows, math.floor(x_base_px / sx) : math.ceil((x_base_px + width_base_px) / sx)] = True
        return keep

    def rasterise(self, polygons_base_px: list[np.ndarray]) -> np.ndarray:
        """Boolean (height_px, width_px) mask: True where a pixel's centre is inside any of the polygons
        (each (N, 2) x, y in base pixels; even-odd rule within a polygon, union across polygons)."""
        mask = np.zeros((self.height_px, self.width_px), dtype=bool)
        scale = np.asarray(self.base_px_per_px)
        for polygon in polygons_base_px:
            # In units of detector pixels polygon_mask tests centres at j + 0.5, the convention above.
            mask |= polygon_mask(
                np.asarray(polygon, dtype=np.float64) / scale,
                0,
                0,
                self.width_px,
                self.height_px,
                1.0,
                base_mpp=1.0,
            )
        return mask
