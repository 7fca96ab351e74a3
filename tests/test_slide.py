"""Tests of lnassist.slide against known truth: a real Aperio SVS and pyramidal TIFFs written here."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from lnassist.slide import (
    CLASSIFIER_MPP,
    DETECTOR_MPP,
    SlideError,
    cell_centres_inside,
    open_slide,
    polygon_area_base_px2,
    polygon_mask,
    read_polygon_region,
)

SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu_small_region.svs"

# The synthetic slide: 4096 x 3072 base px at 0.25 um/px on a grey (saturation 0) gradient,
# one pink "tissue" ellipse, and a red square inside it at a known base position.
BASE_MPP = 0.25
WIDTH_PX, HEIGHT_PX = 4096, 3072
ELLIPSE_CENTRE_BASE_PX, ELLIPSE_AXES_BASE_PX = (1800, 1500), (1100, 800)
SQUARE_BASE_PX = (2000, 1000, 2400, 1300)  # left, top, right, bottom
RED = (200, 30, 40)


def synthetic_rgb() -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT_PX, 0:WIDTH_PX].astype(np.float32)
    grey = 225 + 20 * x / WIDTH_PX
    image = np.repeat(grey[..., None], 3, axis=2)
    shading = 15 * np.sin(x / 97.0) * np.cos(y / 131.0)
    pink = np.stack([215 + shading, 120 + shading, 175 + shading], axis=2)
    image = np.where(tissue_truth(1.0)[..., None], pink, image)
    left, top, right, bottom = SQUARE_BASE_PX
    image[top:bottom, left:right] = RED
    return np.round(image).astype(np.uint8)


def tissue_truth(base_px_per_px: float) -> np.ndarray:
    """The ellipse rasterised on a grid of pixels each ``base_px_per_px`` base pixels wide."""
    height, width = round(HEIGHT_PX / base_px_per_px), round(WIDTH_PX / base_px_per_px)
    y, x = np.mgrid[0:height, 0:width]
    cx, cy = ((np.array(ELLIPSE_CENTRE_BASE_PX) / base_px_per_px) - 0.5).tolist()
    ax, ay = (np.array(ELLIPSE_AXES_BASE_PX) / base_px_per_px).tolist()
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1


def write_pyramid(path: Path, image: np.ndarray, mpp: float | None, compression: str = "zlib") -> Path:
    """A tiled TIFF with 2x reduced levels in SubIFDs; resolution tags only when ``mpp`` is given."""
    levels = [image]
    while max(levels[-1].shape[:2]) > 256:
        previous = levels[-1]
        size = (max(1, previous.shape[1] // 2), max(1, previous.shape[0] // 2))
        levels.append(cv2.resize(previous, size, interpolation=cv2.INTER_AREA))
    options = {
        "tile": (256, 256),
        "compression": compression,
        "photometric": "minisblack" if image.ndim == 2 else "rgb",
    }
    if image.ndim == 3 and image.shape[2] == 4:
        options["extrasamples"] = ["unassalpha"]
    resolution = {} if mpp is None else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], subifds=len(levels) - 1, **resolution, **options)
        for level in levels[1:]:
            tif.write(level, subfiletype=1, **options)
    return path


@pytest.fixture(scope="module")
def base_rgb() -> np.ndarray:
    return synthetic_rgb()


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory, base_rgb) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("slide") / "synthetic.tif", base_rgb, BASE_MPP)


@pytest.fixture(scope="module")
def slide(slide_path):
    return open_slide(slide_path)


def area_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def red_centroid(image: np.ndarray) -> tuple[float, float]:
    red = (image[..., 0] > 150) & (image[..., 1] < 90) & (image[..., 2] < 90)
    ys, xs = np.nonzero(red)
    assert len(xs) > 0, "red square not found"
    return float(xs.mean()), float(ys.mean())


# --- metadata ---------------------------------------------------------------------------


def test_svs_resolution_and_magnification_from_metadata():
    slide = open_slide(SVS)
    assert slide.base_mpp == pytest.approx(0.499)
    assert slide.magnification == pytest.approx(20.0)
    assert (slide.width_px, slide.height_px) == (2220, 2967)
    assert slide.size_at(0.998) == (1110, 1484)


def test_svs_rgba_becomes_rgb_and_agrees_with_area_downsampled_base():
    slide = open_slide(SVS)
    base = slide.read_region(600, 900, 800, 600, slide.base_mpp)
    assert base.shape == (600, 800, 3) and base.dtype == np.uint8
    half = slide.read_region(600, 900, 800, 600, 2 * slide.base_mpp)
    assert half.shape == (300, 400, 3)
    assert mean_abs_diff(half, area_resize(base, 400, 300)) < 4


def test_svs_tissue_mask_covers_the_stained_tissue():
    slide = open_slide(SVS)
    mask = slide.tissue_mask()
    assert mask.mpp == DETECTOR_MPP
    assert mask.mask.shape[::-1] == slide.size_at(DETECTOR_MPP)
    # The skin section covers about a third of this crop (inspected by eye); the mask's pixels
    # must be the stained ones.
    assert 0.2 < mask.mask.mean() < 0.5
    thumbnail = slide.read_thumbnail(DETECTOR_MPP)
    saturation = cv2.cvtColor(thumbnail, cv2.COLOR_RGB2HSV)[..., 1]
    assert saturation[mask.mask].mean() > 60 > 15 > np.median(saturation[~mask.mask])


def test_tiff_resolution_from_tags(slide):
    assert slide.base_mpp == pytest.approx(BASE_MPP)
    assert (slide.width_px, slide.height_px) == (WIDTH_PX, HEIGHT_PX)
    assert slide.size_at(DETECTOR_MPP) == (round(WIDTH_PX * BASE_MPP / DETECTOR_MPP), 104)


def test_tiff_without_resolution_needs_the_mpp_override(tmp_path, base_rgb):
    path = write_pyramid(tmp_path / "nores.tif", base_rgb[:1024, :1024], None)
    with pytest.raises(SlideError) as info:
        open_slide(path)
    assert str(path) in str(info.value) and "--mpp" in str(info.value)
    slide = open_slide(path, mpp=0.5)
    assert slide.base_mpp == 0.5 and slide.magnification is None
    assert slide.read_region(0, 0, 1024, 1024, 1.0).shape == (512, 512, 3)


def test_mpp_override_wins_over_metadata(slide_path):
    assert open_slide(slide_path, mpp=0.3).base_mpp == 0.3


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), float("inf")])
def test_invalid_mpp_override_is_a_slide_error(slide_path, bad):
    with pytest.raises(SlideError, match="mpp override"):
        open_slide(slide_path, mpp=bad)


# --- unreadable files -------------------------------------------------------------------


def _random_bytes(path: Path, good: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())


def _truncated_header(path: Path, good: Path) -> None:
    path.write_bytes(good.read_bytes()[:3000])


def _truncated(fraction: float):
    def make(path: Path, good: Path) -> None:
        data = good.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])

    return make


def _empty(path: Path, good: Path) -> None:
    path.write_bytes(b"")


def _text(path: Path, good: Path) -> None:
    path.write_text("patient,slide\n1,a.svs\n")


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("random.svs", _random_bytes),
        ("random.tif", _random_bytes),
        ("header_only.tif", _truncated_header),
        ("tenth.tif", _truncated(0.1)),
        ("half.tif", _truncated(0.5)),
        ("most.tif", _truncated(0.99)),
        ("empty.svs", _empty),
        ("notes.txt", _text),
        ("notes.tif", _text),
    ],
)
def test_unreadable_files_raise_slide_error(tmp_path, slide_path, name, make):
    path = tmp_path / name
    make(path, slide_path)
    with pytest.raises(SlideError) as info:
        slide = open_slide(path, mpp=0.25)
        slide.read_thumbnail(4.0)  # a file that opens must also read, or fail as a SlideError
    assert str(path) in str(info.value) and info.value.reason


def test_missing_file_and_directory_raise_slide_error(tmp_path):
    for path in (tmp_path / "missing.svs", tmp_path):
        with pytest.raises(SlideError, match=str(path)):
            open_slide(path, mpp=0.25)


# --- region reads -----------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [CLASSIFIER_MPP, 1.0, 2.0, DETECTOR_MPP])
def test_region_matches_area_downsampled_base(slide, base_rgb, mpp):
    left, top, width, height = 1500, 700, 1600, 1200
    image = slide.read_region(left, top, width, height, mpp)
    out_w, out_h = round(width * BASE_MPP / mpp), round(height * BASE_MPP / mpp)
    assert image.shape == (out_h, out_w, 3) and image.dtype == np.uint8
    expected = area_resize(base_rgb[top : top + height, left : left + width], out_w, out_h)
    assert mean_abs_diff(image, expected) < 3


def test_upsampled_region_downsamples_back_to_base(slide, base_rgb):
    left, top, width, height = 1900, 900, 600, 500
    image = slide.read_region(left, top, width, height, BASE_MPP / 2)
    assert image.shape == (2 * height, 2 * width, 3)
    assert (
        mean_abs_diff(area_resize(image, width, height), base_rgb[top : top + height, left : left + width])
        < 2
    )


@pytest.mark.parametrize("mpp", [BASE_MPP / 2, BASE_MPP, CLASSIFIER_MPP, 1.0, 2.0, DETECTOR_MPP])
def test_coordinates_are_base_pixels_at_every_resolution(slide, mpp):
    left, top = 1700, 800
    image = slide.read_region(left, top, 1000, 800, mpp)
    cx_px, cy_px = red_centroid(image)
    base_per_px = mpp / BASE_MPP
    x_base = left + (cx_px + 0.5) * base_per_px
    y_base = top + (cy_px + 0.5) * base_per_px
    square_left, square_top, square_right, square_bottom = SQUARE_BASE_PX
    tolerance = max(2.0, base_per_px)
    assert x_base == pytest.approx((square_left + square_right) / 2, abs=tolerance)
    assert y_base == pytest.approx((square_top + square_bottom) / 2, abs=tolerance)


def test_thumbnail_is_the_whole_slide(slide, base_rgb):
    thumbnail = slide.read_thumbnail(DETECTOR_MPP)
    width, height = slide.size_at(DETECTOR_MPP)
    assert thumbnail.shape == (height, width, 3)
    assert mean_abs_diff(thumbnail, area_resize(base_rgb, width, height)) < 3


def test_regions_partly_outside_the_slide_are_white_there(slide, base_rgb):
    image = slide.read_region(-400, -200, 1200, 1000, 1.0)  # 4 base px per output px
    assert image.shape == (250, 300, 3)
    assert (image[:, :100] == 255).all() and (image[:50] == 255).all()
    inside = image[50:, 100:]
    assert mean_abs_diff(inside, area_resize(base_rgb[:800, :800], 200, 200)) < 3
    assert inside.max(axis=2).min() < 250  # the slide itself is never pure white

    corner = slide.read_region(WIDTH_PX - 200, HEIGHT_PX - 100, 400, 400, BASE_MPP)
    assert (corner[:, 200:] == 255).all() and (corner[100:] == 255).all()
    assert np.array_equal(corner[:100, :200], base_rgb[HEIGHT_PX - 100 :, WIDTH_PX - 200 :])

    assert (slide.read_region(WIDTH_PX + 10, 0, 500, 500, 1.0) == 255).all()


def test_greyscale_and_rgba_slides_become_rgb(tmp_path, base_rgb):
    grey = cv2.cvtColor(base_rgb[:1024, :1024], cv2.COLOR_RGB2GRAY)
    slide = open_slide(write_pyramid(tmp_path / "grey.tif", grey, BASE_MPP))
    image = slide.read_region(0, 0, 1024, 1024, 0.5)
    assert image.shape == (512, 512, 3)
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    assert mean_abs_diff(image[..., 0], area_resize(grey, 512, 512)) < 3

    rgba = np.dstack([base_rgb[:1024, :1024], np.full((1024, 1024), 255, np.uint8)])
    rgba[:, :512, 3] = 0  # left half transparent
    slide = open_slide(write_pyramid(tmp_path / "rgba.tif", rgba, BASE_MPP))
    image = slide.read_region(0, 0, 1024, 1024, BASE_MPP)
    assert image.shape == (1024, 1024, 3)
    assert (image[:, :512] == 255).all()
    assert np.array_equal(image[:, 512:], base_rgb[:1024, 512:1024])


def test_sixteen_bit_slides_become_eight_bit(tmp_path, base_rgb):
    rgb16 = base_rgb[:1024, :1024].astype(np.uint16) * 257
    slide = open_slide(write_pyramid(tmp_path / "rgb16.tif", rgb16, BASE_MPP))
    assert np.array_equal(slide.read_region(0, 0, 1024, 1024, BASE_MPP), base_rgb[:1024, :1024])
    half = slide.read_region(0, 0, 1024, 1024, 2 * BASE_MPP)
    assert half.dtype == np.uint8
    assert mean_abs_diff(half, area_resize(base_rgb[:1024, :1024], 512, 512)) < 3


def test_ome_tiff_resolution_from_ome_metadata(tmp_path, base_rgb):
    path = tmp_path / "slide.ome.tif"
    options = {"tile": (256, 256), "compression": "zlib", "photometric": "rgb"}
    image = base_rgb[:1024, :1536]
    half = area_resize(image, 768, 512)
    physical = {
        "PhysicalSizeX": 0.5,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": 0.5,
        "PhysicalSizeYUnit": "µm",
    }
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=1, metadata={"axes": "YXS", **physical}, **options)
        tif.write(half, subfiletype=1, **options)
    slide = open_slide(path)
    assert slide.base_mpp == pytest.approx(0.5)
    assert mean_abs_diff(slide.read_region(0, 0, 1536, 1024, 1.0), half) < 2


def test_invalid_read_arguments(slide):
    with pytest.raises(ValueError):
        slide.read_region(0, 0, 0, 100, 1.0)
    with pytest.raises(ValueError):
        slide.read_region(0, 0, 100, 100, -1.0)
    with pytest.raises(ValueError):
        next(slide.iter_tiles(1.0, 64, overlap_px=64))


# --- tiles ------------------------------------------------------------------------------


def test_tiles_cover_the_region_with_the_requested_overlap(slide):
    mpp, tile_px, overlap_px = 1.0, 64, 16
    region = (300, 200, 1000, 700)  # 250 x 175 px at 1 um/px
    tiles = list(slide.iter_tiles(mpp, tile_px, overlap_px, region_base_px=region))
    lefts = sorted({t.left_base_px for t in tiles})
    tops = sorted({t.top_base_px for t in tiles})
    assert len(tiles) == len(lefts) * len(tops) == 5 * 4
    stride_base_px = (tile_px - overlap_px) * 4
    assert np.diff(lefts).tolist() == [stride_base_px] * 4 and np.diff(tops).tolist() == [stride_base_px] * 3
    assert lefts[0] == 300 and tops[0] == 200
    assert lefts[-1] + 4 * tile_px >= 1300 and tops[-1] + 4 * tile_px >= 900
    by_position = {(t.left_base_px, t.top_base_px): t for t in tiles}
    for tile in tiles:
        assert tile.image.shape == (tile_px, tile_px, 3) and tile.mpp == mpp
        assert (tile.width_base_px, tile.height_base_px) == (4 * tile_px, 4 * tile_px)
        assert np.array_equal(
            tile.image, slide.read_region(tile.left_base_px, tile.top_base_px, 256, 256, mpp)
        )
        right = by_position.get((tile.left_base_px + stride_base_px, tile.top_base_px))
        if right is not None:  # the shared columns show the same pixels
            assert mean_abs_diff(tile.image[:, -overlap_px:], right.image[:, :overlap_px]) < 1


def test_tiles_at_detector_resolution_cover_the_whole_slide(slide):
    tiles = list(slide.iter_tiles(DETECTOR_MPP, 32))
    width, height = slide.size_at(DETECTOR_MPP)  # 139 x 104 -> 5 x 4 tiles
    assert len(tiles) == 5 * 4
    coverage = np.zeros((height + 64, width + 64), bool)
    for tile in tiles:
        x, y = (
            round(tile.left_base_px * BASE_MPP / DETECTOR_MPP),
            round(tile.top_base_px * BASE_MPP / DETECTOR_MPP),
        )
        assert not coverage[y : y + 32, x : x + 32].any()  # no overlap requested, none given
        coverage[y : y + 32, x : x + 32] = True
    assert coverage[:height, :width].all()


# --- tissue mask ------------------------------------------------------------------------


@pytest.mark.parametrize("mpp", [DETECTOR_MPP, 4.0])
def test_tissue_mask_finds_the_tissue_blob(slide, mpp):
    tissue = slide.tissue_mask(mpp)
    truth = tissue_truth(mpp / BASE_MPP)
    assert tissue.mask.dtype == bool and tissue.mask.shape == truth.shape
    iou = (tissue.mask & truth).sum() / (tissue.mask | truth).sum()
    assert iou > 0.95


def test_tissue_fraction_of_tiles(slide):
    tissue = slide.tissue_mask()
    cx, cy = ELLIPSE_CENTRE_BASE_PX
    assert tissue.fraction(cx - 300, cy - 300, 600, 600) == 1.0
    assert tissue.fraction(3600, 100, 400, 400) == 0.0
    # A tile straddling the ellipse's left end (x = 700) is about half tissue.
    assert tissue.fraction(700 - 300, cy - 100, 600, 200) == pytest.approx(0.5, abs=0.15)
    # Outside the slide counts as background.
    assert tissue.fraction(cx - 300 - 10_000, cy - 300, 600, 600) == 0.0


def test_blank_slide_has_no_tissue(tmp_path):
    noise = np.random.default_rng(1).integers(-4, 5, (1024, 1024, 3))
    blank = np.clip(238 + noise, 0, 255).astype(np.uint8)
    slide = open_slide(write_pyramid(tmp_path / "blank.tif", blank, 1.0, compression="jpeg"))
    assert not slide.tissue_mask().mask.any()


# --- polygons ---------------------------------------------------------------------------


def pixel_centres_base_px(left: float, top: float, width_px: int, height_px: int, base_per_px: float):
    y, x = np.mgrid[0:height_px, 0:width_px]
    return left + (x + 0.5) * base_per_px, top + (y + 0.5) * base_per_px


def test_polygon_mask_is_true_at_pixel_centres_inside():
    rectangle = np.array([[100, 100], [300, 100], [300, 200], [100, 200]])
    mask = polygon_mask(rectangle, 0, 0, 200, 150, mpp=1.0, base_mpp=0.5)  # 2 base px per px
    assert mask.shape == (150, 200) and mask.dtype == bool
    x, y = pixel_centres_base_px(0, 0, 200, 150, 2.0)
    assert np.array_equal(mask, (x > 100) & (x < 300) & (y > 100) & (y < 200))

    triangle = np.array([[1000.0, 1000.0], [1800.0, 1000.0], [1000.0, 1600.0]])
    mask = polygon_mask(triangle, 903, 897, 250, 200, mpp=1.0, base_mpp=0.25)  # 4 base px per px
    x, y = pixel_centres_base_px(903, 897, 250, 200, 4.0)
    truth = (x > 1000) & (y > 1000) & ((x - 1000) / 800 + (y - 1000) / 600 < 1)
    assert np.array_equal(mask, truth)
    # A hole-free concave outline too: an L drawn clockwise, at the whole-slide origin.
    ell = np.array([[0, 0], [40, 0], [40, 10], [10, 10], [10, 30], [0, 30]])
    mask = polygon_mask(ell, 0, 0, 50, 40, mpp=1.0, base_mpp=1.0)
    x, y = pixel_centres_base_px(0, 0, 50, 40, 1.0)
    assert np.array_equal(mask, ((x < 40) & (y < 10)) | ((x < 10) & (y < 30)))


def test_polygon_mask_of_adjacent_windows_agree():
    """The classifier masks an LN window by window: a pixel's inclusion must not depend on the window."""
    polygon = np.array([[130.3, 80.1], [900.7, 140.2], [700.4, 910.9], [90.2, 600.6]])
    mpp, base_mpp = 0.46, 0.25
    whole = polygon_mask(polygon, 0, 0, 560, 560, mpp, base_mpp=base_mpp)
    assert 0.3 < whole.mean() < 0.9
    for left_px, top_px in [(0, 0), (280, 0), (0, 280), (280, 280), (137, 411)]:
        # Window origins in base px are fractional (280 px = 515.2 base px).
        window = polygon_mask(
            polygon, left_px * mpp / base_mpp, top_px * mpp / base_mpp, 280, 149, mpp, base_mpp=base_mpp
        )
        expected = whole[top_px : top_px + 149, left_px : left_px + 280]
        assert np.array_equal(window[: expected.shape[0], : expected.shape[1]], expected)


