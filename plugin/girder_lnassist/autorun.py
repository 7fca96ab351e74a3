"""Auto-run: every new slide that lands in a switched-on folder is analysed, exactly once.

**The switch** is the folder metadata ``lnassist_autorun`` (``{"enabled": true|false, "mode": ...,
"set_by": ..., "set_at": ...}``), inherited by subfolders: the nearest folder up the tree that has it
decides, so a subfolder can switch it off again. Only site admins and the folder's admins may change
it: ``PUT /lnassist/folder/{id}/autorun``, or the key through Girder's metadata endpoints, which
:func:`guard_folder_save` refuses (403) to anyone else. It is not read from
``.histomicsui_config.yaml``: that file is an item anyone with write access to the folder can edit.

**Who the jobs run as**: a dedicated service user (setting ``lnassist.service_user``, default
``lnassist-service``; created by the plugin with a random password nobody knows, never an admin),
which the switch grants write access to the folder and its subfolders, because the job's token goes
into the job's parameters (visible to whoever can read the job) and the results are written with it.
Not the uploader: an import or a copy has no uploader, and an upload's token expires with the
session. Not an admin: an admin token in job parameters would be an admin credential on the worker.
The batch's own job belongs to the person who switched auto-run on, so it appears in their job list.

**Arrival** is seen on ``model.item.save.after`` (upload: large_image makes the item a large image
after the file is stored; filesystem import; move in; a conversion finishing), on
``model.item.copy.after`` (a copy in: Girder and large_image save copies without events) and on
``model.file.save.after`` of an item's large-image file (its content replaced). A slide is queued when
it is a large image that is ready (not ``expected`` from a conversion), is no lnassist job's output,
and its folder is switched on. The task's id is derived from the item and its file's content
(sha512, else file id and size): re-saving the item (the plugin's own metadata writes included),
saving the same content again or a restart queue nothing new; new content queues the slide again.
"""

from __future__ import annotations

import secrets
from typing import Any

from girder import events, logger
from girder.api.rest import getCurrentUser
from girder.constants import AccessType
from girder.exceptions import AccessException, ValidationException
from girder.models.file import File
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.setting import Setting
from girder.models.user import User
from pymongo.errors import DuplicateKeyError

from lnassist import constants, dsa

from . import batches, launch, settings
from .batches import Batch, BatchTask
from .lease import utcnow

AUTORUN_META = dsa.METADATA_PREFIX + "autorun"


def enabled_of(value: Any) -> bool | None:
    """The switch's state in a folder's metadata value (None: not set there, or malformed)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, dict) and isinstance(value.get("enabled"), bool):
        return value["enabled"]
    return None


def switch_of(folder: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the deciding folder's switch value, that folder): the nearest folder up the tree that sets
    the switch; (None, None) when none does."""
    seen = set()
    while folder is not None and folder["_id"] not in seen:
        seen.add(folder["_id"])
        value = (folder.get("meta") or {}).get(AUTORUN_META)
        if enabled_of(value) is not None:
            return ({"enabled": value} if isinstance(value, bool) else value), folder
        if folder.get("parentCollection") != "folder":
            break
        folder = Folder().load(folder["parentId"], force=True)
    return None, None


def view(folder: dict[str, Any]) -> dict[str, Any]:
    value, source = switch_of(folder)
    return {
        "folder_id": str(folder["_id"]),
        "enabled": bool(value and value["enabled"]),
        "mode": (value or {}).get("mode"),
        "set_by": (value or {}).get("set_by"),
        "set_at": (value or {}).get("set_at"),
        "inherited_from": str(source["_id"])
        if source is not None and source["_id"] != folder["_id"]
        else None,
        "service_user": Setting().get(settings.SERVICE_USER),
    }


def service_user() -> dict[str, Any]:
    """The non-admin user auto-run and schedules run their jobs as (created on first use)."""
    login = Setting().get(settings.SERVICE_USER)
    user = User().findOne({"login": login})
    if user is None:
        try:
            user = User().createUser(
                login,
                secrets.token_urlsafe(32),
                "LN assist",
                "service",
                f"{login}@lnassist.invalid",
                public=False,
            )
        except (ValidationException, DuplicateKeyError):  # another process created it meanwhile
            user = User().findOne({"login": login})
        if user.get("status") != "enabled":  # a server that approves new accounts: this one is ours
            user["status"] = "enabled"
            user = User().save(user)
        logger.info("lnassist: created the service user %r", login)
    if user.get("admin"):
        raise ValidationException(
            f"the lnassist service user {login!r} is a site admin: its token would be an admin credential in "
            "job parameters; remove its admin flag or choose another user (lnassist.service_user)"
        )
    return user


def grant(folder: dict[str, Any], user: dict[str, Any]) -> None:
    """Write access for ``user`` on the folder and every folder below it (items take theirs from
    their folder; new subfolders copy their parent's), added to what each already grants."""
    queue = [folder]
    while queue:
        current = queue.pop()
        if not Folder().hasAccess(current, user, AccessType.WRITE):
            Folder().setUserAccess(current, user, AccessType.WRITE, save=True)
        queue.extend(Folder().find({"parentId": current["_id"], "parentCollection": "folder"}))


