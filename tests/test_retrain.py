"""Retraining on reviewed annotations: the split by source slide, a real short retrain and its files,
the candidate record's schema and the promotion gate."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from training_helpers import COLLECTED_SLIDES, COLLECTED_TRANSITION, build_collected_dataset

from lnassist.classifier import ClassifierSpec, load_classifier, new_classifier, save_classifier
from lnassist.collect import CollectError
from lnassist.commands import main
from lnassist.constants import THRESHOLDS
from lnassist.evaluate import score_split
from lnassist.manifest import MANIFEST_NAME, read_manifest
from lnassist.promotion import CANDIDATE_FORMAT, DEFAULT_TOLERANCE, RecordError, check_record, gate
from lnassist.registry import ModelEntry, register, resolve, sha256_of
from lnassist.retrain import RetrainError, read_transition, retrain, source_item, split_by_source
from lnassist.training.config import CPU

# The parent: the tiny trunk at 5x (LN images of a few hundred px), so a retrain takes seconds.
PARENT_SPEC = ClassifierSpec(backbone="tiny", mpp=1.84)
TILE_PX = 256


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_collected_dataset(tmp_path_factory.mktemp("collected"))


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("parent") / "parent.pt"
    save_classifier(path, new_classifier(PARENT_SPEC, seed=7))
    return path


@pytest.fixture(scope="module")
def run(collected: Path, parent: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("retrain") / "candidate"
    calls: list[tuple] = []
    record = retrain(
        collected,
        parent,
        out,
        parent_ref={"id": "classifier-test", "version": "3", "sha256": sha256_of(parent)},
        dataset_ref={"snapshot": "snapshot-test"},
        epochs=1,
        tile_px=TILE_PX,
        use_transition=True,
        progress=lambda *args: calls.append(args),
    )
    return {"record": record, "out": out, "calls": calls}


def _rows(labels_by_item: dict[str, list[int]]) -> list[dict[str, Any]]:
    return [
        {"slide_id": f"{item}:{i}", "source_item": item, "label": label}
        for item, labels in labels_by_item.items()
        for i, label in enumerate(labels)
    ]


# ------------------------------------------------------------------------------------------- split


def test_split_keeps_each_source_slide_whole_and_is_deterministic(collected: Path) -> None:
    rows = read_manifest(collected / MANIFEST_NAME)
    items = {item for item, _, _ in COLLECTED_SLIDES}
    splits = [split_by_source(rows, seed, 0.34) for seed in range(8)]
    assert splits[3] == split_by_source(rows, 3, 0.34)
    assert len(set(splits)) > 1  # the seed decides
    for split in splits:
        assert set(split.train_items) | set(split.heldout_items) == items
        assert not set(split.train_items) & set(split.heldout_items)
        assert len(split.heldout_items) == 2  # round(0.34 * 5)
        # Every seed finds held-out LNs with two of each class (an AUC) and both classes to train on.
        for part, least in ((split.heldout_items, 2), (split.train_items, 1)):
            labels = [r["label"] for r in rows if r["source_item"] in part]
            assert min(labels.count(0), labels.count(1)) >= least
    # Rows without a source item are their own source.
    bare = [{k: v for k, v in r.items() if k != "source_item"} for r in rows]
    assert source_item(bare[0]) == bare[0]["slide_id"]
    assert len(split_by_source(bare, 0, 0.34).heldout_items) == round(0.34 * len(rows))


def test_split_keeps_both_classes_for_training() -> None:
    # Only slide a has positives: it is never held out, whatever the seed.
    rows = _rows({"a": [1, 0], "b": [0], "c": [0, 0]})
    for seed in range(6):
        assert "a" in split_by_source(rows, seed, 0.5).train_items


def test_split_errors() -> None:
    with pytest.raises(RetrainError, match="at least 2 source slides .* got 1: a"):
        split_by_source(_rows({"a": [0, 1, 1]}), 0, 0.34)
    with pytest.raises(RetrainError, match="all 3 reviewed LNs are negative"):
        split_by_source(_rows({"a": [0, 0], "b": [0]}), 0, 0.34)
    with pytest.raises(RetrainError, match="no way to hold out 1 of the 2 source slides"):
        split_by_source(_rows({"a": [1, 1], "b": [0]}), 0, 0.34)
    with pytest.raises(RetrainError, match=r"heldout_fraction must lie in \(0, 1\)"):
        split_by_source(_rows({"a": [1, 0], "b": [0]}), 0, 1.0)


# ------------------------------------------------------------------------------------------ retrain


def test_retrain_writes_a_loadable_float16_candidate_and_its_record(
    run: dict[str, Any], collected: Path, parent: Path
) -> None:
    record, out = run["record"], run["out"]
    check_record(record)
    assert json.loads((out / "candidate.json").read_text()) == record
    weights = out / record["model"]["file"]
    assert record["model"]["sha256"] == sha256_of(weights)
    assert record["parent"] == {"id": "classifier-test", "version": "3", "sha256": sha256_of(parent)}
    assert record["dataset"] == {"snapshot": "snapshot-test"}
    raw = torch.load(weights, weights_only=True)
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    candidate = load_classifier(weights)
    assert candidate.spec == PARENT_SPEC
    # Fine-tuned: weights moved from the parent's (compared at the file's float16 precision).
    start = load_classifier(parent).model.state_dict()
    now = candidate.model.state_dict()
    assert any(not torch.equal(v.half().float(), now[k]) for k, v in start.items() if v.is_floating_point())
    assert (record["model"]["backbone"], record["model"]["mpp"]) == ("tiny", 1.84)
    # Registrable as a model like the shipped ones.
    register(ModelEntry("candidate", "classifier", weights.name, record["model"]["sha256"], "4"), out)
    assert resolve("classifier", folder=out)[0] == weights
    # One progress call per epoch, with the epoch's log row.
    history = record["training"]["history"]
    assert [call[:2] for call in run["calls"]] == [(1, 1)] and run["calls"][0][2] == history[0]
    assert record["training"]["epochs"] == 1 and history[0]["epoch"] == 1
    config = record["training"]["config"]
    assert config["lr"] == CPU.reduced_lr and config["max_epochs"] == 1 and config["tile_px"] == TILE_PX
    assert config["transition"] == COLLECTED_TRANSITION and config["init_checkpoint"] == str(parent)
    assert record["tolerance"] == DEFAULT_TOLERANCE


def test_retrain_splits_by_source_as_split_by_source_does(run: dict[str, Any], collected: Path) -> None:
    record, out = run["record"], run["out"]
    rows = read_manifest(collected / MANIFEST_NAME)
    expected = split_by_source(rows, 0, 0.34)
    split = record["split"]
    assert (split["train_items"], split["heldout_items"]) == (
        list(expected.train_items),
        list(expected.heldout_items),
    )
    moved = read_manifest(out / "split-manifest.jsonl")
    for row in moved:
        assert row["split"] == ("heldout" if row["source_item"] in expected.heldout_items else "train")
        assert Path(row["slide"]).is_absolute() and Path(row["slide"]).is_file()
    heldout = [r for r in moved if r["split"] == "heldout"]
    assert split["n_heldout_ln"] == len(heldout) and split["n_train_ln"] == len(moved) - len(heldout)
    assert split["n_heldout_positive"] == sum(r["label"] for r in heldout)


def test_record_metrics_match_a_recomputation(run: dict[str, Any]) -> None:
    record, out = run["record"], run["out"]
    with open(out / "heldout-scores.csv", newline="") as f:
        table = list(csv.DictReader(f))
    labels = np.array([int(r["label"]) for r in table])
    scores = {m: np.array([float(r[f"{m}_score"]) for r in table]) for m in ("parent", "candidate")}
    # The candidate's scores are the weights file's: scoring it afresh gives them again.
    again = score_split(load_classifier(out / "candidate.pt"), out / "split-manifest.jsonl", "heldout")
    assert [r["key"] for r in again] == [r["key"] for r in table]
    assert np.allclose([r["score"] for r in again], scores["candidate"], rtol=0, atol=1e-9)
    for name, s in scores.items():
        m = record["heldout"][name]
        assert (m["n"], m["n_positive"]) == (len(labels), int(labels.sum()))
        assert m["auc"] == pytest.approx(roc_auc_score(labels, s), abs=1e-12)
        assert m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]
        for mode, threshold in THRESHOLDS.items():
            called = s >= threshold
            assert m["thresholds"][mode] == {
                "threshold": threshold,
                "sensitivity": pytest.approx(called[labels == 1].mean()),
                "specificity": pytest.approx((~called[labels == 0]).mean()),
            }
    delong = record["heldout"]["delong"]
    difference = record["heldout"]["candidate"]["auc"] - record["heldout"]["parent"]["auc"]
    assert delong["auc_difference"] == pytest.approx(difference, abs=1e-12)
    assert 0 <= delong["p_value"] <= 1


def test_the_card_states_what_the_candidate_is(run: dict[str, Any]) -> None:
    record, out = run["record"], run["out"]
    card = (out / "candidate.md").read_text()
    held = record["heldout"]
    assert record["model"]["sha256"] in card and "float16" in card and "tiny trunk" in card
    assert "classifier-test (version 3)" in card and "snapshot-test" in card
    assert (
        f"{len(record['split']['heldout_items'])} slide(s) with {record['split']['n_heldout_ln']} LNs" in card
    )
    assert (
        f"| parent | {held['parent']['n_positive']} / " in card and f"{held['candidate']['auc']:.4f}" in card
    )
    assert "transition matrix [[0.9, 0.1], [0.2, 0.8]]" in card
    verdict = "May be promoted" if not gate(record) else "Refused"
    assert verdict in card and "Tolerance: held-out AUC at most 0.02 and sensitivity at most 0.05" in card


def test_retrain_refusals(collected: Path, parent: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.txt").write_text("x")
    kw: dict[str, Any] = {"parent_ref": {}, "dataset_ref": {}}
    with pytest.raises(RetrainError, match="not an empty folder"):
        retrain(collected, parent, busy, **kw)
    with pytest.raises(RetrainError, match="not the parent's 000000000000"):
        retrain(collected, parent, tmp_path / "a", parent_ref={"sha256": "0" * 64}, dataset_ref={})
    with pytest.raises(RetrainError, match="dataset_ref must hold JSON values only"):
        retrain(collected, parent, tmp_path / "b", parent_ref={}, dataset_ref={"when": object()})
    with pytest.raises(RecordError, match="tolerance: auc must be a number >= 0"):
        retrain(collected, parent, tmp_path / "c", tolerance={"auc": -1}, **kw)
    snapshot = tmp_path / "snap"
    snapshot.mkdir()
    with pytest.raises(CollectError, match="not a readable dataset snapshot"):
        read_transition(snapshot)
    (snapshot / "snapshot.json").write_text(
        json.dumps({"format": "lnassist-dataset-snapshot/1", "transition": {"matrix": None}})
    )
    with pytest.raises(RetrainError, match="has no transition matrix"):
        read_transition(snapshot)
    assert read_transition(collected) == ((0.9, 0.1), (0.2, 0.8))


def test_retrain_command(
    collected: Path, parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli"
    argv = ["retrain", "--dataset", str(collected), "--parent", str(parent), "--out", str(out)]
    argv += ["--epochs", "1", "--tile-px", str(TILE_PX), "--seed", "1", "--tolerance-auc", "0.1"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    record = json.loads((out / "candidate.json").read_text())
    assert record["split"]["seed"] == 1 and record["tolerance"] == {"auc": 0.1, "sensitivity": 0.05}
    assert record["training"]["config"]["transition"] is None
    assert record["parent"]["id"] == "parent" and record["dataset"]["path"] == str(collected.resolve())
    parent_auc = record["heldout"]["parent"]["auc"]
    assert f"held-out AUC: parent {parent_auc:.4f}" in text
    assert ("gate: may be promoted" if not gate(record) else "gate: refused") in text
    assert main(argv) == 2  # the folder is no longer empty
    assert "not an empty folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- the gate


def _metrics(auc: float | None, sensitivity: float) -> dict[str, Any]:
    return {
        "n": 20,
        "n_positive": 8,
        "auc": auc,
        "auc_ci": None if auc is None else [max(auc - 0.1, 0.0), min(auc + 0.1, 1.0)],
        "thresholds": {
            mode: {"threshold": t, "sensitivity": sensitivity, "specificity": 0.75}
            for mode, t in THRESHOLDS.items()
        },
    }


def _record(
    parent: tuple[float | None, float],
    candidate: tuple[float | None, float],
    tolerance: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A valid record with the given (AUC, sensitivity at every threshold) of parent and candidate."""
    return {
        "format": CANDIDATE_FORMAT,
        "model": {"backbone": "tiny", "mpp": 0.46, "sha256": "a" * 64, "file": "candidate.pt"},
        "parent": {"id": "classifier-cpu-v1", "version": "1", "sha256": "b" * 64},
        "dataset": {"snapshot": "s1"},
        "split": {
            "seed": 0,
            "heldout_fraction": 0.34,
            "train_items": ["i1", "i2"],
            "heldout_items": ["i3"],
            "n_train_ln": 40,
            "n_heldout_ln": 20,
            "n_heldout_positive": 8,
        },
        "training": {
            "epochs": 2,
            "config": {"lr": 1e-4},
            "history": [{"epoch": 1}, {"epoch": 2}],
            "wall_s": 12.5,
        },
        "heldout": {
            "parent": _metrics(*parent),
            "candidate": _metrics(*candidate),
            "delong": None if None in (parent[0], candidate[0]) else {"auc_difference": 0.0, "p_value": 1.0},
        },
        "tolerance": tolerance or dict(DEFAULT_TOLERANCE),
        "created_at": "2025-03-01T14:02:11+00:00",
    }


