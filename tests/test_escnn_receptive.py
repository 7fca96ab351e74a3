"""Receptive field, stride and padding walked from the modules, checked against known values and gradients."""

from __future__ import annotations

import pytest
import torch
from test_escnn_streaming import mini_resnet
from torch import nn

from lnassist.escnn.backbones import FrozenBatchNorm2d, blur_before_subsampling
from lnassist.escnn.model import build_model
from lnassist.escnn.receptive import ReceptiveFieldError, trunk_geometry


@pytest.mark.parametrize(
    ("backbone", "stride", "rf"),
    # ResNet50's 427 px is the value the paper's reference implementation uses; ResNet18's 435 px
    # is the commonly quoted theoretical receptive field of torchvision's ResNet18.
    [("resnet50", 32, 427), ("resnet18", 32, 435), ("tiny", 16, 61)],
)
def test_known_receptive_fields(backbone, stride, rf):
    geo = build_model(backbone).geometry
    assert (geo.y.stride, geo.y.rf) == (stride, rf)
    assert geo.x == geo.y


def test_antialiased_tiny_trunk_geometry():
    # Two stride-1 blurs (+2 px each) before the stride-4 conv (61 -> 65), one blur at stride 4 before
    # the stride-2 conv (+8), the max pool made dense then a stride-2 blur at stride 8 (+16): 89 px.
    geo = build_model("tiny", antialias=True).geometry
    assert (geo.y.stride, geo.y.rf, geo.y.pad) == (16, 89, 44)


def test_resnet_output_shape_matches_forward():
    model = build_model("resnet18").eval()
    geo = model.geometry
    for h, w in [(97, 130), (224, 224), (255, 33)]:
        with torch.no_grad():
            out = model.trunk(torch.zeros(1, 3, h, w))
        assert tuple(out.shape[2:]) == geo.out_shape(h, w)


def positive_copy(trunk: nn.Module) -> nn.Module:
    """Same geometry, all-positive averaging weights and average pooling: the input gradient of one
    output cell is then positive exactly on its (clipped) receptive field, with no cancellation."""
    for name, child in trunk.named_children():
        if isinstance(child, nn.MaxPool2d):
            setattr(trunk, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
        else:
            positive_copy(child)
    with torch.no_grad():
        for m in trunk.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
            elif isinstance(m, FrozenBatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
    return trunk


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("tiny", 160),
        ("basic", 200),
        ("bottleneck", 200),
        ("resnet18", 512),
        ("resnet50", 448),
        ("tiny_aa", 200),
        ("basic_aa", 240),
    ],
)
def test_gradient_support_equals_receptive_field(name, size):
    base, _, aa = name.partition("_")
    if base in ("basic", "bottleneck"):
        trunk = blur_before_subsampling(mini_resnet(base)) if aa else mini_resnet(base)
    else:
        trunk = build_model(base, antialias=bool(aa)).trunk
    geo = trunk_geometry(trunk)
    trunk = positive_copy(trunk).requires_grad_(False)
    x = torch.ones(1, 3, size, size, requires_grad=True)
    out = trunk(x)
    row, col = out.shape[2] // 2, out.shape[3] // 2 - 1
    out[0, :, row, col].sum().backward()
    support = x.grad[0].sum(0) > 0
    rows = support.any(1).nonzero()[:, 0]
    cols = support.any(0).nonzero()[:, 0]
    expected_rows = (max(0, geo.y.first_input_px(row)), min(size - 1, geo.y.last_input_px(row)))
    expected_cols = (max(0, geo.x.first_input_px(col)), min(size - 1, geo.x.last_input_px(col)))
    assert (int(rows.min()), int(rows.max())) == expected_rows
    assert (int(cols.min()), int(cols.max())) == expected_cols
    if name in ("resnet18", "resnet50"):  # the receptive field fits: no clipping
        assert expected_rows[1] - expected_rows[0] + 1 == geo.y.rf


@pytest.mark.parametrize(
    "module",
    [
        nn.AdaptiveAvgPool2d(1),
        nn.Upsample(scale_factor=2),
        nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(3, 3, 3, padding="same"),
        nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"),
        nn.Dropout(),
    ],
)
def test_unknown_or_unstreamable_modules_are_refused(module):
    with pytest.raises(ReceptiveFieldError):
        trunk_geometry(nn.Sequential(nn.Conv2d(3, 3, 3), module))
