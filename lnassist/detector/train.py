"""Training the detector from LN contour annotations (paper, Methods, "Model training").

Each iteration draws ``batch_size`` random crops from the training slides at 1.25x (uniform slide, uniform
position; white / background outside a slide smaller than the crop), rotates them by a multiple of 90
degrees, flips them, and jitters the stain intensity per channel; targets are the ground-truth LN masks
rasterised from the contours on the same grid (:mod:`lnassist.detector.data`). The loss is per-pixel binary
cross-entropy on the one LN logit (the paper's two-class cross-entropy); the optimiser SGD with momentum and
L2 weight decay, the learning rate annealed to zero by a cosine over all iterations. Every random draw comes
from one seeded ``torch.Generator``; torch's global RNG (initialisation, dropout) is seeded inside a
forked state, so the same seed gives the same weights and losses and the caller's RNG is left alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from lnassist.detector import DetectorError
from lnassist.detector.data import SlideSample, load_samples
from lnassist.detector.model import DetectorConfig, LNDetector, build_detector, save_checkpoint, to_tensor
from lnassist.fileio import refuse_existing

log = logging.getLogger(__name__)

WHITE = 255


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; defaults are the paper's (SGD, lr 0.01, momentum 0.9, L2 5e-4, 40,000
    iterations, cosine annealing). The paper fed one whole 1.25x slide per GPU on 32 GPUs; one device
    takes ``batch_size`` crops of ``crop_px`` instead. ``colour_jitter`` is the half-width of the uniform
    per-channel stain-intensity gain (the paper: stain concentrations x U(0.5, 1.5) + stain rotation).
    ``blur_px`` (ours) is the largest Gaussian blur (sigma, in 1.25x pixels) drawn per crop: how sharp a
    1.25x image is depends on the scanner and on how its pyramid was made, and a detector trained on one
    pyramid alone loses the LNs when the image is half a pixel softer (0: no blur, no draw).
    ``ink_p`` (ours) is the share of crops that get one or two marker-pen strokes of a random colour
    over whatever is there, the mask unchanged: without texture to go by, a blur-trained detector took
    pathologists' pen arcs for LNs (0: none, no draw)."""

    iterations: int = 40_000
    batch_size: int = 8
    crop_px: int = 1024
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    colour_jitter: float = 0.1
    blur_px: float = 0.0
    ink_p: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        if self.iterations < 1:
            raise DetectorError(f"iterations must be >= 1, got {self.iterations}")
        if self.batch_size < 2:
            # The ASPP image-pooling branch batch-normalises one value per image and channel.
            raise DetectorError(f"batch_size must be >= 2 (batch norm after pooling), got {self.batch_size}")
        if self.crop_px < 32:
            raise DetectorError(f"crop_px must be >= 32, got {self.crop_px}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise DetectorError(f"need lr > 0, 0 <= momentum < 1, weight_decay >= 0; got {self}")
        if not 0 <= self.colour_jitter < 1:
            raise DetectorError(f"colour_jitter must be in [0, 1), got {self.colour_jitter}")
        if not 0 <= self.blur_px <= 4:
            raise DetectorError(f"blur_px must be in [0, 4], got {self.blur_px}")
        if not 0 <= self.ink_p <= 1:
            raise DetectorError(f"ink_p must be in [0, 1], got {self.ink_p}")
        if self.seed < 0:
            raise DetectorError(f"seed must be >= 0, got {self.seed}")


PAPER_TRAIN = TrainConfig()
CPU_TRAIN = replace(PAPER_TRAIN, iterations=1000, batch_size=4, crop_px=256)
"""A short run that fits a CPU: small crops, few iterations."""
TRAIN_PRESETS = {"paper": PAPER_TRAIN, "cpu": CPU_TRAIN}


def _uniform(generator: torch.Generator, low: float, high: float, size: int = 1) -> np.ndarray:
    return (low + (high - low) * torch.rand(size, generator=generator, dtype=torch.float64)).numpy()


def _randint(generator: torch.Generator, high: int) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator).item())


