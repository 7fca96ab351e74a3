"""Tile sources: where the streaming engine gets the pixels of an input window.

A source describes one image (an LN at classifier resolution, a synthetic canvas, an
array in memory) as a canvas of ``height`` x ``width`` pixels and hands out windows of
it on demand, so the engine never needs the whole image in host memory. Coordinates are
always canvas pixels at the source's own resolution (``y0, x0`` = top-left corner).
Pixels outside the canvas are white.

``SlideRegionSource`` is one LN of a slide: the bounding box of its polygon at the classifier
resolution, white outside the polygon, read from the slide in fixed chunks so that every canvas
pixel has one value whichever window it is read through. With a :class:`MaskJitter` (training) its
contour edge is moved and feathered (:mod:`lnassist.escnn.mask_jitter`), still chunk by chunk.

``OrientedSource`` is any source flipped and turned by quarter turns (one of the eight
:data:`ORIENTATIONS`), read window by window from the matching window of the source it wraps.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from lnassist.errors import LnassistError
from lnassist.escnn.mask_jitter import MaskJitter, blend_to_white, tissue_weight
from lnassist.slide import CLASSIFIER_MPP, polygon_mask

WHITE = 255


class SourceError(LnassistError):
    """A tile source that cannot be built or read as asked (bad polygon, bad slide answer)."""


class TileSource(Protocol):
    """What the streaming engine reads from. ``read`` returns ``None`` for an all-white window."""

    height: int
    width: int

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        """Return the window as uint8 RGB ``(h, w, 3)``, or ``None`` when every pixel is white."""
        ...


def is_white(window: np.ndarray) -> bool:
    """True when every channel of every pixel is 255 (the paper's criterion: min == 255)."""
    return bool(window.min() == WHITE)


def pad_window(canvas: np.ndarray, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Crop ``canvas`` (H, W, C) to the window, filling the part outside the canvas with white."""
    out = np.full((h, w, canvas.shape[2]), WHITE, dtype=canvas.dtype)
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y0 + h, canvas.shape[0]), min(x0 + w, canvas.shape[1])
    if cy1 > cy0 and cx1 > cx0:
        out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = canvas[cy0:cy1, cx0:cx1]
    return out


@dataclass
class ArraySource:
    """A canvas held in memory (tests, small images). ``image`` is uint8 RGB (H, W, 3)."""

    image: np.ndarray

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        window = pad_window(self.image, y0, x0, h, w)
        return None if is_white(window) else window


class SlideLike(Protocol):
    """What ``SlideRegionSource`` needs of ``lnassist.slide.Slide``."""

    base_mpp: float

    def read_region(
        self, left_base_px: int, top_base_px: int, width_base_px: int, height_base_px: int, mpp: float
    ) -> np.ndarray: ...


class _LruCache:
    """A thread-safe least-recently-used map holding at most ``capacity`` entries."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any, compute: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value


class SlideRegionSource:
    """One LN of a slide: the bounding box of ``polygon_base_px`` as a canvas at about ``mpp``.

    Pixels outside the polygon are white. ``polygon_base_px`` may also be a list of polygons (all
    LNs of a slide, for slide-level training): the canvas is their common bounding box and a pixel
    is kept when it lies inside any of them. The canvas is read from the slide in square chunks of
    ``chunk_base_px`` base pixels, each resampled by the slide to ``chunk_px`` canvas pixels. A
    pixel's value therefore depends only on its chunk, never on the window that reads it: windows
    overlapping each other (streaming tiles, their recomputation, augmentation windows) agree
    exactly. Chunks whose part of a window lies outside the polygon are never read from the slide,
    and a window entirely outside the polygon returns ``None`` without any slide read.

    Canvas to base mapping: canvas pixel (x, y) covers the base-level square starting at
    ``origin_base_px + (x, y) * base_px_per_px``. ``base_px_per_px`` is chunk_base_px / chunk_px,
    the requested ``mpp / base_mpp`` rounded so that a chunk is a whole number of pixels on both
    levels (relative error below 0.5 / chunk_px); ``canvas_mpp`` is the resulting resolution.

    ``mask_jitter`` moves and feathers the polygon's edge; the canvas then grows by the jitter's
    reach on every side (in whole base pixels), so dilated tissue is never cut by the bounding box.
    """

    def __init__(
        self,
        slide: SlideLike,
        polygon_base_px: np.ndarray | Sequence[np.ndarray],
        mpp: float = CLASSIFIER_MPP,
        chunk_px: int = 512,
        cache_chunks: int = 128,
        mask_jitter: MaskJitter | None = None,
    ) -> None:
        several = (
            isinstance(polygon_base_px, list | tuple)
            and len(polygon_base_px) > 0
            and all(np.ndim(p) == 2 for p in polygon_base_px)
        )
        self.polygons_base_px = [
            np.asarray(p, dtype=np.float64) for p in (polygon_base_px if several else [polygon_base_px])
        ]
        for polygon in self.polygons_base_px:
            if (
                polygon.ndim != 2
                or polygon.shape[1] != 2
                or len(polygon) < 3
                or not np.isfinite(polygon).all()
            ):
                raise SourceError(
                    f"a polygon is an (N >= 3, 2) array of finite base-px x, y; got {polygon.shape}"
                )
        polygon = np.concatenate(self.polygons_base_px)
        if not (math.isfinite(mpp) and mpp > 0):
            raise SourceError(f"mpp must be a positive number of um/px, got {mpp!r}")
        if chunk_px < 1 or cache_chunks < 1:
            raise SourceError(f"chunk_px and cache_chunks must be >= 1, got {chunk_px}, {cache_chunks}")
        self.slide = slide
        self.mpp = float(mpp)
        base_mpp = float(slide.base_mpp)
        self.chunk_base_px = max(1, round(chunk_px * self.mpp / base_mpp))
        # The slide's own rule for the output size of a read (lnassist.slide.Slide.read_region).
        self.chunk_px = max(1, round(self.chunk_base_px * base_mpp / self.mpp))
        self.base_px_per_px = self.chunk_base_px / self.chunk_px
        self.canvas_mpp = base_mpp * self.base_px_per_px
        self.mask_jitter = mask_jitter
        border_base_px = 0 if mask_jitter is None else math.ceil(mask_jitter.reach_px * self.base_px_per_px)
        left = math.floor(polygon[:, 0].min()) - border_base_px
        top = math.floor(polygon[:, 1].min()) - border_base_px
        right = math.ceil(polygon[:, 0].max()) + border_base_px
        bottom = math.ceil(polygon[:, 1].max()) + border_base_px
        self.origin_base_px = (left, top)
        self.width = max(1, math.ceil((right - left) / self.base_px_per_px))
        self.height = max(1, math.ceil((bottom - top) / self.base_px_per_px))
        self._masks = _LruCache(cache_chunks)
        self._pixels = _LruCache(cache_chunks)

    def _chunk_origin_base_px(self, row: int, col: int) -> tuple[int, int]:
        left, top = self.origin_base_px
        return left + col * self.chunk_base_px, top + row * self.chunk_base_px

    def _chunk_mask(self, row: int, col: int) -> np.ndarray:
        """Inside-polygon mask of a chunk, limited to the canvas: bool, or for a chunk the jittered
        contour crosses the float32 tissue weight (computed on the chunk enlarged by the jitter's
        reach, where it is exact)."""

        def compute() -> np.ndarray:
            left, top = self._chunk_origin_base_px(row, col)
            size = self.chunk_px
            margin = 0 if self.mask_jitter is None else self.mask_jitter.reach_px
            padded = size + 2 * margin
            left_base_px = left - margin * self.base_px_per_px
            top_base_px = top - margin * self.base_px_per_px
            mask = np.zeros((padded, padded), dtype=bool)
            for polygon in self.polygons_base_px:
                mask |= polygon_mask(
                    polygon,
                    left_base_px,
                    top_base_px,
                    padded,
                    padded,
                    self.canvas_mpp,
                    base_mpp=self.slide.base_mpp,
                )
            if self.mask_jitter is not None and mask.any() and not mask.all():
                # Only near the contour does the weight differ from 0 or 1: elsewhere the plain mask is it.
                mask = tissue_weight(mask, self.mask_jitter)
            mask = mask[margin : margin + size, margin : margin + size]
            # The outline may touch the pixel just past the bounding box; the canvas ends before it.
            mask[max(0, self.height - row * size) :, :] = False
            mask[:, max(0, self.width - col * size) :] = False
            return mask

        return self._masks.get((row, col), compute)

    def _chunk_pixels(self, row: int, col: int) -> np.ndarray:
        """A chunk's pixels read from the slide, white outside the polygon."""

        def compute() -> np.ndarray:
            left, top = self._chunk_origin_base_px(row, col)
            size = self.chunk_px
            image = self.slide.read_region(left, top, self.chunk_base_px, self.chunk_base_px, self.mpp)
            if image.shape != (size, size, 3) or image.dtype != np.uint8:
                raise SourceError(
                    f"the slide returned {image.dtype} {image.shape} for a {self.chunk_base_px} base-px "
                    f"square at {self.mpp} um/px; expected uint8 ({size}, {size}, 3)"
                )
            mask = self._chunk_mask(row, col)
            if mask.dtype != bool:
                return blend_to_white(image, mask)
            image = image.copy()
            image[~mask] = WHITE
            return image

        return self._pixels.get((row, col), compute)

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        if h < 1 or w < 1:
            raise SourceError(f"window size must be positive, got {h} x {w}")
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + h, self.height), min(x0 + w, self.width)
        out: np.ndarray | None = None
        size = self.chunk_px
        for row in range(cy0 // size, (cy1 - 1) // size + 1 if cy1 > cy0 else 0):
            ry0, ry1 = max(cy0, row * size), min(cy1, (row + 1) * size)
            for col in range(cx0 // size, (cx1 - 1) // size + 1 if cx1 > cx0 else 0):
                rx0, rx1 = max(cx0, col * size), min(cx1, (col + 1) * size)
                part = (slice(ry0 - row * size, ry1 - row * size), slice(rx0 - col * size, rx1 - col * size))
                if not self._chunk_mask(row, col)[part].any():
                    continue
                if out is None:
                    out = np.full((h, w, 3), WHITE, dtype=np.uint8)
                out[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = self._chunk_pixels(row, col)[part]
        if out is None or is_white(out):
            return None
        return out


ORIENTATIONS = tuple((turns, flip) for flip in (False, True) for turns in range(4))
"""The eight orientations of a canvas (the dihedral group of the square): (quarter turns, flip)."""


@dataclass
class OrientedSource:
    """``source`` seen flipped left-right (when ``flip``), then turned ``quarter_turns`` times a quarter
    turn anticlockwise (``np.rot90``); windows are read from the matching window of ``source``, so a
    slide-backed source still reads only the chunks it needs."""

    source: TileSource
    quarter_turns: int = 0
    flip: bool = False

    def __post_init__(self) -> None:
        if self.quarter_turns not in range(4):
            raise SourceError(f"quarter_turns must be 0, 1, 2 or 3, got {self.quarter_turns!r}")

    @property
    def height(self) -> int:
        return self.source.width if self.quarter_turns % 2 else self.source.height

    @property
    def width(self) -> int:
        return self.source.height if self.quarter_turns % 2 else self.source.width

    def _source_px(self, y: int, x: int) -> tuple[int, int]:
        """The source pixel shown at (y, x) of this view (also outside the canvas: the map is affine)."""
        for turn in reversed(range(self.quarter_turns)):
            # np.rot90 of an (h, w) image: out[i, j] = in[j, w - 1 - i]; w alternates as the image turns.
            width_before = self.source.height if turn % 2 else self.source.width
            y, x = x, width_before - 1 - y
        if self.flip:
            x = self.source.width - 1 - x
        return y, x

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        (ya, xa), (yb, xb) = self._source_px(y0, x0), self._source_px(y0 + h - 1, x0 + w - 1)
        top, left = min(ya, yb), min(xa, xb)
        window = self.source.read(top, left, abs(yb - ya) + 1, abs(xb - xa) + 1)
        if window is None:
            return None
        if self.flip:
            window = window[:, ::-1]
        return np.ascontiguousarray(np.rot90(window, self.quarter_turns))
