"""Scoring an LN in all eight orientations: the oriented tile source, the classifier's ``orientations``
spec and what it guarantees (a flipped or turned LN scores exactly the same), checkpoints, the CAM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_escnn_sources import DIAMOND_BASE_PX, FakeSlide, textured_base

from lnassist.classifier import (
    ClassifierError,
    ClassifierSpec,
    checkpoint_payload,
    classifier_from_payload,
    load_classifier,
    new_classifier,
    positive_probability,
    save_classifier,
    score_ln,
    score_source,
)
from lnassist.escnn.sources import ORIENTATIONS, ArraySource, OrientedSource, SourceError, pad_window
from lnassist.escnn.streaming import StreamingConfig, stream_forward

STREAMING = StreamingConfig(tile_px=96)


def _ln_image(seed: int, height: int = 150, width: int = 230) -> np.ndarray:
    """Texture inside an off-centre ellipse, white outside: no symmetry a view could share."""
    rng = np.random.default_rng(seed)
    image = rng.integers(30, 220, (height, width, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    image[((yy - 60) / 55.0) ** 2 + ((xx - 100) / 95.0) ** 2 > 1] = 255
    return image


def _view(image: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    return np.ascontiguousarray(np.rot90(image[:, ::-1] if flip else image, turns))


def test_the_eight_orientations_are_the_square_s_symmetries_once_each():
    image = np.random.default_rng(0).integers(0, 255, (7, 11, 3), dtype=np.uint8)
    views = {
        (_view(image, turns, flip).shape, _view(image, turns, flip).tobytes()) for turns, flip in ORIENTATIONS
    }
    assert ORIENTATIONS[0] == (0, False) and len(ORIENTATIONS) == len(views) == 8


@pytest.mark.parametrize(("turns", "flip"), ORIENTATIONS)
def test_oriented_windows_are_windows_of_the_oriented_image(turns, flip):
    rng = np.random.default_rng(turns + 4 * flip)
    image = rng.integers(0, 255, (37, 53, 3), dtype=np.uint8)
    expected = _view(image, turns, flip)
    source = OrientedSource(ArraySource(image), turns, flip)
    assert (source.height, source.width) == expected.shape[:2]
    assert np.array_equal(source.read(0, 0, source.height, source.width), expected)
    for _ in range(100):  # windows anywhere, also partly or wholly off the canvas
        y0, x0 = (int(v) for v in rng.integers(-20, 60, 2))
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        window = source.read(y0, x0, h, w)
        wanted = pad_window(expected, y0, x0, h, w)
        if window is None:
            assert (wanted == 255).all()
        else:
            assert np.array_equal(window, wanted)


def test_oriented_slide_source_reads_only_the_chunks_its_window_needs():
    from lnassist.escnn.sources import SlideRegionSource

    slide = FakeSlide(textured_base(300, 300, 5), base_mpp=0.25)
    source = SlideRegionSource(slide, DIAMOND_BASE_PX, mpp=0.5, chunk_px=16)
    turned = OrientedSource(source, 1, True)
    # Flipped, then a quarter turn anticlockwise: the view's top-left is the source's top-left.
    assert turned.read(48, 48, 16, 16) is not None
    assert slide.reads == [(40 + 3 * 32, 40 + 3 * 32, 32, 32)]
    with pytest.raises(SourceError, match="quarter_turns"):
        OrientedSource(source, 4)


def _classifier(orientations: int, method: str = "escnn") -> object:
    return new_classifier(
        ClassifierSpec(backbone="tiny", method=method, patch_px=64, orientations=orientations), 1
    )


def test_eight_orientations_average_the_logits_of_the_eight_views():
    plain, eight = _classifier(1), _classifier(8)
    image = _ln_image(1)
    logits = [
        stream_forward(plain.model, ArraySource(_view(image, t, f)), STREAMING).logits.reshape(-1).float()
        for t, f in ORIENTATIONS
    ]
    scored = score_source(eight, ArraySource(image), STREAMING)
    mean = torch.stack(logits).mean(0)
    assert np.allclose(scored.logits, mean.numpy(), atol=1e-5)
    assert scored.score == pytest.approx(float(positive_probability(mean)), abs=1e-6)
    # One orientation is the image as read; the views do score differently, so the average is no no-op.
    alone = score_source(plain, ArraySource(image), STREAMING)
    assert np.allclose(alone.logits, logits[0].numpy(), atol=1e-5)
    assert (
        max(float(positive_probability(v)) for v in logits)
        - min(float(positive_probability(v)) for v in logits)
        > 1e-4
    )


@pytest.mark.parametrize("method", ["escnn", "mil"])
def test_a_flipped_or_turned_ln_scores_the_same_with_eight_orientations(method):
    plain, eight = _classifier(1, method), _classifier(8, method)
    image = _ln_image(2)
    for clf, tolerance in ((eight, 1e-6), (plain, None)):
        scores = [
            score_source(clf, ArraySource(_view(image, t, f)), STREAMING).score for t, f in ORIENTATIONS
        ]
        if tolerance is None:  # as read, the untrained model's score does depend on the orientation
            assert max(scores) - min(scores) > 1e-4
        else:
            assert max(scores) - min(scores) < tolerance


def test_the_cam_is_the_image_as_read():
    slide = FakeSlide(textured_base(300, 300, 6), base_mpp=0.25)
    plain, eight = _classifier(1), _classifier(8)
    a = score_ln(plain, slide, DIAMOND_BASE_PX, STREAMING, cam=True)
    b = score_ln(eight, slide, DIAMOND_BASE_PX, STREAMING, cam=True)
    assert b.cam is not None and np.array_equal(a.cam.values, b.cam.values, equal_nan=True)
    assert a.cam.origin_base_px == b.cam.origin_base_px
    assert a.score != b.score


def test_orientations_are_recorded_in_checkpoints_and_checked(tmp_path):
    save_classifier(tmp_path / "eight.pt", _classifier(8))
    assert load_classifier(tmp_path / "eight.pt").spec.orientations == 8
    # At the default the key is left out, so versions that refuse unknown keys read the file.
    plain = checkpoint_payload(_classifier(1))
    assert "orientations" not in plain["spec"]
    assert classifier_from_payload(plain, "plain").spec.orientations == 1
    for bad in (2, 0, True, "8", 8.0):
        with pytest.raises(ClassifierError, match="orientations must be 1 or 8"):
            ClassifierSpec(backbone="tiny", orientations=bad)
