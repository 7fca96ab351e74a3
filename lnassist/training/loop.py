"""The classifier training loop: epochs, validation, lr drop and early stop, checkpoints, resume, DDP.

Files written into the output folder (by rank 0 only, each whole or not at all):

- ``best.pt``: the classifier checkpoint (:mod:`lnassist.classifier` format) of the epoch with the
  lowest validation loss so far, with the training metadata;
- ``last.pt``: the training state after the last finished epoch (weights, AdamW state, schedule
  state, the data-order RNG state, history), from which ``resume=True`` continues exactly;
- ``config.yaml``, ``log.json`` and ``log.csv`` (one row per epoch).

Data parallel (``torchrun``): every process holds the whole model; an optimizer step's
``batch_size`` images are dealt out to the processes (``images[rank::world]``), each process
accumulates its images' gradients scaled by ``1 / batch_size``, and the gradients are summed over
processes (``all_reduce``) before the identical AdamW step on every process. The result equals a
single process accumulating the same images. All randomness (data order, per-image augmentation
and MIL patch positions) comes from one seeded generator drawn identically on every process.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnassist.classifier import (
    Classifier,
    checkpoint_payload,
    classifier_from_payload,
    load_classifier,
    new_classifier,
    save_classifier,
    score_source,
)
from lnassist.escnn.augment import AugmentedSource, draw_params
from lnassist.escnn.mask_jitter import draw_mask_jitter
from lnassist.escnn.model import window_to_input
from lnassist.escnn.streaming import StreamingConfig, stream_train_step
from lnassist.fileio import load_torch, save_torch, write_text_atomic
from lnassist.training import TrainingError
from lnassist.training.config import TrainConfig, dump_config
from lnassist.training.data import TrainImage, images_from_manifest, open_image
from lnassist.training.loss import forward_corrected_cross_entropy

log = logging.getLogger(__name__)

STATE_FORMAT = "lnassist-training-state/1"
BEST_NAME, LAST_NAME = "best.pt", "last.pt"
LOG_FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_auc", "improved", "seconds")
# Fields a resumed run may change: how long to go on.
RESUMABLE_CHANGES = {"max_epochs"}


# ------------------------------------------------------------------------------------- schedule


@dataclass
class Schedule:
    """Validation-driven schedule state (the paper's lr drop and early stop)."""

    best_val_loss: float = math.inf
    best_epoch: int = 0
    stale_epochs: int = 0
    lr_reduced: bool = False
    stopped: str = ""


def update_schedule(s: Schedule, epoch: int, val_loss: float, cfg: TrainConfig) -> tuple[bool, float | None]:
    """Record ``epoch``'s validation loss. Returns (improved, new lr or None); sets ``s.stopped``."""
    improved = val_loss < s.best_val_loss
    if improved:
        s.best_val_loss, s.best_epoch, s.stale_epochs = val_loss, epoch, 0
    else:
        s.stale_epochs += 1
    new_lr = None
    if not s.lr_reduced and s.stale_epochs >= cfg.lr_patience_epochs:
        s.lr_reduced, s.stale_epochs, new_lr = True, 0, cfg.reduced_lr
    elif s.lr_reduced and s.stale_epochs >= cfg.stop_patience_epochs:
        s.stopped = f"no better validation loss for {s.stale_epochs} epochs after the lr drop"
    return improved, new_lr


# ---------------------------------------------------------------------------------- distribution


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            # Convolution gradients of a channels_last model are not contiguous; a collective on
            # such a tensor would reduce a copy and leave .grad unreduced.
            flat = p.grad.contiguous()
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if flat.data_ptr() != p.grad.data_ptr():
                p.grad.copy_(flat)

    def gather(self, items: list[Any]) -> list[Any]:
        if self.world == 1:
            return items
        import torch.distributed as dist

        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]


def init_distributed(device: torch.device) -> Dist:
    """The process group of a ``torchrun`` launch (gloo on CPU, NCCL on CUDA), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# --------------------------------------------------------------------------------------- steps


@dataclass
class Context:
    cfg: TrainConfig
    classifier: Classifier
    device: torch.device
    streaming: StreamingConfig
    transition: torch.Tensor | None

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return forward_corrected_cross_entropy(logits, target, self.transition)


def _augmented(ctx: Context, image: TrainImage, seed: int) -> Any:
    jitter = None
    if ctx.cfg.mask_jitter is not None:
        # A stream of its own, so the augmentation drawn for a seed is the same with or without it.
        jitter = draw_mask_jitter(ctx.cfg.mask_jitter, np.random.default_rng([seed, 2]))
    source = open_image(image, ctx.cfg.mpp, jitter)
    if ctx.cfg.augment is None:
        return source
    params = draw_params(ctx.cfg.augment, np.random.default_rng(seed), source.height, source.width)
    return AugmentedSource(source, params)


def _mil_patches(source: Any, patch_px: int, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Up to ``count`` tissue patches at random positions (a bounded number of tries)."""
    patches: list[np.ndarray] = []
    for _ in range(8 * count):
        y = int(rng.integers(0, max(1, source.height - patch_px + 1)))
        x = int(rng.integers(0, max(1, source.width - patch_px + 1)))
        window = source.read(y, x, patch_px, patch_px)
        if window is not None:
            patches.append(window)
            if len(patches) == count:
                break
    return patches


