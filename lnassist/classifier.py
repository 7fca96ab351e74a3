"""The LN metastasis classifier as a file and as a scorer: checkpoint format, loading, per-LN scores.

A classifier checkpoint holds an ESCNN model (:mod:`lnassist.escnn`) and how to apply it: the
resolution it was trained at (``mpp``) and its ``method``:

- ``"escnn"`` (the paper): the whole LN image, everything outside the contour white, streamed
  through the trunk at once; the score is the softmax probability of the positive class after
  global max pooling.
- ``"mil"`` (the patch baseline): the same network applied to independent ``patch_px`` patches of
  the LN image; the LN score is the maximum patch probability (max-pooling multiple-instance).

Scores are ``P(metastasis)`` in [0, 1]; the label at a threshold is ``score >= threshold``. An
ESCNN classifier can return its class-activation map with the score from the same streamed pass
(the paper's heatmap); the MIL baseline has none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lnassist.errors import LnassistError
from lnassist.escnn.backbones import BACKBONES
from lnassist.escnn.model import ESCNNModel, build_model, window_to_input
from lnassist.escnn.sources import ORIENTATIONS, OrientedSource, SlideRegionSource, TileSource
from lnassist.escnn.streaming import CamResult, StreamingConfig, stream_cam, stream_forward
from lnassist.fileio import load_torch, save_torch
from lnassist.results import CamGrid
from lnassist.slide import CLASSIFIER_MPP, cell_centres_inside

CHECKPOINT_FORMAT = "lnassist-classifier/1"
METHODS = ("escnn", "mil")
ORIENTATION_COUNTS = (1, len(ORIENTATIONS))
POSITIVE_CLASS = 1
MIL_PATCH_PX = 256
MIL_BATCH = 32


class ClassifierError(LnassistError):
    """Unreadable or mismatched classifier checkpoint, or a request it cannot serve."""


@dataclass(frozen=True)
class ClassifierSpec:
    """What the weights are and how to apply them; stored in every checkpoint."""

    backbone: str = "resnet50"
    num_classes: int = 2
    mpp: float = CLASSIFIER_MPP
    method: str = "escnn"
    patch_px: int = MIL_PATCH_PX  # MIL only
    # Blur before every subsampling of the trunk (Zhang 2019); absent from older checkpoints: False.
    antialias: bool = False
    # How many orientations of the LN image are scored, their logits averaged: 1 (as read) or all 8
    # (quarter turns, with and without a flip: the label does not depend on them, and the average
    # cannot either). Absent from older checkpoints: 1.
    orientations: int = 1

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ClassifierError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.method not in METHODS:
            raise ClassifierError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.num_classes != 2:
            raise ClassifierError(
                f"the LN classifier has 2 classes (negative, positive), got {self.num_classes}"
            )
        if not isinstance(self.antialias, bool):
            raise ClassifierError(f"antialias must be true or false, got {self.antialias!r}")
        if type(self.orientations) is not int or self.orientations not in ORIENTATION_COUNTS:
            raise ClassifierError(f"orientations must be 1 or 8, got {self.orientations!r}")
        if not self.mpp > 0 or self.patch_px < 16:
            raise ClassifierError(f"mpp must be > 0 and patch_px >= 16, got {self.mpp}, {self.patch_px}")

    @classmethod
    def from_dict(cls, data: Any) -> ClassifierSpec:
        if not isinstance(data, dict):
            raise ClassifierError(f"classifier spec must be a mapping, got {type(data).__name__}")
        known = set(asdict(cls()))
        unknown = set(data) - known
        if unknown:
            raise ClassifierError(f"unknown classifier spec keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)


@dataclass
class Classifier:
    model: ESCNNModel
    spec: ClassifierSpec
    metadata: dict[str, Any]


def new_classifier(
    spec: ClassifierSpec, seed: int = 0, pretrained_path: str | Path | None = None
) -> Classifier:
    """Freshly initialised weights; the same seed gives the same weights (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec.backbone, spec.num_classes, pretrained_path, spec.antialias)
    return Classifier(model, spec, {})


