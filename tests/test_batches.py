"""Analysis without a click, for real: folder batches, auto-run on import and schedules in the DSA
stack (Girder, girder_worker, the lnassist image), under load and across Girder crashes.

Truth: which slides were put where (and which were analysed before), the bound set in
``lnassist.batch_max_in_flight``, the CLI's own error for a slide it refuses, and the jobs Girder
holds: one LNAnalysis job per slide and analysis (found by its title, "... on <slide name>"; every
slide here has a unique name), each a child of its batch's job. Slides are small (2000² px
synthetic, one node), so that a job takes seconds.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import girder_client
import numpy as np
import pytest
import tifffile
from bson import ObjectId
from docker_helpers import docker_test
from dsa_helpers import (
    JOB_CANCELED,
    JOB_INACTIVE,
    JOB_SUCCESS,
    Dsa,
    database,
    drop_queued_messages,
    http_status,
    job_log,
    lnassist_documents,
    make_user,
    stack,
    upload_slide,
    wait_until,
)

from lnassist.dsa import CLI_ANALYSIS, DOCUMENT_LN
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

BOUND = 2
ATTEMPTS = 2
BATCH_TIMEOUT_S = 900
# Girder job statuses of a job not ended: inactive, queued, running and girder_worker's own.
UNFINISHED = [0, 1, 2, 820, 821, 822, 823, 824]
JOB_RUNNING = 2


@pytest.fixture(scope="module")
def env(configured: Dsa):
    """The bound and the attempts this module counts on (put back afterwards), and a pathologist
    with write access to the test collection's folder but no admin rights."""
    keys = {"lnassist.batch_max_in_flight": BOUND, "lnassist.batch_max_attempts": ATTEMPTS}
    before = {key: configured.gc.get("system/setting", parameters={"key": key}) for key in keys}
    for key, value in keys.items():
        configured.gc.put("system/setting", parameters={"key": key, "value": value})
    path = make_user(configured.gc, configured.gc.urlBase.rstrip("/"), f"lnbatch{uuid.uuid4().hex[:8]}")
    me = path.get("user/me")
    folder = configured.gc.get(f"folder/{configured.folder_id}")
    access = configured.gc.get(f"folder/{folder['_id']}/access")
    access["users"].append({"id": me["_id"], "level": 1})
    configured.gc.put(f"folder/{folder['_id']}/access", parameters={"access": json.dumps(access)})
    try:
        yield configured, path
    finally:
        for key, value in before.items():
            configured.gc.put("system/setting", parameters={"key": key, "value": value})


@pytest.fixture(scope="module")
def slide_files(tmp_path_factory) -> list[Path]:
    work = tmp_path_factory.mktemp("batch-slides")
    paths = []
    for seed in range(3):
        paths.append(work / f"slide-{seed}.tiff")
        write_slide(paths[-1], LayoutConfig(2000, 2000, seed=20 + seed, categories=("negative",)), workers=1)
    bad = work / "no-resolution.tiff"  # the CLI refuses a slide without a resolution
    tifffile.imwrite(bad, np.full((1024, 1024, 3), 200, np.uint8), tile=(256, 256), photometric="rgb")
    paths.append(bad)
    return paths


def new_folder(gc: girder_client.GirderClient, parent: str, name: str) -> dict:
    return gc.createFolder(parent, f"{name}-{uuid.uuid4().hex[:6]}")


def upload(dsa: Dsa, folder_id: str, path: Path, name: str) -> dict:
    """Upload ``path`` as ``name`` (unique, so its jobs can be found by title)."""
    named = path.parent / "named" / name
    named.parent.mkdir(exist_ok=True)
    named.unlink(missing_ok=True)
    named.hardlink_to(path)
    return upload_slide(replace(dsa, folder_id=folder_id), named)