def set_switch(
    folder: dict[str, Any], user: dict[str, Any], enabled: bool, mode: str | None
) -> dict[str, Any]:
    if mode is not None and mode not in constants.MODES:
        raise ValidationException(f"mode must be one of {', '.join(constants.MODES)}, got {mode!r}", "mode")
    if enabled:
        grant(folder, service_user())
    value = {
        "enabled": enabled,
        "mode": mode,
        "set_by": user["login"],
        "set_by_id": str(user["_id"]),
        "set_at": utcnow().isoformat(timespec="seconds") + "Z",
    }
    folder = Folder().setMetadata(folder, {AUTORUN_META: value})
    return view(folder)


def guard_folder_save(event: events.Event) -> None:
    """``model.folder.save``: only site admins and the folder's admins change the switch."""
    folder = event.info
    if "_id" not in folder:
        return
    new = (folder.get("meta") or {}).get(AUTORUN_META)
    stored = Folder().load(folder["_id"], force=True)
    old = ((stored or {}).get("meta") or {}).get(AUTORUN_META)
    user = getCurrentUser()
    if new == old or user is None:  # unchanged, or the server's own work (no request)
        return
    if not (user.get("admin") or Folder().hasAccess(stored, user, AccessType.ADMIN)):
        raise AccessException(
            f"only site admins and the folder's admins may switch lnassist auto-run ({AUTORUN_META}); "
            "ask one of them (PUT /lnassist/folder/{id}/autorun)"
        )
    if new is not None and enabled_of(new) is None:
        raise ValidationException(
            f'{AUTORUN_META} must be true, false or {{"enabled": true|false, "mode": ...}}, got {new!r}'
        )


def content_key(file: dict[str, Any]) -> str:
    return file.get("sha512") or f"{file['_id']}:{file.get('size')}"


def consider(item: dict[str, Any]) -> bool:
    """Queue the item's analysis if it is a new slide (or new content) in a switched-on folder."""
    if not batches.is_slide(item) or launch.is_output_name(item["name"]):
        return False
    value, root = switch_of(Folder().load(item["folderId"], force=True))
    if not (value and value["enabled"]):
        return False
    file = File().load(item["largeImage"]["fileId"], force=True)
    if file is None:
        return False
    task = batches.new_task(None, item, batches.derived_id("autorun", item["_id"], content_key(file)))
    task.update(origin=batches.ORIGIN_AUTORUN, rootId=root["_id"])
    try:
        BatchTask().collection.insert_one(task)
    except DuplicateKeyError:
        return False
    logger.info("lnassist: auto-run queued %s (%s)", item["name"], item["_id"])
    return True


def _on_item_saved(event: events.Event) -> None:
    try:
        consider(event.info)
    except Exception:  # never fail the save that triggered us
        logger.exception("lnassist: auto-run could not consider item %s", event.info.get("_id"))


def _on_file_saved(event: events.Event) -> None:
    file = event.info
    if not file.get("itemId"):
        return
    item = Item().load(file["itemId"], force=True)
    if item is not None and str((item.get("largeImage") or {}).get("fileId")) == str(file["_id"]):
        _on_item_saved(events.Event("model.item.save.after", item))


def attach_new_tasks() -> None:
    """Give auto-run's new tasks (no batch yet) their switch folder's open auto-run batch, creating
    one when there is none. Only the dispatcher does this, so there is one open batch per folder."""
    new = list(BatchTask().find({"batchId": None, "origin": batches.ORIGIN_AUTORUN}))
    for root_id in {task["rootId"] for task in new}:
        root = Folder().load(root_id, force=True)
        ids = [task["_id"] for task in new if task["rootId"] == root_id]
        if root is None:
            BatchTask().update(
                {"_id": {"$in": ids}},
                {"$set": {"state": batches.SKIPPED, "reason": "its folder was deleted", "ended": utcnow()}},
            )
            continue
        batch = Batch().findOne(
            {"folderId": root_id, "origin": batches.ORIGIN_AUTORUN, "status": batches.BATCH_RUNNING}
        )
        if batch is None:
            value = switch_of(root)[0] or {}
            owner = User().load(value["set_by_id"], force=True) if value.get("set_by_id") else None
            run_as = service_user()
            batch = batches.create(
                root,
                owner or run_as,
                run_as,
                origin=batches.ORIGIN_AUTORUN,
                recursive=True,
                mode=value.get("mode"),
            )
        BatchTask().update({"_id": {"$in": ids}, "batchId": None}, {"$set": {"batchId": batch["_id"]}})


def bind() -> None:
    events.bind("model.folder.save", "lnassist.autorun", guard_folder_save)
    events.bind("model.item.save.after", "lnassist.autorun", _on_item_saved)
    # A copy is saved without events; large_image points its largeImage at the copied file on
    # copy.after, bound before ours (its plugin loads first), so this sees the finished copy.
    events.bind("model.item.copy.after", "lnassist.autorun", _on_item_saved)
    events.bind("model.file.save.after", "lnassist.autorun", _on_file_saved)
