"""The plugin's REST API in the real stack (``tools/dsa_stack.py up``): settings, the slide and study
summaries, the pathologist's review and the guards against forged reviews, with an admin, a
pathologist (write access), a reader (read only), a stranger (no access) and anonymous requests.

No Docker image: the AI documents are made the way the CLI's ingest makes them, from
``lnassist.annotations.ln_document`` POSTed to ``/annotation?itemId=``, on small tiled TIFFs.
A running stack is reused (and left running) when it serves this plugin's routes; otherwise it is
restarted, since Girder loads plugin code only at start. Tests in this module run in order and share
the slides they make.
"""

from __future__ import annotations

import csv
import io
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import girder_client
import numpy as np
import pytest
import requests
from dsa_helpers import http_status, make_user, stack

from lnassist import annotations, dsa
from lnassist.results import LNResult, ModelRef, Provenance
from lnassist.synth.tiff import write_pyramid

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
MPP = 0.5  # um/px of the test slides
SQUARE = np.array([[0, 0], [200, 0], [200, 200], [0, 200]], dtype=float)


@dataclass
class Env:
    api_url: str
    admin: girder_client.GirderClient
    path: girder_client.GirderClient  # the pathologist: write access on the study
    reader: girder_client.GirderClient
    stranger: girder_client.GirderClient
    anonymous: girder_client.GirderClient
    logins: dict[str, str]
    study: dict
    secret: dict  # a subfolder only the admin and the pathologist can read
    slide: dict  # analysed
    bare: dict  # not analysed
    hidden: dict  # analysed, in the secret folder
    annotation_id: str


def provenance() -> Provenance:
    return Provenance(
        models=(
            ModelRef("detector-cpu-v1", "detector", "1", "a" * 64),
            ModelRef("classifier-cpu-v1", "classifier", "1", "b" * 64),
        ),
        cli="LNAnalysis",
        lnassist_version="0.1.0",
        mode="general",
        threshold=0.4,
    )


def ln_doc() -> dict:
    """Four LNs: 1 and 2 positive, 3 and 4 negative, as the CLI's ingest would store them."""
    lns = [
        LNResult(1, SQUARE + (100, 100), 0.9, True, 10_000.0),
        LNResult(2, SQUARE + (400, 100), 0.7, True, 10_000.0),
        LNResult(3, SQUARE + (100, 400), 0.1, False, 10_000.0),
        LNResult(4, SQUARE + (400, 400), 0.2, False, 10_000.0),
    ]
    return annotations.ln_document(lns, provenance())


def upload_slide(gc: girder_client.GirderClient, folder_id: str, path: Path) -> dict:
    item = gc.uploadFileToFolder(folder_id, str(path))
    item = gc.get(f"item/{item['itemId']}")
    for _ in range(100):
        if item.get("largeImage", {}).get("fileId"):
            return item
        time.sleep(0.2)
        item = gc.get(f"item/{item['_id']}")
    gc.post(f"item/{item['_id']}/tiles")
    return gc.get(f"item/{item['_id']}")


