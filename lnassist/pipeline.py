"""The "Run LN analysis" job as a library call: slide -> LNs -> scores, labels and heatmaps.

Stages: the LN detector reads the whole slide at its resolution (1.25x, 7.36 um/px) and returns LN
contours (restricted to a region of interest if one is given); each LN is then read at the
classifier's resolution (20x, 0.46 um/px) with everything outside its contour white and streamed
once through the classifier, which yields its score and (ESCNN) its class-activation map; the
label is ``score >= threshold`` for the chosen mode. Host memory is bounded by the detector image
(a few MB for any slide) and the streaming tiles, not by slide size. Coordinates are base-level
slide pixels throughout. The results are :mod:`lnassist.results`; writing them is
:mod:`lnassist.outputs`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnassist.constants import DEFAULT_MODE, MODES, THRESHOLDS, WHOLE_SLIDE
from lnassist.errors import LnassistError
from lnassist.results import Analysis, Detection, LNResult, ModelRef

Progress = Callable[[str, float, str], None]  # (stage, fraction done in [0, 1], message)


class PipelineError(LnassistError):
    """A request the analysis cannot serve (bad mode, threshold or region)."""


@dataclass(frozen=True)
class AnalysisConfig:
    mode: str = DEFAULT_MODE  # screening (threshold 0.15) or general (0.4), the paper's operating points
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
    from lnassist.classifier import score_ln
    from lnassist.escnn.streaming import StreamingConfig
    from lnassist.slide import polygon_area_base_px2

    streaming = StreamingConfig(tile_px=tile_px)
    results = []
    for number, contour in enumerate(contours_base_px, start=1):
        contour = np.asarray(contour, dtype=np.float64)
        scored = score_ln(classifier, slide, contour, streaming, cam=cam)
        area_um2 = polygon_area_base_px2(contour) * slide.base_mpp**2
        results.append(
            LNResult(number, contour, scored.score, scored.score >= threshold, area_um2, scored.cam)
        )
        if progress:
            progress(
                "classify",
                number / len(contours_base_px),
                f"LN {number}/{len(contours_base_px)}: {scored.score:.3f}",
            )
    return results


def detect(slide: Any, cfg: AnalysisConfig, progress: Progress | None = None) -> Detection:
    """Stage 1: the slide (:class:`lnassist.slide.Slide`) at the detector's resolution -> the paper's
    post-processing -> LN contours (inside the region, if one is given)."""
    from lnassist.detector.grid import Grid
    from lnassist.detector.infer import detect_image
    from lnassist.detector.model import load_checkpoint
    from lnassist.registry import resolve

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
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
    return Detection(str(slide.path), slide.base_mpp, contours, region, model, timings)


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


def analyze(slide: Any, cfg: AnalysisConfig, progress: Progress | None = None) -> Analysis:
    """Run the whole analysis on one slide (see the module docstring)."""
    detection = detect(slide, cfg, progress)
    return classify(slide, detection.contours_base_px, cfg, progress, detection)
