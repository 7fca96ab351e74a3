"""The whole DSA job path, for real: Girder 3 (on secantusdb) with slicer_cli_web, girder_worker on
Redis, our Docker engine running the lnassist image, HistomicsUI's ingest of the outputs.

``tools/dsa_stack.py up`` starts the server side (its own venv, as the Girder container is separate
from the CLI image in production); the image is the one ``test_docker.py`` checks (fixture
``image``). The flow is what a DSA admin and a pathologist do: register the image
(``PUT /slicer_cli_web/docker_image``), upload a slide, press "Run LN analysis"
(``POST /slicer_cli_web/cli/{id}/run``), then read the annotations, the heatmap image and the item
metadata the job left on the slide. Truth: the synthetic slide's LNs (where they are) and the same
CLI run directly on the same slide with the same models (what they score).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import girder_client
import numpy as np
import pytest
from docker_helpers import NAMES, REPO, docker, docker_test, tail
from dsa_helpers import (
    JOB_CANCELED,
    JOB_ERROR,
    JOB_SUCCESS,
    JOB_TIMEOUT_S,
    Dsa,
    annotations,
    job_log,
    lnassist_documents,
    refusal,
    stack,
    upload_slide,
    wait_for_job,
    wait_until,
)

from lnassist.dsa import DOCUMENT_HEATMAP, DOCUMENT_LN, GROUP_NEGATIVE, GROUP_POSITIVE
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

JOB_RUNNING = 2
LAYOUT = LayoutConfig(4600, 2600, seed=3, categories=("negative", "itc"))
LAYOUT_SIZE = (LAYOUT.width_px, LAYOUT.height_px)
SECOND_LAYOUT = LayoutConfig(4600, 2600, seed=4, categories=("negative",))


# What HistomicsUI's panel sends for the parameters a test leaves alone.
JOB_DEFAULTS = {
    "mode": "general",
    "threshold": -1,
    "mpp": -1,
    "classifier": "",
    "device": "auto",
    "threads": 0,
    "girderApiUrl": "",
    "girderToken": "",
}
WHOLE_SLIDE = json.dumps([-1, -1, -1, -1])
OUTPUT_EXTENSIONS = {"AnnotationFile": "anot", "ItemMetadata": "json", "Image": "tiff"}


def start_job(
    dsa: Dsa, cli_name: str, outputs: tuple[str, ...], stem: str, folder_id: str, **params: object
) -> dict:
    """Press a CLI's button in HistomicsUI: POST .../run with ``params`` over :data:`JOB_DEFAULTS`,
    each output named ``STEM-NAME.EXT`` in ``folder_id``. Returns the job without waiting."""
    params = {**JOB_DEFAULTS, **params}
    for name in outputs:
        extension = next(ext for suffix, ext in OUTPUT_EXTENSIONS.items() if name.endswith(suffix))
        params[name] = f"{stem}-{name}.{extension}"
        params[f"{name}_folder"] = folder_id
    return dsa.gc.post(f"slicer_cli_web/cli/{dsa.clis[cli_name]}/run", parameters=params)


def run_job(dsa: Dsa, cli_name: str, item: dict, outputs: tuple[str, ...], **params: object) -> dict:
    """A CLI on an uploaded slide, outputs named after the slide into the test folder; waits for the end."""
    stem = f"{item['name']}-{cli_name}-{params.get('mode', JOB_DEFAULTS['mode'])}"
    job = start_job(dsa, cli_name, outputs, stem, dsa.folder_id, inputImageFile=item["fileId"], **params)
    return wait_for_job(dsa.gc, job["_id"])


def run_analysis(dsa: Dsa, item: dict, mode: str, heatmap_image: bool = True) -> dict:
    outputs = ("outputAnnotationFile", "outputHeatmapAnnotationFile", "outputItemMetadata")
    outputs += ("outputHeatmapImage",) if heatmap_image else ()
    return run_job(dsa, "LNAnalysis", item, outputs, mode=mode, analysisRegion=WHOLE_SLIDE, detector="")


def ln_document_record(dsa: Dsa, item: dict) -> dict:
    (record,) = [d for d in annotations(dsa.gc, item["_id"]) if d["annotation"]["name"] == "LN metastasis"]
    return record


def bbox_of(points: list) -> np.ndarray:
    xy = np.asarray(points, np.float64)[:, :2]
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


def bbox_iou(points: list, box: list) -> float:
    a = bbox_of(points)
    w = max(0.0, min(a[2], box[2]) - max(a[0], box[0]))
    h = max(0.0, min(a[3], box[3]) - max(a[1], box[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (box[2] - box[0]) * (box[3] - box[1]) - w * h
    return w * h / union


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("dsa") / "node-slide.tiff"
    gt = write_slide(path, LAYOUT, workers=1)
    return path, gt


@pytest.fixture(scope="module")
def local_run(slide: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The same CLI with the same shipped models, run directly on the same slide: what the job must match."""
    out = tmp_path_factory.mktemp("local") / "ln.anot"
    command = [sys.executable, str(REPO / "cli" / "LNAnalysis" / "LNAnalysis.py"), "--mode", "screening",
               "--outputAnnotationFile", str(out), str(slide[0])]  # fmt: skip
    env = {**os.environ, "LNASSIST_MODELS": str(REPO / "models")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


@docker_test
def test_admin_registers_the_image_and_gets_every_cli(dsa: Dsa) -> None:
    assert set(dsa.clis) == set(NAMES)
    for name, cli_id in dsa.clis.items():
        xml = dsa.gc.get(f"slicer_cli_web/cli/{cli_id}/xml", jsonResp=False).text
        assert xml.strip() == (REPO / "cli" / name / f"{name}.xml").read_text().strip()


@docker_test
def test_run_ln_analysis_job_puts_results_on_the_slide(
    dsa: Dsa, slide: tuple[Path, dict], local_run: dict
) -> None:
    path, gt = slide
    item = upload_slide(dsa, path)
    assert item["largeImage"]["fileId"] == item["fileId"]
    job = run_analysis(dsa, item, "screening")
    log = job_log(job)
    assert job["status"] == JOB_SUCCESS, tail(log)
    assert f"detect: {len(gt['nodes'])} LN(s) found" in log and "Traceback" not in log

    docs = {doc["annotation"]["name"]: doc for doc in annotations(dsa.gc, item["_id"])}
    assert set(docs) == {"LN metastasis", "LN metastasis heatmap"}
    ln_doc = docs["LN metastasis"]["annotation"]
    heat_doc = docs["LN metastasis heatmap"]["annotation"]
    # Where the LNs are: one outline per true node, on it.
    outlines = ln_doc["elements"]
    assert len(outlines) == len(gt["nodes"])
    for node in gt["nodes"]:
        assert max(bbox_iou(e["points"], node["bbox"]) for e in outlines) > 0.7
    # What they score: exactly what the same CLI computes outside Girder.
    expected = sorted(e["user"]["score"] for e in local_run["elements"])
    assert sorted(e["user"]["score"] for e in outlines) == pytest.approx(expected, abs=1e-3)
    for element in outlines:
        positive = element["user"]["score"] >= 0.15
        assert element["group"] == (GROUP_POSITIVE if positive else GROUP_NEGATIVE)
    counts = ln_doc["attributes"]["counts"]
    assert counts["lns"] == len(outlines) and counts["positive"] == sum(
        e["user"]["score"] >= 0.15 for e in outlines
    )
    assert (
        ln_doc["attributes"]["cli"] == "LNAnalysis"
        and "girderToken" not in ln_doc["attributes"]["parameters"]
    )

    # The heatmap: the full-resolution image alone (tests/test_histomicsui.py checks how it is
    # drawn), its name resolved to the item the image output was uploaded as, which Girder serves as
    # a large image.
    (image,) = heat_doc["elements"]
    assert image["type"] == "image" and heat_doc["attributes"]["counts"]["heatmaps"] == len(outlines)
    image_item = dsa.gc.get(f"item/{image['girderId']}")
    assert image_item["name"].endswith("outputHeatmapImage.tiff") and "largeImage" in image_item
    tiles = dsa.gc.get(f"item/{image['girderId']}/tiles")
    matrix = image["transform"]["matrix"]
    covered_base_px = (tiles["sizeX"] * matrix[0][0], tiles["sizeY"] * matrix[1][1])
    assert all(0 < covered <= full for covered, full in zip(covered_base_px, LAYOUT_SIZE, strict=True))

    meta = dsa.gc.get(f"item/{item['_id']}")["meta"]
    assert meta["lnassist_lns"] == counts["lns"] and meta["lnassist_positive_lns"] == counts["positive"]
    assert meta["lnassist_mode"] == "screening" and meta["lnassist_threshold"] == 0.15
    assert meta["lnassist_max_score"] == pytest.approx(max(expected), abs=1e-3)


@docker_test
def test_detect_only_job_gives_annotators_the_outlines(dsa: Dsa, slide: tuple[Path, dict]) -> None:
    path, gt = slide
    item = upload_slide(dsa, path)
    job = run_job(dsa, "LNDetect", item, ("outputAnnotationFile",), analysisRegion=WHOLE_SLIDE, detector="")
    assert job["status"] == JOB_SUCCESS, tail(job_log(job))
    (doc,) = [d["annotation"] for d in annotations(dsa.gc, item["_id"])]
    assert doc["name"] == "LN contours" and doc["attributes"]["cli"] == "LNDetect"
    assert len(doc["elements"]) == len(gt["nodes"])
    assert {e["group"] for e in doc["elements"]} == {"LN"} and all(
        "score" not in e["user"] for e in doc["elements"]
    )
    assert not any(key.startswith("lnassist_") for key in dsa.gc.get(f"item/{item['_id']}").get("meta", {}))


@docker_test
def test_a_rerun_never_touches_the_pathologists_reviewed_annotation(
    dsa: Dsa, slide: tuple[Path, dict]
) -> None:
    item = upload_slide(dsa, slide[0])
    first = run_analysis(dsa, item, "screening", heatmap_image=False)
    assert first["status"] == JOB_SUCCESS, tail(job_log(first))
    record = ln_document_record(dsa, item)
    # The pathologist's review: one LN relabelled, the document marked reviewed.
    reviewed = record["annotation"]
    reviewed["elements"][0]["group"] = GROUP_NEGATIVE
    reviewed["attributes"]["review"] = {"status": "reviewed", "by": "pathologist", "model_run": "screening"}
    dsa.gc.put(f"annotation/{record['_id']}", data=json.dumps(reviewed))
    before = dsa.gc.get(f"annotation/{record['_id']}")

    second = run_analysis(dsa, item, "general", heatmap_image=False)
    assert second["status"] == JOB_SUCCESS, tail(job_log(second))
    after = dsa.gc.get(f"annotation/{record['_id']}")
    assert after["annotation"] == before["annotation"] and after["_version"] == before["_version"]
    # The reviewed (edited) LN document stays beside the new one; the first run's heatmap, untouched
    # AI output, is superseded by the second's (the plugin: plugin/girder_lnassist/supersede.py).
    names = [d["annotation"]["name"] for d in annotations(dsa.gc, item["_id"])]
    assert names.count("LN metastasis") == 2
    assert wait_until(lambda: [d["annotation"]["name"] for d in annotations(dsa.gc, item["_id"])].count(
        "LN metastasis heatmap") == 1, "the superseded heatmap gone")
    # slicer_cli_web applies the run's item metadata after the job reports success.
    assert wait_until(lambda: dsa.gc.get(f"item/{item['_id']}")["meta"]["lnassist_mode"] == "general",
                      "the item metadata of the second run")


@docker_test
def test_pathologist_corrected_outlines_are_rescored_from_girder(dsa: Dsa, slide: tuple[Path, dict]) -> None:
    item = upload_slide(dsa, slide[0])
    first = run_analysis(dsa, item, "general", heatmap_image=False)
    assert first["status"] == JOB_SUCCESS, tail(job_log(first))
    record = ln_document_record(dsa, item)
    # The correction: one outline deleted (say, not an LN); "Classify LNs" then scores what is left,
    # reading the annotation from Girder with the job's token.
    corrected = record["annotation"]
    kept, dropped = corrected["elements"][0], corrected["elements"][1:]
    assert dropped, "the slide should have more than one LN"
    corrected["elements"] = [kept]
    dsa.gc.put(f"annotation/{record['_id']}", data=json.dumps(corrected))

    outputs = ("outputAnnotationFile", "outputItemMetadata")
    job = run_job(dsa, "LNClassify", item, outputs, annotationId=record["_id"], mode="screening")
    log = job_log(job)
    assert job["status"] == JOB_SUCCESS, tail(log)
    assert f"1 LN outline(s) from annotation {record['_id']}" in log
    # The job's output document is ingested after the job ends (a CI run looked before it was there).
    rescored = wait_until(
        lambda: [
            d["annotation"]
            for d in annotations(dsa.gc, item["_id"])
            if d["annotation"]["name"] == "LN metastasis" and d["_id"] != record["_id"]
        ],
        "the rescored LN document ingested",
    )
    (element,) = rescored[0]["elements"]
    assert np.abs(bbox_of(element["points"]) - bbox_of(kept["points"])).max() <= 2
    # Same outline (re-simplified by at most 2 px), same model: the same score.
    assert element["user"]["score"] == pytest.approx(kept["user"]["score"], abs=0.01)
    assert rescored[0]["attributes"]["parameters"]["annotationId"] == record["_id"]
    meta = dsa.gc.get(f"item/{item['_id']}")["meta"]
    assert meta["lnassist_contours"] == "annotation" and meta["lnassist_lns"] == 1
    assert meta["lnassist_mode"] == "screening" and meta["lnassist_detector"] == ""

    missing = run_job(dsa, "LNClassify", item, outputs, annotationId="0123456789abcdef01234567")
    assert missing["status"] == JOB_ERROR
    assert "LNClassify: error: annotation 0123456789abcdef01234567: the server refused it" in job_log(missing)


@docker_test
def test_batch_over_a_folder_analyses_every_slide(dsa: Dsa, slide: tuple[Path, dict], tmp_path: Path) -> None:
    """The admin's batch run: slicer_cli_web's folder + name-regex input runs the CLI once per large
    image, outputs named after each slide by template, results on each slide's item."""
    folder = dsa.gc.createFolder(dsa.folder_id, f"batch-{uuid.uuid4().hex[:6]}")
    second = tmp_path / "second-slide.tiff"
    truths = {"node-slide.tiff": slide[1], "second-slide.tiff": write_slide(second, SECOND_LAYOUT, workers=1)}
    for path in (slide[0], second):
        dsa.gc.uploadFileToFolder(folder["_id"], str(path))
    (tmp_path / "notes.txt").write_text("not matched by the regex\n")
    dsa.gc.uploadFileToFolder(folder["_id"], str(tmp_path / "notes.txt"))
    # Outputs named by template after each slide.
    batch = start_job(
        dsa,
        "LNAnalysis",
        ("outputAnnotationFile", "outputItemMetadata"),
        "{{parameter_inputImageFile_base}}",
        folder["_id"],
        inputImageFile=r"\.tiff$",
        inputImageFile_folder=folder["_id"],
        analysisRegion=WHOLE_SLIDE,
        detector="",
    )
    batch = wait_for_job(dsa.gc, batch["_id"])
    log = job_log(batch)
    assert batch["status"] == JOB_SUCCESS, log
    assert log.count("Scheduling job") == 2
    children = re.findall(r"Scheduling job ([0-9a-f]{24})", log)
    for child in children:
        assert wait_for_job(dsa.gc, child)["status"] == JOB_SUCCESS, tail(job_log(dsa.gc.get(f"job/{child}")))
    items = {item["name"]: item for item in dsa.gc.listItem(folder["_id"])}
    for name, gt in truths.items():
        stem = name.rsplit(".", 1)[0]
        assert f"{stem}-outputAnnotationFile.anot" in items and f"{stem}-outputItemMetadata.json" in items
        docs = [d["annotation"] for d in annotations(dsa.gc, items[name]["_id"])]
        assert [d["name"] for d in docs] == ["LN metastasis"]
        assert len(docs[0]["elements"]) == len(gt["nodes"])
        meta = dsa.gc.get(f"item/{items[name]['_id']}")["meta"]
        assert meta["lnassist_lns"] == len(gt["nodes"]) and meta["lnassist_mode"] == "general"
    assert annotations(dsa.gc, items["notes.txt"]["_id"]) == []


@docker_test
def test_a_cancelled_job_is_cancelled_not_failed_and_leaves_nothing(dsa: Dsa, tmp_path: Path) -> None:
    """Cancel once the container runs (a 10,000 x 6,000 px slide of four nodes on one CPU thread takes
    longer than the worker needs to stop it): the job ends CANCELED, not ERROR; the container is gone;
    no output reaches the slide or its folder."""
    path = tmp_path / "four-nodes.tiff"
    write_slide(path, LayoutConfig(10000, 6000, seed=8, categories=("negative",) * 4), workers=1)
    folder = dsa.gc.createFolder(dsa.folder_id, f"cancel-{uuid.uuid4().hex[:6]}")
    file = dsa.gc.uploadFileToFolder(folder["_id"], str(path))
    item = {**dsa.gc.get(f"item/{file['itemId']}"), "fileId": file["_id"]}
    outputs = ("outputAnnotationFile", "outputHeatmapAnnotationFile", "outputItemMetadata")
    job = start_job(
        dsa,
        "LNAnalysis",
        outputs,
        "cancelled",
        folder["_id"],
        inputImageFile=item["fileId"],
        analysisRegion=WHOLE_SLIDE,
        detector="",
        threads=1,
    )
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := dsa.gc.get(f"job/{job['_id']}"))["status"] != JOB_RUNNING:
        assert job["status"] not in (JOB_SUCCESS, JOB_ERROR) and time.monotonic() < deadline, job_log(job)
        time.sleep(0.2)
    dsa.gc.put(f"job/{job['_id']}/cancel")
    job = wait_for_job(dsa.gc, job["_id"])
    assert job["status"] == JOB_CANCELED, job_log(job)
    assert annotations(dsa.gc, item["_id"]) == []
    assert [i["name"] for i in dsa.gc.listItem(folder["_id"])] == ["four-nodes.tiff"]
    assert "lnassist_lns" not in dsa.gc.get(f"item/{item['_id']}").get("meta", {})
    running = docker("ps", "--quiet", "--filter", f"ancestor={dsa.image}")
    assert running.returncode == 0 and running.stdout.strip() == ""


