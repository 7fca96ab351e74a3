"""Classifier training: loss, transition estimate, schedule, config, data, loop, resume, torchrun."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_helpers import build_tiny_dataset

from lnassist.classifier import (
    load_classifier,
    mil_patch_logits,
    new_classifier,
    positive_probability,
    score_source,
)
from lnassist.escnn.model import window_to_input
from lnassist.escnn.sources import SlideRegionSource
from lnassist.manifest import ManifestError
from lnassist.slide import open_slide
from lnassist.training import TrainingError
from lnassist.training.config import CPU, PAPER, TrainConfig, dump_config, load_config
from lnassist.training.data import images_from_manifest, open_image
from lnassist.training.loop import Schedule, train_classifier, update_schedule
from lnassist.training.loss import check_transition, estimate_transition, forward_corrected_cross_entropy

# Fast settings for the loop tests: tiny trunk at 5x (LN images of ~400 px), 2 epochs.
FAST = replace(CPU, mpp=1.84, max_epochs=2, tile_px=256, lr=1e-3)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny_ds"))


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_classifier(path).model.state_dict()


def _last_state(out: Path) -> dict:
    return torch.load(out / "last.pt", weights_only=True)


# -------------------------------------------------------------------------------------------- loss


def test_identity_transition_is_plain_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 2, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 2, (7,), generator=gen)
    eye = torch.eye(2, dtype=torch.float64)
    expected = F.cross_entropy(logits, target)
    assert torch.allclose(forward_corrected_cross_entropy(logits, target), expected, atol=1e-12)
    assert torch.allclose(forward_corrected_cross_entropy(logits, target, eye), expected, atol=1e-12)


def test_forward_correction_matches_its_definition_and_stays_finite() -> None:
    t = torch.tensor([[0.8, 0.2], [0.3, 0.7]], dtype=torch.float64)
    logits = torch.tensor([[2.0, -1.0], [-500.0, 500.0]], dtype=torch.float64)
    target = torch.tensor([1, 0])
    p = np.exp(logits.numpy() - logits.numpy().max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    q = p @ t.numpy()
    expected = -np.mean(np.log(q[np.arange(2), target.numpy()]))
    got = forward_corrected_cross_entropy(logits, target, t)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    # A confidently wrong prediction costs at most -log T[true, observed] under the noise model.
    assert math.isfinite(got.item()) and got.item() < -math.log(0.3) + 1.0


def test_forward_correction_recovers_the_clean_posterior() -> None:
    """Fitting noisy labels through the true T gives the clean class probabilities (Patrini et al.)."""
    t = torch.tensor([[0.9, 0.1], [0.25, 0.75]], dtype=torch.float64)
    clean = torch.tensor([0.3, 0.7], dtype=torch.float64)
    noisy = clean @ t  # label distribution the model is trained on
    logits = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-15)

    def expected_loss() -> torch.Tensor:
        opt.zero_grad()
        loss = sum(noisy[j] * forward_corrected_cross_entropy(logits, torch.tensor([j]), t) for j in range(2))
        loss.backward()
        return loss

    opt.step(expected_loss)
    fitted = torch.softmax(logits.detach(), dim=1)[0]
    assert torch.allclose(fitted, clean, atol=1e-6)
    # Without the correction the fit is the noisy distribution instead.
    assert not torch.allclose(noisy, clean, atol=0.05)


def test_estimate_transition_from_annotator_labels() -> None:
    truth = [0] * 10 + [1] * 4
    observed = [0] * 8 + [1] * 2 + [1] * 3 + [0]
    t = estimate_transition(truth, observed)
    assert np.allclose(t, [[0.8, 0.2], [0.25, 0.75]])
    smoothed = estimate_transition([0, 0, 1], [0, 0, 1], pseudo_count=1.0)
    assert np.allclose(smoothed, [[0.75, 0.25], [1 / 3, 2 / 3]])
    with pytest.raises(TrainingError, match="no sample of true class"):
        estimate_transition([0, 0], [0, 1])
    with pytest.raises(TrainingError, match="singular"):
        estimate_transition([0, 1, 0, 1], [0, 0, 1, 1])
    with pytest.raises(TrainingError, match="sum"):
        check_transition([[0.5, 0.6], [0.0, 1.0]])


# ---------------------------------------------------------------------------------------- schedule


def test_schedule_drops_lr_then_stops_after_the_stated_stalls() -> None:
    cfg = replace(PAPER, lr_patience_epochs=2, stop_patience_epochs=3, reduced_lr=1e-6)
    s = Schedule()
    events = []
    for epoch, loss in enumerate([5.0, 4.0, 4.0, 4.5, 3.0, 3.0, 3.1, 3.0], start=1):
        improved, new_lr = update_schedule(s, epoch, loss, cfg)
        events.append((epoch, improved, new_lr, bool(s.stopped)))
        if s.stopped:
            break
    assert [e for e, imp, _, _ in events if imp] == [1, 2, 5]
    assert [(e, lr) for e, _, lr, _ in events if lr is not None] == [(4, 1e-6)]
    assert events[-1] == (8, False, None, True)  # 3 stale epochs (6, 7, 8) after the drop
    assert s.best_epoch == 5 and s.best_val_loss == 3.0


def test_paper_defaults() -> None:
    assert (PAPER.lr, PAPER.betas, PAPER.weight_decay, PAPER.batch_size) == (1e-5, (0.9, 0.999), 0.01, 1)
    assert (PAPER.lr_patience_epochs, PAPER.reduced_lr, PAPER.stop_patience_epochs) == (16, 1e-6, 16)
    assert (PAPER.backbone, PAPER.mpp, PAPER.method, PAPER.transition) == ("resnet50", 0.46, "escnn", None)


# ------------------------------------------------------------------------------------------ config


def test_config_yaml_round_trip_and_errors(tmp_path: Path) -> None:
    cfg = replace(CPU, transition=((0.9, 0.1), (0.2, 0.8)), label_mode="slide")
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert load_config(None, "cpu", max_epochs=3) == replace(CPU, max_epochs=3)
    (tmp_path / "bad.yaml").write_text("lr: 1e-4\nlearning_rate: 3\n")
    with pytest.raises(TrainingError, match="unknown keys.*learning_rate"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "t.yaml").write_text("transition: [[0.5, 0.5], [0.5, 0.5]]\n")
    with pytest.raises(TrainingError, match="singular"):
        load_config(tmp_path / "t.yaml")
    with pytest.raises(TrainingError, match="label_mode"):
        TrainConfig(label_mode="patient")
    with pytest.raises(TrainingError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


# -------------------------------------------------------------------------------------------- data


def test_ln_and_slide_images(manifest: Path) -> None:
    lns = images_from_manifest(manifest, "train", "ln")
    slides = images_from_manifest(manifest, "train", "slide")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [im.label for im in lns] == [r["label"] for r in train_rows]
    assert [im.slide_id for im in slides] == ["train_a", "train_b"]
    for im in slides:
        mine = [r for r in train_rows if r["slide_id"] == im.slide_id]
        assert len(im.polygons_base_px) == len(mine)
        assert im.label == max(r["label"] for r in mine) == 1
    with pytest.raises(TrainingError, match="no LN of split"):
        images_from_manifest(manifest, "test")
    # The label field trained on is checked in the rows of the split read, naming the first one lacking it.
    lacking = rf"^{re.escape(str(manifest))}:1: missing the label field 'annotator'$"
    with pytest.raises(ManifestError, match=lacking):
        images_from_manifest(manifest, "train", "ln", "annotator")


def test_several_manifests_are_pooled_with_their_names_kept_apart(manifest: Path, tmp_path: Path) -> None:
    # A second data set reusing the first one's slide ids and LN ids (as every synth-dataset does).
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for row in rows:
        row["slide"] = str(manifest.parent / row["slide"])
        row["label"] = 1 - row["label"]
    other = tmp_path / "manifest.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    one = images_from_manifest(manifest, "train")
    pooled = images_from_manifest([manifest, other], "train")
    assert [im.key for im in pooled] == [f"0:{im.key}" for im in one] + [f"1:{im.key}" for im in one]
    assert [im.label for im in pooled] == [im.label for im in one] + [1 - im.label for im in one]
    assert len({im.slide_id for im in images_from_manifest([manifest, other], "train", "slide")}) == 4
    assert images_from_manifest([manifest], "train") == one
    with pytest.raises(TrainingError, match="no LN of split"):
        images_from_manifest([manifest, other], "test")


def test_slide_canvas_is_the_union_of_its_lns(manifest: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if '"train_a"' in line]
    slide = open_slide(manifest.parent / rows[0]["slide"])
    polygons = [np.asarray(r["contour"]) for r in rows]
    # At the base resolution no resampling happens, so the two canvases must agree pixel for pixel.
    both = SlideRegionSource(slide, polygons, slide.base_mpp)
    for polygon in polygons:
        one = SlideRegionSource(slide, polygon, slide.base_mpp)
        dy = round((one.origin_base_px[1] - both.origin_base_px[1]) / both.base_px_per_px)
        dx = round((one.origin_base_px[0] - both.origin_base_px[0]) / both.base_px_per_px)
        own = one.read(0, 0, one.height, one.width)
        inside = own != 255
        window = both.read(dy, dx, one.height, one.width)
        assert np.array_equal(window[inside.any(axis=2)], own[inside.any(axis=2)])
    whole = both.read(0, 0, both.height, both.width)
    assert (whole != 255).any(axis=2).sum() > 0


# ------------------------------------------------------------------------------------------- loop


def test_training_writes_a_usable_run(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    reported: list[dict] = []
    summary = train_classifier(FAST, manifest, out, progress=False, on_epoch=reported.append)
    assert summary["epochs"] == 2 and summary["stopped"] == "reached max_epochs=2"
    for name in ("best.pt", "last.pt", "config.yaml", "log.json", "log.csv"):
        assert (out / name).is_file(), name
    history = json.loads((out / "log.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert reported == history  # one call per finished epoch, with its log row
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history)
    assert (out / "log.csv").read_text().splitlines()[0].startswith("epoch,lr,train_loss,val_loss")
    best = load_classifier(out / "best.pt")
    assert best.spec.mpp == 1.84 and best.metadata["training"]["epoch"] == summary["best_epoch"]
    before = _state(out / "best.pt")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train_classifier(FAST, manifest, out, progress=False)
    assert all(torch.equal(v, _state(out / "best.pt")[k]) for k, v in before.items())


def test_resume_continues_exactly(manifest: Path, tmp_path: Path) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_classifier(FAST, manifest, straight, progress=False)
    train_classifier(replace(FAST, max_epochs=1), manifest, split, progress=False)
    summary = train_classifier(FAST, manifest, split, resume=True, progress=False)
    assert summary["epochs"] == 2
    a, b = _last_state(straight), _last_state(split)
    for key, value in a["classifier"]["state_dict"].items():
        assert torch.equal(value, b["classifier"]["state_dict"][key]), key
    assert a["rng"] == b["rng"] and a["schedule"] == b["schedule"]
    exp_a = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    exp_b = [s["exp_avg"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(exp_a, exp_b, strict=True))
    with pytest.raises(TrainingError, match=r"different config \(lr"):
        train_classifier(replace(FAST, lr=0.5), manifest, split, resume=True, progress=False)
    with pytest.raises(TrainingError, match="cannot resume"):
        train_classifier(FAST, manifest, tmp_path / "nothing", resume=True, progress=False)


def test_mil_baseline_trains_and_scores_by_max_patch(manifest: Path, tmp_path: Path) -> None:

    cfg = replace(FAST, method="mil", mil_patch_px=64, mil_patches_per_image=4, max_epochs=1)
    train_classifier(cfg, manifest, tmp_path / "mil", progress=False)
    clf = load_classifier(tmp_path / "mil" / "best.pt")
    assert clf.spec.method == "mil" and clf.spec.patch_px == 64
    image = images_from_manifest(manifest, "val")[0]
    source = open_image(image, clf.spec.mpp)
    corners, logits = mil_patch_logits(clf.model, source, 64)
    assert len(corners) > 4
    # Every patch alone through the network, max of their probabilities.
    with torch.no_grad():
        singles = [
            positive_probability(clf.model(window_to_input(source.read(y, x, 64, 64))))[0] for y, x in corners
        ]
    assert score_source(clf, source).score == pytest.approx(float(max(singles)), abs=1e-6)
    assert torch.allclose(positive_probability(logits), torch.stack(singles), atol=1e-6)


def test_torchrun_two_processes_equal_one_process_batch_of_two(manifest: Path, tmp_path: Path) -> None:
    """Data-parallel update (gloo, 2 processes, one image each) == single process accumulating both."""
    cfg = replace(FAST, max_epochs=1, batch_size=2, augment=None)
    config = tmp_path / "cfg.yaml"
    config.write_text(dump_config(cfg))
    # Same thread count as each torchrun process: Adam turns float noise in near-zero gradients into
    # lr-sized steps, so the per-image gradients must be computed the same way to compare.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_classifier(cfg, manifest, tmp_path / "single", progress=False)
    finally:
        torch.set_num_threads(threads)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lnassist",
        "train-classifier",
        str(manifest),
        "--preset",
        "cpu",
        "--config",
        str(config),
        "--out",
        str(tmp_path / "ddp"),
        "--threads",
        "1",
        "--no-progress",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = _last_state(tmp_path / "single"), _last_state(tmp_path / "ddp")
    assert load_classifier(tmp_path / "ddp" / "best.pt").metadata["training"]["processes"] == 2
    for key, value in single["classifier"]["state_dict"].items():
        assert torch.allclose(value, ddp["classifier"]["state_dict"][key], rtol=0, atol=1e-6), key
    # The step moved the weights away from their initialisation (the comparison is not vacuous).
    init = new_classifier(cfg.spec(), cfg.seed).model.state_dict()
    moved = sum(not torch.allclose(init[k], v) for k, v in single["classifier"]["state_dict"].items())
    assert moved > len(init) // 2


def test_slide_mode_trains_on_another_label_field(manifest: Path, tmp_path: Path) -> None:
    """One image per slide, labelled from an annotator's field (train_b called negative by them)."""
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in rows:
        r["annotator"] = 0 if r["slide_id"] == "train_b" else r["label"]
    other = manifest.parent / "annotated.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    images = images_from_manifest(other, "train", "slide", "annotator")
    assert [(im.slide_id, im.label) for im in images] == [("train_a", 1), ("train_b", 0)]
    cfg = replace(FAST, label_mode="slide", label_field="annotator", max_epochs=1)
    summary = train_classifier(cfg, other, tmp_path / "slide", progress=False)
    assert summary["epochs"] == 1
    with pytest.raises(TrainingError, match="needs negative and positive images"):
        train_classifier(replace(cfg, label_field="label"), other, tmp_path / "slide2", progress=False)


def test_init_checkpoint_starts_from_given_weights(manifest: Path, tmp_path: Path) -> None:
    from lnassist.classifier import ClassifierSpec, save_classifier

    start = new_classifier(ClassifierSpec(backbone="tiny", mpp=1.84), seed=42)
    save_classifier(tmp_path / "start.pt", start)
    cfg = replace(FAST, max_epochs=1, init_checkpoint=str(tmp_path / "start.pt"), lr=1e-12, weight_decay=0.0)
    train_classifier(cfg, manifest, tmp_path / "run", progress=False)
    # With a vanishing lr the trained weights are the starting ones, not the seed's initialisation.
    trained = _last_state(tmp_path / "run")["classifier"]["state_dict"]
    for key, value in start.model.state_dict().items():
        assert torch.allclose(trained[key], value, atol=1e-6), key
    save_classifier(tmp_path / "other.pt", new_classifier(ClassifierSpec(backbone="resnet18", mpp=1.84)))
    with pytest.raises(TrainingError, match="holds a resnet18 model"):
        train_classifier(
            replace(cfg, init_checkpoint=str(tmp_path / "other.pt")),
            manifest,
            tmp_path / "r2",
            progress=False,
        )
