"""Build-time self-test of the lnassist Docker image (the Dockerfile's last RUN): a broken image
fails to build instead of failing in a DSA job.

Run in the image's working directory (the CLI folder), as the Digital Slide Archive uses the image:

- ``--list_cli`` through the entrypoint prints ``slicer_cli_list.json`` and nothing else;
- for every listed CLI, ``Name --xml`` prints its XML and nothing else and ``Name --help`` works;
- the heavy stack imports (torch and torchvision at the pinned versions, large_image with the
  slide formats lnassist reads, OpenCV, histomicstk, the pipeline);
- the shipped models: the registry in ``$LNASSIST_MODELS`` names a default detector and classifier,
  their files match their sha256 and load.

    python docker_selftest.py [--torch 2.14.1 --torchvision 0.29.1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ENTRYPOINT = [sys.executable, "-m", "slicer_cli_web.cli_list_entrypoint"]
SLIDE_SOURCES = {"tiff", "tifffile", "openslide", "ometiff", "pil"}


def entrypoint(*args: str) -> str:
    result = subprocess.run([*ENTRYPOINT, *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"selftest: {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


def check_clis() -> list[str]:
    listed = json.loads(entrypoint("--list_cli"))  # only JSON on stdout, or this raises
    expected = json.loads(Path("slicer_cli_list.json").read_text())
    assert listed == expected, f"--list_cli printed {listed}, not slicer_cli_list.json"
    for name in listed:
        xml = entrypoint(name, "--xml")
        title = ET.fromstring(xml).findtext("title")  # only the XML on stdout, or this raises
        assert xml.strip() == (Path(name) / f"{name}.xml").read_text().strip(), f"{name} --xml differs"
        assert title and title in entrypoint(name, "--help"), f"{name} --help lacks its title {title!r}"
    return list(listed)


def check_stack(torch_version: str | None, torchvision_version: str | None) -> str:
    import cv2
    import histomicstk.preprocessing.color_deconvolution  # noqa: F401
    import large_image
    import openslide
    import torch
    import torchvision

    import lnassist.pipeline  # noqa: F401

    for module, wanted in ((torch, torch_version), (torchvision, torchvision_version)):
        if wanted:
            got = module.__version__.split("+")[0]
            assert got == wanted, f"{module.__name__} {module.__version__} is installed, not {wanted}"
    large_image.tilesource.loadTileSources()
    missing = SLIDE_SOURCES - set(large_image.tilesource.AvailableTileSources)
    assert not missing, f"large_image tile sources missing: {sorted(missing)}"
    return (
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, cv2 {cv2.__version__}, "
        f"openslide {openslide.__library_version__}, large_image {large_image.__version__}"
    )


def check_models() -> list[str]:
    from lnassist.classifier import load_classifier
    from lnassist.detector.model import load_checkpoint
    from lnassist.registry import load_registry, resolve

    registry = load_registry()  # raises with "no model registry at ..." when none was copied in
    loaded = []
    for kind, load in (("detector", load_checkpoint), ("classifier", load_classifier)):
        path, entry = resolve(kind)  # checks the sha256
        load(path)
        loaded.append(f"{kind} {entry.id} v{entry.version}")
    return [f"{len(registry.models)} model(s) in {registry.folder}", *loaded]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch", help="the torch version that must be installed")
    parser.add_argument("--torchvision", help="the torchvision version that must be installed")
    args = parser.parse_args(argv)
    print(f"selftest: CLIs {', '.join(check_clis())}: --list_cli, --xml and --help work")
    print(f"selftest: {check_stack(args.torch, args.torchvision)}")
    print(f"selftest: models: {'; '.join(check_models())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
