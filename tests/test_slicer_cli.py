"""The Slicer CLIs in ``cli/`` as the Digital Slide Archive runs them: the image's ``--list_cli`` /
``--xml`` protocol, slicer_cli_web's parser on each XML, and each CLI run in a subprocess with the
arguments slicer_cli_web generates, on a small synthetic slide.

The models are made to order so the outputs are known: a detector whose logits are +4 everywhere
(every pixel is LN, so the one LN found is the analysis region) and a classifier whose score is
exactly ``SCORE`` for any input (zero head weights, bias logit(SCORE)). That tests the CLI protocol
and outputs independently of the shipped models' quality.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from lnassist import __version__
from lnassist.annotations import validate_document
from lnassist.classifier import ClassifierSpec, new_classifier, save_classifier
from lnassist.cli_support import CliInputError, SlicerProgress, read_annotation_contours
from lnassist.detector.model import DetectorConfig, build_detector, save_checkpoint
from lnassist.dsa import GROUP_NEGATIVE, GROUP_POSITIVE
from lnassist.registry import ModelEntry, register, sha256_of
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

CLI_DIR = Path(__file__).resolve().parent.parent / "cli"
NAMES = ("LNAnalysis", "LNDetect", "LNClassify", "LNRetrain")
SCORE = 0.3  # every LN's score: positive in screening mode (0.15), negative in general mode (0.4)
TOKEN = "job-token-6f1d2c"
GIRDER = ["--api-url", "http://127.0.0.1:9/api/v1", "--girder-token", TOKEN]
DETECTOR_PX = 7.36 / 0.46  # base pixels per detector pixel on the synthetic slide


@dataclass
class Setup:
    slide: Path
    gt: dict
    env: dict[str, str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("slicer_cli")
    models = root / "models"
    models.mkdir()
    torch.set_num_threads(1)
    detector = build_detector(DetectorConfig(encoder="mobilenet_v2", decoder_channels=16))
    classifier = new_classifier(ClassifierSpec(backbone="tiny"))
    with torch.no_grad():
        conv = detector.net.segmentation_head[0]
        conv.weight.zero_()
        conv.bias.fill_(4.0)
        classifier.model.head.weight.zero_()
        classifier.model.head.bias.copy_(torch.tensor([0.0, math.log(SCORE / (1 - SCORE))]))
    save_checkpoint(models / "det.pt", detector)
    save_classifier(models / "cls.pt", classifier)
    for model_id, kind, name in (
        ("detector-all", "detector", "det.pt"),
        ("classifier-fixed", "classifier", "cls.pt"),
    ):
        register(ModelEntry(model_id, kind, name, sha256_of(models / name), "7"), models)
    slide = root / "s.tiff"
    gt = write_slide(slide, LayoutConfig(4600, 2600, seed=3, categories=("negative", "itc")), workers=1)
    return Setup(slide, gt, {**os.environ, "LNASSIST_MODELS": str(models), "PYTHONUNBUFFERED": "1"})


def run_cli(
    name: str, options: list[str], inputs: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess:
    """``python cli/Name/Name.py`` as slicer_cli_web calls it in the container: ``--flag value`` options
    (the Girder ones always present), then the indexed inputs; plus one CPU thread here."""
    script = str(CLI_DIR / name / f"{name}.py")
    command = [sys.executable, script, *options, "--threads", "1", "--device", "cpu", *GIRDER, *inputs]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def output_flags(outputs: dict[str, Path]) -> list[str]:
    return [arg for name, path in outputs.items() for arg in (f"--{name}", str(path))]


def progress_of(stdout: str) -> tuple[list[str], list[float]]:
    """(stage names opened, overall progress values) from the Slicer progress lines on stdout."""
    names = re.findall(r"<filter-start><filter-name>([^<]*)</filter-name>", stdout)
    values = [float(v) for v in re.findall(r"<filter-progress>([^<]*)</filter-progress>", stdout)]
    assert stdout.count("<filter-start>") == stdout.count("<filter-end>")
    return names, values


def bbox(points: list) -> np.ndarray:
    xy = np.asarray(points, dtype=np.float64)[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def assert_no_token(result: subprocess.CompletedProcess, *files: Path) -> None:
    assert TOKEN not in result.stdout + result.stderr
    for path in files:
        assert TOKEN not in path.read_text()


# ------------------------------------------------------------------------------- list / xml protocol


def test_list_cli_prints_only_the_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "slicer_cli_web.cli_list_entrypoint", "--list_cli"],
        cwd=CLI_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    listed = json.loads(result.stdout)
    assert listed == json.loads((CLI_DIR / "slicer_cli_list.json").read_text())
    assert set(listed) == set(NAMES)
    for spec in listed.values():
        assert spec == {"type": "python", "docker-params": {"ipc_mode": "host"}}


@pytest.mark.parametrize("name", NAMES)
def test_xml_is_printed_alone_and_parses_with_slicer_cli_web(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from slicer_cli_web.cli_utils import as_model, get_cli_parameters

    result = subprocess.run(
        [sys.executable, "-m", "slicer_cli_web.cli_list_entrypoint", name, "--xml"],
        cwd=CLI_DIR,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == (CLI_DIR / name / f"{name}.xml").read_text().strip()
    ET.fromstring(result.stdout)  # nothing but the XML on stdout
    with caplog.at_level(logging.WARNING):
        clim = as_model(result.stdout)
        index_params, opt_params, simple_outputs = get_cli_parameters(clim)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert clim.category == "lnassist" and clim.version == __version__ and clim.license
    assert simple_outputs == []
    params = {p.name: p for p in index_params + opt_params}
    outputs = [p for p in params.values() if p.channel == "output"]
    if name == "LNRetrain":  # no slide: it reads and writes Girder folders through the job's token
        assert index_params == [] and outputs == []
    else:
        assert [(p.name, p.typ) for p in index_params][0] == ("inputImageFile", "image")
        assert outputs and all(p.longflag and p.reference == "inputImageFile" for p in outputs)
    for p in outputs:
        if p.name.endswith("AnnotationFile"):
            assert p.typ == "file" and p.fileExtensions == [".anot"]
    for girder_name in ("girderApiUrl", "girderToken"):
        assert params[girder_name].typ == "string" and params[girder_name].default == ""
    advanced = {p.name for group in clim if group.advanced for p in group}
    assert {"girderApiUrl", "girderToken", "threads", "device"} <= advanced
    if "analysisRegion" in params:
        assert params["analysisRegion"].typ == "region"
        assert params["analysisRegion"].default == [-1.0, -1.0, -1.0, -1.0]
    if "mode" in params:
        assert params["mode"].elements == ["general", "screening"] and params["mode"].default == "general"
    help_text = subprocess.run(
        [sys.executable, str(CLI_DIR / name / f"{name}.py"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert clim.title in help_text and all(p.name in help_text for p in index_params)


# --------------------------------------------------------------------------------------- CLI runs


def test_lnanalysis_writes_valid_documents_and_metadata(setup: Setup, tmp_path: Path) -> None:
    x0, y0, x1, y1 = setup.gt["nodes"][0]["bbox"]
    region = [x0 - 40, y0 - 40, x1 - x0 + 80, y1 - y0 + 80]
    out = {
        "outputAnnotationFile": tmp_path / "ln.anot",
        "outputHeatmapAnnotationFile": tmp_path / "heat.anot",
        "outputItemMetadata": tmp_path / "meta.json",
        "outputHeatmapImage": tmp_path / "heat.tiff",
    }
    # slicer_cli_web writes a region as "x, y, w, h" (a separate "-1,..." word would read as a flag).
    options = ["--analysisRegion", ", ".join(map(str, region)), "--mode", "screening", *output_flags(out)]
    result = run_cli("LNAnalysis", options, [str(setup.slide)], setup.env)
    assert result.returncode == 0, result.stderr
    stages, values = progress_of(result.stdout)
    assert stages == ["detect", "classify", "write"]
    assert values == sorted(values) and values[-1] == 1.0
    assert "classify: LN 1/1: 0.300" in result.stdout
    assert_no_token(result, *(path for name, path in out.items() if name != "outputHeatmapImage"))

    ln_doc = json.loads(out["outputAnnotationFile"].read_text())
    heat_doc = json.loads(out["outputHeatmapAnnotationFile"].read_text())
    validate_document(ln_doc)
    validate_document(heat_doc, cli_outputs={"outputHeatmapImage"})
    # The all-LN detector finds exactly the region (to a detector pixel, plus the paper's dilation).
    (element,) = ln_doc["elements"]
    expected = np.array([region[0], region[1], region[0] + region[2], region[1] + region[3]])
    assert np.abs(bbox(element["points"]) - expected).max() <= 2 * DETECTOR_PX
    assert element["user"]["score"] == pytest.approx(SCORE, abs=1e-4)
    assert element["user"]["positive"] and element["group"] == GROUP_POSITIVE
    attributes = ln_doc["attributes"]
    assert attributes["cli"] == "LNAnalysis" and attributes["threshold"] == 0.15
    assert {m["id"] for m in attributes["models"]} == {"detector-all", "classifier-fixed"}
    assert attributes["parameters"]["mode"] == "screening"
    assert not {"girderToken", "girderApiUrl"} & set(attributes["parameters"])
    # The full-resolution image alone (no griddata lattice beside it): referenced by the output's
    # name (the server puts the item id in), placed by its transform over the LN, opaque where the
    # LN's (constant) score is.
    (image,) = heat_doc["elements"]
    assert image["type"] == "image" and image["girderId"] == "outputHeatmapImage"
    rgba = tifffile.imread(out["outputHeatmapImage"])
    transform = image["transform"]
    (px, zero), (zero2, py) = transform["matrix"]
    assert px == py > 0 and zero == zero2 == 0
    assert transform["xoffset"] == transform["yoffset"] == 0
    opaque = rgba[..., 3] > 0
    rows, cols = np.nonzero(opaque)
    shown = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) * px
    assert np.abs(shown - bbox(element["points"])).max() <= 1.5 * px
    assert len({tuple(p) for p in rgba[opaque]}) == 1

    meta = json.loads(out["outputItemMetadata"].read_text())
    assert (
        meta["lnassist_lns"] == 1 and meta["lnassist_positive_lns"] == 1 and meta["lnassist_slide_positive"]
    )
    assert meta["lnassist_max_score"] == pytest.approx(SCORE, abs=1e-4)
    assert meta["lnassist_threshold"] == 0.15 and meta["lnassist_mode"] == "screening"
    assert meta["lnassist_detector"] == "detector-all" and meta["lnassist_classifier"] == "classifier-fixed"
    assert meta["lnassist_contours"] == "detector"
    assert all(k.startswith("lnassist_") and "." not in k for k in meta)


def test_lndetect_writes_the_outlines_only(setup: Setup, tmp_path: Path) -> None:
    region = [1000, 500, 1200, 900]
    out = tmp_path / "contours.anot"
    options = [f"--analysisRegion={','.join(map(str, region))}", "--detector", "detector-all"]
    options += output_flags({"outputAnnotationFile": out})
    result = run_cli("LNDetect", options, [str(setup.slide)], setup.env)
    assert result.returncode == 0, result.stderr
    assert progress_of(result.stdout)[0] == ["detect", "write"]
    assert_no_token(result, out)
    doc = json.loads(out.read_text())
    validate_document(doc)
    (element,) = doc["elements"]
    assert element["type"] == "polyline" and element["closed"] and element["group"] == "LN"
    assert set(element["user"]) == {"ln_id", "area_um2"}
    expected = np.array([region[0], region[1], region[0] + region[2], region[1] + region[3]])
    assert np.abs(bbox(element["points"]) - expected).max() <= 2 * DETECTOR_PX
    assert element["user"]["area_um2"] == pytest.approx(region[2] * region[3] * 0.46**2, rel=0.1)
    assert doc["attributes"]["cli"] == "LNDetect" and doc["attributes"]["models"][0]["id"] == "detector-all"


def test_lnclassify_scores_the_given_outlines(setup: Setup, tmp_path: Path) -> None:
    truths = [np.asarray(node["contour"]) for node in setup.gt["nodes"]]
    elements = [{"type": "polyline", "closed": True, "points": [[x, y, 0] for x, y in t]} for t in truths]
    elements += [
        {"type": "polyline", "closed": False, "points": [[0, 0, 0], [50, 0, 0], [50, 50, 0]]},
        {"type": "point", "center": [10, 10, 0]},
    ]
    # As GET /annotation/{id} returns it: the document inside a Girder record.
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({"_id": "0" * 24, "annotation": {"name": "edited", "elements": elements}}))
    out = {"outputAnnotationFile": tmp_path / "ln.anot", "outputItemMetadata": tmp_path / "meta.json"}
    options = ["--inputAnnotationFile", str(edited), *output_flags(out)]
    result = run_cli("LNClassify", options, [str(setup.slide)], setup.env)
    assert result.returncode == 0, result.stderr
    assert progress_of(result.stdout)[0] == ["classify", "write"]
    assert "classify: LN 2/2: 0.300" in result.stdout
    assert_no_token(result, *out.values())
    doc = json.loads(out["outputAnnotationFile"].read_text())
    validate_document(doc)
    assert [e["user"]["ln_id"] for e in doc["elements"]] == [1, 2]
    for element, truth in zip(doc["elements"], truths, strict=True):
        assert np.abs(bbox(element["points"]) - bbox(truth.tolist())).max() <= 2.0  # simplification tolerance
        assert element["user"]["score"] == pytest.approx(SCORE, abs=1e-4)
        assert not element["user"]["positive"] and element["group"] == GROUP_NEGATIVE
    assert [m["kind"] for m in doc["attributes"]["models"]] == ["classifier"]
    meta = json.loads(out["outputItemMetadata"].read_text())
    assert (
        meta["lnassist_lns"] == 2
        and meta["lnassist_positive_lns"] == 0
        and not meta["lnassist_slide_positive"]
    )
    assert meta["lnassist_contours"] == "annotation" and meta["lnassist_detector"] == ""


@pytest.mark.parametrize(
    ("name", "case", "message"),
    [
        ("LNAnalysis", "missing slide", "no such file"),
        ("LNAnalysis", "region outside the slide", "lies outside the 4600 x 2600 px slide"),
        ("LNAnalysis", "no output", "nothing to write"),
        ("LNAnalysis", "heatmap image without its annotation", "needs --outputHeatmapAnnotationFile"),
        ("LNClassify", "annotation not JSON", "not a JSON annotation file"),
        ("LNClassify", "annotation without polylines", "no closed polyline"),
        ("LNClassify", "no outlines given", "either as --inputAnnotationFile or as --annotationId"),
        ("LNClassify", "annotation id and file", "either as --inputAnnotationFile or as --annotationId"),
        ("LNClassify", "annotation id not an id", "not a Girder id"),
        (
            "LNClassify",
            "annotation id, server down",
            "cannot reach the Girder API at http://127.0.0.1:9/api/v1",
        ),
    ],
)
def test_bad_input_fails_with_one_line_and_no_outputs(
    setup: Setup, tmp_path: Path, name: str, case: str, message: str
) -> None:
    out = tmp_path / "out"
    inputs = [str(tmp_path / "nope.tiff") if case == "missing slide" else str(setup.slide)]
    options = ["--analysisRegion=5000,100,300,300"] if case == "region outside the slide" else []
    if (
        name == "LNClassify"
        and not case.startswith(("no outlines", "annotation id"))
        or case.endswith("file")
    ):
        annotation = tmp_path / "in.json"
        annotation.write_text("{not json" if case == "annotation not JSON" else json.dumps({"elements": []}))
        options += ["--inputAnnotationFile", str(annotation)]
    if case.startswith("annotation id"):
        options += [
            "--annotationId",
            "not-an-id" if case.endswith("not an id") else "0123456789abcdef01234567",
        ]
    if case != "no output":
        options += output_flags(
            {"outputAnnotationFile": out / "ln.anot", "outputItemMetadata": out / "meta.json"}
        )
    if case == "heatmap image without its annotation":
        options += output_flags({"outputHeatmapImage": out / "heat.tiff"})
    result = run_cli(name, options, inputs, setup.env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"{name}: error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr
    assert_no_token(result)
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------------------------- the helpers


def test_progress_protocol_stages_and_escaping() -> None:
    stream = io.StringIO()
    progress = SlicerProgress([("detect", "finding <LNs>", 1.0), ("classify", "scoring", 3.0)], stream)
    progress("detect", 0.0, "start")
    progress("detect", 1.0, "2 LN(s) found")  # opens the next stage at once
    progress("classify", 0.5, "LN 1/2: 0.300")
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        "<filter-start><filter-name>detect</filter-name>"
        "<filter-comment>finding &lt;LNs&gt;</filter-comment></filter-start>"
    )
    values = [float(v) for v in re.findall(r"<filter-progress>([^<]*)<", stream.getvalue())]
    assert values == [0.0, 0.25, 0.625, 1.0]
    assert re.findall(r"<filter-(start|end)><filter-name>(\w+)<", stream.getvalue()) == [
        ("start", "detect"),
        ("end", "detect"),
        ("start", "classify"),
        ("end", "classify"),
    ]
    assert "classify: LN 1/2: 0.300" in lines


def test_annotation_contours_from_documents_records_and_lists(tmp_path: Path) -> None:
    square = [[0, 0, 0], [10, 0, 0], [10, 10, 0], [0, 10, 0]]
    doc = {"name": "a", "elements": [{"type": "polyline", "closed": True, "points": square}]}
    path = tmp_path / "a.json"
    path.write_text(json.dumps([doc, {"annotation": doc}]))
    contours = read_annotation_contours(path)
    assert len(contours) == 2 and all(np.array_equal(c, np.asarray(square)[:, :2]) for c in contours)
    flat = {"elements": [{"type": "polyline", "closed": True, "points": [[0, 0, 0], [5, 5, 0], [9, 9, 0]]}]}
    path.write_text(json.dumps(flat))
    with pytest.raises(CliInputError, match="encloses no area"):
        read_annotation_contours(path)
    path.write_text(json.dumps({"name": "no elements"}))
    with pytest.raises(CliInputError, match="not an annotation"):
        read_annotation_contours(path)
