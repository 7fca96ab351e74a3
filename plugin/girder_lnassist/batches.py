"""Batches of slides to analyse: the plugin's own record of every batch and every slide in it.

A batch (collection ``lnassist_batch``) is one request to analyse many slides: a folder run started
by a person, the slides auto-run queues as they arrive in a folder, or a schedule's run. Each slide of
it is a task (collection ``lnassist_batch_task``) with its state, job, attempts and error, so a batch
survives Girder restarts: everything :mod:`.dispatch` needs to go on is in the database.

Task states: ``queued`` → ``starting`` (claimed by the dispatcher, its job being created) →
``running`` (its job exists) → ``done`` / ``failed`` (after the last attempt) / ``skipped`` (already
analysed, reviewed, or gone) / ``canceled``. Task ids are derived from what they are (the batch and
the slide; for auto-run the slide and its file's content), so writing one twice, after a crash or
from two events, is a duplicate-key no-op rather than a second analysis.

Each batch has a Girder job of its own (type ``lnassist_batch``) that shows its progress (slides
ended / total) in Girder's job list; cancelling that job cancels the batch.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
from typing import Any

from bson import ObjectId
from girder.constants import AccessType
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.model_base import Model
from girder_jobs.constants import JobStatus
from girder_jobs.models.job import Job
from pymongo.errors import BulkWriteError, DuplicateKeyError

from lnassist import dsa

from . import documents, job_outputs, queries
from .lease import utcnow

QUEUED, STARTING, RUNNING, DONE, FAILED, SKIPPED, CANCELED = (
    "queued",
    "starting",
    "running",
    "done",
    "failed",
    "skipped",
    "canceled",
)
STATES = (QUEUED, STARTING, RUNNING, DONE, FAILED, SKIPPED, CANCELED)
IN_FLIGHT = (STARTING, RUNNING)  # a job exists or is being created
ENDED = (DONE, FAILED, SKIPPED, CANCELED)

ORIGIN_FOLDER, ORIGIN_AUTORUN, ORIGIN_SCHEDULE = "folder", "autorun", "schedule"
BATCH_CREATING, BATCH_RUNNING, BATCH_DONE, BATCH_CANCELED = "creating", "running", "done", "canceled"
JOB_TYPE = "lnassist_batch"

# Folder metadata holding the report of the newest batch that ended on the folder.
REPORT_META = dsa.METADATA_PREFIX + "batch_report"
REPORT_COLUMNS = (
    "item_id",
    "name",
    "folder_id",
    "status",
    "reason",
    "attempts",
    "job_id",
    "positive",
    "negative",
    "total",
    "model_id",
    "model_version",
    "started",
    "ended",
    "seconds",
)


def derived_id(*parts: Any) -> ObjectId:
    """An id that is a function of ``parts``: inserting the same thing twice collides on ``_id``."""
    return ObjectId(hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()[:12])


class Batch(Model):
    def initialize(self) -> None:
        self.name = "lnassist_batch"
        self.ensureIndices(["folderId", "status", "created", "origin", "scheduleId"])

    def validate(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc


class BatchTask(Model):
    def initialize(self) -> None:
        self.name = "lnassist_batch_task"
        self.ensureIndices(["batchId", "state", "itemId", "queued", "jobId"])

    def validate(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc

    def insert_new(self, tasks: list[dict[str, Any]]) -> int:
        """Insert the tasks whose ids are not there yet; returns how many were new."""
        if not tasks:
            return 0
        try:
            return len(self.collection.insert_many(tasks, ordered=False).inserted_ids)
        except BulkWriteError as exc:
            return exc.details.get("nInserted", 0)

    def state_counts(self, batch_id: Any) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        pipeline = [
            {"$match": {"batchId": ObjectId(batch_id)}},
            {"$group": {"_id": "$state", "n": {"$sum": 1}}},
        ]
        for row in self.collection.aggregate(pipeline):
            counts[row["_id"]] = row["n"]
        return counts


def new_task(
    batch_id: Any, item: dict[str, Any], task_id: ObjectId | None = None, order: int = 0
) -> dict[str, Any]:
    """``order``: the slide's place in its batch (tasks queued at the same time start in this order)."""
    now = utcnow()
    return {
        "order": order,
        "_id": task_id or derived_id("batch", batch_id, item["_id"]),
        "batchId": batch_id,
        "itemId": item["_id"],
        "folderId": item["folderId"],
        "name": item["name"],
        "state": QUEUED,
        "reason": None,
        "attempts": 0,
        "jobId": None,
        "errors": [],
        "created": now,
        "queued": now,
        "started": None,
        "ended": None,
    }


