"""The plugin's own record of reviews (collection ``lnassist_review``, one document per reviewed
annotation) and the save guards that keep the copies of it honest.

The review attribute of an annotation and the review keys of an item's metadata are copies of this
record that anyone with write access could edit by hand (HistomicsUI's annotation dialog edits
attributes; Girder's item page edits metadata). The guards run on every ``model.annotation.save``
and ``model.item.save`` (Girder's ``Model.save`` events, whose ``info`` is the document about to be
stored, so changing it in place changes what is stored) and put the recorded values back: a review
can only be made through ``PUT /lnassist/annotation/{id}/review``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from girder.models.model_base import Model
from pymongo import ReturnDocument

from lnassist import dsa

from . import documents, queries, review

logger = logging.getLogger(__name__)


class ReviewRecord(Model):
    def initialize(self) -> None:
        self.name = "lnassist_review"
        self.ensureIndices(["annotationId", "itemId", "updated"])

    def validate(self, doc: dict[str, Any]) -> dict[str, Any]:
        return doc

    def for_annotation(self, annotation_id: Any) -> dict[str, Any] | None:
        return self.findOne({"annotationId": ObjectId(annotation_id)})

    def for_annotations(self, annotation_ids: list[Any]) -> dict[str, dict[str, Any]]:
        """{annotation id: newest review} for many annotations, one query per chunk of ids."""
        found = {}
        for chunk in queries.chunks([ObjectId(a) for a in annotation_ids]):
            cursor = self.collection.find(
                {"annotationId": {"$in": chunk}}, projection={"annotationId": True, "reviews": True}
            )
            found.update({str(d["annotationId"]): d["reviews"][-1] for d in cursor if d.get("reviews")})
        return found

    def latest_for_item(self, item_id: Any) -> dict[str, Any] | None:
        return self.collection.find_one({"itemId": ObjectId(item_id)}, sort=[("updated", -1)])

    def append(self, annotation: dict[str, Any], entry: dict[str, Any]) -> list[dict[str, Any]]:
        """Record a review of ``annotation``; returns the annotation's whole review history."""
        doc = self.collection.find_one_and_update(
            {"annotationId": annotation["_id"]},
            {
                "$push": {"reviews": entry},
                "$set": {"itemId": annotation["itemId"], "updated": datetime.now(UTC)},
            },
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        return doc["reviews"]


def expected_attribute(annotation_id: Any) -> dict[str, Any] | None:
    record = ReviewRecord().for_annotation(annotation_id)
    return review.attribute(record["reviews"]) if record else None


def guard_annotation_save(event: Any) -> None:
    """Put an annotation's review attribute back to what the plugin recorded (none for a document
    that was never reviewed, and for any new document: a copy carries no review)."""
    doc = event.info
    body = doc.get("annotation")
    if not isinstance(body, dict):
        return
    attributes = body.get("attributes")
    has_review = isinstance(attributes, dict) and dsa.ATTR_REVIEW in attributes
    if not has_review and not documents.is_ln_document(doc):
        return
    expected = expected_attribute(doc["_id"]) if "_id" in doc and documents.is_ln_document(doc) else None
    found = attributes.get(dsa.ATTR_REVIEW) if has_review else None
    if found == expected:
        return
    logger.warning(
        "lnassist: annotation %s: the review attribute was changed outside the review endpoint; "
        "restored the recorded review",
        doc.get("_id"),
    )
    if expected is None:
        attributes.pop(dsa.ATTR_REVIEW, None)
    else:
        body.setdefault("attributes", {})
        if not isinstance(body["attributes"], dict):
            body["attributes"] = {}
        body["attributes"][dsa.ATTR_REVIEW] = expected


def expected_item_metadata(item_id: Any) -> dict[str, Any]:
    record = ReviewRecord().latest_for_item(item_id)
    latest = record["reviews"][-1] if record and record.get("reviews") else None
    return review.item_metadata(str(record["annotationId"]) if record else "", latest)


def guard_item_save(event: Any) -> None:
    """Put an item's review metadata back to the newest review the plugin recorded for the item."""
    item = event.info
    if "_id" not in item:
        return
    meta = item.get("meta") or {}
    expected = expected_item_metadata(item["_id"])
    if all(meta.get(key) == value for key, value in expected.items()):
        return
    logger.warning("lnassist: item %s: review metadata changed by hand; restored", item["_id"])
    meta = item.setdefault("meta", {})
    for key, value in expected.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
