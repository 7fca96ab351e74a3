"""Annotation documents and item metadata: validity against large_image's real schema, content, limits."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import shapely
import yaml

from lnassist import dsa
from lnassist.annotations import (
    MAX_VALUES_PER_DOCUMENT,
    MAX_VALUES_PER_ELEMENT,
    AnnotationError,
    contour_document,
    heatmap_document,
    ln_document,
    simplify_contour,
    summary_metadata,
    validate_document,
)
from lnassist.dsa import GROUP_HEATMAP, GROUP_NEGATIVE, GROUP_POSITIVE, HEATMAP_RGB, LINE_WIDTH
from lnassist.errors import LnassistError
from lnassist.results import CamGrid, LNResult, ModelRef, Provenance

THRESHOLD = 0.5
MODELS = (
    ModelRef("det-1", "detector", "1.0", "a" * 64),
    ModelRef("cls-2", "classifier", "2.1", "b" * 64),
)
RUN = Provenance(MODELS, "LNMetastasis", "0.1.0", mode="accurate", threshold=THRESHOLD)
EXAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "histomicsui_config.yaml"


def _blob(cx: float, cy: float, radius: float, n: int = 4000) -> np.ndarray:
    """A smooth, non-convex closed outline of n points (not repeating the first)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius * (1 + 0.2 * np.sin(3 * t) + 0.1 * np.cos(5 * t))
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def _cam(rows: int, cols: int, origin=(1000.0, 2000.0), spacing=(32.0, 32.0)) -> CamGrid:
    values = np.full((rows, cols), 0.1)
    values[0, :] = np.nan  # a row outside the LN
    return CamGrid(values, origin, *spacing)


def _lns(with_cam: bool = False) -> list[LNResult]:
    return [
        LNResult(3, _blob(10_000, 8_000, 900), 0.87, True, 2.1e6, _cam(20, 30) if with_cam else None),
        LNResult(5, _blob(20_000, 9_000, 500), 0.12, False, 6.5e5, None),
        LNResult(9, _blob(30_000, 4_000, 700), 0.5, True, 1.2e6, _cam(10, 10) if with_cam else None),
    ]


def _ln_doc(lns: list[LNResult], **kwargs) -> dict:
    run = replace(RUN, parameters={"inputImageFile": "slide.svs"}, timings_s={"detect": 1.5})
    return ln_document(lns, run, **kwargs)


def test_simplify_keeps_the_shape_with_far_fewer_vertices() -> None:
    contour = _blob(50_000, 30_000, 1000, n=5000)
    simple = simplify_contour(contour)
    original, reduced = shapely.Polygon(contour), shapely.Polygon(simple)
    assert len(simple) * 10 < len(contour)
    assert reduced.is_valid
    assert reduced.intersection(original).area / reduced.union(original).area > 0.99
    assert not np.array_equal(simple[0], simple[-1])  # closed by the element's flag, not a repeat


def test_simplify_respects_the_vertex_cap_and_refuses_bad_contours() -> None:
    contour = _blob(0, 0, 20_000, n=8000)  # large: the default tolerance alone leaves too many
    for cap in (3, 40):
        simple = simplify_contour(contour, max_vertices=cap, tolerance_base_px=0.5)
        assert 3 <= len(simple) <= cap
        assert shapely.Polygon(simple).is_valid
    iou = shapely.Polygon(simplify_contour(contour, max_vertices=40)).intersection(shapely.Polygon(contour))
    assert iou.area / shapely.Polygon(contour).area > 0.97
    with pytest.raises(AnnotationError, match="shape"):
        simplify_contour(np.zeros((5, 3)))
    with pytest.raises(AnnotationError, match="no area"):
        simplify_contour(np.array([[0, 0], [1, 1], [2, 2]]))
    with pytest.raises(AnnotationError, match="non-finite"):
        simplify_contour(np.array([[0, 0], [1, np.nan], [2, 0]]))


