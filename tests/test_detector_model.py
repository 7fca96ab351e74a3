"""The detector network (shapes, padding, seeding) and its checkpoints (round trip, bad files)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from lnassist.detector import DetectorError
from lnassist.detector.model import (
    CPU,
    PAPER,
    DetectorConfig,
    build_detector,
    load_checkpoint,
    save_checkpoint,
    to_tensor,
)
from lnassist.fileio import OutputExistsError

SMALL = replace(CPU, decoder_channels=32)


@pytest.fixture(scope="module")
def small_model():
    return build_detector(SMALL, seed=1).eval()


def test_paper_config():
    assert PAPER.encoder == "resnet50"
    assert PAPER.output_stride == 16
    assert PAPER.mpp == 7.36
    assert CPU.encoder == "resnet18"


def test_odd_sizes_give_logits_of_the_input_size(small_model):
    images = torch.rand(2, 3, 37, 53) * 255
    with torch.inference_mode():
        logits = small_model(images)
    assert logits.shape == (2, 1, 37, 53)
    assert torch.isfinite(logits).all()


def test_padding_is_white_and_cropped_back(small_model):
    image = (np.random.default_rng(0).random((37, 53, 3)) * 255).astype(np.uint8)
    padded = np.full((48, 64, 3), 255, dtype=np.uint8)
    padded[:37, :53] = image
    with torch.inference_mode():
        odd = small_model(to_tensor(image))
        even = small_model(to_tensor(padded))
    torch.testing.assert_close(odd, even[..., :37, :53])


def test_same_seed_same_weights_and_global_rng_untouched():
    state = torch.random.get_rng_state()
    a, b = build_detector(SMALL, seed=5), build_detector(SMALL, seed=5)
    c = build_detector(SMALL, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    first = "net.decoder.aspp.0.project.0.weight"
    assert torch.equal(a.state_dict()[first], b.state_dict()[first])
    assert not torch.equal(a.state_dict()[first], c.state_dict()[first])


def test_bad_config_and_input_raise():
    with pytest.raises(DetectorError, match="unknown encoder"):
        build_detector(replace(CPU, encoder="no_such_net"))
    with pytest.raises(DetectorError, match="output_stride"):
        build_detector(replace(CPU, output_stride=32))
    with pytest.raises(DetectorError, match=r"\(N, 3, H, W\)"):
        build_detector(SMALL)(torch.zeros(1, 4, 32, 32))
    with pytest.raises(DetectorError, match="RGB"):
        to_tensor(np.zeros((5, 5), dtype=np.uint8))


def test_checkpoint_round_trip(tmp_path, small_model):
    path = tmp_path / "detector.pt"
    save_checkpoint(path, small_model, {"iterations": 3, "note": "test"})
    loaded, metadata = load_checkpoint(path)
    assert metadata == {"iterations": 3, "note": "test"}
    assert loaded.config == SMALL
    assert not loaded.training
    for key, value in small_model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images = torch.rand(1, 3, 40, 40) * 255
    with torch.inference_mode():
        torch.testing.assert_close(small_model(images), loaded(images))
    with pytest.raises(OutputExistsError):
        save_checkpoint(path, small_model)


def test_corrupt_and_foreign_checkpoints_raise(tmp_path, small_model):
    with pytest.raises(DetectorError, match="no such detector checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DetectorError, match="not a readable detector checkpoint"):
        load_checkpoint(garbage)
    good = tmp_path / "good.pt"
    save_checkpoint(good, small_model)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DetectorError, match="not a readable detector checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(DetectorError, match="not a lnassist-detector/1 checkpoint"):
        load_checkpoint(foreign)


def test_checkpoint_with_mismatched_weights_raises(tmp_path, small_model):
    path = tmp_path / "mismatch.pt"
    save_checkpoint(path, small_model)
    payload = torch.load(path, weights_only=True)
    payload["config"]["decoder_channels"] = 48  # the weights are for 32 channels
    torch.save(payload, path)
    with pytest.raises(DetectorError, match="do not match"):
        load_checkpoint(path)
    del payload["config"]["encoder"]
    torch.save(payload, path)
    with pytest.raises(DetectorError, match="bad detector config"):
        load_checkpoint(path)


def test_config_from_dict_requires_every_field():
    raw = {"encoder": "resnet18", "output_stride": 16, "atrous_rates": [6, 12, 18], "decoder_channels": 64,
           "mpp": 7.36}
    assert DetectorConfig.from_dict(raw) == replace(CPU, decoder_channels=64)
    with pytest.raises(DetectorError):
        DetectorConfig.from_dict({**raw, "extra": 1})
