"""Patch-based augmentation: determinism, tiling invariance, agreement with a whole-image warp,
white skipping, stain deconvolution against histomicstk, and geometry conventions."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from source_helpers import stitch

from lnassist.escnn import augment
from lnassist.escnn.augment import (
    RUIFROK_HED_OD,
    AugmentConfig,
    AugmentedSource,
    AugmentError,
    AugmentParams,
    augment_stain,
    draw_params,
    forward_affine,
    identity_params,
    inverse_affine,
)
from lnassist.escnn.sources import ArraySource

WHITE = 255
UNIT_RUIFROK = RUIFROK_HED_OD / np.linalg.norm(RUIFROK_HED_OD, axis=1, keepdims=True)
# No stain change: geometry-only checks compare pixels, not colours.
GEOMETRY_ONLY = AugmentConfig(stain_angle_deg=0.0, concentration_range=(1.0, 1.0))


def tissue_image(height: int, width: int, seed: int, margin_px: int = 12) -> np.ndarray:
    """A smooth, asymmetric, coloured texture inside a white margin."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), WHITE, dtype=np.uint8)
    inner = (slice(margin_px, height - margin_px), slice(margin_px, width - margin_px))
    noise = rng.integers(30, 230, (height - 2 * margin_px, width - 2 * margin_px, 3), dtype=np.uint8)
    image[inner] = cv2.GaussianBlur(noise, (7, 7), 1.5)
    return image


def he_image(height: int, width: int, seed: int) -> np.ndarray:
    """Pixels composed from known, moderate H, E and DAB concentrations (no clipping, no zeros)."""
    rng = np.random.default_rng(seed)
    concentrations = rng.uniform(0.05, 0.8, (height, width, 3))
    od = concentrations @ UNIT_RUIFROK
    return np.rint(WHITE * np.exp(-od)).astype(np.uint8)


class CountingSource:
    """Wraps a source and records every window it is asked for."""

    def __init__(self, source) -> None:
        self.source = source
        self.height, self.width = source.height, source.width
        self.windows: list[tuple[int, int, int, int]] = []

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        self.windows.append((y0, x0, h, w))
        return self.source.read(y0, x0, h, w)


