"""Post-processing of detector masks (dilation, small components, contours, the neck split, base-px
scaling) and the detector grid, on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from lnassist.detector import DetectorError
from lnassist.detector.grid import Grid
from lnassist.detector.postprocess import (
    MIN_COMPONENT_PX,
    NECK_RATIO,
    clean_mask,
    dilate_diamond,
    mask_to_contours,
    node_contours,
    outer_contours,
    outlined_mask,
    remove_small_components,
    split_at_necks,
)


def _blank(height: int = 200, width: int = 200) -> np.ndarray:
    return np.zeros((height, width), dtype=bool)


def _as_set(points: np.ndarray) -> set[tuple[float, float]]:
    return {(float(x), float(y)) for x, y in np.asarray(points)}


def test_paper_constants():
    assert MIN_COMPONENT_PX == 4096


def test_dilation_adds_exactly_the_four_neighbours_of_a_pixel():
    mask = _blank(11, 11)
    mask[5, 5] = True
    expected = _blank(11, 11)
    for y, x in ((5, 5), (4, 5), (6, 5), (5, 4), (5, 6)):
        expected[y, x] = True
    np.testing.assert_array_equal(dilate_diamond(mask), expected)


def test_dilation_at_the_image_corner_adds_nothing_outside():
    mask = _blank(4, 4)
    mask[0, 0] = True
    assert set(zip(*np.nonzero(dilate_diamond(mask)), strict=True)) == {(0, 0), (0, 1), (1, 0)}


def test_dilation_equals_the_or_of_the_four_shifts():
    mask = np.random.default_rng(3).random((37, 41)) > 0.9
    padded = np.pad(mask, 1)
    expected = (
        padded[1:-1, 1:-1] | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    )
    np.testing.assert_array_equal(dilate_diamond(mask), expected)


def test_components_of_4095_pixels_go_and_4096_stay():
    mask = _blank()
    mask[0:64, 0:64] = True  # 4096
    mask[100:163, 100:165] = True  # 63 x 65 = 4095
    kept = remove_small_components(mask)
    assert kept[0:64, 0:64].all()
    assert not kept[100:163, 100:165].any()
    assert kept.sum() == 4096


def test_size_is_counted_after_dilation():
    # A 48 x 80 rectangle dilated by the diamond covers 48 * 80 + 2 * 48 + 2 * 80 = 4096 pixels.
    mask = _blank()
    mask[50:98, 50:130] = True
    assert mask.sum() < MIN_COMPONENT_PX
    assert clean_mask(mask).sum() == 4096
    mask[50, 50:130] = False  # one row fewer: 47 x 80 -> 4014 pixels after dilation
    assert not clean_mask(mask).any()


def test_diagonal_pixels_are_one_component():
    mask = _blank()
    mask[10:60, 10:60] = True  # 2500
    mask[60:100, 60:100] = True  # 1600, touching only at a corner
    assert remove_small_components(mask).sum() == 4100


def test_touching_blobs_are_one_contour():
    mask = _blank()
    mask[20:90, 20:90] = True
    mask[20:90, 90:160] = True  # shares an edge with the first
    assert len(outer_contours(clean_mask(mask))) == 1


def test_a_two_pixel_gap_closes_and_a_three_pixel_gap_stays():
    for gap, expected in ((2, 1), (3, 2)):
        mask = _blank()
        mask[20:90, 20:90] = True
        mask[20:90, 90 + gap : 160 + gap] = True
        assert len(outer_contours(clean_mask(mask))) == expected, gap


def test_a_blob_with_a_hole_has_one_external_contour():
    mask = _blank()
    mask[40:140, 40:140] = True
    mask[80:110, 80:110] = False
    contours = outer_contours(clean_mask(mask))
    assert len(contours) == 1
    # The dilated square: a 102 x 102 square less its four corner pixels.
    assert _as_set(contours[0]) == {
        (40, 39),
        (39, 40),
        (39, 139),
        (40, 140),
        (139, 140),
        (140, 139),
        (140, 40),
        (139, 39),
    }
    cleaned = clean_mask(mask)
    assert not cleaned[81:109, 81:109].any()  # the hole shrinks by the dilation but stays
    # What the contour encloses: the dilated square, hole filled, and nothing outside it.
    outlined = outlined_mask(cleaned)
    assert outlined[81:109, 81:109].all() and outlined.sum() == 102 * 102 - 4
    assert (outlined & ~cleaned).sum() == 28 * 28
    # A bay open to the outside is no hole.
    solid = _blank()
    solid[40:140, 40:140] = True
    bay = clean_mask(solid | _bay())
    assert not bay[0:38, 93:98].any() and (outlined_mask(bay) == bay).all()


def _bay() -> np.ndarray:
    """A U shape opening upwards at x 90-100 (a notch from the border into the tissue)."""
    u = _blank()
    u[0:60, 80:90] = True
    u[0:60, 101:111] = True
    return u


def test_known_square_maps_to_base_pixels():
    mask = _blank(150, 200)
    mask[10:80, 20:90] = True  # 70 x 70
    grid = Grid(200, 150, (16.0, 8.0))
    contours, cleaned = mask_to_contours(mask, grid)
    assert len(contours) == 1
    octagon_px = [(20, 9), (19, 10), (19, 79), (20, 80), (89, 80), (90, 79), (90, 10), (89, 9)]
    expected = {((x + 0.5) * 16.0, (y + 0.5) * 8.0) for x, y in octagon_px}
    assert _as_set(contours[0]) == expected
    assert contours[0].dtype == np.float64
    assert cleaned.sum() == 70 * 70 + 4 * 70


def test_small_noise_is_dropped_and_large_nodes_kept():
    mask = _blank(300, 300)
    mask[10:110, 10:110] = True
    mask[200:205, 200:205] = True  # 25 px of noise
    mask[150:290, 150:180] = True  # 140 x 30 = 4200
    contours, _ = mask_to_contours(mask, Grid(300, 300, (1.0, 1.0)))
    assert len(contours) == 2


def test_empty_mask_gives_no_contours():
    contours, cleaned = mask_to_contours(_blank(50, 60), Grid(60, 50, (16.0, 16.0)))
    assert contours == [] and not cleaned.any()


def test_bad_inputs_raise():
    with pytest.raises(DetectorError, match="does not match"):
        mask_to_contours(_blank(50, 60), Grid(50, 60, (1.0, 1.0)))
    with pytest.raises(DetectorError, match="2-D"):
        dilate_diamond(np.zeros((2, 3, 4)))
    with pytest.raises(DetectorError, match=">= 1"):
        remove_small_components(_blank(), min_px=0)


def test_grid_rasterise_uses_pixel_centres():
    grid = Grid(10, 10, (16.0, 16.0))
    rectangle = np.array([[30, 50], [100, 50], [100, 110], [30, 110]], dtype=float)
    expected = np.zeros((10, 10), dtype=bool)
    # Centres (j + 0.5) * 16 inside x in (30, 100): j = 2..5; inside y in (50, 110): i = 3..6.
    expected[3:7, 2:6] = True
    np.testing.assert_array_equal(grid.rasterise([rectangle]), expected)
    np.testing.assert_array_equal(grid.to_base_px(np.array([[0, 0], [2, 3]])), [[8, 8], [40, 56]])


def test_contours_rasterise_back_to_the_mask_up_to_boundary_pixels():
    """Contour vertices are boundary-pixel centres, so rasterising the base-px contours on the same grid
    gives the cleaned mask except possibly at boundary pixels (centres exactly on an edge)."""
    import cv2

    grid = Grid(120, 100, (16.0, 16.0))
    mask = _blank(100, 120)
    mask[20:90, 10:100] = True
    mask[20:50, 30:60] = False  # a notch: a concave outline
    contours, cleaned = mask_to_contours(mask, grid)
    assert len(contours) == 1
    recovered = grid.rasterise(contours)
    interior = cv2.erode(cleaned.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    boundary = cleaned & ~interior
    assert recovered[interior].all()
    assert not recovered[~cleaned].any()
    assert recovered[boundary].any() and not recovered[boundary].all()  # the half-open edge rule


def _discs(*discs: tuple[int, int, int], height: int = 200, width: int = 320) -> np.ndarray:
    """Union of (x, y, radius) discs."""
    yy, xx = np.mgrid[:height, :width]
    mask = _blank(height, width)
    for x, y, r in discs:
        mask |= (xx - x) ** 2 + (yy - y) ** 2 <= r * r
    return mask


def _inside(contour: np.ndarray, x: float, y: float) -> bool:
    import cv2

    return cv2.pointPolygonTest(contour.astype(np.float32).reshape(-1, 1, 2), (x, y), False) >= 0


@pytest.mark.parametrize("gap_px", [-6, -2, 0])
def test_two_nodes_pressed_together_come_back_as_two(gap_px: int):
    """Two 50 px nodes overlapping by up to 6 px (a waist of at most 2 * sqrt(6 * 50) = 35 px, depth
    17 px against 50): the paper's steps give one outline, the neck split two, each around one node."""
    mask = _discs((100, 100, 50), (200 + gap_px, 100, 50))
    cleaned = clean_mask(mask)
    assert len(outer_contours(cleaned)) == 1
    contours = node_contours(cleaned)
    assert len(contours) == 2
    assert sorted(_inside(c, 100, 100) for c in contours) == [False, True]
    assert sorted(_inside(c, 200 + gap_px, 100) for c in contours) == [False, True]
    # Together the parts cover the outline less the watershed's border.
    parts = split_at_necks(outlined_mask(cleaned))
    assert set(np.unique(parts)) == {0, 1, 2}
    assert (parts > 0).sum() == outlined_mask(cleaned).sum()


