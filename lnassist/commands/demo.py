"""``lnassist demo``: a synthetic LN slide, generated and analysed with the shipped models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def run_demo_command(args: argparse.Namespace) -> int:
    from lnassist.demo import run_demo

    summary = run_demo(args.out, args.seed, args.size_px)
    print(json.dumps(summary, indent=2))
    return 0


def add_cli(subparsers: Any) -> None:
    from lnassist.demo import DEMO_SIZE_PX

    parser = subparsers.add_parser(
        "demo",
        help="generate a synthetic LN slide and run the LN analysis on it with the shipped models",
        description="Run lnassist end to end on an embedded default (a synthetic slide with every category).",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic slide")
    parser.add_argument("--size-px", type=int, default=DEMO_SIZE_PX, help="slide width and height, base px")
    parser.set_defaults(func=run_demo_command)
