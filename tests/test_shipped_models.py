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
    argv = ["evaluate", str(tmp_path / "data" / "manifest.jsonl"), "--split", "test", "--classifier",
            f"{entry.id}={classifier}", "--detector", str(detector), "--out", str(out), "--no-progress"]
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
