"""Safe file I/O: every file lnassist writes appears whole or not at all, a set of files all or
none, and torch files are read without executing code.

Outputs are written under a temporary name in the destination folder and renamed into place only
when complete (for a set: only once every file of the set is complete), so an interrupted or
failed run leaves no partial file behind, and an existing file is replaced only when the caller
says so. Checkpoints and training states are loaded with
``weights_only=True``; a missing or unreadable one is the caller's one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def write_files_atomic(files: Mapping[Path, bytes], overwrite: bool = False) -> None:
    """Write each file's bytes, all or none: existing files are refused first (unless
    ``overwrite``), every file goes to a temporary name, and the renames start only once all of
    them are written; on any failure the temporary files are removed and nothing was renamed."""
    for path in files:
        refuse_existing(path, overwrite)
    written: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
            written.append((tmp, path))
            tmp.write_bytes(data)
        for tmp, path in written:
            os.replace(tmp, path)
    finally:
        for tmp, _ in written:
            tmp.unlink(missing_ok=True)


def save_torch(path: str | Path, payload: Any, overwrite: bool = False) -> None:
    """``torch.save`` whole or not at all."""
    import torch

    with atomic_output(path, overwrite=overwrite) as tmp:
        torch.save(payload, tmp)


def load_torch(path: str | Path, what: str, error: type[LnassistError]) -> Any:
    """The object in a torch file, loaded with ``weights_only=True`` onto the CPU. A missing file or
    one torch cannot read raises ``error`` naming the file and ``what`` it should have been."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle errors on corrupt files, UnpicklingError on foreign objects
        raise error(f"{path}: not a readable {what} ({type(exc).__name__}: {exc})") from exc


def read_yaml_mapping(path: str | Path, what: str, error: type[LnassistError]) -> dict[str, Any]:
    """The mapping at the top of a YAML file (an empty file is an empty mapping); an unreadable file,
    bad YAML or any other top-level value raises ``error`` naming the file and ``what`` it is."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise error(f"{what} {path} must be a mapping")
    return raw
