"""Outputs appear whole or not at all, and existing files are never replaced unasked."""

from __future__ import annotations

import pytest

import lnassist.synth.generate as generate
from lnassist.__main__ import main
from lnassist.fileio import OutputExistsError, atomic_output, write_text_atomic
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
