"""The batch dispatcher: runs the batches' slides as LNAnalysis jobs, a bounded number at a time.

Every ``INTERVAL_S`` the process holding the ``dispatcher`` lease (:mod:`.lease`) takes one step:

1. finishes batches whose creation was interrupted, and follows batches cancelled through their
   Girder job;
2. settles tasks: a task whose job ended becomes ``done`` (once the job's LN document was stored),
   is queued again after an error until ``lnassist.batch_max_attempts`` tries were made (then
   ``failed`` with the CLI's own error line), or ``canceled``; a task left ``starting`` by a process
   that died finds its job by the task id stamped on it, or is queued again (its job canceled when it
   had not reached a worker: it may never have been queued);
3. gives auto-run's new tasks their folder's open auto-run batch, and fires due schedules;
4. starts queued tasks, oldest first, while fewer than ``lnassist.batch_max_in_flight`` batch jobs
   are queued or running, skipping slides that need no analysis (unless the batch forces it);
5. ends batches with nothing left to do: the report goes into the folder's metadata and the batch's
   job ends.

Progress is polled, not only pushed by job events: an event can be missed (Girder down when the
worker reported; see :mod:`.reconcile`), a database row cannot. A person's "Run LN analysis" does not
go through here: it queues in the worker behind at most ``batch_max_in_flight`` batch jobs.
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any

import cherrypy
from girder import events, logger
from girder.constants import AccessType
from girder.exceptions import AccessException, RestException
from girder.models.file import File
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.setting import Setting
from girder.models.user import User
from girder_jobs.constants import JobStatus
from girder_jobs.models.job import Job
from girder_large_image_annotation.models.annotation import Annotation

from lnassist import dsa, registry

from . import autorun, batches, documents, launch, model_versions, queries, schedules, settings, supersede
from .batches import Batch, BatchTask
from .lease import Lease, utcnow

INTERVAL_S = 1
LEASE = "dispatcher"
# SUCCESS can come before HistomicsUI has stored the job's annotation (it ingests the outputs after the
# upload, on another thread); a document still missing this long after is a failed attempt.
INGEST_WAIT_S = 120
LOG_WAIT_S = 10  # log lines can reach Girder after the job's status
REPORT_ROWS_IN_METADATA = 1000  # the whole report is always GET /lnassist/batch/{id}/report
CLAIM_S = 60  # a task "starting" this long was claimed by a step that died (a start takes well under 1 s)
CREATION_S = 120  # a batch "creating" this long lost its process mid-creation (no request takes so long)
_ENDED_JOB = (JobStatus.SUCCESS, JobStatus.ERROR, JobStatus.CANCELED)
_CANCELING = 824  # girder_worker's CustomJobStatus.CANCELING: the worker was asked to stop the job
_CLI_ERROR = re.compile(rf"^(?:{'|'.join(dsa.CLI_NAMES)}): error: .+$", re.MULTILINE)

_step_lock = threading.Lock()
_launching = threading.local()  # the task whose job is being created in this thread


def stamp_job(event: events.Event) -> None:
    """``model.job.save`` of a new job created while a task starts: the job records its task and
    becomes a child of the batch's job, so a restart finds it and Girder lists it under the batch."""
    task = getattr(_launching, "task", None)
    job = event.info
    if task is not None and "_id" not in job:
        job["lnassistTaskId"] = task["_id"]
        job["parentId"] = batches.derived_id("batch-job", task["batchId"])


def error_line(job: dict[str, Any]) -> str:
    """What went wrong, in the CLI's words when it said (``LNAnalysis: error: ...``), else the log's
    last line."""
    log = "".join(job.get("log") or [])
    found = _CLI_ERROR.findall(log)
    if found:
        return found[-1].strip()
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    return lines[-1][-500:] if lines else f"the job ended with status {job.get('status')} and no log"


