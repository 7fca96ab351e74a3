"""The ``/lnassist`` REST resource: settings, per-slide and per-study LN summaries, review.

Every count is read from the annotations at request time (no cache), so relabels, deletions and
redraws in HistomicsUI show at the next request. Access: summaries need READ on the item / folder
(anonymous requests get 401); a review needs WRITE on the item; settings need an admin.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from girder.api import access
from girder.api.describe import Description, autoDescribeRoute
from girder.api.rest import Resource, setContentDisposition, setRawResponse, setResponseHeader
from girder.constants import AccessType, TokenScope
from girder.exceptions import RestException
from girder.models.folder import Folder
from girder.models.item import Item
from girder_large_image.models.image_item import ImageItem
from girder_large_image_annotation.models.annotation import Annotation

from lnassist import constants, dsa

from . import documents, job_outputs, launch, model_versions, queries, review, settings, store
from .rest_batches import BatchRoutes
from .rest_models import ModelRoutes

CSV_COLUMNS = (
    "item_id",
    "name",
    "folder_id",
    "analysed",
    "positive",
    "negative",
    "total",
    "review_state",
    "model_id",
    "model_version",
    "annotation_id",
    "annotation_version",
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _slide_of_current_ln_document(annotation: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The slide of an lnassist LN document that ``user`` may change: 403 without write access on the
    slide, 400 for a deleted or old version or for another kind of document."""
    item = Item().load(annotation["itemId"], user=user, level=AccessType.WRITE, exc=True)
    if annotation.get("_active") is False or "_annotationId" in annotation:
        raise RestException("this annotation was deleted or is an old version")
    if not documents.is_ln_document(annotation):
        raise RestException("not an lnassist LN document (attributes.lnassist_document is not 'ln')")
    return item


def _mm_per_px(item: dict[str, Any]) -> tuple[float, float] | None:
    try:
        metadata = ImageItem().getMetadata(item)
    except Exception:  # not a readable large image: areas come from the AI's values only
        return None
    mm_x, mm_y = metadata.get("mm_x"), metadata.get("mm_y")
    return (float(mm_x), float(mm_y)) if mm_x and mm_y else None


def slide_summary(item: dict[str, Any], annotation_id: Any = None) -> dict[str, Any]:
    """The slide summary of GET /lnassist/item/{id}/summary: of the slide's current LN document, or
    of the document ``annotation_id`` (what a review of that document records)."""
    if annotation_id is None:
        annotation = queries.current_document_with_elements(item["_id"])
    else:
        annotation = Annotation().load(annotation_id, force=True)
    if annotation is None:
        return {
            "item_id": str(item["_id"]),
            "analysed": False,
            "counts": {"positive": 0, "negative": 0, "total": 0},
            "review": review.view(None, None),
            "lns": [],
            "deleted_lns": [],
        }
    attributes = documents.attributes_of(annotation)
    original = queries.original_version(annotation)
    original_elements = original["annotation"].get("elements", []) if original else None
    mm_per_px = _mm_per_px(item)
    current_elements = annotation["annotation"].get("elements", [])
    rows, deleted = documents.ln_rows(current_elements, original_elements, mm_per_px=mm_per_px)
    record = store.ReviewRecord().for_annotation(annotation["_id"])
    latest = record["reviews"][-1] if record and record.get("reviews") else None
    return {
        "item_id": str(item["_id"]),
        "analysed": True,
        "annotation": {
            "id": str(annotation["_id"]),
            "version": annotation["_version"],
            "original_version": original["_version"] if original else None,
            "created": annotation["created"].isoformat(),
        },
        "job_id": queries.job_id_of(attributes, item),
        "models": attributes.get(dsa.ATTR_MODELS) or [],
        "model": documents.model_of(attributes),
        "mode": attributes.get(dsa.ATTR_MODE),
        "threshold": attributes.get(dsa.ATTR_THRESHOLD),
        "counts": documents.counts(current_elements),
        "ai_counts": documents.counts(original_elements) if original_elements is not None else None,
        "changed": documents.changed(rows, deleted),
        "mm_per_px": list(mm_per_px) if mm_per_px else None,
        "review": review.view(latest, annotation["_version"]),
        "lns": rows,
        "deleted_lns": deleted,
    }