class JobWatch:
    """Samples every LNAnalysis job Girder has not ended, in a thread, while a test waits: the
    most batch jobs (children of a batch job) unfinished at once."""

    def __init__(self, gc: girder_client.GirderClient) -> None:
        self.gc, self.most, self._stop = gc, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                active = self.gc.get("job/all", parameters={"limit": 0, "statuses": json.dumps(UNFINISHED)})
            except (girder_client.HttpError, OSError):  # Girder restarting: sample again when it is back
                active = []
            batch_jobs = [j for j in active if j["type"].endswith(f"#{CLI_ANALYSIS}") and j.get("parentId")]
            self.most = max(self.most, len(batch_jobs))
            self._stop.wait(0.3)

    def __enter__(self) -> JobWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def analysis_jobs(gc: girder_client.GirderClient) -> list[dict]:
    return [j for j in gc.get("job/all", parameters={"limit": 0}) if j["type"].endswith(f"#{CLI_ANALYSIS}")]


def jobs_per_name(gc: girder_client.GirderClient, names: list[str]) -> Counter:
    counts = Counter(dict.fromkeys(names, 0))
    for job in analysis_jobs(gc):
        name = job["title"].rpartition(" on ")[2]
        if name in counts:
            counts[name] += 1
    return counts


def wait_for_batch(gc: girder_client.GirderClient, batch_id: str, timeout_s: float = BATCH_TIMEOUT_S) -> dict:
    def ended():
        try:
            batch = gc.get(f"lnassist/batch/{batch_id}")
        except (girder_client.HttpError, OSError):
            return None
        return batch if batch["ended"] else None  # a canceled batch ends when its last job has

    return wait_until(ended, f"batch {batch_id} ended", timeout_s)


def rows_by_name(gc: girder_client.GirderClient, batch_id: str) -> dict[str, dict]:
    return {row["name"]: row for row in gc.get(f"lnassist/batch/{batch_id}/report")["rows"]}


def running_at(job: dict) -> datetime:
    stamp = next(t["time"] for t in job["timestamps"] if t["status"] == JOB_RUNNING)
    return datetime.fromisoformat(stamp)


