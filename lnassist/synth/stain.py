"""Stain "sites": Beer-Lambert H&E colour models that differ between labs (vectors, intensity, tint).

A site maps per-pixel haematoxylin / eosin concentrations to RGB: OD = H * h_od + E * e_od + tint_od,
RGB = 255 * 10^-OD. The reference site uses Ruifrok & Johnston's H vector and a pinker E vector; the
others rotate and scale them the way real labs' stains drift. Glass (no tissue) is always pure white
255 so that the streaming engine's white-tile skipping works on synthetic slides as on real ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lnassist.synth import SynthError

RUIFROK_H_OD = (0.65, 0.70, 0.29)
RUIFROK_E_OD = (0.07, 0.99, 0.11)
# Eosin as it looks on scanned LN slides (pink rather than magenta): more blue absorption than Ruifrok.
PINK_E_OD = (0.10, 0.87, 0.48)


def _unit(v: tuple[float, float, float]) -> tuple[float, float, float]:
    a = np.asarray(v, dtype=np.float64)
    a = a / np.linalg.norm(a)
    return (float(a[0]), float(a[1]), float(a[2]))


@dataclass(frozen=True)
class StainSite:
    """One lab's stain: unit OD vectors, concentration scales and a faint tissue tint (OD per channel)."""

    name: str
    h_od: tuple[float, float, float]
    e_od: tuple[float, float, float]
    h_scale: float = 1.0
    e_scale: float = 1.0
    tint_od: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def od_matrix(self) -> np.ndarray:
        """(3, 3) float32 rows: H vector * scale, E vector * scale, tint (added once)."""
        return np.array(
            [
                np.multiply(_unit(self.h_od), self.h_scale),
                np.multiply(_unit(self.e_od), self.e_scale),
                self.tint_od,
            ],
            dtype=np.float32,
        )

    def jittered(self, rng: np.random.Generator, amount: float) -> StainSite:
        """Per-slide variation within a site: vector angles and scales perturbed by ``amount`` (0..1)."""

        def perturb(v: tuple[float, float, float]) -> tuple[float, float, float]:
            return _unit(tuple(np.asarray(_unit(v)) + rng.normal(0.0, 0.04 * amount, 3).clip(-0.1, 0.1)))

        return StainSite(
            name=self.name,
            h_od=perturb(self.h_od),
            e_od=perturb(self.e_od),
            h_scale=float(self.h_scale * (1.0 + rng.uniform(-0.12, 0.12) * amount)),
            e_scale=float(self.e_scale * (1.0 + rng.uniform(-0.12, 0.12) * amount)),
            tint_od=self.tint_od,
        )


SITES: dict[str, StainSite] = {
    # Reference: Ruifrok haematoxylin, pink eosin, balanced intensity.
    "A": StainSite("A", RUIFROK_H_OD, PINK_E_OD, 1.0, 1.0, (0.01, 0.015, 0.005)),
    # Bluer haematoxylin, strong pink eosin (a "purple" lab, as in many PCam patches).
    "B": StainSite("B", (0.55, 0.74, 0.38), (0.10, 0.93, 0.35), 1.12, 0.95, (0.01, 0.02, 0.005)),
    # Faded, pinkish: weak haematoxylin, strong eosin, warmer background.
    "C": StainSite("C", (0.62, 0.73, 0.28), (0.08, 0.9, 0.42), 0.78, 1.2, (0.005, 0.02, 0.02)),
    # Dark, over-stained with a brownish haematoxylin.
    "D": StainSite("D", (0.72, 0.68, 0.20), (0.09, 0.92, 0.38), 1.3, 1.08, (0.02, 0.025, 0.025)),
    # E and F are the unseen sites (dataset.UNSEEN_SITES): stains no training slide has.
    # E: violet haematoxylin with an orange eosin (a different eosin Y batch), greyish background.
    "E": StainSite("E", (0.52, 0.80, 0.30), (0.03, 0.80, 0.60), 1.05, 0.9, (0.03, 0.03, 0.03)),
    # F: grey-blue, weak haematoxylin and a pale lilac eosin (under-stained, old reagents).
    "F": StainSite("F", (0.60, 0.62, 0.50), (0.16, 0.95, 0.26), 0.7, 0.75, (0.005, 0.01, 0.015)),
}


def get_site(name: str) -> StainSite:
    try:
        return SITES[name]
    except KeyError:
        raise SynthError(f"unknown stain site {name!r}; known sites: {', '.join(SITES)}") from None


def site_to_dict(site: StainSite) -> dict:
    return {
        "name": site.name,
        "h_od": list(site.h_od),
        "e_od": list(site.e_od),
        "h_scale": site.h_scale,
        "e_scale": site.e_scale,
        "tint_od": list(site.tint_od),
    }


def concentrations_to_rgb(h: np.ndarray, e: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Beer-Lambert: (H, W) concentrations -> uint8 RGB (H, W, 3), rounding to nearest."""
    out = np.empty(h.shape + (3,), dtype=np.uint8)
    neg_ln10 = np.float32(-np.log(10.0))
    for c in range(3):
        od = h * matrix[0, c] + e * matrix[1, c] + matrix[2, c]
        val = np.exp(od * neg_ln10) * np.float32(255.0) + np.float32(0.5)
        out[..., c] = np.clip(val, 0, 255)
    return out
