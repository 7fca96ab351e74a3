"""Exactness of the streaming engine against whole-image computation (float64, small nets and images)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from lnassist.escnn.backbones import FrozenBatchNorm2d, blur_before_subsampling
from lnassist.escnn.model import ESCNNModel, build_model, global_max_pool, window_to_input
from lnassist.escnn.receptive import TrunkGeometry
from lnassist.escnn.sources import ArraySource
from lnassist.escnn.streaming import (
    StreamingConfig,
    StreamingError,
    plan_tiles,
    stream_backward,
    stream_cam,
    stream_features,
    stream_forward,
    stream_train_step,
)

CE = nn.CrossEntropyLoss()
SERIAL = StreamingConfig(prefetch_workers=0)


def randomize(model: nn.Module, gen: torch.Generator) -> None:
    """Seeded weights (He-scaled convolutions) and non-trivial frozen BN statistics, so errors would show."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            fan_in = m.weight[0].numel()
            m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
            if m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
        elif isinstance(m, FrozenBatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


def mini_resnet(block: str) -> nn.Sequential:
    """A narrow stride-8 ResNet trunk from torchvision's residual blocks (strided shortcut included)."""

    def shortcut(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), FrozenBatchNorm2d(c_out))

    stem = [
        nn.Conv2d(3, 8, 7, stride=2, padding=3, bias=False),
        FrozenBatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    ]
    if block == "basic":
        blocks = [
            BasicBlock(8, 8, norm_layer=FrozenBatchNorm2d),
            BasicBlock(8, 12, stride=2, downsample=shortcut(8, 12), norm_layer=FrozenBatchNorm2d),
        ]
    else:
        blocks = [Bottleneck(8, 3, stride=2, downsample=shortcut(8, 12), norm_layer=FrozenBatchNorm2d)]
    return nn.Sequential(*stem, *blocks)


def make_model(kind: str, seed: int = 0, num_classes: int = 2) -> ESCNNModel:
    """``kind``: "tiny", "narrow", "basic" or "bottleneck"; with "_aa", anti-aliased (blur before
    subsampling)."""
    name, _, aa = kind.partition("_")
    if name in ("tiny", "narrow"):
        model = build_model(name, num_classes, antialias=bool(aa))
    else:
        trunk = mini_resnet(name)
        model = ESCNNModel(blur_before_subsampling(trunk) if aa else trunk, 12, num_classes)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        randomize(model, gen)
    return model.double()


