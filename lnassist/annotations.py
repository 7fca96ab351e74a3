"""LN analysis results as large_image / HistomicsUI annotation documents and Girder item metadata.

This module owns the output format of an LN analysis on the DSA side: one document with an outline
per LN (group, label, colour and provenance per LN), a separate heatmap document (HistomicsUI
draws griddata only in documents without polylines), the detector's unscored outlines for
annotators, flat item metadata for the slide, and the check of a document against large_image's
own annotation JSON schema. Inputs are :mod:`lnassist.results`; names and colours are
:mod:`lnassist.dsa`. Coordinates are base-level slide pixels (``*_base_px``) throughout.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import shapely

from lnassist import dsa
from lnassist.errors import LnassistError
from lnassist.results import LNResult, ModelRef, Provenance

# HistomicsUI's limits: larger griddata elements are stored out of line and documents beyond these
# totals are slow or not drawn at all.
MAX_VALUES_PER_ELEMENT = 100_000
MAX_VALUES_PER_DOCUMENT = 2_000_000

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


class AnnotationError(LnassistError):
    """Inputs that cannot become a valid annotation document, or a document that fails the schema."""


def simplify_contour(
    contour_base_px: np.ndarray, *, max_vertices: int = 500, tolerance_base_px: float = 2.0
) -> np.ndarray:
    """(M, 2) polygon with at most ``max_vertices`` vertices (first vertex not repeated).

    Douglas-Peucker with ``tolerance_base_px``, grown by half until the vertex cap holds; shapely's
    topology-preserving variant is used because plain Douglas-Peucker can make a valid outline
    cross itself.
    """
    if max_vertices < 3:
        raise AnnotationError(f"max_vertices must be at least 3, got {max_vertices}")
    if not tolerance_base_px > 0:
        raise AnnotationError(f"tolerance_base_px must be positive, got {tolerance_base_px}")
    points = _contour_points(contour_base_px)
    polygon = shapely.Polygon(points)
    if not polygon.area > 0:
        raise AnnotationError("the contour encloses no area")
    tolerance = tolerance_base_px
    while True:
        # A polygon keeps at least a triangle, so this ends for any max_vertices >= 3.
        ring = np.asarray(polygon.simplify(tolerance, preserve_topology=True).exterior.coords)[:-1]
        if len(ring) <= max_vertices:
            return ring
        tolerance *= 1.5


def ln_document(
    lns: Sequence[LNResult],
    provenance: Provenance,
    *,
    fill_opacity: float | None = None,
    max_vertices: int = 500,
    tolerance_base_px: float = 2.0,
) -> dict[str, Any]:
    """One closed polyline per LN, grouped positive/negative, with the run's provenance in attributes.

    No fill unless ``fill_opacity`` (0..1) is given: fills are expensive to draw and hide the tissue.
    """
    mode, threshold = _check_run(lns, provenance)
    if fill_opacity is not None and not 0 <= fill_opacity <= 1:
        raise AnnotationError(f"fill_opacity must be in [0, 1], got {fill_opacity}")
    scorer = _scoring_model(provenance) if lns else None
    elements = []
    for ln in lns:
        colour = dsa.POSITIVE_RGB if ln.positive else dsa.NEGATIVE_RGB
        verdict = "positive" if ln.positive else "negative"
        element = _outline(
            ln.contour_base_px,
            group=dsa.GROUP_POSITIVE if ln.positive else dsa.GROUP_NEGATIVE,
            label=f"LN {ln.ln_id}: {verdict} (score {ln.score:.2f})",
            colour=colour,
            user={
                "ln_id": int(ln.ln_id),
                "score": round(float(ln.score), 4),
                "positive": bool(ln.positive),
                "threshold": float(threshold),
                "mode": mode,
                "model_id": scorer.id,
                "model_version": scorer.version,
                "area_um2": round(float(ln.area_um2), 1),
            },
            max_vertices=max_vertices,
            tolerance_base_px=tolerance_base_px,
        )
        if fill_opacity is not None:
            element["fillColor"] = dsa.rgba(colour, fill_opacity)
        elements.append(element)
    n_positive = sum(bool(ln.positive) for ln in lns)
    counts = {"lns": len(lns), "positive": n_positive, "negative": len(lns) - n_positive}
    return {
        "name": dsa.DOC_LN,
        "description": f"{len(lns)} LNs, {n_positive} positive (threshold {threshold:g}, mode {mode})",
        "display": {"visible": True},
        "attributes": _attributes(dsa.DOCUMENT_LN, counts, provenance, run_details=True),
        "elements": elements,
    }


def contour_document(
    contours_base_px: Sequence[np.ndarray], base_mpp: float, provenance: Provenance
) -> dict[str, Any]:
    """The detector's contours for annotators: one closed polyline per LN in group
    :data:`lnassist.dsa.GROUP_DETECTED`, no scores; provenance in ``attributes``."""
    from lnassist.slide import polygon_area_base_px2

    detector = provenance.model("detector")
    if detector is None:
        raise AnnotationError("the provenance of detected contours must name the detector")
    elements = []
    for number, contour in enumerate(contours_base_px, start=1):
        area_um2 = polygon_area_base_px2(_contour_points(contour)) * base_mpp**2
        elements.append(
            _outline(
                contour,
                group=dsa.GROUP_DETECTED,
                label=f"LN {number}",
                colour=dsa.DETECTED_RGB,
                user={dsa.ELEMENT_LN_ID: number, dsa.ELEMENT_AREA_UM2: round(area_um2, 1)},
            )
        )
    return {
        "name": dsa.DOC_CONTOURS,
        "description": f"{len(elements)} LN contours from detector {detector.id} (not classified)",
        "display": {"visible": True},
        "attributes": _attributes(
            dsa.DOCUMENT_CONTOURS, {"lns": len(elements)}, provenance, run_details=True
        ),
        "elements": elements,
    }


def heatmap_document(
    lns: Sequence[LNResult],
    provenance: Provenance,
    *,
    image_girder_id: str | None = None,
    image_transform: Mapping[str, Any] | None = None,
    image_opacity: float = 0.5,
    max_values_per_element: int = MAX_VALUES_PER_ELEMENT,
    max_values_per_document: int = MAX_VALUES_PER_DOCUMENT,
) -> dict[str, Any]:
    """The LNs' CAMs: the ``image`` overlay alone if ``image_girder_id`` is set, else one griddata
    heatmap per LN with a CAM. The image has one pixel per CAM cell (never coarsened) and the viewer
    interpolates it smoothly, whereas HistomicsUI draws griddata as one blob per cell, which shows
    the cells' lattice at most zooms; griddata is the fallback for runs without the image.

    ``image_girder_id`` is a Girder item id or, in a Slicer CLI, the name of the output parameter
    holding the overlay image; the server swaps that name for the uploaded item's id on ingest, so
    validate such a document with ``validate_document(doc, cli_outputs={name})``.
    ``image_transform`` maps image pixels to base pixels (``HeatmapOverlay.transform()``; none: the
    image has the slide's base-level size). Grids larger than the value budgets are coarsened by
    max-pooling so that no hot spot is averaged away. Colours: :func:`lnassist.dsa.heatmap_stops`.
    """
    _, threshold = _check_run(lns, provenance)
    if not 0 <= image_opacity <= 1:
        raise AnnotationError(f"image_opacity must be in [0, 1], got {image_opacity}")
    with_cam = [ln for ln in lns if ln.cam is not None]
    gridded = with_cam if image_girder_id is None else []
    grids = [_cam_values(ln) for ln in gridded]
    budgets = _share_budget([g.size for g in grids], max_values_per_element, max_values_per_document)
    stops = dsa.heatmap_stops(threshold)
    elements: list[dict[str, Any]] = []
    for ln, grid, budget in zip(gridded, grids, budgets, strict=True):
        cam = ln.cam
        factor = _pool_factor(grid.shape, budget)
        pooled = _max_pool(grid, factor)
        # Cell (0, 0) of the pooled grid sits at the centre of the first factor x factor block.
        x0 = cam.origin_base_px[0] + (factor - 1) / 2 * cam.dx_base_px
        y0 = cam.origin_base_px[1] + (factor - 1) / 2 * cam.dy_base_px
        dx, dy = factor * cam.dx_base_px, factor * cam.dy_base_px
        elements.append(
            {
                "type": "griddata",
                "interpretation": "heatmap",
                "group": dsa.GROUP_HEATMAP,
                "label": {"value": f"LN {ln.ln_id} heatmap"},
                "user": {"ln_id": int(ln.ln_id), "score": round(float(ln.score), 4), "pool_factor": factor},
                "origin": [float(x0), float(y0), 0],
                "dx": float(dx),
                "dy": float(dy),
                "gridWidth": int(pooled.shape[1]),
                "values": np.round(pooled, 3).ravel().tolist(),
                "normalizeRange": False,
                "rangeValues": [value for value, _, _ in stops],
                "colorRange": [dsa.rgba(colour, alpha) for _, colour, alpha in stops],
                # In base pixels with scaleWithZoom, so neighbouring cells' blobs just overlap.
                "radius": float(max(dx, dy)),
                "scaleWithZoom": True,
            }
        )
    if image_girder_id is not None:
        image = {
            "type": "image",
            "girderId": image_girder_id,
            "opacity": float(image_opacity),
            "hasAlpha": True,
            "group": dsa.GROUP_HEATMAP,
            "label": {"value": "LN metastasis overlay"},
        }
        if image_transform is not None:
            image["transform"] = dict(image_transform)
        elements.append(image)
    return {
        "name": dsa.DOC_HEATMAP,
        "description": f"class-activation heatmaps of {len(with_cam)} of {len(lns)} LNs",
        "display": {"visible": True},
        "attributes": _attributes(
            dsa.DOCUMENT_HEATMAP, {"lns": len(lns), "heatmaps": len(with_cam)}, provenance, run_details=False
        ),
        "elements": elements,
    }


def summary_metadata(
    lns: Sequence[LNResult], provenance: Provenance, *, analysed_at: datetime, contours_from: str
) -> dict[str, str | int | float | bool]:
    """Flat item metadata for the slide: counts, verdict, max score, models, where the contours came
    from ("detector", or "annotation" for outlines a person gave), time of analysis (UTC).

    Keys are :data:`lnassist.dsa.METADATA_PREFIX` + name. Every key is always present (max score 0.0
    without LNs, the detector's keys empty when no detector took part) because Girder merges
    metadata, so a missing key would leave a previous run's value in place.
    """
    mode, threshold = _check_run(lns, provenance)
    if analysed_at.tzinfo is None or analysed_at.utcoffset() is None:
        raise AnnotationError("analysed_at must be timezone-aware (e.g. datetime.now(UTC))")
    n_positive = sum(bool(ln.positive) for ln in lns)
    meta: dict[str, str | int | float | bool] = {
        "lns": len(lns),
        "positive_lns": n_positive,
        "negative_lns": len(lns) - n_positive,
        "slide_positive": n_positive > 0,
        "max_score": round(max((float(ln.score) for ln in lns), default=0.0), 4),
        "threshold": float(threshold),
        "mode": mode,
        "version": provenance.lnassist_version,
        "analysed_at": analysed_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "contours": contours_from,
        "detector": "",
        "detector_version": "",
    }
    for model in provenance.models:
        meta[model.kind] = model.id
        meta[f"{model.kind}_version"] = model.version
    return {dsa.METADATA_PREFIX + key: value for key, value in meta.items()}


def validate_document(doc: Mapping[str, Any], *, cli_outputs: Collection[str] = ()) -> None:
    """Raise AnnotationError unless ``doc`` is strict JSON and valid for large_image's annotation schema.

    ``cli_outputs`` names Slicer CLI output parameters that ``image``/``pixelmap`` elements may
    reference in ``girderId``: the server replaces such a name by the uploaded item's id before its
    own validation, so here it stands in for a well-formed id. Also checked: griddata values fill
    whole rows (the schema says so only in words) and element ids are unique (as the server checks).
    """
    if not isinstance(doc, Mapping):
        raise AnnotationError(f"annotation document must be a JSON object, got {type(doc).__name__}")
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AnnotationError(f"annotation document is not strict JSON: {exc}") from exc
    elements = doc.get("elements", [])
    if not isinstance(elements, list):
        raise AnnotationError("annotation document 'elements' must be a list")
    checked = []
    for index, element in enumerate(elements):
        if isinstance(element, Mapping):
            if element.get("type") == "griddata":
                _check_grid_shape(element, index)
            element = _shorten_number_arrays(_stand_in_references(element, cli_outputs))
        checked.append(element)
    ids = [e["id"] for e in elements if isinstance(e, Mapping) and "id" in e]
    if len(set(ids)) != len(ids):
        raise AnnotationError("annotation element ids are not unique")
    error = next(iter(_schema_validator().iter_errors({**doc, "elements": checked})), None)
    if error is not None:
        raise AnnotationError(f"annotation document fails the large_image schema at {_describe(error)}")


@functools.cache
def _schema_validator() -> Any:
    # Imported on first use: it loads the Girder server package (about a second), which building
    # documents does not need. The model module itself needs no database: only instantiating
    # Annotation() connects to MongoDB, and the schema is a plain class attribute.
    import jsonschema
    from girder_large_image_annotation.models.annotation import AnnotationSchema

    # Draft 6, as the server's own validator; the schema's "$schema" URI names no draft.
    return jsonschema.Draft6Validator(AnnotationSchema.annotationSchema)


def _describe(error: Any) -> str:
    """Where and why, for the element type the element claims to be.

    Elements are checked with anyOf over all element types, whose own message only says "not
    valid under any of the given schemas"; the useful error is the one from the branch for the
    element's type, i.e. a branch that did not fail on ``type`` itself.
    """
    if error.validator == "anyOf" and isinstance(error.instance, Mapping) and "type" in error.instance:
        branches: dict[Any, list[Any]] = {}
        for sub in error.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        relevant = [
            subs for subs in branches.values() if all(list(s.relative_path) != ["type"] for s in subs)
        ]
        if not relevant:
            where = "/".join(str(p) for p in error.absolute_path)
            return f"{where}: unknown element type {error.instance.get('type')!r}"
        error = relevant[0][0]
    where = "/".join(str(p) for p in error.absolute_path) or "document"
    return f"{where}: {error.message}"


def _stand_in_references(element: Mapping[str, Any], cli_outputs: Collection[str]) -> Mapping[str, Any]:
    girder_id = element.get("girderId")
    if isinstance(girder_id, str) and girder_id in cli_outputs and not _OBJECT_ID.match(girder_id):
        return {**element, "girderId": "0" * 24}
    return element


def _shorten_number_arrays(element: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check long ``values``/``points`` arrays with Python and hand the schema a short prefix.

    jsonschema needs about a second per 100,000 values (a document may hold 2,000,000); the items'
    schema is just "number" (or a triple of numbers), which a type test over the whole array checks
    exactly and about 50 times faster.
    """
    short = dict(element)
    for key, width in (("values", None), ("points", 3)):
        array = element.get(key)
        if not isinstance(array, list) or len(array) <= 1000:
            continue
        numbers = array if width is None else [v for p in array if isinstance(p, list) for v in p]
        rows_ok = width is None or all(isinstance(p, list) and len(p) == width for p in array)
        if not rows_ok or not all(type(v) in (int, float) for v in numbers):
            continue  # the schema, given everything, reports the offending item
        short[key] = array[:1000]
    return short


def _check_grid_shape(element: Mapping[str, Any], index: int) -> None:
    values, width = element.get("values"), element.get("gridWidth")
    if isinstance(values, list) and isinstance(width, int) and width >= 1 and len(values) % width:
        raise AnnotationError(
            f"griddata element {index}: {len(values)} values do not fill rows of gridWidth {width}"
        )


def _contour_points(contour_base_px: np.ndarray) -> np.ndarray:
    points = np.asarray(contour_base_px, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise AnnotationError(f"a contour must be (N >= 3, 2) x, y points, got shape {points.shape}")
    if not np.isfinite(points).all():
        raise AnnotationError("the contour has non-finite coordinates")
    return points


def _outline(
    contour_base_px: np.ndarray,
    *,
    group: str,
    label: str,
    colour: tuple[int, int, int],
    user: dict[str, Any],
    max_vertices: int = 500,
    tolerance_base_px: float = 2.0,
) -> dict[str, Any]:
    """A closed polyline element of an LN outline (simplified), no fill."""
    outline = simplify_contour(
        contour_base_px, max_vertices=max_vertices, tolerance_base_px=tolerance_base_px
    )
    return {
        "type": "polyline",
        "closed": True,
        "points": [[round(float(x), 1), round(float(y), 1), 0] for x, y in outline],
        "group": group,
        "label": {"value": label},
        "lineColor": dsa.rgb(colour),
        "lineWidth": dsa.LINE_WIDTH,
        "user": user,
    }


def _check_run(lns: Sequence[LNResult], provenance: Provenance) -> tuple[str, float]:
    """The run's (mode, threshold), once the LNs and the provenance agree with each other."""
    mode, threshold = provenance.mode, provenance.threshold
    if not isinstance(mode, str) or not mode:
        raise AnnotationError(f"mode must be a non-empty string, got {mode!r}")
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0 <= threshold <= 1):
        raise AnnotationError(f"threshold must be in [0, 1], got {threshold}")
    kinds = [m.kind for m in provenance.models]
    if len(set(kinds)) != len(kinds):
        raise AnnotationError(f"at most one model per kind, got kinds {kinds}")
    ids = [ln.ln_id for ln in lns]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"LN ids are not unique: {ids}")
    for ln in lns:
        if not (math.isfinite(ln.score) and 0 <= ln.score <= 1):
            raise AnnotationError(f"LN {ln.ln_id}: score must be in [0, 1], got {ln.score}")
        if bool(ln.positive) != (ln.score >= threshold):
            raise AnnotationError(
                f"LN {ln.ln_id}: positive={ln.positive} disagrees with score {ln.score} "
                f"and threshold {threshold}"
            )
        if not (math.isfinite(ln.area_um2) and ln.area_um2 >= 0):
            raise AnnotationError(f"LN {ln.ln_id}: area_um2 must be finite and >= 0, got {ln.area_um2}")
    return mode, float(threshold)


def _scoring_model(provenance: Provenance) -> ModelRef:
    model = provenance.model("classifier")
    if model is None:
        raise AnnotationError("models must include the classifier that scored the LNs (kind 'classifier')")
    return model


def _attributes(
    document: str, counts: dict[str, int], provenance: Provenance, *, run_details: bool
) -> dict[str, Any]:
    """A document's ``attributes``: which lnassist document it is, its counts and where it came
    from; ``run_details`` adds the run's parameters and timings (kept out of the heatmap document,
    which repeats the LN document's run)."""
    attributes: dict[str, Any] = {dsa.ATTR_DOCUMENT: document, dsa.ATTR_COUNTS: counts}
    if provenance.mode is not None:
        attributes[dsa.ATTR_MODE] = provenance.mode
        attributes[dsa.ATTR_THRESHOLD] = float(provenance.threshold)
    attributes[dsa.ATTR_MODELS] = [
        {"id": m.id, "kind": m.kind, "version": m.version, "sha256": m.sha256} for m in provenance.models
    ]
    attributes[dsa.ATTR_CLI] = provenance.cli
    attributes[dsa.ATTR_VERSION] = provenance.lnassist_version
    if run_details:
        attributes[dsa.ATTR_PARAMETERS] = dict(provenance.parameters)
        attributes[dsa.ATTR_TIMINGS] = {
            key: round(float(seconds), 3) for key, seconds in provenance.timings_s.items()
        }
    return attributes


def _cam_values(ln: LNResult) -> np.ndarray:
    """The CAM as float64 with cells outside the LN at 0 (drawn transparent, like a zero score)."""
    cam = ln.cam
    values = np.asarray(cam.values, dtype=np.float64)
    if values.ndim != 2 or values.size == 0:
        raise AnnotationError(f"LN {ln.ln_id}: CAM values must be a non-empty 2-D grid, got {values.shape}")
    inside = values[~np.isnan(values)]
    if not (np.isfinite(inside).all() and ((inside >= 0) & (inside <= 1)).all()):
        raise AnnotationError(f"LN {ln.ln_id}: CAM values must be in [0, 1] or NaN")
    if not (cam.dx_base_px > 0 and cam.dy_base_px > 0):
        raise AnnotationError(f"LN {ln.ln_id}: CAM cell spacing must be positive")
    if not all(math.isfinite(c) for c in cam.origin_base_px):
        raise AnnotationError(f"LN {ln.ln_id}: CAM origin must be finite")
    return np.nan_to_num(values, nan=0.0)


def _share_budget(sizes: Sequence[int], per_element: int, per_document: int) -> list[int]:
    """Value budget per grid: small grids keep all their cells, large ones split what is left."""
    if per_element < 1 or per_document < len(sizes):
        raise AnnotationError(
            f"value limits too small: {per_element} per element, {per_document} for {len(sizes)} grids"
        )
    budgets = [0] * len(sizes)
    left, count = per_document, len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        budgets[i] = min(sizes[i], per_element, left // count)
        left -= budgets[i]
        count -= 1
    return budgets


def _pool_factor(shape: tuple[int, ...], budget: int) -> int:
    rows, cols = shape
    factor = 1
    while math.ceil(rows / factor) * math.ceil(cols / factor) > budget:
        factor += 1
    return factor


def _max_pool(values: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return values
    rows, cols = values.shape
    padded = np.zeros((math.ceil(rows / factor) * factor, math.ceil(cols / factor) * factor))
    padded[:rows, :cols] = values  # zero padding cannot raise a block's maximum: scores are >= 0
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor)
    return blocks.max(axis=(1, 3))
