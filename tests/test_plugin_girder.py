"""The Girder plugin in the real DSA server stack (``tools/dsa_stack.py up``): Girder loads it at start
after the plugins it builds on, from this checkout, and the server environment has no torch to import.

A running stack is reused (and left running); one this module starts is stopped again at the end.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import girder_client
import pytest
from docker_helpers import REPO, tail
from dsa_helpers import stack

DEPENDENCIES = ("jobs", "slicer_cli_web", "large_image_annotation", "histomicsui")
# A first start installs the server venv and may set up the Docker engine's base image.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@dataclass
class Server:
    gc: girder_client.GirderClient
    python: Path  # the server venv's interpreter


@pytest.fixture(scope="module")
def server() -> Server:
    was_running = stack("status").returncode == 0
    result = stack("up")
    try:
        if result.returncode != 0:
            output = tail(result.stdout + result.stderr)
            pytest.fail(f"tools/dsa_stack.py up failed:\n{output}", pytrace=False)
        state = json.loads(result.stdout)
        state_dir = Path(state["admin_file"]).parent
        admin = json.loads(Path(state["admin_file"]).read_text())
        gc = girder_client.GirderClient(apiUrl=state["api_url"])
        gc.authenticate(admin["login"], admin["password"])
        yield Server(gc, state_dir / "venv" / "bin" / "python")
    finally:
        if not was_running:
            stack("down", timeout=120)


def server_python(server: Server, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(server.python), "-c", code], capture_output=True, text=True, timeout=120)


def test_girder_loads_the_plugin_after_what_it_builds_on(server: Server):
    plugins = server.gc.get("system/plugins")
    loaded = plugins["loaded"]
    assert "lnassist" in loaded, loaded
    assert all(loaded.index(name) < loaded.index("lnassist") for name in DEPENDENCIES), loaded
    assert plugins["all"]["lnassist"]["version"] == "0.1.0"


def test_server_venv_runs_this_checkout_without_torch(server: Server):
    code = (
        "import json, sys\n"
        "import girder_lnassist, lnassist, lnassist.dsa, lnassist.constants, lnassist.registry\n"
        "print(json.dumps([girder_lnassist.__file__, lnassist.__file__, 'torch' in sys.modules]))\n"
    )
    result = server_python(server, code)
    assert result.returncode == 0, result.stderr[-3000:]
    plugin_file, lnassist_file, torch_imported = json.loads(result.stdout)
    assert Path(plugin_file).is_relative_to(REPO / "plugin")
    assert Path(lnassist_file).is_relative_to(REPO / "lnassist")
    assert not torch_imported
    # Not installed at all: nothing the server runs can import it.
    result = server_python(server, "import torch")
    assert result.returncode != 0 and "No module named 'torch'" in result.stderr, result.stderr[-3000:]
