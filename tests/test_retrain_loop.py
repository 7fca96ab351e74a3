"""Reviewed annotations back into training, for real: a pathologist corrects AI results in the DSA
stack, ``lnassist collect`` makes a frozen dataset through girder-client, an LNRetrain job fine-tunes
the classifier through slicer_cli_web and girder_worker, and admins promote and roll back versions
that later analyses record.

Truth: the pathologist's own edits (which LN was relabelled, redrawn, deleted; the labels set from
the synthetic slides' ground truth on the other slides), which slides were rejected or left
unreviewed, and the sha256 of each model file. Tests run in order and share the slides they make.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import girder_client
import numpy as np
import pytest
from docker_helpers import REPO, docker_test
from dsa_helpers import (
    JOB_CANCELED,
    JOB_SUCCESS,
    Dsa,
    http_status,
    job_log,
    make_user,
    upload_slide,
    wait_for_job,
    wait_until,
)

from lnassist import collect, dsa
from lnassist.manifest import read_manifest
from lnassist.registry import load_registry, sha256_of
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

# name -> (layout, what the pathologist does). Every reviewed slide has LNs of both labels, so any
# split by slide has both classes on each side.
SLIDES = {
    "edited": (LayoutConfig(7000, 2600, seed=41, categories=("negative", "itc", "negative")), "edit"),
    "b": (LayoutConfig(4600, 2600, seed=42, categories=("negative", "itc")), "truth"),
    "c": (LayoutConfig(4600, 2600, seed=43, categories=("itc", "negative")), "truth"),
    "d": (LayoutConfig(4600, 2600, seed=44, categories=("negative", "itc")), "truth"),
    "rejected": (LayoutConfig(2600, 2600, seed=45, categories=("negative",)), "reject"),
    "unreviewed": (LayoutConfig(2600, 2600, seed=46, categories=("negative",)), "leave"),
}
REVIEWED = ("edited", "b", "c", "d")
LN_GROUPS = (dsa.GROUP_POSITIVE, dsa.GROUP_NEGATIVE)


@dataclass
class Loop:
    dsa: Dsa
    api_url: str
    path: girder_client.GirderClient  # the pathologist: write access on the study
    engineer: girder_client.GirderClient  # the ML engineer: read access on the study
    engineer_key: str
    study: dict
    models: dict
    items: dict[str, dict] = field(default_factory=dict)
    truth: dict[str, list[dict]] = field(default_factory=dict)  # name -> ground-truth nodes
    expected: dict[str, dict[str, tuple[int, list]]] = field(
        default_factory=dict
    )  # name -> element -> (label, points)
    annotation: dict[str, str] = field(default_factory=dict)  # name -> LN document id
    shared: dict = field(default_factory=dict)


def grant(
    admin: girder_client.GirderClient, folder_id: str, gc: girder_client.GirderClient, level: int
) -> None:
    me = gc.get("user/me")
    access = admin.get(f"folder/{folder_id}/access")
    access["users"].append({"id": me["_id"], "level": level})
    admin.put(f"folder/{folder_id}/access", parameters={"access": json.dumps(access), "recurse": "true"})


@pytest.fixture(scope="module")
def loop(configured: Dsa, tmp_path_factory: pytest.TempPathFactory):
    gc = configured.gc
    api_url = gc.urlBase.rstrip("/")
    suffix = uuid.uuid4().hex[:8]
    collection = gc.createCollection(f"lnassist-retrain-{suffix}", public=False)
    study = gc.createFolder(collection["_id"], "study", parentType="collection")
    models = gc.createFolder(collection["_id"], "models", parentType="collection")
    before = gc.get("system/setting", parameters={"key": "lnassist.models_folder"})
    gc.put("system/setting", parameters={"key": "lnassist.models_folder", "value": models["_id"]})
    # Set again: the settings tests of other modules put every setting back to its default.
    gc.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": configured.image})
    path = make_user(gc, api_url, f"lnpath{suffix}")
    engineer = make_user(gc, api_url, f"lnml{suffix}")
    grant(gc, study["_id"], path, 1)
    grant(gc, study["_id"], engineer, 0)
    grant(gc, models["_id"], path, 0)  # pathologists run analyses with the promoted version
    key = engineer.post("api_key", parameters={"name": "collect", "scope": "null"})["key"]
    state = Loop(configured, api_url, path, engineer, key, study, models)
    work = tmp_path_factory.mktemp("retrain-slides")
    for name, (layout, _) in SLIDES.items():
        slide = work / f"retrain-{name}.tiff"
        state.truth[name] = write_slide(slide, layout, workers=1)["nodes"]
        state.items[name] = upload_slide(replace(configured, folder_id=study["_id"]), slide)
    try:
        yield state
    finally:
        gc.put("system/setting", parameters={"key": "lnassist.models_folder", "value": before})


def run_collect(
    loop: Loop, out: Path, folder: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``lnassist collect`` of the study (or ``folder``) as the ML engineer, with an API key."""
    environment = {**os.environ, "GIRDER_API_KEY": loop.engineer_key, **(env or {})}
    command = [sys.executable, "-m", "lnassist", "collect", "--api-url", loop.api_url,
               "--folder", folder or loop.study["_id"], "--out", str(out), "--quiet"]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def analyse(loop: Loop, name: str) -> dict:
    """Run LN analysis on a slide as the pathologist; the LN document that job made."""
    item = loop.items[name]
    job = wait_for_job(loop.path, loop.path.post(f"lnassist/item/{item['_id']}/analyze")["_id"])
    assert job["status"] == JOB_SUCCESS, job_log(job)[-3000:]
    summary = wait_until(
        lambda: (
            (s := loop.path.get(f"lnassist/item/{item['_id']}/summary")).get("job_id") == job["_id"] and s
        ),
        "the job's LN document",
    )
    return loop.path.get(f"annotation/{summary['annotation']['id']}")


