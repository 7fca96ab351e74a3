"""The LN manifest (``manifest.jsonl``): its schema, its only reader and its only writer.

A manifest lists lymph nodes (LNs) for training and evaluation, one JSON object per LN per line. The
synthetic generator writes it (``lnassist synth-dataset``), pathologists' reviewed annotations are
exported into it, and classifier training, evaluation and detector training read it. Blank lines are
skipped; error messages name the file and the line (``path:line: ...``, lines counted from 1).

A row as a person would type it::

    {"manifest_version": 1, "split": "train", "slide": "slides/s01.svs", "slide_id": "s01",
     "ln_id": 3, "contour": [[1630.5, 1505.0], [1702.0, 1533.9], [1650.2, 1610.7]], "label": 1,
     "mpp": 0.25}

Required fields:

==================  ==================  =============================================================
manifest_version    integer             format version, 1. A row without it is read as version 1;
                                        any other version is an error (written by a newer lnassist).
split               string              the data set split: "train", "val", "test", ...
slide               string              the slide file: a path relative to the manifest's folder
                                        (an absolute path is used as it is).
slide_id            string              the slide's id. Rows with the same slide_id must agree on
                                        slide, split and mpp.
ln_id               integer or string   the LN's id within its slide; (slide_id, ln_id) is unique.
contour             [[x, y], ...]       the LN's outline: a polygon of >= 3 points of finite numbers,
                                        x (right) and y (down) in base-level (level 0) slide pixels.
label               0 or 1              the LN's label: 1 = tumour present (ITC, micro- or
                                        macrometastasis), 0 = none (mimics included).
==================  ==================  =============================================================

Optional fields (left out, or null, when not known):

==================  ==================  =============================================================
mpp                 number > 0          the slide's base resolution in µm/px; overrides the slide
                                        file's metadata (needed when the file has none).
category            string              negative, negative_mimic, itc, micro or macro.
largest_extent_um   number >= 0         largest extent of the LN's tumour deposits, µm.
bbox                [x0, y0, x1, y1]    the contour's bounding box, base-level slide pixels.
slide_label         0 or 1              the slide's label (1 when any of its LNs is positive).
ground_truth        string              the synthetic slide's ground-truth JSON, a path like slide.
site                string              the synthetic slide's stain site.
seed                integer >= 0        the synthetic slide's seed.
annotation_id       string              the DSA annotation the row was exported from.
annotation_version  integer >= 0        that annotation's ``_version`` when it was exported.
reviewer            string              who reviewed the label (Girder login).
reviewed_at         string              when: ISO 8601 with a time zone, e.g. "2025-03-01T14:02:11Z".
ai_model            string              the AI model (registry name and version) that was reviewed.
ai_label            0 or 1              the AI's label for the LN.
ai_score            number in [0, 1]    the AI's probability that the LN is positive.
==================  ==================  =============================================================

Any other field is kept as it is: a row may carry, say, an annotator's label that training trains on
instead of ``label`` (its ``label_field``; :func:`read_manifest` then checks that field is 0 or 1).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from lnassist.categories import CATEGORIES
from lnassist.errors import LnassistError
from lnassist.fileio import write_text_atomic

MANIFEST_NAME = "manifest.jsonl"
MANIFEST_VERSION = 1
VERSION_FIELD = "manifest_version"
# Rows of one slide_id describe one slide, so these must not differ between them.
SLIDE_FIELDS = ("slide", "split", "mpp")


class ManifestError(LnassistError):
    """A manifest (or a row to be written into one) that breaks the schema; names the file and line."""


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _binary(v: Any) -> bool:
    return _integer(v) and v in (0, 1)


def _text(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _timestamp(v: Any) -> bool:
    try:
        return isinstance(v, str) and datetime.fromisoformat(v).tzinfo is not None
    except ValueError:
        return False


def _point(v: Any) -> bool:
    return isinstance(v, list | tuple) and len(v) == 2 and _number(v[0]) and _number(v[1])


REQUIRED_FIELDS = ("split", "slide", "slide_id", "ln_id", "contour", "label")
# name -> (check, what a value must be); the contour is checked point by point by _contour_problem.
FIELD_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "split": (_text, "a non-empty string"),
    "slide": (_text, "a non-empty string (a path)"),
    "slide_id": (_text, "a non-empty string"),
    "ln_id": (lambda v: _integer(v) or _text(v), "an integer or a non-empty string"),
    "label": (_binary, "0 or 1"),
    "mpp": (lambda v: _number(v) and v > 0, "a positive number (µm/px)"),
    "category": (lambda v: v in CATEGORIES, f"one of {', '.join(CATEGORIES)}"),
    "largest_extent_um": (lambda v: _number(v) and v >= 0, "a number >= 0 (µm)"),
    "bbox": (
        lambda v: isinstance(v, list | tuple) and len(v) == 4 and all(_number(c) for c in v),
        "[x0, y0, x1, y1] of finite numbers (base px)",
    ),
    "slide_label": (_binary, "0 or 1"),
    "ground_truth": (_text, "a non-empty string (a path)"),
    "site": (_text, "a non-empty string"),
    "seed": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "annotation_id": (_text, "a non-empty string"),
    "annotation_version": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "reviewer": (_text, "a non-empty string"),
    "reviewed_at": (_timestamp, 'an ISO 8601 time with a time zone, e.g. "2025-03-01T14:02:11Z"'),
    "ai_model": (_text, "a non-empty string"),
    "ai_label": (_binary, "0 or 1"),
    "ai_score": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _contour_problem(contour: Any) -> str | None:
    if not isinstance(contour, list | tuple):
        return f"contour must be a list of [x, y] points (base px), got {_shown(contour)}"
    if len(contour) < 3:
        return f"contour must be a polygon of >= 3 points, it has {len(contour)}"
    for i, point in enumerate(contour):
        if not _point(point):
            return f"contour point {i} must be [x, y] of finite numbers (base px), got {_shown(point)}"
    return None


def _check_row(row: Any, where: str) -> None:
    if not isinstance(row, Mapping):
        raise ManifestError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    version = row.get(VERSION_FIELD, MANIFEST_VERSION)
    if version != MANIFEST_VERSION or not _integer(version):
        raise ManifestError(
            f"{where}: unknown {VERSION_FIELD} {version!r}; this lnassist reads version {MANIFEST_VERSION} "
            "(a newer lnassist may have written it)"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in row]
    if missing:
        raise ManifestError(f"{where}: missing required field(s) {', '.join(missing)}")
    problem = _contour_problem(row["contour"])
    if problem:
        raise ManifestError(f"{where}: {problem}")
    for name, (ok, what) in FIELD_CHECKS.items():
        value = row.get(name)
        if name in REQUIRED_FIELDS and not ok(value):
            raise ManifestError(f"{where}: {name} must be {what}, got {_shown(value)}")
        if value is not None and not ok(value):
            raise ManifestError(f"{where}: {name} must be {what} or null, got {_shown(value)}")


def _check_rows(path: Path, numbered: Iterable[tuple[int, Mapping[str, Any]]]) -> None:
    """Every row on its own, then across rows: unique (slide_id, ln_id), one slide per slide_id."""
    ln_lines: dict[tuple[str, int | str], int] = {}
    slides: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for line, row in numbered:
        where = f"{path}:{line}"
        _check_row(row, where)
        slide_id, ln_id = row["slide_id"], row["ln_id"]
        if (slide_id, ln_id) in ln_lines:
            raise ManifestError(
                f"{where}: duplicate LN: slide_id {slide_id!r} ln_id {ln_id!r} is already on line "
                f"{ln_lines[slide_id, ln_id]}"
            )
        ln_lines[slide_id, ln_id] = line
        first_line, first = slides.setdefault(slide_id, (line, row))
        for name in SLIDE_FIELDS:
            if row.get(name) != first.get(name):
                raise ManifestError(
                    f"{where}: slide_id {slide_id!r} has {name} {_shown(row.get(name))} here but "
                    f"{_shown(first.get(name))} on line {first_line}"
                )


def read_manifest(
    path: str | Path, splits: Collection[str] | None = None, label_field: str = "label"
) -> list[dict[str, Any]]:
    """The manifest's rows as dicts, in file order, after checking the whole file against the schema.

    Each row holds ``manifest_version`` (filled in where the file left it out) and every field of the
    file. ``splits`` keeps only the rows of those splits (possibly none: what that means is the
    caller's to say). ``label_field`` names a field every kept row must hold as 0 or 1 besides
    ``label`` (the label a caller trains on, e.g. an annotator's)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from exc
    numbered = []
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            numbered.append((line, json.loads(raw)))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}:{line}: not JSON ({exc.msg} at column {exc.colno})") from exc
    _check_rows(path, numbered)
    rows = []
    for line, row in numbered:
        if splits is not None and row["split"] not in splits:
            continue
        if label_field not in row:
            raise ManifestError(f"{path}:{line}: missing the label field {label_field!r}")
        if not _binary(row[label_field]):
            raise ManifestError(
                f"{path}:{line}: label field {label_field!r} must be 0 or 1, got {_shown(row[label_field])}"
            )
        rows.append({VERSION_FIELD: MANIFEST_VERSION, **row})
    return rows


def write_manifest(path: str | Path, rows: Iterable[Mapping[str, Any]], overwrite: bool = False) -> None:
    """Write ``rows`` (one per LN) as a manifest with ``manifest_version`` added to each.

    Every row is checked first (errors name the line the row would have had), and the file appears
    whole or not at all; an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    numbered = [
        (line, {VERSION_FIELD: MANIFEST_VERSION, **row} if isinstance(row, Mapping) else row)
        for line, row in enumerate(rows, start=1)
    ]
    _check_rows(path, numbered)
    lines = []
    for line, row in numbered:
        try:
            lines.append(json.dumps(row, separators=(",", ":"), allow_nan=False) + "\n")
        except (TypeError, ValueError) as exc:  # an extra field JSON cannot hold (an array, a NaN)
            raise ManifestError(f"{path}:{line}: not writable as JSON ({exc})") from exc
    write_text_atomic(path, "".join(lines), overwrite=overwrite)


def resolve_path(manifest_path: str | Path, value: str) -> Path:
    """A path field of a row (``slide``, ``ground_truth``): relative to the manifest's folder."""
    return Path(manifest_path).parent / value
