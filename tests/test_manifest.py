"""The LN manifest: the generator's manifest and one typed by hand from the documented schema read the
same and give the same training images and detector samples; every schema break is a one-line
ManifestError naming file and line; versions; writing is all or nothing."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lnassist.manifest as manifest_module
from lnassist.categories import ITC, NEGATIVE
from lnassist.detector.data import load_samples
from lnassist.fileio import OutputExistsError
from lnassist.manifest import (
    MANIFEST_NAME,
    ManifestError,
    read_manifest,
    resolve_path,
    write_manifest,
)
from lnassist.synth.dataset import DatasetConfig, SplitConfig, build_dataset
from lnassist.training.data import images_from_manifest

GOOD = {
    "split": "train",
    "slide": "s1.tiff",
    "slide_id": "s1",
    "ln_id": 1,
    "contour": [[0, 0], [10, 0], [10, 10]],
    "label": 0,
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-slide synthetic data set (train: mixed categories, val: ITC only) and its manifest."""
    cfg = DatasetConfig(
        seed=1,
        width_px=3000,
        height_px=3000,
        tile_px=256,
        train=SplitConfig(1, ("A",)),
        val=SplitConfig(1, ("B",), {ITC: 1.0}),
        test=SplitConfig(0),
    )
    return build_dataset(tmp_path_factory.mktemp("generated"), cfg, workers=1)


@pytest.fixture(scope="module")
def by_hand(generated: Path) -> Path:
    """The same LNs typed as the module docstring describes, copied from the ground-truth JSON files
    without lnassist: keys in another order, spaces after separators, blank lines between slides."""
    root = generated.parent
    lines = []
    for gt_path in sorted(root.glob("*/*.gt.json")):
        gt = json.loads(gt_path.read_text())
        split, stem = gt_path.parent.name, gt_path.name.removesuffix(".gt.json")
        for node in gt["nodes"]:
            row = {
                "label": node["label"],
                "contour": node["contour"],
                "ln_id": node["id"],
                "slide_id": stem,
                "slide": f"{split}/{stem}.tiff",
                "split": split,
                "manifest_version": 1,
                "mpp": gt["mpp"],
                "category": node["category"],
                "largest_extent_um": node["largest_extent_um"],
                "bbox": node["bbox"],
                "slide_label": gt["slide_label"],
                "ground_truth": f"{split}/{stem}.gt.json",
                "site": gt["site"],
                "seed": gt["seed"],
            }
            lines.append(json.dumps(row))
        lines.append("")
    path = root / "by_hand.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _raises_at(path: Path, line: int, pattern: str):
    """A ManifestError whose one-line message starts with ``path:line:`` and then matches ``pattern``."""
    return pytest.raises(ManifestError, match=rf"^{re.escape(str(path))}:{line}: {pattern}[^\n]*$")


# ---------------------------------------------------------------------- generated == typed by hand


def test_generated_and_hand_written_manifests_read_the_same(generated: Path, by_hand: Path) -> None:
    rows = read_manifest(generated)
    assert read_manifest(by_hand) == rows
    gt_paths = generated.parent.glob("*/*.gt.json")
    gts = {p.name.removesuffix(".gt.json"): json.loads(p.read_text()) for p in gt_paths}
    assert [(r["slide_id"], r["ln_id"]) for r in rows] == [
        (slide_id, node["id"]) for slide_id in ("train_0000", "val_0000") for node in gts[slide_id]["nodes"]
    ]
    assert all(r["manifest_version"] == 1 for r in rows)
    val = [r for r in rows if r["split"] == "val"]
    assert val and all(r["category"] == ITC and r["label"] == 1 for r in val)
    assert resolve_path(generated, rows[0]["slide"]) == generated.parent / "train" / "train_0000.tiff"
    assert resolve_path(generated, rows[0]["slide"]).is_file()
    assert generated.name == MANIFEST_NAME


@pytest.mark.parametrize("label_mode", ["ln", "slide"])
@pytest.mark.parametrize("split", ["train", "val"])
def test_both_manifests_give_the_same_training_images(
    generated: Path, by_hand: Path, split: str, label_mode: str
) -> None:
    images = images_from_manifest(generated, split, label_mode)
    assert images_from_manifest(by_hand, split, label_mode) == images
    rows = [r for r in read_manifest(generated) if r["split"] == split]
    if label_mode == "ln":
        assert [im.label for im in images] == [r["label"] for r in rows]
        assert [im.polygons_base_px[0][0] for im in images] == [tuple(r["contour"][0]) for r in rows]
    else:
        (image,) = images
        assert image.label == max(r["label"] for r in rows)
        assert len(image.polygons_base_px) == len(rows)
    assert {im.slide_path for im in images} == {str(generated.parent / split / f"{split}_0000.tiff")}
    assert all(im.mpp_override == pytest.approx(0.46) for im in images)


