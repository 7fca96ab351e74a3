"""One synthetic slide on disk: pyramidal TIFF + ground-truth JSON, from a layout config.

Ground truth (``<stem>.gt.json`` next to the TIFF) is in base-level pixels (0.46 um/px): slide size,
mpp, site, seed, per-LN contour / label / category / tumour deposits (polygon, extent, cell centres) /
mimics, free floaters and the slide-level label.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from lnassist.categories import category_of_extent
from lnassist.fileio import atomic_output, refuse_existing, write_text_atomic
from lnassist.synth import layout as L
from lnassist.synth.render import render_region
from lnassist.synth.stain import site_to_dict
from lnassist.synth.tiff import DEFAULT_QUALITY, DEFAULT_TILE_PX, write_pyramid

GT_FORMAT = "lnassist-synth-gt/1"


def _pts(a: np.ndarray | None, decimals: int = 1) -> list:
    if a is None:
        return []
    return np.round(np.asarray(a, float), decimals).tolist()


def ground_truth(layout: L.SlideLayout) -> dict:
    """JSON-able ground truth of a layout (all coordinates base px)."""
    nodes = []
    for n in layout.nodes:
        lo, hi = n.contour.min(0), n.contour.max(0)
        nodes.append(
            {
                "id": n.node_id,
                "label": n.label,
                "category": n.category,
                "largest_extent_px": round(n.largest_extent_px, 2),
                "largest_extent_um": round(n.largest_extent_px * layout.mpp, 2),
                "contour": _pts(n.contour),
                "bbox": [
                    int(np.floor(lo[0])),
                    int(np.floor(lo[1])),
                    int(np.ceil(hi[0])),
                    int(np.ceil(hi[1])),
                ],
                "deposits": [
                    {
                        "kind": d.kind,
                        "extent_px": round(d.extent_px, 2),
                        "polygon": _pts(d.polygon),
                        "cells": _pts(d.cells),
                    }
                    for d in n.deposits
                ],
                "mimics": [
                    {"kind": m.kind, "polygon": _pts(m.polygon), "cells": _pts(m.cells)} for m in n.mimics
                ],
            }
        )
    positive = [n for n in layout.nodes if n.label]
    worst = max((n.largest_extent_px for n in positive), default=0.0)
    return {
        "format": GT_FORMAT,
        "width_px": layout.width_px,
        "height_px": layout.height_px,
        "mpp": layout.mpp,
        "magnification": L.MAGNIFICATION_20X * L.MPP_20X / layout.mpp,
        "seed": layout.seed,
        "site": layout.site.name,
        "stain": site_to_dict(layout.site),
        "tumour_type": layout.tumour_type,
        "look": layout.look,
        **(
            {
                "scanner": asdict(layout.scanner),
                "section": asdict(layout.section),
                "artefacts": [a.to_dict() for a in layout.artefacts],
                "extranodal": [{"kind": p.kind, "outline": _pts(p.outline)} for p in layout.extranodal],
            }
            if layout.look == "scanned"
            else {}
        ),
        "slide_label": layout.slide_label,
        "slide_category": category_of_extent(worst, layout.mpp) if positive else "negative",
        "nodes": nodes,
        "floaters": [
            {"kind": f.kind, "polygon": _pts(f.polygon), "cells": _pts(f.cells)} for f in layout.floaters
        ],
    }


def gt_path_for(tiff_path: str | Path) -> Path:
    p = Path(tiff_path)
    return p.with_name(p.name.removesuffix(p.suffix) + ".gt.json")


def write_slide(
    tiff_path: str | Path,
    cfg: L.LayoutConfig,
    tile_px: int = DEFAULT_TILE_PX,
    quality: int | None = None,
    workers: int = 2,
    overwrite: bool = False,
) -> dict:
    """Build the layout, write the TIFF and its ground truth; returns the ground-truth dict.

    ``quality`` (JPEG) defaults to the slide's scanner for the "scanned" look, else ``DEFAULT_QUALITY``.
    Both files appear whole or not at all; existing files are replaced only with ``overwrite``."""
    layout = L.build_layout(cfg)
    if quality is None:
        quality = layout.scanner.jpeg_quality if layout.look == "scanned" else DEFAULT_QUALITY
    tiff_path = Path(tiff_path)
    gt_path = gt_path_for(tiff_path)
    refuse_existing(gt_path, overwrite)
    with atomic_output(tiff_path, overwrite=overwrite) as tmp_tiff:
        shapes = write_pyramid(
            tmp_tiff,
            layout.width_px,
            layout.height_px,
            lambda x0, y0, w, h: render_region(layout, x0, y0, w, h),
            mpp=layout.mpp,
            magnification=L.MAGNIFICATION_20X * L.MPP_20X / layout.mpp,
            tile_px=tile_px,
            quality=quality,
            workers=workers,
        )
        gt = ground_truth(layout)
        gt["levels"] = [list(s) for s in shapes]
        gt["image"] = tiff_path.name
        write_text_atomic(gt_path, json.dumps(gt, separators=(",", ":")), overwrite=overwrite)
    return gt
