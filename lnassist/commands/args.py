"""Argument types and helpers that several ``lnassist`` commands share.

argparse calls a ``type`` with the text of an argument (and of a string default); raising
:class:`argparse.ArgumentTypeError` turns a bad value into argparse's usage error (exit code 2).
"""

from __future__ import annotations

import argparse

from lnassist.devices import DeviceError, resolve_device


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def device(text: str) -> str:
    try:
        return resolve_device(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None or 0: torch's own default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