def set_access(admin: girder_client.GirderClient, folder_id: str, users: dict[str, int]) -> None:
    me = admin.get("user/me")
    access = {"users": [{"id": me["_id"], "level": 2}] + [{"id": u, "level": lv} for u, lv in users.items()]}
    access["groups"] = []
    admin.put(f"folder/{folder_id}/access", parameters={"access": json.dumps(access), "public": "false"})


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    was_running = stack("status").returncode == 0
    result = stack("up")
    if result.returncode != 0:
        pytest.fail(f"tools/dsa_stack.py up failed:\n{result.stderr[-3000:]}", pytrace=False)
    state = json.loads(result.stdout)
    admin_login = json.loads(Path(state["admin_file"]).read_text())
    admin = girder_client.GirderClient(apiUrl=state["api_url"])
    admin.authenticate(admin_login["login"], admin_login["password"])
    if http_status(admin.get, "lnassist/settings")[0] == 404:  # started before this plugin had routes
        stack("down", timeout=120)
        result = stack("up")
        state = json.loads(result.stdout)
        admin = girder_client.GirderClient(apiUrl=state["api_url"])
        admin.authenticate(admin_login["login"], admin_login["password"])
    api = state["api_url"]
    try:
        tag = uuid.uuid4().hex[:8]
        logins = {role: f"ln{role}{tag}" for role in ("path", "reader", "stranger")}
        users = {role: make_user(admin, api, login) for role, login in logins.items()}
        ids = {role: gc.get("user/me")["_id"] for role, gc in users.items()}
        collection = admin.post(
            "collection", parameters={"name": f"lnassist-review-{tag}", "public": "false"}
        )
        study = admin.post(
            "folder", parameters={"parentType": "collection", "parentId": collection["_id"], "name": "study"}
        )
        secret = admin.post(
            "folder", parameters={"parentType": "folder", "parentId": study["_id"], "name": "secret"}
        )
        set_access(admin, study["_id"], {ids["path"]: 1, ids["reader"]: 0})
        set_access(admin, secret["_id"], {ids["path"]: 1})
        work = tmp_path_factory.mktemp("slides")
        paths = []
        for name in ("case-a.tiff", "case-b.tiff", "case-hidden.tiff"):
            paths.append(work / name)
            write_pyramid(
                paths[-1],
                2000,
                1500,
                lambda x0, y0, w, h: np.full((h, w, 3), 230, np.uint8),
                mpp=MPP,
                magnification=20,
                tile_px=256,
                workers=1,
            )
        slide = upload_slide(admin, study["_id"], paths[0])
        bare = upload_slide(admin, study["_id"], paths[1])
        hidden = upload_slide(admin, secret["_id"], paths[2])
        doc = admin.post("annotation", parameters={"itemId": slide["_id"]}, json=ln_doc())
        admin.post("annotation", parameters={"itemId": hidden["_id"]}, json=ln_doc())
        anonymous = girder_client.GirderClient(apiUrl=api)
        yield Env(
            api,
            admin,
            users["path"],
            users["reader"],
            users["stranger"],
            anonymous,
            logins,
            study,
            secret,
            slide,
            bare,
            hidden,
            doc["_id"],
        )
    finally:
        if not was_running:
            stack("down", timeout=120)


# ------------------------------------------------------------------------------------ settings


def test_settings_admin_only_validated_and_round_trip(env: Env):
    # The database outlives test runs (and other modules set the image): start from unset settings.
    keys = (
        "default_mode",
        "thresholds",
        "analysis_image",
        "models_folder",
        "batch_max_in_flight",
        "batch_max_attempts",
        "service_user",
    )
    unset = [{"key": f"lnassist.{key}", "value": None} for key in keys]
    env.admin.put("system/setting", parameters={"list": json.dumps(unset)})
    defaults = env.admin.get("lnassist/settings")
    assert defaults == {
        "lnassist.default_mode": "general",
        "lnassist.thresholds": {"general": 0.4, "screening": 0.15},
        "lnassist.analysis_image": "",
        "lnassist.models_folder": "",
        "lnassist.batch_max_in_flight": 2,
        "lnassist.batch_max_attempts": 3,
        "lnassist.service_user": "lnassist-service",
    }
    assert http_status(env.path.get, "lnassist/settings")[0] == 403
    assert http_status(env.anonymous.get, "lnassist/settings")[0] == 401
    assert (
        http_status(
            env.path.put, "system/setting", parameters={"key": "lnassist.default_mode", "value": "screening"}
        )[0]
        == 403
    )
    bad = {
        "lnassist.default_mode": ("fast", "must be one of screening, general"),
        "lnassist.thresholds": (json.dumps({"general": 1.5, "screening": 0.1}), "threshold in [0, 1]"),
        "lnassist.analysis_image": ("Not An Image!", "Docker image name"),
        "lnassist.models_folder": ("0" * 24, "no folder with id"),
        "lnassist.batch_max_in_flight": ("0", "whole number from 1 to 1000"),
        "lnassist.batch_max_attempts": ("two", "whole number from 1 to 1000"),
        "lnassist.service_user": ("not a login!", "must be a login"),
    }
    for key, (value, message) in bad.items():
        status, text = http_status(env.admin.put, "system/setting", parameters={"key": key, "value": value})
        assert status == 400 and message in json.loads(text)["message"], (key, text)
    assert (
        http_status(
            env.admin.put,
            "system/setting",
            parameters={"key": "lnassist.thresholds", "value": json.dumps({"general": 0.5})},
        )[0]
        == 400
    )
    good = {
        "lnassist.default_mode": "screening",
        "lnassist.thresholds": {"general": 0.45, "screening": 0.1},
        "lnassist.analysis_image": "lnassist:0.1.0",
        "lnassist.models_folder": env.study["_id"],
        "lnassist.batch_max_in_flight": 4,
        "lnassist.batch_max_attempts": 1,
        "lnassist.service_user": "ln-robot",
    }
    try:
        env.admin.put(
            "system/setting",
            parameters={"list": json.dumps([{"key": k, "value": v} for k, v in good.items()])},
        )
        assert env.admin.get("lnassist/settings") == good
    finally:
        env.admin.put(
            "system/setting", parameters={"list": json.dumps([{"key": k, "value": None} for k in good])}
        )
    assert env.admin.get("lnassist/settings") == defaults


