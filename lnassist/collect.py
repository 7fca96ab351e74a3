"""Reviewed annotations to a frozen training dataset: the dataset directory, its snapshot, and the
Girder "Datasets" copy (``lnassist collect`` and the LNRetrain Slicer CLI both call :func:`collect`).

What is collected: every slide under a Girder folder (recursive) whose current lnassist LN document a
pathologist reviewed as ``accepted`` or ``corrected`` (``rejected`` never; unreviewed AI documents
only when asked, and the snapshot says so). Labels come from the version of the document the
pathologist reviewed (from the annotation history when it was edited since), so an edit nobody
reviewed never becomes truth. Each LN outline in the positive/negative groups is one manifest row.

Pixels: each LN's bounding box (plus a margin) is fetched through large_image's tile API
(``/item/{id}/tiles/region``) at the classifier's resolution, one 512 px tile per request, and
streamed into a tiled JPEG TIFF (:func:`lnassist.synth.tiff.write_pyramid`), so memory stays at two
rows of tiles whatever the LN's size. A region is written as ``NAME.part`` and renamed when complete;
a re-run reuses complete regions and fetches only the missing ones, and never reads a ``.part``.

The dataset directory (flat, so that the Girder item holding it downloads back to the same layout):

* ``manifest.jsonl`` — :mod:`lnassist.manifest` rows, split ``collected``: ``slide`` = the LN's region
  file, ``slide_id`` = ``<item id>:<element id>`` (one file per slide id, as the manifest requires),
  ``contour`` in region pixels, ``label`` = the reviewed label, ``mpp`` = the region's µm/px, and
  ``source_item`` (split by this: it is the slide), ``source_mpp``, ``source_contour_base_px`` (the
  outline in the slide's base pixels), ``review_state`` and the provenance fields the manifest names
  (``annotation_id``, ``annotation_version``, ``reviewer``, ``reviewed_at``, ``ai_model``,
  ``ai_label``, ``ai_score``; the AI fields null for LNs a person drew);
* ``snapshot.json`` — what freezes the data: every annotation id and ``_version``, every region's
  sha256, the options, the counts, the slides left out and why, and the noise transition matrix
  estimated from the AI-versus-reviewed label pairs (for forward-corrected cross-entropy);
* ``<item id>-<element id>-<key>.tiff`` — the regions.

Annotation history can be pruned by an admin, so training reads snapshots, never live annotations:
:func:`upload` copies the directory into an item of a "Datasets" folder, and :func:`download` brings
it back with every checksum verified.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lnassist import dsa
from lnassist.errors import LnassistError
from lnassist.fileio import write_text_atomic
from lnassist.manifest import MANIFEST_NAME, read_manifest, write_manifest
from lnassist.registry import sha256_of
from lnassist.slide import CLASSIFIER_MPP

SNAPSHOT_NAME = "snapshot.json"
SNAPSHOT_FORMAT = "lnassist-dataset-snapshot/1"
SPLIT = "collected"
TRAINED_STATES = (dsa.REVIEW_ACCEPTED, dsa.REVIEW_CORRECTED)
DATASETS_FOLDER = "Datasets"  # the Girder folder of snapshots, inside the models folder
DATASET_META = "lnassist_dataset"  # the dataset item's metadata: the snapshot's summary
REGION_TILE_PX = 512
MARGIN_UM = 20.0  # around each LN's bounding box, so the outline's edge is never at the image edge
API_KEY_ENV = "GIRDER_API_KEY"
TOKEN_ENV = "GIRDER_TOKEN"


class CollectError(LnassistError):
    """Collecting failed: bad credentials, unknown folder, unreadable slide, corrupt snapshot."""


# ---------------------------------------------------------------------------------------- Girder


def connect(api_url: str, *, token: str | None = None, api_key: str | None = None) -> Any:
    """A girder-client session; the credentials come from the caller (the environment for the
    command line, the job's token for a Slicer CLI), never from argv, and are never printed."""
    import girder_client

    if not api_url:
        raise CollectError("no Girder API URL")
    token = token or os.environ.get(TOKEN_ENV)
    api_key = api_key or os.environ.get(API_KEY_ENV)
    if not token and not api_key:
        raise CollectError(f"no Girder credentials: set {API_KEY_ENV} (an API key) or {TOKEN_ENV}")
    client = girder_client.GirderClient(apiUrl=api_url)
    try:
        if api_key:
            client.authenticate(apiKey=api_key)
        else:
            # A job's token is scoped to data access (no user/me): its first request tells.
            client.setToken(token)
            client.get("system/version")
    except girder_client.HttpError as exc:
        raise CollectError(f"Girder at {api_url} refused the credentials (HTTP {exc.status})") from None
    except Exception as exc:  # requests' connection errors
        raise CollectError(f"cannot reach the Girder API at {api_url} ({type(exc).__name__})") from None
    return client


def _get(client: Any, path: str, what: str, **parameters: Any) -> Any:
    import girder_client

    try:
        return client.get(path, parameters=parameters or None)
    except girder_client.HttpError as exc:
        if exc.status == 401:
            raise CollectError(f"Girder refused the credentials (HTTP 401, {what})") from None
        message = _girder_message(exc)
        raise CollectError(
            f"{what}: Girder answered HTTP {exc.status}{': ' + message if message else ''}"
        ) from None


def _girder_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.responseText).get("message", ""))
    except (ValueError, AttributeError, TypeError):
        return ""


