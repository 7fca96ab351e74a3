"""Session fixtures shared by several test modules: the Docker engine and the lnassist image."""

from __future__ import annotations

import time

import pytest
from docker_helpers import BUILD_TIMEOUT_S, IMAGE, env_script, tail


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
