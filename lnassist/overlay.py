"""Pictures of an analysis: the overview PNG a person looks at first, and the heatmap overlay image.

The overview is the slide thumbnail with each LN's heatmap (P(metastasis) per CAM cell, blended in
from transparent (0) to opaque red-yellow (1)) and the contours, positive LNs outlined red,
negative ones green (the annotation groups' colours, :mod:`lnassist.dsa`), each with its number
and score. The overlay image is the CAMs alone at their
native resolution (one pixel per CAM cell, unlike the griddata annotation, which is coarsened to
stay within HistomicsUI's limits), RGBA in the heatmap annotation's colours, written as a tiled
TIFF that large_image serves and an annotation ``image`` element places on the slide.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnassist import dsa

MAX_SIDE_PX = 2000
TIFF_TILE_PX = 256


def paint_cams(
    lns: Sequence[Any],
    width_px: int,
    height_px: int,
    px_base: tuple[float, float],
) -> np.ndarray:
    """float32 (height_px, width_px) canvas of the LNs' CAM values, 0 where no LN has one.

    Canvas pixel (r, c) covers base pixels [c * px_base[0], (c + 1) * px_base[0]) along x (likewise
    y) and takes the nearest CAM cell of each LN covering it (the maximum where LNs overlap).
    """
    heat = np.zeros((height_px, width_px), np.float32)
    for ln in lns:
        if ln.cam is None:
            continue
        values = np.nan_to_num(ln.cam.values, nan=0.0).astype(np.float32)
        rows, cols = values.shape
        # Cell (r, c) is centred at origin + (c dx, r dy): its box starts half a cell earlier.
        # x0, y0, cell_w, cell_h in canvas pixels.
        x0 = (ln.cam.origin_base_px[0] - ln.cam.dx_base_px / 2) / px_base[0]
        y0 = (ln.cam.origin_base_px[1] - ln.cam.dy_base_px / 2) / px_base[1]
        cell_w, cell_h = ln.cam.dx_base_px / px_base[0], ln.cam.dy_base_px / px_base[1]
        tx0, ty0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        tx1, ty1 = min(width_px, math.ceil(x0 + cell_w * cols)), min(height_px, math.ceil(y0 + cell_h * rows))
        if tx1 <= tx0 or ty1 <= ty0:
            continue
        cx = np.clip(((np.arange(tx0, tx1) + 0.5 - x0) / cell_w).astype(int), 0, cols - 1)
        cy = np.clip(((np.arange(ty0, ty1) + 0.5 - y0) / cell_h).astype(int), 0, rows - 1)
        heat[ty0:ty1, tx0:tx1] = np.maximum(heat[ty0:ty1, tx0:tx1], values[np.ix_(cy, cx)])
    return heat


def overlay_image(slide: Any, analysis: Any, max_side_px: int = MAX_SIDE_PX) -> np.ndarray:
    """uint8 RGB overview of ``analysis`` (a :class:`lnassist.results.Analysis`) on ``slide``."""
    import cv2

    longest = max(slide.width_px, slide.height_px)
    mpp = max(slide.base_mpp * longest / max_side_px, slide.base_mpp)
    image = slide.read_thumbnail(mpp).astype(np.float32)
    h, w = image.shape[:2]
    scale_x, scale_y = w / slide.width_px, h / slide.height_px
    heat = paint_cams(analysis.lns, w, h, (1 / scale_x, 1 / scale_y))
    colour = np.stack([np.full_like(heat, 255), 255 * (1 - heat), np.zeros_like(heat)], axis=-1)
    alpha = (0.65 * heat)[..., None]
    image = (image * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
    bgr = np.ascontiguousarray(image[..., ::-1])
    thickness = max(2, round(max(h, w) / 700))
    for ln in analysis.lns:
        pts = np.round(ln.contour_base_px * [scale_x, scale_y]).astype(np.int32).reshape(-1, 1, 2)
        colour_bgr = (dsa.POSITIVE_RGB if ln.positive else dsa.NEGATIVE_RGB)[::-1]
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


def overlay_png_bytes(slide: Any, analysis: Any) -> bytes:
    """:func:`overlay_image` encoded as PNG."""
    import cv2

    ok, data = cv2.imencode(".png", np.ascontiguousarray(overlay_image(slide, analysis)[..., ::-1]))
    if not ok:
        raise OSError(f"PNG encoding of the overview of {analysis.slide_path} failed")
    return data.tobytes()


@dataclass(frozen=True)
class HeatmapOverlay:
    """The LNs' CAMs as one RGBA image, one pixel per CAM cell; pixel (0, 0) starts at base (0, 0)."""

    rgba: np.ndarray  # (rows, cols, 4) uint8
    px_base: float  # base pixels per image pixel, both axes

    def transform(self) -> dict[str, Any]:
        """The annotation ``image`` element's transform: base pixel = matrix @ image pixel."""
        scale = float(self.px_base)
        return {"xoffset": 0, "yoffset": 0, "matrix": [[scale, 0.0], [0.0, scale]]}


