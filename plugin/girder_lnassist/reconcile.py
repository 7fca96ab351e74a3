"""lnassist jobs whose end Girder never heard: ended from the worker's own record.

girder_worker reports a job's end to Girder over REST. When Girder is down at that moment (restarted,
upgraded, crashed), the report is lost and the job would show "running" for good. The worker's Celery
result backend still knows how the task ended, so once Girder runs (and every ``INTERVAL_S`` seconds
after) each lnassist Slicer CLI job that Girder still thinks queued or running, whose Celery task has
ended, is ended in Girder too: SUCCESS when the task succeeded (its outputs were uploaded), ERROR
otherwise, with a log line saying what happened and to run the analysis again.
"""

from __future__ import annotations

from typing import Any

import cherrypy
from girder import logger
from girder.exceptions import ValidationException

from lnassist import dsa

INTERVAL_S = 10
_ENDED = {"SUCCESS", "FAILURE", "REVOKED"}  # Celery states of a task that will do nothing more
# Girder job statuses before an end: inactive, queued, running and girder_worker's own (820-824).
_UNFINISHED = (0, 1, 2, 820, 821, 822, 823, 824)


def is_lnassist_job(job: dict[str, Any]) -> bool:
    return str(job.get("type", "")).rpartition("#")[2] in dsa.CLI_NAMES


def reconcile() -> list[Any]:
    """End the unfinished lnassist jobs whose Celery task has ended; returns their ids."""
    from girder_jobs.constants import JobStatus
    from girder_jobs.models.job import Job
    from girder_worker.girder_plugin.celery import getCeleryApp

    query = {"status": {"$in": list(_UNFINISHED)}, "celeryTaskId": {"$exists": True}}
    ended = []
    for job in Job().find(query):
        if not is_lnassist_job(job):
            continue
        state = getCeleryApp().AsyncResult(job["celeryTaskId"]).state
        if state not in _ENDED:
            continue
        if state == "SUCCESS":
            status, log = JobStatus.SUCCESS, "the worker finished this job while Girder could not hear it\n"
        else:
            status = JobStatus.ERROR
            log = (
                f"lnassist: the worker ended this job ({state}) while Girder could not hear it (restarted?); "
                "its results were not stored: run the analysis again\n"
            )
        try:
            # girder_worker's transitions end a job only from RUNNING (or its own later states): a job
            # whose start Girder never heard goes through RUNNING first.
            if job["status"] in (JobStatus.INACTIVE, JobStatus.QUEUED):
                job = Job().updateJob(job, status=JobStatus.RUNNING)
            Job().updateJob(job, log=log, status=status)
        except ValidationException:  # another transition got there first: the job has ended
            logger.warning("lnassist: job %s could not be ended as %s", job["_id"], status)
            continue
        ended.append(job["_id"])
    if ended:
        logger.info("lnassist: ended %d job(s) the worker had finished unheard: %s", len(ended), ended)
    return ended


def _tick() -> None:
    try:
        reconcile()
    except Exception:  # the broker or backend may be briefly away: try again at the next tick
        logger.exception("lnassist: reconciling jobs with the worker failed")


def start() -> None:
    """Reconcile every INTERVAL_S seconds while Girder's engine runs (also right after it starts)."""
    cherrypy.process.plugins.Monitor(cherrypy.engine, _tick, frequency=INTERVAL_S).subscribe()