def test_polygon_mask_rejects_bad_polygons():
    with pytest.raises(ValueError):
        polygon_mask(np.array([[0, 0], [1, 1]]), 0, 0, 10, 10, mpp=1.0, base_mpp=1.0)
    with pytest.raises(ValueError):
        polygon_mask(np.zeros((5, 3)), 0, 0, 10, 10, mpp=1.0, base_mpp=1.0)


@pytest.mark.parametrize("mpp", [BASE_MPP, 1.0])
def test_read_polygon_region_whitens_outside_the_polygon(slide, mpp):
    triangle = np.array([[1200.5, 1100.0], [2300.0, 1150.0], [1500.0, 2000.7]])
    margin = 40
    image, (left, top) = read_polygon_region(slide, triangle, mpp, margin_base_px=margin)
    assert (left, top) == (1200 - margin, 1100 - margin)
    region = slide.read_region(left, top, 2300 + margin - left, 2001 + margin - top, mpp)
    assert image.shape == region.shape
    inside = polygon_mask(triangle, left, top, image.shape[1], image.shape[0], mpp, base_mpp=BASE_MPP)
    assert 0.2 < inside.mean() < 0.6
    assert (image[~inside] == 255).all()
    assert np.array_equal(image[inside], region[inside])
    assert image[inside].max(axis=1).min() < 250  # tissue and gradient, never white


