"""Patch-based training augmentation of one image (ESCNN, Huang et al. 2022, Methods).

Owns the augmentation drawn once per image and applied window by window:

* geometry: horizontal flip, rotation, scaling and translation, as one affine map from source
  canvas pixels to augmented canvas pixels;
* stain: HED colour deconvolution (Ruifrok-Johnston stain vectors), each stain vector rotated
  by a small random angle and each stain concentration scaled, then recomposed.

``draw_params`` draws everything once per image from an explicit generator; ``AugmentedSource``
wraps a ``TileSource`` so that any window of the augmented canvas is computed from the smallest
source window it needs. The output for a window is a function of (params, window) only and does
not depend on how the canvas is tiled: sampling positions are computed from global canvas
coordinates on a 1/256-px grid before the window origin (an integer) is subtracted, so the
float32 positions handed to cv2.remap, and therefore the bilinear weights, are bit-identical for
every tiling. They differ from one cv2.warpAffine of the whole image by at most one level on a
fraction of a percent of the pixels.

Conventions (all coordinates are canvas pixels, pixel centres at integer positions, as OpenCV):

* The augmented canvas is enlarged to the bounding box of the flipped, rotated and scaled source
  canvas plus a white border of ``ceil(translation_px)`` on every side, so no tissue is ever cut,
  whatever the drawn angle, scale or shift. Its size depends on the drawn angle and scale.
* The source canvas centre maps to the augmented canvas centre shifted by (shift_x_px, shift_y_px).
* Positive angles rotate counter-clockwise as displayed (y axis pointing down), like OpenCV.
* The flip mirrors the source left-right before rotating.
* Evaluation uses no augmentation: do not wrap the source (``identity_params`` exists for code
  paths that always wrap; it reproduces the source up to one level of stain round-trip rounding).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from lnassist.errors import LnassistError
from lnassist.escnn.sources import WHITE, TileSource, is_white

# Unit optical-density vectors of haematoxylin, eosin and DAB (rows; columns R, G, B) from
# A. C. Ruifrok and D. A. Johnston, "Quantification of histochemical staining by color
# deconvolution", Anal. Quant. Cytol. Histol. 23(4):291-299, 2001. The same numbers are in
# histomicstk's color_deconvolution docstring and, rounded to two digits, its stain_color_map.
RUIFROK_HED_OD = np.array(
    [
        [0.650, 0.704, 0.286],  # haematoxylin
        [0.072, 0.990, 0.105],  # eosin
        [0.268, 0.570, 0.776],  # DAB
    ]
)

# Sampling positions are rounded to multiples of 2**-8 px: with the float32 maps that cv2.remap
# takes, such values are exact up to 2**16 px, which is what makes the warp tiling-invariant.
_POSITION_QUANTUM = 256.0
# cv2.remap asserts source images smaller than SHRT_MAX on each side.
_MAX_SOURCE_WINDOW_PX = 32766
# Bilinear interpolation at p reads floor(p) and floor(p) + 1, which lie in the bounding box of
# the mapped pixel centres rounded outwards; one more pixel absorbs the 1/256-px position rounding.
_INTERPOLATION_MARGIN_PX = 1

# Optical density of every uint8 intensity, with I0 = 255 so that white has OD 0 exactly and
# stays white whatever the stain transform; intensity 0 is treated as 1 to keep OD finite.
_OD_OF_INTENSITY = (-np.log(np.maximum(np.arange(256), 1) / WHITE)).astype(np.float32).reshape(1, 256)


class AugmentError(LnassistError):
    """Invalid augmentation configuration, parameters or request."""


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the per-image augmentation. Defaults follow the paper and its public code.

    The paper names random scaling but gives no range; 0.9-1.1 is the project's choice.
    """

    rotation_deg: tuple[float, float] = (-180.0, 180.0)
    translation_px: float = 32.0
    flip_probability: float = 0.5
    scale_range: tuple[float, float] = (0.9, 1.1)
    stain_angle_deg: float = 10.0
    concentration_range: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        lo, hi = self.rotation_deg
        if not lo <= hi:
            raise AugmentError(f"rotation_deg must be (low, high) with low <= high, got {self.rotation_deg}")
        if self.translation_px < 0:
            raise AugmentError(f"translation_px must be >= 0, got {self.translation_px}")
        if not 0.0 <= self.flip_probability <= 1.0:
            raise AugmentError(f"flip_probability must be in [0, 1], got {self.flip_probability}")
        lo, hi = self.scale_range
        if not 0.0 < lo <= hi:
            raise AugmentError(
                f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}"
            )
        if not 0.0 <= self.stain_angle_deg < 90.0:
            raise AugmentError(f"stain_angle_deg must be in [0, 90), got {self.stain_angle_deg}")
        lo, hi = self.concentration_range
        if not 0.0 <= lo <= hi:
            raise AugmentError(
                "concentration_range must be (low, high) with 0 <= low <= high, "
                f"got {self.concentration_range}"
            )


Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class AugmentParams:
    """Augmentation of one image, drawn once. JSON-serialisable through ``to_dict``/``from_dict``.

    ``in_*`` is the source canvas size, ``out_*`` the augmented canvas size. ``stain_vectors`` are
    the perturbed unit OD vectors (rows H, E, DAB; columns R, G, B) that replace the Ruifrok ones,
    ``concentration_scales`` multiply the H, E, DAB concentrations.
    """

    in_height: int
    in_width: int
    out_height: int
    out_width: int
    angle_deg: float
    scale: float
    flip: bool
    shift_x_px: float
    shift_y_px: float
    stain_vectors: tuple[Vector3, Vector3, Vector3]
    concentration_scales: Vector3

    def __post_init__(self) -> None:
        if min(self.in_height, self.in_width, self.out_height, self.out_width) < 1:
            raise AugmentError(f"canvas sizes must be positive: {self}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise AugmentError(f"scale must be a positive number, got {self.scale}")
        vectors = np.asarray(self.stain_vectors, dtype=np.float64)
        if vectors.shape != (3, 3) or len(self.concentration_scales) != 3:
            raise AugmentError("stain_vectors must be 3 x 3 and concentration_scales 3 numbers")
        if abs(np.linalg.det(vectors)) < 1e-6:
            raise AugmentError(f"stain_vectors must be linearly independent, got {self.stain_vectors}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentParams:
        try:
            return cls(
                in_height=int(data["in_height"]),
                in_width=int(data["in_width"]),
                out_height=int(data["out_height"]),
                out_width=int(data["out_width"]),
                angle_deg=float(data["angle_deg"]),
                scale=float(data["scale"]),
                flip=bool(data["flip"]),
                shift_x_px=float(data["shift_x_px"]),
                shift_y_px=float(data["shift_y_px"]),
                stain_vectors=tuple(tuple(float(v) for v in row) for row in data["stain_vectors"]),
                concentration_scales=tuple(float(v) for v in data["concentration_scales"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise AugmentError(f"invalid AugmentParams dict: {error!r}") from error


def _output_size(height: int, width: int, angle_deg: float, scale: float, border_px: int) -> tuple[int, int]:
    """Augmented canvas (height, width): bounding box of the transformed canvas plus a border."""
    cos, sin = abs(math.cos(math.radians(angle_deg))), abs(math.sin(math.radians(angle_deg)))
    # The tolerance keeps exact multiples of 90 deg from gaining a pixel through cos(90) ~ 6e-17.
    bbox_w = math.ceil(scale * (cos * width + sin * height) - 1e-6)
    bbox_h = math.ceil(scale * (sin * width + cos * height) - 1e-6)
    return max(bbox_h, 1) + 2 * border_px, max(bbox_w, 1) + 2 * border_px


def _generator(rng: np.random.Generator | Any) -> np.random.Generator:
    """A numpy generator from a numpy or torch generator (torch seeds a fresh numpy one)."""
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        import torch
    except ImportError as error:  # pragma: no cover - torch is a project dependency
        raise AugmentError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}") from error
    if isinstance(rng, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=rng, device=rng.device).item())
        return np.random.default_rng(seed)
    raise AugmentError(f"rng must be a numpy.random.Generator or torch.Generator, got {type(rng).__name__}")


def _perturb_stain_vectors(rng: np.random.Generator, max_angle_deg: float) -> np.ndarray:
    """Rotate each unit stain vector by U(-max, max) deg toward a uniformly random perpendicular.

    The rotation stays in the plane spanned by the vector and the random perpendicular direction,
    so the perturbed vector is |drawn angle| away from the original. A stain cannot make a channel
    brighter than the background, so negative optical densities (eosin's red component is only
    0.07) are clipped to 0 and the vector renormalised; that only moves it closer to the original
    (its dot product with the all-positive original grows while its norm shrinks), so the angle
    stays within the bound.
    """
    vectors = RUIFROK_HED_OD / np.linalg.norm(RUIFROK_HED_OD, axis=1, keepdims=True)
    out = np.empty_like(vectors)
    for i, v in enumerate(vectors):
        angle = math.radians(rng.uniform(-max_angle_deg, max_angle_deg))
        direction = rng.standard_normal(3)
        direction -= direction.dot(v) * v
        direction /= np.linalg.norm(direction)
        rotated = np.maximum(math.cos(angle) * v + math.sin(angle) * direction, 0.0)
        out[i] = rotated / np.linalg.norm(rotated)
    return out


def draw_params(cfg: AugmentConfig, rng: np.random.Generator | Any, height: int, width: int) -> AugmentParams:
    """Draw the augmentation of one ``height`` x ``width`` image from ``rng`` (numpy or torch)."""
    if height < 1 or width < 1:
        raise AugmentError(f"image size must be positive, got {height} x {width}")
    gen = _generator(rng)
    angle = float(gen.uniform(*cfg.rotation_deg))
    scale = float(gen.uniform(*cfg.scale_range))
    flip = bool(gen.random() < cfg.flip_probability)
    shift_x, shift_y = (float(v) for v in gen.uniform(-cfg.translation_px, cfg.translation_px, size=2))
    stain_vectors = _perturb_stain_vectors(gen, cfg.stain_angle_deg)
    concentrations = gen.uniform(*cfg.concentration_range, size=3)
    out_h, out_w = _output_size(height, width, angle, scale, math.ceil(cfg.translation_px))
    return AugmentParams(
        in_height=height,
        in_width=width,
        out_height=out_h,
        out_width=out_w,
        angle_deg=angle,
        scale=scale,
        flip=flip,
        shift_x_px=shift_x,
        shift_y_px=shift_y,
        stain_vectors=tuple(tuple(float(c) for c in row) for row in stain_vectors),
        concentration_scales=tuple(float(c) for c in concentrations),
    )


def identity_params(height: int, width: int) -> AugmentParams:
    """Parameters that leave an image unchanged (same canvas, no warp, Ruifrok stains, scale 1)."""
    unit = RUIFROK_HED_OD / np.linalg.norm(RUIFROK_HED_OD, axis=1, keepdims=True)
    return AugmentParams(
        in_height=height,
        in_width=width,
        out_height=height,
        out_width=width,
        angle_deg=0.0,
        scale=1.0,
        flip=False,
        shift_x_px=0.0,
        shift_y_px=0.0,
        stain_vectors=tuple(tuple(float(c) for c in row) for row in unit),
        concentration_scales=(1.0, 1.0, 1.0),
    )


def forward_affine(params: AugmentParams) -> np.ndarray:
    """2x3 matrix mapping source canvas pixel centres (x, y, 1) to augmented canvas positions."""
    theta = math.radians(params.angle_deg)
    cos, sin = params.scale * math.cos(theta), params.scale * math.sin(theta)
    linear = np.array([[cos, sin], [-sin, cos]])
    if params.flip:
        linear = linear @ np.diag([-1.0, 1.0])
    centre_in = np.array([(params.in_width - 1) / 2, (params.in_height - 1) / 2])
    centre_out = np.array([(params.out_width - 1) / 2, (params.out_height - 1) / 2])
    offset = centre_out + np.array([params.shift_x_px, params.shift_y_px]) - linear @ centre_in
    return np.hstack([linear, offset[:, None]])


def inverse_affine(params: AugmentParams) -> np.ndarray:
    """2x3 matrix mapping augmented canvas pixel centres to source canvas positions."""
    return cv2.invertAffineTransform(forward_affine(params))


def stain_od_transform(params: AugmentParams) -> np.ndarray:
    """3x3 matrix T with OD_out = OD_in @ T (OD as row vectors over R, G, B).

    Deconvolve with the Ruifrok vectors (C = OD @ S^-1), scale the concentrations, recompose with
    the perturbed vectors (OD_out = C diag(s) S'), all folded into one matrix.
    """
    reference = RUIFROK_HED_OD / np.linalg.norm(RUIFROK_HED_OD, axis=1, keepdims=True)
    perturbed = np.asarray(params.stain_vectors, dtype=np.float64)
    scales = np.diag(np.asarray(params.concentration_scales, dtype=np.float64))
    return np.linalg.inv(reference) @ scales @ perturbed


def augment_stain(image: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Stain-augment a uint8 RGB array (any shape ``(..., 3)``); white pixels stay exactly white."""
    if image.dtype != np.uint8 or image.shape[-1] != 3:
        raise AugmentError(f"expected uint8 RGB (..., 3), got {image.dtype} {image.shape}")
    pixels = image.reshape(-1, 1, 3)
    od = cv2.LUT(pixels, _OD_OF_INTENSITY)
    # cv2.transform computes dst_j = sum_i m[j, i] src_i; the minus sign yields ln(I_out / I0).
    log_intensity = cv2.transform(od, -stain_od_transform(params).T)
    # convertScaleAbs rounds to nearest and saturates to [0, 255]; the values are never negative.
    return cv2.convertScaleAbs(cv2.exp(log_intensity), alpha=WHITE).reshape(image.shape)


def _local_sampling_maps(
    inverse: np.ndarray, y0: int, x0: int, h: int, w: int, sy0: int, sx0: int
) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (float32, source-window coordinates) of the output window's pixel centres.

    Each source coordinate is a row term plus a column term, both functions of global canvas
    coordinates rounded to 1/_POSITION_QUANTUM px, so every tiling yields the same global value.
    Subtracting the integer window origin in integer arithmetic leaves values below 2**24 quanta,
    which float32 holds exactly: the bilinear weights are bit-identical for every tiling.
    """
    q = _POSITION_QUANTUM
    xs = np.arange(x0, x0 + w, dtype=np.float64)
    ys = np.arange(y0, y0 + h, dtype=np.float64)
    maps = []
    for coeffs, origin in ((inverse[0], sx0), (inverse[1], sy0)):
        column_term = np.rint(coeffs[0] * q * xs).astype(np.int64)
        row_term = np.rint((coeffs[1] * ys + coeffs[2]) * q).astype(np.int64) - origin * int(q)
        local = row_term.astype(np.int32)[:, None] + column_term.astype(np.int32)[None, :]
        maps.append(local.astype(np.float32) * np.float32(1.0 / q))
    return maps[0], maps[1]


class AugmentedSource:
    """A ``TileSource`` serving windows of the augmented canvas of ``source``.

    Each window reads only the source window its pixels map to (plus an interpolation margin);
    an all-white source window yields ``None`` without warping or stain work.
    """

    def __init__(self, source: TileSource, params: AugmentParams) -> None:
        if (source.height, source.width) != (params.in_height, params.in_width):
            raise AugmentError(
                f"params were drawn for a {params.in_height} x {params.in_width} image, "
                f"the source is {source.height} x {source.width}"
            )
        self.source = source
        self.params = params
        self._inverse = inverse_affine(params)

    @property
    def height(self) -> int:
        return self.params.out_height

    @property
    def width(self) -> int:
        return self.params.out_width

    def source_window(self, y0: int, x0: int, h: int, w: int) -> tuple[int, int, int, int]:
        """The source window (y0, x0, h, w) that output window (y0, x0, h, w) is computed from."""
        if h < 1 or w < 1:
            raise AugmentError(f"window size must be positive, got {h} x {w}")
        x1, y1 = x0 + w - 1, y0 + h - 1
        corners = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]])
        mapped = corners @ self._inverse.T
        m = _INTERPOLATION_MARGIN_PX
        sx0, sy0 = (math.floor(v) - m for v in mapped.min(axis=0))
        sx1, sy1 = (math.ceil(v) + m for v in mapped.max(axis=0))
        return sy0, sx0, sy1 - sy0 + 1, sx1 - sx0 + 1

    def read(self, y0: int, x0: int, h: int, w: int) -> np.ndarray | None:
        sy0, sx0, sh, sw = self.source_window(y0, x0, h, w)
        if max(sh, sw) > _MAX_SOURCE_WINDOW_PX:
            raise AugmentError(
                f"window {h} x {w} needs a {sh} x {sw} source window, more than "
                f"{_MAX_SOURCE_WINDOW_PX} px on a side: request smaller windows"
            )
        outside = sy0 >= self.source.height or sx0 >= self.source.width or sy0 + sh <= 0 or sx0 + sw <= 0
        if outside:
            return None
        patch = self.source.read(sy0, sx0, sh, sw)
        if patch is None:
            return None
        map_x, map_y = _local_sampling_maps(self._inverse, y0, x0, h, w, sy0, sx0)
        warped = cv2.remap(
            patch,
            map_x,
            map_y,
            interpolation=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(WHITE, WHITE, WHITE),
        )
        out = augment_stain(warped, self.params)
        return None if is_white(out) else out
