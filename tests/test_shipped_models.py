"""The shipped models reproduce their model cards: regenerate the held-out test split, run evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lnassist.__main__ import main
from lnassist.registry import load_registry, models_dir, resolve

# The data set command of the cards, test split only (slide seeds do not depend on the other splits).
DATA_ARGS = ["--seed", "0", "--n-train", "0", "--n-val", "0", "--n-test", "12", "--workers", "2"]


@pytest.mark.slow
def test_evaluate_reproduces_the_model_cards(tmp_path: Path) -> None:
    registry = load_registry(models_dir())
    assert main(["synth-dataset", str(tmp_path / "data"), *DATA_ARGS]) == 0
    detector, _ = resolve("detector")
    classifier, entry = resolve("classifier")
    out = tmp_path / "report"
    argv = [
        "evaluate",
        str(tmp_path / "data" / "manifest.jsonl"),
        "--split",
        "test",
        "--classifier",
        f"{entry.id}={classifier}",
        "--detector",
        str(detector),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    from lnassist.evaluate import headline

    got = headline(report)
    for e in registry.models:
        if e.id in registry.defaults.values():
            card = e.summary["detector"] if e.kind == "detector" else e.summary[e.id]
            mine = got["detector"] if e.kind == "detector" else got[e.id]
            for key, value in card.items():
                if value is None:  # a statistic the split cannot give (e.g. slide level, one class)
                    assert mine[key] is None, (e.id, key)
                else:
                    assert mine[key] == pytest.approx(value, abs=1e-6), (e.id, key)


SCANNED_DETECTOR = "detector-cpu-scanned-v2"
SKIN_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu_small_region.svs"


@pytest.mark.slow
def test_the_scanned_detector_reproduces_its_card(tmp_path: Path) -> None:
    """The scanned-look detector's card numbers come back from its test split regenerated."""
    weights, entry = resolve("detector", SCANNED_DETECTOR)
    assert main(["synth-dataset", str(tmp_path / "data"), *DATA_ARGS, "--look", "scanned"]) == 0
    out = tmp_path / "det.json"
    argv = [
        "evaluate-detector",
        str(tmp_path / "data" / "manifest.jsonl"),
        "--weights",
        str(weights),
        "--split",
        "test",
        "--out",
        str(out),
        "--threads",
        "2",
    ]
    assert main(argv) == 0
    got = json.loads(out.read_text())["summary"]
    card = entry.summary["detector"]
    assert set(card) >= {"postprocessed_iou_pooled", "outlined_iou_pooled", "count_error_mean_abs"}
    for key, value in card.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key


def test_the_scanned_detector_finds_no_lymph_node_in_real_skin(tmp_path: Path) -> None:
    """A real Aperio skin excision holds no lymph node: the detector trained with extranodal tissue
    (skin, muscle, fat) must not outline its dermis as one, as the earlier detectors do."""
    if not SKIN_SLIDE.is_file():
        pytest.fail(f"the shared real slide is missing: {SKIN_SLIDE}")
    weights, _ = resolve("detector", SCANNED_DETECTOR)
    out = tmp_path / "skin.json"
    assert (
        main(["detect", str(SKIN_SLIDE), "--weights", str(weights), "--out", str(out), "--threads", "2"]) == 0
    )
    assert json.loads(out.read_text())["n_lns"] == 0