def test_ln_document_content_matches_the_results() -> None:
    lns = _lns()
    doc = _ln_doc(lns)
    validate_document(doc)
    assert doc["display"] == {"visible": True}
    assert doc["attributes"]["counts"] == {"lns": 3, "positive": 2, "negative": 1}
    assert doc["attributes"]["models"][1] == {
        "id": "cls-2",
        "kind": "classifier",
        "version": "2.1",
        "sha256": "b" * 64,
    }
    assert doc["attributes"]["mode"] == "accurate" and doc["attributes"]["threshold"] == THRESHOLD
    assert doc["attributes"]["cli"] == "LNMetastasis" and doc["attributes"]["lnassist_version"] == "0.1.0"
    assert doc["attributes"][dsa.ATTR_DOCUMENT] == dsa.DOCUMENT_LN
    assert doc["attributes"]["parameters"] == {"inputImageFile": "slide.svs"}
    assert doc["attributes"]["timings_s"] == {"detect": 1.5}
    first, second, third = doc["elements"]
    assert [e["group"] for e in doc["elements"]] == [GROUP_POSITIVE, GROUP_NEGATIVE, GROUP_POSITIVE]
    assert first["label"] == {"value": "LN 3: positive (score 0.87)"}
    assert second["label"] == {"value": "LN 5: negative (score 0.12)"}
    assert first["lineColor"] == "rgb(220,38,38)" and second["lineColor"] == "rgb(22,163,74)"
    assert first["closed"] is True and first["lineWidth"] == LINE_WIDTH
    assert all("fillColor" not in e for e in doc["elements"])
    assert first["user"] == {
        "ln_id": 3, "score": 0.87, "positive": True, "threshold": THRESHOLD, "mode": "accurate",
        "model_id": "cls-2", "model_version": "2.1", "area_um2": 2.1e6,
    }  # fmt: skip
    assert third["user"]["positive"] is True  # score == threshold counts as positive
    points = np.array(first["points"])
    assert points.shape[1] == 3 and (points[:, 2] == 0).all() and 3 <= len(points) <= 500
    # The outline is the LN's: same area within 1 %.
    assert shapely.Polygon(points[:, :2]).area == pytest.approx(
        shapely.Polygon(lns[0].contour_base_px).area, rel=0.01
    )
    json.dumps(doc, allow_nan=False)


def test_ln_document_optional_fill_validates() -> None:
    doc = _ln_doc(_lns(), fill_opacity=0.25)
    validate_document(doc)
    assert doc["elements"][0]["fillColor"] == "rgba(220,38,38,0.25)"
    assert doc["elements"][1]["fillColor"] == "rgba(22,163,74,0.25)"
    validate_document(_ln_doc(_lns(), fill_opacity=0.00001))  # no exponent in the colour string


def test_empty_result_gives_valid_documents_with_zero_counts() -> None:
    doc = ln_document([], RUN)
    validate_document(doc)
    assert doc["elements"] == [] and doc["attributes"]["counts"] == {"lns": 0, "positive": 0, "negative": 0}
    heat = heatmap_document([], RUN)
    validate_document(heat)
    assert heat["elements"] == [] and heat["attributes"]["counts"] == {"lns": 0, "heatmaps": 0}
    assert heat["attributes"][dsa.ATTR_DOCUMENT] == dsa.DOCUMENT_HEATMAP


def test_heatmap_document_without_image_has_a_griddata_per_ln() -> None:
    doc = heatmap_document(_lns(with_cam=True), RUN)
    validate_document(doc)
    assert doc["display"] == {"visible": True}
    assert not any(e["type"] in ("polyline", "image") for e in doc["elements"])
    grids = [e for e in doc["elements"] if e["type"] == "griddata"]
    assert [g["user"]["ln_id"] for g in grids] == [3, 9]
    grid = grids[0]
    assert grid["interpretation"] == "heatmap" and grid["group"] == GROUP_HEATMAP
    assert grid["gridWidth"] == 30 and len(grid["values"]) == 20 * 30
    assert grid["origin"] == [1000.0, 2000.0, 0] and grid["dx"] == 32.0 and grid["dy"] == 32.0
    assert grid["values"][:30] == [0.0] * 30 and grid["values"][30] == 0.1  # NaN row -> 0, row-major
    # Little evidence transparent (up to half the threshold), high scores red.
    assert grid["rangeValues"] == [0.0, THRESHOLD / 2, THRESHOLD * 0.8, THRESHOLD, 1.0]
    assert all(re.fullmatch(r"rgba\(\d+,\d+,\d+,0\.00\)", c) for c in grid["colorRange"][:2])
    assert grid["colorRange"][-1].startswith("rgba({},{},{},".format(*HEATMAP_RGB))


