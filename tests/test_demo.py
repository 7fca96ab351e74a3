"""``lnassist demo`` end to end as ``make demo`` runs it (slow: a 12,000^2 px slide, then its analysis)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from lnassist.demo import CATEGORY_BGR, DEMO_CATEGORIES, OVERVIEW_MPP
from lnassist.slide import open_slide


@pytest.mark.slow
def test_demo_generates_reads_and_draws_a_slide(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lnassist", "demo", "--out", str(tmp_path)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert sorted(n["category"] for n in summary["ground_truth_lns"]) == sorted(DEMO_CATEGORIES)
    assert summary["slide_label"] == 1
    assert summary["slide"]["base_mpp"] == pytest.approx(0.46)
    assert summary["slide"]["magnification"] == pytest.approx(20)

    slide = open_slide(summary["outputs"]["slide"])
    overview = cv2.imread(summary["outputs"]["overview_png"])
    assert overview.shape[1::-1] == slide.size_at(OVERVIEW_MPP)
    for category, bgr in CATEGORY_BGR.items():  # every LN outline is drawn in its category's colour
        drawn = np.all(overview == np.array(bgr, dtype=np.uint8), axis=-1).sum()
        assert drawn > 500, category

    # The analysis with the shipped models: every node found once, the macrometastasis called positive.
    analysis = summary["analysis"]
    assert analysis["counts"]["lns"] == len(DEMO_CATEGORIES)
    assert sorted(ln["truth"] for ln in analysis["lns"]) == sorted(DEMO_CATEGORIES)
    macro = next(ln for ln in analysis["lns"] if ln["truth"] == "macro")
    assert macro["positive"] and macro["score"] >= analysis["threshold"]
    for key in ("annotation", "heatmap", "summary", "overview"):
        assert Path(summary["outputs"][key]).is_file(), key
