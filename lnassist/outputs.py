"""Writing an analysis to files, all or none.

The one writer behind ``lnassist analyze``, ``lnassist demo`` and the Slicer CLIs. Each output has
a kind: the LN annotation document, the heatmap annotation document, the full-resolution heatmap
image (RGBA TIFF), the Girder item metadata, the summary JSON and the overview PNG. A caller asks
for some kinds, each with a path; every requested output is built and validated in memory first,
then all of them are written together (:func:`lnassist.fileio.write_files_atomic`), so a failure
at any point leaves none of them and never a partial set.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lnassist.errors import LnassistError
from lnassist.fileio import write_files_atomic
from lnassist.results import Analysis, Provenance

ANNOTATION = "annotation"  # LN outlines with scores and labels (annotation JSON)
HEATMAP = "heatmap"  # the LNs' CAMs as griddata, placing the heatmap image if there is one
HEATMAP_IMAGE = "heatmap_image"  # the CAMs at native resolution (tiled RGBA TIFF)
METADATA = "metadata"  # flat Girder item metadata (JSON object)
SUMMARY = "summary"  # counts, per-LN scores, resolution, timings (JSON)
OVERVIEW = "overview"  # the slide thumbnail with heatmaps and outlines (PNG)
KINDS = (ANNOTATION, HEATMAP, HEATMAP_IMAGE, METADATA, SUMMARY, OVERVIEW)

# What ``lnassist analyze --out DIR`` writes, by file name in DIR.
LOCAL_NAMES = {
    ANNOTATION: "ln-annotation.json",
    HEATMAP: "heatmap-annotation.json",
    SUMMARY: "summary.json",
    OVERVIEW: "overlay.png",
}


class OutputError(LnassistError):
    """A set of outputs that cannot be written together (unknown kind, an output missing its partner)."""


def local_paths(out: str | Path) -> dict[str, Path]:
    """Where ``lnassist analyze`` writes each output (:data:`LOCAL_NAMES`) in folder ``out``."""
    return {kind: Path(out) / name for kind, name in LOCAL_NAMES.items()}


def check_kinds(kinds: Collection[str]) -> None:
    """Refuse, before any work, a request that cannot be written: no output, an unknown kind, or the
    heatmap image without the heatmap document (which is what places the image on the slide)."""
    if not kinds:
        raise OutputError("nothing to write: no output was asked for")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise OutputError(f"unknown output kind(s) {unknown}; known: {', '.join(KINDS)}")
    if HEATMAP_IMAGE in kinds and HEATMAP not in kinds:
        raise OutputError("the heatmap image needs the heatmap annotation: it is what places the image")


def write_analysis(
    analysis: Analysis,
    paths: Mapping[str, str | Path],
    provenance: Provenance,
    *,
    contours_from: str = "detector",
    image_reference: str | None = None,
    slide: Any = None,
    overwrite: bool = False,
) -> None:
    """Write the requested outputs of an analysis ({kind: path}), every document validated, all or
    none; existing files are replaced only with ``overwrite``.

    ``contours_from`` ("detector", or "annotation" for outlines a person gave) goes into the item
    metadata. ``image_reference`` is what the heatmap document's image element names (a Girder item
    id, or in a Slicer CLI the image output's parameter name, which the server swaps for the
    uploaded item's id); without it, or without any CAM, the image is written but not placed.
    ``slide`` (the analysed :class:`lnassist.slide.Slide`) saves reopening it for the overview.
    """
    from lnassist.annotations import heatmap_document, ln_document, summary_metadata, validate_document
    from lnassist.overlay import heatmap_overlay, heatmap_tiff_bytes, overlay_png_bytes

    check_kinds(paths)
    image = heatmap_overlay(analysis.lns, analysis.threshold) if HEATMAP_IMAGE in paths else None
    placed = image_reference if image is not None and image.rgba[..., 3].any() else None
    heat_doc = heatmap_document(
        analysis.lns,
        provenance,
        image_girder_id=placed,
        image_transform=image.transform() if placed else None,
    )
    ln_doc = ln_document(analysis.lns, provenance)
    validate_document(ln_doc)
    validate_document(heat_doc, cli_outputs=[placed] if placed else ())
    metadata = summary_metadata(
        analysis.lns, provenance, analysed_at=datetime.now(UTC), contours_from=contours_from
    )
    build = {
        ANNOTATION: lambda: _json_bytes(ln_doc),
        HEATMAP: lambda: _json_bytes(heat_doc),
        HEATMAP_IMAGE: lambda: heatmap_tiff_bytes(image),
        METADATA: lambda: _json_bytes(metadata),
        SUMMARY: lambda: _json_bytes(analysis_summary(analysis, metadata), indent=1),
        OVERVIEW: lambda: overlay_png_bytes(slide or _reopen(analysis), analysis),
    }
    write_files_atomic({Path(path): build[kind]() for kind, path in paths.items()}, overwrite)


def write_documents(documents: Mapping[str | Path, Mapping[str, Any]], overwrite: bool = False) -> None:
    """Write JSON documents ({path: document}) as the analysis outputs are written: all or none."""
    write_files_atomic({Path(path): _json_bytes(doc) for path, doc in documents.items()}, overwrite)


def analysis_summary(analysis: Analysis, item_metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The summary JSON: where and how the slide was analysed, counts, per-LN results, timings."""
    return {
        "slide": analysis.slide_path,
        "base_mpp": analysis.base_mpp,
        "size_base_px": list(analysis.size_base_px),
        "region_base_px": list(analysis.region_base_px) if analysis.region_base_px else None,
        "counts": analysis.counts,
        "mode": analysis.mode,
        "threshold": analysis.threshold,
        "message": analysis.message,
        "timings_s": analysis.timings_s,
        "lns": [
            {"ln_id": ln.ln_id, "score": ln.score, "positive": ln.positive, "area_um2": ln.area_um2}
            for ln in analysis.lns
        ],
        "item_metadata": dict(item_metadata),
    }


def _json_bytes(document: Any, indent: int | None = None) -> bytes:
    return (json.dumps(document, allow_nan=False, indent=indent) + "\n").encode()


def _reopen(analysis: Analysis) -> Any:
    from lnassist.slide import open_slide

    return open_slide(analysis.slide_path, analysis.base_mpp)
