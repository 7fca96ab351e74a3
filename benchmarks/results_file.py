"""The results file of a detector benchmark: what was run, where, how long, the summary and the rows."""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(file_name: str, benchmark: str, started: float, summary: Any, per_slide: list) -> Path:
    """Write ``results/<file_name>`` (``started``: the run's ``time.perf_counter()`` at its start), print
    the summary and return the path."""
    out = {
        "benchmark": benchmark,
        "command": " ".join(["python", *sys.argv]),
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": platform.platform(),
        "torch": torch.__version__,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summary,
        "per_slide": per_slide,
    }
    path = RESULTS / file_name
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")
    return path
