"""Synthetic slides at other resolutions than 20x: the same section, sampled at the slide's pixel size.

Truth: a layout at mpp m is the layout built at ``SCENE_MPP`` on the same physical canvas, with every
coordinate scaled by SCENE_MPP / m; its pixels sample that scene's rendering at their centres.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from lnassist.synth import SynthError
from lnassist.synth import layout as L
from lnassist.synth.generate import ground_truth
from lnassist.synth.render import render_concentrations, render_region
from tests.source_helpers import render_in_pieces

CFG = L.LayoutConfig(8000, 5000, seed=5, mpp=0.25, categories=("itc",), tumour_type="intestinal")


@pytest.fixture(scope="module")
def slide40() -> L.SlideLayout:
    return L.build_layout(CFG)


def test_a_40x_layout_is_the_20x_scene_of_the_same_canvas_scaled(slide40: L.SlideLayout) -> None:
    f = L.SCENE_MPP / CFG.mpp
    scene = L.build_layout(replace(CFG, mpp=L.SCENE_MPP, width_px=4348, height_px=2718))
    assert slide40.scene is not None and ground_truth(slide40.scene) == ground_truth(scene)
    assert (slide40.width_px, slide40.height_px, slide40.mpp) == (8000, 5000, 0.25)
    assert [n.category for n in slide40.nodes] == [n.category for n in scene.nodes] == ["itc"]
    for big, small in zip(slide40.nodes, scene.nodes, strict=True):
        np.testing.assert_allclose(big.contour, small.contour * f)
        for d40, d20 in zip(big.deposits, small.deposits, strict=True):
            np.testing.assert_allclose(d40.cells, d20.cells * f)
            # The deposit has the same size in micrometres, so the same category.
            assert d40.extent_px * CFG.mpp == pytest.approx(d20.extent_px * L.SCENE_MPP)
    np.testing.assert_allclose(slide40.cells.xy, scene.cells.xy * f)
    gt = ground_truth(slide40)
    assert gt["mpp"] == 0.25 and gt["magnification"] == pytest.approx(20 * 0.46 / 0.25)
    assert gt["nodes"][0]["category"] == "itc" and gt["slide_category"] == "itc"
    # A 20x layout is its own scene.
    assert L.build_layout(replace(CFG, mpp=L.SCENE_MPP)).scene is None


def test_a_40x_window_is_the_scene_seen_at_40x(slide40: L.SlideLayout) -> None:
    """Downsampled to the scene's pixels, a 40x window is the scene's own rendering of that place; a
    window read half a scene pixel off is not (so the comparison sees misregistration)."""
    cells = slide40.nodes[0].deposits[0].cells
    cx, cy = np.round(cells[0] * 0.25 / L.SCENE_MPP).astype(int)  # a tumour cell, in scene px
    n = 230  # scene px; 40x px = n * 0.46 / 0.25 = 423.2
    x0, y0 = (cx - n // 2), (cy - n // 2)
    scene_rgb = render_region(slide40.scene, x0, y0, n, n).astype(np.float32)
    b0 = np.array([x0, y0]) * L.SCENE_MPP / 0.25
    bx0, by0 = int(np.floor(b0[0])), int(np.floor(b0[1]))
    big = render_region(slide40, bx0, by0, 440, 440).astype(np.float32)
    # Each scene pixel is 1.84 x 1.84 base px: map scene pixel centres to 40x coordinates.
    s = L.SCENE_MPP / 0.25
    grid = (np.arange(n) + 0.5) * s - 0.5
    map_x = (grid + x0 * s - bx0).astype(np.float32)[None, :].repeat(n, 0)
    map_y = (grid + y0 * s - by0).astype(np.float32)[:, None].repeat(n, 1)
    back = cv2.remap(big, map_x, map_y, cv2.INTER_LINEAR)
    shifted = cv2.remap(big, map_x + s / 2, map_y + s / 2, cv2.INTER_LINEAR)
    err, err_shifted = np.abs(back - scene_rgb).mean(), np.abs(shifted - scene_rgb).mean()
    assert err < 4.0 and err_shifted > 2 * err, (err, err_shifted)


@pytest.mark.parametrize("mpp", [0.25, 0.92])
def test_windows_at_other_resolutions_are_seamless_and_deterministic(mpp: float) -> None:
    lay = L.build_layout(replace(CFG, mpp=mpp, width_px=4000, height_px=4000))
    c = np.round(lay.nodes[0].contour.mean(0)).astype(int)
    whole, stitched = render_in_pieces(lay, int(c[0]) - 350, int(c[1]) - 295)
    assert np.array_equal(whole, stitched)
    assert (whole < 200).any() and np.array_equal(
        whole,
        render_region(
            L.build_layout(replace(CFG, mpp=mpp, width_px=4000, height_px=4000)),
            int(c[0]) - 350,
            int(c[1]) - 295,
            700,
            590,
        ),
    )


def test_a_coarser_slide_is_smoothed_not_aliased() -> None:
    """At 1.38 um/px (3 scene px per pixel, whose centres fall on scene pixel centres) a pixel holds
    a weighted average of its scene pixels, so the image carries less fine contrast than the scene
    pixels at those centres picked alone would."""
    lay = L.build_layout(replace(CFG, mpp=1.38, width_px=2000, height_px=2000))
    c = np.round(lay.nodes[0].contour.mean(0)).astype(int)
    small = render_region(lay, int(c[0]) - 100, int(c[1]) - 100, 200, 200).astype(np.float32)
    scene = render_region(lay.scene, 3 * (int(c[0]) - 100), 3 * (int(c[1]) - 100), 600, 600)
    scene = scene.astype(np.float32)
    picked = scene[1::3, 1::3]
    lap = lambda a: np.abs(cv2.Laplacian(a.mean(2), cv2.CV_32F)).mean()
    assert lap(small) < 0.8 * lap(picked)
    assert abs(small.mean() - scene.mean()) < 3.0


def test_stain_maps_of_a_scaled_layout_are_asked_of_its_scene(slide40: L.SlideLayout) -> None:
    with pytest.raises(SynthError, match="scene"):
        render_concentrations(slide40, 0, 0, 100, 100)
    c = np.round(slide40.scene.nodes[0].contour.mean(0)).astype(int)
    assert render_concentrations(slide40.scene, int(c[0]), int(c[1]), 50, 50) is not None
