"""Marking the files an lnassist Slicer CLI job uploads as that job's outputs, not slides.

slicer_cli_web uploads each output file into the folder it was given (for a run started through the
plugin: the slide's folder) as an item of its own; the heatmap image is a tiled TIFF, so large_image
makes it a large image that would otherwise count as a slide of the study. On ``data.process`` for
such an upload (its ``reference`` names the CLI, the output parameter and the slide) the item gets
``lnassist_output_of`` (the slide's item id) and ``lnassist_output`` (the parameter) in its metadata;
study summaries leave marked items out.
"""

from __future__ import annotations

import json
from typing import Any

from girder import events

from lnassist import dsa

OUTPUT_OF = dsa.METADATA_PREFIX + "output_of"
OUTPUT = dsa.METADATA_PREFIX + "output"


def output_reference(info: dict[str, Any]) -> tuple[str, str] | None:
    """(slide item id, output parameter) when a ``data.process`` upload is an lnassist CLI's output."""
    try:
        reference = json.loads(info.get("reference") or "")
    except (TypeError, ValueError):
        return None
    if not isinstance(reference, dict) or not isinstance(reference.get("slicer_cli_web"), dict):
        return None
    cli, identifier = reference["slicer_cli_web"].get("name"), reference.get("identifier")
    if cli not in dsa.CLI_NAMES or not isinstance(identifier, str) or not reference.get("itemId"):
        return None
    return str(reference["itemId"]), identifier


def _mark(event: events.Event) -> None:
    from girder.models.item import Item

    found = output_reference(event.info)
    file = event.info.get("file") or {}
    if found is None or not file.get("itemId"):
        return
    item = Item().load(file["itemId"], force=True)
    if item is not None and str(item["_id"]) != found[0]:
        Item().setMetadata(item, {OUTPUT_OF: found[0], OUTPUT: found[1]})


def bind() -> None:
    events.bind("data.process", "lnassist.job_outputs", _mark)