def test_heatmap_document_with_image_overlay_holds_the_image_alone() -> None:
    # The image shows every CAM cell and is drawn smoothly: griddata beside it would add the lattice.
    lns = _lns(with_cam=True)
    doc = heatmap_document(lns, RUN, image_girder_id="outputHeatmapImage")
    validate_document(doc, cli_outputs={"outputHeatmapImage"})
    (image,) = doc["elements"]
    assert image["type"] == "image" and image["group"] == GROUP_HEATMAP
    assert image["girderId"] == "outputHeatmapImage" and 0 < image["opacity"] < 1
    assert doc["attributes"]["counts"] == {"lns": 3, "heatmaps": 2}
    # A real Girder id needs no stand-in.
    validate_document(heatmap_document(lns, RUN, image_girder_id="0123456789abcdef01234567"))


def test_heatmap_stops_leave_little_evidence_transparent() -> None:
    for threshold in (0.15, 0.4):
        stops = dsa.heatmap_stops(threshold)
        scores = [s for s, _, _ in stops]
        alphas = [a for _, _, a in stops]
        assert scores == sorted(set(scores)) and scores[0] == 0.0 and scores[-1] == 1.0
        # Transparent below half the threshold, faint below it, half-opaque at it, most opaque at 1.
        assert np.interp(0.49 * threshold, scores, alphas) == 0.0
        assert 0 < np.interp(0.9 * threshold, scores, alphas) < 0.5
        assert np.interp(threshold, scores, alphas) == 0.5 and alphas[-1] == max(alphas)
    # A node whose cells all score 0.2-0.35 under the general threshold is at most faintly tinted.
    general = dsa.heatmap_stops(0.4)
    scores, alphas = [s for s, _, _ in general], [a for _, _, a in general]
    assert max(np.interp(v, scores, alphas) for v in (0.2, 0.3, 0.35)) < 0.3
    # Merged stops at the ends of the range stay strictly increasing.
    assert [s for s, _, _ in dsa.heatmap_stops(0.0)] == [0.0, 1.0]
    assert [s for s, _, _ in dsa.heatmap_stops(1.0)] == [0.0, 0.5, 0.8, 1.0]
    with pytest.raises(ValueError, match="threshold"):
        dsa.heatmap_stops(1.5)


def test_heatmap_document_without_cams_is_valid_and_empty() -> None:
    doc = heatmap_document(_lns(with_cam=False), RUN)
    validate_document(doc)
    assert doc["elements"] == [] and doc["attributes"]["counts"] == {"lns": 3, "heatmaps": 0}


def test_griddata_is_coarsened_by_max_pooling_and_keeps_the_hot_spot() -> None:
    assert (MAX_VALUES_PER_ELEMENT, MAX_VALUES_PER_DOCUMENT) == (100_000, 2_000_000)
    values = np.full((400, 350), 0.05)  # 140,000 cells: over the element limit
    values[:, :3] = np.nan
    values[201, 123] = 0.875
    cam = CamGrid(values, (100.0, 200.0), 8.0, 10.0)
    doc = heatmap_document([LNResult(1, _blob(1500, 2200, 1000), 0.9, True, 1.0, cam)], RUN)
    validate_document(doc)
    (grid,) = doc["elements"]
    assert grid["user"]["pool_factor"] == 2 and len(grid["values"]) <= 100_000
    assert grid["gridWidth"] == 175 and len(grid["values"]) == 200 * 175
    pooled = np.array(grid["values"]).reshape(-1, grid["gridWidth"])
    assert pooled.max() == 0.875 and np.argwhere(pooled == 0.875).tolist() == [[100, 61]]
    assert pooled[:, 0].tolist() == [0.0] * 200  # columns 0-1: outside the LN
    assert pooled[:, 1].tolist() == [0.05] * 200  # columns 2-3 straddle the edge: the LN cell's value
    # Pooled cell (0, 0) is the centre of the first 2 x 2 block; spacing doubles.
    assert grid["origin"] == [104.0, 205.0, 0] and (grid["dx"], grid["dy"]) == (16.0, 20.0)
    hot_x = grid["origin"][0] + 61 * grid["dx"]
    assert abs(hot_x - (100.0 + 123 * 8.0)) <= 8.0  # the hot spot stays where it was, within a cell


def test_document_value_budget_is_shared_between_lns() -> None:
    small = LNResult(1, _blob(0, 0, 100), 0.2, False, 1.0, _cam(10, 10))  # 100 values: kept whole
    big = [LNResult(i, _blob(0, 0, 100), 0.7, True, 1.0, _cam(60, 60)) for i in (2, 3)]  # 3,600 each
    doc = heatmap_document([small, *big], RUN, max_values_per_element=3000, max_values_per_document=4000)
    validate_document(doc)
    sizes = [len(e["values"]) for e in doc["elements"]]
    assert sizes[0] == 100 and all(s <= 3000 for s in sizes) and sum(sizes) <= 4000
    assert [e["user"]["pool_factor"] for e in doc["elements"]] == [1, 2, 2]


