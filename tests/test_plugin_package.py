"""The Girder plugin's distribution (``plugin/``): its entry point, that it ships its web client, that
its dependencies are the DSA stack's pins and torch-free, and that the plugin imports with lnassist's
contract modules without pulling in torch."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
PLUGIN = REPO / "plugin"
CLIENT = PLUGIN / "girder_lnassist" / "web_client"
PROJECT = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]
# What the Girder server must never import (nor have installed): the models' stack.
HEAVY = ("torch", "torchvision", "segmentation_models_pytorch", "timm", "cv2")
# The Girder plugins (and Girder) that girder_lnassist loads, by distribution name.
SERVER_PLUGINS = {
    "girder",
    "girder-jobs",
    "girder-large-image-annotation",
    "girder-slicer-cli-web",
    "histomicsui",
}
CLIENT_DEPENDENCIES = {"histomicsui", "jobs", "large_image", "large_image_annotation", "slicer_cli_web"}


def dependencies() -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, PROJECT["dependencies"])}


def server_pins() -> dict[str, Requirement]:
    spec = importlib.util.spec_from_file_location("dsa_stack", REPO / "tools" / "dsa_stack.py")
    dsa_stack = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dsa_stack)
    return {canonicalize_name(r.name): r for r in map(Requirement, dsa_stack.SERVER_PINS)}


def test_distribution_package_and_entry_point():
    assert PROJECT["name"] == "girder-lnassist"
    assert PROJECT["entry-points"]["girder.plugin"] == {"lnassist": "girder_lnassist:LnassistPlugin"}
    assert (PLUGIN / "girder_lnassist" / "__init__.py").is_file()


def test_dependencies_are_torch_free_and_pinned_as_the_stack_runs():
    deps = dependencies()
    assert not deps.keys() & {"lnassist", *map(canonicalize_name, HEAVY)}
    assert SERVER_PLUGINS <= deps.keys()
    pins = server_pins()
    for name, requirement in deps.items():
        assert name in pins, f"{name} is not installed by tools/dsa_stack.py"
        assert requirement.specifier == pins[name].specifier, name


def test_web_client_names_the_entry_point_and_its_main_exists():
    package = json.loads((CLIENT / "package.json").read_text())
    plugin = package["girderPlugin"]
    assert plugin["name"] == next(iter(PROJECT["entry-points"]["girder.plugin"]))
    assert (CLIENT / plugin["main"]).is_file()
    assert set(plugin["dependencies"]) == CLIENT_DEPENDENCIES


def test_wheel_ships_the_web_client(tmp_path: Path):
    """``girder build`` reads the client from the installed package, so it must be package data."""
    # Built from a copy: a build writes build/ and *.egg-info/ beside the sources.
    ignore = shutil.ignore_patterns("*.egg-info", "build")
    source = shutil.copytree(PLUGIN, tmp_path / "plugin", ignore=ignore)
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path]
    result = subprocess.run([*build, source], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = tmp_path.glob("girder_lnassist-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    client = {f"girder_lnassist/web_client/{p.relative_to(CLIENT)}" for p in CLIENT.rglob("*") if p.is_file()}
    assert client and client <= names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "lnassist = girder_lnassist:LnassistPlugin" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_plugin_and_contract_modules_import_without_torch():
    code = (
        "import json, sys\n"
        "import girder_lnassist, lnassist.dsa, lnassist.constants, lnassist.registry, lnassist.versions\n"
        "print(json.dumps({'file': girder_lnassist.__file__, 'modules': sorted(sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGIN), str(REPO)])}
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert Path(loaded["file"]).is_relative_to(PLUGIN)
    heavy = {m for m in loaded["modules"] if m.split(".")[0] in HEAVY}
    assert not heavy, f"importing the plugin pulled in {sorted(heavy)}"
