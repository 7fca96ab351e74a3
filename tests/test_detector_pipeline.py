"""The detector on a real (synthetic) slide file: manifest loading, ``detect_slide`` with a stub network
that returns the ground-truth mask, evaluation over a manifest, training into a checkpoint, and the
``detect`` / ``train-detector`` / ``evaluate-detector`` commands."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lnassist.commands.detector import add_cli
from lnassist.detector import DetectorError
from lnassist.detector.data import load_samples
from lnassist.detector.evaluate import evaluate_manifest
from lnassist.detector.grid import Grid
from lnassist.detector.infer import detect_slide, detection_to_json
from lnassist.detector.model import CPU, build_detector, load_checkpoint, save_checkpoint
from lnassist.detector.train import TrainConfig, train_from_manifest
from lnassist.fileio import OutputExistsError
from lnassist.slide import DETECTOR_MPP, open_slide, polygon_mask

SMALL = replace(CPU, decoder_channels=32)
TWO_ITERATIONS = TrainConfig(iterations=2, batch_size=2, crop_px=64, seed=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    """One synthetic slide (4000 x 3000 px at 0.46 um/px, one LN) listed as 'train' and 'val' in a
    manifest of the synth format; returns (manifest path, ground truth)."""
    from lnassist.synth.generate import write_slide
    from lnassist.synth.layout import LayoutConfig

    root = tmp_path_factory.mktemp("detector_data")
    gt = write_slide(root / "a.tiff", LayoutConfig(4000, 3000, seed=3, categories=("negative",)), workers=1)
    rows = [
        {"split": split, "slide": "a.tiff", "slide_id": f"{split}_a", "ln_id": node["id"],
         "contour": node["contour"], "label": node["label"], "mpp": gt["mpp"]}
        for split in ("train", "val") for node in gt["nodes"]
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, gt


class MaskNet(nn.Module):
    """Stub network: +-10 logits of a fixed mask whatever the image (the image must be one tile)."""

    def __init__(self, mask: np.ndarray) -> None:
        super().__init__()
        self.logits = torch.from_numpy(np.where(mask, 10.0, -10.0).astype(np.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2:] == self.logits.shape
        return self.logits[None, None].expand(x.shape[0], 1, *self.logits.shape)


def _truth(gt: dict) -> list[np.ndarray]:
    return [np.asarray(node["contour"]) for node in gt["nodes"]]


def _base_iou(polygons_a: list, polygons_b: list, width_base_px: int, height_base_px: int, mpp: float,
              base_mpp: float) -> float:
    width_px, height_px = round(width_base_px * base_mpp / mpp), round(height_base_px * base_mpp / mpp)

    def raster(polygons):
        mask = np.zeros((height_px, width_px), dtype=bool)
        for polygon in polygons:
            mask |= polygon_mask(np.asarray(polygon), 0, 0, width_px, height_px, mpp, base_mpp=base_mpp)
        return mask

    a, b = raster(polygons_a), raster(polygons_b)
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def test_load_samples_rasterises_the_contours(dataset):
    manifest, gt = dataset
    (sample,) = load_samples(manifest, ("train",))
    assert sample.image.shape == (188, 250, 3) and sample.mask.shape == (188, 250)
    assert sample.n_lns == 1
    assert sample.grid == Grid(250, 188, (16.0, 3000 / 188))
    # The LN is darker than the rest of the slide.
    assert sample.image[sample.mask].mean() < sample.image[~sample.mask].mean() - 20
    with pytest.raises(DetectorError, match="no rows"):
        load_samples(manifest, ("test",))


def test_detect_slide_with_a_ground_truth_stub_returns_the_ground_truth_contours(dataset):
    manifest, gt = dataset
    slide = open_slide(manifest.parent / "a.tiff")
    grid = Grid.of_slide(slide)
    truth = _truth(gt)
    detection = detect_slide(slide, MaskNet(grid.rasterise(truth)))
    assert len(detection.contours_base_px) == len(truth) == 1
    # Compared in base-level pixels at 4x the detector's resolution; the dilation and the pixel
    # centres move the outline by about half a detector pixel (measured IoU 0.984).
    iou = _base_iou(truth, detection.contours_base_px, slide.width_px, slide.height_px, DETECTOR_MPP / 4,
                    slide.base_mpp)
    assert iou > 0.95
    report = json.loads(json.dumps(detection_to_json(detection, slide="a.tiff")))
    assert report["n_lns"] == 1 and report["slide"] == "a.tiff"
    np.testing.assert_allclose(report["lns"][0]["contour"], detection.contours_base_px[0], atol=0.005)
    assert report["base_px_per_detector_px"] == [16.0, 3000 / 188]


def test_evaluate_manifest_with_stubs(dataset):
    manifest, gt = dataset
    (sample,) = load_samples(manifest, ("val",))
    perfect = evaluate_manifest(manifest, MaskNet(sample.mask), split="val")
    assert perfect["split"] == "val" and perfect["summary"]["n_slides"] == 1
    summary = perfect["summary"]
    assert summary["mask_iou_pooled"] == 1.0 and summary["mask_pixel_accuracy"] == 1.0
    assert 0.9 < summary["postprocessed_iou_pooled"] < 1.0  # the dilation adds a ring of pixels
    assert summary["count_error_mean_abs"] == 0.0 and summary["count_exact_fraction"] == 1.0

    empty = evaluate_manifest(manifest, MaskNet(np.zeros_like(sample.mask)), split="val")["summary"]
    assert empty["mask_iou_pooled"] == 0.0
    assert empty["mask_pixel_accuracy"] == pytest.approx(1 - sample.mask.mean())
    assert empty["count_error_mean"] == -1.0
    json.dumps(perfect)


def test_train_from_manifest_writes_a_checkpoint_with_metadata(dataset, tmp_path):
    manifest, _ = dataset
    out = tmp_path / "detector.pt"
    metadata = train_from_manifest(manifest, out, SMALL, TWO_ITERATIONS, log_every=0)
    model, saved = load_checkpoint(out)
    assert saved == metadata
    assert saved["train_config"]["iterations"] == 2 and saved["n_train_slides"] == 1
    assert saved["val_report"]["n_slides"] == 1
    assert model.config == SMALL
    with pytest.raises(OutputExistsError, match="already exists"):
        train_from_manifest(manifest, out, SMALL, TWO_ITERATIONS)


def test_train_from_manifest_goes_on_from_a_checkpoint(dataset, tmp_path):
    """--init-weights: the checkpoint's architecture replaces the preset's and its path is recorded."""
    manifest, _ = dataset
    start = tmp_path / "start.pt"
    save_checkpoint(start, build_detector(SMALL, seed=5))
    out = tmp_path / "continued.pt"
    metadata = train_from_manifest(manifest, out, CPU, TWO_ITERATIONS, log_every=0, init_weights=start)
    model, saved = load_checkpoint(out)
    assert model.config == SMALL and saved["init_weights"] == str(start)
    fresh = train_from_manifest(manifest, tmp_path / "new.pt", SMALL, TWO_ITERATIONS, log_every=0)
    assert fresh["init_weights"] is None
    assert metadata == saved
    args = ["train-detector", str(manifest), "--out", str(tmp_path / "x.pt"), "--init-weights", str(start)]
    with pytest.raises(DetectorError, match="fix the architecture"):
        _run([*args, "--encoder", "mobilenet_v2"])


def test_train_from_several_manifests_pools_their_slides(dataset, tmp_path):
    """Data sets of different looks train one detector: every manifest's train slides are drawn from,
    and the held-out slides of those that have any are scored (a training-only data set has none)."""
    manifest, _ = dataset
    extra = tmp_path / "extra" / "manifest.jsonl"  # a second, training-only data set of the same slide
    extra.parent.mkdir()
    (extra.parent / "a.tiff").write_bytes((manifest.parent / "a.tiff").read_bytes())
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    extra.write_text("".join(json.dumps(r) + "\n" for r in rows if r["split"] == "train"))
    out = tmp_path / "pooled.pt"
    metadata = train_from_manifest([manifest, extra], out, SMALL, TWO_ITERATIONS, log_every=0)
    assert metadata["trained_on"] == [str(manifest), str(extra)]
    assert metadata["n_train_slides"] == 2 and metadata["val_report"]["n_slides"] == 1
    with pytest.raises(DetectorError, match="no manifest"):
        train_from_manifest([], tmp_path / "none.pt", SMALL, TWO_ITERATIONS)


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_commands(dataset, tmp_path, capsys):
    manifest, _ = dataset
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, build_detector(SMALL, seed=0), {"note": "random"})
    out = tmp_path / "detections.json"
    mask_png = tmp_path / "mask.png"
    slide = manifest.parent / "a.tiff"
    argv = ["detect", str(slide), "--weights", str(weights), "--out", str(out), "--mask-png", str(mask_png),
            "--threads", "1"]
    assert _run(argv) == 0
    detections = json.loads(out.read_text())
    assert detections["format"] == "lnassist-detections/1" and detections["weights"] == str(weights)
    assert detections["detector_grid_px"] == [250, 188] and detections["base_mpp"] == pytest.approx(0.46)
    mask = cv2.imread(str(mask_png), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (188, 250) and set(np.unique(mask)) <= {0, 255}
    with pytest.raises(OutputExistsError, match="already exists"):
        _run(argv)
    # An existing mask PNG is refused before anything runs: no new JSON, the old mask untouched.
    before = mask_png.read_bytes()
    other_out = tmp_path / "other.json"
    with pytest.raises(OutputExistsError, match="mask.png already exists"):
        _run([*argv[:4], "--out", str(other_out), *argv[6:]])
    assert not other_out.exists() and mask_png.read_bytes() == before

    report = tmp_path / "report.json"
    assert _run(["evaluate-detector", str(manifest), "--weights", str(weights), "--split", "val",
                 "--out", str(report)]) == 0
    assert json.loads(report.read_text())["summary"]["n_slides"] == 1

    trained = tmp_path / "trained.pt"
    assert _run(["train-detector", str(manifest), "--out", str(trained), "--iterations", "1",
                 "--batch-size", "2", "--crop-px", "64", "--evaluate-split", ""]) == 0
    _, metadata = load_checkpoint(trained)
    assert metadata["train_config"]["iterations"] == 1 and "val_report" not in metadata
    assert "wrote" in capsys.readouterr().out

    with pytest.raises(DetectorError, match="not a readable"):
        bad = tmp_path / "bad.pt"
        bad.write_text("not a checkpoint")
        _run(["detect", str(slide), "--weights", str(bad)])
