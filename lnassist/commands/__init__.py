"""The ``lnassist`` command line: the top-level parser and :func:`main`, one module per command group.

Each command module defines ``add_cli(subparsers)`` (its subcommands' arguments) and the ``run_*``
functions those call; library modules never import a command module. A command module imports at
the top only what its argument definitions need and the rest inside its ``run_*`` functions, so
``lnassist --help`` stays quick. Shared argument types are in :mod:`lnassist.commands.args`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from lnassist import __version__
from lnassist.errors import LnassistError

COMMAND_MODULES = (
    "lnassist.commands.slide",
    "lnassist.commands.synth",
    "lnassist.commands.detector",
    "lnassist.commands.training",
    "lnassist.commands.evaluate",
    "lnassist.commands.collect",
    "lnassist.commands.models",
    "lnassist.commands.analyze",
    "lnassist.commands.demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lnassist",
        description="AI-assisted lymph-node metastasis assessment (ESCNN, Huang et al. 2022).",
    )
    parser.add_argument("--version", action="version", version=f"lnassist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
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
