"""lnassist.outputs: one writer for every caller, all outputs or none, consistent with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from lnassist import outputs
from lnassist.annotations import validate_document
from lnassist.errors import LnassistError
from lnassist.fileio import OutputExistsError, write_files_atomic
from lnassist.results import Analysis, CamGrid, LNResult, ModelRef

MODELS = [
    ModelRef("det", "detector", "1", "a" * 64),
    ModelRef("cls", "classifier", "2", "b" * 64),
]


def _square(x: float, y: float, side: float) -> np.ndarray:
    return np.array([[x, y], [x + side, y], [x + side, y + side], [x, y + side]], dtype=np.float64)


def _analysis() -> Analysis:
    cam = CamGrid(np.array([[0.1, 0.9], [np.nan, 0.5]]), (116.0, 216.0), 32.0, 32.0)
    lns = [
        LNResult(1, _square(100, 200, 64), 0.9, True, 865.0, cam),
        LNResult(2, _square(1000, 1000, 300), 0.2, False, 19044.0, None),
    ]
    return Analysis("slide.tiff", 0.46, (2000, 1500), None, "general", 0.4, lns, MODELS, {"classify": 1.0})


def _cli_paths(folder: Path) -> dict[str, Path]:
    return {
        outputs.ANNOTATION: folder / "ln.anot",
        outputs.HEATMAP: folder / "heat.anot",
        outputs.HEATMAP_IMAGE: folder / "heat.tiff",
        outputs.METADATA: folder / "meta.json",
        outputs.SUMMARY: folder / "summary.json",
    }


def test_every_output_agrees_with_the_analysis(tmp_path: Path) -> None:
    analysis = _analysis()
    paths = _cli_paths(tmp_path)
    provenance = analysis.provenance("LNAnalysis", {"mode": "general"})
    outputs.write_analysis(analysis, paths, provenance, image_reference="outputHeatmapImage")
    ln_doc = json.loads(paths[outputs.ANNOTATION].read_text())
    heat_doc = json.loads(paths[outputs.HEATMAP].read_text())
    metadata = json.loads(paths[outputs.METADATA].read_text())
    summary = json.loads(paths[outputs.SUMMARY].read_text())
    validate_document(ln_doc)
    validate_document(heat_doc, cli_outputs={"outputHeatmapImage"})
    assert ln_doc["attributes"]["counts"] == summary["counts"] == {"lns": 2, "positive": 1, "negative": 1}
    assert ln_doc["attributes"]["cli"] == heat_doc["attributes"]["cli"] == "LNAnalysis"
    assert ln_doc["attributes"]["parameters"] == {"mode": "general"}
    assert metadata["lnassist_positive_lns"] == 1 and metadata["lnassist_contours"] == "detector"
    assert summary["item_metadata"] == metadata
    assert [ln["score"] for ln in summary["lns"]] == [0.9, 0.2]
    (image_element,) = [e for e in heat_doc["elements"] if e["type"] == "image"]
    assert image_element["girderId"] == "outputHeatmapImage"
    with tifffile.TiffFile(paths[outputs.HEATMAP_IMAGE]) as tiff:
        rgba = tiff.pages[0].asarray()
    # One 32 px pixel per CAM cell from the slide's origin: image pixel (6, 4) is cell (0, 1) (0.9),
    # pixel (6, 3) cell (0, 0) (0.1): above the threshold coloured, below half of it transparent.
    assert rgba.shape[2] == 4 and rgba[6, 4, 3] > 0 and rgba[6, 3, 3] == 0


def test_the_image_is_written_but_not_placed_without_a_reference(tmp_path: Path) -> None:
    analysis = _analysis()
    paths = _cli_paths(tmp_path)
    outputs.write_analysis(analysis, paths, analysis.provenance("lnassist analyze", {}))
    heat_doc = json.loads(paths[outputs.HEATMAP].read_text())
    assert {e["type"] for e in heat_doc["elements"]} == {"griddata"}
    assert paths[outputs.HEATMAP_IMAGE].read_bytes()[:2] in (b"II", b"MM")


def test_a_failing_last_file_leaves_nothing(tmp_path: Path) -> None:
    """The last output cannot be created (its folder is a file): none of the others appears, and no
    temporary file is left behind."""
    analysis = _analysis()
    paths = _cli_paths(tmp_path)
    (tmp_path / "not-a-folder").write_text("a file where the last output's folder should be\n")
    paths[outputs.SUMMARY] = tmp_path / "not-a-folder" / "summary.json"
    with pytest.raises(OSError):
        outputs.write_analysis(analysis, paths, analysis.provenance("LNAnalysis", {}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_existing_outputs_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    analysis = _analysis()
    paths = _cli_paths(tmp_path)
    paths[outputs.METADATA].write_text("{}\n")
    with pytest.raises(OutputExistsError, match="meta.json"):
        outputs.write_analysis(analysis, paths, analysis.provenance("LNAnalysis", {}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
    assert paths[outputs.METADATA].read_text() == "{}\n"
    outputs.write_analysis(analysis, paths, analysis.provenance("LNAnalysis", {}), overwrite=True)
    assert json.loads(paths[outputs.METADATA].read_text())["lnassist_lns"] == 2


def test_invalid_results_write_nothing(tmp_path: Path) -> None:
    analysis = _analysis()
    analysis.lns[0] = LNResult(1, _square(100, 200, 64), 0.9, False, 865.0)  # label contradicts score
    with pytest.raises(LnassistError, match="disagrees"):
        outputs.write_analysis(analysis, _cli_paths(tmp_path), analysis.provenance("LNAnalysis", {}))
    assert list(tmp_path.iterdir()) == []


def test_requests_that_cannot_be_written_are_refused_by_kind() -> None:
    with pytest.raises(outputs.OutputError, match="nothing to write"):
        outputs.check_kinds([])
    with pytest.raises(outputs.OutputError, match="unknown"):
        outputs.check_kinds([outputs.ANNOTATION, "pdf"])
    with pytest.raises(outputs.OutputError, match="places the image"):
        outputs.check_kinds([outputs.HEATMAP_IMAGE, outputs.ANNOTATION])
    outputs.check_kinds([outputs.HEATMAP_IMAGE, outputs.HEATMAP])


def test_local_paths_are_the_documented_file_names(tmp_path: Path) -> None:
    assert {k: p.name for k, p in outputs.local_paths(tmp_path).items()} == outputs.LOCAL_NAMES
    assert all(p.parent == tmp_path for p in outputs.local_paths(tmp_path).values())


def test_write_files_atomic_renames_only_complete_sets(tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.bin"
    write_files_atomic({a: b"1", b: b"2"})
    assert a.read_bytes() == b"1" and b.read_bytes() == b"2"
    with pytest.raises(OutputExistsError):
        write_files_atomic({tmp_path / "c.bin": b"3", a: b"4"})
    assert not (tmp_path / "c.bin").exists() and a.read_bytes() == b"1"