@docker_test
def test_folder_batch_recursive_filtered_skips_retries_and_reports(env, slide_files: list[Path]) -> None:
    dsa, path_user = env
    gc, tag = dsa.gc, uuid.uuid4().hex[:6]
    study = new_folder(gc, dsa.folder_id, "study")
    sub = new_folder(gc, study["_id"], "sub")
    names = {
        "top": f"case-{tag}-top.tiff",
        "sub": f"case-{tag}-sub.tiff",
        "bad": f"case-{tag}-bad.tiff",
        "done": f"case-{tag}-done.tiff",
        "other": f"other-{tag}.tiff",  # not matched by the name filter
    }
    items = {
        "top": upload(dsa, study["_id"], slide_files[0], names["top"]),
        "sub": upload(dsa, sub["_id"], slide_files[1], names["sub"]),
        "bad": upload(dsa, study["_id"], slide_files[3], names["bad"]),
        "done": upload(dsa, study["_id"], slide_files[2], names["done"]),
        "other": upload(dsa, study["_id"], slide_files[2], names["other"]),
    }
    # One slide was analysed before, with the current models: the batch skips it.
    gc.post(f"lnassist/item/{items['done']['_id']}/analyze")
    wait_until(lambda: lnassist_documents(dsa, items["done"]["_id"], DOCUMENT_LN), "the earlier result", 600)

    url = f"lnassist/folder/{study['_id']}/analyze"
    assert http_status(girder_client.GirderClient(apiUrl=gc.urlBase.rstrip("/")).post, url)[0] == 401
    reader = make_user(gc, gc.urlBase.rstrip("/"), f"lnread{tag}")
    assert http_status(reader.post, url)[0] == 403

    with JobWatch(gc) as watch:
        batch = path_user.post(url, parameters={"recursive": "true", "name": "CASE-*.tiff"})
        assert batch["total"] == 4 and batch["origin"] == "folder" and batch["status"] == "running"
        # A person's "Run LN analysis" meanwhile waits behind at most the bound of batch jobs.
        time.sleep(3)
        interactive = gc.post(f"lnassist/item/{items['other']['_id']}/analyze")
        batch = wait_for_batch(gc, batch["id"])
    assert watch.most <= BOUND, f"{watch.most} batch jobs at once; the bound is {BOUND}"
    assert watch.most == BOUND, "the batch never used its bound"

    assert batch["status"] == "done"
    assert {state: batch["states"][state] for state in ("done", "skipped", "failed")} == {
        "done": 2,
        "skipped": 1,
        "failed": 1,
    }
    rows = rows_by_name(gc, batch["id"])
    assert set(rows) == {names["top"], names["sub"], names["bad"], names["done"]}
    assert rows[names["done"]]["status"] == "skipped" and "current models" in rows[names["done"]]["reason"]
    bad = rows[names["bad"]]
    assert bad["status"] == "failed" and bad["attempts"] == ATTEMPTS
    assert bad["reason"].startswith("LNAnalysis: error:") and "resolution" in bad["reason"], bad["reason"]
    for key in ("top", "sub"):
        row = rows[names[key]]
        docs = lnassist_documents(dsa, items[key]["_id"], DOCUMENT_LN)
        assert row["status"] == "done" and row["attempts"] == 1 and len(docs) == 1
        assert row["total"] == len(docs[0]["annotation"]["elements"]) >= 1 and row["model_id"]
        assert row["seconds"] > 0
    # One job per analysed slide (the bad one: one per attempt), none for the skipped or filtered.
    counts = jobs_per_name(gc, list(names.values()))
    assert counts == {
        names["top"]: 1,
        names["sub"]: 1,
        names["bad"]: ATTEMPTS,
        names["done"]: 1,
        names["other"]: 1,
    }
    # The batch's Girder job: progress, its children, its end.
    parent = gc.get(f"job/{batch['job_id']}")
    assert (
        parent["status"] == JOB_SUCCESS and parent["progress"]["current"] == parent["progress"]["total"] == 4
    )
    children = [j for j in analysis_jobs(gc) if j.get("parentId") == batch["job_id"]]
    assert sorted(j["title"].rpartition(" on ")[2] for j in children) == sorted(
        [names["top"], names["sub"], names["bad"], names["bad"]]
    )
    # The interactive run started while batch jobs were in flight; no more than the bound of batch
    # jobs started running between its request and its own start.
    interactive = gc.get(f"job/{interactive['_id']}")
    assert interactive["status"] == JOB_SUCCESS
    created = datetime.fromisoformat(interactive["created"])
    ahead = [j for j in children if created < running_at(j) < running_at(interactive)]
    assert len(ahead) <= BOUND, [j["title"] for j in ahead]
    # The report: folder metadata and CSV; the reader of the folder sees it, the stranger does not.
    meta = gc.get(f"folder/{study['_id']}")["meta"]["lnassist_batch_report"]
    assert meta["batch"]["id"] == batch["id"] and len(meta["rows"]) == 4 and not meta["rows_truncated"]
    text = gc.get(f"lnassist/batch/{batch['id']}/report", parameters={"format": "csv"}, jsonResp=False).text
    table = list(csv.DictReader(io.StringIO(text)))
    assert {r["name"]: r["status"] for r in table} == {name: row["status"] for name, row in rows.items()}
    assert http_status(reader.get, f"lnassist/batch/{batch['id']}")[0] == 403

    # Again, without force: the analysed slides are skipped, the failed one is tried again.
    again = wait_for_batch(gc, path_user.post(url, parameters={"recursive": "true", "name": "case-*"})["id"])
    assert again["states"]["skipped"] == 3 and again["states"]["failed"] == 1