def viewer_view(item: dict[str, Any], user: dict[str, Any], threshold: float | None) -> dict[str, Any]:
    """What the HistomicsUI panel needs besides the counts: what this user may do on the slide (and
    why not), the mode "Run LN analysis" would use, and the heatmap's colour legend."""
    folder = Folder().load(item["folderId"], force=True)
    write = Folder().hasAccess(folder, user, AccessType.WRITE)
    mode = settings.default_mode(folder)
    reason = None
    if not write:
        reason = (
            "You can view this slide but not change it: running the analysis, relabelling and "
            "reviewing need write access to its folder."
        )
    else:
        try:
            launch.check_slide(item)
            launch.image_cli(settings.current()[settings.ANALYSIS_IMAGE], user)
        except RestException as exc:
            reason = f"LN analysis cannot run here: {exc.message}"
    legend_threshold = settings.current()[settings.THRESHOLDS][mode] if threshold is None else threshold
    return {
        "access": {"write": write, "run": reason is None, "reason": reason},
        "default_mode": mode,
        "heatmap_annotation_id": queries.current_document_id(item["_id"], dsa.DOCUMENT_HEATMAP),
        "legend": {
            "threshold": legend_threshold,
            "stops": [
                {"score": score, "rgba": dsa.rgba(colour, alpha)}
                for score, colour, alpha in dsa.heatmap_stops(legend_threshold)
            ],
        },
    }


def folder_rows(folder: dict[str, Any], user: dict[str, Any], recursive: bool) -> list[dict[str, Any]]:
    """One row per large-image item the user can read in the folder (and its readable subfolders),
    in folder order (breadth first) then by name. Items take their access from their folder."""
    folder_ids = queries.readable_folders(folder, user, recursive)
    order = {fid: index for index, fid in enumerate(folder_ids)}
    items = list(
        Item().collection.find(
            {
                "folderId": {"$in": folder_ids},
                "largeImage.fileId": {"$exists": True},
                f"meta.{job_outputs.OUTPUT_OF}": {"$exists": False},  # a job's heatmap image: no slide
            },
            projection={"_id": True, "name": True, "lowerName": True, "folderId": True},
        )
    )
    items.sort(key=lambda i: (order[i["folderId"]], i.get("lowerName", i["name"].lower()), str(i["_id"])))
    current = queries.current_documents([i["_id"] for i in items])
    docs = [doc for doc in current.values() if doc is not None]
    counts = queries.element_counts(docs)
    reviews = store.ReviewRecord().for_annotations([doc["_id"] for doc in docs])
    rows = []
    for item in items:
        doc = current.get(str(item["_id"]))
        row: dict[str, Any] = {
            "item_id": str(item["_id"]),
            "name": item["name"],
            "folder_id": str(item["folderId"]),
            "analysed": doc is not None,
            "positive": 0,
            "negative": 0,
            "total": 0,
            "review_state": dsa.REVIEW_UNREVIEWED,
            "model_id": None,
            "model_version": None,
            "annotation_id": None,
            "annotation_version": None,
        }
        if doc is not None:
            model = documents.model_of(documents.attributes_of(doc)) or {}
            latest = reviews.get(str(doc["_id"]))
            row.update(counts[str(doc["_id"])])
            row.update(
                review_state=latest["state"] if latest else dsa.REVIEW_UNREVIEWED,
                model_id=model.get("id"),
                model_version=model.get("version"),
                annotation_id=str(doc["_id"]),
                annotation_version=doc["_version"],
            )
        rows.append(row)
    return rows


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    states = {state: 0 for state in (*dsa.REVIEW_STATES, dsa.REVIEW_UNREVIEWED)}
    for row in rows:
        if row["analysed"]:
            states[row["review_state"]] += 1
    return {
        "slides": len(rows),
        "analysed": sum(row["analysed"] for row in rows),
        "positive_slides": sum(row["positive"] > 0 for row in rows),
        "positive": sum(row["positive"] for row in rows),
        "negative": sum(row["negative"] for row in rows),
        "total": sum(row["total"] for row in rows),
        "review_states": states,
    }


