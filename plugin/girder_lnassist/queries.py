"""Database reads behind the summaries: a slide's current LN document and its AI original (through
large_image's annotation history), and, for a whole study, the current documents and their LN counts
of many items in a constant number of queries.

Facts of girder_large_image_annotation 1.35.6 this relies on: a deleted document stays in the
``annotation`` collection with ``_active: False``, and so do the old versions (with ``_annotationId``
pointing at the live document); elements live in ``annotationelement``, one row per element per
``_version`` (``annotationId``, ``_version``, ``element``), and history keeps the old versions' rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from bson import ObjectId
from girder.models.folder import Folder
from girder_jobs.models.job import Job
from girder_large_image_annotation.models.annotation import Annotation
from girder_large_image_annotation.models.annotationelement import Annotationelement

from lnassist import dsa

from . import documents

# What the study table needs of a document (not its run parameters or timings).
_DOC_FIELDS = {
    "_id": True,
    "itemId": True,
    "_version": True,
    "created": True,
    "_active": True,
    f"annotation.attributes.{dsa.ATTR_DOCUMENT}": True,
    f"annotation.attributes.{dsa.ATTR_MODELS}": True,
}


# Ids per query: MongoDB serves large $in lists from its indexes, but secantusdb (the test stack's
# database) slows down more than linearly with their length; 50 is its sweet spot (1,000 slides:
# 0.13 s for the documents, 0.4 s for the elements, against 0.8 s and 7.5 s in one query).
CHUNK = 50


def chunks(values: list[Any], size: int = CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def documents_query(item_ids: Iterable[Any], kind: str = dsa.DOCUMENT_LN) -> dict[str, Any]:
    """The active lnassist documents of ``kind`` of the items."""
    return {
        "itemId": {"$in": [ObjectId(i) for i in item_ids]},
        f"annotation.attributes.{dsa.ATTR_DOCUMENT}": kind,
        "_active": {"$ne": False},
    }


def current_documents(item_ids: list[Any]) -> dict[str, dict[str, Any]]:
    """{item id: its current LN document (without elements)} for the items that have one."""
    by_item: dict[str, list[dict[str, Any]]] = {}
    for chunk in chunks(list(item_ids)):
        for doc in Annotation().collection.find(documents_query(chunk), projection=_DOC_FIELDS):
            by_item.setdefault(str(doc["itemId"]), []).append(doc)
    return {item: documents.current_document(docs) for item, docs in by_item.items()}


def element_counts(docs: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{annotation id: LN counts of its current version} for many documents, counted by the
    database (one aggregation per :data:`CHUNK` documents)."""
    versions = {doc["_id"]: doc["_version"] for doc in docs}
    result = {str(a): {"positive": 0, "negative": 0, "total": 0} for a in versions}
    rows = []
    for chunk in chunks(list(versions)):
        pipeline = [
            {"$match": {"annotationId": {"$in": chunk}}},
            {
                "$group": {
                    "_id": {"a": "$annotationId", "v": "$_version", "g": "$element.group"},
                    "n": {"$sum": 1},
                }
            },
        ]
        rows.extend(Annotationelement().collection.aggregate(pipeline))
    for row in rows:
        key = row["_id"]
        if versions.get(key["a"]) != key["v"] or key.get("g") not in documents.LN_GROUPS:
            continue  # an old version's elements (history keeps them), or not an LN
        counts = result[str(key["a"])]
        counts[documents.LN_GROUPS[key["g"]]] += row["n"]
        counts["total"] += row["n"]
    return result


def current_document_with_elements(item_id: Any) -> dict[str, Any] | None:
    docs = Annotation().collection.find(documents_query([item_id]), projection=_DOC_FIELDS)
    chosen = documents.current_document(list(docs))
    return Annotation().load(chosen["_id"], force=True) if chosen else None


def current_document_id(item_id: Any, kind: str) -> str | None:
    """The id of the item's current lnassist document of ``kind`` (no elements read)."""
    docs = Annotation().collection.find(documents_query([item_id], kind), projection=_DOC_FIELDS)
    chosen = documents.current_document(list(docs), kind)
    return str(chosen["_id"]) if chosen else None


def original_version(annotation: dict[str, Any]) -> dict[str, Any] | None:
    """The AI's original version of a document (the oldest version history holds, with its elements);
    the document itself when it was never edited; None when history lost it."""
    first = Annotation().collection.find_one(
        {"$or": [{"_id": annotation["_id"]}, {"_annotationId": annotation["_id"]}]},
        sort=[("_version", 1)],
        projection={"_version": True},
    )
    if first is None:
        return None
    if first["_version"] == annotation["_version"]:
        return annotation
    return Annotation().getVersion(annotation["_id"], first["_version"], force=True)


def readable_folders(folder: dict[str, Any], user: dict[str, Any] | None, recursive: bool) -> list[Any]:
    """Ids of ``folder`` and (``recursive``) every descendant folder the user can read, breadth
    first; a folder the user cannot read is not entered."""
    ids, queue = [folder["_id"]], [folder]
    while recursive and queue:
        parent = queue.pop(0)
        for child in Folder().childFolders(parent, "folder", user=user):
            ids.append(child["_id"])
            queue.append(child)
    return ids


def job_id_of(attributes: dict[str, Any], item: dict[str, Any]) -> str | None:
    """The job that made an LN document on ``item``: slicer_cli_web keeps each job's form
    (``_original_params``), whose ``outputAnnotationFile`` is the file name the CLI wrote the document
    to (the document records the path it was given); the plugin names each run's outputs uniquely.
    None for documents no job made."""
    path = (attributes.get(dsa.ATTR_PARAMETERS) or {}).get(dsa.OUTPUT_ANNOTATION)
    file_id = (item.get("largeImage") or {}).get("fileId")
    if not isinstance(path, str) or not path or file_id is None:
        return None
    query = {
        f"_original_params.{dsa.OUTPUT_ANNOTATION}": PurePosixPath(path).name,
        "_original_params.inputImageFile": str(file_id),
    }
    job = Job().findOne(query, fields=["_id"], sort=[("created", -1)])
    return str(job["_id"]) if job else None
