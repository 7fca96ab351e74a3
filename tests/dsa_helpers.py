"""The real DSA stack for tests (tools/dsa_stack.py): the handle the ``dsa`` fixture (conftest.py)
yields, and what tests do with it: wait for jobs, upload slides, read annotations, expect refusals."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import girder_client
import pymongo
from docker_helpers import REPO

from lnassist.dsa import ATTR_DOCUMENT

STACK = [sys.executable, str(REPO / "tools" / "dsa_stack.py")]
JOB_TIMEOUT_S = 900
JOB_INACTIVE, JOB_SUCCESS, JOB_ERROR, JOB_CANCELED = 0, 3, 4, 5


@dataclass
class Dsa:
    gc: girder_client.GirderClient
    clis: dict[str, str]  # CLI name -> its Girder item id
    folder_id: str
    image: str
    state_dir: str


def stack(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    # A first start installs the server venv and may set up the Docker engine's base image.
    return subprocess.run([*STACK, *args], capture_output=True, text=True, timeout=timeout)


def wait_for_job(gc: girder_client.GirderClient, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = gc.get(f"job/{job_id}")
        if job["status"] in (JOB_SUCCESS, JOB_ERROR, JOB_CANCELED):
            return job
        time.sleep(1)
    raise AssertionError(f"job {job_id} did not finish within {JOB_TIMEOUT_S} s")


def job_log(job: dict) -> str:
    return "".join(job.get("log", []))


def wait_until(condition, what: str, timeout_s: float = 60):
    """The condition's first true value; documents are ingested (and superseded) after a job ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s} s: {what}")


def upload_slide(dsa: Dsa, path: Path) -> dict:
    """Upload a slide; returns its item (a large image: the tiff source opens it on upload)."""
    file = dsa.gc.uploadFileToFolder(dsa.folder_id, str(path))
    item = dsa.gc.get(f"item/{file['itemId']}")
    return {**item, "fileId": file["_id"]}


def annotations(gc: girder_client.GirderClient, item_id: str) -> list[dict]:
    """Every annotation document on the item, whole (the listing leaves the elements out)."""
    return [gc.get(f"annotation/{a['_id']}") for a in gc.get("annotation", parameters={"itemId": item_id})]


def refusal(call) -> girder_client.HttpError:
    try:
        call()
    except girder_client.HttpError as exc:
        return exc
    raise AssertionError("the request was not refused")


def lnassist_documents(dsa: Dsa, item_id: str, kind: str) -> list[dict]:
    """The item's lnassist documents of ``kind`` (lnassist.dsa.DOCUMENT_*), whole."""
    return [
        d for d in annotations(dsa.gc, item_id)
        if d["annotation"].get("attributes", {}).get(ATTR_DOCUMENT) == kind
    ]  # fmt: skip


def http_status(call, *args, **kwargs) -> tuple[int, str]:
    try:
        call(*args, **kwargs)
    except girder_client.HttpError as exc:
        return exc.status, exc.responseText
    return 200, ""


def make_user(admin: girder_client.GirderClient, api_url: str, login: str) -> girder_client.GirderClient:
    password = uuid.uuid4().hex
    admin.post(
        "user",
        parameters={
            "login": login,
            "email": f"{login}@lnassist.invalid",
            "firstName": login,
            "lastName": "Test",
            "password": password,
            "admin": "false",
        },
    )
    gc = girder_client.GirderClient(apiUrl=api_url)
    gc.authenticate(login, password)
    return gc


def stack_ports(dsa: Dsa) -> dict[str, int]:
    """The services' ports, from the stack's state file."""
    state = json.loads((Path(dsa.state_dir) / "state.json").read_text())
    return {key: value for key, value in state.items() if key.endswith("_port")}


def database(dsa: Dsa) -> pymongo.database.Database:
    """Girder's database itself, for faults no REST call can make (a job Girder made but never queued)."""
    port = stack_ports(dsa)["database_port"]
    return pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/", tz_aware=False)["girder"]


def drop_queued_messages(dsa: Dsa) -> None:
    """Empty girder_worker's broker queue (Redis database 0): the messages of jobs not yet taken by a
    worker are lost, as when Redis restarts without persistence."""
    with socket.create_connection(("127.0.0.1", stack_ports(dsa)["redis_port"]), timeout=10) as conn:
        conn.sendall(b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n*1\r\n$7\r\nFLUSHDB\r\n")
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = conn.recv(64)
            if not chunk:
                break
            reply += chunk
    assert reply == b"+OK\r\n+OK\r\n", reply