class LnassistResource(BatchRoutes, ModelRoutes, Resource):
    def __init__(self) -> None:
        super().__init__()
        self.resourceName = "lnassist"
        self.route("GET", ("settings",), self.get_settings)
        self.route("POST", ("item", ":id", "analyze"), self.analyze)
        self.route("GET", ("item", ":id", "summary"), self.item_summary)
        self.route("GET", ("folder", ":id", "summary"), self.folder_summary)
        self.route("PUT", ("annotation", ":id", "review"), self.review)
        self.route("PUT", ("annotation", ":id", "ln", ":element", "label"), self.relabel)
        self.route_batches()
        self.route_models()

    @access.admin(scope=TokenScope.SETTINGS_READ)
    @autoDescribeRoute(
        Description("The lnassist settings (defaults where unset).")
        .notes(
            "Set them with PUT /system/setting: lnassist.default_mode (screening | general), "
            "lnassist.thresholds (JSON object {mode: threshold in [0, 1]}), lnassist.analysis_image "
            "(Docker image registered with slicer_cli_web, empty = not configured), "
            "lnassist.models_folder (folder id, empty = none)."
        )
        .errorResponse("You are not logged in.", 401)
        .errorResponse("You are not a system administrator.", 403)
    )
    def get_settings(self) -> dict[str, Any]:
        return settings.current()

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description('"Run LN analysis" on a slide: starts the registered LNAnalysis CLI as you.')
        .notes(
            "Runs the LNAnalysis CLI of the image in lnassist.analysis_image through slicer_cli_web, "
            "as a click in HistomicsUI's Analyses menu would: outputs into the slide's folder, the "
            "LN and heatmap annotations and the item metadata ingested when the job ends. Once the new "
            "documents exist, the slide's earlier AI documents that nobody reviewed or edited are "
            "removed (restorable from annotation history); reviewed and hand-made documents are never "
            "touched. Returns the job (follow it with GET /job/{id})."
        )
        .modelParam("id", "The slide (a large-image item).", model=Item, level=AccessType.WRITE)
        .param(
            "mode",
            "screening (high sensitivity) or general; default: the nearest folder's "
            "lnassist_default_mode metadata, else lnassist.default_mode.",
            required=False,
            enum=list(constants.MODES),
        )
        .param(
            "threshold",
            "A custom threshold in [0, 1] (default: the mode's, lnassist.thresholds).",
            required=False,
            dataType="number",
        )
        .errorResponse(
            "ID was invalid; the item is not a large image; a bad mode or threshold; no "
            "lnassist image is registered or configured.",
            400,
        )
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Write access was denied on the slide.", 403)
    )
    def analyze(self, item: dict[str, Any], mode: str | None, threshold: float | None) -> dict[str, Any]:
        user = self.getCurrentUser()
        current = settings.current()
        mode = mode or settings.default_mode(Folder().load(item["folderId"], force=True))
        if threshold is None:
            threshold = current[settings.THRESHOLDS][mode]
        cli = launch.image_cli(current[settings.ANALYSIS_IMAGE], user)
        classifier = model_versions.classifier_parameter(user)
        params = launch.job_parameters(item, mode, threshold, launch.run_stamp(), classifier)
        return launch.launch(cli, params, user)

    @access.user(scope=TokenScope.DATA_READ)
    @autoDescribeRoute(
        Description("LN counts, per-LN rows and review state of a slide's current lnassist LN document.")
        .notes(
            "The current document is the newest active annotation whose attributes.lnassist_document "
            "is 'ln'. Each LN row gives its label (from its group), the AI's score (null for outlines "
            "a person drew), its area in mm² (area_source 'ai': the AI's measurement of its own "
            "unchanged outline; 'outline': computed from the outline with the slide's base mm/px), "
            "and what the pathologist changed against the AI's original version in the annotation "
            "history. A slide without an lnassist document answers analysed: false and zero counts."
        )
        .modelParam("id", "The slide (a large-image item).", model=Item, level=AccessType.READ)
        .param(
            "viewer",
            "Also answer what the HistomicsUI panel needs: 'viewer': {access: {write, "
            "run, reason}, default_mode, heatmap_annotation_id, legend: {threshold, stops}}.",
            dataType="boolean",
            default=False,
            required=False,
        )
        .errorResponse("ID was invalid.", 400)
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Read access was denied on the item.", 403)
    )
    def item_summary(self, item: dict[str, Any], viewer: bool) -> dict[str, Any]:
        summary = slide_summary(item)
        if viewer:
            summary["viewer"] = viewer_view(item, self.getCurrentUser(), summary.get("threshold"))
        return summary

    @access.user(scope=TokenScope.DATA_READ, cookie=True)
    @autoDescribeRoute(
        Description("LN counts and review state of every slide of a study or case folder.")
        .notes(
            "One row per large-image item the user can read (with recursive, also in the subfolders "
            "the user can read), and totals over all those rows (not only the page). format=csv "
            "answers the page's rows as a CSV download with a header row."
        )
        .modelParam("id", "The folder.", model=Folder, level=AccessType.READ)
        .param("recursive", "Include readable subfolders.", dataType="boolean", default=False, required=False)
        .param("limit", "Rows per page (0: all).", dataType="integer", default=50, required=False)
        .param("offset", "Rows to skip.", dataType="integer", default=0, required=False)
        .param("format", "json or csv.", enum=["json", "csv"], default="json", required=False)
        .errorResponse("ID was invalid, or a bad paging value.", 400)
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Read access was denied on the folder.", 403)
    )
    def folder_summary(
        self, folder: dict[str, Any], recursive: bool, limit: int, offset: int, format: str
    ) -> Any:
        if limit < 0 or offset < 0:
            raise RestException("limit and offset must be >= 0")
        rows = folder_rows(folder, self.getCurrentUser(), recursive)
        page = rows[offset : offset + limit] if limit else rows[offset:]
        if format == "csv":
            setResponseHeader("Content-Type", "text/csv")
            setContentDisposition(f"lnassist-{folder['name']}.csv")
            setRawResponse()
            out = io.StringIO()
            writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(page)
            return out.getvalue().encode("utf8")
        return {
            "folder_id": str(folder["_id"]),
            "recursive": recursive,
            "offset": offset,
            "limit": limit,
            "count": len(rows),
            "totals": totals(rows),
            "rows": page,
        }

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Record the pathologist's review of an lnassist LN document.")
        .notes(
            "Needs WRITE access on the slide. 'accepted': the AI's LNs as they are (refused when the "
            "document differs from the AI's original version); 'corrected': right after changes "
            "(refused when nothing changed); 'rejected': always allowed. A slide may be reviewed "
            "again; each review is appended to the history. Recorded in the annotation's "
            "attributes.lnassist_review (no new annotation version) and in the item's metadata "
            "(lnassist_review_state, lnassist_reviewed_by, lnassist_reviewed_at, "
            "lnassist_review_annotation, lnassist_review_version)."
        )
        .modelParam("id", "The LN annotation document.", model=Annotation, force=True, getElements=False)
        .param("state", "The review.", enum=list(dsa.REVIEW_STATES), required=True)
        .param("note", "The pathologist's note.", required=False)
        .errorResponse("ID was invalid; not an lnassist LN document; a state the rules refuse.", 400)
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Write access was denied on the slide.", 403)
    )
    def review(self, annotation: dict[str, Any], state: str, note: str | None) -> dict[str, Any]:
        user = self.getCurrentUser()
        item = _slide_of_current_ln_document(annotation, user)
        summary = slide_summary(item, annotation["_id"])
        try:
            review.check_state(state, summary["changed"], note)
        except review.ReviewRefused as exc:
            raise RestException(str(exc)) from exc
        entry = review.record(
            state=state,
            note=note,
            reviewer=user,
            reviewed_at=_now(),
            model=summary["model"],
            counts_before=summary["ai_counts"] or {},
            counts_after=summary["counts"],
            annotation_version=summary["annotation"]["version"],
        )
        history = store.ReviewRecord().append(annotation, entry)
        # The plugin's record comes first: the save guards compare every save against it.
        Annotation().setMetadata(annotation, {dsa.ATTR_REVIEW: review.attribute(history)})
        Item().setMetadata(item, review.item_metadata(str(annotation["_id"]), entry))
        return {**review.view(entry, summary["annotation"]["version"]), "history": history}

    @access.user(scope=TokenScope.DATA_WRITE)
    @autoDescribeRoute(
        Description("Relabel one LN of an lnassist LN document (positive or negative).")
        .notes(
            "Needs WRITE access on the slide. Moves the LN outline element to the other LN group with "
            "that group's colour and saves the document as a new version (annotation history keeps "
            "the AI's original, so the summary shows the change). Relabelling to the label the LN "
            "already has changes nothing. Answers the slide's summary after the change."
        )
        .modelParam("id", "The LN annotation document.", model=Annotation, force=True, getElements=False)
        .param("element", "The id of the LN's outline element.", paramType="path")
        .param("label", "The new label.", enum=["positive", "negative"], required=True)
        .errorResponse("ID was invalid; not an lnassist LN document; no such LN in it.", 400)
        .errorResponse("You are not logged in.", 401)
        .errorResponse("Write access was denied on the slide.", 403)
    )
    def relabel(self, annotation: dict[str, Any], element: str, label: str) -> dict[str, Any]:
        user = self.getCurrentUser()
        item = _slide_of_current_ln_document(annotation, user)
        doc = Annotation().load(annotation["_id"], force=True)
        try:
            documents.relabel(doc["annotation"]["elements"], element, label)
        except documents.Unchanged:
            return slide_summary(item)
        except KeyError as exc:
            raise RestException(str(exc.args[0])) from exc
        Annotation().updateAnnotation(doc, updateUser=user)
        return slide_summary(item)
