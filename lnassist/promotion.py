"""The candidate record of a retrained classifier and the promotion gate that reads it.

A retrain (:mod:`lnassist.retrain`) fine-tunes a parent classifier on reviewed annotations and
writes ``candidate.json``: what the candidate file is, what it came from (parent, data set), how the
data were split (by source slide) and trained, and both models' statistics on the held-out LNs.
:func:`gate` says whether the candidate may replace its parent: the reasons it may not, empty when
it may. :func:`check_record` is the one schema check of a record.

The held-out statistics of one model (``M`` below)::

    {"n": 12, "n_positive": 5, "auc": 0.83 or null, "auc_ci": [0.61, 1.0] or null,
     "thresholds": {"general": {"threshold": 0.4, "sensitivity": 0.8, "specificity": 0.86}, ...}}

``auc`` (DeLong, :mod:`lnassist.metrics`) is null unless the held-out LNs hold at least two of
each class; a sensitivity (specificity) is null without positive (negative) LNs; there is one
entry per mode of :data:`lnassist.constants.THRESHOLDS`, an LN called positive at
``score >= threshold``.

Standard library only: the Girder server imports it to show and promote candidates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from lnassist.constants import THRESHOLDS
from lnassist.errors import LnassistError

CANDIDATE_FORMAT = "lnassist-candidate/1"
# How much worse than its parent a candidate may be on the held-out LNs: a few reviewed slides move
# the AUC and the sensitivities by that much through chance alone.
DEFAULT_TOLERANCE: dict[str, float] = {"auc": 0.02, "sensitivity": 0.05}
TOLERANCE_KEYS = tuple(DEFAULT_TOLERANCE)
# A difference this small is a rounding error, not a drop (0.80 - 0.78 > 0.02 in floating point).
_EPSILON = 1e-9


class RecordError(LnassistError, ValueError):
    """A candidate record (or a tolerance) that breaks the schema; names the field."""


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return _integer(v) and v >= 0


def _fraction(v: Any) -> bool:
    return _number(v) and 0 <= v <= 1


def _optional_fraction(v: Any) -> bool:
    return v is None or _fraction(v)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _sha256(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def _texts(v: Any) -> bool:
    return isinstance(v, list) and all(_text(x) for x in v)


def _timestamp(v: Any) -> bool:
    try:
        return isinstance(v, str) and datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def _interval(v: Any) -> bool:
    return v is None or (
        isinstance(v, list) and len(v) == 2 and all(_fraction(x) for x in v) and v[0] <= v[1]
    )


def _mapping(v: Any) -> bool:
    return isinstance(v, dict)


Check = tuple[Callable[[Any], bool], str]
_RECORD_FIELDS: dict[str, Check] = {
    "model.backbone": (_text, "a non-empty string"),
    "model.mpp": (lambda v: _number(v) and v > 0, "a positive number (um/px)"),
    "model.sha256": (_sha256, "64 lowercase hex digits"),
    "model.file": (_text, "a non-empty string"),
    "parent": (_mapping, "a mapping"),
    "parent.sha256": (_sha256, "64 lowercase hex digits"),
    "dataset": (_mapping, "a mapping"),
    "split.seed": (_integer, "an integer"),
    "split.heldout_fraction": (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)"),
    "split.train_items": (_texts, "a list of non-empty strings"),
    "split.heldout_items": (_texts, "a list of non-empty strings"),
    "split.n_train_ln": (_count, "an integer >= 0"),
    "split.n_heldout_ln": (_count, "an integer >= 0"),
    "split.n_heldout_positive": (_count, "an integer >= 0"),
    "training.epochs": (_count, "an integer >= 0"),
    "training.config": (_mapping, "a mapping"),
    "training.history": (lambda v: isinstance(v, list), "a list (one entry per epoch)"),
    "training.wall_s": (lambda v: _number(v) and v >= 0, "a number >= 0 (seconds)"),
    "heldout.delong": (
        lambda v: (
            v is None
            or (isinstance(v, dict) and _number(v.get("auc_difference")) and _fraction(v.get("p_value")))
        ),
        "null or {auc_difference: number, p_value: number in [0, 1]}",
    ),
    "tolerance": (_mapping, "a mapping"),
    "created_at": (_timestamp, 'an ISO 8601 time with a time zone, e.g. "2025-03-01T14:02:11+00:00"'),
}
_METRICS_FIELDS: dict[str, Check] = {
    "n": (_count, "an integer >= 0"),
    "n_positive": (_count, "an integer >= 0"),
    "auc": (_optional_fraction, "a number in [0, 1] or null"),
    "auc_ci": (_interval, "[low, high] in [0, 1] or null"),
}
_THRESHOLD_FIELDS: dict[str, Check] = {
    "threshold": (_fraction, "a number in [0, 1]"),
    "sensitivity": (_optional_fraction, "a number in [0, 1] or null"),
    "specificity": (_optional_fraction, "a number in [0, 1] or null"),
}
# A model's held-out AUC may be left out: read as null (undefined), which the gate refuses.
_OPTIONAL_METRICS = ("auc", "auc_ci")
_MISSING = object()


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _lookup(record: Any, path: str) -> Any:
    """The value at a dotted path, or _MISSING; a value on the way that is not a mapping is an error."""
    value, walked = record, []
    for key in path.split("."):
        if not isinstance(value, Mapping):
            raise RecordError(f"candidate record: {'.'.join(walked)} must be a mapping, got {_shown(value)}")
        if key not in value:
            return _MISSING
        value = value[key]
        walked.append(key)
    return value


def _check_fields(
    record: Any, fields: Mapping[str, Check], prefix: str = "", optional: tuple[str, ...] = ()
) -> None:
    for path, (ok, what) in fields.items():
        value = _lookup(record, prefix + path)
        if value is _MISSING and path in optional:
            continue
        if value is _MISSING:
            raise RecordError(f"candidate record: missing {prefix}{path}")
        if not ok(value):
            raise RecordError(f"candidate record: {prefix}{path} must be {what}, got {_shown(value)}")


def _check_metrics(record: Mapping[str, Any], name: str) -> None:
    prefix = f"heldout.{name}."
    _check_fields(record, _METRICS_FIELDS, prefix, _OPTIONAL_METRICS)
    metrics = record["heldout"][name]
    if metrics["n_positive"] > metrics["n"]:
        raise RecordError(f"candidate record: {prefix}n_positive {metrics['n_positive']} > n {metrics['n']}")
    for mode in THRESHOLDS:
        _check_fields(record, _THRESHOLD_FIELDS, f"{prefix}thresholds.{mode}.")


def check_tolerance(tolerance: Any, where: str = "tolerance") -> dict[str, float]:
    """The tolerance as a dict of its keys (auc, sensitivity), each a number >= 0, or :class:`RecordError`."""
    if not isinstance(tolerance, Mapping):
        raise RecordError(f"{where} must be a mapping, got {_shown(tolerance)}")
    unknown = sorted(set(tolerance) - set(TOLERANCE_KEYS))
    if unknown:
        raise RecordError(f"{where}: unknown keys {unknown}; known: {list(TOLERANCE_KEYS)}")
    for key in TOLERANCE_KEYS:
        if key not in tolerance:
            raise RecordError(f"{where}: missing {key}")
        if not (_number(tolerance[key]) and tolerance[key] >= 0):
            raise RecordError(f"{where}: {key} must be a number >= 0, got {_shown(tolerance[key])}")
    return {key: float(tolerance[key]) for key in TOLERANCE_KEYS}


def check_record(record: Any) -> None:
    """Raise :class:`RecordError` naming the first field of ``record`` that breaks the schema."""
    if not isinstance(record, Mapping):
        raise RecordError(f"candidate record must be a JSON object, got {type(record).__name__}")
    if record.get("format") != CANDIDATE_FORMAT:
        raise RecordError(
            f"candidate record: format must be {CANDIDATE_FORMAT!r}, got {_shown(record.get('format'))} "
            "(a newer lnassist may have written it)"
        )
    _check_fields(record, _RECORD_FIELDS)
    for name in ("parent", "candidate"):
        _check_metrics(record, name)
    check_tolerance(record["tolerance"], "candidate record: tolerance")


def _sensitivity_reasons(record: Mapping[str, Any], allowed: float) -> list[str]:
    parent, candidate = record["heldout"]["parent"], record["heldout"]["candidate"]
    reasons = []
    for mode in THRESHOLDS:
        before = parent["thresholds"][mode]
        after = candidate["thresholds"][mode]
        if before["sensitivity"] is None or after["sensitivity"] is None:
            continue  # no positive held-out LN: the undefined AUC is the reason already
        drop = before["sensitivity"] - after["sensitivity"]
        if drop > allowed + _EPSILON:
            reasons.append(
                f"held-out sensitivity at the {mode} threshold ({after['threshold']:g}) fell from "
                f"{before['sensitivity']:.4f} (parent) to {after['sensitivity']:.4f} (candidate), "
                f"by {drop:.4f}, more than the tolerance {allowed:.4f}"
            )
    return reasons


def gate(record: Mapping[str, Any], tolerance: Mapping[str, Any] | None = None) -> list[str]:
    """Why the candidate may not replace its parent, one sentence each; empty when it may.

    Refused when, on the held-out LNs, its AUC is lower than the parent's by more than
    ``tolerance["auc"]``, its sensitivity at any mode's threshold is lower by more than
    ``tolerance["sensitivity"]``, or either AUC cannot be computed. ``tolerance`` (keys it leaves
    out come from the record) overrides the record's own."""
    check_record(record)
    allowed = check_tolerance({**record["tolerance"], **(tolerance or {})})
    parent, candidate = record["heldout"]["parent"], record["heldout"]["candidate"]
    undefined = [name for name, m in (("parent", parent), ("candidate", candidate)) if m.get("auc") is None]
    if undefined:
        n, n_pos = candidate["n"], candidate["n_positive"]
        return [
            f"the held-out AUC of the {' and the '.join(undefined)} is undefined: the held-out split has "
            f"{n_pos} positive and {n - n_pos} negative LN(s), and the AUC needs at least 2 of each, so the "
            "candidate cannot be compared with its parent"
        ]
    reasons = []
    drop = parent["auc"] - candidate["auc"]
    if drop > allowed["auc"] + _EPSILON:
        reasons.append(
            f"held-out AUC fell from {parent['auc']:.4f} (parent) to {candidate['auc']:.4f} (candidate), "
            f"by {drop:.4f}, more than the tolerance {allowed['auc']:.4f}"
        )
    return reasons + _sensitivity_reasons(record, allowed["sensitivity"])
