"""What the Slicer CLIs in ``cli/`` share: argument parsing, progress reporting, reading LN
outlines from an annotation, and mapping their output parameters onto :mod:`lnassist.outputs`.

The Digital Slide Archive runs each CLI in a container as ``python cli/Name/Name.py <args>`` with
arguments generated from ``cli/Name/Name.xml`` (ctk_cli's ``CLIArgumentParser`` with
slicer_cli_web's adjustments). Conventions of those XML files that this module relies on: the
slide is ``inputImageFile``; ``mode``, ``threshold``, ``mpp``, ``detector``, ``classifier``,
``analysisRegion``, ``device`` and ``threads`` mean the same in every CLI, with negative numbers
and empty strings standing for "the default"; outputs are optional ``--flag`` files and at least
one must be given; ``girderApiUrl`` / ``girderToken`` are filled in by the server and never
printed or recorded.

Progress goes to stdout in the Slicer execution-model protocol (``<filter-start>``,
``<filter-progress>``, ``<filter-end>``), which slicer_cli_web turns into the job's progress bar;
every other line on stdout/stderr lands in the job log. A user error (bad slide, region,
annotation file, model) ends the run with a one-line message on stderr, exit code 2 and no output
files: :mod:`lnassist.outputs` writes all of a run's outputs or none.

Heavy modules (torch, large_image, the pipeline) are imported only when a CLI runs, so
``--xml``, ``--help`` and the image's ``--list_cli`` self-tests answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from xml.sax.saxutils import escape

import numpy as np

from lnassist import dsa, outputs
from lnassist.errors import LnassistError

if TYPE_CHECKING:
    from lnassist.pipeline import AnalysisConfig
    from lnassist.results import Analysis

# Filled in by slicer_cli_web for the job; secret (the token) or deployment-specific: never recorded.
GIRDER_PARAMETERS = ("girderApiUrl", "girderToken")

# The analysis CLIs' output parameters and the output each one holds. The heatmap document's image
# element names the image's parameter; slicer_cli_web's ingest swaps the name for the id of the item
# the image was uploaded as.
ANALYSIS_OUTPUTS = {
    dsa.OUTPUT_ANNOTATION: outputs.ANNOTATION,
    dsa.OUTPUT_HEATMAP_ANNOTATION: outputs.HEATMAP,
    dsa.OUTPUT_HEATMAP_IMAGE: outputs.HEATMAP_IMAGE,
    dsa.OUTPUT_ITEM_METADATA: outputs.METADATA,
}


class CliInputError(LnassistError):
    """A CLI argument or input file that cannot be used (no outputs, bad annotation file, bad contour)."""


# ------------------------------------------------------------------------------------ running a CLI


def run_cli(script: str | Path, body: Callable[[argparse.Namespace, str], None]) -> int:
    """Parse ``sys.argv`` with the script's XML (``Name.py`` -> ``Name.xml``) and call
    ``body(args, cli_name)``; returns the exit code (2 and one line on stderr for a user error)."""
    import slicer_cli_web.ctk_cli_adjustment  # noqa: F401  (teaches ctk_cli slicer_cli_web's XML extensions)
    from ctk_cli import CLIArgumentParser

    script = Path(script)
    cli_name = script.stem
    args = CLIArgumentParser(str(script.with_suffix(".xml"))).parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.threads > 0:
            import torch

            torch.set_num_threads(args.threads)
        print(f"{cli_name} parameters: {json.dumps(cli_parameters(args), sort_keys=True)}", flush=True)
        body(args, cli_name)
    except LnassistError as exc:
        print(f"{cli_name}: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
        return 2
    return 0


def cli_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The run's arguments for the record (annotation attributes, job log), without the Girder ones."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in GIRDER_PARAMETERS}


def requested_outputs(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    """{parameter name: path} of the output parameters that were given; at least one must be."""
    given = {name: getattr(args, name) for name in names if getattr(args, name)}
    if not given:
        flags = ", ".join(f"--{name}" for name in names)
        raise CliInputError(f"nothing to write: give at least one output ({flags})")
    return given


def analysis_outputs(args: argparse.Namespace) -> dict[str, str]:
    """The requested outputs of an analysis CLI as {output kind: path}, checked before any work."""
    given = requested_outputs(args, list(ANALYSIS_OUTPUTS))
    kinds = {ANALYSIS_OUTPUTS[name]: path for name, path in given.items()}
    try:
        outputs.check_kinds(kinds)
    except outputs.OutputError as exc:
        # The one rule a CLI request can break: say it in the CLI's own flags.
        raise CliInputError(
            f"--{dsa.OUTPUT_HEATMAP_IMAGE} needs --{dsa.OUTPUT_HEATMAP_ANNOTATION}: the heatmap "
            "annotation is what places the image on the slide"
        ) from exc
    return kinds


def analysis_config(args: argparse.Namespace) -> AnalysisConfig:
    """The pipeline configuration from the shared parameters; absent ones keep the library's defaults."""
    from lnassist.constants import WHOLE_SLIDE
    from lnassist.devices import resolve_device
    from lnassist.pipeline import AnalysisConfig

    threshold = getattr(args, "threshold", -1.0)
    mpp = getattr(args, "mpp", -1.0)
    return AnalysisConfig(
        mode=getattr(args, "mode", "general"),
        threshold=None if threshold < 0 else threshold,
        detector=getattr(args, "detector", "") or None,
        classifier=local_model(args, getattr(args, "classifier", "") or None),
        base_mpp=None if mpp < 0 else mpp,
        region_base_px=tuple(getattr(args, "analysisRegion", WHOLE_SLIDE)),
        device=resolve_device(args.device),
    )