# ------------------------------------------------------------------------------ slide summary


def test_slide_summary_of_an_unanalysed_slide(env: Env):
    summary = env.reader.get(f"lnassist/item/{env.bare['_id']}/summary")
    assert summary["analysed"] is False
    assert summary["counts"] == {"positive": 0, "negative": 0, "total": 0}
    assert summary["review"] == {"state": "unreviewed"}
    assert summary["lns"] == [] and summary["deleted_lns"] == []


def test_slide_summary_counts_rows_and_provenance(env: Env):
    summary = env.reader.get(f"lnassist/item/{env.slide['_id']}/summary")
    assert summary["analysed"] is True
    assert summary["counts"] == {"positive": 2, "negative": 2, "total": 4}
    assert summary["ai_counts"] == summary["counts"] and summary["changed"] is False
    assert summary["annotation"]["id"] == env.annotation_id
    assert summary["annotation"]["version"] == summary["annotation"]["original_version"]
    assert summary["model"] == {"id": "classifier-cpu-v1", "version": "1"}
    assert summary["review"] == {"state": "unreviewed"}
    assert summary["mm_per_px"] == pytest.approx([MPP / 1000, MPP / 1000])
    rows = {row["ln_id"]: row for row in summary["lns"]}
    assert {k: rows[k]["label"] for k in rows} == {1: "positive", 2: "positive", 3: "negative", 4: "negative"}
    assert rows[1]["score"] == 0.9 and rows[1]["changed"] is False and rows[1]["changes"] == []
    assert rows[1]["area_mm2"] == pytest.approx(0.01) and rows[1]["area_source"] == "ai"


def test_slide_summary_access_and_unknown_ids(env: Env):
    url = f"lnassist/item/{env.slide['_id']}/summary"
    assert http_status(env.anonymous.get, url)[0] == 401
    assert http_status(env.stranger.get, url)[0] == 403
    assert http_status(env.stranger.get, f"lnassist/item/{env.hidden['_id']}/summary")[0] == 403
    assert http_status(env.reader.get, f"lnassist/item/{env.hidden['_id']}/summary")[0] == 403
    assert http_status(env.admin.get, "lnassist/item/nonsense/summary")[0] == 400
    assert http_status(env.admin.get, f"lnassist/item/{'0' * 24}/summary")[0] in (400, 404)


# ------------------------------------------------------------------------------------- review


def annotation(env: Env) -> dict:
    return env.admin.get(f"annotation/{env.annotation_id}")


