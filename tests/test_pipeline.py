"""``lnassist analyze`` / lnassist.pipeline with the shipped models: outputs, regions, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lnassist.__main__ import main
from lnassist.annotations import validate_document
from lnassist.pipeline import AnalysisConfig, PipelineError, analyze, clip_region
from lnassist.slide import open_slide
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

WIDTH_PX, HEIGHT_PX = 9000, 5200  # a micrometastatic node needs a 2.3 mm short side
SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu_small_region.svs"
OUTPUTS = ("ln-annotation.json", "heatmap-annotation.json", "summary.json", "overlay.png")


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pipeline")
    layout = LayoutConfig(WIDTH_PX, HEIGHT_PX, seed=11, categories=("negative", "micro"))
    gt = write_slide(root / "s.tiff", layout, workers=1)
    return root / "s.tiff", gt


def _iou_best(contour: np.ndarray, truths: list[np.ndarray], shape: tuple[int, int]) -> float:
    import cv2

    def raster(poly: np.ndarray) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        cv2.fillPoly(mask, [np.round(poly / 8).astype(np.int32)], 1)
        return mask.astype(bool)

    a = raster(contour)
    return max((a & raster(t)).sum() / (a | raster(t)).sum() for t in truths)


def test_analyze_finds_the_lns_and_writes_every_output(slide: tuple[Path, dict], tmp_path: Path) -> None:
    path, gt = slide
    out = tmp_path / "out"
    assert main(["analyze", str(path), "--out", str(out), "--threads", "2"]) == 0
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    truths = [np.asarray(n["contour"]) for n in gt["nodes"]]
    assert summary["counts"]["lns"] == len(truths)
    ln_doc = json.loads((out / "ln-annotation.json").read_text())
    heat_doc = json.loads((out / "heatmap-annotation.json").read_text())
    validate_document(ln_doc)
    validate_document(heat_doc)
    assert ln_doc["attributes"]["counts"] == summary["counts"]
    shape = (HEIGHT_PX // 8 + 1, WIDTH_PX // 8 + 1)
    for element in ln_doc["elements"]:
        contour = np.asarray(element["points"])[:, :2]
        assert _iou_best(contour, truths, shape) > 0.85
    assert {e["type"] for e in heat_doc["elements"]} == {"griddata"}
    assert (out / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    # Refused when the outputs exist: nothing is replaced.
    before = (out / "summary.json").read_bytes()
    assert main(["analyze", str(path), "--out", str(out)]) == 2
    assert (out / "summary.json").read_bytes() == before


def test_screening_threshold_and_region(slide: tuple[Path, dict]) -> None:
    path, gt = slide
    general = analyze(open_slide(path), AnalysisConfig(mode="general", cam=False))
    screening = analyze(open_slide(path), AnalysisConfig(mode="screening", cam=False))
    assert general.threshold == 0.4 and screening.threshold == 0.15
    assert [ln.score for ln in general.lns] == pytest.approx([ln.score for ln in screening.lns])
    assert [ln.positive for ln in screening.lns] == [ln.score >= 0.15 for ln in screening.lns]
    # A region around the first ground-truth LN's bounding box keeps that LN only.
    x0, y0, x1, y1 = gt["nodes"][0]["bbox"]
    region = (x0 - 50, y0 - 50, x1 - x0 + 100, y1 - y0 + 100)
    inside = analyze(open_slide(path), AnalysisConfig(region_base_px=region, cam=False))
    assert len(inside.lns) == 1 and inside.region_base_px is not None
    xs, ys = inside.lns[0].contour_base_px[:, 0], inside.lns[0].contour_base_px[:, 1]
    assert xs.min() >= region[0] - 8 and xs.max() <= region[0] + region[2] + 8
    assert ys.min() >= region[1] - 8 and ys.max() <= region[1] + region[3] + 8


def test_a_slide_at_another_base_resolution_is_resampled_and_answered_in_its_own_pixels(
    tmp_path: Path,
) -> None:
    """A 0.25 um/px (40x-class) slide: the models still see 7.36 / 0.46 um/px, and every coordinate
    that comes back is in this slide's base pixels (contours on the true LNs, CAM cells 0.46/0.25
    times as many base pixels apart as on a 20x slide)."""
    mpp = 0.25
    layout = LayoutConfig(8000, 5000, seed=5, mpp=mpp, categories=("negative",))
    gt = write_slide(tmp_path / "s40.tiff", layout, workers=1)
    # The detector trained for softer 1.25x images (a 40x slide's are; models/detector-cpu-scanned-v6.md).
    config = AnalysisConfig(mode="general", detector="detector-cpu-scanned-v6")
    analysis = analyze(open_slide(tmp_path / "s40.tiff"), config)
    assert analysis.base_mpp == pytest.approx(mpp) and analysis.size_base_px == (8000, 5000)
    truths = [np.asarray(n["contour"]) for n in gt["nodes"]]
    assert len(analysis.lns) == len(truths)
    for ln in analysis.lns:
        assert _iou_best(ln.contour_base_px, truths, (5000 // 8 + 1, 8000 // 8 + 1)) > 0.85
        # CAM cells: the classifier's stride in its 0.46 um/px pixels, expressed in base pixels (the
        # LN's read is sized in whole pixels, so its scale may differ from 0.46 / 0.25 by < 0.1 %).
        stride_px = ln.cam.dx_base_px * mpp / 0.46
        assert stride_px == pytest.approx(round(stride_px), rel=1e-3) and round(stride_px) >= 1
        assert ln.cam.dy_base_px == pytest.approx(ln.cam.dx_base_px)
        assert np.isfinite(ln.cam.values).any()


def test_a_real_aperio_slide_runs_end_to_end(tmp_path: Path) -> None:
    """The real scanner file (skin, no LN): opened through large_image at its own resolution, the
    outputs valid whatever is found there."""
    if not SVS.is_file():
        pytest.fail(f"the shared real slide is missing: {SVS}")
    out = tmp_path / "out"
    assert main(["analyze", str(SVS), "--out", str(out), "--threads", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["base_mpp"] == pytest.approx(0.499, abs=0.01)
    ln_doc = json.loads((out / "ln-annotation.json").read_text())
    validate_document(ln_doc)
    validate_document(json.loads((out / "heatmap-annotation.json").read_text()))
    assert ln_doc["attributes"]["counts"]["lns"] == summary["counts"]["lns"] == len(ln_doc["elements"])


def test_region_validation() -> None:
    assert clip_region((-1, -1, -1, -1), 100, 100) is None
    assert clip_region((-10, 20, 50, 500), 100, 100) == (0, 20, 40, 80)
    with pytest.raises(PipelineError, match="outside"):
        clip_region((200, 0, 10, 10), 100, 100)
    with pytest.raises(PipelineError, match="positive width"):
        clip_region((0, 0, 0, 10), 100, 100)
    with pytest.raises(PipelineError, match="mode"):
        AnalysisConfig(mode="fast")
    with pytest.raises(PipelineError, match="threshold"):
        AnalysisConfig(threshold=1.5)


def test_blank_slide_is_a_valid_empty_result(tmp_path: Path) -> None:
    blank = tmp_path / "blank.tiff"
    tifffile.imwrite(
        blank,
        np.full((2048, 2048, 3), 245, np.uint8),
        tile=(256, 256),
        photometric="rgb",
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )
    out = tmp_path / "out"
    assert main(["analyze", str(blank), "--out", str(out), "--mpp", "0.5"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"lns": 0, "positive": 0, "negative": 0}
    assert "no lymph node" in summary["message"]
    doc = json.loads((out / "ln-annotation.json").read_text())
    assert doc["elements"] == [] and doc["attributes"]["counts"]["lns"] == 0


@pytest.mark.parametrize("case", ["missing", "text", "no_mpp", "region", "corrupt_model", "unknown_model"])
def test_bad_input_fails_cleanly(
    case: str,
    slide: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, _ = slide
    args = ["analyze", str(path), "--out", str(tmp_path / "out")]
    expected = {
        "missing": "no such file",
        "text": "",
        "no_mpp": "--mpp",
        "region": "outside",
        "corrupt_model": "corrupt or was replaced",
        "unknown_model": "no classifier 'nope'",
    }[case]
    if case == "missing":
        args[1] = str(tmp_path / "none.svs")
    elif case == "text":
        (tmp_path / "notes.svs").write_text("not a slide\n" * 100)
        args[1] = str(tmp_path / "notes.svs")
    elif case == "no_mpp":
        tifffile.imwrite(tmp_path / "plain.tiff", np.full((512, 512, 3), 200, np.uint8), photometric="rgb")
        args[1] = str(tmp_path / "plain.tiff")
    elif case == "region":
        args += ["--region", "100000,100000,10,10"]
    elif case == "corrupt_model":
        from lnassist.registry import models_dir

        models = tmp_path / "models"
        shutil.copytree(models_dir(), models)
        registry = json.loads((models / "registry.json").read_text())
        default = registry["defaults"]["classifier"]  # the one analyze loads
        target = models / next(m["file"] for m in registry["models"] if m["id"] == default)
        data = bytearray(target.read_bytes())
        data[100] ^= 0xFF
        target.write_bytes(bytes(data))
        monkeypatch.setenv("LNASSIST_MODELS", str(models))
    elif case == "unknown_model":
        args += ["--classifier", "nope"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("lnassist analyze: error:") and expected in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cam_grid_places_cells_on_the_slide_and_masks_outside_the_ln() -> None:
    """The classifier's CAM in base pixels: cell geometry from the streaming plan, NaN outside."""
    from types import SimpleNamespace

    import torch

    from lnassist.classifier import cam_grid

    rows, cols = 40, 50
    scores = torch.rand(2, rows, cols, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cam = SimpleNamespace(scores=scores, stride_px=(16, 16), origin_px=(7.5, 7.5))
    angle = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    centre, radius = np.array([1000 + 800.0, 3000 + 600.0]), 500.0
    circle = centre + radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    source = SimpleNamespace(base_px_per_px=2.0, origin_base_px=(1000, 3000), polygons_base_px=[circle])
    grid = cam_grid(cam, source)
    # Cell (0, 0) is centred on canvas pixel 7.5 -> base 1000 + 8 * 2; cells are 16 canvas px = 32 base px.
    assert grid.origin_base_px == (1016.0, 3016.0) and (grid.dx_base_px, grid.dy_base_px) == (32.0, 32.0)
    xs = grid.origin_base_px[0] + np.arange(cols) * 32.0
    ys = grid.origin_base_px[1] + np.arange(rows) * 32.0
    distance = np.hypot(xs[None, :] - centre[0], ys[:, None] - centre[1])
    clear = np.abs(distance - radius) > 2  # away from the (polygonal) outline
    assert np.array_equal(np.isnan(grid.values)[clear], (distance > radius)[clear])
    inside = ~np.isnan(grid.values)
    assert np.array_equal(grid.values[inside], scores[1].numpy()[inside])
