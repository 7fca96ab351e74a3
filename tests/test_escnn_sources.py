"""SlideRegionSource: canvas geometry, whiteness outside the polygon, read skipping, and
chunk-consistent pixels, against a fake slide that counts its reads."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath
from source_helpers import stitch

from lnassist.escnn.augment import AugmentConfig, AugmentedSource, draw_params
from lnassist.escnn.sources import SlideRegionSource, SourceError

WHITE = 255
REAL_SLIDE = Path("/work/shared/data/cmu_small_region.svs")


class FakeSlide:
    """A slide held in memory with Slide.read_region's contract: output shape
    (round(height * base_mpp / mpp), round(width * base_mpp / mpp), 3), white outside."""

    def __init__(self, base: np.ndarray, base_mpp: float) -> None:
        self.base = base
        self.base_mpp = base_mpp
        self.reads: list[tuple[int, int, int, int]] = []

    def read_region(self, left: int, top: int, width: int, height: int, mpp: float) -> np.ndarray:
        self.reads.append((left, top, width, height))
        region = np.full((height, width, 3), WHITE, dtype=np.uint8)
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + width, self.base.shape[1]), min(top + height, self.base.shape[0])
        if x1 > x0 and y1 > y0:
            region[y0 - top : y1 - top, x0 - left : x1 - left] = self.base[y0:y1, x0:x1]
        scale = self.base_mpp / mpp
        out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        return cv2.resize(region, (out_w, out_h), interpolation=interpolation)


def textured_base(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(20, 230, (height, width, 3), dtype=np.uint8)


# A diamond: its bounding box's corners are far outside it.
DIAMOND_BASE_PX = np.array([[150.0, 40.0], [260.0, 150.0], [150.0, 260.0], [40.0, 150.0]])


def test_canvas_geometry_and_mapping_to_base_pixels():
    slide = FakeSlide(textured_base(300, 300, 0), base_mpp=0.25)
    source = SlideRegionSource(slide, DIAMOND_BASE_PX + 0.4, mpp=0.5, chunk_px=16)
    assert source.origin_base_px == (40, 40)
    assert source.base_px_per_px == 2.0 and source.canvas_mpp == 0.5
    assert (source.height, source.width) == (111, 111)  # ceil((261 - 40) / 2)
    assert slide.reads == []  # nothing is read up front


def test_pixels_inside_match_the_slide_and_outside_are_white():
    base = textured_base(300, 300, 1)
    slide = FakeSlide(base, base_mpp=0.25)
    source = SlideRegionSource(slide, DIAMOND_BASE_PX, mpp=0.5, chunk_px=16)
    canvas = stitch(source, 40)
    # Independent truth: 2x2 block means of the base (INTER_AREA at exactly 1/2), and pixel
    # centres tested against the polygon with matplotlib, one canvas pixel away from the outline.
    left, top = source.origin_base_px
    crop = base[top : top + 2 * source.height, left : left + 2 * source.width]
    expected = cv2.resize(crop, (source.width, source.height), interpolation=cv2.INTER_AREA)
    ys, xs = np.mgrid[: source.height, : source.width]
    centres = np.stack([left + 2 * xs.ravel() + 1, top + 2 * ys.ravel() + 1], axis=1)
    outline = PolygonPath(DIAMOND_BASE_PX)
    inside = outline.contains_points(centres, radius=-4).reshape(ys.shape)
    outside = ~outline.contains_points(centres, radius=4).reshape(ys.shape)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert (canvas[outside] == WHITE).all()
    assert np.array_equal(canvas[inside], expected[inside])


def test_windows_outside_the_polygon_return_none_without_reading():
    slide = FakeSlide(textured_base(300, 300, 2), base_mpp=0.25)
    source = SlideRegionSource(slide, DIAMOND_BASE_PX, mpp=0.5, chunk_px=16)
    # The top-left corner of the bounding box, including chunks the diamond does cross.
    assert source.read(0, 0, 20, 20) is None
    assert source.read(-50, -50, 30, 30) is None  # off the canvas
    assert source.read(source.height, 0, 10, 10) is None
    assert slide.reads == []
    assert source.read(48, 48, 16, 16) is not None  # exactly one chunk
    assert slide.reads == [(40 + 3 * 32, 40 + 3 * 32, 32, 32)]


def test_only_chunks_meeting_the_polygon_are_read_and_each_once():
    slide = FakeSlide(textured_base(300, 300, 3), base_mpp=0.25)
    source = SlideRegionSource(slide, DIAMOND_BASE_PX, mpp=0.5, chunk_px=16)
    stitch(source, 24)
    stitch(source, 24)
    n_chunks = math.ceil(source.height / 16) * math.ceil(source.width / 16)
    assert len(slide.reads) == len(set(slide.reads))  # the cache serves repeated reads
    assert len(slide.reads) < n_chunks - 8  # the four corners of the bbox were skipped
    assert all(read[2:] == (32, 32) for read in slide.reads)


def test_pixels_do_not_depend_on_the_window_at_a_non_integer_scale():
    # 0.499 -> 0.46 um/px upsamples by a non-integer factor, like the project's real slide.
    slide = FakeSlide(textured_base(300, 300, 4), base_mpp=0.499)
    polygon = DIAMOND_BASE_PX + 0.3
    first = SlideRegionSource(slide, polygon, mpp=0.46, chunk_px=20, cache_chunks=1)
    second = SlideRegionSource(slide, polygon, mpp=0.46, chunk_px=20)
    assert first.canvas_mpp == pytest.approx(0.46, rel=1 / 40)
    assert np.array_equal(stitch(first, 37), stitch(second, 50))
    assert np.array_equal(first.read(30, 41, 25, 33), first.read(30, 41, 25, 33))


def test_augmented_slide_region_is_tiling_invariant():
    slide = FakeSlide(textured_base(300, 300, 5), base_mpp=0.25)
    source = SlideRegionSource(slide, DIAMOND_BASE_PX, mpp=0.5, chunk_px=16)
    params = draw_params(AugmentConfig(), np.random.default_rng(0), source.height, source.width)
    augmented = AugmentedSource(source, params)
    assert np.array_equal(stitch(augmented, 30), stitch(augmented, 47))


def test_bad_polygon_and_bad_slide_answers_are_errors():
    slide = FakeSlide(textured_base(50, 50, 6), base_mpp=0.25)
    with pytest.raises(SourceError, match="polygon"):
        SlideRegionSource(slide, np.array([[0.0, 0.0], [10.0, 10.0]]))
    with pytest.raises(SourceError, match="mpp"):
        SlideRegionSource(slide, DIAMOND_BASE_PX, mpp=0.0)

    class WrongSize(FakeSlide):
        def read_region(self, left, top, width, height, mpp):
            return super().read_region(left, top, width, height, mpp)[:-1]

    source = SlideRegionSource(WrongSize(textured_base(300, 300, 6), 0.25), DIAMOND_BASE_PX, mpp=0.5)
    with pytest.raises(SourceError, match="expected uint8"):
        source.read(40, 40, 10, 10)


def test_real_slide_region():
    pytest.importorskip("large_image")
    if not REAL_SLIDE.exists():
        pytest.skip(f"{REAL_SLIDE} is not available")
    from lnassist.slide import open_slide

    slide = open_slide(REAL_SLIDE)
    cx, cy = slide.width_px / 2, slide.height_px / 2
    angles = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    polygon = np.stack([cx + 300 * np.cos(angles), cy + 200 * np.sin(angles)], axis=1)
    source = SlideRegionSource(slide, polygon, chunk_px=128)
    assert source.width == pytest.approx(600 * slide.base_mpp / 0.46, abs=2)
    canvas = stitch(source, 200)
    assert canvas[0, 0].tolist() == [WHITE] * 3  # a bounding-box corner is outside the ellipse
    cy_px, cx_px = source.height // 2, source.width // 2
    centre = canvas[cy_px - 20 : cy_px + 20, cx_px - 20 : cx_px + 20]
    direct = slide.read_region(round(cx) - 20, round(cy) - 20, 40, 40, slide.base_mpp)
    assert not (centre == WHITE).all() and centre.std() > 1
    assert abs(float(centre.mean()) - float(direct.mean())) < 25  # the same tissue
