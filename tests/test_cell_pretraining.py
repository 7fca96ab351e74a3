"""Cell-level pretraining (lnassist.training.cells): patch labels from the generator's ground truth,
patches read from the LN canvas ESCNN reads, hard-negative mining and the classifier it writes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from training_helpers import build_tiny_dataset

from lnassist.classifier import load_classifier, score_ln
from lnassist.slide import open_slide
from lnassist.training import TrainingError
from lnassist.training.cells import (
    EDGE,
    MINED,
    NODE,
    TUMOUR,
    CellPretrainConfig,
    bank_report,
    build_bank,
    ln_ground_truth,
    mine_hard_negatives,
    patch_scores,
    pretrain_cells,
    sample_ln_patches,
)
from lnassist.training.data import images_from_manifest, open_image

# Small and quick: a few steps on the 3-slide data set (2 train, 1 val).
QUICK = CellPretrainConfig(
    patch_px=64, shift_px=4, cell_margin_px=12, batch_size=16, iterations=60, lr=3e-3, mining_rounds=1
)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("cells_ds"))


def _node() -> dict:
    square = [[1000.0, 2000.0], [1600.0, 2000.0], [1600.0, 2600.0], [1000.0, 2600.0]]
    return {
        "contour": square,
        "deposits": [{"cells": [[1300.0, 2300.0], [1310.0, 2305.0], [1290.0, 2290.0]]}],
        "mimics": [{"kind": "hev", "cells": [[1100.0, 2100.0], [1120.0, 2110.0]]}],
    }


def test_patch_labels_follow_the_tumour_cells() -> None:
    cfg = replace(QUICK, cells_per_deposit=3, cells_per_mimic=2, edge_per_ln=40, node_per_ln=200)
    origin = (900.0, 1900.0)  # canvas (0, 0) in base px; 1 base px per canvas px at 20x
    tumour = np.array(_node()["deposits"][0]["cells"]) - origin
    patches = sample_ln_patches(_node(), origin, 1.0, cfg, np.random.default_rng(0))
    kinds = [k for _, _, k in patches]
    assert kinds.count(TUMOUR) == 3 and kinds.count("mimic:hev") == 2
    assert 0 < kinds.count(NODE) < 200  # node points near the deposit are dropped, the rest kept
    half = cfg.patch_px / 2
    for centre, label, kind in patches:
        offsets = np.abs(tumour - centre).max(axis=1)
        if label:
            # Some tumour cell lies inside the patch, clear of its border by the margin.
            assert offsets.min() <= half - cfg.cell_margin_px
        else:
            assert offsets.min() > half + cfg.shift_px + cfg.clearance_px, kind
    edges = np.array([c for c, _, k in patches if k == EDGE])
    contour = np.array(_node()["contour"]) - origin
    assert (np.abs(edges[:, None] - contour[None]).max(axis=2).min(axis=1) <= half / 2).all()


def test_bank_reads_the_escnn_canvas_and_its_labels_hold(manifest: Path) -> None:
    cfg = replace(QUICK, mask_jitter=None)
    bank = build_bank(manifest, "train", cfg, np.random.default_rng(1))
    assert bank.pixels.shape[1:] == (cfg.read_px, cfg.read_px, 3)
    assert {TUMOUR, EDGE, NODE} <= set(bank.kinds) and any(k.startswith("mimic:") for k in bank.kinds)
    nodes = ln_ground_truth(manifest, "train")
    images = {image.key: image for image in images_from_manifest(manifest, "train")}
    for i in range(0, len(bank), 7):
        source = open_image(images[bank.keys[i]], cfg.mpp)
        x0, y0 = (int(v - cfg.read_px / 2) for v in bank.centres_px[i])
        assert np.array_equal(bank.pixels[i], source.read(y0, x0, cfg.read_px, cfg.read_px))
        # Back to base pixels: the window holds a ground-truth tumour cell exactly when it is positive.
        origin = np.asarray(source.origin_base_px)
        cells = [c for d in nodes[bank.keys[i]]["deposits"] for c in d["cells"]]
        cells = (np.asarray(cells).reshape(-1, 2) - origin) / source.base_px_per_px
        inside = (np.abs(cells - bank.centres_px[i]).max(axis=1) < cfg.read_px / 2).any()
        assert inside == bool(bank.labels[i]), (bank.kinds[i], bank.keys[i])


def test_a_manifest_without_ground_truth_is_refused(manifest: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row.pop("ground_truth")
        row["slide"] = str(manifest.parent / row["slide"])
    bare = tmp_path / "manifest.jsonl"
    bare.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(TrainingError, match="no ground_truth file"):
        build_bank(bare, "train", QUICK, np.random.default_rng(0))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(TrainingError, match="patch_px"):
        CellPretrainConfig(patch_px=40, cell_margin_px=20)
    with pytest.raises(TrainingError, match="positive_fraction"):
        CellPretrainConfig(positive_fraction=1.0)


def test_pretraining_learns_the_cells_and_writes_a_classifier(manifest: Path, tmp_path: Path) -> None:
    import torch

    from lnassist.classifier import new_classifier

    out = tmp_path / "run"
    summary = pretrain_cells(QUICK, manifest, out)
    first, mined = summary["rounds"]
    # Mined negatives come only from negative LNs, and are added in the second round alone.
    assert MINED not in first["train_patches"] and mined["train_patches"][MINED] > 0
    # The same start (the seed's weights) ranks the validation patches near chance (0.43 measured);
    # 2 x 60 small steps reach 0.81 on these 66 patches (5 tumour).
    val = build_bank(
        manifest, "val", replace(QUICK, mask_jitter=None), np.random.default_rng([QUICK.seed, 1])
    )
    start = new_classifier(QUICK.spec(), seed=QUICK.seed).model
    start_auc = bank_report(val, patch_scores(start, val, QUICK, torch.device("cpu")))["auc"]
    assert summary["val_patches"] == val.counts()
    assert mined["val"]["auc"] >= start_auc + 0.25 and mined["val"]["auc"] > first["val"]["auc"], mined["val"]
    assert mined["loss_first_last_100"][1] < first["loss_first_last_100"][0]
    classifier = load_classifier(out / "pretrained.pt")
    assert classifier.spec.method == "escnn" and classifier.spec.backbone == "tiny"
    assert classifier.metadata["cell_pretraining"]["rounds"][1]["val"] == mined["val"]
    # The checkpoint scores whole LNs as it is.
    image = images_from_manifest(manifest, "val")[0]
    score = score_ln(classifier, open_slide(image.slide_path), np.asarray(image.polygons_base_px[0])).score
    assert 0.0 <= score <= 1.0
    with pytest.raises(TrainingError, match="exists"):
        pretrain_cells(QUICK, manifest, out)


def test_mining_takes_the_strongest_false_evidence_of_negative_lns(manifest: Path) -> None:
    import torch

    from lnassist.classifier import ClassifierSpec, new_classifier

    model = new_classifier(ClassifierSpec(backbone="tiny"), seed=3).model
    bank = mine_hard_negatives(model, manifest, "train", QUICK, np.random.default_rng(0), torch.device("cpu"))
    negative_keys = {i.key for i in images_from_manifest(manifest, "train") if i.label == 0}
    assert len(bank) > 0 and set(bank.keys) <= negative_keys
    assert (bank.labels == 0).all() and set(bank.kinds) == {MINED}
    per_ln = {k: bank.keys.count(k) for k in set(bank.keys)}
    assert max(per_ln.values()) <= QUICK.mined_per_ln
    for key in per_ln:  # spread out: no two mined patches of an LN closer than half a patch
        c = bank.centres_px[[i for i, k in enumerate(bank.keys) if k == key]]
        d = np.abs(c[:, None] - c[None]).max(axis=2) + np.eye(len(c)) * 1e9
        assert d.min() >= QUICK.patch_px / 2 - 2 * QUICK.shift_px - 1


def test_the_cli_pools_manifests(manifest: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "cli"
    args = [
        sys.executable,
        "-m",
        "lnassist",
        "pretrain-cells",
        str(manifest),
        str(manifest),
        "--out",
        str(out),
    ]
    args += ["--iterations", "2", "--mining-rounds", "0", "--threads", "1"]
    subprocess.run(args + ["--stain-concentration", "0.5", "1.5"], check=True, capture_output=True, text=True)
    log = json.loads((out / "pretrain-log.json").read_text())
    # The paper's HED range replaces the default's, and the rest of the stain settings stay.
    assert log["config"]["stain"]["concentration_range"] == [0.5, 1.5]
    default = CellPretrainConfig().stain
    assert default.concentration_range != (0.5, 1.5)
    assert log["config"]["stain"]["stain_angle_deg"] == default.stain_angle_deg
    single = build_bank(manifest, "train", QUICK, np.random.default_rng(0))
    assert log["manifests"] == [str(manifest)] * 2 and len(log["rounds"]) == 1
    assert log["rounds"][0]["train_patches"][TUMOUR] > single.counts()[TUMOUR]
    assert (
        load_classifier(out / "pretrained.pt").metadata["cell_pretraining"]["manifests"] == log["manifests"]
    )
    bad = subprocess.run(args[:-2] + ["--backbone", "vgg"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown backbone 'vgg'" in bad.stderr
    bad = subprocess.run(args + ["--stain-concentration", "1.5", "0.5"], capture_output=True, text=True)
    assert bad.returncode != 0 and "concentration_range must be (low, high)" in bad.stderr
