"""What an LN analysis produces, as plain data: the LNs found on a slide, each LN's score, label and
heatmap, the models that made them, and the provenance recorded with every output.

The pipeline (:mod:`lnassist.pipeline`) returns these; the annotation builder
(:mod:`lnassist.annotations`), the pictures (:mod:`lnassist.overlay`) and the file writer
(:mod:`lnassist.outputs`) read them. numpy is the only dependency, so nothing that reads results
needs torch. Coordinates are base-level slide pixels (``*_base_px``) throughout.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelRef:
    """Which model took part in an analysis; ``kind`` is ``detector`` or ``classifier``."""

    id: str
    kind: str
    version: str
    sha256: str


@dataclass(frozen=True)
class CamGrid:
    """Class-activation (heatmap) grid of one LN."""

    values: np.ndarray  # (rows, cols) P(metastasis) per cell in [0, 1]; NaN = outside the LN
    origin_base_px: tuple[float, float]  # (x, y) of cell (0, 0)'s centre
    dx_base_px: float  # cell spacing along x
    dy_base_px: float


@dataclass(frozen=True)
class LNResult:
    """One scored LN."""

    ln_id: int
    contour_base_px: np.ndarray  # (N, 2) x, y polygon
    score: float  # P(metastasis) in [0, 1]
    positive: bool  # score >= threshold
    area_um2: float
    cam: CamGrid | None = None


@dataclass(frozen=True)
class Provenance:
    """Where a set of outputs came from, recorded in each annotation document's attributes.

    ``mode`` and ``threshold`` are None for outputs nobody classified (the detector's outlines);
    ``parameters`` are the run's arguments without secrets.
    """

    models: tuple[ModelRef, ...]
    cli: str  # the program that ran: a Slicer CLI's name, "lnassist analyze", ...
    lnassist_version: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    timings_s: Mapping[str, float] = field(default_factory=dict)
    mode: str | None = None
    threshold: float | None = None

    def model(self, kind: str) -> ModelRef | None:
        return next((m for m in self.models if m.kind == kind), None)


@dataclass
class Detection:
    """The detection stage's result on one slide: LN contours, inside the region if one was given."""

    slide_path: str
    base_mpp: float
    contours_base_px: list[np.ndarray]
    region_base_px: tuple[int, int, int, int] | None  # x, y, width, height; None = whole slide
    model: ModelRef
    timings_s: dict[str, float]

    def provenance(self, cli: str, parameters: Mapping[str, Any]) -> Provenance:
        from lnassist import __version__

        return Provenance((self.model,), cli, __version__, dict(parameters), dict(self.timings_s))


@dataclass
class Analysis:
    """The whole analysis of one slide: every LN scored and labelled at one threshold."""

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

    def summary_line(self) -> str:
        """One line for a log or a terminal: counts, threshold, mode and any message."""
        counts = self.counts
        line = (
            f"{counts['lns']} LN(s), {counts['positive']} positive, {counts['negative']} negative at "
            f"threshold {self.threshold:g} ({self.mode})"
        )
        return line + (f"; {self.message}" if self.message else "")

    def provenance(self, cli: str, parameters: Mapping[str, Any]) -> Provenance:
        from lnassist import __version__

        return Provenance(
            tuple(self.models),
            cli,
            __version__,
            dict(parameters),
            dict(self.timings_s),
            self.mode,
            self.threshold,
        )
