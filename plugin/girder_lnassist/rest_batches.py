"""The ``/lnassist`` endpoints of batches, auto-run and schedules (mixed into the resource of
:mod:`.rest`): start, follow, report and cancel folder batches; switch auto-run; admins' schedules.

Access: a batch is visible to whoever can read its folder (report rows only for the subfolders they
can read) and cancelled by whoever can write it; the auto-run switch needs admin access on the
folder; schedules are for site admins.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import getApiUrl, setContentDisposition, setRawResponse, setResponseHeader
from girder.constants import AccessType, SortDir, TokenScope
from girder.exceptions import RestException
from girder.models.folder import Folder
from girder.models.setting import Setting

from lnassist import constants

from . import autorun, batches, dispatch, launch, schedules, settings
from .batches import Batch
from .lease import utcnow
from .schedules import Schedule

MODE_HELP = "screening or general (default: each slide's folder default)."


def _folder_of(batch: dict[str, Any], user: dict[str, Any], level: int) -> dict[str, Any]:
    folder = Folder().load(batch["folderId"], force=True)
    if folder is None:
        raise RestException("the batch's folder was deleted", 400)
    Folder().requireAccess(folder, user, level)
    return folder


def _worker_api_url() -> None:
    # Jobs started by the dispatcher, outside any request, need the URL the worker reaches Girder at
    # (slicer_cli_web's own batch records it the same way).
    if not Setting().get("worker.api_url"):
        Setting().set("worker.api_url", getApiUrl())


def _schedule_params(description: Description, required: bool) -> Description:
    return (
        description.param(
            "cron", "A cron expression in UTC (e.g. '0 2 * * *'); or give interval.", required=False
        )
        .param(
            "interval",
            f"Seconds between runs (>= {schedules.MIN_INTERVAL_S}); or give cron.",
            dataType="integer",
            required=False,
        )
        .param("mode", MODE_HELP, required=False, enum=list(constants.MODES))
        .param(
            "recursive",
            "Include subfolders.",
            dataType="boolean",
            required=False,
            default=True if required else None,
        )
        .param(
            "force",
            "Analyse slides that need no analysis, too.",
            dataType="boolean",
            required=False,
            default=False if required else None,
        )
        .param("name", "Only slides whose names match this shell-style pattern.", required=False)
        .param(
            "enabled",
            "Whether it fires.",
            dataType="boolean",
            required=False,
            default=True if required else None,
        )
        .errorResponse("A bad cron expression, interval, mode or folder.", 400)
        .errorResponse("You are not a system administrator.", 403)
    )


class BatchRoutes:
    def route_batches(self) -> None:
        self.route("POST", ("folder", ":id", "analyze"), self.analyze_folder)
        self.route("GET", ("batch",), self.list_batches)
        self.route("GET", ("batch", ":id"), self.get_batch)
        self.route("GET", ("batch", ":id", "report"), self.batch_report)
        self.route("POST", ("batch", ":id", "cancel"), self.cancel_batch)
        self.route("GET", ("folder", ":id", "autorun"), self.get_autorun)
        self.route("PUT", ("folder", ":id", "autorun"), self.set_autorun)
        self.route("GET", ("schedule",), self.list_schedules)
        self.route("POST", ("schedule",), self.create_schedule)
        self.route("PUT", ("schedule", ":id"), self.update_schedule)
        self.route("DELETE", ("schedule", ":id"), self.delete_schedule)
        self.route("POST", ("schedule", ":id", "run"), self.run_schedule)

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description('"Run LN analysis on this folder": a batch over its slides, run as you.')
        .notes(
            "Every large image in the folder (with recursive, also in the subfolders you can write), "
            "whose name matches the filter, is analysed by the LNAnalysis CLI as you, at most "
            "lnassist.batch_max_in_flight jobs at a time. Skipped unless force: slides whose current "
            "AI result came from the current models (and whose file did not change since), and "
            "slides whose result a person reviewed or edited. A failed slide is tried again up to "
            "lnassist.batch_max_attempts times. The batch survives Girder restarts; its Girder job "
            "shows the progress, and cancelling that job (or POST /lnassist/batch/{id}/cancel) "
            "cancels its queued and running jobs. Answers the batch."
        )
        .modelParam("id", "The folder.", model=Folder, level=AccessType.WRITE)
        .param(
            "recursive",
            "Include subfolders you can write.",
            dataType="boolean",
            default=False,
            required=False,
        )
        .param(
            "force",
            "Analyse slides that need no analysis, too.",
            dataType="boolean",
            default=False,
            required=False,
        )
        .param("mode", MODE_HELP, required=False, enum=list(constants.MODES))
        .param(
            "name",
            "Only slides whose names match this shell-style pattern (e.g. '*.svs'; case-insensitive).",
            required=False,
        )
        .errorResponse("ID was invalid; no lnassist image is registered or configured.", 400)
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Write access was denied on the folder.", 403)
    )
    def analyze_folder(
        self, folder: dict[str, Any], recursive: bool, force: bool, mode: str | None, name: str | None
    ) -> dict[str, Any]:
        user = self.getCurrentUser()
        launch.image_cli(Setting().get(settings.ANALYSIS_IMAGE), user)
        _worker_api_url()
        batch = batches.create(
            folder,
            user,
            user,
            origin=batches.ORIGIN_FOLDER,
            recursive=recursive,
            name_filter=name or None,
            mode=mode,
            force=force,
        )
        return batches.view(batch)

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("Batches on folders you can read, newest first.")
        .param("folderId", "Only this folder's batches.", required=False)
        .param(
            "status",
            "Only batches in this state.",
            required=False,
            enum=[batches.BATCH_RUNNING, batches.BATCH_DONE, batches.BATCH_CANCELED],
        )
        .pagingParams(defaultSort="created", defaultSortDir=SortDir.DESCENDING)
        .errorResponse("You are not logged in.", 401)
    )
    def list_batches(
        self, folderId: str | None, status: str | None, limit: int, offset: int, sort: list
    ) -> list[dict[str, Any]]:
        user = self.getCurrentUser()
        query: dict[str, Any] = {}
        if folderId:
            query["folderId"] = Folder().load(folderId, user=user, level=AccessType.READ, exc=True)["_id"]
        if status:
            query["status"] = status
        readable: dict[Any, bool] = {}
        found = []
        for batch in Batch().find(query, sort=sort):
            if batch["folderId"] not in readable:
                folder = Folder().load(batch["folderId"], force=True)
                readable[batch["folderId"]] = folder is not None and Folder().hasAccess(
                    folder, user, AccessType.READ
                )
            if readable[batch["folderId"]]:
                found.append(batch)
        return [batches.view(batch) for batch in found[offset : offset + limit if limit else None]]

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("A batch: what it covers, its state and how many of its slides are in each state.")
        .modelParam("id", "The batch.", model=Batch, destName="batch")
        .errorResponse("ID was invalid.", 400)
        .errorResponse("Read access was denied on the batch's folder.", 403)
    )
    def get_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        _folder_of(batch, self.getCurrentUser(), AccessType.READ)
        return batches.view(batch)

    @access.user(scope=TokenScope.DATA_READ, cookie=True)
    @autoDescribeRoute(
        Description(
            "A batch's report: one row per slide with its status, attempts, job, error, counts, model "
            "and time."
        )
        .notes(
            "Counts are those of each slide's current LN document now. format=csv downloads the rows. "
            "Slides in subfolders you cannot read are left out."
        )
        .modelParam("id", "The batch.", model=Batch, destName="batch")
        .param("format", "json or csv.", required=False, default="json", enum=["json", "csv"])
        .errorResponse("ID was invalid.", 400)
        .errorResponse("Read access was denied on the batch's folder.", 403)
    )
    def batch_report(self, batch: dict[str, Any], format: str) -> Any:
        user = self.getCurrentUser()
        folder = _folder_of(batch, user, AccessType.READ)
        report = batches.report(batch, user)
        if format == "csv":
            setResponseHeader("Content-Type", "text/csv")
            setContentDisposition(f"{folder['name']}-lnassist-batch-{batch['_id']}.csv")
            setRawResponse()
            return batches.report_csv(report["rows"]).encode()
        return report

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Cancel a batch: its queued slides and its running jobs.")
        .modelParam("id", "The batch.", model=Batch, destName="batch")
        .errorResponse("ID was invalid; the batch has ended.", 400)
        .errorResponse("Write access was denied on the batch's folder.", 403)
    )
    def cancel_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        _folder_of(batch, self.getCurrentUser(), AccessType.WRITE)
        if batch["status"] not in (batches.BATCH_CREATING, batches.BATCH_RUNNING):
            raise RestException(f"the batch has ended ({batch['status']})", 400)
        dispatch.cancel(batch)
        return batches.view(batch)

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description(
            "Whether slides arriving in the folder are analysed automatically, and where that is set."
        )
        .modelParam("id", "The folder.", model=Folder, level=AccessType.READ)
        .errorResponse("Read access was denied on the folder.", 403)
    )
    def get_autorun(self, folder: dict[str, Any]) -> dict[str, Any]:
        return autorun.view(folder)

    @access.user(scope=TokenScope.DATA_OWN)
    @autoDescribeRoute(
        Description("Switch auto-run on or off for the folder and the folders below it (folder admins).")
        .notes(
            "With auto-run on, every large image that arrives in the folder or below it (upload, import, "
            "move or copy in, a finished conversion, new file content) is analysed once, in an auto-run "
            "batch of the folder, as the service user (lnassist.service_user), which is given write "
            "access to the folder and its subfolders. A subfolder's own switch overrides its parent's."
        )
        .modelParam("id", "The folder.", model=Folder, level=AccessType.ADMIN)
        .param("enabled", "On or off.", dataType="boolean")
        .param("mode", MODE_HELP, required=False, enum=list(constants.MODES))
        .errorResponse("A bad mode; the service user is an admin.", 400)
        .errorResponse("Admin access was denied on the folder.", 403)
    )
    def set_autorun(self, folder: dict[str, Any], enabled: bool, mode: str | None) -> dict[str, Any]:
        _worker_api_url()
        return autorun.set_switch(folder, self.getCurrentUser(), enabled, mode)

    @access.admin(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("Every schedule with its next and last run and the last run's batch.").errorResponse(
            "You are not a system administrator.", 403
        )
    )
    def list_schedules(self) -> list[dict[str, Any]]:
        return [schedules.view(s) for s in Schedule().find({}, sort=[("created", 1)])]

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        _schedule_params(
            Description("Define a schedule: the folder analysed as a batch at cron times or every interval.")
            .notes(
                "Scheduled batches run as the service user (lnassist.service_user), which is given write "
                "access to the folder and its subfolders."
            )
            .modelParam(
                "folderId",
                "The folder.",
                model=Folder,
                level=AccessType.READ,
                paramType="formData",
                destName="folder",
            )
            .param("title", "A name for the schedule.", required=False)
            .param(
                "first_run",
                "When it first fires (ISO 8601; UTC unless it says otherwise); default: its "
                "first due time from now.",
                required=False,
                dataType="dateTime",
            ),
            required=True,
        )
    )
    def create_schedule(
        self,
        folder: dict[str, Any],
        title: str | None,
        first_run: datetime | None,
        cron: str | None,
        interval: int | None,
        mode: str | None,
        recursive: bool,
        force: bool,
        name: str | None,
        enabled: bool,
    ) -> dict[str, Any]:
        user = self.getCurrentUser()
        autorun.grant(folder, autorun.service_user())
        _worker_api_url()
        now = utcnow()
        schedule = {
            "name": title or f"LN analysis of {folder['name']}",
            "folderId": folder["_id"],
            "cron": cron or None,
            "intervalS": interval,
            "mode": mode,
            "recursive": recursive,
            "force": force,
            "nameFilter": name or None,
            "enabled": enabled,
            "creatorId": user["_id"],
            "created": now,
            "lastRunAt": None,
            "lastBatchId": None,
        }
        schedule["nextRunAt"] = schedules.next_due(Schedule().validate(schedule), now)
        if first_run is not None:
            offset = first_run.utcoffset()
            schedule["nextRunAt"] = first_run.replace(tzinfo=None) - (offset or timedelta(0))
        return schedules.view(Schedule().save(schedule))

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        _schedule_params(
            Description(
                "Change a schedule (parameters left out stay as they are); its next run is recomputed."
            )
            .modelParam("id", "The schedule.", model=Schedule, destName="schedule")
            .param("title", "A name for the schedule.", required=False),
            required=False,
        )
    )
    def update_schedule(
        self,
        schedule: dict[str, Any],
        title: str | None,
        cron: str | None,
        interval: int | None,
        mode: str | None,
        recursive: bool | None,
        force: bool | None,
        name: str | None,
        enabled: bool | None,
    ) -> dict[str, Any]:
        if cron:
            schedule.update(cron=cron, intervalS=None)
        elif interval is not None:
            schedule.update(cron=None, intervalS=interval)
        changes = {
            "name": title,
            "mode": mode,
            "recursive": recursive,
            "force": force,
            "nameFilter": name,
            "enabled": enabled,
        }
        schedule.update({key: value for key, value in changes.items() if value is not None})
        schedule["nextRunAt"] = schedules.next_due(Schedule().validate(schedule), utcnow())
        return schedules.view(Schedule().save(schedule))

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Delete a schedule (its batches and their reports stay).")
        .modelParam("id", "The schedule.", model=Schedule, destName="schedule")
        .errorResponse("You are not a system administrator.", 403)
    )
    def delete_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        Schedule().remove(schedule)
        return {"deleted": str(schedule["_id"])}

    @access.admin(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Run a schedule's batch now (its next due time stays).")
        .modelParam("id", "The schedule.", model=Schedule, destName="schedule")
        .errorResponse("You are not a system administrator.", 403)
    )
    def run_schedule(self, schedule: dict[str, Any]) -> dict[str, Any]:
        _worker_api_url()
        return batches.view(schedules.run(schedule))