def job_client(args: argparse.Namespace) -> Any:
    """A girder-client session with the job's token (filled in by the server)."""
    from lnassist.collect import connect

    return connect(args.girderApiUrl, token=args.girderToken)


def local_model(args: argparse.Namespace, model: str | None, kind: str = "classifier") -> str | None:
    """A model parameter as :func:`lnassist.registry.resolve` takes it: a Girder version
    (``girder:<item id>``, the promoted one the server passes) is fetched with the job's token, its
    sha256 checked, and cached; anything else (a registry id, a path, None) is returned as it is."""
    from lnassist import versions

    item_id = versions.parse_ref(model)
    if item_id is None:
        return model
    return str(versions.fetch(job_client(args), item_id, kind))


# ------------------------------------------------------------------------------------------ progress


class SlicerProgress:
    """A :data:`lnassist.pipeline.Progress` callback that writes the Slicer progress protocol.

    ``stages`` are (name, comment, weight) in running order; a stage's fractions map onto its share
    of the overall progress. The first call of a stage opens it (``<filter-start>`` with the
    comment, which slicer_cli_web shows as the job's status), and so does the previous stage
    reaching fraction 1; the next stage or :meth:`finish` closes it (``<filter-end>`` with its
    time). Every call writes the overall fraction (``<filter-progress>``) and its message as a
    plain log line.
    """

    def __init__(self, stages: Sequence[tuple[str, str, float]], stream: TextIO | None = None) -> None:
        total = sum(weight for _, _, weight in stages)
        self._stages: dict[str, tuple[str, float, float]] = {}
        start = 0.0
        for name, comment, weight in stages:
            self._stages[name] = (comment, start / total, weight / total)
            start += weight
        self._stream = stream if stream is not None else sys.stdout
        self._current: str | None = None
        self._started_s = 0.0

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        _, start, share = self._stages[stage]
        if stage != self._current:
            self._open(stage)
        fraction = min(max(fraction, 0.0), 1.0)
        self._write(f"<filter-progress>{start + share * fraction:.4f}</filter-progress>")
        if message:
            self._write(f"{stage}: {message}")
        names = list(self._stages)
        if fraction == 1.0 and stage != names[-1]:
            # The next stage starts now, not at its first report (classify_lns reports after each LN).
            self._open(names[names.index(stage) + 1])

    def finish(self) -> None:
        """Close the open stage; the run is complete."""
        self._write("<filter-progress>1.0000</filter-progress>")
        self._close()

    def _open(self, stage: str) -> None:
        self._close()
        comment = self._stages[stage][0]
        self._write(
            f"<filter-start><filter-name>{escape(stage)}</filter-name>"
            f"<filter-comment>{escape(comment)}</filter-comment></filter-start>"
        )
        self._current, self._started_s = stage, time.perf_counter()

    def _close(self) -> None:
        if self._current is not None:
            seconds = time.perf_counter() - self._started_s
            self._write(
                f"<filter-end><filter-name>{escape(self._current)}</filter-name>"
                f"<filter-time>{seconds:.3f}</filter-time></filter-end>"
            )
            self._current = None

    def _write(self, line: str) -> None:
        print(line, file=self._stream, flush=True)


# --------------------------------------------------------------------------- given contours only


