"""Classifier versions on the server: which one analyses use, the list GET /lnassist/models answers,
promotion through the gate, rollback, and starting a retrain job.

The versions are items of the models folder (setting ``lnassist.models_folder``) that the LNRetrain
job uploaded, with the ``lnassist_model`` metadata (:mod:`lnassist.versions`); the promoted one and
the history of promotions are the folder's ``lnassist_promotion`` metadata, changed only here and
only by site admins, with a conditional update so two admins promoting at once cannot lose a step.
No promoted version: the image's shipped default (the registry). Analyses started after a promotion
use the promoted version (``classifier=girder:<item id>`` in the job); the job fetches it with the
job's token and checks its sha256.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from girder.constants import AccessType
from girder.exceptions import AccessException, RestException
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.setting import Setting

from lnassist import dsa, promotion, registry, versions

from . import autorun, launch, settings

KIND = "classifier"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def models_folder(required: bool = False) -> dict[str, Any] | None:
    folder_id = Setting().get(settings.MODELS_FOLDER)
    folder = Folder().load(folder_id, force=True) if folder_id else None
    if folder is None and required:
        raise RestException(
            "no models folder: an admin sets lnassist.models_folder to the Girder folder the model "
            "versions go into (PUT /system/setting)",
            400,
        )
    return folder


def meta_of(item: dict[str, Any] | None) -> dict[str, Any] | None:
    meta = ((item or {}).get("meta") or {}).get(versions.MODEL_META)
    return meta if isinstance(meta, dict) and meta.get("kind") == KIND else None


def promoted() -> dict[str, Any] | None:
    """The promoted classifier version's item (None: the image's shipped default)."""
    folder = models_folder()
    current = versions.promotion((folder or {}).get("meta"), KIND)["current"]
    item = Item().load(current, force=True) if current else None
    return item if meta_of(item) is not None else None


def shipped() -> dict[str, Any] | None:
    """The registry default this server knows (the image ships the same registry)."""
    try:
        entry = registry.load_registry().entry(KIND)
    except registry.RegistryError:
        return None
    return {"id": entry.id, "version": entry.version, "sha256": entry.sha256}


def use_of(item: dict[str, Any] | None) -> dict[str, Any] | None:
    """{id, version, sha256} of the classifier analyses use with ``item`` promoted (None: the shipped
    default)."""
    if item is None:
        return shipped()
    meta = meta_of(item)
    return {"id": meta["id"], "version": versions.ref(str(item["_id"])), "sha256": meta["sha256"]}


def in_use() -> dict[str, Any] | None:
    """{id, version, sha256} of the classifier analyses use now."""
    return use_of(promoted())


def classifier_parameter(user: dict[str, Any]) -> str:
    """The LNAnalysis ``classifier`` parameter for a job run as ``user``: the promoted version, which
    the job reads with the user's token, so the user must be able to read it."""
    item = promoted()
    if item is None:
        return ""
    if not Item().hasAccess(item, user, AccessType.READ):
        raise AccessException(
            f"the promoted LN classifier is in a models folder {user['login']} cannot read; an admin "
            "gives read access to everyone who runs the analysis"
        )
    return versions.ref(str(item["_id"]))


def _view(item: dict[str, Any], current: str | None, use: dict[str, Any] | None) -> dict[str, Any]:
    meta = meta_of(item)
    record = meta.get("record") or {}
    item_id = str(item["_id"])
    return {
        "item_id": item_id,
        "name": item["name"],
        "source": "girder",
        "ref": versions.ref(item_id),
        "sha256": meta.get("sha256"),
        "created": item["created"].isoformat() if hasattr(item.get("created"), "isoformat") else None,
        "parent": record.get("parent"),
        "dataset": {**(record.get("dataset") or {}), "item_id": meta.get("dataset_item_id")},
        "split": record.get("split"),
        "heldout": record.get("heldout"),
        "tolerance": record.get("tolerance"),
        "promoted": item_id == current,
        "gate": gate_reasons(item, use),
    }


def list_versions(user: dict[str, Any]) -> dict[str, Any]:
    folder = models_folder()
    if folder is not None and not Folder().hasAccess(folder, user, AccessType.READ):
        raise AccessException("read access to the models folder is needed to list the model versions")
    state = versions.promotion((folder or {}).get("meta"), KIND)
    current = promoted()
    use = use_of(current)
    items = []
    if folder is not None:
        found = Item().find(
            {"folderId": folder["_id"], f"meta.{versions.MODEL_META}.kind": KIND}, sort=[("created", 1)]
        )
        items = [_view(item, state["current"], use) for item in found]
    default = shipped()
    return {
        "models_folder_id": str(folder["_id"]) if folder else None,
        "in_use": use,
        "shipped": {**default, "source": "image", "promoted": current is None} if default else None,
        "versions": items,
        "history": state["history"],
    }