def test_one_lobulated_node_and_a_node_with_a_hole_stay_one():
    # Two lobes whose centres are 40 px apart on 50 px radii: a waist of 2 * 30 px, depth 30 of 50.
    lobes = clean_mask(_discs((120, 100, 50), (160, 100, 50)))
    (only,) = node_contours(lobes)
    assert _as_set(only) == _as_set(outer_contours(lobes)[0])  # exactly the paper's contour
    # A deposit the network left out of a node's middle makes no waist: the outline is filled first.
    holed = _discs((150, 100, 60)) & ~_discs((150, 100, 25))
    assert len(node_contours(clean_mask(holed))) == 1
    # A part under the minimum component size is never split off.
    bump = clean_mask(_discs((120, 100, 60), (200, 100, 22)))  # 1,520 px, through a 2 px overlap
    assert len(node_contours(bump)) == 1
    assert len(node_contours(bump, min_px=100)) == 2


def test_the_neck_ratio_decides():
    mask = clean_mask(_discs((100, 100, 50), (180, 100, 50)))  # waist half-width 30: 0.6 of the depth
    assert len(node_contours(mask, neck_ratio=0.5)) == 1
    assert len(node_contours(mask, neck_ratio=NECK_RATIO)) == 2
    contours, _ = mask_to_contours(mask, Grid(320, 200, (2.0, 2.0)))
    assert len(contours) == 2
