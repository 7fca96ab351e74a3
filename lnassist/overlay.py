"""The overview picture of an analysis: the slide thumbnail, each LN's heatmap, contours coloured by label.

Positive LNs are outlined red, negative ones green, each with its number and score; the heatmap
(P(metastasis) per CAM cell) is blended in from transparent (0) to opaque red-yellow (1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lnassist.fileio import atomic_output

MAX_SIDE_PX = 2000
POSITIVE_BGR = (40, 40, 220)
NEGATIVE_BGR = (60, 170, 60)


def overlay_image(slide: Any, analysis: Any, max_side_px: int = MAX_SIDE_PX) -> np.ndarray:
    """uint8 RGB overview of ``analysis`` (a :class:`lnassist.pipeline.Analysis`) on ``slide``."""
    import cv2

    longest = max(slide.width_px, slide.height_px)
    mpp = max(slide.base_mpp * longest / max_side_px, slide.base_mpp)
    image = slide.read_thumbnail(mpp).astype(np.float32)
    h, w = image.shape[:2]
    scale_x, scale_y = w / slide.width_px, h / slide.height_px
    heat = np.zeros((h, w), np.float32)
    for ln in analysis.lns:
        if ln.cam is None:
            continue
        values = np.nan_to_num(ln.cam.values, nan=0.0).astype(np.float32)
        rows, cols = values.shape
        # Cell (r, c) centred at origin + (c dx, r dy): its box starts half a cell earlier.
        x0 = (ln.cam.origin_base_px[0] - ln.cam.dx_base_px / 2) * scale_x
        y0 = (ln.cam.origin_base_px[1] - ln.cam.dy_base_px / 2) * scale_y
        cw, ch = ln.cam.dx_base_px * scale_x * cols, ln.cam.dy_base_px * scale_y * rows
        tx0, ty0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        tx1, ty1 = min(w, math.ceil(x0 + cw)), min(h, math.ceil(y0 + ch))
        if tx1 <= tx0 or ty1 <= ty0:
            continue
        # Nearest cell for every thumbnail pixel of the LN's box.
        cx = np.clip(((np.arange(tx0, tx1) + 0.5 - x0) / (cw / cols)).astype(int), 0, cols - 1)
        cy = np.clip(((np.arange(ty0, ty1) + 0.5 - y0) / (ch / rows)).astype(int), 0, rows - 1)
        heat[ty0:ty1, tx0:tx1] = np.maximum(heat[ty0:ty1, tx0:tx1], values[np.ix_(cy, cx)])
    colour = np.stack([np.full_like(heat, 255), 255 * (1 - heat), np.zeros_like(heat)], axis=-1)
    alpha = (0.65 * heat)[..., None]
    image = (image * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
    bgr = np.ascontiguousarray(image[..., ::-1])
    thickness = max(2, round(max(h, w) / 700))
    for ln in analysis.lns:
        pts = np.round(ln.contour_base_px * [scale_x, scale_y]).astype(np.int32).reshape(-1, 1, 2)
        colour_bgr = POSITIVE_BGR if ln.positive else NEGATIVE_BGR
        cv2.polylines(bgr, [pts], True, colour_bgr, thickness, cv2.LINE_AA)
        x, y = pts[:, 0, 0].min(), pts[:, 0, 1].min()
        text = f"LN {ln.ln_id}: {ln.score:.2f}"
        cv2.putText(
            bgr,
            text,
            (int(x), max(14, int(y) - 6)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5 * thickness / 2,
            colour_bgr,
            max(1, thickness // 2),
            cv2.LINE_AA,
        )
    return bgr[..., ::-1].copy()


def write_overlay_png(path: str | Path, slide: Any, analysis: Any, overwrite: bool = False) -> Path:
    import cv2

    rgb = overlay_image(slide, analysis)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"PNG encoding of the overlay failed for {path}")
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data.tobytes())
    return Path(path)
