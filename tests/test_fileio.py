"""Outputs appear whole or not at all, existing files are never replaced unasked, and torch / YAML
files are read safely with one-line errors."""

from __future__ import annotations

import pickle

import pytest
import torch

import lnassist.synth.generate as generate
from lnassist.__main__ import main
from lnassist.errors import LnassistError
from lnassist.fileio import (
    OutputExistsError,
    atomic_output,
    load_torch,
    read_yaml_mapping,
    save_torch,
    write_text_atomic,
)
from lnassist.synth.layout import LayoutConfig


def test_atomic_output_renames_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    write_text_atomic(target, "whole")
    assert target.read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    target = tmp_path / "reviewed.json"
    target.write_text("pathologist's work")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_text_atomic(target, "model output")
    assert target.read_text() == "pathologist's work"
    write_text_atomic(target, "model output", overwrite=True)
    assert target.read_text() == "model output"


def test_failed_synthetic_slide_leaves_no_files(tmp_path, monkeypatch):
    def broken_render(layout, x0, y0, w, h):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(generate, "render_region", broken_render)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        generate.write_slide(tmp_path / "s.tiff", LayoutConfig(2000, 2000, seed=1), tile_px=256)
    assert list(tmp_path.iterdir()) == []


def test_synth_cli_refuses_to_replace_a_slide(tmp_path, capsys):
    out = tmp_path / "s.tiff"
    args = ["synth", str(out), "--width-px", "2000", "--height-px", "2000", "--tile-px", "256"]
    assert main(args) == 0
    before = out.read_bytes()
    assert main(args + ["--seed", "5"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(args + ["--seed", "5", "--overwrite"]) == 0
    assert out.read_bytes() != before


class DemoError(LnassistError):
    pass


def test_torch_files_round_trip_and_refuse_code(tmp_path):
    path = tmp_path / "w.pt"
    save_torch(path, {"w": torch.arange(3.0), "note": "x"})
    loaded = load_torch(path, "weights", DemoError)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["note"] == "x"
    with pytest.raises(OutputExistsError):
        save_torch(path, {})
    with pytest.raises(DemoError, match="no such weights file"):
        load_torch(tmp_path / "missing.pt", "weights", DemoError)
    # A pickle that would run code on load (weights_only refuses it) and a file that is not torch's.
    evil = tmp_path / "evil.pt"
    torch.save({"f": pickle.loads}, evil)
    (tmp_path / "text.pt").write_text("hello")
    for bad in (evil, tmp_path / "text.pt"):
        with pytest.raises(DemoError, match=f"{bad.name}: not a readable weights"):
            load_torch(bad, "weights", DemoError)


def test_yaml_mapping(tmp_path):
    good, empty, listed, broken = (tmp_path / f"{n}.yaml" for n in ("good", "empty", "list", "broken"))
    good.write_text("a: 1\nb: [2, 3]\n")
    empty.write_text("")
    listed.write_text("- 1\n- 2\n")
    broken.write_text("a: [1,\n")
    assert read_yaml_mapping(good, "config", DemoError) == {"a": 1, "b": [2, 3]}
    assert read_yaml_mapping(empty, "config", DemoError) == {}
    with pytest.raises(DemoError, match="must be a mapping"):
        read_yaml_mapping(listed, "config", DemoError)
    for bad in (broken, tmp_path / "missing.yaml"):
        with pytest.raises(DemoError, match=f"cannot read config {bad}"):
            read_yaml_mapping(bad, "config", DemoError)
