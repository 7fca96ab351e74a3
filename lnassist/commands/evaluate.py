"""``lnassist evaluate``: classifiers (checkpoints or score tables) and optionally the detector on a
manifest split -> ``report.json``, score tables and ROC PNGs (:func:`lnassist.evaluate.write_report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from lnassist.commands.args import device, positive_int, set_threads
from lnassist.evaluate import REPORT_NAME, EvaluateError, summary_text, write_report
from lnassist.metrics import N_BOOT


def _named(items: list[str], what: str) -> dict[str, str]:
    """``NAME=PATH`` arguments (a bare ``PATH`` is named by its stem) as name -> path."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).stem, item
        if not name or not path or name in out:
            raise EvaluateError(f"{what} must be NAME=PATH with unique names, got {item!r}")
        out[name] = path
    return out


def run_evaluate(args: argparse.Namespace) -> int:
    classifiers = _named(args.classifier or [], "--classifier")
    score_files = _named(args.scores or [], "--scores")
    set_threads(args.threads)
    report = write_report(
        args.manifest,
        args.split,
        args.out,
        classifiers,
        score_files,
        args.detector,
        device=args.device,
        n_boot=args.n_boot,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    print(summary_text(report))
    print(f"wrote {Path(args.out) / REPORT_NAME}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate classifiers (and the detector) on a manifest split: JSON report + ROC PNGs",
        description="Score every LN of a split with each classifier (or read score tables), then write "
        "report.json (AUC with DeLong CIs, sensitivity/specificity/PPV/NPV with exact CIs and MCC at the "
        "0.4 and 0.15 thresholds, micrometastasis and ITC subsets, slide level, DeLong tests between models) "
        "and roc-*.png into --out.",
    )
    p.add_argument("manifest", help="manifest.jsonl")
    p.add_argument("--split", default="test", help="split to evaluate (default %(default)s)")
    p.add_argument(
        "--classifier", action="append", metavar="NAME=PT", help="classifier checkpoint (repeatable)"
    )
    p.add_argument("--scores", action="append", metavar="NAME=CSV", help="precomputed scores (repeatable)")
    p.add_argument("--detector", help="detector checkpoint to evaluate on the same split")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-boot", type=positive_int, default=N_BOOT, help="MCC bootstrap resamples")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_evaluate)