@docker_test
def test_cancelling_the_batch_job_cancels_its_queued_and_running_jobs(env, slide_files: list[Path]) -> None:
    dsa, _ = env
    gc, tag = dsa.gc, uuid.uuid4().hex[:6]
    study = new_folder(gc, dsa.folder_id, "cancel")
    names = [f"cancel-{tag}-{i}.tiff" for i in range(5)]
    for index, name in enumerate(names):
        upload(dsa, study["_id"], slide_files[index % 3], name)
    batch = gc.post(f"lnassist/folder/{study['_id']}/analyze")
    wait_until(
        lambda: gc.get(f"lnassist/batch/{batch['id']}")["states"]["running"] >= 1, "a job started", 120
    )
    gc.put(f"job/{batch['job_id']}/cancel")  # Girder's own job list: the batch's job
    batch = wait_for_batch(gc, batch["id"], 300)
    assert batch["status"] == "canceled"
    states = batch["states"]
    assert states["queued"] == states["running"] == states["starting"] == 0
    assert states["canceled"] >= 3 and states["canceled"] + states["done"] == 5, states
    for job in analysis_jobs(gc):
        if job["title"].rpartition(" on ")[2] in names:
            job = wait_until(
                lambda j=job: (found := gc.get(f"job/{j['_id']}"))["status"] not in UNFINISHED and found,
                "the job ended",
                120,
            )
            assert job["status"] in (JOB_SUCCESS, JOB_CANCELED)
    assert gc.get(f"job/{batch['job_id']}")["status"] == JOB_CANCELED


@docker_test
def test_girder_killed_mid_batch_finishes_it_without_duplicates(env, slide_files: list[Path]) -> None:
    dsa, _ = env
    gc, tag = dsa.gc, uuid.uuid4().hex[:6]
    study = new_folder(gc, dsa.folder_id, "crash")
    names = [f"crash-{tag}-{i}.tiff" for i in range(6)]
    items = [upload(dsa, study["_id"], slide_files[i % 3], name) for i, name in enumerate(names)]
    batch = gc.post(f"lnassist/folder/{study['_id']}/analyze")
    wait_until(lambda: gc.get(f"lnassist/batch/{batch['id']}")["states"]["done"] >= 2, "two slides done", 300)
    with JobWatch(gc) as watch:
        assert stack("kill-girder").returncode == 0
        time.sleep(5)  # the worker goes on meanwhile; its reports to Girder fail
        result = stack("up")
        assert result.returncode == 0, result.stderr[-2000:]
        batch = wait_for_batch(gc, batch["id"])
    assert watch.most <= BOUND
    assert batch["status"] == "done" and batch["states"]["done"] == 6, batch["states"]
    # Each slide analysed once: one successful job and one LN document. A job the crash cut off (the
    # worker could not reach Girder) ended ERROR and was tried again.
    succeeded = Counter(
        j["title"].rpartition(" on ")[2] for j in analysis_jobs(gc) if j["status"] == JOB_SUCCESS
    )
    assert {name: succeeded[name] for name in names} == dict.fromkeys(names, 1)
    assert all(count <= ATTEMPTS for count in jobs_per_name(gc, names).values())
    for item in items:
        assert len(lnassist_documents(dsa, item["_id"], DOCUMENT_LN)) == 1