def train_image(ctx: Context, image: TrainImage, seed: int, scale: float) -> float:
    """Accumulate ``scale`` x the image's loss gradient into ``.grad``; returns the unscaled loss."""
    source = _augmented(ctx, image, seed)
    target = torch.tensor([image.label], device=ctx.device)
    model = ctx.classifier.model
    if ctx.cfg.method == "escnn":
        loss, _ = stream_train_step(model, source, target, lambda z, t: ctx.loss(z, t) * scale, ctx.streaming)
        return loss / scale
    rng = np.random.default_rng([seed, 1])
    patches = _mil_patches(source, ctx.cfg.mil_patch_px, ctx.cfg.mil_patches_per_image, rng)
    if not patches:
        return math.nan
    dtype = next(model.parameters()).dtype
    x = torch.cat([window_to_input(p, ctx.device, dtype) for p in patches])
    loss = ctx.loss(model(x), target.expand(len(patches)))
    (loss * scale).backward()
    return float(loss.detach())


def validate(ctx: Context, images: list[TrainImage], dist: Dist) -> dict[str, Any]:
    """Validation loss (mean over images) and LN scores, unaugmented, images split over processes."""
    mine = []
    model = ctx.classifier.model
    with torch.no_grad():
        for index in range(dist.rank, len(images), dist.world):
            image = images[index]
            scored = score_source(ctx.classifier, open_image(image, ctx.cfg.mpp), ctx.streaming)
            logits = torch.tensor([scored.logits], dtype=next(model.parameters()).dtype)
            loss = float(ctx.loss(logits, torch.tensor([image.label])))
            mine.append((index, loss, scored.score))
    rows = sorted(dist.gather(mine))
    labels = np.array([images[i].label for i, _, _ in rows])
    scores = np.array([s for _, _, s in rows])
    auc = None
    if 0 < labels.sum() < len(labels):
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(labels, scores))
    return {
        "val_loss": float(np.mean([loss for _, loss, _ in rows])),
        "val_auc": auc,
        "scores": {images[i].key: s for i, _, s in rows},
    }


# -------------------------------------------------------------------------------------- files


def _write_logs(out: Path, history: list[dict[str, Any]]) -> None:
    write_text_atomic(out / "log.json", json.dumps(history, indent=1) + "\n", overwrite=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(out / "log.csv", buf.getvalue(), overwrite=True)


def _save_state(
    path: Path,
    ctx: Context,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    epoch: int,
    rng: np.random.Generator,
    history: list[dict[str, Any]],
) -> None:
    payload = {
        "format": STATE_FORMAT,
        "config": ctx.cfg.to_dict(),
        "classifier": checkpoint_payload(ctx.classifier),
        "optimizer": optimizer.state_dict(),
        "schedule": asdict(schedule),
        "epoch": epoch,
        # PCG64 state: 128-bit ints as strings, which weights_only loading accepts.
        "rng": json.dumps(rng.bit_generator.state),
        "history": json.loads(json.dumps(history)),
    }
    save_torch(path, payload, overwrite=True)


def _load_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    payload = load_torch(path, "training state", TrainingError)
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path}: not a {STATE_FORMAT} file")
    saved = TrainConfig.from_dict(payload["config"], str(path)).to_dict()
    now = cfg.to_dict()
    changed = sorted(k for k in now if now[k] != saved[k] and k not in RESUMABLE_CHANGES)
    if changed:
        diff = ", ".join(f"{k}: {saved[k]!r} -> {now[k]!r}" for k in changed)
        raise TrainingError(f"cannot resume {path} with a different config ({diff})")
    return payload


# ---------------------------------------------------------------------------------------- loop


def _manifest_record(manifest: str | Path | Sequence[str | Path]) -> str | list[str]:
    return str(manifest) if isinstance(manifest, str | Path) else [str(m) for m in manifest]


