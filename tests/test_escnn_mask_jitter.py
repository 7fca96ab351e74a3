"""Mask jitter: erosion/dilation by known areas, feathering, seeded draws, tiling invariance of a
jittered slide region (alone and under the geometric augmentation), and off at evaluation."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from source_helpers import stitch
from test_escnn_sources import DIAMOND_BASE_PX, FakeSlide, textured_base

from lnassist.escnn.augment import AugmentConfig, AugmentedSource, draw_params
from lnassist.escnn.mask_jitter import (
    MaskJitter,
    MaskJitterConfig,
    MaskJitterError,
    blend_to_white,
    draw_mask_jitter,
    tissue_weight,
)
from lnassist.escnn.sources import SlideRegionSource

SIDE_PX, PAD_PX = 30, 20


def square() -> np.ndarray:
    inside = np.zeros((SIDE_PX + 2 * PAD_PX,) * 2, dtype=bool)
    inside[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX] = True
    return inside


@pytest.mark.parametrize("k", [1, 2, 4])
def test_erosion_shrinks_a_square_by_k_per_side(k):
    weight = tissue_weight(square(), MaskJitter(offset_px=-k, feather_px=0.0))
    assert set(np.unique(weight)) <= {0.0, 1.0}
    assert weight.sum() == (SIDE_PX - 2 * k) ** 2
    assert weight[PAD_PX + k, PAD_PX + k] == 1 and weight[PAD_PX + k - 1, PAD_PX + SIDE_PX // 2] == 0


@pytest.mark.parametrize("k", [1, 2, 4])
def test_dilation_grows_a_square_by_the_pixels_within_k(k):
    weight = tissue_weight(square(), MaskJitter(offset_px=k, feather_px=0.0))
    # Added: four k-wide strips along the sides, and per corner the pixels (i, j >= 1) whose centre is
    # nearer than k + 1/2 to the corner pixel's (Euclidean: rounded corners).
    corner = sum(1 for i in range(1, k + 1) for j in range(1, k + 1) if i * i + j * j < (k + 0.5) ** 2)
    assert weight.sum() == SIDE_PX**2 + 4 * SIDE_PX * k + 4 * corner
    assert corner < k * k or k == 1  # rounded corners (at k = 1 the diagonal pixel is within 1.5)


def test_zero_jitter_is_the_plain_mask_and_feathering_is_a_linear_ramp():
    inside = square()
    assert np.array_equal(tissue_weight(inside, MaskJitter(0.0, 0.0)), inside.astype(np.float32))
    half_plane = np.zeros((9, 40), dtype=bool)
    half_plane[:, :20] = True  # edge between columns 19 and 20
    weight = tissue_weight(half_plane, MaskJitter(offset_px=1.0, feather_px=4.0))[4]
    # Signed distance of column c to the edge is 19.5 - c; moved by +1, ramp (s + 1) / 4 + 1/2.
    expected = np.clip((19.5 - np.arange(40) + 1.0) / 4.0 + 0.5, 0.0, 1.0)
    assert np.allclose(weight, expected, atol=1e-6)
    pixels = np.full((1, 3, 3), 100, np.uint8)
    blended = blend_to_white(pixels, np.array([[1.0, 0.5, 0.0]], np.float32))
    assert blended[0, :, 0].tolist() == [100, 178, 255]


def test_draws_are_seeded_and_within_range():
    cfg = MaskJitterConfig(offset_px=(-3.0, 5.0), feather_px=(1.0, 2.0))
    draws = [draw_mask_jitter(cfg, np.random.default_rng(seed)) for seed in range(50)]
    assert draws[7] == draw_mask_jitter(cfg, np.random.default_rng(7))
    assert len({d.offset_px for d in draws}) == 50
    assert all(-3 <= d.offset_px <= 5 and 1 <= d.feather_px <= 2 for d in draws)
    assert min(d.offset_px for d in draws) < 0 < max(d.offset_px for d in draws)
    with pytest.raises(MaskJitterError):
        MaskJitterConfig(feather_px=(-1.0, 2.0))
    with pytest.raises(MaskJitterError):
        MaskJitterConfig(offset_px=(2.0, 1.0))


def region(slide, jitter=None, chunk_px=16, cache_chunks=128):
    return SlideRegionSource(
        slide, DIAMOND_BASE_PX, mpp=0.5, chunk_px=chunk_px, cache_chunks=cache_chunks, mask_jitter=jitter
    )


@pytest.mark.parametrize("jitter", [MaskJitter(3.4, 2.5), MaskJitter(-2.6, 3.0), MaskJitter(1.0, 0.0)])
def test_jittered_region_is_tiling_invariant_alone_and_augmented(jitter):
    slide = FakeSlide(textured_base(300, 300, 7), base_mpp=0.25)
    source = region(slide, jitter)
    other = region(slide, jitter, cache_chunks=1)
    whole = stitch(source, 500)
    assert np.array_equal(whole, stitch(other, 13)) and np.array_equal(whole, stitch(source, 37))
    # Chunk by chunk equals the whole canvas jittered at once (one chunk holds it all): the margin
    # around each chunk is wide enough for every distance the weight depends on.
    assert np.array_equal(whole, stitch(region(slide, jitter, chunk_px=512), 500))
    params = draw_params(AugmentConfig(), np.random.default_rng(1), source.height, source.width)
    assert np.array_equal(
        stitch(AugmentedSource(source, params), 30), stitch(AugmentedSource(other, params), 47)
    )


def test_jitter_moves_the_edge_in_the_slide_region_and_keeps_inner_pixels():
    slide = FakeSlide(textured_base(300, 300, 8), base_mpp=0.25)
    plain = region(slide)
    grown, shrunk = region(slide, MaskJitter(3.0, 0.0)), region(slide, MaskJitter(-3.0, 0.0))
    border = MaskJitter(3.0, 0.0).reach_px
    # The canvas grows by the reach on each side (2 base px per canvas px here).
    assert (grown.height, grown.width) == (plain.height + 2 * border, plain.width + 2 * border)
    assert grown.origin_base_px == (
        plain.origin_base_px[0] - 2 * border,
        plain.origin_base_px[1] - 2 * border,
    )
    tissue = {
        name: (stitch(s, 40) != 255).any(axis=2).sum()
        for name, s in (("plain", plain), ("grown", grown), ("shrunk", shrunk))
    }
    # A diamond of side ~78 canvas px: +-3 px of edge change its area by about 4 * 78 * 3 px.
    assert 0.8 * 4 * 78 * 3 < tissue["grown"] - tissue["plain"] < 1.2 * 4 * 78 * 3
    assert 0.8 * 4 * 78 * 3 < tissue["plain"] - tissue["shrunk"] < 1.2 * 4 * 78 * 3
    inner = stitch(plain, 40)[20:-20, 20:-20]
    same = stitch(grown, 40)[20 + border : -20 - border, 20 + border : -20 - border]
    keep = (inner != 255).any(axis=2)
    assert np.array_equal(same[keep], inner[keep])  # dilation only adds tissue, never changes it


def test_training_jitters_and_evaluation_does_not(monkeypatch):
    import torch

    from lnassist.training import loop
    from lnassist.training.config import CPU, PAPER

    assert PAPER.mask_jitter is None and CPU.mask_jitter is None  # opt-in: the shipped recipes reproduce
    seen = []
    monkeypatch.setattr(loop, "open_image", lambda image, mpp, jitter=None: seen.append(jitter) or "source")
    ctx = loop.Context(replace(CPU, augment=None, mask_jitter=MaskJitterConfig()), None, None, None, None)
    assert loop._augmented(ctx, "image", seed=5) == "source"
    assert loop._augmented(ctx, "image", seed=5) == "source"
    assert isinstance(seen[0], MaskJitter) and seen[0] == seen[1]
    loop._augmented(replace(ctx, cfg=replace(CPU, augment=None, mask_jitter=None)), "image", seed=5)
    assert seen[2] is None
    # Validation reads every LN unjittered, whatever the config.
    monkeypatch.setattr(loop, "score_source", lambda *a: SimpleNamespace(logits=(0.0, 1.0), score=0.7))
    model = SimpleNamespace(model=torch.nn.Linear(1, 2))
    images = [SimpleNamespace(key=k, label=k) for k in (0, 1)]
    loop.validate(replace(ctx, classifier=model), images, loop.Dist())
    assert seen[3:] == [None, None]


def test_jitter_and_antialias_settings_round_trip_through_yaml(tmp_path):
    from lnassist.training.config import CPU, dump_config, load_config

    custom = MaskJitterConfig(offset_px=(-2.0, 1.0), feather_px=(0.5, 1.5))
    for cfg in (replace(CPU, mask_jitter=custom, antialias=True), replace(CPU, mask_jitter=None)):
        path = tmp_path / "c.yaml"
        path.write_text(dump_config(cfg))
        assert load_config(path) == cfg
        assert load_config(path).spec().antialias == cfg.antialias
    # ``mask_jitter: {}`` turns it on with the defaults.
    path.write_text("backbone: tiny\nmask_jitter: {}\n")
    assert load_config(path).mask_jitter == MaskJitterConfig()