def classifier_of(doc: dict) -> dict:
    (model,) = [m for m in doc["annotation"]["attributes"][dsa.ATTR_MODELS] if m["kind"] == "classifier"]
    return model


def truth_label(loop: Loop, name: str, element: dict) -> int:
    """The ground-truth label of the node whose box holds the element's centre."""
    cx, cy = np.asarray(element["points"], float)[:, :2].mean(axis=0)
    (node,) = [
        n
        for n in loop.truth[name]
        if n["bbox"][0] <= cx <= n["bbox"][2] and n["bbox"][1] <= cy <= n["bbox"][3]
    ]
    return int(node["label"])


def retrain_job(loop: Loop, **parameters) -> dict:
    return loop.dsa.gc.post("lnassist/retrain", parameters={"folderId": loop.study["_id"], **parameters})


def versions_in(loop: Loop) -> list[dict]:
    return loop.dsa.gc.get("lnassist/models")["versions"]


# ------------------------------------------------------------------------------------ the review


@docker_test
def test_pathologist_reviews_ai_results(loop: Loop) -> None:
    for name, (_, action) in SLIDES.items():
        doc = analyse(loop, name)
        loop.annotation[name] = doc["_id"]
        elements = [
            e
            for e in doc["annotation"]["elements"]
            if e.get("group") in (dsa.GROUP_POSITIVE, dsa.GROUP_NEGATIVE)
        ]
        assert len(elements) == len(loop.truth[name]), f"{name}: the detector found {len(elements)} LNs"
        body = doc["annotation"]
        if action == "edit":  # relabel one, redraw one, delete one
            # Relabel one of two LNs that share a label and redraw the other, so both labels remain.
            relabelled, redrawn = next(
                (a, b) for a in elements for b in elements if a is not b and a["group"] == b["group"]
            )
            (deleted,) = [e for e in elements if e is not relabelled and e is not redrawn]
            label = "negative" if relabelled["group"] == dsa.GROUP_POSITIVE else "positive"
            loop.path.put(
                f"lnassist/annotation/{doc['_id']}/ln/{relabelled['id']}/label", parameters={"label": label}
            )
            body = loop.path.get(f"annotation/{doc['_id']}")["annotation"]
            kept = []
            for element in body["elements"]:
                if element.get("id") == deleted["id"]:
                    continue
                if element.get("id") == redrawn["id"]:
                    pts = np.asarray(element["points"], float)
                    centre = pts[:, :2].mean(axis=0)
                    pts[:, :2] = centre + (pts[:, :2] - centre) * 0.9  # the pathologist's tighter outline
                    element["points"] = pts.round(1).tolist()
                kept.append(element)
            body["elements"] = kept
            loop.path.put(f"annotation/{doc['_id']}", json=body)
            final = loop.path.get(f"annotation/{doc['_id']}")["annotation"]["elements"]
            loop.expected[name] = {
                e["id"]: (int(e["group"] == dsa.GROUP_POSITIVE), e["points"])
                for e in final
                if e.get("group") in LN_GROUPS
            }
            assert deleted["id"] not in loop.expected[name] and len(loop.expected[name]) == 2
            assert loop.expected[name][relabelled["id"]][0] == int(label == "positive")
            state = "corrected"
        elif action == "truth":  # set every label to the ground truth
            changed = False
            for element in elements:
                label = truth_label(loop, name, element)
                if label != int(element["group"] == dsa.GROUP_POSITIVE):
                    changed = True
                    loop.path.put(
                        f"lnassist/annotation/{doc['_id']}/ln/{element['id']}/label",
                        parameters={"label": "positive" if label else "negative"},
                    )
            final = loop.path.get(f"annotation/{doc['_id']}")["annotation"]["elements"]
            loop.expected[name] = {
                e["id"]: (int(e["group"] == dsa.GROUP_POSITIVE), e["points"])
                for e in final
                if e.get("group") in LN_GROUPS
            }
            assert sorted(label for label, _ in loop.expected[name].values()) == [0, 1]
            state = "corrected" if changed else "accepted"
        elif action == "reject":
            state = "rejected"
        else:
            continue
        loop.path.put(f"lnassist/annotation/{doc['_id']}/review", parameters={"state": state})
    rows = loop.path.get(f"lnassist/folder/{loop.study['_id']}/summary", parameters={"limit": 0})["rows"]
    states = {row["name"]: row["review_state"] for row in rows}
    assert states["retrain-rejected.tiff"] == "rejected" and states["retrain-unreviewed.tiff"] == "unreviewed"


