"""Admin schedules: a folder analysed as a batch at cron times or at a fixed interval.

A schedule (collection ``lnassist_schedule``) names a folder, the batch's options, and either a cron
expression (UTC; parsed by croniter) or an interval in seconds, and holds its ``nextRunAt``. The
dispatcher (:mod:`.dispatch`, in the one process holding the lease) fires a schedule when
``nextRunAt`` has passed: the batch's id is derived from the schedule and that due time, so a due
time makes one batch even if two processes or a crash and restart get there; then ``nextRunAt``
moves to the first due time after *now*, so a server that was down over several due times catches
up with one run, not a burst. Scheduled batches run as the service user (:mod:`.autorun`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from girder.exceptions import ValidationException
from girder.models.folder import Folder
from girder.models.model_base import Model
from girder.models.user import User

from lnassist import constants

from . import batches
from .lease import utcnow

MIN_INTERVAL_S = 10


class Schedule(Model):
    def initialize(self) -> None:
        self.name = "lnassist_schedule"
        self.ensureIndices(["folderId", "enabled", "nextRunAt"])

    def validate(self, doc: dict[str, Any]) -> dict[str, Any]:
        cron, interval_s = doc.get("cron"), doc.get("intervalS")
        if (cron is None) == (interval_s is None):
            raise ValidationException(
                "give either a cron expression or an interval in seconds, not both", "cron"
            )
        if cron is not None and not (isinstance(cron, str) and croniter.is_valid(cron)):
            raise ValidationException(
                f"not a cron expression: {cron!r} (e.g. '0 2 * * *': 02:00 UTC daily)", "cron"
            )
        if interval_s is not None and not (
            isinstance(interval_s, int) and not isinstance(interval_s, bool) and interval_s >= MIN_INTERVAL_S
        ):
            raise ValidationException(
                f"interval must be a whole number of seconds >= {MIN_INTERVAL_S}", "interval"
            )
        if doc.get("mode") is not None and doc["mode"] not in constants.MODES:
            raise ValidationException(f"mode must be one of {', '.join(constants.MODES)}", "mode")
        if Folder().load(doc["folderId"], force=True) is None:
            raise ValidationException(f"no folder {doc['folderId']}", "folderId")
        return doc


def next_due(schedule: dict[str, Any], after: datetime) -> datetime:
    """The schedule's first due time strictly after ``after`` (naive UTC)."""
    if schedule.get("cron") is not None:
        return croniter(schedule["cron"], after).get_next(datetime)
    return after + timedelta(seconds=schedule["intervalS"])


def view(schedule: dict[str, Any]) -> dict[str, Any]:
    last = batches.Batch().load(schedule["lastBatchId"]) if schedule.get("lastBatchId") else None
    return {
        "id": str(schedule["_id"]),
        "name": schedule["name"],
        "folder_id": str(schedule["folderId"]),
        "cron": schedule.get("cron"),
        "interval_s": schedule.get("intervalS"),
        "mode": schedule.get("mode"),
        "recursive": schedule["recursive"],
        "name_filter": schedule.get("nameFilter"),
        "force": schedule["force"],
        "enabled": schedule["enabled"],
        "next_run": schedule["nextRunAt"].isoformat(timespec="seconds") + "Z"
        if schedule["enabled"]
        else None,
        "last_run": schedule["lastRunAt"].isoformat(timespec="seconds") + "Z"
        if schedule.get("lastRunAt")
        else None,
        "last_batch": batches.view(last) if last else None,
    }


def run(schedule: dict[str, Any], batch_id: Any = None) -> dict[str, Any] | None:
    """Start the schedule's batch (None when the batch ``batch_id`` already exists)."""
    from .autorun import service_user

    folder = Folder().load(schedule["folderId"], force=True)
    creator = User().load(schedule["creatorId"], force=True)
    run_as = service_user()
    return batches.create(
        folder,
        creator or run_as,
        run_as,
        origin=batches.ORIGIN_SCHEDULE,
        recursive=schedule["recursive"],
        name_filter=schedule.get("nameFilter"),
        mode=schedule.get("mode"),
        force=schedule["force"],
        batch_id=batch_id,
        schedule_id=schedule["_id"],
    )


def fire_due() -> list[Any]:
    """Start the batch of every enabled schedule whose due time has passed; returns the batch ids."""
    now = utcnow()
    fired = []
    for schedule in Schedule().find({"enabled": True, "nextRunAt": {"$lte": now}}):
        due = schedule["nextRunAt"]
        batch_id = batches.derived_id("schedule", schedule["_id"], due.isoformat())
        if Folder().load(schedule["folderId"], force=True) is not None:
            run(schedule, batch_id)
            fired.append(batch_id)
        Schedule().collection.update_one(
            {"_id": schedule["_id"], "nextRunAt": due},
            {
                "$set": {
                    "nextRunAt": next_due(schedule, now),
                    "lastRunAt": now,
                    "lastDue": due,
                    "lastBatchId": batch_id,
                }
            },
        )
    return fired
