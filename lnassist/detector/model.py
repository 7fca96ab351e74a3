"""The detector network: DeepLabv3+ (ASPP + decoder) with one logit per pixel, its configuration,
input normalisation and checkpoints.

Input: float tensors (N, 3, H, W) of RGB values in [0, 255] at 1.25x, any H and W (padded with white to
the network's stride and cropped back); output: LN logits (N, 1, H, W), LN where the logit is > 0.
One logit with binary cross-entropy equals the paper's two-class per-pixel cross-entropy. Weights are
never downloaded: the encoder starts from random weights (the paper started from ImageNet).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lnassist.detector import DetectorError
from lnassist.fileio import load_torch, save_torch
from lnassist.slide import DETECTOR_MPP

CHECKPOINT_FORMAT = "lnassist-detector/1"
# ImageNet statistics: what DeepLabv3+ encoders expect, so ImageNet-initialised encoders can be swapped in.
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)
WHITE = 255.0


@dataclass(frozen=True)
class DetectorConfig:
    """Architecture; the defaults are the paper's (DeepLabv3+ with a ResNet50 encoder at 1.25x).

    ``atrous_rates`` are DeepLabv3+'s rates for output stride 16 (Chen et al. 2018)."""

    encoder: str = "resnet50"
    output_stride: int = 16
    atrous_rates: tuple[int, int, int] = (6, 12, 18)
    decoder_channels: int = 256
    mpp: float = DETECTOR_MPP

    def validate(self) -> None:
        import segmentation_models_pytorch as smp

        if self.encoder not in smp.encoders.get_encoder_names():
            raise DetectorError(
                f"unknown encoder {self.encoder!r}; segmentation_models_pytorch has "
                f"e.g. resnet18, resnet50, mobilenet_v2"
            )
        if self.output_stride not in (8, 16):
            raise DetectorError(f"output_stride must be 8 or 16, got {self.output_stride}")
        if len(self.atrous_rates) != 3 or any(int(r) < 1 for r in self.atrous_rates):
            raise DetectorError(f"atrous_rates must be three positive integers, got {self.atrous_rates}")
        if self.decoder_channels < 1:
            raise DetectorError(f"decoder_channels must be positive, got {self.decoder_channels}")
        if not (math.isfinite(self.mpp) and self.mpp > 0):
            raise DetectorError(f"mpp must be a positive number of um/px, got {self.mpp}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> DetectorConfig:
        """The config saved in a checkpoint: every field present, nothing else."""
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict) or set(raw) != known:
            raise DetectorError(f"bad detector config {raw!r}; expected exactly the fields {sorted(known)}")
        try:
            config = replace(cls(**raw), atrous_rates=tuple(int(r) for r in raw["atrous_rates"]))
        except (TypeError, ValueError) as exc:
            raise DetectorError(f"bad detector config {raw!r}: {exc}") from exc
        config.validate()
        return config


PAPER = DetectorConfig()
CPU = replace(PAPER, encoder="resnet18")
"""The lighter encoder for a detector shipped to run on CPUs."""
PRESETS = {"paper": PAPER, "cpu": CPU}


def normalise(images_255: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 255] (N, 3, H, W) -> the encoder's input (per-channel ImageNet standardisation)."""
    mean = images_255.new_tensor(IMAGENET_MEAN_255).view(1, 3, 1, 1)
    std = images_255.new_tensor(IMAGENET_STD_255).view(1, 3, 1, 1)
    return (images_255 - mean) / std


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 RGB (H, W, 3) or (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 255]."""
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise DetectorError(f"expected RGB images (H, W, 3) or (N, H, W, 3), got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()


class LNDetector(nn.Module):
    """DeepLabv3+ with normalisation and padding built in: ``forward`` takes any size."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        config.validate()
        self.config = config
        self.net = smp.DeepLabV3Plus(
            encoder_name=config.encoder,
            encoder_weights=None,
            encoder_output_stride=config.output_stride,
            decoder_channels=config.decoder_channels,
            decoder_atrous_rates=tuple(config.atrous_rates),
            classes=1,
        )
        # The decoder joins stride-4 features with the upsampled ASPP output, so sizes must divide evenly.
        self.size_multiple = max(int(self.net.encoder.output_stride), 16)

    def forward(self, images_255: torch.Tensor) -> torch.Tensor:
        if images_255.ndim != 4 or images_255.shape[1] != 3:
            raise DetectorError(f"expected (N, 3, H, W) images, got shape {tuple(images_255.shape)}")
        height, width = images_255.shape[-2:]
        pad_h = -height % self.size_multiple
        pad_w = -width % self.size_multiple
        if pad_h or pad_w:
            # White, as outside a slide: the network sees the same border whatever the image size.
            images_255 = F.pad(images_255, (0, pad_w, 0, pad_h), value=WHITE)
        logits = self.net(normalise(images_255))
        return logits[..., :height, :width]


def build_detector(config: DetectorConfig, seed: int = 0) -> LNDetector:
    """A freshly initialised detector; the same seed gives the same weights (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LNDetector(config)


def save_checkpoint(
    path: str | Path, model: LNDetector, metadata: dict[str, Any] | None = None, overwrite: bool = False
) -> None:
    """Write config + weights + JSON-able metadata (training settings, data, results) atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": {**asdict(model.config), "atrous_rates": list(model.config.atrous_rates)},
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # Through JSON: plain types only, which weights_only loading accepts (a str subclass would not be).
        "metadata": json.loads(json.dumps(metadata or {})),
    }
    save_torch(path, payload, overwrite=overwrite)


def load_checkpoint(path: str | Path) -> tuple[LNDetector, dict[str, Any]]:
    """(detector in eval mode on the CPU, metadata) from a checkpoint written by :func:`save_checkpoint`."""
    payload = load_torch(path, "detector checkpoint", DetectorError)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise DetectorError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    config = DetectorConfig.from_dict(payload.get("config"))
    model = LNDetector(config)
    try:
        model.load_state_dict(payload.get("state_dict") or {}, strict=True)
    except RuntimeError as exc:  # missing / unexpected keys, shape mismatches
        raise DetectorError(f"{path}: weights do not match the {config.encoder} detector: {exc}") from exc
    return model.eval(), dict(payload.get("metadata") or {})
