"""Cell-level pretraining from the synthetic slides' ground truth (issue #15): the stand-in for the
paper's ImageNet start.

The generator knows every tumour cell and every mimic (:mod:`lnassist.synth.generate`). A patch of
the LN image, read from the same canvas ESCNN reads (white outside the contour, the contour's edge
jittered), is *positive* when a tumour cell lies well inside it and *negative* when no tumour cell
lies in or near it: patches on mimic cells (sinus histiocytes, aggregates, HEVs, cautery, floater
epithelium), on the node's cut edge, and anywhere else in the node. The network is the ESCNN model
itself (trunk, global max pooling, linear head), so the result is a classifier checkpoint: it scores
whole LNs as it is, and ``train-classifier --init-checkpoint`` fine-tunes it on LN labels alone.

Hard negatives are then mined: the model's highest-scoring cells (its CAM) in negative training LNs
become further negative patches and training goes on.

Only synthetic slides carry this ground truth; on real slides only the LN-label path exists.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnassist.classifier import ClassifierSpec, new_classifier, save_classifier
from lnassist.escnn.augment import AugmentConfig, augment_stain, draw_params
from lnassist.escnn.mask_jitter import MaskJitterConfig, draw_mask_jitter
from lnassist.escnn.model import window_to_input
from lnassist.escnn.streaming import stream_cam
from lnassist.fileio import write_text_atomic
from lnassist.manifest import read_manifest, resolve_path
from lnassist.metrics import delong_auc
from lnassist.slide import CLASSIFIER_MPP
from lnassist.training import TrainingError
from lnassist.training.data import images_from_manifest, open_image

log = logging.getLogger(__name__)

TUMOUR, EDGE, NODE, MINED = "tumour", "edge", "node", "mined"
MIMIC_PREFIX = "mimic:"
CHECKPOINT_NAME, LOG_NAME = "pretrained.pt", "pretrain-log.json"


@dataclass(frozen=True)
class CellPretrainConfig:
    """Patch sampling and training of the cell-level pretraining; lengths in canvas pixels at ``mpp``."""

    backbone: str = "tiny"
    antialias: bool = False
    mpp: float = CLASSIFIER_MPP
    patch_px: int = 128
    shift_px: int = 8  # patches are read this much larger on each side and cropped at random
    cell_margin_px: int = 20  # a positive's tumour cell centre lies this far inside the patch
    clearance_px: int = 24  # a negative has no tumour cell centre within this of the patch
    cells_per_deposit: int = 16
    cells_per_mimic: int = 4
    edge_per_ln: int = 6
    node_per_ln: int = 6
    mined_per_ln: int = 8
    mining_rounds: int = 3
    iterations: int = 1200  # per round: the first round, then each round after mining
    batch_size: int = 64
    positive_fraction: float = 0.5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    stain: AugmentConfig = field(default_factory=lambda: AugmentConfig(concentration_range=(0.7, 1.3)))
    mask_jitter: MaskJitterConfig | None = field(default_factory=MaskJitterConfig)
    train_split: str = "train"
    val_split: str = "val"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.patch_px < 32 or self.shift_px < 0 or self.cell_margin_px * 2 >= self.patch_px:
            raise TrainingError(
                f"patch_px must be >= 32 and > 2 x cell_margin_px, shift_px >= 0; got {self.patch_px}, "
                f"{self.cell_margin_px}, {self.shift_px}"
            )
        counts = (self.cells_per_deposit, self.cells_per_mimic, self.edge_per_ln, self.node_per_ln)
        if min(counts) < 0 or self.mined_per_ln < 0 or self.mining_rounds < 0 or self.clearance_px < 0:
            raise TrainingError("patch counts, mining rounds and clearance_px must be >= 0")
        if self.iterations < 1 or self.batch_size < 2 or not 0 < self.positive_fraction < 1:
            raise TrainingError(
                "iterations >= 1, batch_size >= 2 and 0 < positive_fraction < 1 needed; got "
                f"{self.iterations}, {self.batch_size}, {self.positive_fraction}"
            )
        if not (self.lr > 0 and self.weight_decay >= 0):
            raise TrainingError(f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}")
        self.spec()

    def spec(self) -> ClassifierSpec:
        return ClassifierSpec(backbone=self.backbone, mpp=self.mpp, method="escnn", antialias=self.antialias)

    @property
    def read_px(self) -> int:
        return self.patch_px + 2 * self.shift_px


@dataclass
class PatchBank:
    """Patches read ``read_px`` square (uint8 RGB), their labels, kinds, LN keys and centres."""

    pixels: np.ndarray  # (n, read_px, read_px, 3)
    labels: np.ndarray  # (n,) int64, 1 = a tumour cell inside
    kinds: list[str]
    keys: list[str]
    centres_px: np.ndarray  # (n, 2) float: the read window's centre (x, y) on its LN's canvas

    def __len__(self) -> int:
        return len(self.labels)

    def extend(self, other: PatchBank) -> PatchBank:
        return PatchBank(
            np.concatenate([self.pixels, other.pixels]),
            np.concatenate([self.labels, other.labels]),
            self.kinds + other.kinds,
            self.keys + other.keys,
            np.concatenate([self.centres_px, other.centres_px]),
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in self.kinds:
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))


@lru_cache(maxsize=4)
def _ground_truth(path: str) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def ln_ground_truth(manifest: str | Path, split: str) -> dict[str, dict[str, Any]]:
    """Per LN image key (``slide_id/ln_id``), the generator's node record (deposits with cell
    centres, mimics), in base-level pixels; refuses a manifest without ground truth."""
    out = {}
    for row in read_manifest(manifest, splits=(split,)):
        if not row.get("ground_truth"):
            raise TrainingError(
                f"{manifest}: LN {row['slide_id']}/{row['ln_id']} has no ground_truth file; cell-level "
                "pretraining needs synthetic slides (lnassist synth-dataset)"
            )
        gt = _ground_truth(str(resolve_path(manifest, row["ground_truth"])))
        nodes = {int(n["id"]): n for n in gt["nodes"]}
        if int(row["ln_id"]) not in nodes:
            raise TrainingError(f"{row['ground_truth']}: no node {row['ln_id']} (stale manifest?)")
        out[f"{row['slide_id']}/{row['ln_id']}"] = nodes[int(row["ln_id"])]
    return out


def _points(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1, 2)


def _choose(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    if len(points) <= count:
        return points
    return points[rng.choice(len(points), size=count, replace=False)]


def _clear_of(centres: np.ndarray, tumour: np.ndarray, half_px: float) -> np.ndarray:
    """Which patch centres (canvas px) have no tumour cell centre within ``half_px`` (square)."""
    if len(tumour) == 0 or len(centres) == 0:
        return np.ones(len(centres), dtype=bool)
    near = np.abs(centres[:, None, :] - tumour[None, :, :]).max(axis=2) <= half_px
    return ~near.any(axis=1)


def sample_ln_patches(
    node: dict[str, Any],
    origin_base_px: tuple[float, float],
    base_px_per_px: float,
    cfg: CellPretrainConfig,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, int, str]]:
    """Patch centres (canvas x, y), labels and kinds for one LN, from its ground truth."""
    origin = np.asarray(origin_base_px, dtype=np.float64)

    def canvas(points_base_px: np.ndarray) -> np.ndarray:
        return (points_base_px - origin) / base_px_per_px

    tumour = canvas(np.concatenate([_points(d["cells"]) for d in node["deposits"]] or [np.empty((0, 2))]))
    contour = canvas(_points(node["contour"]))
    half = cfg.patch_px / 2
    clear_half = half + cfg.shift_px + cfg.clearance_px
    out: list[tuple[np.ndarray, int, str]] = []
    # A tumour cell anywhere in the patch but not cut by its border: the maximum may sit anywhere.
    reach = half - cfg.cell_margin_px
    for deposit in node["deposits"]:
        for cell in _choose(canvas(_points(deposit["cells"])), cfg.cells_per_deposit, rng):
            out.append((cell + rng.uniform(-reach, reach, size=2), 1, TUMOUR))
    negatives: list[tuple[np.ndarray, str]] = []
    for mimic in node["mimics"]:
        for cell in _choose(canvas(_points(mimic["cells"])), cfg.cells_per_mimic, rng):
            negatives.append((cell + rng.uniform(-reach, reach, size=2), MIMIC_PREFIX + mimic["kind"]))
    for i in rng.choice(len(contour), size=min(cfg.edge_per_ln, len(contour)), replace=False):
        negatives.append((contour[i] + rng.uniform(-half / 2, half / 2, size=2), EDGE))
    lo, hi = contour.min(axis=0), contour.max(axis=0)
    for _ in range(cfg.node_per_ln):
        negatives.append((rng.uniform(lo, hi), NODE))
    if negatives:
        centres = np.stack([c for c, _ in negatives])
        keep = _clear_of(centres, tumour, clear_half)
        out += [(c, 0, kind) for (c, kind), k in zip(negatives, keep, strict=True) if k]
    return out


def _read(source: Any, centre: np.ndarray, read_px: int) -> tuple[np.ndarray | None, np.ndarray]:
    """The ``read_px`` window nearest to being centred on ``centre`` (canvas x, y) and its exact centre."""
    x0, y0 = (int(round(v - read_px / 2)) for v in centre)
    return source.read(y0, x0, read_px, read_px), np.array([x0 + read_px / 2, y0 + read_px / 2])


def build_bank(
    manifest: str | Path, split: str, cfg: CellPretrainConfig, rng: np.random.Generator
) -> PatchBank:
    """The patch bank of ``split``: every LN's sampled patches, read with the LN's own mask jitter.
    Patches that are all white (outside the contour) are dropped."""
    nodes = ln_ground_truth(manifest, split)
    pixels, labels, kinds, keys, centres = [], [], [], [], []
    for image in images_from_manifest(manifest, split):
        jitter = None if cfg.mask_jitter is None else draw_mask_jitter(cfg.mask_jitter, rng)
        source = open_image(image, cfg.mpp, jitter)
        for centre, label, kind in sample_ln_patches(
            nodes[image.key], source.origin_base_px, source.base_px_per_px, cfg, rng
        ):
            window, read_centre = _read(source, centre, cfg.read_px)
            if window is None:
                continue
            pixels.append(window)
            labels.append(label)
            kinds.append(kind)
            keys.append(image.key)
            centres.append(read_centre)
    if not labels or min(labels) == max(labels):
        raise TrainingError(f"{manifest}: split {split!r} gave no positive or no negative patch")
    return PatchBank(np.stack(pixels), np.asarray(labels, dtype=np.int64), kinds, keys, np.stack(centres))


def _augment(window: np.ndarray, cfg: CellPretrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Random crop (sub-patch shift), a quarter turn and flip, and a stain perturbation."""
    dy, dx = (int(v) for v in rng.integers(0, 2 * cfg.shift_px + 1, size=2))
    patch = window[dy : dy + cfg.patch_px, dx : dx + cfg.patch_px]
    patch = np.rot90(patch, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    params = draw_params(cfg.stain, rng, cfg.patch_px, cfg.patch_px)
    return augment_stain(np.ascontiguousarray(patch), params)


def _centre(window: np.ndarray, cfg: CellPretrainConfig) -> np.ndarray:
    s = cfg.shift_px
    return np.ascontiguousarray(window[s : s + cfg.patch_px, s : s + cfg.patch_px])


def _batch(patches: list[np.ndarray], device: torch.device) -> torch.Tensor:
    return torch.cat([window_to_input(p, device) for p in patches])


def patch_scores(
    model: torch.nn.Module,
    bank: PatchBank,
    cfg: CellPretrainConfig,
    device: torch.device,
    batch_size: int = 128,
) -> np.ndarray:
    """P(tumour) of every bank patch, unaugmented (the centre crop)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(bank), batch_size):
            x = _batch([_centre(w, cfg) for w in bank.pixels[i : i + batch_size]], device)
            out.append(torch.softmax(model(x).float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out)


def bank_report(bank: PatchBank, scores: np.ndarray) -> dict[str, Any]:
    """Patch AUC overall and of the tumour patches against each negative kind."""
    report: dict[str, Any] = {"auc": delong_auc(bank.labels, scores).auc, "by_kind": {}}
    kinds = np.asarray(bank.kinds)
    tumour = bank.labels == 1
    for kind in sorted(set(bank.kinds) - {TUMOUR}):
        chosen = tumour | (kinds == kind)
        if (kinds == kind).sum() >= 2:
            report["by_kind"][kind] = {
                "auc": delong_auc(bank.labels[chosen], scores[chosen]).auc,
                "n": int((kinds == kind).sum()),
            }
    return report


def _train_round(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    bank: PatchBank,
    cfg: CellPretrainConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> list[float]:
    positives = np.flatnonzero(bank.labels == 1)
    negatives = np.flatnonzero(bank.labels == 0)
    n_pos = max(1, round(cfg.batch_size * cfg.positive_fraction))
    losses = []
    model.train()
    for _ in range(cfg.iterations):
        chosen = np.concatenate(
            [rng.choice(positives, size=n_pos), rng.choice(negatives, size=cfg.batch_size - n_pos)]
        )
        x = _batch([_augment(bank.pixels[i], cfg, rng) for i in chosen], device)
        target = torch.from_numpy(bank.labels[chosen]).to(device)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def mine_hard_negatives(
    model: torch.nn.Module,
    manifest: str | Path,
    split: str,
    cfg: CellPretrainConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> PatchBank:
    """Patches at each negative LN's highest CAM cells (its strongest false evidence), at least half
    a patch apart, on tissue only."""
    pixels, keys, centres = [], [], []
    model.eval()
    for image in images_from_manifest(manifest, split):
        if image.label != 0 or cfg.mined_per_ln == 0:
            continue
        source = open_image(image, cfg.mpp)
        cam = stream_cam(model, source)
        evidence = (cam.logit_map[1] - cam.logit_map[0]).float().cpu().numpy()
        taken: list[np.ndarray] = []
        for flat in np.argsort(evidence, axis=None)[::-1]:
            if len(taken) == cfg.mined_per_ln:
                break
            row, col = np.unravel_index(flat, evidence.shape)
            y, x = cam.cell_center_px(int(row), int(col))
            centre = np.array([x, y])
            if any(np.abs(centre - t).max() < cfg.patch_px / 2 for t in taken):
                continue
            jittered = centre + rng.uniform(-cfg.shift_px, cfg.shift_px, size=2)
            window, read_centre = _read(source, jittered, cfg.read_px)
            # The maximum must be on tissue: a window of white alone says nothing about the node.
            if window is None or source.read(int(y) - 2, int(x) - 2, 4, 4) is None:
                continue
            taken.append(centre)
            pixels.append(window)
            keys.append(image.key)
            centres.append(read_centre)
    n = len(pixels)
    stacked = np.stack(pixels) if n else np.empty((0, cfg.read_px, cfg.read_px, 3), np.uint8)
    return PatchBank(stacked, np.zeros(n, np.int64), [MINED] * n, keys, np.asarray(centres).reshape(-1, 2))


def _pooled(banks: list[PatchBank]) -> PatchBank:
    pooled = banks[0]
    for bank in banks[1:]:
        pooled = pooled.extend(bank)
    return pooled


def pretrain_cells(
    cfg: CellPretrainConfig,
    manifests: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build the banks (pooled over ``manifests``: e.g. one per slide look), train, mine, train
    again; writes ``pretrained.pt`` (a classifier checkpoint) and ``pretrain-log.json`` into
    ``out_dir``; returns the log."""
    manifests = [manifests] if isinstance(manifests, str | Path) else list(manifests)
    if not manifests:
        raise TrainingError("no manifest given")
    out = Path(out_dir)
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not overwrite:
        raise TrainingError(f"{checkpoint} exists; pass overwrite to replace it")
    device = torch.device(device)
    rng = np.random.default_rng(cfg.seed)
    started = time.monotonic()
    bank = _pooled([build_bank(m, cfg.train_split, cfg, rng) for m in manifests])
    val_cfg, val_rng = replace(cfg, mask_jitter=None), np.random.default_rng([cfg.seed, 1])
    val = _pooled([build_bank(m, cfg.val_split, val_cfg, val_rng) for m in manifests])
    log.info("patch banks: train %s, val %s", bank.counts(), val.counts())
    classifier = new_classifier(cfg.spec(), seed=cfg.seed)
    model = classifier.model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rounds = []
    for round_index in range(cfg.mining_rounds + 1):
        if round_index > 0:
            mined = _pooled(
                [mine_hard_negatives(model, m, cfg.train_split, cfg, rng, device) for m in manifests]
            )
            bank = bank.extend(mined)
            log.info("round %d: %d mined negatives", round_index, len(mined))
        losses = _train_round(model, optimizer, bank, cfg, rng, device)
        report = bank_report(val, patch_scores(model, val, cfg, device))
        rounds.append(
            {
                "round": round_index,
                "train_patches": bank.counts(),
                "loss_first_last_100": [float(np.mean(losses[:100])), float(np.mean(losses[-100:]))],
                "val": report,
                "seconds": round(time.monotonic() - started, 1),
            }
        )
        log.info(
            "round %d: val patch AUC %.4f, loss %.3f", round_index, report["auc"], np.mean(losses[-100:])
        )
    summary = {
        "config": json.loads(json.dumps(asdict(cfg))),
        "manifests": [str(m) for m in manifests],
        "val_patches": val.counts(),
        "rounds": rounds,
    }
    classifier.model = model.cpu().eval()
    classifier.metadata = {"cell_pretraining": summary}
    out.mkdir(parents=True, exist_ok=True)
    save_classifier(checkpoint, classifier, overwrite=overwrite)
    write_text_atomic(out / LOG_NAME, json.dumps(summary, indent=1) + "\n", overwrite=True)
    return summary