def test_gate_passes_better_equal_and_within_tolerance() -> None:
    assert gate(_record((0.80, 0.90), (0.85, 0.95))) == []
    assert gate(_record((0.80, 0.90), (0.80, 0.90))) == []
    # Exactly at the tolerance (0.80 - 0.78 is 0.020000000000000018 in floating point) still passes.
    assert gate(_record((0.80, 0.90), (0.78, 0.85))) == []


def test_gate_refuses_a_worse_candidate_with_the_numbers() -> None:
    reasons = gate(_record((0.80, 0.90), (0.70, 0.75)))
    assert len(reasons) == 1 + len(THRESHOLDS)
    assert reasons[0] == (
        "held-out AUC fell from 0.8000 (parent) to 0.7000 (candidate), by 0.1000, "
        "more than the tolerance 0.0200"
    )
    assert reasons[1:] == [
        f"held-out sensitivity at the {mode} threshold ({t:g}) fell from 0.9000 (parent) to 0.7500 "
        "(candidate), by 0.1500, more than the tolerance 0.0500"
        for mode, t in THRESHOLDS.items()
    ]
    # One mode only.
    record = _record((0.80, 0.90), (0.80, 0.90))
    record["heldout"]["candidate"]["thresholds"]["screening"]["sensitivity"] = 0.8
    assert [r.split(" threshold")[0] for r in gate(record)] == ["held-out sensitivity at the screening"]


