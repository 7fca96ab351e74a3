"""The ``lnassist`` command line: one subcommand per job, each registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lnassist import __version__
from lnassist.errors import LnassistError

# Modules exposing ``add_cli(subparsers)``; each registers its own subcommands.
CLI_MODULES = (
    "lnassist.slide",
    "lnassist.synth.cli",
    "lnassist.detector.cli",
    "lnassist.training.cli",
    "lnassist.evaluate",
    "lnassist.registry",
    "lnassist.pipeline",
    "lnassist.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lnassist",
        description="AI-assisted lymph-node metastasis assessment (ESCNN, Huang et al. 2022).",
    )
    parser.add_argument("--version", action="version", version=f"lnassist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in CLI_MODULES:
        importlib.import_module(name).add_cli(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except LnassistError as exc:
        print(f"lnassist {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
