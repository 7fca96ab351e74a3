"""The review rules: which review state a pathologist may record for an LN document, and the review
record as the document's attribute and as the item's metadata. Pure functions (no Girder): the REST
endpoint (:mod:`girder_lnassist.rest`) and the save guard (:mod:`girder_lnassist.store`) use them.

Rules:

* states are ``accepted``, ``corrected``, ``rejected`` (:data:`lnassist.dsa.REVIEW_STATES`); a
  document without a review is ``unreviewed``;
* ``accepted`` means the AI's result as it stands: refused while the document differs from the AI's
  original version (relabelled, edited, drawn or deleted LNs): record ``corrected`` instead;
* ``corrected`` needs a change against the AI's original: refused when nothing changed;
* ``rejected`` (the AI's result is unusable) is always allowed;
* any writer may review again at any time, to any state; each review is appended to the history and
  the newest is the document's review.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lnassist import dsa


class ReviewRefused(ValueError):
    """A review the rules do not allow; the message says what to do instead."""


def check_state(state: str, changed: bool | None, note: str | None = None) -> None:
    if state not in dsa.REVIEW_STATES:
        raise ReviewRefused(f"state must be one of {', '.join(dsa.REVIEW_STATES)}, got {state!r}")
    if note is not None and len(note) > 10_000:
        raise ReviewRefused("the note is longer than 10,000 characters")
    if state == dsa.REVIEW_ACCEPTED and changed:
        raise ReviewRefused(
            "the LNs differ from the AI's original version (relabelled, edited, drawn or deleted): "
            "record 'corrected' instead of 'accepted'"
        )
    if state == dsa.REVIEW_CORRECTED and changed is False:
        raise ReviewRefused(
            "nothing differs from the AI's original version: record 'accepted' (or 'rejected')"
        )


def record(
    *,
    state: str,
    note: str | None,
    reviewer: Mapping[str, Any],
    reviewed_at: str,
    model: Mapping[str, Any] | None,
    counts_before: Mapping[str, int],
    counts_after: Mapping[str, int],
    annotation_version: int,
) -> dict[str, Any]:
    """One review, JSON-ready (ids as strings, time as UTC ISO 8601)."""
    return {
        "state": state,
        "note": note or "",
        "reviewer": {"id": str(reviewer["_id"]), "login": reviewer["login"]},
        "reviewed_at": reviewed_at,
        "model": dict(model) if model else None,
        "counts_before": dict(counts_before),
        "counts_after": dict(counts_after),
        "annotation_version": int(annotation_version),
    }


def attribute(history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The document's review attribute: the newest review, with every review before it."""
    if not history:
        return None
    return {**history[-1], "history": [dict(r) for r in history]}


def item_metadata(annotation_id: str, review: Mapping[str, Any] | None) -> dict[str, Any]:
    """The item's review metadata (every key present; None values delete a key in Girder)."""
    values: dict[str, Any] = dict.fromkeys(dsa.REVIEW_META_KEYS)
    if review is not None:
        values.update(
            {
                dsa.REVIEW_META_STATE: review["state"],
                dsa.REVIEW_META_BY: review["reviewer"]["login"],
                dsa.REVIEW_META_AT: review["reviewed_at"],
                dsa.REVIEW_META_ANNOTATION: annotation_id,
                dsa.REVIEW_META_VERSION: review["annotation_version"],
            }
        )
    return {dsa.METADATA_PREFIX + key: value for key, value in values.items()}


def view(review: Mapping[str, Any] | None, current_version: int | None) -> dict[str, Any]:
    """A review as summaries show it: the state (or "unreviewed") and whether the document was
    edited after the review (its ``_version`` now differs from the one reviewed)."""
    if review is None:
        return {"state": dsa.REVIEW_UNREVIEWED}
    shown = {key: value for key, value in review.items() if key != "history"}
    shown["current_version"] = current_version
    shown["edited_since_review"] = (
        current_version is not None and current_version != review["annotation_version"]
    )
    return shown
