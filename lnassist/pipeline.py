"""The "Run LN analysis" job as a library call: slide -> LNs -> scores, labels and heatmaps.

Stages: the LN detector reads the whole slide at its resolution (1.25x, 7.36 um/px) and returns LN
contours (restricted to a region of interest if one is given); each LN is then read at the
classifier's resolution (20x, 0.46 um/px) with everything outside its contour white and streamed
once through the ESCNN classifier, which yields both its score (global max pooling) and its
class-activation map; the label is ``score >= threshold`` for the chosen mode. Host memory is
bounded by the detector image (a few MB for any slide) and the streaming tiles, not by slide size.
Coordinates are base-level slide pixels throughout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnassist.annotations import CamGrid, LNResult, ModelRef
from lnassist.errors import LnassistError
from lnassist.metrics import THRESHOLDS

log = logging.getLogger(__name__)

MODES = ("screening", "general")
WHOLE_SLIDE = (-1.0, -1.0, -1.0, -1.0)  # the Slicer CLI convention for "no region"

Progress = Callable[[str, float, str], None]  # (stage, fraction done in [0, 1], message)


class PipelineError(LnassistError):
    """A request the analysis cannot serve (bad mode, threshold or region)."""


@dataclass(frozen=True)
class AnalysisConfig:
    mode: str = "general"  # screening (threshold 0.15) or general (0.4), the paper's operating points
    threshold: float | None = None  # overrides the mode's threshold
    detector: str | None = None  # registry id or checkpoint path; None = the registry's default
    classifier: str | None = None
    base_mpp: float | None = None  # override for slides without resolution metadata
    region_base_px: tuple[float, float, float, float] = WHOLE_SLIDE  # x, y, width, height
    cam: bool = True
    device: str = "cpu"
    tile_px: int | None = None  # ESCNN streaming tile; None = the engine's default for the device

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PipelineError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise PipelineError(f"threshold must be in [0, 1], got {self.threshold}")
        if len(self.region_base_px) != 4:
            raise PipelineError(f"region is x, y, width, height in base pixels, got {self.region_base_px}")

    @property
    def effective_threshold(self) -> float:
        return THRESHOLDS[self.mode] if self.threshold is None else float(self.threshold)


@dataclass
class Analysis:
    slide_path: str
    base_mpp: float
    size_base_px: tuple[int, int]  # width, height
    region_base_px: tuple[int, int, int, int] | None  # x, y, width, height; None = whole slide
    mode: str
    threshold: float
    lns: list[LNResult]
    models: list[ModelRef]
    timings_s: dict[str, float] = field(default_factory=dict)
    message: str = ""

    @property
    def counts(self) -> dict[str, int]:
        positive = sum(ln.positive for ln in self.lns)
        return {"lns": len(self.lns), "positive": positive, "negative": len(self.lns) - positive}


def clip_region(region_base_px: tuple[float, float, float, float], width: int, height: int) -> tuple | None:
    """The region as integer (x, y, w, h) inside the slide, None for the whole slide; errors if outside."""
    if tuple(region_base_px) == WHOLE_SLIDE:
        return None
    x, y, w, h = (float(v) for v in region_base_px)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise PipelineError(f"region must have a positive width and height, got {region_base_px}")
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if x1 <= x0 or y1 <= y0:
        raise PipelineError(f"region {region_base_px} lies outside the {width} x {height} px slide")
    return x0, y0, x1 - x0, y1 - y0


def parse_region(text: str) -> tuple[float, float, float, float]:
    """``"x,y,width,height"`` (base pixels) as numbers, or :class:`PipelineError`."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise PipelineError(f"region must be x,y,width,height in base pixels, got {text!r}")
    return values


