"""Starting "Run LN analysis" on a slide from the server, as a click in HistomicsUI would.

The registered LNAnalysis Slicer CLI of the configured image runs through slicer_cli_web's own
handler as the requesting user, with a job-scoped token slicer_cli_web creates: outputs go into the
slide's folder and HistomicsUI ingests the annotations and the item metadata exactly as after a
click in the Analyses menu. Nothing heavy runs here: the analysis is a job in the Docker image.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import cherrypy
from girder.exceptions import RestException

from lnassist import constants, dsa

# Output parameter -> file extension; named after the slide and the run.
OUTPUTS = {
    dsa.OUTPUT_ANNOTATION: "anot",
    dsa.OUTPUT_HEATMAP_ANNOTATION: "anot",
    dsa.OUTPUT_HEATMAP_IMAGE: "tiff",
    dsa.OUTPUT_ITEM_METADATA: "json",
}


def image_cli(image: str, user: dict[str, Any] | None, name: str = dsa.CLI_ANALYSIS) -> Any:
    """The CLI ``name`` (LNAnalysis unless said) of ``image`` that ``user`` can see (any, without a
    user: the dispatcher's batches were allowed when they were made), or a 400 saying what an admin
    must do."""
    from slicer_cli_web.models import CLIItem

    if not image:
        raise RestException(
            "no lnassist image is configured: an admin registers the image (PUT /slicer_cli_web/"
            "docker_image) and sets lnassist.analysis_image",
            400,
        )
    for cli in CLIItem.findAllItems(user):
        if cli.image == image and cli.name == name:
            return cli
    raise RestException(
        f"no {name} CLI of image {image!r} is registered (PUT /slicer_cli_web/docker_image)", 400
    )


def check_slide(item: dict[str, Any]) -> str:
    """The id of the item's large-image file; a 400 when the item is not (yet) a large image."""
    large_image = item.get("largeImage") or {}
    if not large_image.get("fileId") or large_image.get("expected"):
        raise RestException(f"item {item['_id']} ({item.get('name')!r}) is not a large image", 400)
    return str(large_image["fileId"])


def run_stamp() -> str:
    """Unique per run, so each document can be traced to its job (queries.job_id_of)."""
    return f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def output_name(item: dict[str, Any], stamp: str, output: str) -> str:
    return f"{item['name'].rsplit('.', 1)[0]}-lnassist-{stamp}-{output}.{OUTPUTS[output]}"


def is_output_name(name: str) -> bool:
    """Whether a file or item name is one this module gives a job's output (before the job's upload
    is marked as an output: auto-run must not analyse a heatmap image as a new slide)."""
    return any(
        f"-{output}.{extension}" in name and "-lnassist-" in name for output, extension in OUTPUTS.items()
    )


def job_parameters(
    item: dict[str, Any], mode: str, threshold: float | None, stamp: str, classifier: str = ""
) -> dict[str, Any]:
    """The REST form slicer_cli_web's handler takes: the slide, the run's options, the classifier
    (``girder:<item id>`` of the promoted version; empty: the image's default), every output named
    ``<slide>-lnassist-<stamp>-<output>.<ext>`` in the slide's folder; the Girder parameters empty (the
    handler fills in the API URL and the job's token)."""
    if mode not in constants.MODES:
        raise RestException(f"mode must be one of {', '.join(constants.MODES)}, got {mode!r}", 400)
    if threshold is not None and not 0 <= threshold <= 1:
        raise RestException(f"threshold must be in [0, 1], got {threshold}", 400)
    params: dict[str, Any] = {
        "inputImageFile": check_slide(item),
        "mode": mode,
        "threshold": -1 if threshold is None else threshold,
        "analysisRegion": json.dumps(list(constants.WHOLE_SLIDE)),
        "mpp": -1,
        "detector": "",
        "classifier": classifier,
        "device": "auto",
        "threads": 0,
        "girderApiUrl": "",
        "girderToken": "",
    }
    for name in OUTPUTS:
        params[name] = output_name(item, stamp, name)
        params[f"{name}_folder"] = str(item["folderId"])
    return params


def launch(cli: Any, params: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """Schedule the CLI job as ``user`` (slicer_cli_web's handler, as its REST route does)."""
    from girder.models.token import Token
    from slicer_cli_web.rest_slicer_cli import genHandlerToRunDockerCLI

    handler = genHandlerToRunDockerCLI(cli)
    token = Token().createToken(user=user)
    return handler.subHandler(cli, params, user, token).job


def launch_in_background(cli: Any, params: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """:func:`launch` from a thread outside any request (the batch dispatcher). girder_worker tells a
    Girder context by ``cherrypy.request.app`` (slicer_cli_web's own batch thread fakes it the same
    way), and slicer_cli_web leaves the job's token in the thread's request headers: both are put back,
    so no token outlives its launch in this long-lived thread."""
    request = cherrypy.request
    app, token = request.app, request.headers.pop("Girder-Token", None)
    request.app = "fake_context"
    try:
        return launch(cli, params, user)
    finally:
        request.app = app
        request.headers.pop("Girder-Token", None)
        if token is not None:
            request.headers["Girder-Token"] = token