def test_accepting_the_unchanged_ai_result(env: Env):
    url = f"lnassist/annotation/{env.annotation_id}/review"
    assert http_status(env.anonymous.put, url, parameters={"state": "accepted"})[0] == 401
    assert http_status(env.stranger.put, url, parameters={"state": "accepted"})[0] == 403
    assert http_status(env.reader.put, url, parameters={"state": "accepted"})[0] == 403
    status, text = http_status(env.path.put, url, parameters={"state": "corrected"})
    assert status == 400 and "record 'accepted'" in text
    assert http_status(env.path.put, url, parameters={"state": "pending"})[0] == 400
    assert http_status(
        env.path.put, f"lnassist/annotation/{'0' * 24}/review", parameters={"state": "accepted"}
    )[0] in (400, 404)
    version = annotation(env)["_version"]
    result = env.path.put(url, parameters={"state": "accepted", "note": "agree"})
    assert result["state"] == "accepted" and result["edited_since_review"] is False
    doc = annotation(env)
    assert doc["_version"] == version  # recorded without a new annotation version
    recorded = doc["annotation"]["attributes"][dsa.ATTR_REVIEW]
    assert recorded["state"] == "accepted" and recorded["note"] == "agree"
    assert recorded["reviewer"]["login"] == env.logins["path"]
    assert recorded["model"] == {"id": "classifier-cpu-v1", "version": "1"}
    assert recorded["counts_before"] == recorded["counts_after"] == {"positive": 2, "negative": 2, "total": 4}
    assert recorded["annotation_version"] == version and len(recorded["history"]) == 1
    meta = env.reader.get(f"item/{env.slide['_id']}")["meta"]
    assert meta["lnassist_review_state"] == "accepted"
    assert meta["lnassist_reviewed_by"] == env.logins["path"]
    assert meta["lnassist_review_annotation"] == env.annotation_id
    assert meta["lnassist_review_version"] == version and meta["lnassist_reviewed_at"].endswith("Z")
    summary = env.reader.get(f"lnassist/item/{env.slide['_id']}/summary")
    assert summary["review"]["state"] == "accepted" and summary["review"]["edited_since_review"] is False


def test_only_lnassist_ln_documents_can_be_reviewed(env: Env):
    other = env.admin.post(
        "annotation", parameters={"itemId": env.slide["_id"]}, json={"name": "mine", "elements": []}
    )
    status, text = http_status(
        env.path.put, f"lnassist/annotation/{other['_id']}/review", parameters={"state": "accepted"}
    )
    assert status == 400 and "not an lnassist LN document" in text


def test_relabel_delete_and_redraw_change_the_counts_and_flags(env: Env):
    doc = annotation(env)
    body = doc["annotation"]
    elements = {e["user"]["ln_id"]: e for e in body["elements"]}
    elements[3]["group"] = dsa.GROUP_POSITIVE  # relabel LN 3: negative -> positive
    del elements[4]  # delete LN 4
    elements[2]["points"] = [[p[0] + 5, p[1], 0] for p in elements[2]["points"]]  # edit LN 2's outline
    drawn = {
        "type": "polyline",
        "closed": True,
        "group": dsa.GROUP_NEGATIVE,
        "points": [[1000, 1000, 0], [1100, 1000, 0], [1100, 1100, 0], [1000, 1100, 0]],
    }
    body["elements"] = [*elements.values(), drawn]
    env.path.put(f"annotation/{env.annotation_id}", json=body)
    summary = env.reader.get(f"lnassist/item/{env.slide['_id']}/summary")
    assert summary["counts"] == {"positive": 3, "negative": 1, "total": 4}
    assert summary["ai_counts"] == {"positive": 2, "negative": 2, "total": 4}
    assert summary["changed"] is True
    assert summary["annotation"]["version"] > summary["annotation"]["original_version"]
    rows = {row["ln_id"]: row for row in summary["lns"] if row["ln_id"] is not None}
    assert rows[1]["changes"] == [] and rows[3]["changes"] == ["label"] and rows[2]["changes"] == ["outline"]
    assert rows[2]["area_source"] == "outline" and rows[2]["area_mm2"] == pytest.approx(0.01)
    (new,) = [row for row in summary["lns"] if row["ln_id"] is None]
    assert new["changes"] == ["drawn"] and new["score"] is None and new["area_mm2"] == pytest.approx(0.0025)
    assert [d["ln_id"] for d in summary["deleted_lns"]] == [4]
    # The earlier review now shows the document was edited after it.
    assert summary["review"]["state"] == "accepted" and summary["review"]["edited_since_review"] is True