def spec_payload(spec: ClassifierSpec) -> dict[str, Any]:
    """The spec as a checkpoint stores it."""
    written = asdict(spec)
    # Older lnassist versions refuse unknown spec keys: at their defaults, write what they can read.
    for key, default in (("antialias", False), ("orientations", 1)):
        if written[key] == default:
            del written[key]
    return written


def checkpoint_payload(classifier: Classifier) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT,
        "spec": spec_payload(classifier.spec),
        "state_dict": {k: v.detach().cpu() for k, v in classifier.model.state_dict().items()},
        # Through JSON: plain types only, which weights_only loading accepts.
        "metadata": json.loads(json.dumps(classifier.metadata)),
    }


def save_classifier(path: str | Path, classifier: Classifier, overwrite: bool = False) -> None:
    """Write spec + weights + metadata atomically (whole file or nothing)."""
    save_torch(path, checkpoint_payload(classifier), overwrite=overwrite)


def classifier_from_payload(payload: Any, origin: str) -> Classifier:
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ClassifierError(f"{origin}: not a {CHECKPOINT_FORMAT} checkpoint (found {found!r})")
    spec = ClassifierSpec.from_dict(payload.get("spec"))
    model = build_model(spec.backbone, spec.num_classes, antialias=spec.antialias)
    try:
        model.load_state_dict(payload.get("state_dict") or {}, strict=True)
    except RuntimeError as exc:
        raise ClassifierError(
            f"{origin}: weights do not match the {spec.backbone} classifier: {exc}"
        ) from exc
    return Classifier(model.eval(), spec, dict(payload.get("metadata") or {}))


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> Classifier:
    """A classifier in eval mode on ``device`` from :func:`save_classifier`'s file (``weights_only``)."""
    payload = load_torch(path, "classifier checkpoint", ClassifierError)
    classifier = classifier_from_payload(payload, str(path))
    classifier.model.to(device)
    return classifier


def positive_probability(logits: torch.Tensor) -> torch.Tensor:
    """``P(positive)`` from logits ``(..., 2)``."""
    return torch.softmax(logits.double(), dim=-1)[..., POSITIVE_CLASS]


