"""Shared by the tests that need our Docker engine and the lnassist image (``test_docker.py``,
``test_dsa_job.py``): the ``tools/docker_env.sh`` wrapper, and the marker for such tests.

The fixtures ``engine`` and ``image`` (``conftest.py``) set the engine up and build the image once
per test session; a machine where that fails fails these tests, it does not skip them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENV_SCRIPT = REPO / "tools" / "docker_env.sh"
IMAGE = os.environ.get("LNASSIST_TEST_IMAGE", "lnassist:test")
NAMES = ("LNAnalysis", "LNDetect", "LNClassify", "LNRetrain")
BUILD_TIMEOUT_S = 2700


def docker_test(func):
    """Slow (needs the engine and the image), with room for a cold image build in the first one."""
    return pytest.mark.slow(pytest.mark.timeout(BUILD_TIMEOUT_S + 600)(func))


def env_script(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ENV_SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def docker(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return env_script("docker", *args, timeout=timeout)


def tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])
