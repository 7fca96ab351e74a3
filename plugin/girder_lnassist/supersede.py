"""A new AI run replaces the slide's earlier AI documents, and never anything a person touched.

When lnassist's LN document or heatmap document is created on an item (HistomicsUI's ingest of a
Slicer CLI's outputs, which happens after the job may already have reported success), every older
document of the same kind on that item that is *untouched AI output* is removed:

- it says it is that lnassist document (``attributes.lnassist_document``), found by its attributes,
  never by its name;
- nobody has reviewed it (no review record in its attributes);
- nobody has saved it since it was created (``updated == created``: any edit in HistomicsUI, any
  metadata written through the API, moves ``updated``).

Removal happens only once the new document exists, so a run that fails before its ingest loses
nothing; with large_image's annotation history on (its default) a removed document stays
restorable. Documents are ordered by (``created``, ``_id``), so two runs racing on one slide leave
exactly one current AI document: each creation removes the documents older than itself, and a
document that arrives after a newer one (its ``created`` was stamped first, its insert came later)
removes itself.
"""

from __future__ import annotations

from typing import Any

from girder import events, logger

from lnassist import dsa

from .documents import attributes_of

SUPERSEDED_KINDS = (dsa.DOCUMENT_LN, dsa.DOCUMENT_HEATMAP)  # the detector's outlines are annotators' work


def untouched_ai_document(record: dict[str, Any], kind: str) -> bool:
    """Whether an annotation record is lnassist's document of ``kind`` as the AI left it."""
    attributes = attributes_of(record)
    return (
        attributes.get(dsa.ATTR_DOCUMENT) == kind
        and dsa.ATTR_REVIEW not in attributes
        and record.get("created") is not None
        and record.get("updated") == record.get("created")
    )


def older_than(record: dict[str, Any], newer: dict[str, Any]) -> bool:
    return (record["created"], record["_id"]) < (newer["created"], newer["_id"])


def supersede(created: dict[str, Any]) -> list[Any]:
    """Remove the documents that ``created`` (a new annotation record) supersedes, or ``created``
    itself when a newer untouched AI document is already there; returns the removed ids."""
    from girder_large_image_annotation.models.annotation import Annotation

    kind = attributes_of(created).get(dsa.ATTR_DOCUMENT)
    if kind not in SUPERSEDED_KINDS or not untouched_ai_document(created, kind):
        return []
    query = {
        "itemId": created["itemId"],
        "_active": {"$ne": False},
        "_id": {"$ne": created["_id"]},
        f"annotation.attributes.{dsa.ATTR_DOCUMENT}": kind,
    }
    others = [
        record
        # itemId and creatorId: large_image's remove notifies the item's viewers as the creator.
        for record in Annotation().find(
            query, fields=["_id", "itemId", "creatorId", "created", "updated", "annotation.attributes"]
        )
        if untouched_ai_document(record, kind)
    ]
    if any(older_than(created, record) for record in others):
        others = [created]  # superseded on arrival
    removed = []
    for record in others:
        if record is created or older_than(record, created):
            Annotation().remove(record)
            removed.append(record["_id"])
    if removed:
        logger.info(
            "lnassist: annotation %s on item %s supersedes %s", created["_id"], created["itemId"], removed
        )
    return removed


_DEFERRED = "lnassist.supersede"


def _on_created(event: events.Event) -> None:
    # The creation event fires inside large_image's (non-reentrant) annotation write lock, before
    # the save has returned: the superseding runs afterwards on Girder's events daemon.
    if attributes_of(event.info).get(dsa.ATTR_DOCUMENT) in SUPERSEDED_KINDS:
        events.daemon.trigger(_DEFERRED, {"annotationId": event.info["_id"]})


def _supersede_saved(event: events.Event) -> None:
    from girder_large_image_annotation.models.annotation import Annotation

    record = Annotation().findOne({"_id": event.info["annotationId"], "_active": {"$ne": False}})
    if record is not None:
        supersede(record)


def bind() -> None:
    events.bind("model.annotation.save.created", _DEFERRED, _on_created)
    events.bind(_DEFERRED, _DEFERRED, _supersede_saved)