def is_slide(item: dict[str, Any]) -> bool:
    """A large image that is ready (not awaiting a conversion) and no lnassist job's output."""
    large_image = item.get("largeImage") or {}
    return (
        bool(large_image.get("fileId"))
        and not large_image.get("expected")
        and not ((item.get("meta") or {}).get(job_outputs.OUTPUT_OF))
    )


def slides_under(
    folder: dict[str, Any], user: dict[str, Any], recursive: bool, name_filter: str | None
) -> list[dict[str, Any]]:
    """The slides a batch of ``user`` on ``folder`` takes: large images in the folder and, with
    ``recursive``, in every subfolder the user can write (one it can only read is entered but its
    slides are not taken; one it cannot read is not entered), whose names match the shell-style
    ``name_filter`` (case-insensitive); in folder order, then by name."""
    ids, queue = [folder["_id"]], [folder]
    while recursive and queue:
        parent = queue.pop(0)
        for child in Folder().childFolders(parent, "folder", user=user):  # those the user can read
            if Folder().hasAccess(child, user, AccessType.WRITE):
                ids.append(child["_id"])
            queue.append(child)
    order = {fid: index for index, fid in enumerate(ids)}
    pattern = name_filter.lower() if name_filter else None
    items = [
        item
        for item in Item().find({"folderId": {"$in": ids}, "largeImage.fileId": {"$exists": True}})
        if is_slide(item) and (pattern is None or fnmatch.fnmatchcase(item["name"].lower(), pattern))
    ]
    items.sort(key=lambda i: (order[i["folderId"]], i.get("lowerName", i["name"].lower()), str(i["_id"])))
    return items


def create(
    folder: dict[str, Any],
    creator: dict[str, Any],
    run_as: dict[str, Any],
    *,
    origin: str,
    recursive: bool = False,
    name_filter: str | None = None,
    mode: str | None = None,
    force: bool = False,
    batch_id: ObjectId | None = None,
    schedule_id: Any = None,
) -> dict[str, Any] | None:
    """Create a batch over the folder's slides (those ``run_as`` may write), with its Girder job
    owned by ``creator``; its jobs will run as ``run_as``. With ``batch_id`` (a schedule's due time)
    the batch is created at most once: None when it already exists."""
    batch = {
        "_id": batch_id or ObjectId(),
        "folderId": folder["_id"],
        "folderName": folder["name"],
        "origin": origin,
        "scheduleId": schedule_id,
        "recursive": recursive,
        "nameFilter": name_filter,
        "mode": mode,  # None: each slide's folder default
        "force": force,
        "creatorId": creator["_id"],
        "runAsId": run_as["_id"],
        "status": BATCH_CREATING,
        "created": utcnow(),
        "ended": None,
        "jobId": None,
    }
    try:
        Batch().collection.insert_one(batch)
    except DuplicateKeyError:
        return None
    try:
        return populate(batch)
    except Exception:
        # Nothing was started yet: leave no half-made batch for the dispatcher to finish.
        BatchTask().collection.delete_many({"batchId": batch["_id"]})
        Batch().collection.delete_one({"_id": batch["_id"]})
        raise


def populate(batch: dict[str, Any]) -> dict[str, Any]:
    """Give a batch in ``creating`` its tasks (an auto-run batch gets them as slides arrive) and its
    job, then start it. Idempotent, so a batch whose creation a crash interrupted is finished by the
    dispatcher after the restart."""
    from girder.models.user import User

    if batch["origin"] != ORIGIN_AUTORUN:
        folder = Folder().load(batch["folderId"], force=True)
        run_as = User().load(batch["runAsId"], force=True)
        slides = (
            slides_under(folder, run_as, batch["recursive"], batch["nameFilter"]) if folder and run_as else []
        )
        BatchTask().insert_new([new_task(batch["_id"], item, order=i) for i, item in enumerate(slides)])
    ensure_job(batch)
    return start(batch)


