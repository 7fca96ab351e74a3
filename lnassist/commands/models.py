"""``lnassist models`` (the registered models) and ``lnassist publish-model`` (a trained checkpoint
into the models folder, with its card, registered: :func:`lnassist.publish.publish`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lnassist.registry import KINDS, RegistryError, load_registry


def run_publish(args: argparse.Namespace) -> int:
    from lnassist.publish import publish

    report = None
    if args.report:
        try:
            report = json.loads(Path(args.report).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"cannot read evaluation report {args.report}: {exc}") from exc
    entry = publish(
        args.kind,
        args.checkpoint,
        args.id,
        args.version,
        report=report,
        train_command=args.train_command,
        data_command=args.data_command,
        evaluate_command=args.evaluate_command,
        notes=args.notes,
        half=args.half,
        folder=args.models_dir,
        make_default=not args.not_default,
        orientations=args.orientations,
    )
    print(json.dumps(asdict(entry), indent=1))
    return 0


def run_list(args: argparse.Namespace) -> int:
    registry = load_registry(args.models_dir)
    for e in registry.models:
        default = " (default)" if registry.defaults.get(e.kind) == e.id else ""
        print(f"{e.kind:10s} {e.id:28s} v{e.version} {e.sha256[:12]} {e.file}{default}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "models",
        help="list the registered models",
        description="List the models of the registry ($LNASSIST_MODELS or models/).",
    )
    p.add_argument("--models-dir", help="models folder (default: $LNASSIST_MODELS or models/)")
    p.set_defaults(func=run_list)
    p = subparsers.add_parser(
        "publish-model",
        help="copy a trained model into models/, write its card, register it",
        description="Copy a trained checkpoint into the models folder, write its model card "
        "(architecture, data, commands, metrics from an evaluate report, sha256) and register it.",
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("checkpoint")
    p.add_argument("--id", required=True, help="model id, e.g. classifier-cpu-v1")
    p.add_argument("--version", default="1")
    p.add_argument("--report", help="report.json of lnassist evaluate on the held-out test split")
    p.add_argument("--train-command", default="", help="command that trained it (for the card)")
    p.add_argument("--data-command", default="", help="command that made the training data (for the card)")
    p.add_argument("--evaluate-command", default="", help="command that reproduces the card's numbers")
    p.add_argument("--notes", default="", help="extra text for the card")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument("--not-default", action="store_true", help="register without making it the default")
    p.add_argument(
        "--orientations",
        type=int,
        choices=(1, 8),
        help="classifiers: score each LN as read (1) or in all 8 orientations, logits averaged "
        "(default: as the checkpoint says)",
    )
    p.add_argument("--models-dir", help="models folder (default: $LNASSIST_MODELS or models/)")
    p.set_defaults(func=run_publish)