def test_review_after_changes_must_say_corrected(env: Env):
    url = f"lnassist/annotation/{env.annotation_id}/review"
    status, text = http_status(env.path.put, url, parameters={"state": "accepted"})
    assert status == 400 and "record 'corrected'" in text
    result = env.path.put(url, parameters={"state": "corrected"})
    assert result["counts_before"] == {"positive": 2, "negative": 2, "total": 4}
    assert result["counts_after"] == {"positive": 3, "negative": 1, "total": 4}
    assert [r["state"] for r in result["history"]] == ["accepted", "corrected"]
    assert env.reader.get(f"item/{env.slide['_id']}")["meta"]["lnassist_review_state"] == "corrected"


def test_forged_reviews_are_undone(env: Env):
    recorded = annotation(env)["annotation"]["attributes"][dsa.ATTR_REVIEW]
    # HistomicsUI's dialog: PUT /annotation/{id} with edited attributes (a new version).
    body = annotation(env)["annotation"]
    body["attributes"][dsa.ATTR_REVIEW] = {**recorded, "state": "accepted", "reviewer": {"login": "x"}}
    env.path.put(f"annotation/{env.annotation_id}", json=body)
    assert annotation(env)["annotation"]["attributes"][dsa.ATTR_REVIEW] == recorded
    # PUT /annotation/{id}/metadata (no new version), removing it or changing it.
    env.path.put(f"annotation/{env.annotation_id}/metadata", json={dsa.ATTR_REVIEW: {"state": "accepted"}})
    assert annotation(env)["annotation"]["attributes"][dsa.ATTR_REVIEW] == recorded
    env.path.put(f"annotation/{env.annotation_id}/metadata", json={dsa.ATTR_REVIEW: None})
    assert annotation(env)["annotation"]["attributes"][dsa.ATTR_REVIEW] == recorded
    # The item's metadata.
    env.path.put(f"item/{env.slide['_id']}/metadata", json={"lnassist_review_state": "accepted"})
    assert env.reader.get(f"item/{env.slide['_id']}")["meta"]["lnassist_review_state"] == "corrected"
    # A new document cannot arrive reviewed.
    forged = ln_doc()
    forged["attributes"][dsa.ATTR_REVIEW] = recorded
    doc = env.admin.post("annotation", parameters={"itemId": env.bare["_id"]}, json=forged)
    assert dsa.ATTR_REVIEW not in env.admin.get(f"annotation/{doc['_id']}")["annotation"]["attributes"]
    summary = env.reader.get(f"lnassist/item/{env.bare['_id']}/summary")
    assert summary["analysed"] is True and summary["review"] == {"state": "unreviewed"}
    # The edit above was a new version after the review: visible in the summary.
    summary = env.reader.get(f"lnassist/item/{env.slide['_id']}/summary")
    assert summary["review"]["state"] == "corrected" and summary["review"]["edited_since_review"] is True