def augmented_crop(
    sample: SlideSample,
    crop_px: int,
    colour_jitter: float,
    generator: torch.Generator,
    blur_px: float = 0.0,
    ink_p: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A random (crop_px, crop_px) uint8 RGB crop of the sample and its boolean mask, rotated by
    k * 90 degrees, maybe flipped left-right, with stain intensity (255 - value) scaled per channel,
    with probability ``ink_p`` pen strokes on it, and with ``blur_px`` blurred by a Gaussian of sigma
    U(0, blur_px)."""
    height, width = sample.mask.shape
    image = np.full((crop_px, crop_px, 3), WHITE, dtype=np.uint8)
    mask = np.zeros((crop_px, crop_px), dtype=bool)
    y0 = _randint(generator, max(height - crop_px, 0) + 1)
    x0 = _randint(generator, max(width - crop_px, 0) + 1)
    h, w = min(crop_px, height), min(crop_px, width)
    image[:h, :w] = sample.image[y0 : y0 + h, x0 : x0 + w]
    mask[:h, :w] = sample.mask[y0 : y0 + h, x0 : x0 + w]
    turns = _randint(generator, 4)
    image, mask = np.rot90(image, turns), np.rot90(mask, turns)
    if _randint(generator, 2):
        image, mask = image[:, ::-1], mask[:, ::-1]
    # Scaling the darkness rather than the value keeps the white background white.
    gain = _uniform(generator, 1 - colour_jitter, 1 + colour_jitter, 3)
    image = np.clip(WHITE - (WHITE - image.astype(np.float64)) * gain, 0, WHITE).round().astype(np.uint8)
    if ink_p > 0 and _uniform(generator, 0.0, 1.0)[0] < ink_p:
        image = _pen_strokes(image, generator)
    if blur_px > 0:
        sigma = float(_uniform(generator, 0.0, blur_px)[0])
        if sigma > 0.05:
            image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return image, np.ascontiguousarray(mask)


def _pen_strokes(image: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``image`` with one or two marker strokes (smooth arcs 4-40 px wide at 1.25x, i.e. 30-300 um) of
    one random ink each: optical density per channel U(0.05, 1), so any hue from pale to black."""
    size = image.shape[0]
    od = np.zeros(image.shape[:2], np.float32)
    out = image.astype(np.float32)
    for _ in range(1 + _randint(generator, 2)):
        through = _uniform(generator, 0, size, 2)  # the arc passes through this point of the crop
        radius = _uniform(generator, 0.2, 1.5)[0] * size
        towards = _uniform(generator, 0, 2 * np.pi)[0]
        span = _uniform(generator, 0.5, 3.0)[0] * 0.4 / max(radius / size, 0.4)
        theta = towards + np.linspace(-span / 2, span / 2, 24)
        centre = through - radius * np.array([np.cos(towards), np.sin(towards)])
        points = centre + radius * np.stack([np.cos(theta), np.sin(theta)], 1)
        od[:] = 0
        width = 4 + _randint(generator, 37)
        cv2.polylines(od, [np.round(points).astype(np.int32)], False, 1.0, thickness=width)
        ink = _uniform(generator, 0.05, 1.0, 3).astype(np.float32)
        out *= np.power(np.float32(10.0), -od[..., None] * ink)
    return np.clip(out, 0, WHITE).round().astype(np.uint8)


def draw_batch(
    samples: Sequence[SlideSample], config: TrainConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (B, 3, C, C) in [0, 255], targets (B, 1, C, C) in {0, 1}) for one iteration."""
    crops = []
    for _ in range(config.batch_size):
        sample = samples[_randint(generator, len(samples))]
        crops.append(
            augmented_crop(
                sample, config.crop_px, config.colour_jitter, generator, config.blur_px, config.ink_p
            )
        )
    images = to_tensor(np.stack([image for image, _ in crops]))
    targets = torch.from_numpy(np.stack([mask for _, mask in crops])[:, np.newaxis].astype(np.float32))
    return images, targets


@dataclass
class TrainResult:
    model: LNDetector
    losses: list[float]
    seconds: float


def train_detector(
    samples: Sequence[SlideSample],
    model_config: DetectorConfig,
    config: TrainConfig,
    log_every: int = 50,
    device: str | torch.device = "cpu",
    initial: LNDetector | None = None,
) -> TrainResult:
    """Train a freshly initialised detector (seeded by ``config.seed``), or go on training ``initial``
    (whose config must be ``model_config``), on ``samples`` on ``device``; the model is returned in eval
    mode on that device."""
    config.validate()
    if not samples:
        raise DetectorError("no training slides")
    if initial is not None and initial.config != model_config:
        raise DetectorError(f"the initial weights are a {initial.config} detector, not {model_config}")
    device = torch.device(device)
    started = time.perf_counter()
    model = (initial if initial is not None else build_detector(model_config, seed=config.seed)).to(device)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.iterations)
    generator = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    model.train()
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)  # dropout in the ASPP projection
        for iteration in range(1, config.iterations + 1):
            images, targets = draw_batch(samples, config, generator)
            loss = F.binary_cross_entropy_with_logits(model(images.to(device)), targets.to(device))
            value = loss.item()
            if not math.isfinite(value):
                raise DetectorError(f"training diverged at iteration {iteration} (loss {value})")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(value)
            if log_every and (iteration % log_every == 0 or iteration == config.iterations):
                recent = losses[-log_every:]
                log.info(
                    "iteration %d/%d: loss %.4f (mean of last %d), %.1f s",
                    iteration,
                    config.iterations,
                    sum(recent) / len(recent),
                    len(recent),
                    time.perf_counter() - started,
                )
    return TrainResult(model.eval(), losses, time.perf_counter() - started)


def _held_out(manifest_paths: Sequence[Path], split: str, mpp: float) -> list[SlideSample]:
    """The slides of ``split`` from those manifests that have any (a training-only data set has none)."""
    samples: list[SlideSample] = []
    for path in manifest_paths:
        try:
            samples += load_samples(path, (split,), mpp)
        except DetectorError:
            log.warning("no %s slides in %s", split, path)
    return samples


def train_from_manifest(
    manifest_paths: str | Path | Sequence[str | Path],
    out_path: str | Path,
    model_config: DetectorConfig,
    config: TrainConfig,
    evaluate_split: str | None = "val",
    overwrite: bool = False,
    log_every: int = 50,
    device: str | torch.device = "cpu",
    init_weights: str | Path | None = None,
) -> dict[str, Any]:
    """Train on the ``train`` slides of one or more manifests (e.g. data sets of different looks, pooled),
    starting from the detector checkpoint ``init_weights`` if given (its architecture replaces
    ``model_config``), evaluate on all their ``evaluate_split`` slides (if any), and save a checkpoint
    whose metadata records the settings, data, starting weights and results; returns that metadata."""
    from lnassist.detector.evaluate import evaluate_samples
    from lnassist.detector.model import load_checkpoint

    if isinstance(manifest_paths, (str, Path)):
        manifest_paths = [manifest_paths]
    manifest_paths = [Path(p) for p in manifest_paths]
    if not manifest_paths:
        raise DetectorError("no manifest to train on")
    out_path = Path(out_path)
    refuse_existing(out_path, overwrite)
    initial = None
    if init_weights is not None:
        initial, _ = load_checkpoint(init_weights)
        model_config = initial.config
    model_config.validate()
    config.validate()
    samples = [s for path in manifest_paths for s in load_samples(path, ("train",), model_config.mpp)]
    log.info("training on %d slides from %s", len(samples), ", ".join(map(str, manifest_paths)))
    result = train_detector(samples, model_config, config, log_every, device, initial)
    tail = result.losses[-max(1, min(50, len(result.losses) // 10)) :]
    metadata: dict[str, Any] = {
        "trained_on": [str(p) for p in manifest_paths] if len(manifest_paths) > 1 else str(manifest_paths[0]),
        "n_train_slides": len(samples),
        "init_weights": str(init_weights) if init_weights is not None else None,
        "train_config": asdict(config),
        "train_seconds": round(result.seconds, 1),
        "final_loss": sum(tail) / len(tail),
        "torch": str(torch.__version__),
    }
    held_out = _held_out(manifest_paths, evaluate_split, model_config.mpp) if evaluate_split else []
    if held_out:
        metadata[f"{evaluate_split}_report"] = evaluate_samples(result.model, held_out)["summary"]
    save_checkpoint(out_path, result.model, metadata, overwrite=overwrite)
    return metadata
