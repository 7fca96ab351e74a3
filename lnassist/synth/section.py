"""The cut and stained section as a whole: its thickness across the slide, per slide.

Real sections are not evenly thick: staining is darker where the microtome left more tissue and fades
towards one side. ``Section`` is one slide's draw (its own random stream, so layouts and ground truth
do not change); ``thickness`` is the relative thickness of any window, from global coordinates only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lnassist.synth import noise


@dataclass(frozen=True)
class Section:
    thickness_amp: float  # relative amplitude of the smooth thickness field
    gradient: tuple[float, float]  # relative thickness change across the slide's width / height


def draw_section(rng: np.random.Generator) -> Section:
    return Section(float(rng.uniform(0.05, 0.15)), (float(rng.normal(0, 0.1)), float(rng.normal(0, 0.1))))


def thickness(
    seed: int, section: Section, size_px: tuple[int, int], x0: int, y0: int, w: int, h: int
) -> np.ndarray:
    """Relative thickness (around 1) of the window: smooth millimetre-scale field plus the gradient."""
    field = noise.fractal_noise(seed, 30, x0, y0, w, h, 2048, 3) * np.float32(2.0 * section.thickness_amp)
    gx = np.arange(x0, x0 + w, dtype=np.float32) / np.float32(size_px[0]) - np.float32(0.5)
    gy = np.arange(y0, y0 + h, dtype=np.float32) / np.float32(size_px[1]) - np.float32(0.5)
    gx *= np.float32(section.gradient[0])
    gy *= np.float32(section.gradient[1])
    return np.float32(1.0) + field + gx[None, :] + gy[:, None]
