"""What a whole-slide scanner adds to the stained section: blur, focus, field shading, noise, JPEG.

``Scanner`` holds one site's instrument (in-focus point-spread blur, how much of a slide lies out of
focus and how blurred it gets, the brightness fall-off across a camera stripe and the stripe-to-stripe
gain steps that show as tile seams, sensor noise, JPEG quality); ``jittered`` draws one slide's copy.
``scan`` turns a window's H and E concentrations into RGB through all of this. Every field depends
only on global coordinates, and the blur reads a margin of ``margin_px`` around the window, so any
window equals the matching crop of a larger one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import cv2
import numpy as np

from lnassist.synth import noise

NOISE_PERIOD_PX = 512


@dataclass(frozen=True)
class Scanner:
    psf_sigma_px: float  # in-focus blur (Gaussian sigma, base px)
    defocus_sigma_px: float  # blur at the centre of an out-of-focus patch
    defocus_share: float  # rough share of the tissue out of focus
    field_px: int  # width of one camera stripe
    vignetting: float  # relative brightness lost at a stripe's edges
    seam_gain: float  # peak-to-peak brightness step between stripes
    noise_dn: float  # sensor noise (std, 8-bit levels)
    jpeg_quality: int


# At 20x a good scanner resolves about its pixel: PCam's LN tiles (from 40x scans) keep their
# finest power at 1 um, so in-focus blur stays well under a pixel; what differs between sites is
# focus, shading, noise and compression.
SCANNERS: dict[str, Scanner] = {
    "A": Scanner(0.45, 1.8, 0.05, 1000, 0.025, 0.02, 2.5, 80),
    "B": Scanner(0.55, 2.2, 0.08, 1200, 0.04, 0.03, 3.5, 70),
    "C": Scanner(0.35, 1.6, 0.03, 900, 0.02, 0.015, 2.0, 90),
    "D": Scanner(0.65, 2.4, 0.1, 1500, 0.05, 0.035, 4.0, 60),
    # Unseen sites: E a soft, often defocused scanner saving at low JPEG quality; F a noisy camera
    # with strong stripe shading.
    "E": Scanner(0.9, 3.0, 0.22, 1000, 0.04, 0.03, 3.0, 50),
    "F": Scanner(0.5, 2.0, 0.06, 800, 0.08, 0.06, 6.0, 70),
}


def jittered(site: str, rng: np.random.Generator) -> Scanner:
    """One slide's scanner: the site's instrument with per-slide variation (focus, shading, noise)."""
    s = SCANNERS[site]
    jitter = lambda v, rel: float(v * rng.uniform(1 - rel, 1 + rel))
    return replace(
        s,
        psf_sigma_px=jitter(s.psf_sigma_px, 0.15),
        defocus_sigma_px=jitter(s.defocus_sigma_px, 0.15),
        defocus_share=jitter(s.defocus_share, 0.5),
        vignetting=jitter(s.vignetting, 0.3),
        seam_gain=jitter(s.seam_gain, 0.3),
        noise_dn=jitter(s.noise_dn, 0.2),
    )


def margin_px(scanner: Scanner) -> int:
    """How far outside a window the blur reads (OpenCV's Gaussian kernel reaches 4 sigma)."""
    return int(np.ceil(4 * max(scanner.psf_sigma_px, scanner.defocus_sigma_px))) + 1


_NOISE: dict[int, np.ndarray] = {}
_NOISE_LOCK = threading.Lock()


def _sensor_noise() -> np.ndarray:
    """Unit white noise, slightly correlated as in Bayer-demosaiced sensors, tiling every 512 px."""
    if 0 not in _NOISE:
        with _NOISE_LOCK:
            if 0 not in _NOISE:
                _NOISE[0] = noise.periodic_texture(103, NOISE_PERIOD_PX, 0.35)
    return _NOISE[0]


def _defocus_weight(seed: int, scanner: Scanner, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """0 in focus .. 1 at the centre of an out-of-focus patch (patches ~1-2 mm)."""
    v = noise.value_noise(seed, 32, x0, y0, w, h, 3000)
    cut = np.float32(1.0 - 2.2 * scanner.defocus_share)
    return np.clip((v - cut) / np.float32(0.35), 0.0, 1.0)


def _stripe_gain(seed: int, scanner: Scanner, x0: int, w: int) -> np.ndarray:
    """Per column: vignetting across the camera stripe times the stripe's own gain (seams)."""
    s = scanner
    xs = np.arange(x0, x0 + w, dtype=np.int64)
    stripe = np.floor_divide(xs, s.field_px)
    pos = (xs - stripe * s.field_px).astype(np.float32) / np.float32(s.field_px) * 2 - 1
    step = (noise.uniform(seed, 33, stripe) - 0.5).astype(np.float32) * np.float32(s.seam_gain)
    return (np.float32(1.0) - np.float32(s.vignetting) * pos * pos + step).astype(np.float32)


def scan(
    H: np.ndarray,
    E: np.ndarray,
    od_matrix: np.ndarray,
    scanner: Scanner,
    seed: int,
    x0: int,
    y0: int,
    margin: int,
    ink_od: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 RGB of the window at global (x0, y0) from (H, E) maps that extend ``margin`` px beyond it;
    ``ink_od`` (same extent, 3 channels) is optical density on top of the stains (pen, dust, bubbles)."""
    s = scanner
    h, w = H.shape[0] - 2 * margin, H.shape[1] - 2 * margin
    inner = (slice(margin, margin + h), slice(margin, margin + w))
    blurred = []
    defocus = _defocus_weight(seed, scanner, x0, y0, w, h)
    for c in (H, E):
        sharp = cv2.GaussianBlur(c, (0, 0), s.psf_sigma_px, borderType=cv2.BORDER_REFLECT)[inner]
        if defocus.max() > 0:
            soft = cv2.GaussianBlur(c, (0, 0), s.defocus_sigma_px, borderType=cv2.BORDER_REFLECT)[inner]
            sharp = sharp + defocus * (soft - sharp)
        blurred.append(sharp)
    gain = _stripe_gain(seed, scanner, x0, w)[None, :] * np.float32(255.0)
    tex = _sensor_noise()
    out = np.empty((h, w, 3), dtype=np.uint8)
    neg_ln10 = np.float32(-np.log(10.0))
    for c in range(3):
        od = blurred[0] * od_matrix[0, c] + blurred[1] * od_matrix[1, c] + od_matrix[2, c]
        if ink_od is not None:
            od += ink_od[inner + (c,)]
        val = np.exp(od * neg_ln10) * gain
        val += np.float32(s.noise_dn) * noise.texture_window(tex, x0 + 97 * c, y0 + 61 * c, w, h)
        out[..., c] = np.clip(val + np.float32(0.5), 0, 255)
    return out