# ------------------------------------------------------------------------------------ collect


@docker_test
def test_collect_makes_a_manifest_of_exactly_the_reviewed_lns(loop: Loop, tmp_path_factory) -> None:
    out = tmp_path_factory.mktemp("collect") / "dataset"
    result = run_collect(loop, out)
    assert result.returncode == 0, result.stderr
    assert loop.engineer_key not in result.stdout + result.stderr
    rows = read_manifest(out / collect.MANIFEST_NAME)
    by_item = {item["_id"]: name for name, item in loop.items.items()}
    got = {(by_item[r["source_item"]], r["ln_id"]): r for r in rows}
    want = {(name, element): value for name in REVIEWED for element, value in loop.expected[name].items()}
    assert set(got) == set(want)  # rejected and unreviewed slides and the deleted LN are not there
    for key, (label, points) in want.items():
        row = got[key]
        assert row["label"] == label
        assert np.allclose(row["source_contour_base_px"], np.asarray(points, float)[:, :2], atol=0.01)
        # The region's contour is the same outline in the region's pixels.
        slide_mpp, region_mpp = row["source_mpp"], row["mpp"]
        assert region_mpp == pytest.approx(max(slide_mpp, 0.46))
        assert (
            row["annotation_id"] == loop.annotation[key[0]]
            and row["reviewer"] == loop.path.get("user/me")["login"]
        )
        assert row["review_state"] in ("accepted", "corrected") and (out / row["slide"]).is_file()
    snapshot = collect.verify(out)
    assert snapshot["counts"] == {
        "slides": 4, "lns": len(want), "positive": sum(v[0] for v in want.values()),
        "negative": sum(1 - v[0] for v in want.values()), "unreviewed_slides": 0,
    }  # fmt: skip
    assert {s["reason"] for s in snapshot["skipped"]} == {"rejected", "unreviewed"}
    versions = {e["annotation_id"]: e["annotation_version"] for e in snapshot["slides"]}
    for name in REVIEWED:
        current = loop.dsa.gc.get(f"annotation/{loop.annotation[name]}")["_version"]
        assert versions[loop.annotation[name]] == current
    # AI-vs-reviewed pairs: the relabelled LN is the one disagreement.
    transition = snapshot["transition"]
    assert transition["n_pairs"] == len(want) and transition["counts"][0][1] + transition["counts"][1][0] >= 1
    loop.shared["dataset"] = out
    loop.shared["manifest"] = (out / collect.MANIFEST_NAME).read_text()