def test_summary_metadata() -> None:
    when = datetime(2025, 3, 4, 15, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    meta = summary_metadata(_lns(), RUN, analysed_at=when, contours_from="detector")
    assert meta == {
        "lnassist_lns": 3, "lnassist_positive_lns": 2, "lnassist_negative_lns": 1,
        "lnassist_slide_positive": True, "lnassist_max_score": 0.87, "lnassist_threshold": THRESHOLD,
        "lnassist_mode": "accurate", "lnassist_version": "0.1.0",
        "lnassist_analysed_at": "2025-03-04T13:06:07Z", "lnassist_contours": "detector",
        "lnassist_detector": "det-1", "lnassist_detector_version": "1.0",
        "lnassist_classifier": "cls-2", "lnassist_classifier_version": "2.1",
    }  # fmt: skip
    assert all(key.startswith(dsa.METADATA_PREFIX) for key in meta)
    json.dumps(meta, allow_nan=False)
    # Outlines a person gave, scored without a detector: the detector keys are written empty, so a
    # previous run's detector does not survive Girder's metadata merge.
    given = summary_metadata(
        [], replace(RUN, models=MODELS[1:]), analysed_at=datetime.now(UTC), contours_from="annotation"
    )
    assert given["lnassist_lns"] == 0 and given["lnassist_slide_positive"] is False
    assert given["lnassist_max_score"] == 0.0 and given["lnassist_contours"] == "annotation"
    assert given["lnassist_detector"] == "" and given["lnassist_detector_version"] == ""
    assert given.keys() == meta.keys()
    with pytest.raises(AnnotationError, match="timezone-aware"):
        summary_metadata([], RUN, analysed_at=datetime(2025, 1, 1), contours_from="detector")


def test_contour_document_has_the_detector_outlines_without_scores() -> None:
    contours = [_blob(10_000, 8_000, 900), _blob(20_000, 9_000, 500)]
    detector = Provenance(MODELS[:1], "LNDetect", "0.1.0", {"mode": "general"}, {"detect": 2.0})
    doc = contour_document(contours, 0.5, detector)
    validate_document(doc)
    assert doc["name"] == dsa.DOC_CONTOURS
    assert [e["group"] for e in doc["elements"]] == [dsa.GROUP_DETECTED] * 2
    assert {e["lineColor"] for e in doc["elements"]} == {dsa.rgb(dsa.DETECTED_RGB)}
    assert [e["user"]["ln_id"] for e in doc["elements"]] == [1, 2]
    area_um2 = shapely.Polygon(contours[0]).area * 0.5**2
    assert doc["elements"][0]["user"]["area_um2"] == pytest.approx(area_um2, abs=0.1)
    assert not any("score" in e["user"] for e in doc["elements"])
    attributes = doc["attributes"]
    assert attributes["counts"] == {"lns": 2} and "threshold" not in attributes
    assert attributes[dsa.ATTR_DOCUMENT] == dsa.DOCUMENT_CONTOURS
    assert attributes["models"] == [{"id": "det-1", "kind": "detector", "version": "1.0", "sha256": "a" * 64}]
    assert attributes["cli"] == "LNDetect" and attributes["parameters"] == {"mode": "general"}
    with pytest.raises(AnnotationError, match="detector"):
        contour_document(contours, 0.5, replace(detector, models=MODELS[1:]))


@pytest.mark.parametrize(
    ("element", "message"),
    [
        (
            {"type": "polyline", "points": [[0, 0], [10, 0], [10, 10]], "closed": True},
            r"elements/0/points/0: .* too short",
        ),
        ({"type": "polyline", "points": [[0, 0, 0], [9, 0, 0]], "lineColor": "red"}, r"elements/0/lineColor"),
        ({"type": "polyline", "points": [[0, 0, 0], [9, 0, 0]], "lineColor": "rgb(1,2)"}, r"lineColor"),
        ({"type": "image", "girderId": "outputHeatmapImage"}, r"elements/0/girderId"),
        ({"type": "griddata", "gridWidth": 1, "values": [0.5, "high"]}, r"elements/0/values/1"),
        ({"type": "blob"}, "unknown element type 'blob'"),
    ],
)
def test_invalid_documents_are_rejected(element: dict, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        validate_document({"name": "bad", "elements": [element]})


def test_validation_checks_what_the_schema_cannot() -> None:
    assert issubclass(AnnotationError, LnassistError)
    good = _ln_doc(_lns())
    with pytest.raises(AnnotationError, match="strict JSON"):
        validate_document({**good, "attributes": {"timings_s": {"detect": float("nan")}}})
    with pytest.raises(AnnotationError, match="strict JSON"):
        validate_document({**good, "attributes": {"score": np.float32(0.5)}})
    grid = {"type": "griddata", "gridWidth": 3, "values": [0.1] * 7}
    with pytest.raises(AnnotationError, match="do not fill rows"):
        validate_document({"name": "g", "elements": [grid]})
    twice = {"type": "point", "center": [1, 2, 0], "id": "0123456789abcdef01234567"}
    with pytest.raises(AnnotationError, match="not unique"):
        validate_document({"name": "p", "elements": [twice, twice]})
    # Long arrays are type-checked in full, not only the prefix the schema sees.
    long_grid = {"type": "griddata", "gridWidth": 10, "values": [0.1] * 1999 + [None]}
    with pytest.raises(AnnotationError, match="values/1999"):
        validate_document({"name": "g", "elements": [long_grid]})
    validate_document({"name": "g", "elements": [{**long_grid, "values": [0.1] * 2000}]})


def test_inconsistent_inputs_are_refused() -> None:
    ln = _lns()[0]
    with pytest.raises(AnnotationError, match="disagrees"):
        _ln_doc([LNResult(1, ln.contour_base_px, 0.2, True, 1.0)])
    with pytest.raises(AnnotationError, match="not unique"):
        _ln_doc([ln, ln])
    with pytest.raises(AnnotationError, match="classifier"):
        ln_document([ln], replace(RUN, models=MODELS[:1]))
    with pytest.raises(AnnotationError, match="threshold"):
        ln_document([], replace(RUN, threshold=1.5))
    bad_cam = CamGrid(np.full((3, 3), 1.5), (0.0, 0.0), 1.0, 1.0)
    with pytest.raises(AnnotationError, match=r"CAM values must be in \[0, 1\]"):
        heatmap_document([LNResult(1, ln.contour_base_px, 0.9, True, 1.0, bad_cam)], RUN)


def test_example_histomicsui_config_matches_the_code() -> None:
    """The example config an admin uploads lists exactly the groups lnassist writes, in its colours."""
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    groups = {g["id"]: g for g in config["annotationGroups"]["groups"]}
    assert groups.keys() == dsa.GROUP_RGB.keys()
    for group_id, colour in dsa.GROUP_RGB.items():
        assert groups[group_id]["label"] == group_id
        assert groups[group_id]["lineColor"] == dsa.rgb(colour)
        assert groups[group_id]["fillColor"] == dsa.rgba(colour, 0.0)
        assert groups[group_id]["lineWidth"] == LINE_WIDTH
    # Every colour is one HistomicsUI (and the annotation schema) accepts.
    for g in groups.values():
        validate_document(
            {"name": "c", "elements": [{"type": "point", "center": [0, 0, 0], "lineColor": g["lineColor"],
                                        "fillColor": g["fillColor"], "group": g["id"]}]}
        )  # fmt: skip


def test_the_dsa_names_import_nothing_heavy() -> None:
    """The Girder plugin imports the DSA names and the operating points: neither may pull numpy,
    torch or any other heavy package into the server."""
    import subprocess
    import sys

    code = (
        "import sys, lnassist.dsa, lnassist.constants; "
        "print(sorted(m for m in ('numpy', 'torch', 'yaml', 'shapely') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_the_cli_names_are_the_registered_clis() -> None:
    clis = json.loads((Path(__file__).resolve().parent.parent / "cli" / "slicer_cli_list.json").read_text())
    assert set(dsa.CLI_NAMES) == set(clis)
    # The output parameters the server launches and traces runs by are the CLIs' own.
    import xml.etree.ElementTree as ET

    xml = Path(__file__).resolve().parent.parent / "cli" / dsa.CLI_ANALYSIS / f"{dsa.CLI_ANALYSIS}.xml"
    names = {element.text for element in ET.parse(xml).iter("name")}
    outputs = {dsa.OUTPUT_ANNOTATION, dsa.OUTPUT_HEATMAP_ANNOTATION, dsa.OUTPUT_HEATMAP_IMAGE,
               dsa.OUTPUT_ITEM_METADATA}  # fmt: skip
    assert outputs <= names

