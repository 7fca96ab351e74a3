"""The plugin's pure logic (no server): choosing a slide's current LN document, LN rows with what the
pathologist changed, counts and areas, and the review rules."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from girder_lnassist import documents, review

from lnassist import dsa

T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
SQUARE = [[0.0, 0.0, 0], [100.0, 0.0, 0], [100.0, 100.0, 0], [0.0, 100.0, 0]]


def doc(_id: str, created: dt.datetime, kind: str = dsa.DOCUMENT_LN, active: bool | None = None) -> dict:
    d = {"_id": _id, "created": created, "annotation": {"attributes": {dsa.ATTR_DOCUMENT: kind}}}
    if active is not None:
        d["_active"] = active
    return d


def ln(element_id: str, positive: bool, ln_id: int = 1, score: float = 0.9, points=SQUARE) -> dict:
    return {
        "id": element_id,
        "type": "polyline",
        "closed": True,
        "points": points,
        "group": dsa.GROUP_POSITIVE if positive else dsa.GROUP_NEGATIVE,
        "user": {"ln_id": ln_id, "score": score, "positive": positive, "area_um2": 1234.5},
    }


def test_current_document_is_the_newest_active_ln_document_ties_by_id():
    later = T0 + dt.timedelta(seconds=1)
    candidates = [
        doc("a" * 24, T0),
        doc("c" * 24, later),
        doc("b" * 24, later),
        doc("f" * 24, later + dt.timedelta(1), active=False),  # deleted
        doc("e" * 24, later + dt.timedelta(1), kind=dsa.DOCUMENT_HEATMAP),
    ]
    assert documents.current_document(candidates)["_id"] == "c" * 24
    assert documents.current_document(reversed(candidates))["_id"] == "c" * 24
    assert documents.current_document([candidates[3], candidates[4]]) is None


def test_counts_only_count_the_two_ln_groups():
    elements = [ln("1", True), ln("2", False), ln("3", False), {**ln("4", True), "group": "other"}]
    assert documents.counts(elements) == {"positive": 1, "negative": 2, "total": 3}


def test_areas_of_outline_shapes():
    assert documents.polygon_area_px2({"type": "polyline", "closed": True, "points": SQUARE}) == 10_000
    assert documents.polygon_area_px2({"type": "polyline", "closed": False, "points": SQUARE}) is None
    assert documents.polygon_area_px2({"type": "rectangle", "width": 10, "height": 20}) == 200
    assert documents.polygon_area_px2({"type": "ellipse", "width": 2, "height": 4}) == pytest.approx(
        2 * math.pi
    )
    assert documents.polygon_area_px2({"type": "point"}) is None


def test_rows_say_what_the_pathologist_changed_against_the_ai_original():
    original = [ln("1", True, 1), ln("2", False, 2, 0.1), ln("3", False, 3, 0.2), ln("4", True, 4)]
    moved = {**ln("2", False, 2, 0.1), "group": dsa.GROUP_POSITIVE}  # relabelled negative -> positive
    bigger = ln("3", False, 3, 0.2, points=[[0, 0, 0], [200, 0, 0], [200, 200, 0], [0, 200, 0]])
    drawn = {"id": "9", "type": "polyline", "closed": True, "points": SQUARE, "group": dsa.GROUP_NEGATIVE}
    current = [ln("1", True, 1), moved, bigger, drawn]  # LN 4 deleted
    rows, deleted = documents.ln_rows(current, original, mm_per_px=(0.001, 0.001))
    by_id = {row["element_id"]: row for row in rows}
    assert by_id["1"]["changes"] == [] and by_id["1"]["changed"] is False
    assert by_id["1"]["area_mm2"] == pytest.approx(1234.5e-6) and by_id["1"]["area_source"] == "ai"
    assert by_id["2"]["changes"] == ["label"] and by_id["2"]["label"] == "positive"
    assert by_id["2"]["ai_label"] == "negative" and by_id["2"]["score"] == 0.1
    assert by_id["3"]["changes"] == ["outline"]
    assert by_id["3"]["area_source"] == "outline" and by_id["3"]["area_mm2"] == pytest.approx(0.04)
    assert by_id["9"]["changes"] == ["drawn"] and by_id["9"]["score"] is None and by_id["9"]["ln_id"] is None
    assert by_id["9"]["area_mm2"] == pytest.approx(0.01)
    assert [d["ln_id"] for d in deleted] == [4]
    assert documents.changed(rows, deleted) is True
    assert documents.counts(current) == {"positive": 2, "negative": 2, "total": 4}


def test_unchanged_document_and_no_history():
    original = [ln("1", True, 1), ln("2", False, 2, 0.1)]
    rows, deleted = documents.ln_rows(original, original, mm_per_px=None)
    assert documents.changed(rows, deleted) is False and deleted == []
    # Without history a relabel is still seen (the AI's label is in the element); outlines are unknown.
    moved = {**original[1], "group": dsa.GROUP_POSITIVE}
    rows, deleted = documents.ln_rows([original[0], moved], None, mm_per_px=None)
    assert [row["changed"] for row in rows] == [None, True]
    assert documents.changed(rows, deleted) is True


def test_review_rules():
    review.check_state("accepted", changed=False)
    review.check_state("corrected", changed=True)
    review.check_state("rejected", changed=True)
    review.check_state("rejected", changed=False)
    with pytest.raises(review.ReviewRefused, match="record 'corrected'"):
        review.check_state("accepted", changed=True)
    with pytest.raises(review.ReviewRefused, match="record 'accepted'"):
        review.check_state("corrected", changed=False)
    with pytest.raises(review.ReviewRefused, match="state must be one of"):
        review.check_state("pending", changed=False)


def test_review_record_attribute_and_metadata():
    entry = review.record(
        state="corrected",
        note="LN 2 is positive",
        reviewer={"_id": "u" * 24, "login": "path"},
        reviewed_at="2025-01-01T00:00:00Z",
        model={"id": "classifier-cpu-v1", "version": "1"},
        counts_before={"positive": 1, "negative": 1, "total": 2},
        counts_after={"positive": 2, "negative": 0, "total": 2},
        annotation_version=7,
    )
    attribute = review.attribute([entry])
    assert attribute["state"] == "corrected" and attribute["history"] == [entry]
    meta = review.item_metadata("a" * 24, entry)
    assert meta == {
        "lnassist_review_state": "corrected",
        "lnassist_reviewed_by": "path",
        "lnassist_reviewed_at": "2025-01-01T00:00:00Z",
        "lnassist_review_annotation": "a" * 24,
        "lnassist_review_version": 7,
    }
    assert set(review.item_metadata("", None).values()) == {None}
    assert review.view(entry, 9)["edited_since_review"] is True
    assert review.view(entry, 7)["edited_since_review"] is False
    assert review.view(None, None) == {"state": "unreviewed"}


def test_relabel_moves_an_ln_to_the_other_group_in_its_colour() -> None:
    elements = [
        {"id": "a" * 24, "type": "polyline", "group": dsa.GROUP_POSITIVE, "lineColor": "rgb(1,2,3)"},
        {"id": "b" * 24, "type": "polyline", "group": dsa.GROUP_NEGATIVE},
        {"id": "c" * 24, "type": "polyline", "group": "tumour"},  # a person's own group: not an LN
    ]
    documents.relabel(elements, "a" * 24, "negative")
    assert elements[0]["group"] == dsa.GROUP_NEGATIVE
    assert elements[0]["lineColor"] == dsa.rgb(dsa.GROUP_RGB[dsa.GROUP_NEGATIVE])
    assert documents.counts(elements) == {"positive": 0, "negative": 2, "total": 2}
    with pytest.raises(documents.Unchanged):
        documents.relabel(elements, "b" * 24, "negative")
    for element_id, label in (("c" * 24, "positive"), ("d" * 24, "positive"), ("b" * 24, "maybe")):
        with pytest.raises(KeyError):
            documents.relabel(elements, element_id, label)
    assert elements[2]["group"] == "tumour" and elements[1]["group"] == dsa.GROUP_NEGATIVE
