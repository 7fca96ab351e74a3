"""Shipped models: the registry file (``models/registry.json``), checksums and lookup by id or kind.

The registry lists every model file in the models folder with its kind (``detector`` or
``classifier``), sha256, version and model card, and names the default model of each kind. The
pipeline asks :func:`resolve` for a model; the file's sha256 is checked before it is loaded, so a
corrupt or swapped file is a clear error instead of wrong results. The models folder is
``$LNASSIST_MODELS`` if set, else ``models/`` beside the package (a source checkout).

Standard library only: the Slicer CLIs and the Girder server look models up without importing
torch or numpy. Adding a trained model (card, float16 weights) is :mod:`lnassist.publish`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lnassist.errors import LnassistError
from lnassist.fileio import write_text_atomic

REGISTRY_NAME = "registry.json"
REGISTRY_FORMAT = "lnassist-model-registry/1"
KINDS = ("detector", "classifier")


class RegistryError(LnassistError):
    """Missing, unreadable or inconsistent registry, or a model file that fails its checksum."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    kind: str
    file: str  # relative to the models folder
    sha256: str
    version: str
    card: str = ""  # model card file, relative to the models folder
    summary: dict[str, Any] = field(default_factory=dict)  # headline metrics from the card


def models_dir() -> Path:
    env = os.environ.get("LNASSIST_MODELS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "models"


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Registry:
    folder: Path
    defaults: dict[str, str]
    models: list[ModelEntry]

    def entry(self, kind: str, model_id: str | None = None) -> ModelEntry:
        if kind not in KINDS:
            raise RegistryError(f"unknown model kind {kind!r}; one of {', '.join(KINDS)}")
        wanted = model_id or self.defaults.get(kind)
        if not wanted:
            raise RegistryError(f"{self.folder / REGISTRY_NAME} names no default {kind}")
        for e in self.models:
            if e.id == wanted:
                if e.kind != kind:
                    raise RegistryError(f"model {wanted!r} is a {e.kind}, not a {kind}")
                return e
        known = ", ".join(e.id for e in self.models if e.kind == kind) or "none"
        raise RegistryError(f"no {kind} {wanted!r} in {self.folder / REGISTRY_NAME} (known: {known})")

    def to_json(self) -> str:
        data = {
            "format": REGISTRY_FORMAT,
            "defaults": self.defaults,
            "models": [asdict(e) for e in self.models],
        }
        return json.dumps(data, indent=1) + "\n"


def load_registry(folder: str | Path | None = None) -> Registry:
    folder = Path(folder) if folder is not None else models_dir()
    path = folder / REGISTRY_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise RegistryError(
            f"no model registry at {path} (set LNASSIST_MODELS to the models folder)"
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != REGISTRY_FORMAT:
        raise RegistryError(f"{path} is not a {REGISTRY_FORMAT} file")
    try:
        models = [ModelEntry(**m) for m in data.get("models", [])]
    except TypeError as exc:
        raise RegistryError(f"{path}: bad model entry ({exc})") from exc
    return Registry(folder, dict(data.get("defaults", {})), models)


def resolve(kind: str, model: str | None = None, folder: str | Path | None = None) -> tuple[Path, ModelEntry]:
    """The verified file of a model: ``model`` is a registry id, a path to a checkpoint, or None for
    the registry's default of ``kind``. Registry files must match their sha256."""
    if model is not None and (model.endswith(".pt") or os.sep in model) and Path(model).exists():
        path = Path(model)
        sidecar = path.with_suffix(".json")  # written by lnassist.versions.fetch for a Girder version
        if sidecar.is_file():
            entry = ModelEntry(**json.loads(sidecar.read_text()))
            if entry.kind != kind or sha256_of(path) != entry.sha256:
                raise RegistryError(f"{path} is not the {kind} its {sidecar.name} describes (kind or sha256)")
            return path, entry
        return path, ModelEntry(
            id=path.stem, kind=kind, file=str(path), sha256=sha256_of(path), version="local"
        )
    registry = load_registry(folder)
    entry = registry.entry(kind, model)
    path = registry.folder / entry.file
    if not path.is_file():
        raise RegistryError(f"model file {path} of {entry.id!r} is missing")
    actual = sha256_of(path)
    if actual != entry.sha256:
        raise RegistryError(
            f"model file {path} is corrupt or was replaced: sha256 {actual[:12]}... but the registry "
            f"says {entry.sha256[:12]}..."
        )
    return path, entry


def register(entry: ModelEntry, folder: str | Path | None = None, make_default: bool = True) -> Registry:
    """Add or replace ``entry`` (its file already in the folder) and write the registry atomically."""
    folder = Path(folder) if folder is not None else models_dir()
    try:
        registry = load_registry(folder)
    except RegistryError:
        if (folder / REGISTRY_NAME).exists():
            raise
        registry = Registry(folder, {}, [])
    if sha256_of(folder / entry.file) != entry.sha256:
        raise RegistryError(f"{folder / entry.file} does not match the sha256 given for {entry.id!r}")
    registry.models = [e for e in registry.models if e.id != entry.id] + [entry]
    if make_default:
        registry.defaults[entry.kind] = entry.id
    write_text_atomic(folder / REGISTRY_NAME, registry.to_json(), overwrite=True)
    return registry