# ---------------------------------------------------------------------------------------- regions


@dataclass(frozen=True)
class Region:
    """An LN's box at the region's resolution: base-level origin and scale of the region file."""

    left_base_px: float
    top_base_px: float
    width_px: int  # region pixels
    height_px: int
    base_px_per_px: float  # base-level pixels per region pixel (>= 1: large_image never upsamples)


def region_for(
    contour_base_px: np.ndarray, base_mpp: float, target_mpp: float, size_base_px: tuple[int, int]
) -> Region:
    """The region (classifier resolution, or the slide's own when coarser) around a contour."""
    k = max(target_mpp / base_mpp, 1.0)
    margin = MARGIN_UM / base_mpp
    x0 = max(float(contour_base_px[:, 0].min()) - margin, 0.0)
    y0 = max(float(contour_base_px[:, 1].min()) - margin, 0.0)
    x1 = min(float(contour_base_px[:, 0].max()) + margin, float(size_base_px[0]))
    y1 = min(float(contour_base_px[:, 1].max()) + margin, float(size_base_px[1]))
    if x1 - x0 < 2 * k or y1 - y0 < 2 * k:
        raise CollectError(
            f"the LN outline lies outside the slide or is too small ({x0:.0f},{y0:.0f}..{x1:.0f},{y1:.0f})"
        )
    return Region(x0, y0, max(int(math.floor((x1 - x0) / k)), 2), max(int(math.floor((y1 - y0) / k)), 2), k)


def _fetch_tile(
    client: Any, lock: threading.Lock, item_id: str, region: Region, x0: int, y0: int, w: int, h: int
) -> np.ndarray:
    """Region pixels [x0, x0+w) x [y0, y0+h) of ``region`` through large_image's region endpoint."""
    from PIL import Image

    k = region.base_px_per_px
    parameters = {
        "left": region.left_base_px + x0 * k,
        "top": region.top_base_px + y0 * k,
        "right": region.left_base_px + (x0 + w) * k,
        "bottom": region.top_base_px + (y0 + h) * k,
        "units": "base_pixels",
        "width": w,
        "height": h,
        "encoding": "PNG",
        "resample": "true",
    }
    import girder_client

    try:
        with lock:  # one HTTP session; the JPEG encoding of the tiles still runs in parallel
            response = client.get(f"item/{item_id}/tiles/region", parameters=parameters, jsonResp=False)
            data = response.content
    except girder_client.HttpError as exc:
        raise CollectError(
            f"item {item_id}: the tile API refused a region (HTTP {exc.status}: {_girder_message(exc)})"
        ) from None
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    # The endpoint keeps the aspect ratio of the float box, so a side may come back a pixel short.
    rgb = rgb[:h, :w]
    if rgb.shape[:2] != (h, w):
        rgb = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
    return np.ascontiguousarray(rgb)


def fetch_region(client: Any, item_id: str, region: Region, base_mpp: float, path: Path) -> None:
    """Stream ``region`` of the slide into a tiled TIFF at ``path`` (written as ``path.part``, renamed
    when complete)."""
    from lnassist.synth.tiff import write_pyramid

    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    lock = threading.Lock()
    mpp = base_mpp * region.base_px_per_px
    write_pyramid(
        part,
        region.width_px,
        region.height_px,
        lambda x0, y0, w, h: _fetch_tile(client, lock, item_id, region, x0, y0, w, h),
        mpp=mpp,
        magnification=10.0 / mpp,
        tile_px=REGION_TILE_PX,
        quality=90,
        workers=2,
    )
    os.replace(part, path)