def whole_image_warp(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """The reference: one cv2.warpAffine of the full array, then the stain transform."""
    warped = cv2.warpAffine(
        image,
        inverse_affine(params),
        (params.out_width, params.out_height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(WHITE, WHITE, WHITE),
    )
    return augment_stain(warped, params)


def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


# --- parameters -------------------------------------------------------------------------------


def test_draw_params_is_deterministic_per_seed_and_varies_across_seeds():
    cfg = AugmentConfig()
    first = draw_params(cfg, np.random.default_rng(7), 300, 200)
    again = draw_params(cfg, np.random.default_rng(7), 300, 200)
    other = draw_params(cfg, np.random.default_rng(8), 300, 200)
    assert first == again
    assert first != other
    assert first.angle_deg != other.angle_deg and first.stain_vectors != other.stain_vectors


def test_draw_params_accepts_a_torch_generator():
    cfg = AugmentConfig()
    first = draw_params(cfg, torch.Generator().manual_seed(3), 64, 64)
    again = draw_params(cfg, torch.Generator().manual_seed(3), 64, 64)
    other = draw_params(cfg, torch.Generator().manual_seed(4), 64, 64)
    assert first == again and first != other
    with pytest.raises(AugmentError, match="Generator"):
        draw_params(cfg, 3, 64, 64)


def test_params_round_trip_through_json():
    params = draw_params(AugmentConfig(), np.random.default_rng(1), 50, 70)
    assert AugmentParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    broken = params.to_dict()
    del broken["scale"]
    with pytest.raises(AugmentError, match="scale"):
        AugmentParams.from_dict(broken)


def test_drawn_params_stay_in_the_configured_ranges():
    cfg = AugmentConfig()
    rng = np.random.default_rng(0)
    draws = [draw_params(cfg, rng, 100, 150) for _ in range(400)]
    angles = np.array([p.angle_deg for p in draws])
    scales = np.array([p.scale for p in draws])
    shifts = np.array([(p.shift_x_px, p.shift_y_px) for p in draws])
    flips = np.mean([p.flip for p in draws])
    concentrations = np.array([p.concentration_scales for p in draws])
    assert angles.min() >= -180 and angles.max() <= 180 and angles.min() < -150 and angles.max() > 150
    assert scales.min() >= 0.9 and scales.max() <= 1.1
    assert np.abs(shifts).max() <= 32 and np.abs(shifts).max() > 28
    assert 0.4 < flips < 0.6
    assert concentrations.min() >= 0.5 and concentrations.max() <= 1.5
    stain_angles = np.array(
        [[angle_deg(v, r) for v, r in zip(p.stain_vectors, UNIT_RUIFROK, strict=True)] for p in draws]
    )
    assert stain_angles.max() <= 10.0 + 1e-9
    assert stain_angles.max() > 9.0  # the perturbation really uses its range
    norms = np.linalg.norm(np.array([p.stain_vectors for p in draws]), axis=2)
    np.testing.assert_allclose(norms, 1.0, atol=1e-12)


def test_bad_config_and_mismatched_source_are_rejected():
    with pytest.raises(AugmentError, match="scale_range"):
        AugmentConfig(scale_range=(0.0, 1.0))
    with pytest.raises(AugmentError, match="flip_probability"):
        AugmentConfig(flip_probability=1.5)
    params = draw_params(AugmentConfig(), np.random.default_rng(0), 40, 40)
    with pytest.raises(AugmentError, match="40 x 40"):
        AugmentedSource(ArraySource(np.zeros((40, 41, 3), np.uint8)), params)


# --- stain ------------------------------------------------------------------------------------


def test_stain_identity_at_zero_angle_and_unit_scale():
    image = tissue_image(64, 64, seed=3, margin_px=4)
    image[0, 0] = (0, 0, 0)  # OD of intensity 0 is clamped, still recovered
    params = replace(
        draw_params(GEOMETRY_ONLY, np.random.default_rng(5), 64, 64),
        concentration_scales=(1.0, 1.0, 1.0),
    )
    assert np.abs(augment_stain(image, params).astype(int) - image).max() <= 1
    assert np.abs(augment_stain(image, identity_params(64, 64)).astype(int) - image).max() <= 1


def test_white_stays_white_under_random_stain_params():
    image = tissue_image(48, 48, seed=2)
    white = (image == WHITE).all(axis=2)
    for seed in range(10):
        params = draw_params(AugmentConfig(), np.random.default_rng(seed), 48, 48)
        out = augment_stain(image, params)
        assert (out[white] == WHITE).all()
        assert not (out[~white] == WHITE).all(axis=1).all()  # tissue stays tissue


def test_stain_augmentation_matches_histomicstk_deconvolution_and_convolution():
    cd = pytest.importorskip("histomicstk.preprocessing.color_deconvolution")
    image = he_image(40, 40, seed=0)
    params = draw_params(AugmentConfig(), np.random.default_rng(11), 40, 40)
    # The reference: deconvolve with the Ruifrok columns, scale each stain's darkness (SDA is
    # proportional to concentration), recompose with the perturbed vectors.
    unmixed = cd.color_deconvolution(image, RUIFROK_HED_OD.T, I_0=255)
    sda = WHITE * (1 - np.log(unmixed.StainsFloat) / np.log(WHITE))
    sda *= np.asarray(params.concentration_scales)
    stains = WHITE ** (1 - sda / WHITE)
    expected = cd.color_convolution(stains, np.asarray(params.stain_vectors).T, I_0=255)
    # histomicstk truncates to uint8 where we round: at most one level apart.
    assert np.abs(augment_stain(image, params).astype(int) - expected).max() <= 1


def test_stain_rotation_measured_on_single_stain_images_is_within_10_degrees():
    rng = np.random.default_rng(4)
    for seed in range(5):
        params = replace(
            draw_params(AugmentConfig(), np.random.default_rng(seed), 8, 8),
            concentration_scales=(1.0, 1.0, 1.0),
        )
        for stain in range(3):
            concentration = rng.uniform(0.3, 1.0, (32, 32, 1))
            image = np.rint(WHITE * np.exp(-concentration * UNIT_RUIFROK[stain])).astype(np.uint8)
            out = augment_stain(image, params)
            od_out = -np.log(np.maximum(out, 1) / WHITE).reshape(-1, 3).sum(axis=0)
            measured = angle_deg(od_out, UNIT_RUIFROK[stain])
            drawn = angle_deg(np.asarray(params.stain_vectors[stain]), UNIT_RUIFROK[stain])
            assert measured <= 10.0 + 0.5
            assert measured == pytest.approx(drawn, abs=0.5)


# --- geometry ---------------------------------------------------------------------------------


def test_windows_are_identical_across_repeated_reads_and_tilings():
    image = tissue_image(97, 131, seed=1)
    for seed in range(3):
        params = draw_params(AugmentConfig(), np.random.default_rng(seed), 97, 131)
        source = AugmentedSource(ArraySource(image), params)
        first = source.read(40, 50, 33, 45)
        assert first is not None
        assert np.array_equal(first, source.read(40, 50, 33, 45))
        by_37, by_64 = stitch(source, 37), stitch(source, 64)
        assert np.array_equal(by_37, by_64)
        whole = source.read(0, 0, source.height, source.width)
        assert np.array_equal(by_37, whole)


def test_patch_based_warp_matches_a_whole_image_warp():
    image = tissue_image(120, 160, seed=5)
    for seed in range(3):
        # Geometry alone: sub-pixel positions rounded to 1/256 px differ from cv2.warpAffine's by
        # less than a level on rare pixels.
        params = draw_params(GEOMETRY_ONLY, np.random.default_rng(seed), 120, 160)
        patched = stitch(AugmentedSource(ArraySource(image), params), 48)
        diff = np.abs(patched.astype(int) - whole_image_warp(image, params))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
        # With the stain transform too.
        params = draw_params(AugmentConfig(), np.random.default_rng(seed), 120, 160)
        patched = stitch(AugmentedSource(ArraySource(image), params), 48)
        expected = whole_image_warp(image, params)
        assert np.abs(patched.astype(int) - expected).max() <= 3
        assert structural_similarity(patched, expected, channel_axis=2, data_range=255) > 0.99


def test_white_windows_never_read_or_warp(monkeypatch):
    image = np.full((200, 200, 3), WHITE, dtype=np.uint8)
    image[90:110, 90:110] = (120, 60, 150)
    counting = CountingSource(ArraySource(image))
    params = draw_params(AugmentConfig(), np.random.default_rng(2), 200, 200)
    source = AugmentedSource(counting, params)
    remaps = []
    real_remap = cv2.remap
    monkeypatch.setattr(augment.cv2, "remap", lambda *a, **k: remaps.append(1) or real_remap(*a, **k))
    tile = 32
    non_white = 0
    for y0 in range(-64, source.height + 64, tile):
        for x0 in range(-64, source.width + 64, tile):
            before = len(counting.windows)
            window = source.read(y0, x0, tile, tile)
            sy0, sx0, sh, sw = source.source_window(y0, x0, tile, tile)
            inside = sy0 < 200 and sx0 < 200 and sy0 + sh > 0 and sx0 + sw > 0
            # A window whose source lies outside the image reads nothing at all.
            assert len(counting.windows) - before == (1 if inside else 0)
            if inside:
                assert counting.windows[-1] == (sy0, sx0, sh, sw)
                # Only the mapped window (bounding box of a rotated tile + margins) is read.
                assert sh * sw <= (tile * math.sqrt(2) / params.scale + 6) ** 2
            non_white += window is not None
    # Only windows whose source window met the coloured square were warped.
    assert 0 < non_white == len(remaps)
    assert len(remaps) < len(counting.windows)


def test_identity_params_reproduce_the_source():
    image = tissue_image(50, 70, seed=9)
    source = AugmentedSource(ArraySource(image), identity_params(50, 70))
    assert (source.height, source.width) == (50, 70)
    assert np.abs(stitch(source, 16).astype(int) - image).max() <= 1


def fixed_config(angle_deg: float, flip: bool) -> AugmentConfig:
    return AugmentConfig(
        rotation_deg=(angle_deg, angle_deg),
        translation_px=0.0,
        flip_probability=1.0 if flip else 0.0,
        scale_range=(1.0, 1.0),
        stain_angle_deg=0.0,
        concentration_range=(1.0, 1.0),
    )


@pytest.mark.parametrize(
    ("angle_deg", "flip", "expected"),
    [
        (90.0, False, lambda a: np.rot90(a, 1)),  # counter-clockwise as displayed
        (-90.0, False, lambda a: np.rot90(a, -1)),
        (180.0, False, lambda a: np.rot90(a, 2)),
        (0.0, True, np.fliplr),
        (90.0, True, lambda a: np.rot90(np.fliplr(a), 1)),  # flip first, then rotate
    ],
)
def test_right_angles_and_flips_land_where_expected(angle_deg, flip, expected):
    image = np.full((6, 8, 3), WHITE, dtype=np.uint8)
    image[0, 0] = (200, 0, 0)  # top-left: red-ish
    image[0, 1:4] = (0, 150, 0)  # along the top edge
    image[4, 7] = (0, 0, 100)  # near the bottom-right
    params = draw_params(fixed_config(angle_deg, flip), np.random.default_rng(0), 6, 8)
    source = AugmentedSource(ArraySource(image), params)
    out = stitch(source, 3)
    want = expected(image)
    assert out.shape == want.shape
    assert np.abs(out.astype(int) - want).max() <= 1


def test_translation_moves_content_right_and_up():
    image = tissue_image(40, 50, seed=4, margin_px=0)
    params = replace(identity_params(40, 50), shift_x_px=7.0, shift_y_px=-3.0)
    out = stitch(AugmentedSource(ArraySource(image), params), 16)
    assert np.abs(out[:37, 7:].astype(int) - image[3:, :43]).max() <= 1
    assert (out[:, :7] == WHITE).all() and (out[37:] == WHITE).all()


def test_blob_centroid_follows_the_forward_affine():
    image = np.full((90, 120, 3), WHITE, dtype=np.uint8)
    cv2.circle(image, (30, 25), 6, (40, 40, 40), -1)
    ys, xs = np.nonzero(image[..., 0] < 128)
    centroid = np.array([xs.mean(), ys.mean(), 1.0])
    for seed in range(4):
        params = draw_params(GEOMETRY_ONLY, np.random.default_rng(seed), 90, 120)
        out = stitch(AugmentedSource(ArraySource(image), params), 40)
        darkness = WHITE - out[..., 0].astype(float)
        oy, ox = np.indices(darkness.shape)
        measured = np.array([(ox * darkness).sum(), (oy * darkness).sum()]) / darkness.sum()
        np.testing.assert_allclose(measured, forward_affine(params) @ centroid, atol=0.3)


def test_augmented_canvas_is_enlarged_so_no_tissue_is_lost():
    image = tissue_image(60, 100, seed=6, margin_px=0)  # tissue reaches every corner
    mass = (WHITE - image.astype(float)).sum()
    for seed in range(6):
        params = draw_params(GEOMETRY_ONLY, np.random.default_rng(seed), 60, 100)
        theta = math.radians(params.angle_deg)
        bbox_w = params.scale * (abs(math.cos(theta)) * 100 + abs(math.sin(theta)) * 60)
        bbox_h = params.scale * (abs(math.sin(theta)) * 100 + abs(math.cos(theta)) * 60)
        assert params.out_width == math.ceil(bbox_w) + 64 and params.out_height == math.ceil(bbox_h) + 64
        out = stitch(AugmentedSource(ArraySource(image), params), 50)
        # Bilinear resampling preserves total darkness up to the area change of the scaling.
        assert (WHITE - out.astype(float)).sum() / (mass * params.scale**2) == pytest.approx(1.0, abs=0.02)
