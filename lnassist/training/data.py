"""Training images from a manifest (:mod:`lnassist.manifest`, one row per LN).

An image is one LN (``label_mode="ln"``) or one slide (``"slide"``: the common bounding box of
all its LNs, white outside them, positive if any LN is positive). Pixels come from the slide at
the classifier's resolution through :class:`~lnassist.escnn.sources.SlideRegionSource`; slides are
opened once per process and kept open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lnassist.categories import CATEGORIES  # ordered from benign to worst
from lnassist.escnn.mask_jitter import MaskJitter
from lnassist.escnn.sources import SlideRegionSource
from lnassist.manifest import read_manifest, resolve_path
from lnassist.training import TrainingError


@dataclass(frozen=True)
class TrainImage:
    key: str  # "slide_id/ln_id" or "slide_id"
    slide_path: str
    slide_id: str
    polygons_base_px: tuple[tuple[tuple[float, float], ...], ...]  # base-level (x, y)
    label: int  # the label trained on (cfg.label_field)
    category: str  # finest category known (ln mode); "slide" rows: the worst LN category
    mpp_override: float | None  # slide resolution from the manifest, for slides without metadata


def _polygon(row: dict[str, Any]) -> tuple[tuple[float, float], ...]:
    return tuple((float(x), float(y)) for x, y in row["contour"])


def _mpp(row: dict[str, Any]) -> float | None:
    return None if row.get("mpp") is None else float(row["mpp"])


def images_from_manifest(
    manifest: str | Path | Sequence[str | Path],
    split: str,
    label_mode: str = "ln",
    label_field: str = "label",
) -> list[TrainImage]:
    """The training images of ``split``, in manifest order, labelled from ``label_field``.

    Several manifests (e.g. one per slide look) are pooled in the order given; their keys and slide
    ids are then prefixed with the manifest's index (``"1:train_0003/0"``), as data sets reuse names."""
    if not isinstance(manifest, str | Path):
        manifests = list(manifest)
        if len(manifests) == 1:
            return images_from_manifest(manifests[0], split, label_mode, label_field)
        return [
            replace(image, key=f"{i}:{image.key}", slide_id=f"{i}:{image.slide_id}")
            for i, one in enumerate(manifests)
            for image in images_from_manifest(one, split, label_mode, label_field)
        ]
    rows = read_manifest(manifest, splits=(split,), label_field=label_field)
    if not rows:
        raise TrainingError(f"{manifest}: no LN of split {split!r}")
    if label_mode == "ln":
        return [
            TrainImage(
                key=f"{r['slide_id']}/{r['ln_id']}",
                slide_path=str(resolve_path(manifest, r["slide"])),
                slide_id=r["slide_id"],
                polygons_base_px=(_polygon(r),),
                label=r[label_field],
                category=r.get("category") or "",
                mpp_override=_mpp(r),
            )
            for r in rows
        ]
    by_slide: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_slide.setdefault(r["slide_id"], []).append(r)
    images = []
    for slide_id, group in by_slide.items():
        cats = [r.get("category") or "" for r in group]
        worst = max(cats, key=lambda c: CATEGORIES.index(c) if c in CATEGORIES else -1)
        images.append(
            TrainImage(
                key=slide_id,
                slide_path=str(resolve_path(manifest, group[0]["slide"])),
                slide_id=slide_id,
                polygons_base_px=tuple(_polygon(r) for r in group),
                label=max(r[label_field] for r in group),
                category=worst,
                mpp_override=_mpp(group[0]),
            )
        )
    return images


@lru_cache(maxsize=16)
def _open(path: str, mpp: float | None) -> Any:
    from lnassist.slide import open_slide

    return open_slide(path, mpp=mpp)


def open_image(image: TrainImage, mpp: float, mask_jitter: MaskJitter | None = None) -> SlideRegionSource:
    """The image's canvas at ``mpp`` (white outside its LN contour(s), moved and feathered by
    ``mask_jitter`` when given: training only)."""
    polygons = [np.asarray(p) for p in image.polygons_base_px]
    return SlideRegionSource(
        _open(image.slide_path, image.mpp_override), polygons, mpp, mask_jitter=mask_jitter
    )
