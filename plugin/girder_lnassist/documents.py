"""What an lnassist LN document says, as plain data: which document of a slide is current, its LN
rows (label, score, area, what the pathologist changed against the AI's original version) and its
counts. Pure functions over annotation dicts (no Girder, no database), so they are tested without a
server; :mod:`girder_lnassist.queries` feeds them from the database.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lnassist import dsa

LN_GROUPS = {dsa.GROUP_POSITIVE: "positive", dsa.GROUP_NEGATIVE: "negative"}


def attributes_of(annotation: Mapping[str, Any]) -> Mapping[str, Any]:
    """An annotation record's ``annotation.attributes`` (empty when it has none)."""
    return (annotation.get("annotation") or {}).get("attributes") or {}


def is_ln_document(annotation: Mapping[str, Any]) -> bool:
    return attributes_of(annotation).get(dsa.ATTR_DOCUMENT) == dsa.DOCUMENT_LN


def current_document(
    candidates: Iterable[Mapping[str, Any]], kind: str = dsa.DOCUMENT_LN
) -> Mapping[str, Any] | None:
    """The current lnassist document of ``kind`` (LN by default, or heatmap) among a slide's
    documents: active ones of that kind only, the newest ``created``, ties broken by the larger
    ``_id`` (ObjectIds grow with time), so the choice never depends on the database's order."""
    eligible = [
        a
        for a in candidates
        if a.get("_active", True) is not False and attributes_of(a).get(dsa.ATTR_DOCUMENT) == kind
    ]
    if not eligible:
        return None
    return max(eligible, key=lambda a: (a.get("created") or 0, str(a["_id"])))


class Unchanged(Exception):
    """The LN already has the label asked for."""


def relabel(elements: Sequence[dict[str, Any]], element_id: str, label: str) -> None:
    """Move the LN outline ``element_id`` to the group of ``label`` ("positive" / "negative"), in that
    group's colour, in place. KeyError (with a message) when no LN element has that id; Unchanged
    when it already has the label."""
    group = {name: group for group, name in LN_GROUPS.items()}.get(label)
    if group is None:
        raise KeyError(f"label must be one of {', '.join(LN_GROUPS.values())}, got {label!r}")
    for element in elements:
        if str(element.get("id")) == element_id and element.get("group") in LN_GROUPS:
            if element["group"] == group:
                raise Unchanged(element_id)
            element["group"] = group
            element["lineColor"] = dsa.rgb(dsa.GROUP_RGB[group])
            return
    raise KeyError(f"no LN outline with element id {element_id!r} in this document")