def test_deleted_document_is_not_current(env: Env):
    # A person's note on the slide's document: it is no longer untouched AI output, so the new
    # document below does not supersede it (see plugin/girder_lnassist/supersede.py).
    current = env.admin.get(f"lnassist/item/{env.hidden['_id']}/summary")["annotation"]["id"]
    env.admin.put(f"annotation/{current}/metadata", json={"note": "checked the capsule"})
    doc = env.admin.post("annotation", parameters={"itemId": env.hidden["_id"]}, json=ln_doc())
    env.admin.delete(f"annotation/{doc['_id']}")
    summary = env.admin.get(f"lnassist/item/{env.hidden['_id']}/summary")
    assert summary["annotation"]["id"] != doc["_id"] and summary["counts"]["total"] == 4
    status, text = http_status(
        env.admin.put, f"lnassist/annotation/{doc['_id']}/review", parameters={"state": "rejected"}
    )
    assert status == 400 and "deleted" in text


# ------------------------------------------------------------------------------ study summary


def test_study_summary_rows_totals_paging_and_access(env: Env):
    url = f"lnassist/folder/{env.study['_id']}/summary"
    full = env.path.get(url, parameters={"recursive": "true"})
    names = [row["name"] for row in full["rows"]]
    assert names == ["case-a.tiff", "case-b.tiff", "case-hidden.tiff"]
    assert full["totals"]["slides"] == 3 and full["totals"]["analysed"] == 3
    assert full["totals"]["positive"] == 3 + 2 + 2 and full["totals"]["total"] == 4 + 4 + 4
    assert full["totals"]["review_states"] == {"accepted": 0, "corrected": 1, "rejected": 0, "unreviewed": 2}
    row = full["rows"][0]
    assert row["review_state"] == "corrected" and row["model_version"] == "1" and row["positive"] == 3
    # The reader cannot read the secret folder: its slide is neither counted nor named.
    seen = env.reader.get(url, parameters={"recursive": "true"})
    assert [row["name"] for row in seen["rows"]] == ["case-a.tiff", "case-b.tiff"]
    assert seen["totals"]["slides"] == 2 and seen["totals"]["total"] == 8
    assert "case-hidden" not in json.dumps(seen)
    # Not recursive: the study folder's own slides.
    assert env.path.get(url)["count"] == 2
    # Paging: totals stay those of all rows.
    page = env.path.get(url, parameters={"recursive": "true", "limit": 1, "offset": 1})
    assert [row["name"] for row in page["rows"]] == ["case-b.tiff"] and page["totals"] == full["totals"]
    assert http_status(env.path.get, url, parameters={"limit": -1})[0] == 400
    assert http_status(env.stranger.get, url)[0] == 403
    assert http_status(env.anonymous.get, url)[0] == 401
    assert http_status(env.reader.get, f"lnassist/folder/{env.secret['_id']}/summary")[0] == 403
    assert http_status(env.admin.get, "lnassist/folder/nonsense/summary")[0] == 400


def test_study_summary_as_csv(env: Env):
    response = requests.get(
        f"{env.api_url}/lnassist/folder/{env.study['_id']}/summary",
        params={"recursive": "true", "format": "csv", "limit": 0},
        headers={"Girder-Token": env.reader.token},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/csv")
    assert 'attachment; filename="lnassist-study.csv"' in response.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["name"] for row in rows] == ["case-a.tiff", "case-b.tiff"]
    assert rows[0]["positive"] == "3" and rows[0]["review_state"] == "corrected"


# ------------------------------------------------------------------------------------ superseding


def new_slide(env: Env, tmp_path: Path) -> dict:
    path = tmp_path / f"case-{uuid.uuid4().hex[:6]}.tiff"
    write_pyramid(path, 1000, 800, lambda x0, y0, w, h: np.full((h, w, 3), 230, np.uint8), mpp=MPP,
                  magnification=20, tile_px=256, workers=1)  # fmt: skip
    return upload_slide(env.admin, env.study["_id"], path)


def active_ids(env: Env, item: dict) -> set[str]:
    return {a["_id"] for a in env.admin.get("annotation", parameters={"itemId": item["_id"], "limit": 0})}