def gate_reasons(item: dict[str, Any], use: dict[str, Any] | None) -> list[str]:
    """Why ``item`` may not be promoted over the classifier in use: it was compared with another
    model, or the gate of :mod:`lnassist.promotion` refuses its held-out results."""
    record = meta_of(item).get("record") or {}
    reasons = []
    parent = record.get("parent") or {}
    if use is None or parent.get("sha256") != use.get("sha256"):
        reasons.append(
            f"it was evaluated against {parent.get('id')} ({str(parent.get('sha256'))[:12]}...), not "
            f"against the classifier in use ({(use or {}).get('id')}): retrain from the one in use"
        )
    try:
        promotion.check_record(record)
        reasons += promotion.gate(record)
    except ValueError as exc:
        reasons.append(f"its candidate record is unusable ({exc})")
    return reasons


def _set_current(folder: dict[str, Any], entry: dict[str, Any]) -> None:
    """Move the promoted pointer to ``entry['to']``, appending ``entry`` to the history, only if
    nobody changed the promotion state since ``folder`` was read (409 otherwise). The state carries a
    revision number for that condition; it is written whole, one level under ``meta`` as Girder's
    own metadata writes are."""
    key = f"meta.{versions.PROMOTION_META}"
    whole = dict((folder.get("meta") or {}).get(versions.PROMOTION_META) or {})
    revision = int(whole.get("revision") or 0)
    state = versions.promotion(folder.get("meta"), KIND)
    whole.update(
        {KIND: {"current": entry["to"], "history": [*state["history"], entry]}, "revision": revision + 1}
    )
    condition = {f"{key}.revision": revision} if revision else {key: {"$exists": False}}
    result = Folder().collection.update_one({"_id": folder["_id"], **condition}, {"$set": {key: whole}})
    if result.modified_count != 1:
        raise RestException("the promoted model changed meanwhile; reload and try again", 409)


def promote(item: dict[str, Any], user: dict[str, Any], force: bool, reason: str | None) -> dict[str, Any]:
    folder = models_folder(required=True)
    if item["folderId"] != folder["_id"] or meta_of(item) is None:
        raise RestException(f"item {item['_id']} is not a classifier version of the models folder", 400)
    state = versions.promotion(folder.get("meta"), KIND)
    if state["current"] == str(item["_id"]):
        raise RestException(f"{item['name']} is already the promoted classifier", 400)
    reasons = gate_reasons(item, in_use())
    if reasons and not force:
        raise RestException(
            "not promoted: " + "; ".join(reasons) + " (an admin may force it, with a reason)", 400
        )
    if force and not (reason or "").strip():
        raise RestException("a forced promotion needs a reason (it is recorded)", 400)
    entry = {
        "action": "promote",
        "from": state["current"],
        "to": str(item["_id"]),
        "by": user["login"],
        "at": _now(),
        "forced": bool(force and reasons),
        "reason": (reason or "").strip(),
        "gate": reasons,
    }
    _set_current(folder, entry)
    # Auto-run and schedules analyse as the service user, which must read the version it uses.
    # Only the access list is written: saving the whole folder read above would put back its old
    # metadata over the promotion just made.
    service = autorun.service_user()
    if not Folder().hasAccess(folder, service, AccessType.READ):
        Folder().setUserAccess(folder, service, AccessType.READ, save=False)
        Folder().update({"_id": folder["_id"]}, {"$set": {"access": folder["access"]}})
    return entry


def rollback(item: dict[str, Any], user: dict[str, Any], reason: str | None) -> dict[str, Any]:
    """Back from the promoted version ``item`` to the one promoted before it."""
    folder = models_folder(required=True)
    state = versions.promotion(folder.get("meta"), KIND)
    if state["current"] != str(item["_id"]):
        raise RestException(
            f"{item['name']} is not the promoted classifier: only the promoted one is rolled back", 400
        )
    before = next(
        (
            e["from"]
            for e in reversed(state["history"])
            if e["action"] == "promote" and e["to"] == state["current"]
        ),
        None,
    )
    entry = {
        "action": "rollback",
        "from": state["current"],
        "to": before,
        "by": user["login"],
        "at": _now(),
        "forced": False,
        "reason": (reason or "").strip(),
        "gate": [],
    }
    _set_current(folder, entry)
    return entry


def start_retrain(folder: dict[str, Any], user: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The LNRetrain job for ``folder`` (its reviewed slides), as the admin ``user``."""
    models = models_folder(required=True)
    cli = launch.image_cli(Setting().get(settings.ANALYSIS_IMAGE), user, dsa.CLI_RETRAIN)
    params = {
        "collectFolder": str(folder["_id"]),
        "dataset": "",
        "includeUnreviewed": bool(options["include_unreviewed"]),
        "modelsFolder": str(models["_id"]),
        "parentModel": classifier_parameter(user),
        "seed": int(options["seed"]),
        "heldoutFraction": float(options["heldout_fraction"]),
        "epochs": int(options["epochs"]),
        "useTransition": bool(options["use_transition"]),
        "toleranceAuc": -1 if options["tolerance_auc"] is None else float(options["tolerance_auc"]),
        "toleranceSensitivity": -1
        if options["tolerance_sensitivity"] is None
        else float(options["tolerance_sensitivity"]),
        "device": "auto",
        "threads": 0,
        "girderApiUrl": "",
        "girderToken": "",
    }
    return launch.launch(cli, params, user)