@docker_test
def test_collect_rerun_fetches_only_what_is_missing(loop: Loop) -> None:
    out = loop.shared["dataset"]
    first = collect.load_snapshot(out)
    regions = sorted(p for p in out.glob("*.tiff"))
    missing = regions[0]
    digest = sha256_of(missing)
    missing.unlink()
    (out / (missing.name + ".part")).write_bytes(b"half a region")  # an interrupted fetch
    result = run_collect(loop, out)
    assert result.returncode == 0, result.stderr
    again = collect.verify(out)
    assert again["fetch"]["regions_fetched"] == 1 and again["fetch"]["regions_reused"] == len(regions) - 1
    assert sha256_of(missing) == digest and again["id"] == first["id"]
    assert not list(out.glob("*.part"))


@docker_test
def test_collect_refuses_bad_credentials_and_unknown_folders_in_one_line(loop: Loop, tmp_path: Path) -> None:
    bad_token = run_collect(loop, tmp_path / "a", env={"GIRDER_API_KEY": "", "GIRDER_TOKEN": "not-a-token"})
    unknown_folder = run_collect(loop, tmp_path / "c", folder="0" * 24)
    for result, says in (
        (bad_token, "refused the credentials"),
        (unknown_folder, "folder 000000000000000000000000"),
    ):
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lnassist collect: error:") and says in lines[0], lines
        assert "not-a-token" not in result.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


# ------------------------------------------------------------------------------------ retrain


@docker_test
def test_only_admins_retrain_and_a_cancelled_retrain_uploads_nothing(loop: Loop) -> None:
    status, text = http_status(loop.path.post, "lnassist/retrain", parameters={"folderId": loop.study["_id"]})
    assert status == 403, text
    job = retrain_job(loop, epochs=200)
    wait_until(
        lambda: "fine-tuning" in job_log(loop.dsa.gc.get(f"job/{job['_id']}")), "training started", 600
    )
    loop.dsa.gc.put(f"job/{job['_id']}/cancel")
    job = wait_for_job(loop.dsa.gc, job["_id"])
    assert job["status"] == JOB_CANCELED, job_log(job)[-2000:]
    time.sleep(3)
    assert versions_in(loop) == []
    assert not [f for f in loop.dsa.gc.listFolder(loop.models["_id"]) if f["name"] == collect.DATASETS_FOLDER]


