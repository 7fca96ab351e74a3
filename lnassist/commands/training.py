"""``lnassist train-classifier`` (manifest -> trained classifier folder), ``lnassist pretrain-cells``
(synthetic manifest -> cell-level pretrained classifier) and ``lnassist retrain`` (reviewed-annotation
data set + parent classifier -> candidate classifier with its record).

Single process: ``lnassist train-classifier MANIFEST --out DIR``. Several processes or GPUs:
``torchrun --nproc_per_node N -m lnassist train-classifier MANIFEST --out DIR`` (same arguments).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from lnassist.commands.args import device, positive_int, set_threads
from lnassist.training.config import PRESETS, load_config


def run_train(args: argparse.Namespace) -> int:
    from lnassist.training.loop import train_classifier

    set_threads(args.threads)
    cfg = load_config(
        args.config,
        args.preset,
        backbone=args.backbone,
        method=args.method,
        mpp=args.mpp,
        label_mode=args.label_mode,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        init_checkpoint=args.init_checkpoint,
    )
    summary = train_classifier(
        cfg,
        args.manifest[0] if len(args.manifest) == 1 else args.manifest,
        args.out,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    return 0


def run_pretrain_cells(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from lnassist.training.cells import CellPretrainConfig, pretrain_cells

    set_threads(args.threads)
    given = {
        "backbone": args.backbone,
        "mpp": args.mpp,
        "iterations": args.iterations,
        "mining_rounds": args.mining_rounds,
        "seed": args.seed,
        "antialias": True if args.antialias else None,
    }
    cfg = replace(CellPretrainConfig(), **{k: v for k, v in given.items() if v is not None})
    if args.stain_concentration is not None:
        cfg = replace(cfg, stain=replace(cfg.stain, concentration_range=tuple(args.stain_concentration)))
    summary = pretrain_cells(cfg, args.manifests, args.out, device=args.device, overwrite=args.overwrite)
    print(json.dumps(summary["rounds"], indent=1))
    return 0


def run_retrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lnassist.collect import SNAPSHOT_NAME, load_snapshot
    from lnassist.promotion import gate
    from lnassist.retrain import retrain

    set_threads(args.threads)
    dataset, parent = Path(args.dataset).resolve(), Path(args.parent).resolve()
    dataset_ref = {"path": str(dataset)}
    if (dataset / SNAPSHOT_NAME).is_file():
        dataset_ref["snapshot_id"] = load_snapshot(dataset)["id"]
    tolerance = {"auc": args.tolerance_auc, "sensitivity": args.tolerance_sensitivity}
    options = {
        "seed": args.seed,
        "epochs": args.epochs,
        "heldout_fraction": args.heldout_fraction,
        "lr": args.lr,
    }
    record = retrain(
        dataset,
        parent,
        args.out,
        parent_ref={"id": parent.stem, "file": str(parent)},
        dataset_ref=dataset_ref,
        tile_px=args.tile_px,
        use_transition=args.use_transition,
        tolerance={k: v for k, v in tolerance.items() if v is not None},
        device=args.device,
        **{k: v for k, v in options.items() if v is not None},
    )
    held, split = record["heldout"], record["split"]
    delong = held["delong"]
    shown = {
        m: "undefined" if held[m]["auc"] is None else f"{held[m]['auc']:.4f}" for m in ("parent", "candidate")
    }
    print(
        f"candidate: {Path(args.out) / record['model']['file']} (sha256 {record['model']['sha256'][:12]}...)"
    )
    print(
        f"held out: {split['n_heldout_ln']} LNs ({split['n_heldout_positive']} positive) of "
        f"{len(split['heldout_items'])} source slide(s); trained on {split['n_train_ln']} LNs"
    )
    print(
        f"held-out AUC: parent {shown['parent']}, candidate {shown['candidate']}"
        + (f" (DeLong p = {delong['p_value']:.3g})" if delong else "")
    )
    reasons = gate(record)
    print("gate: may be promoted" if not reasons else "gate: refused")
    for reason in reasons:
        print(f"  - {reason}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-classifier",
        help="train the ESCNN LN classifier (or the MIL baseline) from a manifest",
        description="Train the LN metastasis classifier on whole LN images (the paper's recipe by default). "
        "Writes best.pt, last.pt, config.yaml, log.json and log.csv into --out. Run under torchrun for "
        "data-parallel training.",
    )
    p.add_argument(
        "manifest", nargs="+", help="manifest.jsonl (synth-dataset or the same format); several are pooled"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="paper: resnet50, lr 1e-5, 16/16 epoch patience; cpu: tiny trunk (default %(default)s)",
    )
    p.add_argument("--config", help="YAML with TrainConfig fields, applied over the preset")
    p.add_argument("--backbone", choices=("resnet50", "resnet18", "narrow", "tiny"))
    p.add_argument("--method", choices=("escnn", "mil"), help="mil: the patch-based baseline")
    p.add_argument("--mpp", type=float, help="training resolution, um/px (0.46 = 20x, 1.84 = 5x)")
    p.add_argument("--label-mode", choices=("ln", "slide"))
    p.add_argument("--max-epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int, help="images per step over all processes")
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--init-checkpoint", help="start from this classifier's weights (same backbone)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--overwrite", action="store_true", help="start again in a folder holding a run")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    p.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "retrain",
        help="fine-tune a classifier on reviewed annotations and compare it with its parent",
        description="Split the reviewed LNs of a data set (lnassist collect) by source slide, fine-tune the "
        "parent classifier on the training slides and score both on the held-out ones. Writes "
        "candidate.pt (float16), candidate.json (the record the promotion gate reads), candidate.md (its "
        "model card), heldout-scores.csv, split-manifest.jsonl and training/ into --out (new or empty).",
    )
    p.add_argument(
        "--dataset", required=True, help="data set folder: manifest.jsonl, regions/, snapshot.json"
    )
    p.add_argument("--parent", required=True, help="the classifier checkpoint to start from")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--seed", type=int, help="seed of the split and the training (default 0)")
    p.add_argument("--epochs", type=positive_int, help="training epochs (default 2)")
    p.add_argument("--heldout-fraction", type=float, help="share of source slides held out (default 0.34)")
    p.add_argument("--lr", type=float, help="learning rate (default: the parent recipe's reduced lr)")
    p.add_argument("--tile-px", type=positive_int, help="streaming tile (default: the recipe's)")
    p.add_argument(
        "--use-transition", action="store_true", help="forward-corrected loss with the snapshot's transition"
    )
    p.add_argument("--tolerance-auc", type=float, help="allowed held-out AUC drop (default 0.02)")
    p.add_argument("--tolerance-sensitivity", type=float, help="allowed sensitivity drop (default 0.05)")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=run_retrain)

    p = subparsers.add_parser(
        "pretrain-cells",
        help="pretrain the classifier on patches labelled by the synthetic slides' tumour cells",
        description="Cell-level pretraining (synthetic slides only): patches around tumour cells against "
        "mimics, cut edges and node tissue, then hard negatives mined from negative LNs. Writes "
        "OUT/pretrained.pt (a classifier checkpoint: evaluate it, or fine-tune it with train-classifier "
        "--init-checkpoint) and OUT/pretrain-log.json with the validation patch AUCs per kind.",
    )
    p.add_argument(
        "manifests",
        nargs="+",
        help="manifest.jsonl of lnassist synth-dataset (ground truth); several are pooled",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--backbone", help="trunk: tiny (default), narrow, resnet18, resnet50")
    p.add_argument("--mpp", type=float, help="resolution, um/px (default 0.46 = 20x; 1.84 = 5x)")
    p.add_argument("--antialias", action="store_true", help="blur before every subsampling of the trunk")
    p.add_argument("--iterations", type=positive_int, help="steps per round (default 1200)")
    p.add_argument("--mining-rounds", type=int, help="mining rounds after the first (default 3)")
    p.add_argument(
        "--stain-concentration",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="range of the per-patch H and E concentration factors (default 0.7 1.3; the paper's 0.5 1.5)",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--overwrite", action="store_true", help="replace OUT/pretrained.pt")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(func=run_pretrain_cells)
