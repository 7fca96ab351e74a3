"""The shipped models reproduce their model cards: regenerate the held-out test split, run evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lnassist.__main__ import main
from lnassist.registry import load_registry, models_dir, resolve

# The data set command of the cards, test split only (slide seeds do not depend on the other splits).
DATA_ARGS = ["--seed", "0", "--n-train", "0", "--n-val", "0", "--n-test", "12", "--workers", "2"]
# The detector the classifier cards were measured with, on the "vector" look of that split.
CLASSIFIER_CARD_DETECTOR = "detector-cpu-v1"
SCANNED_DETECTORS = ("detector-cpu-scanned-v2",)
SKIN_SLIDE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cmu_small_region.svs"


@pytest.mark.slow
def test_evaluate_reproduces_the_classifier_cards(tmp_path: Path) -> None:
    """The default classifier's card and that of the detector it was scored with, on the vector split."""
    registry = load_registry(models_dir())
    assert main(["synth-dataset", str(tmp_path / "data"), *DATA_ARGS, "--look", "vector"]) == 0
    detector, detector_entry = resolve("detector", CLASSIFIER_CARD_DETECTOR)
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
    assert entry.id == registry.defaults["classifier"]
    for e, card, mine in (
        (entry, entry.summary[entry.id], got[entry.id]),
        (detector_entry, detector_entry.summary["detector"], got["detector"]),
        (entry, entry.summary["detector"], got["detector"]),
    ):
        for key, value in card.items():
            if value is None:  # a statistic the split cannot give (e.g. slide level, one class)
                assert mine[key] is None, (e.id, key)
            else:
                assert mine[key] == pytest.approx(value, abs=1e-6), (e.id, key)


@pytest.fixture(scope="module")
def scanned_test_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scanned detectors' card split, regenerated (the default look)."""
    data = tmp_path_factory.mktemp("scanned") / "data"
    assert main(["synth-dataset", str(data), *DATA_ARGS]) == 0
    assert json.loads((data / "dataset.json").read_text())["config"]["look"] == "scanned"
    return data / "manifest.jsonl"


@pytest.mark.slow
@pytest.mark.parametrize("detector", SCANNED_DETECTORS)
def test_the_scanned_detectors_reproduce_their_cards(scanned_test_split: Path, detector: str, tmp_path: Path):
    """The scanned-look detectors' card numbers come back from their test split regenerated."""
    weights, entry = resolve("detector", detector)
    out = tmp_path / "det.json"
    argv = [
        "evaluate-detector",
        str(scanned_test_split),
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


def test_the_default_detector_finds_no_lymph_node_in_real_skin(tmp_path: Path) -> None:
    """A real Aperio skin excision holds no lymph node: the default detector, trained with extranodal
    tissue (skin, muscle, fat), must not outline its dermis as one, as the vector-look detector does."""
    if not SKIN_SLIDE.is_file():
        pytest.fail(f"the shared real slide is missing: {SKIN_SLIDE}")
    weights, entry = resolve("detector")
    assert entry.id in SCANNED_DETECTORS
    out = tmp_path / "skin.json"
    assert (
        main(["detect", str(SKIN_SLIDE), "--weights", str(weights), "--out", str(out), "--threads", "2"]) == 0
    )
    assert json.loads(out.read_text())["n_lns"] == 0
