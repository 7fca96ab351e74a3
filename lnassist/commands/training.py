"""``lnassist train-classifier`` (manifest -> trained classifier folder).

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
        args.manifest,
        args.out,
        device=args.device,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=1))
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-classifier",
        help="train the ESCNN LN classifier (or the MIL baseline) from a manifest",
        description="Train the LN metastasis classifier on whole LN images (the paper's recipe by default). "
        "Writes best.pt, last.pt, config.yaml, log.json and log.csv into --out. Run under torchrun for "
        "data-parallel training.",
    )
    p.add_argument("manifest", help="manifest.jsonl (synth-dataset or the same format)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="paper",
        help="paper: resnet50, lr 1e-5, 16/16 epoch patience; cpu: tiny trunk (default %(default)s)",
    )
    p.add_argument("--config", help="YAML with TrainConfig fields, applied over the preset")
    p.add_argument("--backbone", choices=("resnet50", "resnet18", "tiny"))
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