def heatmap_overlay(lns: Sequence[Any], threshold: float) -> HeatmapOverlay:
    """The CAMs of ``lns`` (:class:`lnassist.results.LNResult`) in the colours of
    :func:`lnassist.dsa.heatmap_stops`, transparent outside the LNs, one pixel per CAM
    cell, from the slide's base origin to the far corner of the last LN.

    The image starts at base (0, 0), so its transform has no offset: HistomicsUI 1.8's client
    multiplies the offsets by the power-of-two part of the transform's scale (seen in a browser
    here), and without an offset every reading places the image alike. Each pixel takes the
    nearest cell, so an LN's cells may sit up to half a cell off the image's pixel grid.
    Without any CAM: a single transparent pixel."""
    cams = [ln.cam for ln in lns if ln.cam is not None]
    if not cams:
        return HeatmapOverlay(np.zeros((1, 1, 4), np.uint8), 1.0)
    px = min(min(cam.dx_base_px, cam.dy_base_px) for cam in cams)
    x1 = max(cam.origin_base_px[0] + (cam.values.shape[1] - 0.5) * cam.dx_base_px for cam in cams)
    y1 = max(cam.origin_base_px[1] + (cam.values.shape[0] - 0.5) * cam.dy_base_px for cam in cams)
    width, height = math.ceil(x1 / px - 1e-6), math.ceil(y1 / px - 1e-6)
    heat = paint_cams(lns, width, height, (px, px))
    stops = dsa.heatmap_stops(threshold)
    scores = [value for value, _, _ in stops]
    channels = [[colour[i] for _, colour, _ in stops] for i in range(3)] + [[255 * a for _, _, a in stops]]
    rgba = np.stack([np.interp(heat, scores, channel) for channel in channels], axis=-1)
    return HeatmapOverlay(np.round(rgba).astype(np.uint8), float(px))


def heatmap_tiff_bytes(overlay: HeatmapOverlay) -> bytes:
    """The overlay as a tiled, zlib-compressed RGBA TIFF with a pyramid down to one tile, which
    large_image's tiff source serves (and HistomicsUI draws through the ``image`` element)."""
    import tifffile

    levels = [overlay.rgba]
    while max(levels[-1].shape[:2]) > TIFF_TILE_PX:
        # Max-pooled halving keeps small hot spots visible when zoomed out.
        a = levels[-1]
        h, w = a.shape[:2]
        padded = np.zeros((h + h % 2, w + w % 2, 4), np.uint8)
        padded[:h, :w] = a
        levels.append(padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2, 4).max(axis=(1, 3)))
    buffer = io.BytesIO()
    with tifffile.TiffWriter(buffer) as tiff:
        for index, level in enumerate(levels):
            tiff.write(
                level,
                tile=(TIFF_TILE_PX, TIFF_TILE_PX),
                photometric="rgb",
                extrasamples=["unassalpha"],
                compression="zlib",
                subfiletype=1 if index else 0,
                metadata=None,
                software="lnassist",
            )
    return buffer.getvalue()