@docker_test
def test_a_job_a_dying_step_left_unqueued_is_replaced_and_a_queued_job_waits_for_good(
    env, slide_files: list[Path]
) -> None:
    """girder_worker's jobs stay INACTIVE until a worker takes them, however long they queue, so the
    dispatcher cannot tell a lost job by its age. It can when the step that made the job died before
    recording it (Girder killed between making and queuing it: a batch hung in CI that way): the
    next step cancels that job and starts the slide again."""
    dsa, _ = env
    gc, tag = dsa.gc, uuid.uuid4().hex[:6]
    db = database(dsa)
    study = new_folder(gc, dsa.folder_id, "unqueued")
    name = f"unqueued-{tag}.tiff"
    item = upload(dsa, study["_id"], slide_files[0], name)
    assert stack("stop-worker").returncode == 0  # the jobs wait in the broker
    try:
        batch = gc.post(f"lnassist/folder/{study['_id']}/analyze")

        def row_now() -> dict:
            return rows_by_name(gc, batch["id"])[name]

        lost = wait_until(lambda: row_now()["job_id"], "its job made", 120)
        assert gc.get(f"job/{lost}")["status"] == JOB_INACTIVE
        # The fault: the step died after making the job, before its message reached the broker and
        # before it recorded the job on the slide's task (claimed five minutes ago).
        drop_queued_messages(dsa)
        created = db.job.find_one({"_id": ObjectId(lost)})["created"]
        reset = {"state": "starting", "claimed": created - timedelta(minutes=5), "jobId": None, "attempts": 0}
        assert (
            db.lnassist_batch_task.update_one({"jobId": ObjectId(lost)}, {"$set": reset}).modified_count == 1
        )
        again = wait_until(
            lambda: row_now()["job_id"] not in (None, lost) and row_now()["job_id"], "restarted", 120
        )
        old = gc.get(f"job/{lost}")
        assert old["status"] == JOB_CANCELED and "started again" in job_log(old)
        # The new job queues on as if for an hour: it is the slide's job still, not taken for lost.
        long_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
        db.job.update_one({"_id": ObjectId(again)}, {"$set": {"created": long_ago, "updated": long_ago}})
        time.sleep(5)  # five dispatcher steps
        assert gc.get(f"job/{again}")["status"] == JOB_INACTIVE
        assert row_now()["status"] == "running" and row_now()["job_id"] == again
    finally:
        result = stack("up")  # the worker back
        assert result.returncode == 0, result.stderr[-2000:]
    batch = wait_for_batch(gc, batch["id"])
    assert batch["status"] == "done" and batch["states"]["done"] == 1, batch["states"]
    row = rows_by_name(gc, batch["id"])[name]
    assert row["status"] == "done" and row["attempts"] == 1 and row["job_id"] == again
    assert gc.get(f"job/{again}")["status"] == JOB_SUCCESS
    assert gc.get(f"job/{lost}")["status"] == JOB_CANCELED
    assert jobs_per_name(gc, [name])[name] == 2
    assert len(lnassist_documents(dsa, item["_id"], DOCUMENT_LN)) == 1