def read_annotation_contours(path: str | Path) -> list[np.ndarray]:
    """The closed polylines of an annotation file as (N, 2) float64 x, y contours in base pixels.

    Accepted: one annotation document (``{"name", "elements": [...]}``), Girder's annotation record
    around one (``{"_id", "annotation": {...}}``, as GET /annotation/{id} returns it), or a list of
    either. Open polylines and other element types are ignored; holes are not used.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CliInputError(f"{path}: no such annotation file") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CliInputError(f"{path}: not a JSON annotation file ({type(exc).__name__}: {exc})") from exc
    return annotation_contours(data, str(path))


def fetch_annotation_contours(api_url: str, token: str, annotation_id: str) -> list[np.ndarray]:
    """The closed polylines of annotation ``annotation_id`` on the Girder server at ``api_url`` (with
    the job's token, as slicer_cli_web fills in ``girderApiUrl`` / ``girderToken``), as in
    :func:`read_annotation_contours`. The token is never part of a message."""
    import girder_client
    import requests

    where = f"annotation {annotation_id}"
    if not api_url or not token:
        raise CliInputError(
            f"{where}: reading an annotation from Girder needs the server's API URL and a token "
            "(--api-url / --girder-token; filled in by the server when the DSA runs the CLI)"
        )
    if not re.fullmatch(r"[0-9a-f]{24}", annotation_id):
        raise CliInputError(f"{where}: not a Girder id (24 hexadecimal digits)")
    client = girder_client.GirderClient(apiUrl=api_url)
    client.setToken(token)
    try:
        record = client.get(f"annotation/{annotation_id}")
    except girder_client.HttpError as exc:
        raise CliInputError(
            f"{where}: the server refused it (HTTP {exc.status}): {exc.responseText[:300]}"
        ) from exc
    except requests.RequestException as exc:
        raise CliInputError(
            f"{where}: cannot reach the Girder API at {api_url} ({type(exc).__name__})"
        ) from exc
    return annotation_contours(record, where)


def annotation_contours(data: Any, where: str) -> list[np.ndarray]:
    """The closed polylines of parsed annotation JSON (see :func:`read_annotation_contours`)."""
    contours = []
    for number, doc in enumerate(data if isinstance(data, list) else [data], start=1):
        if isinstance(doc, dict) and isinstance(doc.get("annotation"), dict):
            doc = doc["annotation"]
        if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
            raise CliInputError(f"{where}: document {number} is not an annotation (no 'elements' list)")
        for index, element in enumerate(doc["elements"]):
            if isinstance(element, dict) and element.get("type") == "polyline" and element.get("closed"):
                contours.append(_polyline_contour(element, f"{where}: document {number} element {index}"))
    if not contours:
        raise CliInputError(f"{where}: no closed polyline (LN contour) in the annotation")
    return contours


def _polyline_contour(element: Mapping[str, Any], where: str) -> np.ndarray:
    from lnassist.slide import polygon_area_base_px2

    points = element.get("points")
    try:
        contour = np.array([point[:2] for point in points], dtype=np.float64)
    except (TypeError, ValueError, IndexError) as exc:
        raise CliInputError(f"{where}: points are not [x, y, z] numbers") from exc
    if contour.ndim != 2 or contour.shape[1] != 2 or len(contour) < 3:
        raise CliInputError(f"{where}: a closed polyline needs at least 3 [x, y, z] points")
    if not np.isfinite(contour).all() or not polygon_area_base_px2(contour) > 0:
        raise CliInputError(f"{where}: the polyline encloses no area")
    return contour


# ---------------------------------------------------------------------------------------- outputs


def write_analysis(
    analysis: Analysis,
    paths: Mapping[str, str],
    *,
    cli_name: str,
    parameters: Mapping[str, Any],
    contours_from: str,
    progress: SlicerProgress,
    slide: Any = None,
) -> None:
    """Write an analysis CLI's requested outputs (``paths``: {output kind: path}, from
    :func:`analysis_outputs`) with :mod:`lnassist.outputs`, reporting the write stage and closing the
    progress report. slicer_cli_web hands the CLI fresh paths, so existing files are replaced."""
    progress("write", 0.0, analysis.summary_line())
    outputs.write_analysis(
        analysis,
        paths,
        analysis.provenance(cli_name, parameters),
        contours_from=contours_from,
        image_reference=dsa.OUTPUT_HEATMAP_IMAGE,
        slide=slide,
        overwrite=True,
    )
    progress("write", 1.0, "wrote " + ", ".join(paths.values()))
    progress.finish()
