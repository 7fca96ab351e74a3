"""Retraining the LN classifier on reviewed annotations: a collected data set in, a candidate out.

The data set folder is what ``lnassist collect`` writes from reviewed DSA annotations:

- ``manifest.jsonl`` (:mod:`lnassist.manifest`): one row per reviewed LN. Its ``slide`` is a region
  TIFF of that LN (``regions/<name>.tiff``, one per ``slide_id``), ``label`` the pathologist's
  reviewed label, ``source_item`` the Girder item of the slide the region was cut from (rows
  without one are their own source). Every row is used, whatever its ``split``; ``category`` may be
  absent (reviewed LNs have none), so nothing here needs one.
- ``snapshot.json``: its ``transition`` (P(observed label j | true label i), estimated from the AI's
  labels against the reviewed ones, or null) feeds the forward-corrected loss on request.

:func:`retrain` splits the LNs by source slide (one slide's LNs are never on both sides: they share
a patient, a stain and a scanner) into ``train`` and ``heldout``, fine-tunes the parent on
``train`` with the project's training loop, and scores parent and candidate on the held-out LNs.
The held-out LNs choose nothing: the schedule's patience exceeds the epochs (no lr drop, no early
stop) and the candidate is the last epoch's weights, not the epoch with the best held-out loss, so
the held-out comparison is not biased towards the candidate.

Files written into the (new or empty) output folder:

- ``split-manifest.jsonl``: the data set's rows with ``split`` = train / heldout, slide paths absolute;
- ``training/``: the training loop's run (:mod:`lnassist.training.loop`);
- ``candidate.pt``: the candidate classifier, float16 weights (as shipped models are);
- ``heldout-scores.csv``: each held-out LN's label and both models' scores;
- ``candidate.json``: the candidate record (:mod:`lnassist.promotion`, which also holds the gate);
- ``candidate.md``: the candidate's model card.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lnassist.classifier import Classifier, load_classifier
from lnassist.collect import load_snapshot
from lnassist.constants import THRESHOLDS
from lnassist.evaluate import score_split
from lnassist.fileio import load_torch, save_torch, write_text_atomic
from lnassist.manifest import MANIFEST_NAME, read_manifest, resolve_path, write_manifest
from lnassist.metrics import delong_auc, delong_test
from lnassist.promotion import CANDIDATE_FORMAT, DEFAULT_TOLERANCE, check_record, check_tolerance, gate
from lnassist.publish import card_file_lines, checkpoint_facts, with_half_weights
from lnassist.registry import sha256_of
from lnassist.training import TrainingError
from lnassist.training.config import CPU, PAPER, TrainConfig
from lnassist.training.loop import LAST_NAME, train_classifier

log = logging.getLogger(__name__)

SPLIT_MANIFEST_NAME = "split-manifest.jsonl"
TRAINING_DIR = "training"
WEIGHTS_NAME = "candidate.pt"
SCORES_NAME = "heldout-scores.csv"
RECORD_NAME = "candidate.json"
CARD_NAME = "candidate.md"
TRAIN_SPLIT, HELDOUT_SPLIT = "train", "heldout"
SCORE_FIELDS = ("key", "source_item", "label", "parent_score", "candidate_score")
# DeLong's AUC (its interval) and test need two LNs of each class.
MIN_PER_CLASS_FOR_AUC = 2
# Beyond this many possible held-out sets, that many random ones are tried instead of all.
MAX_SPLIT_TRIES = 256

ProgressFn = Callable[[int, int, dict[str, Any]], None]


class RetrainError(TrainingError):
    """A data set, parent or request a retrain cannot use."""


@dataclass(frozen=True)
class SourceSplit:
    train_items: tuple[str, ...]
    heldout_items: tuple[str, ...]


def source_item(row: Mapping[str, Any]) -> str:
    """The slide an LN row came from: its ``source_item``, else its ``slide_id``."""
    return row.get("source_item") or row["slide_id"]


def _class_counts(rows: Sequence[Mapping[str, Any]], items: Sequence[str]) -> tuple[int, int]:
    """(negative, positive) LNs of ``items``."""
    wanted = set(items)
    labels = [r["label"] for r in rows if source_item(r) in wanted]
    return len(labels) - sum(labels), sum(labels)


def split_by_source(rows: Sequence[Mapping[str, Any]], seed: int, heldout_fraction: float) -> SourceSplit:
    """Source slides for training and for holding out: ``round(heldout_fraction * n)`` held out (at
    least 1, at most n - 1), the training ones holding both classes.

    Held-out sets are tried in an order drawn from ``seed`` (every possible set when there are at
    most :data:`MAX_SPLIT_TRIES`, else that many random ones); the first whose LNs give a held-out
    AUC (two of each class) wins, else the first with both classes held out, else the first at all.
    The same rows and seed give the same split."""
    if not 0 < heldout_fraction < 1:
        raise RetrainError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    items = sorted({source_item(r) for r in rows})
    if len(items) < 2:
        raise RetrainError(
            f"retraining needs LNs of at least 2 source slides (one to train on, one to hold out), got "
            f"{len(items)}: {', '.join(items) or 'none'}"
        )
    negatives, positives = _class_counts(rows, items)
    if not negatives or not positives:
        raise RetrainError(
            f"retraining needs negative and positive LNs, but all {len(rows)} reviewed LNs are "
            f"{'positive' if positives else 'negative'}"
        )
    n_heldout = min(len(items) - 1, max(1, round(heldout_fraction * len(items))))
    rng = np.random.default_rng(seed)
    if math.comb(len(items), n_heldout) <= MAX_SPLIT_TRIES:
        every = list(itertools.combinations(range(len(items)), n_heldout))
        tries = [every[i] for i in rng.permutation(len(every))]
    else:
        tries = [
            tuple(sorted(rng.choice(len(items), n_heldout, replace=False))) for _ in range(MAX_SPLIT_TRIES)
        ]
    best, best_rank = None, -1
    for picked in tries:
        heldout = [items[i] for i in picked]
        train = [item for item in items if item not in heldout]
        if min(_class_counts(rows, train)) == 0:
            continue
        rank = min(*_class_counts(rows, heldout), MIN_PER_CLASS_FOR_AUC)
        if rank > best_rank:
            best, best_rank = SourceSplit(tuple(train), tuple(heldout)), rank
        if rank == MIN_PER_CLASS_FOR_AUC:
            break
    if best is None:
        raise RetrainError(
            f"no way to hold out {n_heldout} of the {len(items)} source slides leaves both classes to train "
            f"on ({positives} positive LN(s) in all); hold out fewer (a smaller held-out fraction) or "
            "collect more slides"
        )
    if best_rank < MIN_PER_CLASS_FOR_AUC:
        log.warning(
            "no held-out set of %d source slide(s) has 2 LNs of each class: the held-out AUC is undefined "
            "and the gate will refuse the candidate",
            n_heldout,
        )
    return best


def read_transition(dataset_dir: str | Path) -> tuple[tuple[float, ...], ...]:
    """The data set snapshot's label-noise matrix (:func:`lnassist.collect.transition_of`); an error
    when it has none."""
    snapshot = load_snapshot(dataset_dir)
    matrix = (snapshot.get("transition") or {}).get("matrix")
    if matrix is None:
        raise RetrainError(
            f"snapshot {snapshot.get('id')} has no transition matrix (too few AI-reviewed label pairs to "
            "estimate one); retrain without the transition"
        )
    try:
        return tuple(tuple(float(v) for v in row) for row in matrix)
    except (TypeError, ValueError) as exc:
        raise RetrainError(
            f"snapshot {snapshot.get('id')}: transition must be a 2x2 matrix, got {matrix!r}"
        ) from exc


def fine_tune_config(
    parent: Classifier,
    parent_checkpoint: str | Path,
    *,
    epochs: int,
    seed: int,
    lr: float | None = None,
    tile_px: int | None = None,
    transition: tuple[tuple[float, ...], ...] | None = None,
) -> TrainConfig:
    """The training settings that continue ``parent`` (a loaded classifier) on the train split.

    The recipe is the parent's trunk's (the CPU preset for ``tiny``, else the paper's) with the
    parent's backbone, method and resolution; ``lr`` defaults to the recipe's reduced lr, the rate
    a recipe ends training at, so the steps stay small for a model that has already converged."""
    spec = parent.spec
    base = CPU if spec.backbone == "tiny" else PAPER
    return replace(
        base,
        backbone=spec.backbone,
        antialias=spec.antialias,
        method=spec.method,
        mpp=spec.mpp,
        mil_patch_px=spec.patch_px,
        pretrained_path=None,
        init_checkpoint=str(parent_checkpoint),
        train_split=TRAIN_SPLIT,
        val_split=HELDOUT_SPLIT,
        lr=base.reduced_lr if lr is None else lr,
        max_epochs=epochs,
        # Longer than the run: the held-out loss is reported but never lowers the lr or stops training.
        lr_patience_epochs=epochs + 1,
        stop_patience_epochs=epochs + 1,
        transition=transition,
        tile_px=base.tile_px if tile_px is None else tile_px,
        seed=seed,
    )


def _rate(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


def heldout_metrics(labels: Sequence[int], scores: Sequence[float]) -> dict[str, Any]:
    """One model's statistics on the held-out LNs, as :mod:`lnassist.promotion` records them."""
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    n_positive = int(y.sum())
    auc = auc_ci = None
    if min(n_positive, y.size - n_positive) >= MIN_PER_CLASS_FOR_AUC:
        result = delong_auc(y, s)
        auc, auc_ci = result.auc, [result.ci_low, result.ci_high]
    return {
        "n": int(y.size),
        "n_positive": n_positive,
        "auc": auc,
        "auc_ci": auc_ci,
        # Called positive at score >= threshold, as everywhere in lnassist.
        "thresholds": {
            mode: {
                "threshold": threshold,
                "sensitivity": _rate(s[y] >= threshold),
                "specificity": _rate(s[~y] < threshold),
            }
            for mode, threshold in THRESHOLDS.items()
        },
    }


def delong_comparison(
    labels: Sequence[int], parent_scores: Sequence[float], candidate_scores: Sequence[float]
) -> dict[str, float] | None:
    """DeLong's test of candidate vs parent AUC on the same LNs (difference = candidate - parent), or
    None when the AUCs are undefined."""
    y = np.asarray(labels, dtype=bool)
    if min(int(y.sum()), int((~y).sum())) < MIN_PER_CLASS_FOR_AUC:
        return None
    test = delong_test(y, candidate_scores, parent_scores)
    return {"auc_difference": test.auc_a - test.auc_b, "p_value": test.p_value}


def _split_rows(
    rows: Sequence[Mapping[str, Any]], manifest: Path, split: SourceSplit
) -> list[dict[str, Any]]:
    heldout = set(split.heldout_items)
    out = []
    for row in rows:
        moved = {**row, "split": HELDOUT_SPLIT if source_item(row) in heldout else TRAIN_SPLIT}
        # The split manifest lives in the output folder: path fields must not stay relative.
        for name in ("slide", "ground_truth"):
            if row.get(name):
                moved[name] = str(resolve_path(manifest, row[name]).resolve())
        out.append(moved)
    return out


def _scores_csv(
    keys: Sequence[str],
    items: Sequence[str],
    labels: Sequence[int],
    parent: Sequence[float],
    candidate: Sequence[float],
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(SCORE_FIELDS)
    for row in zip(keys, items, labels, parent, candidate, strict=True):
        writer.writerow([*row[:3], repr(float(row[3])), repr(float(row[4]))])
    return buf.getvalue()


def _json_copy(value: dict[str, Any], name: str) -> dict[str, Any]:
    """A copy of a caller's mapping made of JSON types only (it goes into the record and the weights file)."""
    try:
        copy = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise RetrainError(f"{name} must hold JSON values only: {exc}") from exc
    if not isinstance(copy, dict):
        raise RetrainError(f"{name} must be a mapping, got {type(value).__name__}")
    return copy


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def card_text(record: Mapping[str, Any], facts: dict[str, Any], size: int) -> str:
    """The candidate's model card (markdown) from its record and :func:`checkpoint_facts`."""
    parent, split, training = record["parent"], record["split"], record["training"]
    config, heldout, tolerance = training["config"], record["heldout"], record["tolerance"]
    name = parent.get("id") or parent["sha256"][:12]
    version = f" (version {parent['version']})" if parent.get("version") is not None else ""
    loss = (
        f"forward-corrected cross-entropy with the snapshot's transition matrix {config['transition']}"
        if config["transition"] is not None
        else "plain cross-entropy"
    )
    lines = [
        f"# Candidate model card: {name}{version} retrained on reviewed annotations",
        "",
        *card_file_lines("classifier", facts, record["model"]["file"], record["model"]["sha256"], size, True),
        f"- Created: {record['created_at']}",
        "",
        "## Parent",
        "",
        "```json",
        json.dumps(parent, indent=1),
        "```",
        "",
        "## Data",
        "",
        "LNs whose labels pathologists reviewed in the Digital Slide Archive (`lnassist collect`):",
        "",
        "```json",
        json.dumps(record["dataset"], indent=1),
        "```",
        "",
        f"Split by source slide (seed {split['seed']}, held-out fraction {split['heldout_fraction']:g}): "
        f"{len(split['train_items'])} slide(s) with {split['n_train_ln']} LNs to train on, "
        f"{len(split['heldout_items'])} slide(s) with {split['n_heldout_ln']} LNs "
        f"({split['n_heldout_positive']} positive) held out.",
        "",
        "## Training",
        "",
        f"Fine-tuned from the parent for {training['epochs']} epoch(s) at lr {config['lr']:g} with {loss}, "
        f"{config['backbone']} trunk at {config['mpp']} um/px, seed {config['seed']}, "
        f"{training['wall_s']:.0f} s. The candidate is the last epoch's weights: the held-out LNs chose "
        "neither an epoch nor the schedule.",
        "",
        "| epoch | lr | train loss | held-out loss |",
        "|---|---|---|---|",
        *(
            f"| {r['epoch']} | {r['lr']:g} | {_shown(r['train_loss'])} | {_shown(r['val_loss'])} |"
            for r in training["history"]
        ),
        "",
        "## Held-out LNs: parent vs candidate",
        "",
        "| model | n+ / n- | AUC (95% CI) | "
        + " | ".join(f"{mode} ({t:g}) sens. / spec." for mode, t in THRESHOLDS.items())
        + " |",
        "|---|---|---|" + "---|" * len(THRESHOLDS),
    ]
    for model in ("parent", "candidate"):
        m = heldout[model]
        ci = f" ({m['auc_ci'][0]:.4f}-{m['auc_ci'][1]:.4f})" if m["auc_ci"] else ""
        cells = [
            f"{_shown(m['thresholds'][mode]['sensitivity'])} / {_shown(m['thresholds'][mode]['specificity'])}"
            for mode in THRESHOLDS
        ]
        lines.append(
            f"| {model} | {m['n_positive']} / {m['n'] - m['n_positive']} | {_shown(m['auc'])}{ci} | "
            + " | ".join(cells)
            + " |"
        )
    delong = heldout["delong"]
    lines += [
        "",
        "DeLong's test, candidate - parent AUC: "
        + (f"{delong['auc_difference']:+.4f}, p = {delong['p_value']:.4g}." if delong else "not computable."),
        "",
        "## Promotion gate",
        "",
        f"Tolerance: held-out AUC at most {tolerance['auc']:g} and sensitivity at most "
        f"{tolerance['sensitivity']:g} below the parent's.",
        "",
    ]
    reasons = gate(record)
    lines += [f"- Refused: {r}" for r in reasons] or ["- May be promoted: not worse than the parent."]
    lines += [
        "",
        "## Limitations",
        "",
        "The held-out LNs are a few reviewed slides: differences of a few hundredths are within chance. "
        "Not for clinical use without validation.",
        "",
    ]
    return "\n".join(lines)


def retrain(
    dataset_dir: str | Path,
    parent_checkpoint: str | Path,
    out_dir: str | Path,
    *,
    parent_ref: dict[str, Any],
    dataset_ref: dict[str, Any],
    seed: int = 0,
    heldout_fraction: float = 0.34,
    epochs: int = 2,
    lr: float | None = None,
    tile_px: int | None = None,
    use_transition: bool = False,
    tolerance: dict[str, float] | None = None,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Fine-tune ``parent_checkpoint`` on the reviewed LNs of ``dataset_dir`` and compare it with its
    parent on held-out source slides; returns the candidate record (see the module docstring).

    ``parent_ref`` and ``dataset_ref`` identify parent and data for the record (a ``sha256`` in
    ``parent_ref`` must be the checkpoint's); ``tolerance`` overrides keys of
    :data:`~lnassist.promotion.DEFAULT_TOLERANCE`; ``progress(epoch, epochs, log_row)`` is called
    after each epoch."""
    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RetrainError(f"{out} is not an empty folder; retraining writes into a new or empty one")
    allowed = check_tolerance({**DEFAULT_TOLERANCE, **(tolerance or {})})
    parent_ref, dataset_ref = _json_copy(parent_ref, "parent_ref"), _json_copy(dataset_ref, "dataset_ref")
    manifest = dataset_dir / MANIFEST_NAME
    rows = read_manifest(manifest)
    split = split_by_source(rows, seed, heldout_fraction)
    transition = read_transition(dataset_dir) if use_transition else None
    parent_sha256 = sha256_of(parent_checkpoint)
    if parent_ref.get("sha256", parent_sha256) != parent_sha256:
        raise RetrainError(
            f"{parent_checkpoint} has sha256 {parent_sha256[:12]}..., not the parent's "
            f"{str(parent_ref['sha256'])[:12]}..."
        )
    parent_entry = {**parent_ref, "sha256": parent_sha256}
    parent = load_classifier(parent_checkpoint, device)
    cfg = fine_tune_config(
        parent, parent_checkpoint, epochs=epochs, seed=seed, lr=lr, tile_px=tile_px, transition=transition
    )
    split_manifest = out / SPLIT_MANIFEST_NAME
    write_manifest(split_manifest, _split_rows(rows, manifest, split))

    history: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> None:
        history.append(row)
        if progress is not None:
            progress(row["epoch"], epochs, row)

    t0 = time.perf_counter()
    train_classifier(
        cfg, split_manifest, out / TRAINING_DIR, device=device, progress=False, on_epoch=on_epoch
    )
    wall_s = round(time.perf_counter() - t0, 1)

    payload = load_torch(out / TRAINING_DIR / LAST_NAME, "training state", RetrainError)["classifier"]
    payload["metadata"] = {
        "training": {
            "config": cfg.to_dict(),
            "manifest": str(split_manifest),
            "epoch": len(history),
            "retrained_from": parent_entry,
            "dataset": dataset_ref,
        }
    }
    weights = out / WEIGHTS_NAME
    save_torch(weights, with_half_weights(payload))
    # Scored from the file itself, float16 weights and all: the record describes what ships.
    candidate = load_classifier(weights, device)
    parent_records = score_split(parent, split_manifest, HELDOUT_SPLIT)
    candidate_records = score_split(candidate, split_manifest, HELDOUT_SPLIT)
    labels = [r["label"] for r in parent_records]
    parent_scores = [r["score"] for r in parent_records]
    candidate_scores = [r["score"] for r in candidate_records]
    items_by_key = {f"{r['slide_id']}/{r['ln_id']}": source_item(r) for r in rows}
    keys = [r["key"] for r in parent_records]
    write_text_atomic(
        out / SCORES_NAME,
        _scores_csv(keys, [items_by_key[k] for k in keys], labels, parent_scores, candidate_scores),
    )

    train_items = set(split.train_items)
    train_rows = [r for r in rows if source_item(r) in train_items]
    record = {
        "format": CANDIDATE_FORMAT,
        "model": {
            "backbone": candidate.spec.backbone,
            "method": candidate.spec.method,
            "mpp": candidate.spec.mpp,
            "sha256": sha256_of(weights),
            "file": WEIGHTS_NAME,
        },
        "parent": parent_entry,
        "dataset": dataset_ref,
        "split": {
            "seed": seed,
            "heldout_fraction": heldout_fraction,
            "train_items": list(split.train_items),
            "heldout_items": list(split.heldout_items),
            "n_train_ln": len(train_rows),
            "n_heldout_ln": len(labels),
            "n_heldout_positive": sum(labels),
        },
        "training": {"epochs": len(history), "config": cfg.to_dict(), "history": history, "wall_s": wall_s},
        "heldout": {
            "parent": heldout_metrics(labels, parent_scores),
            "candidate": heldout_metrics(labels, candidate_scores),
            "delong": delong_comparison(labels, parent_scores, candidate_scores),
        },
        "tolerance": allowed,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    check_record(record)
    write_text_atomic(out / RECORD_NAME, json.dumps(record, indent=1, allow_nan=False) + "\n")
    card = card_text(record, checkpoint_facts("classifier", weights), weights.stat().st_size)
    write_text_atomic(out / CARD_NAME, card)
    return record
