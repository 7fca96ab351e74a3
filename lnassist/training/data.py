"""Training images from a ``manifest.jsonl`` (one row per LN, as ``lnassist synth-dataset`` writes it).

An image is one LN (``label_mode="ln"``) or one slide (``"slide"``: the common bounding box of
all its LNs, white outside them, positive if any LN is positive). Pixels come from the slide at
the classifier's resolution through :class:`~lnassist.escnn.sources.SlideRegionSource`; slides are
opened once per process and kept open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lnassist.categories import CATEGORIES  # ordered from benign to worst
from lnassist.escnn.sources import SlideRegionSource
from lnassist.training import TrainingError

REQUIRED_FIELDS = ("split", "slide", "slide_id", "contour")


@dataclass(frozen=True)
class TrainImage:
    key: str  # "slide_id/ln_id" or "slide_id"
    slide_path: str
    slide_id: str
    polygons_base_px: tuple[tuple[tuple[float, float], ...], ...]  # base-level (x, y)
    label: int  # the label trained on (cfg.label_field)
    category: str  # finest category known (ln mode); "slide" rows: the worst LN category
    mpp_override: float | None  # slide resolution from the manifest, for slides without metadata


def read_rows(manifest: str | Path) -> list[dict[str, Any]]:
    path = Path(manifest)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise TrainingError(f"cannot read manifest {path}: {exc}") from exc
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainingError(f"{path}:{n}: not JSON ({exc})") from exc
        missing = [f for f in REQUIRED_FIELDS if f not in row]
        if missing:
            raise TrainingError(f"{path}:{n}: row lacks {missing}")
        rows.append(row)
    return rows


def _label(row: dict[str, Any], field: str, where: str) -> int:
    value = row.get(field)
    if value not in (0, 1, True, False):
        raise TrainingError(f"{where}: label field {field!r} must be 0 or 1, got {value!r}")
    return int(value)


def images_from_manifest(
    manifest: str | Path, split: str, label_mode: str = "ln", label_field: str = "label"
) -> list[TrainImage]:
    """The training images of ``split``, in manifest order; slide paths resolved against the manifest."""
    root = Path(manifest).parent
    rows = [r for r in read_rows(manifest) if r["split"] == split]
    if not rows:
        raise TrainingError(f"{manifest}: no LN of split {split!r}")

    def polygon(row: dict[str, Any]) -> tuple[tuple[float, float], ...]:
        contour = np.asarray(row["contour"], dtype=np.float64)
        if contour.ndim != 2 or contour.shape[1] != 2 or len(contour) < 3:
            raise TrainingError(
                f"{manifest}: contour of {row['slide_id']}/{row.get('ln_id')} is not a polygon"
            )
        return tuple((float(x), float(y)) for x, y in contour)

    def mpp(row: dict[str, Any]) -> float | None:
        return float(row["mpp"]) if row.get("mpp") else None

    if label_mode == "ln":
        return [
            TrainImage(
                key=f"{r['slide_id']}/{r.get('ln_id', i)}",
                slide_path=str(root / r["slide"]),
                slide_id=str(r["slide_id"]),
                polygons_base_px=(polygon(r),),
                label=_label(r, label_field, f"{manifest}: {r['slide_id']}"),
                category=str(r.get("category", "")),
                mpp_override=mpp(r),
            )
            for i, r in enumerate(rows)
        ]
    by_slide: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_slide.setdefault(str(r["slide_id"]), []).append(r)
    images = []
    for slide_id, group in by_slide.items():
        cats = [str(r.get("category", "")) for r in group]
        worst = max(cats, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else -1)
        images.append(
            TrainImage(
                key=slide_id,
                slide_path=str(root / group[0]["slide"]),
                slide_id=slide_id,
                polygons_base_px=tuple(polygon(r) for r in group),
                label=max(_label(r, label_field, f"{manifest}: {slide_id}") for r in group),
                category=worst,
                mpp_override=mpp(group[0]),
            )
        )
    return images


@lru_cache(maxsize=16)
def _open(path: str, mpp: float | None) -> Any:
    from lnassist.slide import open_slide

    return open_slide(path, mpp=mpp)


def open_image(image: TrainImage, mpp: float) -> SlideRegionSource:
    """The image's canvas at ``mpp`` (white outside its LN contour(s))."""
    polygons = [np.asarray(p) for p in image.polygons_base_px]
    return SlideRegionSource(_open(image.slide_path, image.mpp_override), polygons, mpp)