def current_models() -> dict[str, str] | None:
    """{kind: sha256} of the models an analysis uses now (the registry's defaults, the promoted
    classifier version); None when the registry cannot be read here (then any AI result counts as
    current)."""
    try:
        found = registry.load_registry()
        wanted = {kind: found.entry(kind).sha256 for kind in registry.KINDS}
    except registry.RegistryError:
        return None
    classifier = model_versions.in_use()
    if classifier is not None:
        wanted["classifier"] = classifier["sha256"]
    return wanted


def _current_ln_document(item_id: Any) -> dict[str, Any] | None:
    docs = Annotation().collection.find(
        queries.documents_query([item_id]),
        projection={"_id": True, "created": True, "updated": True, "annotation.attributes": True},
    )
    return documents.current_document(list(docs))


def skip_reason(task: dict[str, Any], batch: dict[str, Any]) -> str | None:
    """Why the task's slide needs no analysis now (None: analyse it)."""
    item = Item().load(task["itemId"], force=True)
    if item is None:
        return "the slide was deleted"
    if not batches.is_slide(item):
        return "the item is no longer a large image"
    doc = _current_ln_document(item["_id"])
    if batch["force"] or doc is None:
        return None
    if not supersede.untouched_ai_document(doc, dsa.DOCUMENT_LN):
        return "its LN result was reviewed or edited by a person (analyse it again with force)"
    file = File().load(item["largeImage"]["fileId"], force=True)
    if file is not None and file.get("created") and doc["created"] < file["created"]:
        return None  # the file's content changed after the result was made
    wanted = current_models()
    found = {m.get("kind"): m.get("sha256") for m in documents.attributes_of(doc).get(dsa.ATTR_MODELS) or []}
    if wanted is None or all(found.get(kind) == sha for kind, sha in wanted.items()):
        model = documents.model_of(documents.attributes_of(doc)) or {}
        return (
            f"already analysed with the current models (classifier {model.get('id')} {model.get('version')})"
        )
    return None


def busy(task: dict[str, Any]) -> bool:
    """Whether another task is analysing the same slide now (this one waits for it to end: the
    outcome, e.g. a result from the current models, decides whether this one still has to run)."""
    query = {"itemId": task["itemId"], "state": {"$in": list(batches.IN_FLIGHT)}, "_id": {"$ne": task["_id"]}}
    return BatchTask().findOne(query) is not None


def _set(task: dict[str, Any], expected_state: str, **fields: Any) -> bool:
    """Move a task on only from the state this step saw (a compare-and-set)."""
    result = BatchTask().collection.update_one(
        {"_id": task["_id"], "state": expected_state}, {"$set": fields}
    )
    task.update(fields)
    return result.modified_count == 1


def _running(task: dict[str, Any], job: dict[str, Any], started: Any) -> None:
    """A started task: its job recorded, one more attempt counted."""
    _set(task, batches.STARTING, state=batches.RUNNING, jobId=job["_id"], attempts=task["attempts"] + 1,
         started=started, ended=None)  # fmt: skip


def _attempt_failed(task: dict[str, Any], message: str) -> None:
    """A failed try: queued again at the back while tries are left, else failed with ``message``."""
    attempts = Setting().get(settings.BATCH_ATTEMPTS)
    errors = [*task.get("errors", []), message]
    if task["attempts"] < attempts:
        _set(task, task["state"], state=batches.QUEUED, queued=utcnow(), jobId=None, errors=errors)
        logger.info(
            "lnassist: slide %s: attempt %d failed (%s); queued again",
            task["itemId"],
            task["attempts"],
            message,
        )
    else:
        _set(task, task["state"], state=batches.FAILED, reason=message, errors=errors, ended=utcnow())