# ---------------------------------------------------------------------------------------- collect


@dataclass
class CollectStats:
    regions_fetched: int = 0
    regions_reused: int = 0
    bytes_fetched: int = 0
    seconds: float = 0.0
    skipped: list[dict[str, str]] = field(default_factory=list)


def _contour(element: Mapping[str, Any]) -> np.ndarray | None:
    if element.get("type") != "polyline" or len(element.get("points") or []) < 3:
        return None
    return np.asarray([[float(p[0]), float(p[1])] for p in element["points"]], np.float64)


def _classifier_of(attributes: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for model in attributes.get(dsa.ATTR_MODELS) or []:
        if isinstance(model, Mapping) and model.get("kind") == "classifier":
            return model
    return None


def _model_name(model: Mapping[str, Any] | None) -> str | None:
    return f"{model.get('id')}@{model.get('version')}" if model else None


def _reviewed_document(
    client: Any, summary: Mapping[str, Any], include_unreviewed: bool
) -> tuple[dict, int] | None:
    """The LN document as the pathologist reviewed it (its elements and ``_version``)."""
    annotation_id = summary["annotation"]["id"]
    review = summary["review"]
    if review["state"] == dsa.REVIEW_UNREVIEWED:
        if not include_unreviewed:
            return None
        version = summary["annotation"]["version"]
    else:
        version = int(review["annotation_version"])
    if summary["annotation"]["version"] == version:
        return _get(client, f"annotation/{annotation_id}", f"annotation {annotation_id}"), version
    path = f"annotation/{annotation_id}/history/{version}"
    return _get(client, path, f"annotation {annotation_id} version {version}"), version


def _slides(client: Any, folder_id: str) -> list[dict[str, Any]]:
    _get(client, f"folder/{folder_id}", f"folder {folder_id}")
    summary = _get(
        client, f"lnassist/folder/{folder_id}/summary", f"folder {folder_id}", recursive="true", limit=0
    )
    return list(summary["rows"])


def _region_name(item_id: str, element_id: str, contour: np.ndarray, target_mpp: float) -> str:
    key = hashlib.sha256(json.dumps([contour.round(3).tolist(), target_mpp]).encode()).hexdigest()[:10]
    return f"{item_id}-{element_id}-{key}.tiff"


def collect(
    client: Any,
    folder_id: str,
    out_dir: str | Path,
    *,
    include_unreviewed: bool = False,
    target_mpp: float = CLASSIFIER_MPP,
    api_url: str = "",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Collect the folder's reviewed LNs into ``out_dir`` (see the module docstring); returns the snapshot."""
    started = time.monotonic()
    say = progress or (lambda message: None)
    slides = _slides(client, folder_id)  # before anything is written: an unknown folder writes nothing
    out = Path(out_dir)
    previous = out / SNAPSHOT_NAME
    if previous.is_file():
        old = load_snapshot(out)
        if old["source"]["folder_id"] != folder_id:
            raise CollectError(
                f"{out} holds a dataset of folder {old['source']['folder_id']}, not {folder_id}: "
                "collect into another folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    stats = CollectStats()
    rows: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    for slide in slides:
        state = slide["review_state"]
        if not slide["analysed"]:
            continue
        if state == dsa.REVIEW_REJECTED or (state == dsa.REVIEW_UNREVIEWED and not include_unreviewed):
            stats.skipped.append({"item_id": slide["item_id"], "name": slide["name"], "reason": state})
            continue
        summary = _get(client, f"lnassist/item/{slide['item_id']}/summary", f"slide {slide['name']}")
        if not summary.get("mm_per_px"):
            stats.skipped.append(
                {"item_id": slide["item_id"], "name": slide["name"], "reason": "no resolution"}
            )
            continue
        reviewed = _reviewed_document(client, summary, include_unreviewed)
        if reviewed is None:
            continue
        document, version = reviewed
        base_mpp = float(summary["mm_per_px"][0]) * 1000.0
        tiles = _get(client, f"item/{slide['item_id']}/tiles", f"slide {slide['name']}")
        size_base_px = (int(tiles["sizeX"]), int(tiles["sizeY"]))
        attributes = document["annotation"].get("attributes") or {}
        ai_model = _classifier_of(attributes)
        review = summary["review"]
        entry = {
            "item_id": slide["item_id"],
            "name": slide["name"],
            "annotation_id": summary["annotation"]["id"],
            "annotation_version": version,
            "review_state": review["state"],
            "reviewer": (review.get("reviewer") or {}).get("login"),
            "reviewed_at": review.get("reviewed_at"),
            "ai_model": dict(ai_model) if ai_model else None,
            "base_mpp": base_mpp,
            "lns": [],
        }
        for element in document["annotation"].get("elements", []):
            group = element.get("group")
            if group not in (dsa.GROUP_POSITIVE, dsa.GROUP_NEGATIVE):
                continue
            contour = _contour(element)
            if contour is None:
                continue
            element_id = str(element.get("id"))
            region = region_for(contour, base_mpp, target_mpp, size_base_px)
            name = _region_name(slide["item_id"], element_id, contour, target_mpp)
            path = out / name
            if path.is_file():
                stats.regions_reused += 1
            else:
                say(f"{slide['name']}: fetching LN {element_id} ({region.width_px} x {region.height_px} px)")
                fetch_region(client, slide["item_id"], region, base_mpp, path)
                stats.regions_fetched += 1
                stats.bytes_fetched += path.stat().st_size
            user = element.get("user") if isinstance(element.get("user"), Mapping) else {}
            ai = user if dsa.ELEMENT_SCORE in user and dsa.ELEMENT_LN_ID in user else None
            label = int(group == dsa.GROUP_POSITIVE)
            ln = {
                "element_id": element_id,
                "label": label,
                "ai_label": int(bool(ai[dsa.ELEMENT_POSITIVE])) if ai else None,
                "ai_score": float(ai[dsa.ELEMENT_SCORE]) if ai else None,
                "region": name,
                "sha256": sha256_of(path),
                "bytes": path.stat().st_size,
            }
            entry["lns"].append(ln)
            origin = np.array([region.left_base_px, region.top_base_px])
            rows.append(
                {
                    "split": SPLIT,
                    "slide": name,
                    "slide_id": f"{slide['item_id']}:{element_id}",
                    "ln_id": element_id,
                    "contour": ((contour - origin) / region.base_px_per_px).round(2).tolist(),
                    "label": label,
                    "mpp": base_mpp * region.base_px_per_px,
                    "source_item": slide["item_id"],
                    "source_name": slide["name"],
                    "source_mpp": base_mpp,
                    "source_contour_base_px": contour.round(2).tolist(),
                    "review_state": review["state"],
                    "annotation_id": entry["annotation_id"],
                    "annotation_version": version,
                    "reviewer": entry["reviewer"],
                    "reviewed_at": entry["reviewed_at"],
                    "ai_model": _model_name(ai_model),
                    "ai_label": ln["ai_label"],
                    "ai_score": ln["ai_score"],
                }
            )
        entries.append(entry)
    if not rows:
        raise CollectError(
            f"folder {folder_id}: no reviewed LN to collect ({len(slides)} slide(s); accepted or corrected "
            "reviews are collected" + (", and unreviewed AI results" if include_unreviewed else "") + ")"
        )
    stats.seconds = time.monotonic() - started
    snapshot = {
        "format": SNAPSHOT_FORMAT,
        "id": _snapshot_id(entries),
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"api_url": api_url, "folder_id": folder_id, "include_unreviewed": include_unreviewed},
        "target_mpp": target_mpp,
        "counts": {
            "slides": len(entries),
            "lns": len(rows),
            "positive": sum(r["label"] for r in rows),
            "negative": sum(1 - r["label"] for r in rows),
            "unreviewed_slides": sum(e["review_state"] == dsa.REVIEW_UNREVIEWED for e in entries),
        },
        "transition": transition_of(rows),
        "slides": entries,
        "skipped": stats.skipped,
        "fetch": {
            "regions_fetched": stats.regions_fetched,
            "regions_reused": stats.regions_reused,
            "bytes_fetched": stats.bytes_fetched,
            "seconds": round(stats.seconds, 2),
        },
    }
    write_manifest(out / MANIFEST_NAME, rows, overwrite=True)
    write_text_atomic(out / SNAPSHOT_NAME, json.dumps(snapshot, indent=1) + "\n", overwrite=True)
    return snapshot


def _snapshot_id(entries: list[dict[str, Any]]) -> str:
    """A content id: the same annotations, versions, labels and pixels give the same id."""
    key = [
        [
            e["annotation_id"],
            e["annotation_version"],
            [[ln["element_id"], ln["label"], ln["sha256"]] for ln in e["lns"]],
        ]
        for e in sorted(entries, key=lambda e: e["annotation_id"])
    ]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:16]


def transition_of(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The noise transition matrix P(AI label j | reviewed label i) from the LNs the AI outlined (the
    paper's forward correction takes the AI as the noisy annotator); null with the reason when a
    reviewed class has no AI-labelled LN."""
    pairs = [(int(r["label"]), int(r["ai_label"])) for r in rows if r.get("ai_label") is not None]
    counts = [[0, 0], [0, 0]]
    for true, observed in pairs:
        counts[true][observed] += 1
    missing = [i for i in (0, 1) if sum(counts[i]) == 0]
    matrix = None
    if not missing:
        matrix = [[c / sum(row) for c in row] for row in counts]
    return {
        "matrix": matrix,
        "counts": counts,
        "n_pairs": len(pairs),
        "note": "rows: reviewed label (0, 1); columns: the AI's label"
        + (f"; no AI-labelled LN of reviewed class(es) {missing}" if missing else ""),
    }


def load_snapshot(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / SNAPSHOT_NAME
    try:
        snapshot = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CollectError(f"{path}: not a readable dataset snapshot ({exc})") from None
    if not isinstance(snapshot, dict) or snapshot.get("format") != SNAPSHOT_FORMAT:
        raise CollectError(f"{path}: not a dataset snapshot (format {SNAPSHOT_FORMAT})")
    return snapshot


def verify(folder: str | Path) -> dict[str, Any]:
    """The snapshot, after checking every region against its sha256 and the manifest against it."""
    folder = Path(folder)
    snapshot = load_snapshot(folder)
    expected = {ln["region"]: ln["sha256"] for e in snapshot["slides"] for ln in e["lns"]}
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file():
            raise CollectError(f"{folder}: region {name} of snapshot {snapshot['id']} is missing")
        if sha256_of(path) != digest:
            raise CollectError(f"{folder}: region {name} does not match snapshot {snapshot['id']} (sha256)")
    rows = read_manifest(folder / MANIFEST_NAME)
    if sorted(r["slide"] for r in rows) != sorted(expected):
        raise CollectError(
            f"{folder}: {MANIFEST_NAME} does not list the regions of snapshot {snapshot['id']}"
        )
    return snapshot


# ------------------------------------------------------------------------------- the Girder copy


def datasets_folder(client: Any, parent_folder_id: str) -> dict[str, Any]:
    return client.createFolder(parent_folder_id, DATASETS_FOLDER, reuseExisting=True)


def upload(client: Any, folder: str | Path, datasets_folder_id: str) -> dict[str, Any]:
    """Copy a verified dataset directory into an item ``lnassist-dataset-<id>`` of the Datasets folder
    (the same snapshot id reuses its complete item); returns the item, with the snapshot's summary in
    its ``lnassist_dataset`` metadata."""
    folder = Path(folder)
    snapshot = verify(folder)
    name = f"lnassist-dataset-{snapshot['id']}"
    item = client.createItem(datasets_folder_id, name, reuseExisting=True)
    files = [MANIFEST_NAME, SNAPSHOT_NAME] + sorted(
        {ln["region"] for e in snapshot["slides"] for ln in e["lns"]}
    )
    for file_name in files:  # girder-client skips a file already there and replaces a cut-short one
        client.uploadFileToItem(item["_id"], str(folder / file_name))
    summary = {key: snapshot[key] for key in ("id", "created_at", "source", "counts", "transition")}
    return client.addMetadataToItem(item["_id"], {DATASET_META: summary})


def download(client: Any, item_id: str, folder: str | Path) -> dict[str, Any]:
    """A dataset item of the Datasets folder into ``folder``, verified against its snapshot."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = list(client.listFile(item_id))
    if SNAPSHOT_NAME not in {f["name"] for f in files}:
        raise CollectError(f"item {item_id} holds no {SNAPSHOT_NAME}: not an lnassist dataset")
    for f in files:
        target = folder / f["name"]
        if target.is_file() and target.stat().st_size == f["size"]:
            continue
        client.downloadFile(f["_id"], str(target))
    return verify(folder)