def ensure_job(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's own Girder job (created once: its id is derived from the batch's)."""
    from girder.models.user import User

    job_id = derived_id("batch-job", batch["_id"])
    job = Job().load(job_id, force=True, includeLog=False)
    if job is None:
        title = {
            ORIGIN_FOLDER: "LN analysis of folder",
            ORIGIN_AUTORUN: "LN analysis on arrival (auto-run) in folder",
            ORIGIN_SCHEDULE: "Scheduled LN analysis of folder",
        }[batch["origin"]]
        job = Job().createJob(
            title=f"{title} {batch['folderName']}",
            type=JOB_TYPE,
            user=User().load(batch["creatorId"], force=True),
            public=False,
            save=False,
            otherFields={"lnassistBatchId": batch["_id"]},
        )
        job["_id"] = job_id
        job = Job().save(job)
    if job["status"] == JobStatus.INACTIVE:
        job = Job().updateJob(job, status=JobStatus.RUNNING, notify=True)
    if batch.get("jobId") != job_id:
        Batch().update({"_id": batch["_id"]}, {"$set": {"jobId": job_id}})
        batch["jobId"] = job_id
    return job


def start(batch: dict[str, Any]) -> dict[str, Any]:
    if batch["status"] == BATCH_CREATING:
        Batch().update({"_id": batch["_id"], "status": BATCH_CREATING}, {"$set": {"status": BATCH_RUNNING}})
        batch["status"] = BATCH_RUNNING
    return batch


def view(batch: dict[str, Any]) -> dict[str, Any]:
    """A batch as the REST API shows it: what it covers, its state and each task state's count."""
    counts = BatchTask().state_counts(batch["_id"])
    total = sum(counts.values())
    return {
        "id": str(batch["_id"]),
        "folder_id": str(batch["folderId"]),
        "folder_name": batch["folderName"],
        "origin": batch["origin"],
        "schedule_id": str(batch["scheduleId"]) if batch.get("scheduleId") else None,
        "recursive": batch["recursive"],
        "name_filter": batch["nameFilter"],
        "mode": batch["mode"],
        "force": batch["force"],
        "status": batch["status"],
        "created": batch["created"].isoformat() + "Z",
        "ended": batch["ended"].isoformat() + "Z" if batch.get("ended") else None,
        "job_id": str(batch["jobId"]) if batch.get("jobId") else None,
        "total": total,
        "ended_slides": sum(counts[s] for s in ENDED),
        "states": counts,
    }


def _iso(when: Any) -> str | None:
    return when.isoformat(timespec="seconds") + "Z" if when else None


def report_rows(batch: dict[str, Any], user: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per slide of the batch (those in folders ``user`` can read; all without a user), in
    the order they were queued: its status, attempts, job and error, and the counts and model of its
    current LN document now (so relabels after the run show)."""
    tasks = list(BatchTask().find({"batchId": batch["_id"]}, sort=[("created", 1), ("order", 1), ("_id", 1)]))
    if user is not None:
        readable: dict[Any, bool] = {}
        for folder_id in {t["folderId"] for t in tasks}:
            folder = Folder().load(folder_id, force=True)
            readable[folder_id] = folder is not None and Folder().hasAccess(folder, user, AccessType.READ)
        tasks = [t for t in tasks if readable[t["folderId"]]]
    current = queries.current_documents([t["itemId"] for t in tasks])
    docs = [doc for doc in current.values() if doc is not None]
    counts = queries.element_counts(docs)
    rows = []
    for task in tasks:
        doc = current.get(str(task["itemId"]))
        model = (documents.model_of(documents.attributes_of(doc)) or {}) if doc else {}
        seconds = (
            (task["ended"] - task["started"]).total_seconds() if task["started"] and task["ended"] else None
        )
        row = {
            "item_id": str(task["itemId"]),
            "name": task["name"],
            "folder_id": str(task["folderId"]),
            "status": task["state"],
            "reason": task["reason"],
            "attempts": task["attempts"],
            "job_id": str(task["jobId"]) if task["jobId"] else None,
            "positive": 0,
            "negative": 0,
            "total": 0,
            "model_id": model.get("id"),
            "model_version": model.get("version"),
            "started": _iso(task["started"]),
            "ended": _iso(task["ended"]),
            "seconds": round(seconds, 1) if seconds is not None else None,
        }
        if doc is not None:
            row.update(counts[str(doc["_id"])])
        rows.append(row)
    return rows


def report_csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=REPORT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def report(batch: dict[str, Any], user: dict[str, Any] | None = None) -> dict[str, Any]:
    rows = report_rows(batch, user)
    return {
        "batch": view(batch),
        "positive_slides": sum(row["positive"] > 0 for row in rows),
        "positive": sum(row["positive"] for row in rows),
        "negative": sum(row["negative"] for row in rows),
        "rows": rows,
    }