def test_both_manifests_give_the_same_detector_samples(generated: Path, by_hand: Path) -> None:
    samples = load_samples(generated, ("train", "val"))
    hand = load_samples(by_hand, ("train", "val"))
    assert [(s.slide_id, s.split, s.path, s.n_lns, s.grid) for s in samples] == [
        (h.slide_id, h.split, h.path, h.n_lns, h.grid) for h in hand
    ]
    assert [s.slide_id for s in samples] == ["train_0000", "val_0000"]
    for s, h in zip(samples, hand, strict=True):
        assert np.array_equal(s.image, h.image) and np.array_equal(s.mask, h.mask)
        assert s.mask.any() and not s.mask.all()


def test_the_docstring_example_reads_and_every_field_is_documented(tmp_path: Path) -> None:
    doc = manifest_module.__doc__
    example = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    path = tmp_path / "example.jsonl"
    path.write_text(" ".join(line.strip() for line in example.splitlines()) + "\n")
    (row,) = read_manifest(path)
    assert (row["slide_id"], row["ln_id"], row["label"], row["mpp"], len(row["contour"])) == (
        "s01", 3, 1, 0.25, 3
    )
    documented = set(re.findall(r"^([a-z_]+) {2,}", doc, flags=re.MULTILINE))
    checked = {"manifest_version", *manifest_module.REQUIRED_FIELDS, *manifest_module.FIELD_CHECKS}
    assert documented == checked


# ------------------------------------------------------------------------------- reading by hand


def test_rows_keep_every_field_and_the_splits_filter(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"split": "train", "slide": "a.tiff", "slide_id": "a", "ln_id": "node-7", '
        '"contour": [[0, 0], [5.5, 0], [5.5, 4]], "label": 1, "annotator": 0, "reviewer": null}\n'
        '{"split": "val", "slide": "/data/b.svs", "slide_id": "b", "ln_id": 1, '
        '"contour": [[0, 0], [1, 0], [1, 1], [0, 1]], "label": 0}\n'
    )
    first, second = read_manifest(path)
    assert first == {
        "manifest_version": 1,
        "split": "train",
        "slide": "a.tiff",
        "slide_id": "a",
        "ln_id": "node-7",
        "contour": [[0, 0], [5.5, 0], [5.5, 4]],
        "label": 1,
        "annotator": 0,
        "reviewer": None,
    }
    assert resolve_path(path, second["slide"]) == Path("/data/b.svs")
    assert read_manifest(path, splits=("val",)) == [second]
    assert read_manifest(path, splits=("test",)) == []
    # The label field asked for is checked only in the rows kept.
    assert read_manifest(path, splits=("train",), label_field="annotator") == [first]
    with _raises_at(path, 2, "missing the label field 'annotator'"):
        read_manifest(path, label_field="annotator")


OK_ROW = {**GOOD, "slide_id": "ok", "slide": "ok.tiff"}
MISSING = json.dumps({k: v for k, v in GOOD.items() if k not in ("ln_id", "label")})
# (what the message says after "path:line: ", the bad line: raw text or changes to GOOD)
BAD_LINES = [
    ("not JSON", '{"split": "train",'),
    ("a row must be a JSON object, got list", "[1, 2]"),
    ("missing required field\\(s\\) ln_id, label", MISSING),
    ("contour must be a polygon of >= 3 points, it has 2", {"contour": [[0, 0], [1, 1]]}),
    ("contour point 1 must be \\[x, y\\] of finite", {"contour": [[0, 0], [float("nan"), 1], [2, 2]]}),
    ("contour point 0 must be \\[x, y\\]", {"contour": [[0, 0, 0], [1, 0], [1, 1]]}),
    ("contour point 2 must be \\[x, y\\]", {"contour": [[0, 0], [1, 0], [1, "2"]]}),
    ("contour must be a list of \\[x, y\\] points", {"contour": "0,0 1,0 1,1"}),
    ("label must be 0 or 1, got 2", {"label": 2}),
    ("label must be 0 or 1, got True", {"label": True}),
    ("label must be 0 or 1, got None", {"label": None}),
    ("slide_id must be a non-empty string, got 5", {"slide_id": 5}),
    ("mpp must be a positive number", {"mpp": -0.5}),
    ("category must be one of", {"category": "suspicious"}),
    ("reviewed_at must be an ISO 8601 time with a time zone", {"reviewed_at": "2025-03-01 14:02"}),
    ("ai_score must be a number in \\[0, 1\\]", {"ai_score": 1.5}),
    ("duplicate LN: slide_id 'ok' ln_id 1 is already on line 1", {"slide_id": "ok"}),
    ("slide_id 'ok' has slide 'b' here but 'ok.tiff' on line 1", {**OK_ROW, "slide": "b", "ln_id": 2}),
    ("slide_id 'ok' has split 'val' here but 'train' on line 1", {**OK_ROW, "split": "val", "ln_id": 2}),
    ("slide_id 'ok' has mpp 0.5 here but None on line 1", {**OK_ROW, "mpp": 0.5, "ln_id": 2}),
    ("unknown manifest_version 2", {"manifest_version": 2}),
    ("unknown manifest_version '1'", {"manifest_version": "1"}),
]


