"""Session fixtures shared by several test modules: the Docker engine, the lnassist image and the
real DSA stack with the image registered (``dsa``; ``configured``: also set as lnassist's image)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import girder_client
import pytest
from docker_helpers import BUILD_TIMEOUT_S, IMAGE, env_script, tail
from dsa_helpers import JOB_SUCCESS, Dsa, job_log, stack, wait_for_job


@pytest.fixture(scope="session")
def engine():
    """Our dockerd running and the base image present; the daemon is stopped again if we started it."""
    was_running = env_script("running").returncode == 0
    try:
        result = env_script("up", timeout=1200)
        if result.returncode != 0:
            pytest.fail(
                "Docker engine could not be set up with tools/docker_env.sh up (needs root, apt-get and "
                f"a Debian mirror):\n{tail(result.stdout + result.stderr)}",
                pytrace=False,
            )
        yield
    finally:
        if not was_running:
            env_script("stop", timeout=120)


@pytest.fixture(scope="session")
def image(engine, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The repository's Dockerfile built as ``$LNASSIST_TEST_IMAGE`` (default lnassist:test)."""
    log = tmp_path_factory.mktemp("docker") / "build.log"
    start = time.monotonic()
    result = env_script("build", IMAGE, timeout=BUILD_TIMEOUT_S)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        pytest.fail(
            f"docker build of {IMAGE} failed (full log: {log}):\n{tail(result.stdout + result.stderr, 80)}",
            pytrace=False,
        )
    print(f"built {IMAGE} in {time.monotonic() - start:.0f} s")
    return IMAGE


@pytest.fixture(scope="session")
def dsa(image: str) -> Dsa:
    web = stack("web", timeout=1800)  # HistomicsUI's client, for the browser tests
    if web.returncode != 0:
        pytest.fail(f"tools/dsa_stack.py web failed:\n{tail(web.stdout + web.stderr)}", pytrace=False)
    was_running = stack("status").returncode == 0
    if was_running and web.stdout.strip() == "built":
        stack("down", timeout=120)  # Girder serves a new client only after a restart
        was_running = False
    result = stack("up")
    if result.returncode != 0:
        pytest.fail(f"tools/dsa_stack.py up failed:\n{tail(result.stdout + result.stderr)}", pytrace=False)
    try:
        state = json.loads(result.stdout)
        admin = json.loads(Path(state["admin_file"]).read_text())
        gc = girder_client.GirderClient(apiUrl=state["api_url"])
        gc.authenticate(admin["login"], admin["password"])
        # The admin's step: register the image; a job loads its CLIs (nothing is pulled: it is local).
        job = gc.put("slicer_cli_web/docker_image", parameters={"name": json.dumps([image])})
        job = wait_for_job(gc, job["_id"])
        assert job["status"] == JOB_SUCCESS, job_log(job)
        clis = {cli["name"]: cli["_id"] for cli in gc.get("slicer_cli_web/cli") if cli["image"] == image}
        collection = gc.createCollection(f"lnassist-test-{uuid.uuid4().hex[:8]}", public=False)
        folder = gc.createFolder(collection["_id"], "slides", parentType="collection")
        yield Dsa(gc, clis, folder["_id"], image, str(Path(state["admin_file"]).parent))
    finally:
        if not was_running:
            stack("down", timeout=120)


@pytest.fixture(scope="session")
def configured(dsa: Dsa) -> Dsa:
    """The admin's setting: which registered image "Run LN analysis" uses."""
    dsa.gc.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": dsa.image})
    return dsa