def texture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def with_white(image: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    out = image.copy()
    for y0, x0, y1, x1 in boxes:
        out[y0:y1, x0:x1] = 255
    return out


def reference_step(model: ESCNNModel, image: np.ndarray, target: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = CE(model(window_to_input(image, dtype=torch.float64)), target)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def streamed_step(model: ESCNNModel, image: np.ndarray, target: torch.Tensor, cfg: StreamingConfig):
    model.zero_grad(set_to_none=True)
    loss, stats = stream_train_step(model, ArraySource(image), target, CE, cfg)
    grads = {
        n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
    }
    return loss, stats, grads


def max_rel_err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    errs = []
    for name, ref in b.items():
        scale = max(float(ref.norm()), 1e-30)
        errs.append(float((a[name] - ref).norm()) / scale if float(ref.norm()) > 0 else float(a[name].norm()))
    return max(errs)


# Tile sizes that give several tiles on both axes with a truncated last tile for these images.
CASES = [
    ("tiny", (213, 181), 96),
    ("basic", (261, 229), 96),
    ("bottleneck", (245, 270), 112),
    ("tiny_aa", (261, 229), 128),
    ("basic_aa", (301, 283), 128),
    ("narrow", (389, 371), 224),
]


@pytest.mark.parametrize(("kind", "shape", "tile_px"), CASES)
def test_stitched_features_equal_whole_image(kind, shape, tile_px):
    model = make_model(kind)
    image = texture(*shape, seed=1)
    plan = plan_tiles(model.geometry, *shape, tile_px)
    rows = {t.y.start_px for t in plan.tiles}
    cols = {t.x.start_px for t in plan.tiles}
    assert len(rows) >= 3 and len(cols) >= 3
    last = plan.tiles[-1]
    assert last.shape_px[0] < tile_px and last.shape_px[1] < tile_px  # truncated last tile
    with torch.no_grad():
        full = model.trunk(window_to_input(image, dtype=torch.float64))
        stitched = stream_features(model, ArraySource(image), dataclasses.replace(SERIAL, tile_px=tile_px))
    assert stitched.shape == full.shape
    assert float((stitched - full).abs().max()) < 1e-10


def test_undersized_crop_is_detected():
    """Negative control: one stride less receptive field than computed makes stitching inexact."""
    model = make_model("tiny")
    image = texture(213, 181, seed=1)
    geo = model.geometry
    short = TrunkGeometry(*(dataclasses.replace(a, rf=a.rf - a.stride) for a in (geo.y, geo.x)))
    model.__dict__["geometry"] = short
    with torch.no_grad():
        full = model.trunk(window_to_input(image, dtype=torch.float64))
        stitched = stream_features(model, ArraySource(image), dataclasses.replace(SERIAL, tile_px=96))
    assert float((stitched - full).abs().max()) > 1e-6


@pytest.mark.parametrize("recompute", ["tiles", "cells", "auto"])
@pytest.mark.parametrize(("kind", "shape", "tile_px"), CASES)
def test_gmp_gradients_equal_full_backprop(kind, shape, tile_px, recompute):
    model = make_model(kind)
    image = texture(*shape, seed=2)
    target = torch.tensor([1])
    ref = reference_step(model, image, target)
    cfg = dataclasses.replace(SERIAL, tile_px=tile_px, recompute=recompute)
    loss, stats, got = streamed_step(model, image, target, cfg)
    assert stats.tiles_backprop >= 2
    if recompute != "auto":
        assert stats.recompute == recompute
    if stats.recompute == "cells":  # one window per argmax cell, batched
        assert stats.cells_backprop >= stats.tiles_backprop
        assert stats.backward_computed < stats.cells_backprop
    assert max_rel_err(got, ref) < 1e-8
    with torch.no_grad():
        ref_loss = CE(model(window_to_input(image, dtype=torch.float64)), target)
    assert abs(loss - float(ref_loss)) < 1e-10


@pytest.mark.parametrize("kind", ["tiny", "basic", "tiny_aa"])
def test_dense_feature_gradient_equals_full_backprop(kind):
    """Every tile gets a gradient: the per-tile recomputation must reproduce full backprop everywhere."""
    model = make_model(kind)
    image = texture(229, 197, seed=3)
    x = window_to_input(image, dtype=torch.float64)
    with torch.no_grad():
        out_shape = model.trunk(x).shape
    grad = torch.randn(out_shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    model.trunk(x).backward(grad)
    ref = {n: p.grad.clone() for n, p in model.trunk.named_parameters()}
    model.zero_grad(set_to_none=True)
    stats = stream_backward(model, ArraySource(image), grad, dataclasses.replace(SERIAL, tile_px=96))
    assert stats.tiles_backprop == stats.tiles_total > 4
    got = {n: p.grad.clone() for n, p in model.trunk.named_parameters()}
    assert max_rel_err(got, ref) < 1e-10


def test_float32_channels_last_gradients_match():
    model = make_model("basic").float()
    image = texture(261, 229, seed=5)
    target = torch.tensor([0])
    model.zero_grad(set_to_none=True)
    CE(model(window_to_input(image)), target).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    cfg = StreamingConfig(tile_px=96, channels_last=True, prefetch_workers=2, prefetch_depth=3)
    _, _, got = streamed_step(model, image, target, cfg)
    assert max_rel_err(got, ref) < 1e-5


def white_image() -> np.ndarray:
    """Texture with large white areas: whole white tiles, partly white tiles, white at the border."""
    return with_white(texture(245, 261, seed=6), [(0, 0, 245, 150), (150, 200, 245, 261), (30, 170, 60, 261)])


def test_skipping_and_cache_change_nothing():
    model = make_model("tiny")
    image = white_image()
    target = torch.tensor([1])
    ref = reference_step(model, image, target)
    results = {}
    combos = [
        (False, False, "tiles"),
        (True, False, "tiles"),
        (False, True, "tiles"),
        (True, True, "tiles"),
        (False, True, "cells"),
        (True, True, "cells"),
    ]
    for skip_white, skip_zero, recompute in combos:
        cfg = StreamingConfig(
            tile_px=96,
            skip_white=skip_white,
            skip_zero_grad=skip_zero,
            recompute=recompute,
            prefetch_workers=0,
        )
        results[(skip_white, skip_zero, recompute)] = streamed_step(model, image, target, cfg)
    plain_loss, plain_stats, plain = results[(False, False, "tiles")]
    fast_loss, fast_stats, fast = results[(True, True, "tiles")]
    assert plain_stats.tiles_white == fast_stats.tiles_white >= 4
    # Plain streaming computes everything twice; ESCNN computes white tiles once per shape.
    assert plain_stats.forward_computed == plain_stats.backward_computed == plain_stats.tiles_total
    plan = plan_tiles(model.geometry, *image.shape[:2], 96)
    white_shapes = {
        t.shape_px
        for t in plan.tiles
        if (image[t.y.start_px : t.y.stop_px, t.x.start_px : t.x.stop_px] == 255).all()
    }
    assert len(white_shapes) >= 2  # the cache must key on the tile shape
    assert fast_stats.forward_computed == fast_stats.tiles_total - fast_stats.tiles_white + len(white_shapes)
    assert fast_stats.backward_computed <= fast_stats.tiles_backprop < fast_stats.tiles_total
    for loss, _, grads in results.values():
        assert abs(loss - plain_loss) < 1e-12
        assert max_rel_err(grads, plain) < 1e-10
        assert max_rel_err(grads, ref) < 1e-8


def test_backpropagated_tiles_are_the_argmax_tiles():
    model = make_model("tiny")
    image = white_image()
    target = torch.tensor([0])
    x = window_to_input(image, dtype=torch.float64)
    features = model.trunk(x).detach().requires_grad_(True)
    pooled = global_max_pool(features)
    pooled.retain_grad()
    CE(model.head(pooled), target).backward()
    plan = plan_tiles(model.geometry, *image.shape[:2], 96)
    flat = features.detach()[0].flatten(1).argmax(dim=1)  # first maximum in row-major order
    out_w = features.shape[3]
    expected = {
        plan.tile_of_cell(int(i) // out_w, int(i) % out_w)
        for c, i in enumerate(flat)
        if float(pooled.grad[0, c]) != 0.0
    }
    cfg = StreamingConfig(tile_px=96, prefetch_workers=0, recompute="cells")
    _, stats, _ = streamed_step(model, image, target, cfg)
    assert set(stats.backprop_tiles) == expected
    flat_hot = {int(i) for c, i in enumerate(flat) if float(pooled.grad[0, c]) != 0.0}
    assert stats.cells_backprop == len(flat_hot)  # one receptive-field window per distinct argmax cell
    assert 1 <= len(expected) < stats.tiles_total


def test_results_independent_of_tile_size():
    model = make_model("basic")
    image = with_white(texture(250, 236, seed=7), [(0, 150, 250, 236)])
    target = torch.tensor([1])
    outcomes = [
        streamed_step(model, image, target, StreamingConfig(tile_px=t, prefetch_workers=1))
        for t in (96, 136, 200, 512)
    ]
    base_loss, _, base = outcomes[-1]  # 512 px: a single tile, i.e. the whole image
    assert outcomes[-1][1].tiles_total == 1
    for loss, stats, grads in outcomes[:-1]:
        assert stats.tiles_total > 1
        assert abs(loss - base_loss) < 1e-12
        assert max_rel_err(grads, base) < 1e-9


def test_frozen_bn_statistics_stay_while_affine_trains():
    model = make_model("tiny")
    model.train()
    image = texture(160, 144, seed=8)
    stats_before = {n: b.clone() for n, b in model.named_buffers()}
    affine_before = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("trunk.1.")}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        stream_train_step(model, ArraySource(image), torch.tensor([1]), CE, StreamingConfig(tile_px=96))
        opt.step()
    for name, buf in model.named_buffers():
        assert torch.equal(buf, stats_before[name]), name
    assert affine_before
    for name, before in affine_before.items():
        assert not torch.equal(dict(model.named_parameters())[name].detach(), before), name


def test_forward_result_matches_whole_image():
    model = make_model("bottleneck")
    image = white_image()
    with torch.no_grad():
        features = model.trunk(window_to_input(image, dtype=torch.float64))
        logits = model(window_to_input(image, dtype=torch.float64))
    fwd = stream_forward(model, ArraySource(image), StreamingConfig(tile_px=112))
    assert float((fwd.logits - logits).abs().max()) < 1e-10
    assert float((fwd.feature_max - global_max_pool(features)[0]).abs().max()) < 1e-10
    rows, cols = fwd.argmax_cell[:, 0], fwd.argmax_cell[:, 1]
    at_argmax = features[0, torch.arange(features.shape[1]), rows, cols]
    assert float((at_argmax - fwd.feature_max).abs().max()) < 1e-10
    assert fwd.white.sum() == fwd.stats.tiles_white > 0


def test_cam_is_the_head_at_every_cell():
    model = make_model("basic", num_classes=1)
    image = white_image()
    cam = stream_cam(model, ArraySource(image), StreamingConfig(tile_px=96))
    with torch.no_grad():
        features = model.trunk(window_to_input(image, dtype=torch.float64))
        expected = torch.einsum("chw,kc->khw", features[0], model.head.weight)
        expected = expected + model.head.bias[:, None, None]
    assert cam.logit_map.shape == expected.shape
    assert float((cam.logit_map - expected).abs().max()) < 1e-10
    assert torch.allclose(cam.scores, torch.sigmoid(expected))
    geo = model.geometry
    assert cam.stride_px == (8, 8) and cam.rf_px == (geo.y.rf, geo.x.rf)
    assert cam.cell_center_px(2, 3) == (geo.y.center_px(2), geo.x.center_px(3))


def test_cam_maximum_equals_gmp_logit_for_one_feature_channel():
    """max_cells(w f + b) == w max_cells(f) + b for w > 0: the CAM peak is the GMP prediction."""
    gen = torch.Generator().manual_seed(9)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
    model = ESCNNModel(trunk, 1, 1).double()
    with torch.no_grad():
        randomize(model, gen)
        model.head.weight.copy_(torch.rand(1, 1, generator=gen, dtype=torch.float64) + 0.1)
    image = texture(150, 170, seed=10)
    cam = stream_cam(model, ArraySource(image), StreamingConfig(tile_px=48))
    assert cam.stats.tiles_total > 4
    assert abs(float(cam.logit_map.max()) - float(cam.logits[0, 0])) < 1e-12


def test_cam_maximum_bounded_by_gmp_logit_with_positive_head():
    """With several channels, argmaxes differ per channel: the CAM peak can only be below the GMP logit."""
    model = make_model("tiny", num_classes=1)
    with torch.no_grad():
        model.head.weight.abs_()
    cam = stream_cam(model, ArraySource(texture(150, 170, seed=11)), StreamingConfig(tile_px=64))
    assert float(cam.logit_map.max()) <= float(cam.logits[0, 0]) + 1e-12


def test_plan_covers_every_cell_once_on_stride_grid():
    model = make_model("basic")
    plan = plan_tiles(model.geometry, 1000, 777, 160)
    covered = np.zeros((plan.out_h, plan.out_w), dtype=int)
    for t in plan.tiles:
        assert t.y.start_px % 8 == 0 and t.x.start_px % 8 == 0
        assert t.shape_px[0] <= 160 and t.shape_px[1] <= 160
        covered[t.y.cell0 : t.y.cell1, t.x.cell0 : t.x.cell1] += 1
    assert (covered == 1).all()


def test_bad_inputs_raise_clear_errors():
    model = make_model("tiny")
    with pytest.raises(StreamingError, match="too small"):
        plan_tiles(model.geometry, 500, 500, 32)
    with pytest.raises(StreamingError, match="empty canvas"):
        plan_tiles(model.geometry, 0, 500, 64)

    class BadSource:
        height, width = 100, 100

        def read(self, y0, x0, h, w):
            return np.zeros((h, w), dtype=np.uint8)

    with pytest.raises(StreamingError, match="uint8 RGB"):
        stream_forward(model, BadSource(), StreamingConfig(tile_px=64))
    with pytest.raises(StreamingError, match="recompute"):
        StreamingConfig(recompute="some")
    with pytest.raises(StreamingError, match="feature_grad"):
        stream_backward(model, ArraySource(texture(100, 100, 0)), torch.zeros(1, 64, 3, 3))


def test_augmented_source_streams_exactly():
    """Augmentation is a function of (params, window): streaming through an AugmentedSource equals
    full backprop on the whole augmented canvas read as one window (white corners skipped)."""
    from lnassist.escnn.augment import AugmentConfig, AugmentedSource, draw_params

    model = make_model("tiny")
    base = ArraySource(texture(150, 170, seed=12))
    params = draw_params(AugmentConfig(), np.random.default_rng(13), base.height, base.width)
    source = AugmentedSource(base, params)
    whole = source.read(0, 0, source.height, source.width)
    target = torch.tensor([1])
    ref = reference_step(model, whole, target)
    for recompute in ("tiles", "cells"):
        cfg = StreamingConfig(tile_px=96, prefetch_workers=2, recompute=recompute)
        model.zero_grad(set_to_none=True)
        _, stats = stream_train_step(model, source, target, CE, cfg)
        got = {n: p.grad.clone() for n, p in model.named_parameters()}
        assert stats.tiles_total >= 9
        assert max_rel_err(got, ref) < 1e-8
