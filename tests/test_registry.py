"""Model registry: lookup, defaults, checksums, clear errors; the shipped registry itself."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lnassist.classifier import ClassifierSpec, load_classifier, new_classifier, save_classifier
from lnassist.registry import (
    ModelEntry,
    RegistryError,
    load_registry,
    models_dir,
    register,
    resolve,
    sha256_of,
)


def _add_classifier(folder: Path, model_id: str, seed: int) -> ModelEntry:
    save_classifier(folder / f"{model_id}.pt", new_classifier(ClassifierSpec(backbone="tiny"), seed))
    entry = ModelEntry(model_id, "classifier", f"{model_id}.pt", sha256_of(folder / f"{model_id}.pt"), "1")
    register(entry, folder)
    return entry


def test_register_resolve_and_defaults(tmp_path: Path) -> None:
    _add_classifier(tmp_path, "c1", 1)
    _add_classifier(tmp_path, "c2", 2)
    registry = load_registry(tmp_path)
    assert registry.defaults == {"classifier": "c2"}
    path, entry = resolve("classifier", folder=tmp_path)
    assert entry.id == "c2" and path == tmp_path / "c2.pt"
    path, entry = resolve("classifier", "c1", folder=tmp_path)
    assert load_classifier(path).spec.backbone == "tiny"
    with pytest.raises(RegistryError, match=r"no classifier 'c3'.*known: c1, c2"):
        resolve("classifier", "c3", folder=tmp_path)
    with pytest.raises(RegistryError, match="names no default detector"):
        resolve("detector", folder=tmp_path)
    with pytest.raises(RegistryError, match="is a classifier, not a detector"):
        resolve("detector", "c1", folder=tmp_path)
    local = tmp_path / "c1.pt"
    assert resolve("classifier", str(local), folder=tmp_path)[1].version == "local"


def test_corrupt_or_missing_model_files_are_refused(tmp_path: Path) -> None:
    _add_classifier(tmp_path, "c1", 1)
    data = bytearray((tmp_path / "c1.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "c1.pt").write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="corrupt or was replaced"):
        resolve("classifier", folder=tmp_path)
    (tmp_path / "c1.pt").unlink()
    with pytest.raises(RegistryError, match="is missing"):
        resolve("classifier", folder=tmp_path)
    (tmp_path / "registry.json").write_text("{not json")
    with pytest.raises(RegistryError, match="cannot read model registry"):
        load_registry(tmp_path)
    with pytest.raises(RegistryError, match="no model registry"):
        load_registry(tmp_path / "nowhere")
    with pytest.raises(RegistryError, match="cannot read model registry"):
        register(ModelEntry("x", "classifier", "x.pt", "0", "1"), tmp_path)


def test_shipped_registry_is_consistent() -> None:
    """Every shipped model file exists, matches its sha256, loads, is under 15 MB and has a card."""
    registry = load_registry(models_dir())
    assert set(registry.defaults) == {"detector", "classifier"}
    for entry in registry.models:
        path, _ = resolve(entry.kind, entry.id)
        assert path.stat().st_size < 15 * 1024 * 1024, entry.id
        card = models_dir() / entry.card
        assert entry.sha256 in card.read_text(), f"{entry.card} must quote the file's sha256"
        raw = json.loads((models_dir() / "registry.json").read_text())
        assert raw["format"] == "lnassist-model-registry/1"


def test_publish_writes_card_and_half_weights(tmp_path: Path) -> None:
    import torch

    from lnassist.detector.model import CPU, build_detector, load_checkpoint, save_checkpoint
    from lnassist.publish import publish

    src = tmp_path / "det.pt"
    save_checkpoint(src, build_detector(CPU, seed=1), {"note": "trained somewhere"})
    folder = tmp_path / "models"
    folder.mkdir()
    entry = publish(
        "detector", src, "det-v1", "1", half=True, folder=folder, train_command="lnassist train-detector X"
    )
    shipped = folder / "det-v1.pt"
    assert shipped.stat().st_size < 0.6 * src.stat().st_size
    card = (folder / "det-v1.md").read_text()
    assert entry.sha256 in card and "lnassist train-detector X" in card and "float16" in card
    model, _ = load_checkpoint(shipped)
    original, _ = load_checkpoint(src)
    for key, value in original.state_dict().items():
        got = model.state_dict()[key]
        assert got.dtype == value.dtype
        if value.is_floating_point():
            assert torch.allclose(got, value, rtol=1e-3, atol=1e-4), key
    assert resolve("detector", folder=folder)[1].id == "det-v1"
    # An evaluate-detector report (the detector alone) gives the card and registry its numbers.
    det_report = {
        "weights": str(src),
        "split": "test",
        "summary": {
            "postprocessed_iou_pooled": 0.96,
            "postprocessed_pixel_accuracy": 0.99,
            "count_error_mean_abs": 0.25,
            "n_slides": 12,
        },
    }
    entry = publish("detector", src, "det-v2", "1", report=det_report, folder=folder, make_default=False)
    assert entry.summary == {
        "detector": {
            "postprocessed_iou_pooled": 0.96,
            "postprocessed_pixel_accuracy": 0.99,
            "count_error_mean_abs": 0.25,
        }
    }
    assert "postprocessed_iou_pooled 0.9600" in (folder / "det-v2.md").read_text()
    assert resolve("detector", folder=folder)[1].id == "det-v1"


def test_publish_sets_a_classifier_s_orientations(tmp_path: Path) -> None:
    from lnassist.publish import publish

    src = tmp_path / "clf.pt"
    save_classifier(src, new_classifier(ClassifierSpec(backbone="tiny"), seed=2))
    folder = tmp_path / "models"
    folder.mkdir()
    publish("classifier", src, "clf-d4", "1", folder=folder, orientations=8)
    assert load_classifier(folder / "clf-d4.pt").spec.orientations == 8
    assert "8 orientations" in (folder / "clf-d4.md").read_text()
    publish("classifier", folder / "clf-d4.pt", "clf-as-read", "1", folder=folder, orientations=1)
    assert load_classifier(folder / "clf-as-read.pt").spec.orientations == 1
    publish("classifier", folder / "clf-d4.pt", "clf-kept", "1", folder=folder)  # as the file says
    assert load_classifier(folder / "clf-kept.pt").spec.orientations == 8
    with pytest.raises(RegistryError, match="orientations must be 1 or 8"):
        publish("classifier", src, "clf-bad", "1", folder=folder, orientations=4)
    assert not (folder / "clf-bad.pt").exists()


def test_registry_imports_only_the_standard_library() -> None:
    # The Docker image's CLIs and the Girder server look models up; neither may pay for torch or numpy.
    code = (
        "import sys; before = set(sys.modules); import lnassist.registry; "
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    imported = set(proc.stdout.split())
    assert "lnassist" in imported
    assert not imported & {"numpy", "torch", "yaml", "large_image"}
    assert imported - set(sys.stdlib_module_names) == {"lnassist"}