def _document_stored(task: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether the job's LN document was stored: an lnassist LN document on the slide (current or
    superseded since) that records the output file name this job was given."""
    wanted = (job.get("_original_params") or {}).get(dsa.OUTPUT_ANNOTATION)
    if not wanted:
        return True  # not a job this plugin named: nothing to wait for
    for doc in Annotation().collection.find(
        {"itemId": task["itemId"], f"annotation.attributes.{dsa.ATTR_DOCUMENT}": dsa.DOCUMENT_LN},
        projection={f"annotation.attributes.{dsa.ATTR_PARAMETERS}": True},
    ):
        path = (documents.attributes_of(doc).get(dsa.ATTR_PARAMETERS) or {}).get(dsa.OUTPUT_ANNOTATION)
        if isinstance(path, str) and PurePosixPath(path).name == wanted:
            return True
    return False


def _withdraw(job: dict[str, Any]) -> None:
    """Cancel a job that a step which died made: whether its message reached the broker is unknown, as
    girder_worker's Celery jobs stay INACTIVE until a worker starts them (however long they queue).
    Cancelling also revokes the message if it did, so the slide's next job is its only run (once hung a
    batch in CI: Girder was killed between making a job and queuing it, and the job waited for good)."""
    Job().updateJob(job, log="lnassist: the batch step that made this job stopped before queuing it was "
                    "recorded; canceled, the slide is started again\n")  # fmt: skip
    Job().cancelJob(job)


def settle(task: dict[str, Any], batch: dict[str, Any]) -> None:
    """Follow one in-flight task's job."""
    if task["state"] == batches.STARTING:
        if utcnow() - task["claimed"] < timedelta(seconds=CLAIM_S):
            return  # being started right now (by this step, or by a lease holder whose step runs long)
        # A step died between claiming the task and recording its job: find the job it may have made.
        job = Job().findOne({"lnassistTaskId": task["_id"], "created": {"$gte": task["claimed"]}})
        if job is not None and job["status"] == JobStatus.INACTIVE:
            _withdraw(job)
            job = None
        if job is None:
            _set(task, batches.STARTING, state=batches.QUEUED)
            return
        _running(task, job, started=job["created"])
    job = Job().load(task["jobId"], force=True, includeLog=False)  # every second: the log only on an error
    if job is None:
        _attempt_failed(task, f"its job {task['jobId']} was deleted")
        return
    if batch["status"] == batches.BATCH_CANCELED and job["status"] not in _ENDED_JOB:
        if job["status"] != _CANCELING:
            Job().cancelJob(job)
        return
    if job["status"] == JobStatus.SUCCESS:
        if _document_stored(task, job):
            _set(task, batches.RUNNING, state=batches.DONE, reason=None, ended=utcnow())
        elif utcnow() - job["updated"] > timedelta(seconds=INGEST_WAIT_S):
            _attempt_failed(task, "the job succeeded but its LN annotation was never stored")
    elif job["status"] == JobStatus.ERROR:
        job = Job().load(job["_id"], force=True, includeLog=True)
        log = "".join(job.get("log") or [])
        if not _CLI_ERROR.search(log) and utcnow() - job["updated"] < timedelta(seconds=LOG_WAIT_S):
            return  # the worker may still be sending the container's output, with the CLI's message
        _attempt_failed(task, error_line(job))
    elif job["status"] == JobStatus.CANCELED:
        if batch["status"] == batches.BATCH_CANCELED:
            _set(
                task, batches.RUNNING, state=batches.CANCELED, reason="the batch was canceled", ended=utcnow()
            )
        else:
            _set(
                task,
                batches.RUNNING,
                state=batches.FAILED,
                reason=f"its job {job['_id']} was canceled",
                ended=utcnow(),
            )


def start_task(task: dict[str, Any], batch: dict[str, Any], cli: Any) -> None:
    """Create the task's LNAnalysis job as the batch's run-as user."""
    item = Item().load(task["itemId"], force=True)
    folder = Folder().load(item["folderId"], force=True)
    run_as = User().load(batch["runAsId"], force=True)
    if run_as is None or not Folder().hasAccess(folder, run_as, AccessType.WRITE):
        who = run_as["login"] if run_as else f"user {batch['runAsId']} (deleted)"
        _set(
            task,
            batches.STARTING,
            state=batches.FAILED,
            ended=utcnow(),
            reason=f"{who} may not write folder {folder['name']!r}, where the results go",
        )
        return
    mode = batch["mode"] or settings.default_mode(folder)
    threshold = Setting().get(settings.THRESHOLDS)[mode]
    try:
        classifier = model_versions.classifier_parameter(run_as)
    except AccessException as exc:
        _set(task, batches.STARTING, state=batches.FAILED, ended=utcnow(), reason=str(exc))
        return
    params = launch.job_parameters(item, mode, threshold, launch.run_stamp(), classifier)
    _launching.task = task
    try:
        job = launch.launch_in_background(cli, params, run_as)
    finally:
        _launching.task = None
    _running(task, job, started=utcnow())