@pytest.mark.parametrize("pattern, bad", BAD_LINES)
def test_schema_breaks_name_file_and_line(tmp_path: Path, pattern: str, bad: str | dict) -> None:
    """Line 1 is a good row of slide 'ok', line 2 is blank, line 3 breaks the schema."""
    path = tmp_path / "bad.jsonl"
    text = bad if isinstance(bad, str) else json.dumps({**GOOD, **bad})
    path.write_text(json.dumps(OK_ROW) + "\n\n" + text + "\n")
    with _raises_at(path, 3, pattern):
        read_manifest(path)
    # The same row given to the writer is refused with the line it would have had; nothing is written.
    if text.startswith("{") and text.endswith("}"):
        out = tmp_path / "out.jsonl"
        with _raises_at(out, 2, pattern):
            write_manifest(out, [OK_ROW, json.loads(text)])
        assert not out.exists()


def test_a_missing_manifest_is_one_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "none.jsonl"
    with pytest.raises(ManifestError, match=rf"^cannot read manifest {re.escape(str(missing))}: "):
        read_manifest(missing)


# ----------------------------------------------------------------------------------------- versions


def test_rows_without_a_version_are_version_1_and_the_writer_adds_it(tmp_path: Path) -> None:
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps(GOOD) + "\n")
    assert read_manifest(old) == [{"manifest_version": 1, **GOOD}]
    new = tmp_path / "new.jsonl"
    write_manifest(new, [GOOD, {**GOOD, "ln_id": 2, "manifest_version": 1}])
    lines = new.read_text().splitlines()
    assert [json.loads(line)["manifest_version"] for line in lines] == [1, 1]
    assert lines[0].startswith('{"manifest_version":1,')
    assert read_manifest(new) == [
        {"manifest_version": 1, **GOOD},
        {"manifest_version": 1, **GOOD, "ln_id": 2},
    ]


def test_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.jsonl"
    rows = [{**GOOD, "manifest_version": 1}, {**GOOD, "ln_id": 2, "manifest_version": 2}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with _raises_at(path, 2, "unknown manifest_version 2; this lnassist reads version 1"):
        read_manifest(path)


# ------------------------------------------------------------------------------------------- writing


def test_writing_round_trips_extras_and_is_all_or_nothing(tmp_path: Path) -> None:
    rows = [
        {**GOOD, "category": NEGATIVE, "mpp": 0.25, "annotator": 1},
        {**GOOD, "ln_id": 2, "label": 1, "mpp": 0.25, "reviewed_at": "2025-03-01T14:02:11Z", "ai_score": 0.9},
    ]
    path = tmp_path / MANIFEST_NAME
    write_manifest(path, rows)
    assert read_manifest(path) == [{"manifest_version": 1, **r} for r in rows]
    before = path.read_text()
    with pytest.raises(OutputExistsError):
        write_manifest(path, rows)
    # A bad second row: the existing file stays as it was even with overwrite, and no partial file is left.
    with _raises_at(path, 2, "label must be 0 or 1"):
        write_manifest(path, [rows[0], {**rows[1], "label": 3}], overwrite=True)
    with _raises_at(path, 2, "not writable as JSON"):
        write_manifest(path, [rows[0], {**rows[1], "annotator": {1, 2}}], overwrite=True)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME]
    write_manifest(path, rows[:1], overwrite=True)
    assert read_manifest(path) == [{"manifest_version": 1, **rows[0]}]


def test_the_module_imports_nothing_heavy_and_detector_data_no_synth() -> None:
    code = (
        "import sys, lnassist.manifest; print(sorted(m for m in ('numpy', 'torch', 'cv2', 'large_image',"
        " 'yaml') if m in sys.modules)); import lnassist.detector.data;"
        " print(sorted(m for m in sys.modules if m.startswith('lnassist.synth')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "[]"]