def train_classifier(
    cfg: TrainConfig,
    manifest: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    *,
    device: torch.device | str = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a classifier on ``manifest``; returns a summary. See the module docstring.

    ``on_epoch`` is called (by rank 0) with each finished epoch's log row, once its files are written."""
    device = torch.device(device)
    out = Path(out_dir)
    last = out / LAST_NAME
    if resume and not last.is_file():
        raise TrainingError(f"cannot resume: {last} does not exist")
    if not resume and not overwrite and ((out / BEST_NAME).exists() or last.exists()):
        raise TrainingError(
            f"{out} already holds a training run; pass --resume to continue it or --overwrite"
        )
    train_images = images_from_manifest(manifest, cfg.train_split, cfg.label_mode, cfg.label_field)
    val_images = images_from_manifest(manifest, cfg.val_split, cfg.label_mode, cfg.label_field)
    if len({im.label for im in train_images}) < 2:
        raise TrainingError(f"split {cfg.train_split!r} needs negative and positive images")
    dist = init_distributed(device)
    if dist.world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))

    classifier = new_classifier(cfg.spec(), cfg.seed, cfg.pretrained_path)
    if cfg.init_checkpoint:
        start = load_classifier(cfg.init_checkpoint)
        if (start.spec.backbone, start.spec.antialias) != (cfg.backbone, cfg.antialias):
            raise TrainingError(
                f"init_checkpoint {cfg.init_checkpoint} holds a {start.spec.backbone} model "
                f"(antialias {start.spec.antialias}), not {cfg.backbone} (antialias {cfg.antialias})"
            )
        classifier.model.load_state_dict(start.model.state_dict())
    rng = np.random.default_rng(cfg.seed)
    schedule, history, start_epoch = Schedule(), [], 0
    payload = _load_state(last, cfg) if resume else None
    if payload is not None:
        classifier = classifier_from_payload(payload["classifier"], str(last))
        schedule = Schedule(**payload["schedule"])
        history, start_epoch = list(payload["history"]), int(payload["epoch"])
        rng.bit_generator.state = json.loads(payload["rng"])
    model = classifier.model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
    transition = None if cfg.transition is None else torch.tensor(cfg.transition, dtype=torch.float64)
    ctx = Context(
        cfg, classifier, device, StreamingConfig(tile_px=cfg.tile_px, recompute=cfg.recompute), transition
    )
    lead = dist.rank == 0
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", dump_config(cfg), overwrite=True)
    log.info(
        "training %s/%s on %d images (%d validation), %d process(es), epochs %d..%d",
        cfg.method,
        cfg.backbone,
        len(train_images),
        len(val_images),
        dist.world,
        start_epoch + 1,
        cfg.max_epochs,
    )

    from tqdm import tqdm

    t_start = time.perf_counter()
    for epoch in range(start_epoch + 1, cfg.max_epochs + 1):
        if schedule.stopped:
            break
        t0 = time.perf_counter()
        order = rng.permutation(len(train_images))
        seeds = rng.integers(0, 2**63, size=len(train_images))
        losses: list[float] = []
        steps = range(0, len(order), cfg.batch_size)
        bar = tqdm(steps, desc=f"epoch {epoch}", disable=not (progress and lead), leave=False, mininterval=2)
        for start in bar:
            batch = order[start : start + cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            for index in batch[dist.rank :: dist.world]:
                losses.append(train_image(ctx, train_images[index], int(seeds[index]), 1.0 / len(batch)))
            dist.sum_gradients(params)
            optimizer.step()
        all_losses = dist.gather(losses)
        val = validate(ctx, val_images, dist)
        improved, new_lr = update_schedule(schedule, epoch, val["val_loss"], cfg)
        lr_used = optimizer.param_groups[0]["lr"]
        if new_lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = new_lr
            log.info("epoch %d: lr lowered to %g", epoch, new_lr)
        row = {
            "epoch": epoch,
            "lr": lr_used,
            "train_loss": float(np.nanmean(all_losses)),
            "val_loss": val["val_loss"],
            "val_auc": val["val_auc"],
            "improved": improved,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        history.append(row)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val AUC %s%s",
            epoch,
            row["train_loss"],
            row["val_loss"],
            "n/a" if val["val_auc"] is None else f"{val['val_auc']:.4f}",
            " (best)" if improved else "",
        )
        if lead:
            if improved:
                classifier.metadata = {
                    "training": {
                        "config": cfg.to_dict(),
                        "manifest": _manifest_record(manifest),
                        "epoch": epoch,
                        "val_loss": val["val_loss"],
                        "val_auc": val["val_auc"],
                        "processes": dist.world,
                        **(extra_metadata or {}),
                    },
                }
                save_classifier(out / BEST_NAME, classifier, overwrite=True)
            _save_state(last, ctx, optimizer, schedule, epoch, rng, history)
            _write_logs(out, history)
            if on_epoch is not None:
                on_epoch(dict(row))
    if not schedule.stopped:
        schedule.stopped = f"reached max_epochs={cfg.max_epochs}"
    return {
        "best_epoch": schedule.best_epoch,
        "best_val_loss": schedule.best_val_loss,
        "best_val_auc": next((r["val_auc"] for r in history if r["epoch"] == schedule.best_epoch), None),
        "epochs": len(history),
        "stopped": schedule.stopped,
        "seconds": round(time.perf_counter() - t_start, 1),
        "processes": dist.world,
        "best": str(out / BEST_NAME),
    }
