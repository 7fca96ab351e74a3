"""The ESCNN classifier: a streamable trunk, global max pooling and a linear head (the paper's model).

The paper's two changes to ResNet50 live here and in :mod:`lnassist.escnn.backbones`: batch norm
frozen (affine parameters still trained) and global average pooling replaced by global max pooling,
so that a tiny lesion anywhere in a gigapixel image can drive the prediction. ``forward`` is the
plain whole-image computation (the reference the streaming engine must reproduce); the engine in
:mod:`lnassist.escnn.streaming` computes the same thing tile by tile.
"""

from __future__ import annotations

from functools import cached_property, lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lnassist.escnn.backbones import build_trunk
from lnassist.escnn.receptive import TrunkGeometry, trunk_geometry

# ImageNet normalisation of torchvision's pretrained weights, applied to RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def window_to_input(
    window: np.ndarray | torch.Tensor,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 RGB ``(h, w, 3)`` -> normalised float ``(1, 3, h, w)`` network input on ``device``."""
    pixels = torch.from_numpy(np.ascontiguousarray(window)) if isinstance(window, np.ndarray) else window
    if pixels.dtype != torch.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected a uint8 (h, w, 3) window, got {tuple(pixels.shape)} {pixels.dtype}")
    # (h, w, 3) viewed as (1, 3, h, w) already has channels-last strides: no copy needed for it.
    x = pixels.to(device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).to(dtype)
    scale, shift = _normalisation(x.device, dtype)
    x = x * scale + shift
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@lru_cache(maxsize=16)
def _normalisation(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x * scale + shift`` == ``(x / 255 - mean) / std``; cached so no host-to-device copy per tile."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    scale, shift = 1.0 / (255.0 * std), -mean / std
    return (scale.to(device, dtype).view(1, 3, 1, 1), shift.to(device, dtype).view(1, 3, 1, 1))


def global_max_pool(features: torch.Tensor) -> torch.Tensor:
    """Per-channel maximum over all positions, ``(n, c, h, w) -> (n, c)``.

    The gradient goes to one position per channel, the first maximum in row-major order (the
    streaming engine breaks ties the same way).
    """
    return features.flatten(2).max(dim=2).values


class ESCNNModel(nn.Module):
    """Trunk -> global max pooling -> ``nn.Linear`` head."""

    def __init__(self, trunk: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.trunk = trunk
        self.head = nn.Linear(channels, num_classes)

    @cached_property
    def geometry(self) -> TrunkGeometry:
        """Receptive field, stride and padding of the trunk, computed once from its modules."""
        return trunk_geometry(self.trunk)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(global_max_pool(self.trunk(x)))


def build_model(
    backbone: str,
    num_classes: int = 2,
    pretrained_path: str | Path | None = None,
    antialias: bool = False,
) -> ESCNNModel:
    """The paper's classifier on ``backbone`` (``resnet50``, ``resnet18``, ``narrow`` or ``tiny``).

    ``pretrained_path``: optional local torchvision ImageNet state dict for the trunk (read with
    ``weights_only=True``); the head is always freshly initialised. ``antialias``: blur before every
    subsampling of the trunk (:mod:`lnassist.escnn.backbones`; not in the paper).
    """
    trunk, channels = build_trunk(backbone, pretrained_path, antialias)
    return ESCNNModel(trunk, channels, num_classes)