def claim_next(batch_ids: list[Any], passed_over: list[Any]) -> dict[str, Any] | None:
    from pymongo import ReturnDocument

    return BatchTask().collection.find_one_and_update(
        {"state": batches.QUEUED, "batchId": {"$in": batch_ids}, "_id": {"$nin": passed_over}},
        {"$set": {"state": batches.STARTING, "claimed": utcnow()}},
        sort=[("queued", 1), ("order", 1), ("_id", 1)],
        return_document=ReturnDocument.AFTER,
    )


def fill(running: dict[Any, dict[str, Any]]) -> None:
    """Start queued tasks while fewer than the bound are in flight."""
    bound = Setting().get(settings.BATCH_IN_FLIGHT)
    in_flight = BatchTask().collection.count_documents({"state": {"$in": list(batches.IN_FLIGHT)}})
    cli = None
    passed_over: list[Any] = []  # busy slides, left queued for a later step
    while in_flight < bound and running:
        if not Lease().acquire(LEASE):  # renewed before each start: a long step keeps it or stops
            return
        task = claim_next(list(running), passed_over)
        if task is None:
            return
        if busy(task):
            _set(task, batches.STARTING, state=batches.QUEUED)
            passed_over.append(task["_id"])
            continue
        batch = running[task["batchId"]]
        reason = skip_reason(task, batch)
        if reason is not None:
            _set(task, batches.STARTING, state=batches.SKIPPED, reason=reason, ended=utcnow())
            continue
        try:
            cli = cli or launch.image_cli(Setting().get(settings.ANALYSIS_IMAGE), None)
            start_task(task, batch, cli)
        except RestException as exc:  # nothing to run with (no image configured): the slide waits
            _set(task, batches.STARTING, state=batches.QUEUED)
            logger.warning("lnassist: batches wait: %s", exc.message)
            return
        except Exception as exc:
            logger.exception("lnassist: starting the analysis of slide %s failed", task["itemId"])
            task["state"] = batches.STARTING
            _attempt_failed(task, f"the job could not be started: {exc}")
            continue
        in_flight += task["state"] in batches.IN_FLIGHT


def finish(batch: dict[str, Any]) -> None:
    """End a batch with nothing left in flight or queued: its report and its job."""
    counts = BatchTask().state_counts(batch["_id"])
    if any(counts[state] for state in (batches.QUEUED, *batches.IN_FLIGHT)):
        return
    status = batches.BATCH_DONE if batch["status"] == batches.BATCH_RUNNING else batch["status"]
    Batch().update({"_id": batch["_id"]}, {"$set": {"status": status, "ended": utcnow(), "reported": True}})
    batch.update(status=status, ended=utcnow(), reported=True)
    report = batches.report(batch)
    folder = Folder().load(batch["folderId"], force=True)
    if folder is not None:
        rows = report["rows"]
        Folder().setMetadata(
            folder,
            {
                batches.REPORT_META: {
                    **{key: value for key, value in report.items() if key != "rows"},
                    "rows": rows[:REPORT_ROWS_IN_METADATA],
                    "rows_truncated": len(rows) > REPORT_ROWS_IN_METADATA,
                }
            },
        )
    job = Job().load(batch["jobId"], force=True, includeLog=False) if batch.get("jobId") else None
    if job is not None and job["status"] not in _ENDED_JOB:
        summary = ", ".join(f"{counts[state]} {state}" for state in batches.ENDED if counts[state])
        Job().updateJob(
            job,
            log=f"ended: {summary or 'no slides'}\n",
            status=JobStatus.SUCCESS,
            progressTotal=sum(counts.values()),
            progressCurrent=sum(counts.values()),
        )


