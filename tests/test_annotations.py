"""Annotation documents and item metadata: validity against large_image's real schema, content, limits."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
import shapely
import yaml

from lnassist.annotations import (
    GROUP_HEATMAP,
    GROUP_NEGATIVE,
    GROUP_POSITIVE,
    HEATMAP_RGB,
    LINE_WIDTH,
    MAX_VALUES_PER_DOCUMENT,
    MAX_VALUES_PER_ELEMENT,
    NEGATIVE_RGB,
    POSITIVE_RGB,
    AnnotationError,
    CamGrid,
    LNResult,
    ModelRef,
    heatmap_document,
    ln_document,
    rgb,
    simplify_contour,
    summary_metadata,
    validate_document,
)
from lnassist.errors import LnassistError

THRESHOLD = 0.5
MODELS = (
    ModelRef("det-1", "detector", "1.0", "a" * 64),
    ModelRef("cls-2", "classifier", "2.1", "b" * 64),
)
RUN = {
    "mode": "accurate",
    "threshold": THRESHOLD,
    "models": MODELS,
    "cli_name": "LNMetastasis",
    "version": "0.1.0",
}
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
    return ln_document(
        lns, **RUN, parameters={"inputImageFile": "slide.svs"}, timings_s={"detect": 1.5}, **kwargs
    )


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
    doc = ln_document([], **RUN, parameters={}, timings_s={})
    validate_document(doc)
    assert doc["elements"] == [] and doc["attributes"]["counts"] == {"lns": 0, "positive": 0, "negative": 0}
    heat = heatmap_document([], **RUN)
    validate_document(heat)
    assert heat["elements"] == [] and heat["attributes"]["counts"] == {"lns": 0, "heatmaps": 0}


def test_heatmap_document_with_cams_and_image_overlay_validates() -> None:
    lns = _lns(with_cam=True)
    doc = heatmap_document(lns, **RUN, image_girder_id="outputHeatmapImage")
    validate_document(doc, cli_outputs={"outputHeatmapImage"})
    assert doc["display"] == {"visible": True}
    assert not any(e["type"] == "polyline" for e in doc["elements"])
    grids = [e for e in doc["elements"] if e["type"] == "griddata"]
    assert [g["user"]["ln_id"] for g in grids] == [3, 9]
    grid = grids[0]
    assert grid["interpretation"] == "heatmap" and grid["group"] == GROUP_HEATMAP
    assert grid["gridWidth"] == 30 and len(grid["values"]) == 20 * 30
    assert grid["origin"] == [1000.0, 2000.0, 0] and grid["dx"] == 32.0 and grid["dy"] == 32.0
    assert grid["values"][:30] == [0.0] * 30 and grid["values"][30] == 0.1  # NaN row -> 0, row-major
    # Low scores transparent, high ones red.
    assert grid["rangeValues"] == [0.0, THRESHOLD, 1.0]
    assert re.fullmatch(r"rgba\(\d+,\d+,\d+,0\.00\)", grid["colorRange"][0])
    assert grid["colorRange"][-1].startswith("rgba({},{},{},".format(*HEATMAP_RGB))
    (image,) = [e for e in doc["elements"] if e["type"] == "image"]
    assert image["girderId"] == "outputHeatmapImage" and 0 < image["opacity"] < 1
    # A real Girder id needs no stand-in.
    validate_document(heatmap_document(lns, **RUN, image_girder_id="0123456789abcdef01234567"))


def test_heatmap_document_without_cams_is_valid_and_empty() -> None:
    doc = heatmap_document(_lns(with_cam=False), **RUN)
    validate_document(doc)
    assert doc["elements"] == [] and doc["attributes"]["counts"] == {"lns": 3, "heatmaps": 0}


def test_griddata_is_coarsened_by_max_pooling_and_keeps_the_hot_spot() -> None:
    assert (MAX_VALUES_PER_ELEMENT, MAX_VALUES_PER_DOCUMENT) == (100_000, 2_000_000)
    values = np.full((400, 350), 0.05)  # 140,000 cells: over the element limit
    values[:, :3] = np.nan
    values[201, 123] = 0.875
    cam = CamGrid(values, (100.0, 200.0), 8.0, 10.0)
    doc = heatmap_document([LNResult(1, _blob(1500, 2200, 1000), 0.9, True, 1.0, cam)], **RUN)
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
    doc = heatmap_document([small, *big], **RUN, max_values_per_element=3000, max_values_per_document=4000)
    validate_document(doc)
    sizes = [len(e["values"]) for e in doc["elements"]]
    assert sizes[0] == 100 and all(s <= 3000 for s in sizes) and sum(sizes) <= 4000
    assert [e["user"]["pool_factor"] for e in doc["elements"]] == [1, 2, 2]


def test_summary_metadata() -> None:
    when = datetime(2025, 3, 4, 15, 6, 7, tzinfo=timezone(timedelta(hours=2)))
    meta = summary_metadata(
        _lns(), mode="accurate", threshold=THRESHOLD, models=MODELS, analysed_at=when, version="0.1.0"
    )
    assert meta == {
        "lnassist_lns": 3, "lnassist_positive_lns": 2, "lnassist_negative_lns": 1,
        "lnassist_slide_positive": True, "lnassist_max_score": 0.87, "lnassist_threshold": THRESHOLD,
        "lnassist_mode": "accurate", "lnassist_version": "0.1.0",
        "lnassist_analysed_at": "2025-03-04T13:06:07Z",
        "lnassist_detector": "det-1", "lnassist_detector_version": "1.0",
        "lnassist_classifier": "cls-2", "lnassist_classifier_version": "2.1",
    }  # fmt: skip
    json.dumps(meta, allow_nan=False)
    empty = summary_metadata(
        [], mode="fast", threshold=0.3, models=MODELS, analysed_at=datetime.now(UTC), version="x"
    )
    assert empty["lnassist_lns"] == 0 and empty["lnassist_slide_positive"] is False
    assert empty["lnassist_max_score"] == 0.0
    with pytest.raises(AnnotationError, match="timezone-aware"):
        summary_metadata(
            [], mode="fast", threshold=0.3, models=MODELS, analysed_at=datetime(2025, 1, 1), version="x"
        )
    with pytest.raises(AnnotationError, match="prefix"):
        summary_metadata(
            [], mode="f", threshold=0.3, models=MODELS, analysed_at=when, version="x", prefix="ln."
        )


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
        ln_document([ln], **{**RUN, "models": MODELS[:1]}, parameters={}, timings_s={})
    with pytest.raises(AnnotationError, match="threshold"):
        ln_document([], **{**RUN, "threshold": 1.5}, parameters={}, timings_s={})
    bad_cam = CamGrid(np.full((3, 3), 1.5), (0.0, 0.0), 1.0, 1.0)
    with pytest.raises(AnnotationError, match=r"CAM values must be in \[0, 1\]"):
        heatmap_document([LNResult(1, ln.contour_base_px, 0.9, True, 1.0, bad_cam)], **RUN)


def test_example_histomicsui_config_matches_the_code() -> None:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    groups = {g["id"]: g for g in config["annotationGroups"]["groups"]}
    assert groups[GROUP_POSITIVE]["lineColor"] == rgb(POSITIVE_RGB)
    assert groups[GROUP_NEGATIVE]["lineColor"] == rgb(NEGATIVE_RGB)
    assert groups[GROUP_HEATMAP]["lineColor"] == rgb(HEATMAP_RGB)
    assert all(g["lineWidth"] == LINE_WIDTH for g in groups.values())
    # Every colour is one HistomicsUI (and the annotation schema) accepts.
    for g in groups.values():
        validate_document(
            {"name": "c", "elements": [{"type": "point", "center": [0, 0, 0], "lineColor": g["lineColor"],
                                        "fillColor": g["fillColor"], "group": g["id"]}]}
        )  # fmt: skip
