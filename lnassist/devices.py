"""Turning a device name from a user (command line, Slicer CLI parameter) into a usable torch device.

Library functions take the resulting string and call ``torch.device`` on it themselves, so the
command lines, the Slicer CLIs and Python callers all go through the same checks here. torch is
imported only when a name is resolved, so modules importing this one stay light.
"""

from __future__ import annotations

from lnassist.errors import LnassistError


class DeviceError(LnassistError):
    """A device name torch does not know, or a GPU asked for where none is usable."""


def resolve_device(name: str) -> str:
    """``"auto"`` (CUDA if available, else CPU), or any name ``torch.device`` accepts (``"cpu"``,
    ``"cuda"``, ``"cuda:1"``), checked to be usable here; returned as the name torch prints."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        message = " ".join(str(exc).split())
        raise DeviceError(f"unknown device {name!r}: {message}") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name} was asked for but this machine has no usable GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name} was asked for but this machine has {torch.cuda.device_count()} GPU(s)"
            )
    return str(device)
