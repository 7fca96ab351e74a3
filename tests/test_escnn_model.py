"""Backbones by name, frozen batch norm, global max pooling and local-file pretrained weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from lnassist.escnn.backbones import BackboneError, BlurPool2d, FrozenBatchNorm2d
from lnassist.escnn.model import build_model, global_max_pool, window_to_input


def test_frozen_bn_equals_eval_batchnorm_and_ignores_train_mode():
    gen = torch.Generator().manual_seed(0)
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(5, generator=gen))
        bn.running_var.copy_(torch.rand(5, generator=gen) + 0.3)
        bn.weight.copy_(torch.randn(5, generator=gen))
        bn.bias.copy_(torch.randn(5, generator=gen))
    frozen = FrozenBatchNorm2d.from_batchnorm(bn)
    x = torch.randn(2, 5, 7, 6, generator=gen)
    frozen.train()
    assert torch.allclose(frozen(x), bn.eval()(x), atol=1e-6)
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == {"weight", "bias"}


@pytest.mark.parametrize(("name", "channels"), [("resnet50", 2048), ("resnet18", 512), ("tiny", 64)])
def test_backbones_have_only_frozen_bn_and_the_right_head(name, channels):
    model = build_model(name, num_classes=1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert model.head.in_features == channels and model.head.out_features == 1


def test_unknown_backbone_and_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_model("vgg16")
    with pytest.raises(BackboneError, match="no such pretrained weights file"):
        build_model("resnet18", pretrained_path=tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(BackboneError, match="not a readable pretrained weights"):
        build_model("resnet18", pretrained_path=garbage)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(BackboneError, match="torchvision resnet18"):
        build_model("resnet18", pretrained_path=wrong)
    with pytest.raises(BackboneError, match="no pretrained"):
        build_model("tiny", pretrained_path=wrong)


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    gen = torch.Generator().manual_seed(1)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for t in net.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen))
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    model = build_model("resnet18", pretrained_path=path)
    assert torch.equal(model.trunk.conv1.weight, net.conv1.weight)
    assert torch.equal(model.trunk.layer4[1].bn2.running_var, net.layer4[1].bn2.running_var)
    assert torch.equal(model.trunk.layer2[0].downsample[1].bias, net.layer2[0].downsample[1].bias)


def test_global_max_pool_picks_first_maximum():
    f = torch.tensor([[[[1.0, 3.0], [3.0, 0.0]]]], requires_grad=True)
    global_max_pool(f).sum().backward()
    assert f.grad.flatten().tolist() == [0.0, 1.0, 0.0, 0.0]


def test_window_to_input_normalises_and_rejects_bad_windows():
    white = np.full((4, 5, 3), 255, dtype=np.uint8)
    x = window_to_input(white, channels_last=True)
    assert x.shape == (1, 3, 4, 5) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(
        x[0, :, 0, 0], torch.tensor([(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    )
    with pytest.raises(ValueError, match="uint8"):
        window_to_input(np.zeros((4, 5, 3), dtype=np.float32))


def test_blur_pool_is_a_fixed_normalised_low_pass():
    blur = BlurPool2d(stride=2)
    assert list(blur.parameters()) == [] and blur.state_dict() == {}
    ones = blur(torch.ones(1, 5, 8, 8))
    assert ones.shape == (1, 5, 4, 4)
    assert torch.allclose(ones[..., 1:, 1:], torch.ones(())) and float(ones[0, 0, 0, 0]) == 9 / 16
    # The definition: a depthwise zero-padded convolution with the binomial kernel, then subsampling.
    x = torch.randn(2, 4, 13, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    kernel = (taps[:, None] * taps[None, :] / 16).expand(4, 1, 3, 3)
    for stride in (1, 2, 4):
        expected = torch.nn.functional.conv2d(x, kernel, stride=stride, padding=1, groups=4)
        assert torch.allclose(BlurPool2d(stride)(x), expected, atol=1e-14)
    # The Nyquist frequency (a one-pixel checkerboard) is removed entirely, away from the zero padding.
    board = ((torch.arange(10)[:, None] + torch.arange(10)[None, :]) % 2) * 2 - 1  # +-1, mean 0
    assert float(BlurPool2d()(board.float().view(1, 1, 10, 10))[..., 1:-1, 1:-1].abs().max()) == 0


def test_antialias_blurs_before_every_subsampling_and_keeps_the_weights():
    plain, aa = build_model("tiny"), build_model("tiny", antialias=True)
    strided = [
        m
        for m in aa.trunk.modules()
        if isinstance(m, nn.Conv2d | nn.MaxPool2d) and m.stride not in (1, (1, 1))
    ]
    assert [m.kernel_size for m in strided] == [(5, 5), (3, 3)]  # the max pool is dense now
    assert [m.stride for m in aa.trunk.modules() if isinstance(m, BlurPool2d)] == [1, 1, 1, 2]
    assert [p.shape for p in plain.parameters()] == [p.shape for p in aa.parameters()]
    r18 = build_model("resnet18", antialias=True)
    assert r18.geometry.y.stride == 32 and sum(isinstance(m, BlurPool2d) for m in r18.trunk.modules()) == 8


def test_antialias_is_recorded_in_checkpoints(tmp_path):
    from lnassist.classifier import (
        ClassifierError,
        ClassifierSpec,
        checkpoint_payload,
        classifier_from_payload,
        load_classifier,
        new_classifier,
        save_classifier,
    )

    clf = new_classifier(ClassifierSpec(backbone="tiny", antialias=True), seed=3)
    save_classifier(tmp_path / "aa.pt", clf)
    loaded = load_classifier(tmp_path / "aa.pt")
    assert loaded.spec.antialias is True
    x = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded.model.eval()(x), clf.model.eval()(x))
    # A plain trunk's checkpoint has no such key, as those written before the option existed (which
    # older versions, refusing unknown keys, can read): it loads as the plain trunk.
    old = checkpoint_payload(new_classifier(ClassifierSpec(backbone="tiny"), seed=3))
    assert "antialias" not in old["spec"] and checkpoint_payload(clf)["spec"]["antialias"] is True
    restored = classifier_from_payload(old, "old")
    assert restored.spec.antialias is False
    assert not any(isinstance(m, BlurPool2d) for m in restored.model.modules())
    # Weights are not silently loaded into the other trunk.
    wrong = checkpoint_payload(clf)
    wrong["spec"]["antialias"] = False
    with pytest.raises(ClassifierError, match="do not match"):
        classifier_from_payload(wrong, "wrong")