@docker_test
def test_auto_run_analyses_every_arrival_exactly_once(env, slide_files: list[Path], tmp_path: Path) -> None:
    dsa, path_user = env
    gc, tag = dsa.gc, uuid.uuid4().hex[:6]
    staging = new_folder(gc, dsa.folder_id, "staging")
    inbox = new_folder(gc, dsa.folder_id, "inbox")
    nested = new_folder(gc, inbox["_id"], "nested")
    quiet = new_folder(gc, dsa.folder_id, "quiet")
    source = upload(dsa, staging["_id"], slide_files[0], f"source-{tag}.tiff")

    # Only admins of the folder switch it: the pathologist (write access) cannot, by either route.
    status, text = http_status(
        path_user.put, f"lnassist/folder/{inbox['_id']}/autorun", parameters={"enabled": "true"}
    )
    assert status == 403
    status, text = http_status(
        path_user.put, f"folder/{inbox['_id']}/metadata", json={"lnassist_autorun": True}
    )
    assert status == 403 and "auto-run" in text
    switch = gc.put(f"lnassist/folder/{inbox['_id']}/autorun", parameters={"enabled": "true"})
    assert switch["enabled"] is True and switch["inherited_from"] is None
    assert gc.get(f"lnassist/folder/{nested['_id']}/autorun")["inherited_from"] == inbox["_id"]
    # (no text search on the test stack's database: the users are listed whole)
    service = [u for u in gc.get("user", parameters={"limit": 0}) if u["login"] == switch["service_user"]]
    assert len(service) == 1 and not service[0]["admin"]

    # Arrivals: copies (many at once), an upload into the nested folder, a move in.
    copies = 10
    arrived = [
        gc.post(
            f"item/{source['_id']}/copy",
            parameters={"folderId": inbox["_id"], "name": f"copy-{tag}-{i}.tiff"},
        )
        for i in range(copies)
    ]
    arrived.append(upload(dsa, nested["_id"], slide_files[1], f"upload-{tag}.tiff"))
    moved = upload(dsa, staging["_id"], slide_files[2], f"moved-{tag}.tiff")
    arrived.append(gc.put(f"item/{moved['_id']}", parameters={"folderId": inbox["_id"]}))
    # Not arrivals: re-saving an item, its own metadata, the same content again; a folder without the switch.
    gc.put(f"item/{arrived[0]['_id']}/metadata", json={"note": "re-saved"})
    gc.put(f"item/{arrived[0]['_id']}", parameters={"description": "re-saved"})
    upload(dsa, quiet["_id"], slide_files[0], f"quiet-{tag}.tiff")

    def auto_batch():
        found = gc.get("lnassist/batch", parameters={"folderId": inbox["_id"]})
        return found[0] if found and found[0]["total"] == len(arrived) else None

    with JobWatch(gc) as watch:
        batch = wait_until(auto_batch, "every arrival in the auto-run batch", 120)
        assert batch["origin"] == "autorun"
        batch = wait_for_batch(gc, batch["id"])
    assert watch.most <= BOUND
    assert batch["states"]["done"] == len(arrived), batch["states"]
    # Each arrival once, nothing else: one job per report row (a copy's job is titled after its
    # file, the source's name, so jobs are matched through the report here), all of them children
    # of the batch's job, run as the service user (never an admin token); the batch's job is the
    # admin's. The outputs (a heatmap image is a large image too) were not taken for arrivals.
    rows = gc.get(f"lnassist/batch/{batch['id']}/report")["rows"]
    assert sorted(row["item_id"] for row in rows) == sorted(item["_id"] for item in arrived)
    assert all(row["status"] == "done" and row["attempts"] == 1 and row["total"] >= 1 for row in rows)
    children = [j for j in analysis_jobs(gc) if j.get("parentId") == batch["job_id"]]
    assert sorted(j["_id"] for j in children) == sorted(row["job_id"] for row in rows)
    assert {j["userId"] for j in children} == {service[0]["_id"]} and {j["status"] for j in children} == {
        JOB_SUCCESS
    }
    assert gc.get(f"job/{batch['job_id']}")["userId"] == gc.get("user/me")["_id"]
    quiet_item = gc.listItem(quiet["_id"]).__next__()
    assert lnassist_documents(dsa, quiet_item["_id"], DOCUMENT_LN) == []
    assert lnassist_documents(dsa, source["_id"], DOCUMENT_LN) == []

    # New content in an analysed slide's file is an arrival; the same content again is not.
    target = arrived[-1]
    file = gc.get(f"item/{target['_id']}/files")[0]

    def auto_total() -> int:
        return sum(b["total"] for b in gc.get("lnassist/batch", parameters={"folderId": inbox["_id"]}))

    with slide_files[2].open("rb") as same:
        gc.uploadFileContents(file["_id"], same, slide_files[2].stat().st_size)
    time.sleep(5)  # five dispatcher steps
    assert auto_total() == len(arrived)
    with slide_files[1].open("rb") as new:
        gc.uploadFileContents(file["_id"], new, slide_files[1].stat().st_size)
    wait_until(lambda: auto_total() == len(arrived) + 1, "the replaced slide queued", 60)
    latest = wait_for_batch(gc, gc.get("lnassist/batch", parameters={"folderId": inbox["_id"]})[0]["id"])
    assert latest["states"]["done"] == 1 and latest["total"] == 1
    (row,) = gc.get(f"lnassist/batch/{latest['id']}/report")["rows"]
    assert row["item_id"] == target["_id"] and row["status"] == "done"
    assert jobs_per_name(gc, [target["name"]])[target["name"]] == 2