@docker_test
def test_retrain_job_uploads_a_candidate_with_held_out_metrics(loop: Loop) -> None:
    job = retrain_job(loop, epochs=1, seed=3, heldout_fraction=0.5, tolerance_auc=1, tolerance_sensitivity=1)
    assert job["type"].endswith(f"#{dsa.CLI_RETRAIN}")
    job = wait_for_job(loop.dsa.gc, job["_id"])
    log = job_log(job)
    assert job["status"] == JOB_SUCCESS, log[-3000:]
    assert "epoch 1/1 done" in log and loop.dsa.gc.token not in log
    (version,) = versions_in(loop)
    shipped = load_registry(REPO / "models").entry("classifier")
    assert version["parent"]["sha256"] == shipped.sha256 and not version["promoted"] and version["gate"] == []
    held = version["heldout"]
    assert held["parent"]["n"] == held["candidate"]["n"] == version["split"]["n_heldout_ln"] > 0
    assert 0 <= held["candidate"]["auc"] <= 1 and set(held["candidate"]["thresholds"]) == {
        "general",
        "screening",
    }
    train_items, heldout_items = set(version["split"]["train_items"]), set(version["split"]["heldout_items"])
    assert not train_items & heldout_items
    assert train_items | heldout_items == {loop.items[name]["_id"] for name in REVIEWED}
    # The weights in Girder are the ones the version records, and the snapshot sits in Datasets.
    item = loop.dsa.gc.getItem(version["item_id"])
    meta = item["meta"]["lnassist_model"]
    local = loop.shared["dataset"].parent / "candidate.pt"
    loop.dsa.gc.downloadFile(meta["file_id"], str(local))
    assert sha256_of(local) == version["sha256"]
    dataset = loop.dsa.gc.getItem(version["dataset"]["item_id"])
    assert dataset["meta"][collect.DATASET_META]["id"] == version["dataset"]["snapshot_id"]
    assert dataset["folderId"] == next(
        f["_id"] for f in loop.dsa.gc.listFolder(loop.models["_id"]) if f["name"] == collect.DATASETS_FOLDER
    )
    loop.shared["version"] = version


# ------------------------------------------------------------------------------------ promotion


@docker_test
def test_promotion_is_for_admins_and_analyses_record_the_promoted_version(loop: Loop) -> None:
    version = loop.shared["version"]
    status, _ = http_status(loop.path.post, f"lnassist/model/{version['item_id']}/promote")
    assert status == 403
    entry = loop.dsa.gc.post(f"lnassist/model/{version['item_id']}/promote")
    assert entry["to"] == version["item_id"] and entry["from"] is None and not entry["forced"]
    listed = loop.path.get("lnassist/models")
    assert listed["in_use"]["sha256"] == version["sha256"] and listed["versions"][0]["promoted"]
    doc = analyse(loop, "b")
    model = classifier_of(doc)
    assert model["version"] == f"girder:{version['item_id']}" and model["sha256"] == version["sha256"]
    summary = loop.path.get(f"lnassist/item/{loop.items['b']['_id']}/summary")
    assert summary["model"]["version"] == f"girder:{version['item_id']}"
    # Back to the shipped classifier.
    status, _ = http_status(loop.path.post, f"lnassist/model/{version['item_id']}/rollback")
    assert status == 403
    entry = loop.dsa.gc.post(f"lnassist/model/{version['item_id']}/rollback", parameters={"reason": "test"})
    assert entry["to"] is None and entry["action"] == "rollback"
    shipped = load_registry(REPO / "models").entry("classifier")
    assert loop.path.get("lnassist/models")["in_use"]["sha256"] == shipped.sha256
    model = classifier_of(analyse(loop, "c"))
    assert model["id"] == shipped.id and model["sha256"] == shipped.sha256