def test_polygon_past_the_slide_edge_reads_white_there(slide):
    square = np.array([[-100, -100], [200, -100], [200, 200], [-100, 200]])
    image, origin = read_polygon_region(slide, square, 1.0)
    assert origin == (-100, -100) and image.shape == (75, 75, 3)
    assert (image[:25] == 255).all() and (image[:, :25] == 255).all()
    assert image[30:, 30:].max(axis=2).min() < 250


# --- memory bound -----------------------------------------------------------------------

BIG_PX, BIG_TILE_PX, BIG_BLOCK_PX = 20_000, 256, 4096
PALETTE = np.array([(200, 60, 120), (60, 160, 90), (90, 80, 200)], np.uint8)


def big_colour(x_base_px: int, y_base_px: int) -> np.ndarray:
    """The big slide is 4096-px blocks cycling through PALETTE."""
    return PALETTE[(x_base_px // BIG_BLOCK_PX + y_base_px // BIG_BLOCK_PX) % 3]


def write_big_slide(path: Path) -> Path:
    """A 20000^2 JPEG-tiled pyramid written tile by tile: never more than one tile in memory.

    Tiles are JPEG-encoded once per distinct content and handed to tifffile as bytes, which
    keeps the 8,300-tile file fast to write.
    """
    import imagecodecs

    encoded: dict[bytes, bytes] = {}

    def tiles(level: int):
        factor = 2**level
        size = -(-BIG_PX // factor)
        n_tiles = -(-size // BIG_TILE_PX)
        offsets = np.arange(BIG_TILE_PX)
        for ty in range(n_tiles):
            block_y = ((ty * BIG_TILE_PX + offsets) * factor) // BIG_BLOCK_PX
            for tx in range(n_tiles):
                block_x = ((tx * BIG_TILE_PX + offsets) * factor) // BIG_BLOCK_PX
                key = (block_y.tobytes(), block_x.tobytes())
                if key not in encoded:
                    index = (block_y[:, None] + block_x[None, :]) % 3
                    encoded[key] = imagecodecs.jpeg8_encode(PALETTE[index], level=90)
                yield encoded[key]

    n_levels = 7
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(n_levels):
            size = -(-BIG_PX // 2**level)
            options = {
                "shape": (size, size, 3),
                "dtype": np.uint8,
                "tile": (BIG_TILE_PX, BIG_TILE_PX),
                "compression": "jpeg",
                "photometric": "rgb",
            }
            if level == 0:
                resolution = (1e4 / BASE_MPP, 1e4 / BASE_MPP)
                tif.write(
                    tiles(0),
                    subifds=n_levels - 1,
                    resolution=resolution,
                    resolutionunit="CENTIMETER",
                    **options,
                )
            else:
                tif.write(tiles(level), subfiletype=1, **options)
    return path


def test_reads_from_a_gigapixel_slide_stay_small(tmp_path):
    slide = open_slide(write_big_slide(tmp_path / "big.tif"))
    assert (slide.width_px, slide.height_px) == (BIG_PX, BIG_PX)
    full_image_bytes = BIG_PX * BIG_PX * 3  # 1.2 GB
    tracemalloc.start()
    try:
        corner = BIG_BLOCK_PX - 512  # a region across four blocks, at base resolution
        region = slide.read_region(corner, corner, 1024, 1024, BASE_MPP)
        thumbnail = slide.read_thumbnail(16.0)
        detector = slide.read_region(5000, 7000, 6000, 6000, DETECTOR_MPP)
        classifier = slide.read_region(12_000, 15_000, 1000, 1000, CLASSIFIER_MPP)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < full_image_bytes / 50
    for (y, x), (y_base, x_base) in {
        (0, 0): (corner, corner),
        (0, 1023): (corner, corner + 1023),
        (1023, 0): (corner + 1023, corner),
        (1023, 1023): (corner + 1023, corner + 1023),
    }.items():
        assert np.abs(region[y, x].astype(int) - big_colour(x_base, y_base)).max() <= 4
    assert thumbnail.shape == (312, 312, 3)  # 64 base px per px
    for y, x in [(10, 10), (100, 200), (300, 150)]:
        assert np.abs(thumbnail[y, x].astype(int) - big_colour(x * 64 + 32, y * 64 + 32)).max() <= 4
    assert detector.shape == (204, 204, 3) and classifier.shape == (543, 543, 3)


def test_cell_centres_inside_a_polygon() -> None:
    """A grid of cells with their own spacing per axis: True exactly where a cell's centre is inside
    (known for a triangle), and the same as polygon_mask on a grid with equal spacing."""
    triangle = np.array([[0.0, 0.0], [400.0, 0.0], [0.0, 300.0]])
    rows, cols = 12, 20
    inside = cell_centres_inside(triangle, (10.0, 12.5), (20.0, 25.0), rows, cols)
    x = 10.0 + 20.0 * np.arange(cols)[None, :]
    y = 12.5 + 25.0 * np.arange(rows)[:, None]
    assert np.array_equal(inside, x / 400.0 + y / 300.0 < 1.0)
    # polygon_mask's pixel (r, c) is the cell centred at left + (c + 0.5) * mpp / base_mpp.
    mask = polygon_mask(triangle, -3.0, 7.0, 50, 40, 2.0, base_mpp=0.25)
    assert np.array_equal(cell_centres_inside(triangle, (-3.0 + 4.0, 7.0 + 4.0), (8.0, 8.0), 40, 50), mask)
    with pytest.raises(ValueError, match="spacing"):
        cell_centres_inside(triangle, (0.0, 0.0), (0.0, 1.0), 2, 2)


def test_polygon_area_in_base_pixels() -> None:
    square = np.array([[10.0, 10.0], [110.0, 10.0], [110.0, 60.0], [10.0, 60.0]])
    assert polygon_area_base_px2(square) == 5000.0
    assert polygon_area_base_px2(square[::-1]) == 5000.0  # either orientation
    assert polygon_area_base_px2(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])) == 0.0

