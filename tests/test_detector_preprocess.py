"""Glass white balance before the detector: grey glass becomes white, white glass and glass-less
images are untouched."""

from __future__ import annotations

import numpy as np

from lnassist.detector.preprocess import balance_glass, glass_level


def _slide(glass: tuple[int, int, int]) -> np.ndarray:
    """A 100 x 100 image: tinted glass with a pink-purple tissue square in the middle."""
    img = np.empty((100, 100, 3), np.uint8)
    img[:] = glass
    img[30:70, 30:70] = (180, 90, 160)
    return img


def test_grey_glass_becomes_white_and_tissue_scales_with_it():
    img = _slide((244, 236, 240))
    assert glass_level(img).tolist() == [244, 236, 240]
    # Pale fat (pinkish, nearly as bright as the glass and as grey) does not set the level.
    with_fat = img.copy()
    with_fat[:, :40] = (236, 228, 234)
    assert glass_level(with_fat).tolist() == [244, 236, 240]
    noisy = img.copy()
    noisy[:10, :10] -= np.uint8(3)  # the glass's grain: white too
    out = balance_glass(noisy)
    assert (out[:10, :10] == 255).all() and (out[0, 20] == 255).all()
    expected = np.round(np.array([180, 90, 160]) * 255 / np.array([244, 236, 240])).astype(int)
    assert out[50, 50].tolist() == expected.tolist()


def test_white_glass_and_images_without_glass_are_untouched():
    white = _slide((255, 255, 255))
    assert balance_glass(white) is white
    tissue = np.full((50, 50, 3), (200, 120, 180), np.uint8)  # no grey pixel bright enough
    assert glass_level(tissue) is None and balance_glass(tissue) is tissue
    dark = _slide((190, 190, 190))  # too dark to be glass: left alone
    assert balance_glass(dark) is dark
