"""Classifier checkpoints and ``lnassist evaluate``: files, scores, statistics, comparisons, plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from training_helpers import build_tiny_dataset

from lnassist.classifier import (
    ClassifierError,
    ClassifierSpec,
    load_classifier,
    new_classifier,
    save_classifier,
    score_source,
)
from lnassist.commands import main
from lnassist.metrics import delong_test
from lnassist.training.data import images_from_manifest, open_image


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny_eval"))


def test_checkpoint_round_trip_and_bad_files(tmp_path: Path) -> None:
    clf = new_classifier(ClassifierSpec(backbone="tiny", mpp=1.84), seed=1)
    clf.metadata = {"note": "x"}
    path = tmp_path / "c.pt"
    save_classifier(path, clf)
    loaded = load_classifier(path)
    assert loaded.spec == clf.spec and loaded.metadata == {"note": "x"}
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in clf.model.state_dict().items())
    assert not loaded.model.training
    with pytest.raises(Exception, match="already exists"):
        save_classifier(path, clf)
    (tmp_path / "junk.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ClassifierError, match="not a readable classifier checkpoint"):
        load_classifier(tmp_path / "junk.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ClassifierError, match="not a lnassist-classifier/1 checkpoint"):
        load_classifier(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["spec"]["backbone"] = "resnet18"
    torch.save(payload, tmp_path / "mismatch.pt")
    with pytest.raises(ClassifierError, match="weights do not match the resnet18"):
        load_classifier(tmp_path / "mismatch.pt")
    with pytest.raises(ClassifierError, match="no such classifier checkpoint file"):
        load_classifier(tmp_path / "missing.pt")
    with pytest.raises(ClassifierError, match="unknown method"):
        ClassifierSpec(method="svm")


def _write_scores(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["key", "slide_id", "category", "label", "score"])
        writer.writeheader()
        writer.writerows(rows)


def _rows(rng: np.random.Generator, noise: float) -> list[dict]:
    cats = ["negative"] * 12 + ["negative_mimic"] * 4 + ["itc"] * 6 + ["micro"] * 6 + ["macro"] * 2
    rows = []
    for i, cat in enumerate(cats):
        label = int(cat in ("itc", "micro", "macro"))
        score = float(np.clip(0.5 * label + 0.25 + rng.normal(0, noise), 0, 1))
        rows.append(
            {
                "key": f"s{i // 3}/{i}",
                "slide_id": f"s{i // 3}",
                "category": cat,
                "label": label,
                "score": score,
            }
        )
    return rows


def test_evaluate_from_score_tables(manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    a, b = _rows(rng, 0.3), _rows(rng, 0.45)
    _write_scores(tmp_path / "a.csv", a)
    _write_scores(tmp_path / "b.csv", b)
    out = tmp_path / "report"
    argv = [
        "evaluate",
        str(manifest),
        "--scores",
        f"good={tmp_path / 'a.csv'}",
        "--scores",
        f"noisy={tmp_path / 'b.csv'}",
        "--out",
        str(out),
        "--n-boot",
        "200",
    ]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    ya, sa = [r["label"] for r in a], [r["score"] for r in a]
    sb = [r["score"] for r in b]
    good = report["models"]["good"]["metrics"]
    assert good["ln"]["all"]["auc"]["auc"] == pytest.approx(roc_auc_score(ya, sa), abs=1e-12)
    itc = [i for i, r in enumerate(a) if r["category"] in ("negative", "negative_mimic", "itc")]
    assert good["ln"]["itc"]["auc"]["auc"] == pytest.approx(
        roc_auc_score([ya[i] for i in itc], [sa[i] for i in itc]), abs=1e-12
    )
    comparison = report["comparisons"][0]
    expected = delong_test(ya, sa, sb)
    assert (comparison["a"], comparison["b"]) == ("good", "noisy")
    assert comparison["ln"]["p_value"] == pytest.approx(expected.p_value, abs=1e-12)
    for tag in ("ln", "itc", "micro", "slide"):
        png = out / f"roc-{tag}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "good: ln_auc" in capsys.readouterr().out
    assert main(argv) == 2  # report exists: refused, nothing replaced
    assert json.loads((out / "report.json").read_text()) == report
    _write_scores(tmp_path / "c.csv", a[:-1])
    bad = [
        "evaluate",
        str(manifest),
        "--scores",
        f"x={tmp_path / 'a.csv'}",
        "--scores",
        f"y={tmp_path / 'c.csv'}",
        "--out",
        str(tmp_path / "r2"),
    ]
    assert main(bad) == 2
    assert not (tmp_path / "r2" / "report.json").exists()
    assert main(["evaluate", str(manifest), "--out", str(tmp_path / "r3")]) == 2


def test_evaluate_scores_a_classifier_on_ground_truth_contours(manifest: Path, tmp_path: Path) -> None:
    clf = new_classifier(ClassifierSpec(backbone="tiny", mpp=1.84), seed=2)
    save_classifier(tmp_path / "c.pt", clf)
    out = tmp_path / "report"
    argv = [
        "evaluate",
        str(manifest),
        "--split",
        "val",
        "--classifier",
        f"c={tmp_path / 'c.pt'}",
        "--out",
        str(out),
        "--n-boot",
        "100",
        "--no-progress",
    ]
    # The validation split has one positive LN: DeLong needs two of each, so the report is refused clearly.
    assert main(argv) == 2
    assert not out.exists() or not any(out.iterdir())
    train = [
        "evaluate",
        str(manifest),
        "--split",
        "train",
        "--classifier",
        f"c={tmp_path / 'c.pt'}",
        "--out",
        str(out),
        "--n-boot",
        "100",
        "--no-progress",
    ]
    assert main(train) == 0
    with open(out / "scores-c.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = images_from_manifest(manifest, "train")
    assert [r["key"] for r in rows] == [im.key for im in images]
    for row, image in zip(rows, images, strict=True):
        direct = score_source(clf, open_image(image, 1.84)).score
        assert float(row["score"]) == pytest.approx(direct, abs=1e-9)
        assert int(row["label"]) == image.label
