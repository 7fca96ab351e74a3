"""Whole-slide image I/O: open a slide with large_image and read it at a target resolution.

This module owns everything between a slide file and uint8 RGB pixels: which resolution a
slide has (``base_mpp``, from its metadata or an explicit override), region reads at any
target resolution in um/px, tiling, the low-resolution tissue mask and polygon masks. It
also owns the project's resolution constants (``DETECTOR_MPP``, ``CLASSIFIER_MPP``).

Coordinates at the API boundary are always base-level pixels (``*_base_px``: pixels of the
slide's full-resolution level); sizes of returned images are pixels at the requested
``mpp``. Pixels outside the slide are white. Memory is bounded by the requested output:
large_image picks the pyramid level at or just above the target resolution, so a read never
decodes more than about four times its output's pixels, whatever the slide's size.

Every problem with a slide file (missing, empty, corrupt, unsupported, no resolution)
raises :class:`SlideError`; invalid arguments (a negative ``mpp``, a bad polygon) raise
``ValueError``. large_image is imported only where a slide is opened.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lnassist.errors import LnassistError

DETECTOR_MPP = 7.36
"""LN detector input resolution (the paper's 1.25x), um/px."""
CLASSIFIER_MPP = 0.46
"""Classifier input resolution (the paper's 20x), um/px."""
TISSUE_MASK_MPP = DETECTOR_MPP
"""Tissue masks are computed on the detector's grid, so both share pixels."""

# CLAM's segmentation kernels (median blur 7 px, closing 4 px) taken at the mask's default grid
# and kept in micrometres, so the mask does not depend on the resolution it is computed at.
TISSUE_MEDIAN_UM = 7 * TISSUE_MASK_MPP
TISSUE_CLOSE_UM = 4 * TISSUE_MASK_MPP
# Otsu splits even a blank slide in two (JPEG noise in the glass); background saturation
# stays below this on real scans while stained tissue is well above it.
TISSUE_MIN_SATURATION = 20

WHITE = 255
_POLYGON_ROWS_PER_BLOCK = 256


class SlideError(LnassistError):
    """A slide file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class Tile:
    """One tile of :meth:`Slide.iter_tiles`: its base-level footprint and its pixels at ``mpp``."""

    left_base_px: int
    top_base_px: int
    width_base_px: int
    height_base_px: int
    mpp: float
    image: np.ndarray


@dataclass
class TissueMask:
    """Tissue pixels of a whole slide at ``mpp`` (``mask[y, x]``, True = tissue)."""

    mask: np.ndarray
    mpp: float
    base_mpp: float

    def fraction(self, left_base_px: int, top_base_px: int, width_base_px: int, height_base_px: int) -> float:
        """Fraction of the base-level rectangle covered by tissue (parts outside the slide count as none).

        The rectangle is widened to whole mask pixels, so a tile smaller than one mask pixel
        gets that pixel's value.
        """
        _check_size(width_base_px, height_base_px)
        base_per_mask_px = self.mpp / self.base_mpp
        x0 = math.floor(left_base_px / base_per_mask_px)
        y0 = math.floor(top_base_px / base_per_mask_px)
        x1 = math.ceil((left_base_px + width_base_px) / base_per_mask_px)
        y1 = math.ceil((top_base_px + height_base_px) / base_per_mask_px)
        area = (x1 - x0) * (y1 - y0)
        height, width = self.mask.shape
        inside = self.mask[max(y0, 0) : max(min(y1, height), 0), max(x0, 0) : max(min(x1, width), 0)]
        return float(np.count_nonzero(inside)) / area


@dataclass
class Slide:
    """An open slide: its base level's size and resolution, and reads at any resolution."""

    path: Path
    base_mpp: float
    width_px: int
    height_px: int
    magnification: float | None
    source: Any = field(repr=False, compare=False)  # the large_image tile source

    def size_at(self, mpp: float) -> tuple[int, int]:
        """(width, height) in pixels of the whole slide at ``mpp``."""
        return self._output_size(self.width_px, self.height_px, mpp)

    def read_region(
        self, left_base_px: int, top_base_px: int, width_base_px: int, height_base_px: int, mpp: float
    ) -> np.ndarray:
        """The base-level rectangle as uint8 RGB at ``mpp``: shape (round(height * base_mpp / mpp),
        round(width * base_mpp / mpp), 3), at least one pixel each way; outside the slide is white."""
        _check_size(width_base_px, height_base_px)
        out_w, out_h = self._output_size(width_base_px, height_base_px, mpp)
        return self._read(
            int(left_base_px), int(top_base_px), int(width_base_px), int(height_base_px), out_w, out_h
        )

    def read_thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (size :meth:`size_at`)."""
        return self.read_region(0, 0, self.width_px, self.height_px, mpp)

    def iter_tiles(
        self,
        mpp: float,
        tile_px: int,
        overlap_px: int = 0,
        region_base_px: tuple[int, int, int, int] | None = None,
    ) -> Iterator[Tile]:
        """Square ``tile_px`` tiles at ``mpp`` covering ``region_base_px`` (left, top, width, height;
        default the whole slide), row by row, neighbours sharing ``overlap_px`` pixels at ``mpp``.

        Every tile has the full size: the last row and column may reach past the region (they
        show the slide there, white outside it).
        """
        if tile_px <= 0 or not 0 <= overlap_px < tile_px:
            raise ValueError(f"need tile_px > 0 and 0 <= overlap_px < tile_px, got {tile_px}, {overlap_px}")
        left, top, width, height = region_base_px or (0, 0, self.width_px, self.height_px)
        _check_size(width, height)
        region_w_px, region_h_px = self._output_size(width, height, mpp)
        base_per_px = mpp / self.base_mpp
        stride_px = tile_px - overlap_px
        tile_base_px = max(1, round(tile_px * base_per_px))
        n_x = max(1, math.ceil((region_w_px - overlap_px) / stride_px))
        n_y = max(1, math.ceil((region_h_px - overlap_px) / stride_px))
        for row in range(n_y):
            tile_top = top + round(row * stride_px * base_per_px)
            for col in range(n_x):
                tile_left = left + round(col * stride_px * base_per_px)
                image = self._read(tile_left, tile_top, tile_base_px, tile_base_px, tile_px, tile_px)
                yield Tile(tile_left, tile_top, tile_base_px, tile_base_px, mpp, image)

    def tissue_mask(self, mpp: float = TISSUE_MASK_MPP) -> TissueMask:
        """Tissue mask of the whole slide at ``mpp``: HSV saturation, median blur, Otsu, closing."""
        return TissueMask(_tissue_pixels(self.read_thumbnail(mpp), mpp), mpp, self.base_mpp)

    def _output_size(self, width_base_px: int, height_base_px: int, mpp: float) -> tuple[int, int]:
        _check_mpp(mpp)
        scale = self.base_mpp / mpp
        return max(1, round(width_base_px * scale)), max(1, round(height_base_px * scale))

    def _read(self, left: int, top: int, width: int, height: int, out_w: int, out_h: int) -> np.ndarray:
        """Base rectangle (left, top, width, height) resampled to exactly (out_h, out_w, 3)."""
        canvas = np.full((out_h, out_w, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, self.width_px), min(top + height, self.height_px)
        if x1 <= x0 or y1 <= y0:
            return canvas
        # Where the part inside the slide lands in the output.
        ox0, ox1 = round((x0 - left) * out_w / width), round((x1 - left) * out_w / width)
        oy0, oy1 = round((y0 - top) * out_h / height), round((y1 - top) * out_h / height)
        if ox1 > ox0 and oy1 > oy0:
            canvas[oy0:oy1, ox0:ox1] = self._read_inside(x0, y0, x1 - x0, y1 - y0, ox1 - ox0, oy1 - oy0)
        return canvas

    def _read_inside(
        self, left: int, top: int, width: int, height: int, out_w: int, out_h: int
    ) -> np.ndarray:
        """A rectangle inside the slide, resampled to (out_h, out_w, 3).

        large_image takes negative coordinates as offsets from the right/bottom edge, so
        callers clip to the slide first.
        """
        from large_image.constants import TILE_FORMAT_NUMPY

        region = {"left": left, "top": top, "width": width, "height": height, "units": "base_pixels"}
        downsampling = out_w * out_h < width * height
        # With an output size large_image reads the pyramid level at or just above the target
        # resolution and downsamples it (Lanczos); without one it reads the base level.
        output = {"output": {"maxWidth": out_w, "maxHeight": out_h}} if downsampling else {}
        try:
            image, _ = self.source.getRegion(region=region, format=TILE_FORMAT_NUMPY, **output)
        except Exception as exc:  # decoders raise anything from OSError to ValueError on corrupt data
            raise SlideError(self.path, f"cannot read region {region}: {type(exc).__name__}: {exc}") from exc
        image = _to_rgb_uint8(image, self.path)
        if image.shape[:2] != (out_h, out_w):
            # Upsampling, or large_image's aspect-preserving output being a pixel off.
            interpolation = cv2.INTER_AREA if image.shape[1] > out_w else cv2.INTER_LINEAR
            image = cv2.resize(image, (out_w, out_h), interpolation=interpolation)
        return image


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open any slide large_image reads. ``mpp`` (um/px of the base level) overrides the
    metadata and is required when the file has no resolution."""
    path = Path(path)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise SlideError(path, f"the mpp override must be a positive number of um/px, got {mpp!r}")
    if not path.exists():
        raise SlideError(path, "no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise SlideError(path, "the file is empty")
    import large_image

    if large_image.config.getConfig("cache_backend") is None:
        # An in-process tile cache: a CLI run has no memcached, and probing for one costs time and a log line.
        large_image.config.setConfig("cache_backend", "python")
    try:
        source = large_image.open(str(path))
        native = source.getNativeMagnification()
        width_px, height_px = int(source.sizeX), int(source.sizeY)
    except Exception as exc:  # large_image's sources raise TileSourceError, but decoders raise OSError etc.
        raise SlideError(path, f"not a slide large_image can read ({type(exc).__name__}: {exc})") from exc
    if width_px <= 0 or height_px <= 0:
        raise SlideError(path, f"the image has no pixels ({width_px} x {height_px})")
    truncation = _tiff_truncation(path)
    if truncation:
        raise SlideError(path, truncation)
    mm_x = native.get("mm_x")
    if mpp is None:
        if not mm_x or not math.isfinite(mm_x) or mm_x <= 0:
            raise SlideError(
                path,
                "no resolution (um/px) in the slide's metadata; pass the mpp override "
                "(CLI flag --mpp) with the scanner's base-level um/px",
            )
        mpp = float(mm_x) * 1000.0
    magnification = native.get("magnification")
    return Slide(
        path=path,
        base_mpp=float(mpp),
        width_px=width_px,
        height_px=height_px,
        magnification=float(magnification) if magnification else None,
        source=source,
    )


def polygon_mask(
    polygon_base_px: np.ndarray,
    left_base_px: float,
    top_base_px: float,
    width_px: int,
    height_px: int,
    mpp: float,
    *,
    base_mpp: float,
) -> np.ndarray:
    """Boolean (height_px, width_px) mask at ``mpp`` of an image whose top-left corner is at
    (left_base_px, top_base_px): True where the pixel's centre lies inside the polygon (N x 2,
    x/y in base pixels of a slide at ``base_mpp``; even-odd rule).

    A pixel's value depends only on where its centre is on the slide, so windows cut from one
    image (``left_base_px`` may be fractional) give exactly the masks of the whole image.
    """
    polygon = _as_polygon(polygon_base_px)
    _check_mpp(mpp)
    _check_mpp(base_mpp)
    _check_size(width_px, height_px)
    base_per_px = mpp / base_mpp
    return _centres_inside(polygon, left_base_px, top_base_px, base_per_px, base_per_px, width_px, height_px)


def cell_centres_inside(
    polygon_base_px: np.ndarray,
    first_centre_base_px: tuple[float, float],
    step_base_px: tuple[float, float],
    rows: int,
    cols: int,
) -> np.ndarray:
    """Boolean (rows, cols) mask of a grid of cells (such as a CAM's) whose cell (r, c) is centred
    at ``first_centre + (c * step_x, r * step_y)``: True where the centre lies inside the polygon."""
    polygon = _as_polygon(polygon_base_px)
    (x0, y0), (dx, dy) = first_centre_base_px, step_base_px
    if not (dx > 0 and dy > 0):
        raise ValueError(f"cell spacing must be positive, got {step_base_px}")
    _check_size(cols, rows)
    return _centres_inside(polygon, x0 - dx / 2, y0 - dy / 2, dx, dy, cols, rows)


def _centres_inside(
    polygon: np.ndarray, left: float, top: float, step_x: float, step_y: float, width: int, height: int
) -> np.ndarray:
    """Scanline fill: pixel (r, c) spans [left + c step_x, left + (c + 1) step_x) along x (likewise y)
    and is True when its centre is inside ``polygon`` (even-odd rule)."""
    x0, y0 = polygon[:, 0], polygon[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    mask = np.zeros((height, width), dtype=bool)
    # In blocks of rows so the rows x edges crossing table stays small.
    for first_row in range(0, height, _POLYGON_ROWS_PER_BLOCK):
        rows = np.arange(first_row, min(first_row + _POLYGON_ROWS_PER_BLOCK, height))
        centre_y = top + (rows[:, None] + 0.5) * step_y
        # Half-open in y, so a scanline through a vertex counts each edge pair once.
        row, edge = np.nonzero((y0 <= centre_y) != (y1 <= centre_y))
        if len(row) == 0:
            continue
        crossing_x = x0[edge] + (centre_y[row, 0] - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        # First pixel whose centre is right of the crossing; the inside flips there.
        first_col = np.clip(np.ceil((crossing_x - left) / step_x - 0.5), 0, width)
        flat = row * (width + 1) + first_col.astype(np.int64)
        flips = np.bincount(flat, minlength=len(rows) * (width + 1)).reshape(len(rows), width + 1)
        mask[rows] = np.cumsum(flips[:, :width], axis=1) % 2 == 1
    return mask


def polygon_area_base_px2(polygon_base_px: np.ndarray) -> float:
    """Area enclosed by an (N, 2) x, y polygon (shoelace formula), in square base pixels."""
    polygon = np.asarray(polygon_base_px, dtype=np.float64)
    x, y = polygon[:, 0], polygon[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def read_polygon_region(
    slide: Slide, polygon_base_px: np.ndarray, mpp: float, margin_base_px: int = 0
) -> tuple[np.ndarray, tuple[int, int]]:
    """The polygon's bounding box (plus ``margin_base_px``) read at ``mpp`` with every pixel
    outside the polygon white; returns (image, (left_base_px, top_base_px) of the image)."""
    polygon = _as_polygon(polygon_base_px)
    left = math.floor(polygon[:, 0].min()) - margin_base_px
    top = math.floor(polygon[:, 1].min()) - margin_base_px
    right = math.ceil(polygon[:, 0].max()) + margin_base_px
    bottom = math.ceil(polygon[:, 1].max()) + margin_base_px
    image = slide.read_region(left, top, max(right - left, 1), max(bottom - top, 1), mpp)
    inside = polygon_mask(polygon, left, top, image.shape[1], image.shape[0], mpp, base_mpp=slide.base_mpp)
    image[~inside] = WHITE
    return image, (left, top)


def _tiff_truncation(path: Path) -> str | None:
    """Why a TIFF-based slide (SVS, NDPI, OME-TIFF, ...) is cut short, or None when it is not.

    An interrupted copy of a TIFF can still open (large_image's tifffile or PIL source) and
    read its missing tiles as black or white without an error, so check that every image
    directory and tile lies inside the file. Files tifffile does not parse are left to
    large_image, which has already opened them.
    """
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # not a TIFF
        return None
    with tif:
        size = tif.filehandle.size
        try:
            pages = list(tif.pages)
        except Exception as exc:
            return f"corrupt TIFF directory chain ({type(exc).__name__}: {exc})"
        while pages:
            page = pages.pop()
            ends = np.add(page.dataoffsets, page.databytecounts, dtype=np.int64)
            if ends.size and ends.max() > size:
                return f"truncated: image data runs to byte {ends.max()} but the file has {size} bytes"
            index = page.index if isinstance(page.index, tuple) else (page.index,)
            for number, offset in enumerate(page.subifds or ()):
                if offset >= size:
                    return f"truncated: an image directory at byte {offset} is past the end ({size} bytes)"
                tif.filehandle.seek(offset)
                try:
                    pages.append(tifffile.TiffPage(tif, (*index, number)))
                except Exception as exc:
                    return f"corrupt TIFF directory at byte {offset} ({type(exc).__name__}: {exc})"
    return None


def _tissue_pixels(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """CLAM-style tissue segmentation of an RGB image at ``mpp``: boolean mask, True = tissue."""
    saturation = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]
    median_px = _odd_px(TISSUE_MEDIAN_UM / mpp)
    if median_px >= 3:
        saturation = cv2.medianBlur(saturation, median_px)
    otsu, _ = cv2.threshold(saturation, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    mask = (saturation > max(otsu, TISSUE_MIN_SATURATION)).astype(np.uint8)
    close_px = round(TISSUE_CLOSE_UM / mpp)
    if close_px >= 2:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close_px, close_px))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return mask.astype(bool)


def _to_rgb_uint8(image: np.ndarray, path: Path) -> np.ndarray:
    """large_image's numpy output (grey, grey+alpha, RGB, RGBA; uint8 or uint16) as uint8 RGB,
    transparent pixels composited over white."""
    if image.ndim == 2:
        image = image[..., np.newaxis]
    if image.dtype == np.uint16:
        image = np.round(image / 257.0).astype(np.uint8)
    elif image.dtype == np.bool_:
        image = image.astype(np.uint8) * WHITE
    elif image.dtype != np.uint8:
        raise SlideError(path, f"unsupported pixel type {image.dtype} (expected 8- or 16-bit brightfield)")
    bands = image.shape[2]
    if bands not in (1, 2, 3, 4):
        raise SlideError(
            path, f"unsupported band count {bands} (expected grey or RGB, with or without alpha)"
        )
    colour = image[..., :3] if bands >= 3 else np.repeat(image[..., :1], 3, axis=2)
    if bands in (2, 4):
        alpha = image[..., -1:].astype(np.uint16)
        colour = ((colour * alpha + WHITE * (WHITE - alpha) + 127) // WHITE).astype(np.uint8)
    return np.ascontiguousarray(colour)


def _as_polygon(polygon_base_px: np.ndarray) -> np.ndarray:
    polygon = np.asarray(polygon_base_px, dtype=np.float64)
    if polygon.ndim != 2 or polygon.shape[1] != 2 or len(polygon) < 3 or not np.isfinite(polygon).all():
        raise ValueError(f"a polygon is an (N >= 3, 2) array of finite x, y; got shape {polygon.shape}")
    return polygon


def _check_mpp(mpp: float) -> None:
    if not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp must be a positive number of um/px, got {mpp!r}")


def _check_size(width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width} x {height}")


def _odd_px(size_px: float) -> int:
    return max(1, 2 * round((size_px - 1) / 2) + 1)


def describe(slide: Slide) -> dict[str, Any]:
    """What a person checks first about a slide: size, resolution, pyramid and tissue fraction."""
    metadata = slide.source.getMetadata()
    mask = slide.tissue_mask()
    return {
        "path": str(slide.path),
        "width_base_px": slide.width_px,
        "height_base_px": slide.height_px,
        "base_mpp": slide.base_mpp,
        "magnification": slide.magnification,
        "levels": int(metadata.get("levels", 1)),
        "tile_px": [int(metadata.get("tileWidth", 0)), int(metadata.get("tileHeight", 0))],
        "size_at_detector_mpp": list(slide.size_at(DETECTOR_MPP)),
        "tissue_fraction": mask.fraction(0, 0, slide.width_px, slide.height_px),
        "large_image_source": type(slide.source).__name__,
    }
