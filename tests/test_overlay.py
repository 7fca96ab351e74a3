"""The heatmap overlay image: geometry (image pixel -> base pixel), colours, and the TIFF that
large_image serves, checked on hand-made CAM grids whose every value is known."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from lnassist import dsa
from lnassist.annotations import heatmap_document, validate_document
from lnassist.dsa import HEATMAP_RGB, THRESHOLD_RGB
from lnassist.overlay import TIFF_TILE_PX, heatmap_overlay, heatmap_tiff_bytes, paint_cams
from lnassist.results import CamGrid, LNResult, ModelRef, Provenance

THRESHOLD = 0.4
SPACING = 32.0


def ln(ln_id: int, values: np.ndarray, origin: tuple[float, float]) -> LNResult:
    """An LN whose CAM cell (0, 0) is centred at ``origin`` (base px), cells SPACING apart."""
    rows, cols = values.shape
    x0, y0 = origin
    contour = np.array([[x0, y0], [x0 + cols * SPACING, y0], [x0 + cols * SPACING, y0 + rows * SPACING]])
    cam = CamGrid(values.astype(np.float64), origin, SPACING, SPACING)
    score = float(np.nanmax(values))
    return LNResult(ln_id, contour, score, score >= THRESHOLD, 1.0, cam)


def to_base(transform: dict, col: float, row: float) -> np.ndarray:
    return np.asarray(transform["matrix"]) @ [col, row] + [transform["xoffset"], transform["yoffset"]]


def test_overlay_places_every_cam_cell_at_its_base_position_in_the_ramp_colours() -> None:
    a = np.array([[0.0, THRESHOLD, 1.0], [np.nan, 0.7, 0.2]])
    b = np.array([[0.9]])
    lns = [ln(1, a, (116.0, 216.0)), ln(2, b, (500.0, 408.0))]
    overlay = heatmap_overlay(lns, THRESHOLD)
    transform = overlay.transform()
    # From the slide's origin (no offset: every client reads that alike) to LN 2's far corner.
    assert transform == {"xoffset": 0, "yoffset": 0, "matrix": [[SPACING, 0.0], [0.0, SPACING]]}
    assert overlay.rgba.shape == (14, 17, 4)  # rows ceil(424 / 32), columns ceil(516 / 32)
    covered = np.zeros(overlay.rgba.shape[:2], bool)
    for cam_ln in lns:
        cam = cam_ln.cam
        for (r, c), value in np.ndenumerate(cam.values):
            centre = np.array(cam.origin_base_px) + [c * SPACING, r * SPACING]
            col, row = np.floor(centre / SPACING).astype(int)
            # The image pixel holding the cell's centre is within half a cell of it and shows it.
            assert to_base(transform, col + 0.5, row + 0.5) == pytest.approx(centre, abs=SPACING / 2)
            covered[row, col] = True
            pixel = overlay.rgba[row, col]
            if np.isnan(value) or value == 0:
                # Transparent outside the LN and at score 0, and white where alpha is ignored.
                assert tuple(pixel) == (*dsa.CLEAR_RGB, 0)
            elif value == THRESHOLD:
                assert tuple(pixel) == (*THRESHOLD_RGB, 128)
            elif value == 1.0:
                assert tuple(pixel) == (*HEATMAP_RGB, 230)
            else:  # linear between the stops around the value
                stops = dsa.heatmap_stops(THRESHOLD)
                alpha = np.interp(value, [s for s, _, _ in stops], [a for _, _, a in stops])
                assert pixel[3] == pytest.approx(255 * alpha, abs=1)
                if value < THRESHOLD / 2:
                    assert pixel[3] == 0  # little evidence: transparent
    # Pixels that overlap no LN's cells show nothing.
    overlapping = np.zeros_like(covered)
    for cam_ln in lns:
        cam = cam_ln.cam
        x0, y0 = np.array(cam.origin_base_px) - SPACING / 2
        x1, y1 = x0 + cam.values.shape[1] * SPACING, y0 + cam.values.shape[0] * SPACING
        cols = np.arange(overlay.rgba.shape[1])
        rows = np.arange(overlay.rgba.shape[0])
        overlapping[
            np.ix_(
                (rows * SPACING < y1) & ((rows + 1) * SPACING > y0),
                (cols * SPACING < x1) & ((cols + 1) * SPACING > x0),
            )
        ] = True
    assert covered[overlapping].sum() == covered.sum()
    assert not overlay.rgba[~overlapping][:, 3].any()


def test_paint_cams_takes_the_maximum_where_lns_overlap() -> None:
    first = ln(1, np.full((2, 2), 0.3), (16.0, 16.0))
    second = ln(2, np.full((2, 2), 0.8), (48.0, 16.0))  # one cell column shared with the first
    heat = paint_cams([first, second], 3, 2, (SPACING, SPACING))
    np.testing.assert_allclose(heat, [[0.3, 0.8, 0.8], [0.3, 0.8, 0.8]], rtol=1e-6)


def test_overlay_without_cams_is_one_transparent_pixel() -> None:
    no_cam = LNResult(1, np.array([[0, 0], [10, 0], [10, 10]]), 0.5, True, 1.0, None)
    overlay = heatmap_overlay([no_cam], THRESHOLD)
    assert overlay.rgba.shape == (1, 1, 4) and overlay.rgba[..., 3].max() == 0


def test_tiff_is_lossless_rgba_with_a_pyramid_that_large_image_reads(tmp_path) -> None:
    rng = np.random.default_rng(7)
    values = rng.random((300, 600))
    values[:5] = np.nan
    overlay = heatmap_overlay([ln(1, values, (16.0, 16.0))], THRESHOLD)
    path = tmp_path / "heatmap.tiff"
    path.write_bytes(heatmap_tiff_bytes(overlay))
    with tifffile.TiffFile(path) as tiff:
        shapes = [page.shape for page in tiff.pages]
        assert [page.is_tiled for page in tiff.pages] == [True] * len(shapes)
        assert np.array_equal(tiff.pages[0].asarray(), overlay.rgba)
        # Max-pooled halving, so a hot cell stays visible zoomed out.
        assert tiff.pages[1].asarray()[0, 0, 3] == overlay.rgba[:2, :2, 3].max()
    assert shapes == [(300, 600, 4), (150, 300, 4), (75, 150, 4)]
    assert max(shapes[-1][:2]) <= TIFF_TILE_PX

    import large_image

    source = large_image.open(str(path))
    assert (source.sizeX, source.sizeY) == (600, 300) and source.levels == 3
    region, _ = source.getRegion(
        region={"left": 100, "top": 50, "width": 40, "height": 30},
        format=large_image.constants.TILE_FORMAT_NUMPY,
    )
    assert np.array_equal(region[..., :4], overlay.rgba[50:80, 100:140])


def test_heatmap_document_places_the_image_with_the_overlay_transform() -> None:
    overlay_ln = ln(1, np.array([[0.2, 0.9]]), (116.0, 216.0))
    overlay = heatmap_overlay([overlay_ln], THRESHOLD)
    models = (ModelRef("cls", "classifier", "1", "c" * 64),)
    doc = heatmap_document(
        [overlay_ln],
        Provenance(models, "LNAnalysis", "0", mode="general", threshold=THRESHOLD),
        image_girder_id="outputHeatmapImage",
        image_transform=overlay.transform(),
    )
    validate_document(doc, cli_outputs={"outputHeatmapImage"})
    (image,) = [e for e in doc["elements"] if e["type"] == "image"]
    assert image["hasAlpha"] and image["transform"] == overlay.transform()