def cam_grid(cam: Any, source: Any, contour_base_px: np.ndarray) -> CamGrid:
    """A streamed CAM (canvas cells) as a base-pixel grid; cells whose centre is outside the LN are NaN."""
    from lnassist.slide import polygon_mask

    values = cam.scores[1].double().numpy().copy()
    rows, cols = values.shape
    sy, sx = cam.stride_px
    oy, ox = cam.origin_px
    scale = source.base_px_per_px
    # Canvas pixel p spans base [origin + p * scale, origin + (p + 1) * scale): its centre is p + 0.5.
    x0 = source.origin_base_px[0] + (ox + 0.5) * scale
    y0 = source.origin_base_px[1] + (oy + 0.5) * scale
    dx, dy = sx * scale, sy * scale
    # In units of cells, cell (r, c) is the pixel whose centre is (x0 / dx + c, y0 / dy + r).
    cells = np.asarray(contour_base_px, dtype=np.float64) / [dx, dy]
    inside = polygon_mask(cells, x0 / dx - 0.5, y0 / dy - 0.5, cols, rows, 1.0, base_mpp=1.0)
    values[~inside] = np.nan
    return CamGrid(values, (float(x0), float(y0)), float(dx), float(dy))


def polygon_area_base_px2(contour: np.ndarray) -> float:
    x, y = contour[:, 0], contour[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def classify_lns(
    slide: Any,
    contours_base_px: list[np.ndarray],
    classifier: Any,
    threshold: float,
    cam: bool = True,
    tile_px: int | None = None,
    progress: Progress | None = None,
) -> list[LNResult]:
    """Score every LN contour (one streamed pass each: score and, with ``cam``, its heatmap)."""
    from lnassist.classifier import positive_probability, score_source
    from lnassist.escnn.sources import SlideRegionSource
    from lnassist.escnn.streaming import StreamingConfig, stream_cam

    streaming = StreamingConfig(tile_px=tile_px)
    results = []
    for number, contour in enumerate(contours_base_px, start=1):
        contour = np.asarray(contour, dtype=np.float64)
        source = SlideRegionSource(slide, contour, classifier.spec.mpp)
        grid = None
        if cam and classifier.spec.method == "escnn":
            result = stream_cam(classifier.model, source, streaming)
            score = float(positive_probability(result.logits.reshape(-1)))
            grid = cam_grid(result, source, contour)
        else:
            score = score_source(classifier, source, streaming).score
        area_um2 = polygon_area_base_px2(contour) * slide.base_mpp**2
        results.append(LNResult(number, contour, score, score >= threshold, area_um2, grid))
        if progress:
            progress(
                "classify",
                number / len(contours_base_px),
                f"LN {number}/{len(contours_base_px)}: {score:.3f}",
            )
    return results


@dataclass
class Detection:
    """The detection stage's result: LN contours (base-level pixels) of a slide, inside the region."""

    slide: Any
    contours_base_px: list[np.ndarray]
    region_base_px: tuple[int, int, int, int] | None
    model: ModelRef
    timings_s: dict[str, float]


def detect(slide_path: str | Path, cfg: AnalysisConfig, progress: Progress | None = None) -> Detection:
    """Stage 1: the slide at the detector's resolution -> the paper's post-processing -> LN contours
    (inside the region, if one is given)."""
    from lnassist.detector.grid import Grid
    from lnassist.detector.infer import detect_image
    from lnassist.detector.model import load_checkpoint
    from lnassist.registry import resolve
    from lnassist.slide import open_slide

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    slide = open_slide(slide_path, cfg.base_mpp)
    region = clip_region(cfg.region_base_px, slide.width_px, slide.height_px)
    path, entry = resolve("detector", cfg.detector)
    detector, _ = load_checkpoint(path)
    timings["load"] = time.perf_counter() - t0
    if progress:
        progress("detect", 0.0, "reading the slide at the detector's resolution")
    t0 = time.perf_counter()
    grid = Grid.of_slide(slide, detector.config.mpp)
    image = slide.read_thumbnail(detector.config.mpp)
    timings["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    contours = detect_image(detector.to(cfg.device), image, grid, region_base_px=region).contours_base_px
    timings["detect"] = time.perf_counter() - t0
    if progress:
        progress("detect", 1.0, f"{len(contours)} LN(s) found")
    model = ModelRef(entry.id, entry.kind, entry.version, entry.sha256)
    return Detection(slide, contours, region, model, timings)


def classify(
    slide: Any,
    contours_base_px: list[np.ndarray],
    cfg: AnalysisConfig,
    progress: Progress | None = None,
    detection: Detection | None = None,
) -> Analysis:
    """Stage 2: score LN contours (the detector's, or given ones such as a pathologist's corrections)."""
    from lnassist.classifier import load_classifier
    from lnassist.registry import resolve

    for number, contour in enumerate(contours_base_px, start=1):
        (x0, y0), (x1, y1) = np.min(contour, axis=0), np.max(contour, axis=0)
        if x1 <= 0 or y1 <= 0 or x0 >= slide.width_px or y0 >= slide.height_px:
            raise PipelineError(
                f"LN contour {number} ({x0:.0f}..{x1:.0f} x {y0:.0f}..{y1:.0f}) lies outside the "
                f"{slide.width_px} x {slide.height_px} px slide: is it from another slide?"
            )
    timings = dict(detection.timings_s) if detection else {}
    t0 = time.perf_counter()
    path, entry = resolve("classifier", cfg.classifier)
    classifier = load_classifier(path, cfg.device)
    timings["load"] = timings.get("load", 0.0) + time.perf_counter() - t0
    t0 = time.perf_counter()
    threshold = cfg.effective_threshold
    lns = classify_lns(slide, contours_base_px, classifier, threshold, cfg.cam, cfg.tile_px, progress)
    timings["classify"] = time.perf_counter() - t0
    region = detection.region_base_px if detection else None
    message = "" if lns else "no lymph node was found" + (" in the region" if region else " on the slide")
    models = ([detection.model] if detection else []) + [
        ModelRef(entry.id, entry.kind, entry.version, entry.sha256)
    ]
    return Analysis(
        str(slide.path),
        slide.base_mpp,
        (slide.width_px, slide.height_px),
        region,
        cfg.mode,
        threshold,
        lns,
        models,
        {k: round(v, 3) for k, v in timings.items()},
        message,
    )


def analyze(slide_path: str | Path, cfg: AnalysisConfig, progress: Progress | None = None) -> Analysis:
    """Run the whole analysis on one slide (see the module docstring)."""
    detection = detect(slide_path, cfg, progress)
    return classify(detection.slide, detection.contours_base_px, cfg, progress, detection)


# ------------------------------------------------------------------------------------ local use

OUTPUT_NAMES = {
    "annotation": "ln-annotation.json",
    "heatmap": "heatmap-annotation.json",
    "summary": "summary.json",
    "overlay": "overlay.png",
}


def analysis_documents(
    analysis: Analysis,
    cli_name: str,
    parameters: dict[str, Any],
    image_girder_id: str | None = None,
    image_transform: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(LN annotation document, heatmap document, item metadata) of an analysis, each validated.
    With ``image_girder_id`` the heatmap document also places that overlay image (see
    :func:`lnassist.annotations.heatmap_document`)."""
    from datetime import UTC, datetime

    from lnassist import __version__
    from lnassist.annotations import heatmap_document, ln_document, summary_metadata, validate_document

    common = {"mode": analysis.mode, "threshold": analysis.threshold, "models": analysis.models}
    ln_doc = ln_document(
        analysis.lns,
        **common,
        cli_name=cli_name,
        version=__version__,
        parameters=parameters,
        timings_s=analysis.timings_s,
    )
    heat_doc = heatmap_document(
        analysis.lns,
        **common,
        cli_name=cli_name,
        version=__version__,
        image_girder_id=image_girder_id,
        image_transform=image_transform,
    )
    validate_document(ln_doc)
    validate_document(heat_doc, cli_outputs=[image_girder_id] if image_girder_id else ())
    metadata = summary_metadata(analysis.lns, **common, analysed_at=datetime.now(UTC), version=__version__)
    return ln_doc, heat_doc, metadata


def run_analyze(args: Any) -> int:
    import torch

    from lnassist.fileio import refuse_existing

    out = Path(args.out)
    paths = output_paths(out)
    for path in paths.values():
        refuse_existing(path, args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    region = parse_region(args.region) if args.region else WHOLE_SLIDE
    cfg = AnalysisConfig(
        mode=args.mode,
        threshold=args.threshold,
        detector=args.detector,
        classifier=args.classifier,
        base_mpp=args.mpp,
        region_base_px=region,
        cam=not args.no_cam,
        device=args.device,
    )

    def report(stage: str, fraction: float, message: str) -> None:
        log.info("%s %3.0f%% %s", stage, 100 * fraction, message)

    analysis = analyze(args.slide, cfg, report)
    parameters = {
        k: v if v is None or isinstance(v, str | int | float | bool) else str(v)
        for k, v in vars(args).items()
        if k not in ("func", "overwrite", "verbose")
    }
    write_local_outputs(analysis, out, "lnassist analyze", parameters, args.overwrite)
    counts = analysis.counts
    print(
        f"{analysis.slide_path}: {counts['lns']} LN(s), {counts['positive']} positive, {counts['negative']} "
        f"negative at threshold {analysis.threshold} ({analysis.mode})"
        + (f"; {analysis.message}" * bool(analysis.message))
    )
    for ln in analysis.lns:
        print(f"  LN {ln.ln_id}: score {ln.score:.3f} -> {'POSITIVE' if ln.positive else 'negative'}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def analysis_summary(analysis: Analysis, item_metadata: dict[str, Any]) -> dict[str, Any]:
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
        "item_metadata": item_metadata,
    }


def output_paths(out: str | Path) -> dict[str, Path]:
    """Where ``lnassist analyze`` writes each output (OUTPUT_NAMES) in folder ``out``."""
    return {key: Path(out) / name for key, name in OUTPUT_NAMES.items()}


def write_local_outputs(
    analysis: Analysis, out: Path, cli_name: str, parameters: dict[str, Any], overwrite: bool = False
) -> dict[str, Path]:
    """Write the two annotation documents, the summary and the overlay PNG into ``out`` (names in
    OUTPUT_NAMES); every document is built and validated before the first file is written."""
    import json

    from lnassist.fileio import write_text_atomic
    from lnassist.overlay import write_overlay_png
    from lnassist.slide import open_slide

    paths = output_paths(out)
    ln_doc, heat_doc, metadata = analysis_documents(analysis, cli_name, parameters)
    summary = analysis_summary(analysis, metadata)
    write_text_atomic(paths["annotation"], json.dumps(ln_doc) + "\n", overwrite=overwrite)
    write_text_atomic(paths["heatmap"], json.dumps(heat_doc) + "\n", overwrite=overwrite)
    write_overlay_png(
        paths["overlay"], open_slide(analysis.slide_path, analysis.base_mpp), analysis, overwrite
    )
    write_text_atomic(paths["summary"], json.dumps(summary, indent=1) + "\n", overwrite=overwrite)
    return paths


def add_cli(subparsers: Any) -> None:
    from lnassist.detector.cli import _device, _positive_int

    p = subparsers.add_parser(
        "analyze",
        help="run the LN analysis on a slide: annotation JSON, heatmap, summary, overlay PNG",
        description="Find the lymph nodes of a slide, score each for metastasis (ESCNN), and write the DSA "
        "annotation documents (LN contours; heatmap), a summary and an overview PNG into --out.",
    )
    p.add_argument("slide")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="general",
        help="screening: threshold 0.15 (high sensitivity); general: 0.4 (default)",
    )
    p.add_argument("--threshold", type=float, help="custom threshold in [0, 1] (overrides --mode)")
    p.add_argument("--region", help="x,y,width,height in base pixels (default: whole slide)")
    p.add_argument("--mpp", type=float, help="base resolution (um/px) for slides without metadata")
    p.add_argument("--detector", help="detector id from models/registry.json or a checkpoint path")
    p.add_argument("--classifier", help="classifier id from models/registry.json or a checkpoint path")
    p.add_argument("--no-cam", action="store_true", help="scores only, no heatmap")
    p.add_argument("--threads", type=_positive_int)
    p.add_argument("--device", type=_device, default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_analyze)
