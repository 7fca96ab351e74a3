"""Safe file output: every file lnassist writes appears whole or not at all.

Outputs are written under a temporary name in the destination folder and renamed into place only
when complete, so an interrupted or failed run leaves no partial file behind, and an existing file
is replaced only when the caller says so.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lnassist.errors import LnassistError


class OutputExistsError(LnassistError):
    """The destination exists and the caller did not ask to replace it."""


def refuse_existing(path: str | Path, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` when ``path`` exists and may not be replaced; callers use it
    to fail before any expensive work, :func:`atomic_output` again at the moment of writing."""
    if Path(path).exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass --overwrite to replace it")


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds,
    delete it when the block raises."""
    path = Path(path)
    refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, overwrite: bool = False) -> None:
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text)