@docker_test
def test_schedule_fires_once_per_due_time_and_catches_up_once_after_downtime(
    env, slide_files: list[Path]
) -> None:
    dsa, path_user = env
    gc, tag = dsa.gc, uuid.uuid4().hex[:6]
    study = new_folder(gc, dsa.folder_id, "scheduled")
    names = [f"sched-{tag}-{i}.tiff" for i in range(2)]
    for index, name in enumerate(names):
        upload(dsa, study["_id"], slide_files[index], name)
    form = {"folderId": study["_id"], "interval": 40, "first_run": datetime.now(UTC).isoformat()}
    assert http_status(path_user.post, "lnassist/schedule", parameters=form)[0] == 403
    assert http_status(gc.post, "lnassist/schedule", parameters={**form, "cron": "every day"})[0] == 400
    schedule = gc.post("lnassist/schedule", parameters=form)

    def view():
        return next(s for s in gc.get("lnassist/schedule") if s["id"] == schedule["id"])

    try:
        first = wait_until(lambda: view()["last_batch"], "the first run", 30)
        assert first["origin"] == "schedule"
        first = wait_for_batch(gc, first["id"])
        # Girder down over two due times: one catch-up run after the restart, not two.
        assert stack("kill-girder").returncode == 0
        time.sleep(85)
        assert stack("up").returncode == 0
        second = wait_until(
            lambda: (b := view()["last_batch"]) and b["id"] != first["id"] and b, "the catch-up", 60
        )
    finally:  # a schedule left on would go on firing into every later test run on this database
        gc.put(f"lnassist/schedule/{schedule['id']}", parameters={"enabled": "false"})
    batches = gc.get("lnassist/batch", parameters={"folderId": study["_id"]})
    assert [b["id"] for b in batches] == [second["id"], first["id"]]
    second = wait_for_batch(gc, second["id"])
    # The first run analysed both slides; the catch-up found nothing new to do.
    first_rows = rows_by_name(gc, first["id"])
    assert first["total"] == 2 and first_rows.keys() == set(names)
    assert {row["status"] for row in first_rows.values()} == {"done"}
    assert all(row["total"] >= 1 for row in first_rows.values())
    assert second["states"]["skipped"] == 2
    assert jobs_per_name(gc, names) == dict.fromkeys(names, 1)
    shown = view()
    assert (
        shown["enabled"] is False and shown["next_run"] is None and shown["last_batch"]["id"] == second["id"]
    )


@docker_test
def test_two_girder_processes_fire_each_due_time_once_and_fail_over(env) -> None:
    """Two Girder processes on one database: the lease lets one of them run the schedules; kill it
    and the other takes over. Each due time (every 10 s) makes one batch: no two batches closer than
    the interval, none missing while either process runs."""
    dsa, _ = env
    empty = new_folder(dsa.gc, dsa.folder_id, "empty-scheduled")  # batches with nothing to analyse
    started = stack("second-girder")
    assert started.returncode == 0, started.stderr[-2000:]
    admin = json.loads((Path(dsa.state_dir) / "admin.json").read_text())
    other = girder_client.GirderClient(apiUrl=json.loads(started.stdout)["api_url"])
    other.authenticate(admin["login"], admin["password"])
    try:
        form = {"folderId": empty["_id"], "interval": 10, "first_run": datetime.now(UTC).isoformat()}
        schedule = dsa.gc.post("lnassist/schedule", parameters=form)
        time.sleep(32)
        killed_at = datetime.now(UTC)
        assert stack("kill-girder").returncode == 0
        time.sleep(40)  # the lease (15 s) passes to the survivor, which catches up once and goes on
        other.put(f"lnassist/schedule/{schedule['id']}", parameters={"enabled": "false"})
        made = sorted(
            datetime.fromisoformat(b["created"])
            for b in other.get("lnassist/batch", parameters={"folderId": empty["_id"], "limit": 0})
        )
    finally:
        assert stack("up").returncode == 0
        stack("stop-second-girder")
    gaps = [(b - a).total_seconds() for a, b in zip(made, made[1:], strict=False)]
    assert len([t for t in made if t < killed_at]) >= 3, made
    assert len([t for t in made if t > killed_at]) >= 2, made  # the survivor fired
    assert min(gaps) >= 9, gaps  # never twice for one due time
    assert max(gaps) <= 10 + 15 + 5, gaps  # the handover took at most the lease, then one catch-up