def counts(elements: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """LN counts by group: elements outside the two LN groups are not LNs."""
    positive = negative = 0
    for element in elements:
        label = LN_GROUPS.get(element.get("group"))
        positive += label == "positive"
        negative += label == "negative"
    return {"positive": positive, "negative": negative, "total": positive + negative}


def polygon_area_px2(element: Mapping[str, Any]) -> float | None:
    """Area in base pixels² of a closed outline element (polyline, rectangle, ellipse, circle);
    None for anything else (an open line or a point encloses nothing)."""
    kind = element.get("type")
    if kind == "polyline":
        points = element.get("points") or []
        if not element.get("closed") or len(points) < 3:
            return None
        twice = sum(
            x0 * y1 - x1 * y0
            for (x0, y0, *_), (x1, y1, *_) in zip(points, points[1:] + points[:1], strict=True)
        )
        return abs(twice) / 2
    if kind == "rectangle":
        return abs(float(element.get("width", 0)) * float(element.get("height", 0)))
    if kind == "ellipse":
        return math.pi * abs(float(element.get("width", 0)) * float(element.get("height", 0))) / 4
    if kind == "circle":
        return math.pi * float(element.get("radius", 0)) ** 2
    return None


def _same_outline(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    keys = ("type", "points", "center", "width", "height", "radius", "rotation", "closed", "holes")
    return all(_rounded(a.get(key)) == _rounded(b.get(key)) for key in keys)


def _rounded(value: Any) -> Any:
    # Clients send coordinates back as floats: compare to 0.01 px.
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    if isinstance(value, float):
        return round(value, 2)
    return value


def _ai_data(element: Mapping[str, Any]) -> Mapping[str, Any] | None:
    user = element.get("user")
    if isinstance(user, Mapping) and dsa.ELEMENT_SCORE in user and dsa.ELEMENT_LN_ID in user:
        return user
    return None


def ln_rows(
    current: Sequence[Mapping[str, Any]],
    original: Sequence[Mapping[str, Any]] | None,
    *,
    mm_per_px: tuple[float, float] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(rows of the current LNs, the AI's LNs the pathologist deleted).

    ``current`` / ``original`` are the element lists of the current and of the AI's original version
    of the document (``original`` None: history unavailable; label changes then come from the AI's
    label in each element's ``user`` data and outline changes are unknown). An element is the AI's
    when the original version holds an element with its id (HistomicsUI keeps ids when it saves);
    any other element in an LN group was drawn by a person. ``changes`` lists what differs from the
    AI's element: "label" (moved to the other group), "outline" (edited), or ["drawn"]. Areas: the
    AI's ``area_um2`` while the outline is the AI's own, else computed from the outline with the
    slide's base mm/px (None when the slide has no resolution).
    """
    by_id = {str(e.get("id")): e for e in original} if original is not None else {}
    rows = []
    seen = set()
    for element in current:
        label = LN_GROUPS.get(element.get("group"))
        if label is None:
            continue
        element_id = str(element.get("id"))
        ai = _ai_data(element)
        changes: list[str] | None = []
        if original is not None:
            before = by_id.get(element_id)
            if before is None or LN_GROUPS.get(before.get("group")) is None:
                changes, ai = ["drawn"], None
            else:
                seen.add(element_id)
                if LN_GROUPS[before["group"]] != label:
                    changes.append("label")
                if not _same_outline(before, element):
                    changes.append("outline")
        elif ai is None:
            changes = ["drawn"]
        else:
            if bool(ai.get(dsa.ELEMENT_POSITIVE)) != (label == "positive"):
                changes.append("label")
            changes = changes if changes else None  # the outline cannot be checked without history
        area_mm2, area_source = None, None
        if (
            ai is not None
            and changes is not None
            and "outline" not in changes
            and (dsa.ELEMENT_AREA_UM2 in ai)
        ):
            area_mm2, area_source = float(ai[dsa.ELEMENT_AREA_UM2]) / 1e6, "ai"
        elif mm_per_px is not None:
            area_px2 = polygon_area_px2(element)
            if area_px2 is not None:
                area_mm2, area_source = area_px2 * mm_per_px[0] * mm_per_px[1], "outline"
        rows.append(
            {
                "element_id": element_id,
                "ln_id": ai.get(dsa.ELEMENT_LN_ID) if ai else None,
                "label": label,
                "ai_label": ("positive" if ai.get(dsa.ELEMENT_POSITIVE) else "negative") if ai else None,
                "score": ai.get(dsa.ELEMENT_SCORE) if ai else None,
                "area_mm2": round(area_mm2, 9) if area_mm2 is not None else None,
                "area_source": area_source,
                "changed": bool(changes) if changes is not None else None,
                "changes": changes,
            }
        )
    deleted = []
    for element_id, before in by_id.items():
        label = LN_GROUPS.get(before.get("group"))
        if label is None or element_id in seen:
            continue
        ai = _ai_data(before) or {}
        deleted.append(
            {
                "element_id": element_id,
                "ln_id": ai.get(dsa.ELEMENT_LN_ID),
                "ai_label": label,
                "score": ai.get(dsa.ELEMENT_SCORE),
            }
        )
    return rows, deleted


def changed(rows: Sequence[Mapping[str, Any]], deleted: Sequence[Mapping[str, Any]]) -> bool | None:
    """Whether the pathologist changed the AI's LNs at all (None: cannot tell without history)."""
    if deleted or any(row["changed"] for row in rows):
        return True
    if any(row["changed"] is None for row in rows):
        return None
    return False


def model_of(attributes: Mapping[str, Any], kind: str = "classifier") -> dict[str, Any] | None:
    """{id, version} of the document's model of ``kind`` (the classifier scored the LNs)."""
    for model in attributes.get(dsa.ATTR_MODELS) or []:
        if isinstance(model, Mapping) and model.get("kind") == kind:
            return {"id": model.get("id"), "version": model.get("version")}
    return None