def test_gate_refuses_an_undefined_auc() -> None:
    reasons = gate(_record((0.80, 0.90), (None, 0.90)))
    assert len(reasons) == 1 and "AUC of the candidate is undefined" in reasons[0]
    assert "8 positive and 12 negative" in reasons[0] and "cannot be compared" in reasons[0]
    missing = _record((0.80, 0.90), (0.80, 0.90))
    del missing["heldout"]["parent"]["auc"]
    assert "AUC of the parent is undefined" in gate(missing)[0]


def test_gate_uses_the_records_tolerance_unless_given_one() -> None:
    record = _record((0.80, 0.90), (0.72, 0.90), tolerance={"auc": 0.1, "sensitivity": 0.05})
    assert gate(record) == []
    assert "more than the tolerance 0.0500" in gate(record, {"auc": 0.05})[0]
    assert gate(_record((0.80, 0.90), (0.72, 0.90)), {"auc": 0.1, "sensitivity": 0.0}) == []
    with pytest.raises(RecordError, match="unknown keys"):
        gate(record, {"specificity": 0.1})


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.update(format="lnassist-candidate/9"), "format must be 'lnassist-candidate/1'"),
        (lambda r: r["model"].pop("sha256"), "missing model.sha256"),
        (lambda r: r["model"].update(sha256="ABC"), "model.sha256 must be 64 lowercase hex digits"),
        (lambda r: r.update(parent="classifier-cpu-v1"), "parent must be a mapping"),
        (lambda r: r["split"].update(heldout_items="i3"), "split.heldout_items must be a list"),
        (
            lambda r: r["heldout"]["parent"].update(auc=1.5),
            r"heldout.parent.auc must be a number in \[0, 1\]",
        ),
        (lambda r: r["heldout"]["candidate"].update(n_positive=21), "n_positive 21 > n 20"),
        (
            lambda r: r["heldout"]["candidate"]["thresholds"].pop("screening"),
            "missing heldout.candidate.thresholds.screening",
        ),
        (lambda r: r["heldout"].update(delong={"p_value": 0.5}), "heldout.delong must be null or"),
        (lambda r: r["tolerance"].update(auc=-0.1), "tolerance: auc must be a number >= 0"),
        (
            lambda r: r.update(created_at="2025-03-01T14:02:11"),
            "created_at must be an ISO 8601 time with a time zone",
        ),
        (lambda r: r.pop("training"), "missing training.epochs"),
    ],
)
def test_check_record_names_the_broken_field(change: Any, message: str) -> None:
    record = copy.deepcopy(_record((0.80, 0.90), (0.80, 0.90)))
    check_record(record)
    change(record)
    with pytest.raises(RecordError, match=message):
        check_record(record)
    with pytest.raises(ValueError):  # callers without lnassist's error classes catch it as a ValueError
        gate(record)


def test_check_record_refuses_what_is_not_a_record() -> None:
    with pytest.raises(RecordError, match="must be a JSON object, got list"):
        check_record([])


def test_promotion_imports_only_the_standard_library() -> None:
    # The Girder server reads records and gates promotions without torch or numpy.
    code = (
        "import sys; before = set(sys.modules); import lnassist.promotion; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(proc.stdout.split()) - set(sys.stdlib_module_names) == {"lnassist"}
