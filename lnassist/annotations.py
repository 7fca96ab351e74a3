"""LN analysis results as large_image / HistomicsUI annotation documents and Girder item metadata.

This module owns the output format of an LN analysis on the DSA side: one document with an outline
per LN (group, label, colour and provenance per LN), a separate heatmap document (HistomicsUI
draws griddata only in documents without polylines), flat item metadata for the slide, and the
check of a document against large_image's own annotation JSON schema. Inputs are the plain
dataclasses below, so nothing here depends on the rest of the pipeline. Coordinates are base-level
slide pixels (``*_base_px``) throughout.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import shapely

from lnassist.errors import LnassistError

GROUP_POSITIVE = "LN metastasis positive"
GROUP_NEGATIVE = "LN metastasis negative"
GROUP_HEATMAP = "LN metastasis heatmap"
POSITIVE_RGB = (220, 38, 38)
NEGATIVE_RGB = (22, 163, 74)
HEATMAP_RGB = (255, 0, 0)
THRESHOLD_RGB = (255, 165, 0)
LINE_WIDTH = 2  # screen pixels

# HistomicsUI's limits: larger griddata elements are stored out of line and documents beyond these
# totals are slow or not drawn at all.
MAX_VALUES_PER_ELEMENT = 100_000
MAX_VALUES_PER_DOCUMENT = 2_000_000

_OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


class AnnotationError(LnassistError):
    """Inputs that cannot become a valid annotation document, or a document that fails the schema."""


@dataclass(frozen=True)
class CamGrid:
    """Class-activation (heatmap) grid of one LN."""

    values: np.ndarray  # (rows, cols) P(metastasis) per cell in [0, 1]; NaN = outside the LN
    origin_base_px: tuple[float, float]  # (x, y) of cell (0, 0)'s centre
    dx_base_px: float  # cell spacing along x
    dy_base_px: float


@dataclass(frozen=True)
class LNResult:
    ln_id: int
    contour_base_px: np.ndarray  # (N, 2) x, y polygon
    score: float  # P(metastasis) in [0, 1]
    positive: bool  # score >= threshold
    area_um2: float
    cam: CamGrid | None = None


@dataclass(frozen=True)
class ModelRef:
    """Which model took part in an analysis (provenance); ``kind`` is e.g. detector or classifier."""

    id: str
    kind: str
    version: str
    sha256: str


def rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*colour)


def rgba(colour: tuple[int, int, int], alpha: float) -> str:
    # Fixed decimals: the schema's pattern rejects exponents such as 1e-05.
    return "rgba({},{},{},{:.2f})".format(*colour, alpha)


def heatmap_colour_stops(threshold: float) -> list[tuple[float, tuple[int, int, int], float]]:
    """(score, RGB, opacity) stops of the heatmap colour ramp, shared by the griddata and the overlay
    image: transparent at 0, half-opaque orange at the decision threshold, red at 1. Absolute
    probabilities, so the colour of a score does not depend on the other scores of the slide."""
    return [(0.0, HEATMAP_RGB, 0.0), (float(threshold), THRESHOLD_RGB, 0.5), (1.0, HEATMAP_RGB, 0.9)]


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
    *,
    mode: str,
    threshold: float,
    models: Sequence[ModelRef],
    cli_name: str,
    version: str,
    parameters: Mapping[str, Any],
    timings_s: Mapping[str, float],
    name: str = "LN metastasis",
    fill_opacity: float | None = None,
    max_vertices: int = 500,
    tolerance_base_px: float = 2.0,
) -> dict[str, Any]:
    """One closed polyline per LN, grouped positive/negative, with the run's provenance in attributes.

    No fill unless ``fill_opacity`` (0..1) is given: fills are expensive to draw and hide the tissue.
    """
    _check_run(lns, mode, threshold, models)
    if fill_opacity is not None and not 0 <= fill_opacity <= 1:
        raise AnnotationError(f"fill_opacity must be in [0, 1], got {fill_opacity}")
    scorer = _scoring_model(models) if lns else None
    elements = []
    for ln in lns:
        outline = simplify_contour(
            ln.contour_base_px, max_vertices=max_vertices, tolerance_base_px=tolerance_base_px
        )
        colour = POSITIVE_RGB if ln.positive else NEGATIVE_RGB
        verdict = "positive" if ln.positive else "negative"
        element: dict[str, Any] = {
            "type": "polyline",
            "closed": True,
            "points": [[round(float(x), 1), round(float(y), 1), 0] for x, y in outline],
            "group": GROUP_POSITIVE if ln.positive else GROUP_NEGATIVE,
            "label": {"value": f"LN {ln.ln_id}: {verdict} (score {ln.score:.2f})"},
            "lineColor": rgb(colour),
            "lineWidth": LINE_WIDTH,
            "user": {
                "ln_id": int(ln.ln_id),
                "score": round(float(ln.score), 4),
                "positive": bool(ln.positive),
                "threshold": float(threshold),
                "mode": mode,
                "model_id": scorer.id,
                "model_version": scorer.version,
                "area_um2": round(float(ln.area_um2), 1),
            },
        }
        if fill_opacity is not None:
            element["fillColor"] = rgba(colour, fill_opacity)
        elements.append(element)
    n_positive = sum(bool(ln.positive) for ln in lns)
    attributes = {
        "counts": {"lns": len(lns), "positive": n_positive, "negative": len(lns) - n_positive},
        **_provenance(mode, threshold, models, cli_name, version),
        "parameters": dict(parameters),
        "timings_s": {key: round(float(seconds), 3) for key, seconds in timings_s.items()},
    }
    return {
        "name": name,
        "description": f"{len(lns)} LNs, {n_positive} positive (threshold {threshold:g}, mode {mode})",
        "display": {"visible": True},
        "attributes": attributes,
        "elements": elements,
    }


def heatmap_document(
    lns: Sequence[LNResult],
    *,
    mode: str,
    threshold: float,
    models: Sequence[ModelRef],
    cli_name: str,
    version: str,
    name: str = "LN metastasis heatmap",
    image_girder_id: str | None = None,
    image_transform: Mapping[str, Any] | None = None,
    image_opacity: float = 0.5,
    max_values_per_element: int = MAX_VALUES_PER_ELEMENT,
    max_values_per_document: int = MAX_VALUES_PER_DOCUMENT,
) -> dict[str, Any]:
    """One griddata heatmap per LN with a CAM, plus an ``image`` overlay if ``image_girder_id`` is set.

    ``image_girder_id`` is a Girder item id or, in a Slicer CLI, the name of the output parameter
    holding the overlay image; the server swaps that name for the uploaded item's id on ingest, so
    validate such a document with ``validate_document(doc, cli_outputs={name})``.
    ``image_transform`` maps image pixels to base pixels (``HeatmapOverlay.transform()``; none: the
    image has the slide's base-level size). Grids larger than the value budgets are coarsened by
    max-pooling so that no hot spot is averaged away. Colours: :func:`heatmap_colour_stops`.
    """
    _check_run(lns, mode, threshold, models)
    if not 0 <= image_opacity <= 1:
        raise AnnotationError(f"image_opacity must be in [0, 1], got {image_opacity}")
    with_cam = [ln for ln in lns if ln.cam is not None]
    grids = [_cam_values(ln) for ln in with_cam]
    budgets = _share_budget([g.size for g in grids], max_values_per_element, max_values_per_document)
    stops = heatmap_colour_stops(threshold)
    elements: list[dict[str, Any]] = []
    for ln, grid, budget in zip(with_cam, grids, budgets, strict=True):
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
                "group": GROUP_HEATMAP,
                "label": {"value": f"LN {ln.ln_id} heatmap"},
                "user": {"ln_id": int(ln.ln_id), "score": round(float(ln.score), 4), "pool_factor": factor},
                "origin": [float(x0), float(y0), 0],
                "dx": float(dx),
                "dy": float(dy),
                "gridWidth": int(pooled.shape[1]),
                "values": np.round(pooled, 3).ravel().tolist(),
                "normalizeRange": False,
                "rangeValues": [value for value, _, _ in stops],
                "colorRange": [rgba(colour, alpha) for _, colour, alpha in stops],
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
            "group": GROUP_HEATMAP,
            "label": {"value": "LN metastasis overlay"},
        }
        if image_transform is not None:
            image["transform"] = dict(image_transform)
        elements.append(image)
    return {
        "name": name,
        "description": f"class-activation heatmaps of {len(with_cam)} of {len(lns)} LNs",
        "display": {"visible": True},
        "attributes": {
            "counts": {"lns": len(lns), "heatmaps": len(with_cam)},
            **_provenance(mode, threshold, models, cli_name, version),
        },
        "elements": elements,
    }


def summary_metadata(
    lns: Sequence[LNResult],
    *,
    mode: str,
    threshold: float,
    models: Sequence[ModelRef],
    analysed_at: datetime,
    version: str,
    prefix: str = "lnassist_",
) -> dict[str, str | int | float | bool]:
    """Flat item metadata for the slide: counts, verdict, max score, models, time of analysis (UTC).

    Keys are ``prefix`` + name: Girder refuses metadata keys containing '.' or starting with '$'.
    Every key is always present (max score 0.0 without LNs) because Girder merges metadata, so a
    missing key would leave a previous run's value in place.
    """
    _check_run(lns, mode, threshold, models)
    if "." in prefix or prefix.startswith("$"):
        raise AnnotationError(f"metadata key prefix {prefix!r} may not contain '.' or start with '$'")
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
        "version": version,
        "analysed_at": analysed_at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    for model in models:
        meta[model.kind] = model.id
        meta[f"{model.kind}_version"] = model.version
    return {prefix + key: value for key, value in meta.items()}


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


def _check_run(lns: Sequence[LNResult], mode: str, threshold: float, models: Sequence[ModelRef]) -> None:
    if not isinstance(mode, str) or not mode:
        raise AnnotationError(f"mode must be a non-empty string, got {mode!r}")
    if not (math.isfinite(threshold) and 0 <= threshold <= 1):
        raise AnnotationError(f"threshold must be in [0, 1], got {threshold}")
    kinds = [m.kind for m in models]
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


def _scoring_model(models: Sequence[ModelRef]) -> ModelRef:
    for model in models:
        if model.kind == "classifier":
            return model
    raise AnnotationError("models must include the classifier that scored the LNs (kind 'classifier')")


def _provenance(
    mode: str, threshold: float, models: Sequence[ModelRef], cli_name: str, version: str
) -> dict[str, Any]:
    return {
        "mode": mode,
        "threshold": float(threshold),
        "models": [{"id": m.id, "kind": m.kind, "version": m.version, "sha256": m.sha256} for m in models],
        "cli": cli_name,
        "lnassist_version": version,
    }


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