@docker_test
def test_a_worse_candidate_is_refused_unless_forced_and_rollback_walks_back(loop: Loop) -> None:
    version = loop.shared["version"]
    gc = loop.dsa.gc
    shipped = load_registry(REPO / "models").entry("classifier")
    gc.post(f"lnassist/model/{version['item_id']}/promote")
    # A candidate worse on its held-out slides, and evaluated against the shipped model, not the one in use.
    record = copy.deepcopy(gc.getItem(version["item_id"])["meta"]["lnassist_model"])
    held = record["record"]["heldout"]
    held["parent"]["auc"], held["candidate"]["auc"] = 0.9, 0.6
    record["record"]["tolerance"] = {"auc": 0.02, "sensitivity": 0.05}
    worse = gc.createItem(loop.models["_id"], f"worse-{uuid.uuid4().hex[:6]}")
    loop.shared["worse"] = worse["_id"]
    gc.addMetadataToItem(worse["_id"], {"lnassist_model": record})
    status, text = http_status(gc.post, f"lnassist/model/{worse['_id']}/promote")
    assert (
        status == 400 and "AUC" in text and "0.6" in text and "not against the classifier in use" in text
    ), text
    status, text = http_status(
        gc.post, f"lnassist/model/{worse['_id']}/promote", parameters={"force": "true"}
    )
    assert status == 400 and "reason" in text
    entry = gc.post(
        f"lnassist/model/{worse['_id']}/promote", parameters={"force": "true", "reason": "trial on ward 3"}
    )
    assert entry["forced"] and entry["reason"] == "trial on ward 3" and entry["gate"]
    assert entry["from"] == version["item_id"]
    # Rollback walks back one promotion at a time: to the retrained version, then to the shipped one.
    assert gc.post(f"lnassist/model/{worse['_id']}/rollback")["to"] == version["item_id"]
    assert gc.get("lnassist/models")["in_use"]["sha256"] == version["sha256"]
    status, _ = http_status(gc.post, f"lnassist/model/{worse['_id']}/rollback")
    assert status == 400  # no longer the promoted one
    assert gc.post(f"lnassist/model/{version['item_id']}/rollback")["to"] is None
    listed = gc.get("lnassist/models")
    assert listed["in_use"]["sha256"] == shipped.sha256 and listed["shipped"]["promoted"]
    actions = [h["action"] for h in listed["history"]]
    assert actions == ["promote", "rollback", "promote", "promote", "rollback", "rollback"]


# ------------------------------------------------------------------------------------ snapshots


@docker_test
def test_a_snapshot_outlives_edits_and_deletions_of_its_annotations(loop: Loop, tmp_path: Path) -> None:
    gc = loop.dsa.gc
    datasets = next(f for f in gc.listFolder(loop.models["_id"]) if f["name"] == collect.DATASETS_FOLDER)
    (item,) = [i for i in gc.listItem(datasets["_id"])]
    # After the snapshot: a label changes on one slide, another slide's annotation is deleted.
    doc = gc.get(f"annotation/{loop.annotation['d']}")
    element = next(e for e in doc["annotation"]["elements"] if e.get("group") in LN_GROUPS)
    flipped = "negative" if element["group"] == dsa.GROUP_POSITIVE else "positive"
    loop.path.put(f"lnassist/annotation/{doc['_id']}/ln/{element['id']}/label", parameters={"label": flipped})
    gc.delete(f"annotation/{loop.annotation['edited']}")
    back = tmp_path / "back"
    snapshot = collect.download(gc, item["_id"], back)
    assert (back / collect.MANIFEST_NAME).read_text() == loop.shared["manifest"]
    assert snapshot["id"] == loop.shared["version"]["dataset"]["snapshot_id"]
    # A retrain from the snapshot (the ML engineer's path: LNRetrain with --dataset) still runs.
    params = {
        "collectFolder": "", "dataset": item["_id"], "includeUnreviewed": False,
        "modelsFolder": loop.models["_id"], "parentModel": "", "seed": 1, "heldoutFraction": 0.5,
        "epochs": 1, "useTransition": False,
        "toleranceAuc": -1, "toleranceSensitivity": -1, "device": "cpu", "threads": 0,
        "girderApiUrl": "", "girderToken": "",
    }  # fmt: skip
    job = gc.post(f"slicer_cli_web/cli/{loop.dsa.clis[dsa.CLI_RETRAIN]}/run", parameters=params)
    job = wait_for_job(gc, job["_id"])
    assert job["status"] == JOB_SUCCESS, job_log(job)[-3000:]
    made = [
        v
        for v in versions_in(loop)
        if v["dataset"]["item_id"] == item["_id"]
        and v["item_id"] not in (loop.shared["version"]["item_id"], loop.shared["worse"])
    ]
    assert len(made) == 1 and made[0]["dataset"]["snapshot_id"] == snapshot["id"]
    shutil.rmtree(back)