def settled(env: Env, item: dict, expected: set[str], timeout_s: float = 20) -> set[str]:
    """The item's active annotations once they are ``expected`` (superseding runs asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while (ids := active_ids(env, item)) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return ids


def test_a_new_ai_document_supersedes_only_untouched_ai_documents(env: Env, tmp_path: Path):
    item = new_slide(env, tmp_path)
    post = lambda doc: env.admin.post("annotation", parameters={"itemId": item["_id"]}, json=doc)["_id"]
    first = post(ln_doc())
    second = post(ln_doc())
    assert settled(env, item, {second}) == {second}
    # The superseded document is restorable from its history.
    history = env.admin.get(f"annotation/{first}/history")
    assert history and history[0]["annotation"]["attributes"][dsa.ATTR_DOCUMENT] == dsa.DOCUMENT_LN
    # What a person touched stays: a reviewed AI document, an edited one, their own outlines, and
    # the detector's outlines (annotators' material) are never superseded.
    reviewed = post(ln_doc())
    env.path.put(f"lnassist/annotation/{reviewed}/review", parameters={"state": "accepted"})
    edited = post(ln_doc())
    record = env.admin.get(f"annotation/{edited}")
    record["annotation"]["elements"][0]["group"] = dsa.GROUP_NEGATIVE
    env.admin.put(f"annotation/{edited}", json=record["annotation"])
    heatmap = post(annotations.heatmap_document([], provenance()))
    contours = post(annotations.contour_document([SQUARE + (100, 100)], MPP, provenance()))
    own = post({"name": "my outlines", "elements": [ln_doc()["elements"][0]]})
    before = {doc_id: env.admin.get(f"annotation/{doc_id}") for doc_id in (reviewed, edited, own, contours)}
    new = post(ln_doc())
    expected = {reviewed, edited, own, contours, heatmap, new}
    assert settled(env, item, expected) == expected
    for doc_id, kept in before.items():
        assert env.admin.get(f"annotation/{doc_id}") == kept  # byte for byte, same _version
    # A new heatmap replaces the old one; the LN documents are another kind and stay.
    new_heatmap = post(annotations.heatmap_document([], provenance()))
    expected = expected - {heatmap} | {new_heatmap}
    assert settled(env, item, expected) == expected


def test_racing_ai_documents_leave_exactly_the_newest(env: Env, tmp_path: Path):
    from concurrent.futures import ThreadPoolExecutor

    item = new_slide(env, tmp_path)
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(
            lambda _: env.admin.post("annotation", parameters={"itemId": item["_id"]}, json=ln_doc())["_id"],
            range(4),
        ))  # fmt: skip
    records = [env.admin.get(f"annotation/{doc_id}") for doc_id in ids]
    newest = max(records, key=lambda r: (r["created"], r["_id"]))["_id"]
    assert settled(env, item, {newest}) == {newest}


# ------------------------------------------------------------------ relabel, the viewer's needs


def test_relabel_moves_one_ln_and_keeps_the_ai_original(env: Env, tmp_path: Path):
    item = new_slide(env, tmp_path)
    doc = env.admin.post("annotation", parameters={"itemId": item["_id"]}, json=ln_doc())
    before = env.path.get(f"lnassist/item/{item['_id']}/summary")
    row = next(r for r in before["lns"] if r["ln_id"] == 1)  # positive
    url = f"lnassist/annotation/{doc['_id']}/ln/{row['element_id']}/label"
    assert http_status(env.anonymous.put, url, parameters={"label": "negative"})[0] == 401
    assert http_status(env.reader.put, url, parameters={"label": "negative"})[0] == 403
    assert http_status(env.path.put, url, parameters={"label": "maybe"})[0] == 400
    status, text = http_status(
        env.path.put,
        f"lnassist/annotation/{doc['_id']}/ln/{'0' * 24}/label",
        parameters={"label": "negative"},
    )
    assert status == 400 and "no LN outline" in text
    after = env.path.put(url, parameters={"label": "negative"})
    assert after["counts"] == {"positive": 1, "negative": 3, "total": 4}
    moved = next(r for r in after["lns"] if r["element_id"] == row["element_id"])
    assert moved["label"] == "negative" and moved["ai_label"] == "positive" and moved["changes"] == ["label"]
    assert after["annotation"]["original_version"] == before["annotation"]["version"]
    stored = env.admin.get(f"annotation/{doc['_id']}")["annotation"]["elements"]
    element = next(e for e in stored if e["id"] == row["element_id"])
    assert element["group"] == dsa.GROUP_NEGATIVE
    assert element["lineColor"] == dsa.rgb(dsa.GROUP_RGB[dsa.GROUP_NEGATIVE])
    # The label it already has: no new version.
    assert (
        env.path.put(url, parameters={"label": "negative"})["annotation"]["version"]
        == after["annotation"]["version"]
    )
    other = env.admin.post(
        "annotation", parameters={"itemId": item["_id"]}, json={"name": "mine", "elements": []}
    )
    status, text = http_status(
        env.path.put,
        f"lnassist/annotation/{other['_id']}/ln/{row['element_id']}/label",
        parameters={"label": "positive"},
    )
    assert status == 400 and "not an lnassist LN document" in text


def test_viewer_block_says_who_may_do_what_and_the_folder_mode(env: Env):
    url = f"lnassist/item/{env.slide['_id']}/summary"
    previous = env.admin.get("system/setting", parameters={"key": "lnassist.analysis_image"})
    try:
        env.admin.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": ""})
        reader = env.reader.get(url, parameters={"viewer": "true"})["viewer"]
        assert reader["access"]["write"] is False and reader["access"]["run"] is False
        assert "write access" in reader["access"]["reason"]
        path = env.path.get(url, parameters={"viewer": "true"})["viewer"]
        assert path["access"]["write"] is True and path["access"]["run"] is False
        assert "no lnassist image is configured" in path["access"]["reason"]
        env.admin.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": "nosuch:1"})
        path = env.path.get(url, parameters={"viewer": "true"})["viewer"]
        assert "no LNAnalysis CLI of image 'nosuch:1'" in path["access"]["reason"]
        # The folder analysis needs write access and a registered image, too.
        folder_url = f"lnassist/folder/{env.study['_id']}/analyze"
        assert http_status(env.anonymous.post, folder_url)[0] == 401
        assert http_status(env.reader.post, folder_url)[0] == 403
        status, text = http_status(env.path.post, folder_url)
        assert status == 400 and "nosuch:1" in text
    finally:
        env.admin.put(
            "system/setting", parameters={"key": "lnassist.analysis_image", "value": previous or ""}
        )
    # The legend comes from lnassist.dsa (the document's threshold: 0.4).
    assert path["legend"]["threshold"] == 0.4
    assert [s["score"] for s in path["legend"]["stops"]] == [s for s, _, _ in dsa.heatmap_stops(0.4)]
    assert path["heatmap_annotation_id"] is None  # this slide has no heatmap document
    # The mode: the nearest folder's lnassist_default_mode, an invalid one skipped, else the setting.
    hidden_url = f"lnassist/item/{env.hidden['_id']}/summary"
    default = env.admin.get("system/setting", parameters={"key": "lnassist.default_mode"})
    other = "general" if default == "screening" else "screening"
    try:
        env.admin.put(f"folder/{env.study['_id']}/metadata", json={"lnassist_default_mode": other})
        env.admin.put(f"folder/{env.secret['_id']}/metadata", json={"lnassist_default_mode": "fast"})
        assert env.path.get(url, parameters={"viewer": "true"})["viewer"]["default_mode"] == other
        assert env.path.get(hidden_url, parameters={"viewer": "true"})["viewer"]["default_mode"] == other
    finally:
        for folder in (env.study, env.secret):
            env.admin.put(f"folder/{folder['_id']}/metadata", json={"lnassist_default_mode": None})
    assert env.path.get(url, parameters={"viewer": "true"})["viewer"]["default_mode"] == default
