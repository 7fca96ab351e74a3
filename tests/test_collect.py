"""The server-free parts of collecting reviewed annotations and of model versions: region geometry,
the transition matrix, snapshot verification, credentials, references and cached versions. The whole
loop against the real stack is ``tests/test_retrain_loop.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lnassist import collect, versions
from lnassist.registry import ModelEntry, RegistryError, resolve, sha256_of

CONTOUR = np.array([[1000.0, 2000.0], [1500.0, 2000.0], [1500.0, 2600.0], [1000.0, 2600.0]])


def test_region_is_the_contour_box_plus_margin_at_the_classifier_resolution():
    region = collect.region_for(CONTOUR, base_mpp=0.25, target_mpp=0.46, size_base_px=(10_000, 10_000))
    margin = collect.MARGIN_UM / 0.25
    assert region.left_base_px == 1000 - margin and region.top_base_px == 2000 - margin
    assert region.base_px_per_px == pytest.approx(0.46 / 0.25)
    assert region.width_px == int((500 + 2 * margin) / (0.46 / 0.25))
    assert region.height_px == int((600 + 2 * margin) / (0.46 / 0.25))


def test_region_never_upsamples_and_stays_inside_the_slide():
    region = collect.region_for(CONTOUR, base_mpp=0.5, target_mpp=0.46, size_base_px=(1480, 2500))
    assert region.base_px_per_px == 1.0  # the tile API never upsamples: the slide's own resolution
    assert region.left_base_px + region.width_px <= 1480 and region.top_base_px + region.height_px <= 2500
    with pytest.raises(collect.CollectError, match="outside the slide"):
        collect.region_for(CONTOUR + 20_000, base_mpp=0.5, target_mpp=0.46, size_base_px=(1480, 2500))


def test_transition_matrix_from_ai_and_reviewed_labels():
    rows = [
        {"label": 1, "ai_label": 1},
        {"label": 1, "ai_label": 0},  # the AI missed it
        {"label": 0, "ai_label": 0},
        {"label": 0, "ai_label": 0},
        {"label": 0, "ai_label": 1},  # a false alarm
        {"label": 1, "ai_label": None},  # drawn by the pathologist: no pair
    ]
    t = collect.transition_of(rows)
    assert t["counts"] == [[2, 1], [1, 1]] and t["n_pairs"] == 5
    assert t["matrix"] == [[2 / 3, 1 / 3], [0.5, 0.5]]
    only_negative = collect.transition_of([{"label": 0, "ai_label": 0}])
    assert only_negative["matrix"] is None and "class(es) [1]" in only_negative["note"]


def _dataset(folder: Path) -> None:
    region = folder / "r1.tiff"
    region.write_bytes(b"region pixels")
    row = {"split": "collected", "slide": "r1.tiff", "slide_id": "a:1", "ln_id": "1",
           "contour": [[0, 0], [5, 0], [5, 5]], "label": 1, "mpp": 0.46}  # fmt: skip
    (folder / collect.MANIFEST_NAME).write_text(json.dumps(row) + "\n")
    snapshot = {"format": collect.SNAPSHOT_FORMAT, "id": "x",
                "slides": [{"lns": [{"region": "r1.tiff", "sha256": sha256_of(region)}]}]}  # fmt: skip
    (folder / collect.SNAPSHOT_NAME).write_text(json.dumps(snapshot))


def test_verify_finds_missing_and_changed_regions(tmp_path: Path):
    _dataset(tmp_path)
    assert collect.verify(tmp_path)["id"] == "x"
    (tmp_path / "r1.tiff").write_bytes(b"other pixels")
    with pytest.raises(collect.CollectError, match="does not match snapshot x"):
        collect.verify(tmp_path)
    (tmp_path / "r1.tiff").unlink()
    with pytest.raises(collect.CollectError, match="is missing"):
        collect.verify(tmp_path)
    (tmp_path / collect.SNAPSHOT_NAME).write_text("{}")
    with pytest.raises(collect.CollectError, match="not a dataset snapshot"):
        collect.load_snapshot(tmp_path)


def test_connect_needs_credentials_and_a_server(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(collect.API_KEY_ENV, raising=False)
    monkeypatch.delenv(collect.TOKEN_ENV, raising=False)
    with pytest.raises(collect.CollectError, match="no Girder credentials"):
        collect.connect("http://127.0.0.1:9/api/v1")
    with pytest.raises(collect.CollectError, match="cannot reach the Girder API") as caught:
        collect.connect("http://127.0.0.1:9/api/v1", token="secret-token-value")
    assert "secret-token-value" not in str(caught.value)


def test_model_references():
    item = "0123456789abcdef01234567"
    assert versions.parse_ref(versions.ref(item)) == item
    assert versions.parse_ref("classifier-cpu-v1") is None and versions.parse_ref(None) is None
    with pytest.raises(versions.VersionError, match="not a model reference"):
        versions.parse_ref("girder:not-an-id")
    state = versions.promotion({versions.PROMOTION_META: {"classifier": {"current": item, "history": [1]}}})
    assert state == {"current": item, "history": [1]}
    assert versions.promotion(None) == {"current": None, "history": []}


def test_a_cached_version_resolves_with_its_recorded_provenance(tmp_path: Path):
    weights = tmp_path / "abc.pt"
    weights.write_bytes(b"weights")
    entry = ModelEntry("classifier-x", "classifier", weights.name, sha256_of(weights), "girder:" + "1" * 24)
    weights.with_suffix(".json").write_text(json.dumps(entry.__dict__))
    path, found = resolve("classifier", str(weights))
    assert path == weights and found == entry
    with pytest.raises(RegistryError, match="not the detector"):
        resolve("detector", str(weights))
    weights.write_bytes(b"swapped weights")
    with pytest.raises(RegistryError, match="sha256"):
        resolve("classifier", str(weights))


class FakeClient:
    """What :func:`lnassist.versions.fetch` asks of girder-client: an item and a file download."""

    def __init__(self, item: dict, content: bytes) -> None:
        self.item, self.content, self.downloads = item, content, 0

    def getItem(self, item_id: str) -> dict:  # noqa: N802 (girder-client's name)
        return self.item

    def downloadFile(self, file_id: str, path: str) -> None:  # noqa: N802
        self.downloads += 1
        Path(path).write_bytes(self.content)


def test_fetch_checks_the_sha256_and_caches(tmp_path: Path):
    import hashlib

    content = b"float16 weights"
    meta = {
        "kind": "classifier",
        "id": "classifier-r1",
        "sha256": hashlib.sha256(content).hexdigest(),
        "file_id": "f",
    }
    client = FakeClient(
        {"_id": "1" * 24, "name": "classifier-r1", "meta": {versions.MODEL_META: meta}}, content
    )
    path = versions.fetch(client, "1" * 24, cache=tmp_path)
    assert path.read_bytes() == content and client.downloads == 1
    assert versions.fetch(client, "1" * 24, cache=tmp_path) == path and client.downloads == 1  # cached
    _, entry = resolve("classifier", str(path))
    assert entry.version == "girder:" + "1" * 24 and entry.id == "classifier-r1"
    swapped = FakeClient(client.item, b"other weights")
    with pytest.raises(versions.VersionError, match="differs from the recorded"):
        versions.fetch(swapped, "1" * 24, cache=tmp_path / "fresh")
    assert not list((tmp_path / "fresh").iterdir())  # the wrong file is not left behind
    not_a_model = FakeClient({"_id": "2" * 24, "name": "notes", "meta": {}}, content)
    with pytest.raises(versions.VersionError, match="is not an lnassist classifier version"):
        versions.fetch(not_a_model, "2" * 24, cache=tmp_path)
