"""Model versions kept in Girder: the models folder's items, their metadata, the promoted version,
references to a version, and fetching one into a local cache.

A retrain (LNRetrain) uploads each new classifier as an item of the models folder (the plugin
setting ``lnassist.models_folder``) holding the weights, the model card and the candidate record
(:mod:`lnassist.promotion`), with the item metadata ``lnassist_model``. Which version analyses use
is the folder's metadata ``lnassist_promotion``: per kind the promoted item id and the history of
every promotion and rollback (who, when, why, forced or not). No promoted version: the image's
shipped default (:mod:`lnassist.registry`). A version is referred to as ``girder:<item id>``; the
Slicer CLIs fetch it with the job's token, check its sha256 and cache it by sha256.

Standard library at import (the Girder server imports the names); girder-client only inside the
functions that talk to Girder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lnassist.errors import LnassistError
from lnassist.registry import ModelEntry, sha256_of

MODEL_META = "lnassist_model"  # item metadata of a model version
PROMOTION_META = "lnassist_promotion"  # models folder metadata: {kind: {"current", "history"}}
REF_PREFIX = "girder:"
WEIGHTS_NAME = "model.pt"
CARD_NAME = "model.md"
RECORD_NAME = "candidate.json"
CACHE_ENV = "LNASSIST_MODEL_CACHE"
_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


class VersionError(LnassistError):
    """A model version that cannot be found, fetched or trusted."""


def ref(item_id: str) -> str:
    return f"{REF_PREFIX}{item_id}"


def parse_ref(value: str | None) -> str | None:
    """The item id of a ``girder:<item id>`` reference; None for anything else (a registry id)."""
    if not value or not value.startswith(REF_PREFIX):
        return None
    item_id = value[len(REF_PREFIX) :]
    if not _OBJECT_ID.match(item_id):
        raise VersionError(f"{value!r} is not a model reference (girder:<24 hex digit item id>)")
    return item_id


def promotion(folder_meta: Mapping[str, Any] | None, kind: str = "classifier") -> dict[str, Any]:
    """{"current": item id or None, "history": [...]} of ``kind`` from the models folder's metadata."""
    state = ((folder_meta or {}).get(PROMOTION_META) or {}).get(kind) or {}
    return {"current": state.get("current"), "history": list(state.get("history") or [])}


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "lnassist" / "models"


def fetch(client: Any, item_id: str, kind: str = "classifier", cache: str | Path | None = None) -> Path:
    """The weights of model version ``item_id`` as a local file, checked against the sha256 its
    metadata records; cached as ``<sha256>.pt`` with the registry entry beside it (``.json``), which
    :func:`lnassist.registry.resolve` reports as the model's provenance."""
    import girder_client

    try:
        item = client.getItem(item_id)
    except girder_client.HttpError as exc:
        raise VersionError(f"model version {item_id}: Girder answered HTTP {exc.status}") from None
    meta = (item.get("meta") or {}).get(MODEL_META)
    if not isinstance(meta, Mapping) or meta.get("kind") != kind or not meta.get("sha256"):
        raise VersionError(f"item {item_id} ({item.get('name')!r}) is not an lnassist {kind} version")
    folder = Path(cache) if cache is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    sha256 = str(meta["sha256"])
    path = folder / f"{sha256}.pt"
    if not (path.is_file() and sha256_of(path) == sha256):
        part = path.with_name(path.name + f".{os.getpid()}.part")
        try:
            client.downloadFile(str(meta["file_id"]), str(part))
        except girder_client.HttpError as exc:
            raise VersionError(
                f"model version {item_id}: its file could not be read (HTTP {exc.status})"
            ) from None
        actual = sha256_of(part)
        if actual != sha256:
            part.unlink(missing_ok=True)
            raise VersionError(
                f"model version {item_id}: the file's sha256 {actual[:12]}... differs from the recorded "
                f"{sha256[:12]}... (replaced or corrupt): not used"
            )
        os.replace(part, path)
    entry = ModelEntry(
        id=str(meta.get("id") or item["name"]), kind=kind, file=path.name, sha256=sha256, version=ref(item_id)
    )
    path.with_suffix(".json").write_text(json.dumps(entry.__dict__))
    return path


def upload(
    client: Any,
    models_folder_id: str,
    name: str,
    weights: Path,
    card: Path,
    record: Path,
    metadata: Mapping[str, Any],
) -> dict[str, Any]:
    """A new version item ``name`` in the models folder: weights, card and candidate record, then its
    ``lnassist_model`` metadata (written last: an item without it is no version)."""
    item = client.createItem(models_folder_id, name, description="lnassist classifier version")
    uploaded = client.uploadFileToItem(item["_id"], str(weights), filename=WEIGHTS_NAME)
    client.uploadFileToItem(item["_id"], str(card), filename=CARD_NAME)
    client.uploadFileToItem(item["_id"], str(record), filename=RECORD_NAME)
    meta = {**metadata, "file_id": uploaded["_id"], "sha256": sha256_of(weights)}
    return client.addMetadataToItem(item["_id"], {MODEL_META: meta})