def patch_grid(height: int, width: int, patch_px: int) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of the non-overlapping patches covering a canvas (last ones padded)."""
    return [(y, x) for y in range(0, height, patch_px) for x in range(0, width, patch_px)]


def mil_patch_logits(
    model: ESCNNModel, source: TileSource, patch_px: int, batch: int = MIL_BATCH
) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Logits ``(n, 2)`` of every non-white ``patch_px`` patch of ``source`` and their corners (y, x)."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    corners: list[tuple[int, int]] = []
    logits: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []

    def flush() -> None:
        if pending:
            logits.append(model(torch.cat(pending)).float().cpu())
            pending.clear()

    with torch.no_grad():
        for y, x in patch_grid(source.height, source.width, patch_px):
            window = source.read(y, x, patch_px, patch_px)
            if window is None:
                continue
            corners.append((y, x))
            pending.append(window_to_input(window, device, dtype))
            if len(pending) == batch:
                flush()
        flush()
    return corners, torch.cat(logits) if logits else torch.empty((0, 2))


@dataclass(frozen=True)
class LNScore:
    score: float  # P(metastasis)
    logits: tuple[float, ...]  # mean over the orientations scored; of the max-scoring patch for MIL
    canvas_mpp: float
    canvas_px: tuple[int, int]  # (height, width) of the LN image
    tissue_tiles: int  # streamed tiles (ESCNN) or patches (MIL) that held tissue, all orientations
    cam: CamGrid | None = None  # ESCNN with ``cam=True`` only


def score_source(
    classifier: Classifier,
    source: TileSource,
    streaming: StreamingConfig | None = None,
    canvas_mpp: float = 0.0,
    cam: bool = False,
) -> LNScore:
    """Score one LN image (any :class:`TileSource`, white outside the LN). With ``cam`` an ESCNN
    classifier also returns its CAM on the slide, which needs a :class:`SlideRegionSource`. A spec
    with 8 orientations averages the logits of the image's eight orientations; the CAM is that of the
    image as read."""
    # ORIENTATIONS[0] is the image as read.
    others = ORIENTATIONS[1 : classifier.spec.orientations]
    views: list[TileSource] = [source, *(OrientedSource(source, turns, flip) for turns, flip in others)]
    view_logits, tiles, grid = [], 0, None
    for number, view in enumerate(views):
        logits, view_tiles, view_grid = _view_logits(classifier, view, streaming, cam and number == 0)
        view_logits.append(logits)
        tiles += view_tiles
        grid = grid or view_grid
    logits = torch.stack(view_logits).mean(0)
    return LNScore(
        float(positive_probability(logits)),
        tuple(float(v) for v in logits),
        canvas_mpp,
        (source.height, source.width),
        tiles,
        grid,
    )


def _view_logits(
    classifier: Classifier, source: TileSource, streaming: StreamingConfig | None, cam: bool
) -> tuple[torch.Tensor, int, CamGrid | None]:
    """(logits (2,), tiles or patches that held tissue, CAM grid or None) of one LN image as read."""
    model = classifier.model
    if classifier.spec.method == "escnn":
        # The CAM pass yields the same global-max-pooled logits as the plain forward pass.
        result = stream_cam(model, source, streaming) if cam else stream_forward(model, source, streaming)
        grid = cam_grid(result, source) if cam else None
        tiles = result.stats.tiles_total - result.stats.tiles_white
        return result.logits.reshape(-1).float().cpu(), tiles, grid
    _, patch_logits = mil_patch_logits(model, source, classifier.spec.patch_px)
    tiles = len(patch_logits)
    if tiles == 0:
        # An all-white LN image has no patch to vote: score the white patch, like ESCNN does.
        white = np.full((classifier.spec.patch_px,) * 2 + (3,), 255, np.uint8)
        with torch.no_grad():
            patch_logits = model(window_to_input(white, next(model.parameters()).device)).float().cpu()
    best = int(torch.argmax(positive_probability(patch_logits)))
    return patch_logits[best], tiles, None


def score_ln(
    classifier: Classifier,
    slide: Any,
    polygon_base_px: np.ndarray,
    streaming: StreamingConfig | None = None,
    cam: bool = False,
) -> LNScore:
    """Score the LN inside ``polygon_base_px`` (base-level pixels) of ``slide`` at the classifier's
    mpp; with ``cam``, also its heatmap (ESCNN only)."""
    source = SlideRegionSource(slide, polygon_base_px, classifier.spec.mpp)
    return score_source(classifier, source, streaming, source.canvas_mpp, cam)


def cam_grid(cam: CamResult, source: SlideRegionSource) -> CamGrid:
    """A streamed CAM (canvas cells) as a base-pixel grid; cells whose centre is outside the LN
    polygon(s) of ``source`` are NaN."""
    values = cam.scores[POSITIVE_CLASS].double().numpy().copy()
    rows, cols = values.shape
    sy, sx = cam.stride_px
    oy, ox = cam.origin_px
    scale = source.base_px_per_px
    # Canvas pixel p spans base [origin + p * scale, origin + (p + 1) * scale): its centre is p + 0.5.
    x0 = source.origin_base_px[0] + (ox + 0.5) * scale
    y0 = source.origin_base_px[1] + (oy + 0.5) * scale
    dx, dy = sx * scale, sy * scale
    inside = np.zeros((rows, cols), dtype=bool)
    for polygon in source.polygons_base_px:
        inside |= cell_centres_inside(polygon, (x0, y0), (dx, dy), rows, cols)
    values[~inside] = np.nan
    return CamGrid(values, (float(x0), float(y0)), float(dx), float(dy))