def progress(batch: dict[str, Any]) -> None:
    counts = BatchTask().state_counts(batch["_id"])
    total, ended = sum(counts.values()), sum(counts[state] for state in batches.ENDED)
    if batch.get("progress") == [ended, total] or not batch.get("jobId"):
        return
    Batch().update({"_id": batch["_id"]}, {"$set": {"progress": [ended, total]}})
    job = Job().load(batch["jobId"], force=True, includeLog=False)
    if job is not None and job["status"] == JobStatus.RUNNING:
        Job().updateJob(
            job, progressTotal=total, progressCurrent=ended, progressMessage=f"{ended} of {total} slides"
        )


def cancel(batch: dict[str, Any]) -> None:
    """Cancel a batch: its queued slides now, its running jobs through the worker (their tasks end
    when the jobs do), and its Girder job."""
    Batch().update(
        {"_id": batch["_id"], "status": {"$in": [batches.BATCH_CREATING, batches.BATCH_RUNNING]}},
        {"$set": {"status": batches.BATCH_CANCELED}},
    )
    batch["status"] = batches.BATCH_CANCELED
    BatchTask().update(
        {"batchId": batch["_id"], "state": batches.QUEUED},
        {"$set": {"state": batches.CANCELED, "reason": "the batch was canceled", "ended": utcnow()}},
    )
    for task in BatchTask().find({"batchId": batch["_id"], "state": batches.RUNNING}):
        job = Job().load(task["jobId"], force=True, includeLog=False)
        if job is not None and job["status"] not in _ENDED_JOB:
            Job().cancelJob(job)
    job = Job().load(batch["jobId"], force=True, includeLog=False) if batch.get("jobId") else None
    if job is not None and job["status"] not in _ENDED_JOB:
        Job().updateJob(job, log="canceled\n", status=JobStatus.CANCELED)


def step() -> None:
    """One dispatcher step (see the module docstring); a no-op unless this process holds the lease."""
    if not _step_lock.acquire(blocking=False):
        return
    try:
        if not Lease().acquire(LEASE):
            return
        # A batch still "creating" this long after it was made lost its process mid-creation.
        interrupted = {
            "status": batches.BATCH_CREATING,
            "created": {"$lt": utcnow() - timedelta(seconds=CREATION_S)},
        }
        for batch in Batch().find(interrupted):
            try:
                batches.populate(batch)
            except Exception:  # this batch only: the others go on
                logger.exception("lnassist: finishing the creation of batch %s failed", batch["_id"])
        for batch in Batch().find({"status": batches.BATCH_RUNNING, "jobId": {"$ne": None}}):
            job = Job().load(batch["jobId"], force=True, includeLog=False)
            if job is not None and job["status"] == JobStatus.CANCELED:
                cancel(batch)
        open_batches = {b["_id"]: b for b in Batch().find({"reported": {"$ne": True}})}
        for task in BatchTask().find({"state": {"$in": list(batches.IN_FLIGHT)}}):
            batch = open_batches.get(task["batchId"]) or Batch().load(task["batchId"])
            settle(task, batch)
        autorun.attach_new_tasks()
        schedules.fire_due()
        running = {b["_id"]: b for b in Batch().find({"status": batches.BATCH_RUNNING})}
        fill(running)
        for batch in Batch().find({"reported": {"$ne": True}, "status": {"$ne": batches.BATCH_CREATING}}):
            progress(batch)
            finish(batch)
    finally:
        _step_lock.release()


def _tick() -> None:
    try:
        step()
    except Exception:  # the database may be briefly away: try again at the next tick
        logger.exception("lnassist: a batch dispatcher step failed")


def start() -> None:
    events.bind("model.job.save", "lnassist.dispatch", stamp_job)
    cherrypy.process.plugins.Monitor(cherrypy.engine, _tick, frequency=INTERVAL_S).subscribe()
    cherrypy.engine.subscribe("stop", lambda: Lease().release(LEASE))
