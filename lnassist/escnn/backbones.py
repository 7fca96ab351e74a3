"""Convolutional trunks by name, with frozen batch normalisation (the paper's model change).

A trunk is everything before global pooling: an ``nn.Sequential`` of local operations
(convolutions, batch norm, ReLU, pooling, residual blocks), so the streaming engine can tile it.
Batch normalisation is frozen because statistics over one tile are not statistics over the
image: each ``nn.BatchNorm2d`` becomes a :class:`FrozenBatchNorm2d`, a fixed per-channel affine map
whose running statistics never change while ``weight`` and ``bias`` stay trainable.

``antialias=True`` (Zhang 2019, "Making convolutional networks shift-invariant again") puts a fixed
[1, 2, 1] x [1, 2, 1] / 16 low-pass (:class:`BlurPool2d`) before every subsampling, so that a
feature map no longer depends on how the image falls on the stride grid: a strided convolution
gets one blur of its input per factor 2 of its stride, and a strided max pool becomes a dense max
pool followed by a strided blur (Zhang's MaxBlurPool). Zhang instead evaluates strided
convolutions densely and blurs after their ReLU; that costs stride² times the convolution, which
the CPU preset cannot afford, while a convolution is linear, so blurring its input low-passes its
subsampled output just as blurring after it would.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lnassist.errors import LnassistError
from lnassist.fileio import load_torch

BACKBONES = ("resnet50", "resnet18", "narrow", "tiny")


class BackboneError(LnassistError):
    """Unknown backbone name or unusable pretrained weights file."""


class BlurPool2d(nn.Module):
    """Depthwise [1, 2, 1] x [1, 2, 1] / 16 blur with zero padding 1, then subsampling by ``stride``.

    Fixed (no parameters, no buffers) and for any channel count; zero padding keeps it streamable.
    Computed as shifted sums, one axis at a time, only at the kept positions: PyTorch's CPU depthwise
    convolution was 5-30x slower on full-resolution RGB, and the sums run in any memory layout.
    """

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        if stride < 1:
            raise BackboneError(f"blur stride must be >= 1, got {stride}")
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        h, w = x.shape[2:]
        p = F.pad(x, (1, 1, 1, 1))
        rows = p[:, :, :, 0:w:s] + 2 * p[:, :, :, 1 : w + 1 : s] + p[:, :, :, 2 : w + 2 : s]
        return (rows[:, :, 0:h:s] + 2 * rows[:, :, 1 : h + 1 : s] + rows[:, :, 2 : h + 2 : s]) * 0.0625

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class FrozenBatchNorm2d(nn.Module):
    """Batch norm in evaluation mode for good: ``y = (x - mean) / sqrt(var + eps) * weight + bias``.

    ``running_mean``/``running_var`` are buffers that no mode ever updates; ``weight`` and ``bias``
    are trainable parameters (the paper trains BN's affine transform, gamma and beta, only).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
        frozen = cls(bn.num_features, bn.eps)
        with torch.no_grad():
            if bn.affine:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
            if bn.track_running_stats:
                frozen.running_mean.copy_(bn.running_mean)
                frozen.running_var.copy_(bn.running_var)
        reference = bn.weight if bn.affine else bn.running_mean
        return frozen if reference is None else frozen.to(reference.device, reference.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1).to(x.dtype) + shift.view(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` inside ``module`` (in place) by a :class:`FrozenBatchNorm2d`."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d.from_batchnorm(child))
        else:
            freeze_batchnorm(child)
    return module


def _stride(module: nn.Conv2d | nn.MaxPool2d) -> int:
    stride = module.stride if module.stride is not None else module.kernel_size
    sy, sx = (stride, stride) if isinstance(stride, int) else stride
    if sy != sx or sy & (sy - 1):
        raise BackboneError(f"cannot anti-alias {module}: stride must be a power of 2 on both axes")
    return sy


def blur_before_subsampling(module: nn.Module) -> nn.Module:
    """Put a :class:`BlurPool2d` before every subsampling inside ``module`` (in place; see the module
    docstring): ``Conv2d`` of stride 2**k -> k blurs then the convolution; ``MaxPool2d`` of stride s ->
    the max pool at stride 1, then a blur of stride s."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d) and _stride(child) > 1:
            blurs = [BlurPool2d() for _ in range(_stride(child).bit_length() - 1)]
            setattr(module, name, nn.Sequential(*blurs, child))
        elif isinstance(child, nn.MaxPool2d) and _stride(child) > 1:
            if child.ceil_mode:
                raise BackboneError(f"cannot anti-alias {child}: ceil_mode")
            dense = nn.MaxPool2d(child.kernel_size, 1, child.padding, child.dilation)
            setattr(module, name, nn.Sequential(dense, BlurPool2d(_stride(child))))
        else:
            blur_before_subsampling(child)
    return module


def _resnet_trunk(name: str, pretrained_path: str | Path | None) -> nn.Sequential:
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    if pretrained_path is not None:
        path = Path(pretrained_path)
        state = load_torch(path, "pretrained weights", BackboneError)
        if not isinstance(state, dict):
            raise BackboneError(f"{path} does not hold a state dict")
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise BackboneError(f"{path} is not a torchvision {name} state dict: {exc}") from exc
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return freeze_batchnorm(nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names)))


def _tiny_trunk() -> nn.Sequential:
    """A small stride-16 CNN (about 450 multiply-adds per input pixel) for CPU tests and demos."""

    def block(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        return [conv, FrozenBatchNorm2d(c_out), nn.ReLU(inplace=True)]

    layers = [
        *block(3, 16, 5, 4),
        *block(16, 32, 3, 2),
        nn.MaxPool2d(3, stride=2, padding=1),
        *block(32, 64, 3, 1),
    ]
    return _he_init(nn.Sequential(*layers))


def _he_init(module: nn.Module) -> nn.Module:
    # As torchvision's ResNets: PyTorch's default conv init shrinks activations layer by layer, which
    # left the max-pooled features near zero and training from scratch stalled.
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
    return module


def _narrow_trunk() -> nn.Sequential:
    """A narrow residual CNN of stride 16 (about 3,600 multiply-adds per input pixel, 8x ``tiny``)
    whose 185 px receptive field (85 um at 20x) holds a tumour cell with its neighbours."""
    from torchvision.models.resnet import BasicBlock

    def block(c_in: int, c_out: int, stride: int = 1) -> BasicBlock:
        downsample = None
        if stride != 1 or c_in != c_out:
            downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), FrozenBatchNorm2d(c_out)
            )
        return BasicBlock(c_in, c_out, stride, downsample, norm_layer=FrozenBatchNorm2d)

    stem = [
        nn.Conv2d(3, 16, 5, stride=2, padding=2, bias=False),
        FrozenBatchNorm2d(16),
        nn.ReLU(inplace=True),
    ]
    blocks = [block(16, 32, 2), block(32, 48, 2), block(48, 48), block(48, 96, 2), block(96, 96)]
    return _he_init(nn.Sequential(*stem, *blocks))


def build_trunk(
    name: str, pretrained_path: str | Path | None = None, antialias: bool = False
) -> tuple[nn.Sequential, int]:
    """The trunk of backbone ``name`` and its number of output channels.

    ``pretrained_path`` is a local torchvision ImageNet state dict (ResNets only); nothing is
    downloaded. ``antialias`` blurs before every subsampling (:func:`blur_before_subsampling`, after the
    pretrained weights are loaded: blurs hold no weights).
    """
    if name in ("resnet50", "resnet18"):
        trunk = _resnet_trunk(name, pretrained_path)
        channels = 2048 if name == "resnet50" else 512
    elif name in ("tiny", "narrow"):
        if pretrained_path is not None:
            raise BackboneError(f"the {name!r} backbone has no pretrained weights")
        trunk, channels = (_tiny_trunk(), 64) if name == "tiny" else (_narrow_trunk(), 96)
    else:
        raise BackboneError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return (blur_before_subsampling(trunk) if antialias else trunk), channels