@docker_test
def test_a_file_that_is_not_a_slide_fails_the_job_with_the_cli_message(dsa: Dsa, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-slide.tiff"
    bogus.write_text("this is a text file, not a TIFF\n")
    file = dsa.gc.uploadFileToFolder(dsa.folder_id, str(bogus))
    item = {**dsa.gc.get(f"item/{file['itemId']}"), "fileId": file["_id"]}
    job = run_analysis(dsa, item, "general")
    log = job_log(job)
    assert job["status"] == JOB_ERROR
    assert "LNAnalysis: error:" in log and "Traceback" not in log
    assert annotations(dsa.gc, item["_id"]) == []
    assert not any(key.startswith("lnassist_") for key in dsa.gc.get(f"item/{item['_id']}").get("meta", {}))


# ------------------------------------------------------------------ the plugin's "Run LN analysis"


def analyze(dsa: Dsa, item: dict, **params: object) -> dict:
    return dsa.gc.post(f"lnassist/item/{item['_id']}/analyze", parameters=params)


@docker_test
def test_plugin_runs_the_analysis_and_a_rerun_supersedes_the_untouched_one(
    configured: Dsa, slide: tuple[Path, dict]
) -> None:
    dsa = configured
    path, gt = slide
    item = upload_slide(dsa, path)
    job = analyze(dsa, item, mode="screening")
    assert job["title"].startswith("Run LN analysis") and job["userId"] == dsa.gc.get("user/me")["_id"]
    job = wait_for_job(dsa.gc, job["_id"])
    assert job["status"] == JOB_SUCCESS, tail(job_log(job))
    summary = wait_until(
        lambda: (s := dsa.gc.get(f"lnassist/item/{item['_id']}/summary"))["analysed"] and s, "LN document"
    )
    assert summary["counts"]["total"] == len(gt["nodes"]) and summary["mode"] == "screening"
    assert summary["job_id"] == job["_id"]
    # The run's heatmap image (a large image in the slide's folder) is marked as its output, so the
    # study table counts slides only.
    images = [i for i in dsa.gc.listItem(dsa.folder_id) if i["name"].endswith("outputHeatmapImage.tiff")]
    assert images
    wait_until(
        lambda: all(dsa.gc.get(f"item/{i['_id']}").get("meta", {}).get("lnassist_output_of") for i in images),
        "heatmap images marked as outputs",
    )
    rows = dsa.gc.get(f"lnassist/folder/{dsa.folder_id}/summary", parameters={"limit": 0})["rows"]
    assert item["_id"] in {row["item_id"] for row in rows}
    assert not any(row["name"].endswith("outputHeatmapImage.tiff") for row in rows)
    (first_ln,) = lnassist_documents(dsa, item["_id"], DOCUMENT_LN)
    (first_heat,) = wait_until(
        lambda: lnassist_documents(dsa, item["_id"], DOCUMENT_HEATMAP), "heatmap document"
    )

    second = wait_for_job(dsa.gc, analyze(dsa, item, mode="general")["_id"])
    assert second["status"] == JOB_SUCCESS, tail(job_log(second))
    # Exactly one current AI document of each kind: the new one.
    for kind, first in ((DOCUMENT_LN, first_ln), (DOCUMENT_HEATMAP, first_heat)):
        docs = wait_until(
            lambda kind=kind, first=first: (d := lnassist_documents(dsa, item["_id"], kind))
            and len(d) == 1 and d[0]["_id"] != first["_id"] and d,
            f"one new {kind} document",
        )
        assert docs[0]["annotation"]["attributes"]["mode"] == "general"
    history = dsa.gc.get(f"annotation/{first_ln['_id']}/history")
    assert history and history[0]["annotation"]["attributes"]["mode"] == "screening"


@docker_test
def test_plugin_reruns_leave_a_reviewed_document_byte_identical(
    configured: Dsa, slide: tuple[Path, dict]
) -> None:
    dsa = configured
    item = upload_slide(dsa, slide[0])
    first = wait_for_job(dsa.gc, analyze(dsa, item, mode="screening")["_id"])
    assert first["status"] == JOB_SUCCESS, tail(job_log(first))
    (reviewed,) = wait_until(lambda: lnassist_documents(dsa, item["_id"], DOCUMENT_LN), "LN document")
    dsa.gc.put(f"lnassist/annotation/{reviewed['_id']}/review", parameters={"state": "accepted"})
    before = dsa.gc.get(f"annotation/{reviewed['_id']}")
    for mode in ("general", "screening"):
        job = wait_for_job(dsa.gc, analyze(dsa, item, mode=mode)["_id"])
        assert job["status"] == JOB_SUCCESS, tail(job_log(job))
    # The reviewed document and the newest AI one; the AI one between them was superseded.
    docs = wait_until(
        lambda: len(d := lnassist_documents(dsa, item["_id"], DOCUMENT_LN)) == 2 and d, "two LN documents"
    )
    assert reviewed["_id"] in {d["_id"] for d in docs}
    assert dsa.gc.get(f"annotation/{reviewed['_id']}") == before


@docker_test
def test_plugin_racing_runs_leave_one_current_ai_document(configured: Dsa, slide: tuple[Path, dict]) -> None:
    dsa = configured
    item = upload_slide(dsa, slide[0])
    jobs = [analyze(dsa, item, mode="general"), analyze(dsa, item, mode="screening")]
    for job in jobs:
        assert wait_for_job(dsa.gc, job["_id"])["status"] == JOB_SUCCESS
    for kind in (DOCUMENT_LN, DOCUMENT_HEATMAP):
        # Both runs' documents get ingested; each creation supersedes only older ones.
        wait_until(
            lambda kind=kind: len(lnassist_documents(dsa, item["_id"], kind)) == 1, f"one {kind} document"
        )
        time.sleep(2)
        assert len(lnassist_documents(dsa, item["_id"], kind)) == 1


@docker_test
def test_plugin_analyze_refuses_clearly(configured: Dsa, slide: tuple[Path, dict], tmp_path: Path) -> None:
    dsa = configured
    notes = tmp_path / "notes.txt"
    notes.write_text("not a slide\n")
    text_item = dsa.gc.uploadFileToFolder(dsa.folder_id, str(notes))["itemId"]
    refused = refusal(lambda: dsa.gc.post(f"lnassist/item/{text_item}/analyze"))
    assert refused.status == 400 and "not a large image" in refused.responseText
    item = upload_slide(dsa, slide[0])
    refused = refusal(lambda: analyze(dsa, item, mode="fast"))
    assert refused.status == 400
    refused = refusal(lambda: analyze(dsa, item, threshold=1.5))
    assert refused.status == 400 and "threshold" in refused.responseText
    # A reader who cannot write the slide, and nobody logged in.
    login, password = f"reader{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    user = {"login": login, "email": f"{login}@example.org", "firstName": "R", "lastName": "R"}
    reader_id = dsa.gc.post("user", parameters={**user, "password": password})["_id"]
    access = dsa.gc.get(f"folder/{dsa.folder_id}/access")
    access["users"].append({"id": reader_id, "level": 0})
    dsa.gc.put(f"folder/{dsa.folder_id}/access", parameters={"access": json.dumps(access)})
    reader = girder_client.GirderClient(apiUrl=dsa.gc.urlBase)
    reader.authenticate(login, password)
    assert reader.get(f"lnassist/item/{item['_id']}/summary")["analysed"] is False
    assert refusal(lambda: reader.post(f"lnassist/item/{item['_id']}/analyze")).status == 403
    anonymous = girder_client.GirderClient(apiUrl=dsa.gc.urlBase)
    assert refusal(lambda: anonymous.post(f"lnassist/item/{item['_id']}/analyze")).status == 401
    # No image configured: said as the admin's task.
    dsa.gc.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": ""})
    try:
        refused = refusal(lambda: analyze(dsa, item))
        assert refused.status == 400 and "no lnassist image is configured" in refused.responseText
    finally:
        dsa.gc.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": dsa.image})
    assert lnassist_documents(dsa, item["_id"], DOCUMENT_LN) == []  # nothing was started


@docker_test
def test_girder_restarted_while_a_job_runs(configured: Dsa, slide: tuple[Path, dict]) -> None:
    """An admin restarts Girder while "Run LN analysis" runs: the job still ends in a clear state
    (never "running" for good: the plugin ends it from the worker's record when Girder missed its
    end), and the slide then holds either the run's complete results or nothing of them."""
    dsa = configured
    path, gt = slide
    item = upload_slide(dsa, path)
    job = analyze(dsa, item, mode="general")
    wait_until(lambda: dsa.gc.get(f"job/{job['_id']}")["status"] == JOB_RUNNING, "job running", 300)
    restarted = stack("restart-girder")
    assert restarted.returncode == 0, tail(restarted.stdout + restarted.stderr)
    job = wait_for_job(dsa.gc, job["_id"])  # the admin's token survives: the database is on disk
    assert job["status"] in (JOB_SUCCESS, JOB_ERROR)
    time.sleep(5)  # any ingest still under way
    ln_docs = lnassist_documents(dsa, item["_id"], DOCUMENT_LN)
    heat_docs = lnassist_documents(dsa, item["_id"], DOCUMENT_HEATMAP)
    meta = dsa.gc.get(f"item/{item['_id']}").get("meta", {})
    if job["status"] == JOB_SUCCESS:
        (ln_doc,) = ln_docs
        assert len(heat_docs) == 1 and len(ln_doc["annotation"]["elements"]) == len(gt["nodes"])
        assert meta["lnassist_lns"] == len(gt["nodes"])
    else:
        assert "run the analysis again" in job_log(job)
        assert ln_docs == heat_docs == [] and not any(key.startswith("lnassist_") for key in meta)
