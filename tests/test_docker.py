"""The Docker image that DSA admins install (``PUT /slicer_cli_web/docker_image``), built from the
repository's ``Dockerfile`` and used the way slicer_cli_web and girder_worker use it.

The slow tests need a Docker engine: ``tools/docker_env.sh`` installs Debian's docker.io (as
root), starts a private dockerd and makes a local Debian bookworm base image (no image registry is
reachable here), then builds the image with pip pointed at this machine's local wheels. Images,
layer cache and the base image stay in ``$LNASSIST_DOCKER_DIR`` (``/var/tmp/lnassist-docker``), so a
rerun on the same machine only rebuilds the layers whose inputs changed. A machine where the engine
cannot be set up fails these tests; it does not skip them.

The image is checked as a DSA deployment uses it: its metadata (entrypoint, GPU label, working
directory), ``--list_cli`` and ``Name --xml`` printing nothing but the JSON / XML, the shipped models,
and a real ``LNAnalysis`` job with the slide mounted read-only and no network.
"""

from __future__ import annotations

import json
import re
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from docker_helpers import NAMES, REPO, docker, docker_test, tail

from lnassist.annotations import validate_document
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

ENTRYPOINT = ["python", "-m", "slicer_cli_web.cli_list_entrypoint"]
TOKEN = "job-token-5d0e9a"


def dockerfile_args() -> dict[str, str]:
    text = (REPO / "Dockerfile").read_text()
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", text, flags=re.MULTILINE))


# ------------------------------------------------------------------------------ without the engine


def test_dockerfile_pins_match_pyproject_and_makefile() -> None:
    args = dockerfile_args()
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch=={args['TORCH_VERSION']}" in dependencies
    assert f"torchvision=={args['TORCHVISION_VERSION']}" in dependencies
    assert f"--no-deps histomicstk=={args['HISTOMICSTK_VERSION']}" in (REPO / "Makefile").read_text()
    assert args["BASE_IMAGE"].startswith("python:3.11-")  # production: a public Python 3.11 image


# ---------------------------------------------------------------------------------- engine, image


def inspect(image: str) -> dict:
    result = docker("image", "inspect", image)
    assert result.returncode == 0, result.stderr
    (info,) = json.loads(result.stdout)
    return info


def run(image: str, *args: str, options: tuple[str, ...] = (), timeout: float = 600):
    """``docker run`` as a DSA job does, without network (nothing may be downloaded at run time)."""
    job = ["run", "--rm", "--network", "none", "--ipc", "host", *options, image, *args]
    return docker(*job, timeout=timeout)


# -------------------------------------------------------------------------------------- the tests


@docker_test
def test_image_metadata(image: str) -> None:
    info = inspect(image)
    config = info["Config"]
    assert config["Entrypoint"] == ENTRYPOINT
    assert config["Labels"]["com.nvidia.volumes.needed"] == "nvidia_driver"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["PYTHONUNBUFFERED"] == "TRUE"
    assert env["LNASSIST_MODELS"] == "/opt/lnassist/models"
    assert config["WorkingDir"] == "/opt/lnassist/cli"
    print(f"{image}: {info['Size'] / 1e9:.2f} GB")


@docker_test
def test_list_cli_prints_only_the_json(image: str) -> None:
    result = run(image, "--list_cli")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert listed == json.loads((REPO / "cli" / "slicer_cli_list.json").read_text())
    assert set(listed) == set(NAMES)


@docker_test
@pytest.mark.parametrize("name", NAMES)
def test_xml_is_printed_alone(image: str, name: str) -> None:
    result = run(image, name, "--xml")
    assert result.returncode == 0, result.stderr
    ET.fromstring(result.stdout)  # nothing but the XML on stdout
    assert result.stdout.strip() == (REPO / "cli" / name / f"{name}.xml").read_text().strip()


@docker_test
def test_image_ships_the_repository_models(image: str) -> None:
    shipped = run(image, "/opt/lnassist/models/registry.json", options=("--entrypoint", "cat"))
    assert shipped.returncode == 0, f"no registry in the image: {shipped.stderr}"
    assert json.loads(shipped.stdout) == json.loads((REPO / "models" / "registry.json").read_text())
    check = "from lnassist.registry import resolve; resolve('detector'); resolve('classifier')"
    result = run(image, "-c", check, options=("--entrypoint", "python"))
    assert result.returncode == 0, result.stderr  # resolve() checks each file's sha256


@docker_test
def test_lnanalysis_runs_in_the_container(image: str, tmp_path: Path) -> None:
    slides, out = tmp_path / "slides", tmp_path / "out"
    slides.mkdir()
    out.mkdir()
    layout = LayoutConfig(4600, 2600, seed=3, categories=("negative", "itc"))
    write_slide(slides / "s.tiff", layout, workers=1)
    # As slicer_cli_web calls it: the CLI name, --flag value options, the indexed slide last.
    args = [
        "LNAnalysis",
        "--mode", "screening",
        "--outputAnnotationFile", "/out/ln.anot",
        "--outputHeatmapAnnotationFile", "/out/heatmap.anot",
        "--outputItemMetadata", "/out/meta.json",
        "--api-url", "http://127.0.0.1:9/api/v1",
        "--girder-token", TOKEN,
        "/data/s.tiff",
    ]  # fmt: skip
    result = run(image, *args, options=("-v", f"{slides}:/data:ro", "-v", f"{out}:/out"))
    assert result.returncode == 0, tail(result.stdout + result.stderr)
    assert "Traceback" not in result.stderr
    stages = re.findall(r"<filter-start><filter-name>(\w+)</filter-name>", result.stdout)
    assert stages == ["detect", "classify", "write"]
    assert "<filter-progress>1" in result.stdout
    assert TOKEN not in result.stdout + result.stderr

    registry = json.loads((REPO / "models" / "registry.json").read_text())
    for name in ("ln.anot", "heatmap.anot"):
        text = (out / name).read_text()
        assert TOKEN not in text
        doc = json.loads(text)
        validate_document(doc)
        models = {m["id"] for m in doc["attributes"]["models"]}
        assert models == set(registry["defaults"].values())  # the shipped defaults did the work
        assert doc["attributes"]["cli"] == "LNAnalysis"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lnassist_mode"] == "screening" and meta["lnassist_contours"] == "detector"
    assert all(key.startswith("lnassist_") for key in meta)
