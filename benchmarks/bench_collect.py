"""Benchmark of the retraining loop's data path in the real stack: ``lnassist collect`` over a folder
of reviewed slides, and an LNRetrain job on the snapshot it made.

``--slides`` synthetic slides (4600 x 2600 px at 0.46 µm/px, two nodes each: one negative, one with
isolated tumour cells) are uploaded to a study folder; each gets an LN document as the analysis
CLI's ingest stores it (its outlines are the ground truth's, labels and scores made up) and an
"accepted" review. Then

- ``lnassist collect`` runs as a subprocess (as an ML engineer runs it, API key in the environment):
  wall time, regions/s, megapixels/s and MB/s (RGB fetched; JPEG TIFF written), and the command
  process's own peak resident memory; then the same collect as a library call in a bare process
  (its data path's peak memory, without what the command line imports for other commands);
- the LNRetrain job (``POST /lnassist/retrain``, 1 epoch, CPU) runs on the same folder: wall time
  from the job's own timestamps, and the held-out numbers it uploaded.

Figures go to ``benchmarks/results/collect.json``. The stack, the image and the settings come from
``tools/dsa_demo.py``'s helpers.

    .venv/bin/python benchmarks/bench_collect.py [--slides 20] [--image lnassist:demo]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import girder_client

from lnassist import annotations
from lnassist.results import LNResult, ModelRef, Provenance
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "collect.json"
JOB_SUCCESS = 3


def demo_helpers():
    spec = importlib.util.spec_from_file_location("dsa_demo", REPO / "tools" / "dsa_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reviewed_slide(gc: girder_client.GirderClient, folder_id: str, path: Path, nodes: list[dict]) -> None:
    import numpy as np

    file = gc.uploadFileToFolder(folder_id, str(path))
    for _ in range(100):
        item = gc.get(f"item/{file['itemId']}")
        if (item.get("largeImage") or {}).get("fileId"):
            break
        time.sleep(0.2)
    lns = [
        LNResult(i + 1, np.asarray(n["contour"], float), 0.8 if n["label"] else 0.1, bool(n["label"]), 1e6)
        for i, n in enumerate(nodes)
    ]
    provenance = Provenance(
        models=(ModelRef("classifier-cpu-v1", "classifier", "1", "b" * 64),),
        cli="LNAnalysis",
        lnassist_version="0.1.0",
        mode="general",
        threshold=0.4,
    )
    doc = gc.post(
        "annotation", parameters={"itemId": item["_id"]}, json=annotations.ln_document(lns, provenance)
    )
    gc.put(f"lnassist/annotation/{doc['_id']}/review", parameters={"state": "accepted"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=20)
    parser.add_argument("--image", default="lnassist:demo")
    args = parser.parse_args(argv)

    demo = demo_helpers()
    work = Path(tempfile.mkdtemp(prefix="bench-collect-"))
    state, _, gc = demo.stack_with_image(args.image, work)
    tag = uuid.uuid4().hex[:6]
    collection = gc.createCollection(f"bench-collect-{tag}", public=False)
    study = gc.createFolder(collection["_id"], "study", parentType="collection")
    models = gc.createFolder(collection["_id"], "models", parentType="collection")
    before = gc.get("system/setting", parameters={"key": "lnassist.models_folder"})
    gc.put("system/setting", parameters={"key": "lnassist.models_folder", "value": models["_id"]})
    for index in range(args.slides):
        path = work / f"bench-collect-{index:02d}.tiff"
        gt = write_slide(
            path, LayoutConfig(4600, 2600, seed=200 + index, categories=("negative", "itc")), workers=1
        )
        reviewed_slide(gc, study["_id"], path, gt["nodes"])
    key = gc.post("api_key", parameters={"name": f"bench-{tag}", "scope": "null"})

    out = work / "dataset"
    # The command in a process that reports its own peak memory (the benchmark's other children,
    # Docker builds among them, would hide it in RUSAGE_CHILDREN).
    measured = (
        "import resource, sys; from lnassist.commands import main; code = main(sys.argv[1:]); "
        "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); "
        "sys.exit(code)"
    )
    command = [sys.executable, "-c", measured, "collect", "--api-url", state["api_url"],
               "--folder", study["_id"], "--out", str(out), "--quiet"]  # fmt: skip
    start = time.monotonic()
    result = subprocess.run(
        command, env={**os.environ, "GIRDER_API_KEY": key["key"]}, capture_output=True, text=True
    )
    collect_s = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    peak_rss_mb = int(result.stderr.rsplit("peak_rss_kb", 1)[1].split()[0]) / 1024
    # The same collect as a library call in a bare process: the data path's own peak memory, without
    # what the ``lnassist`` parser imports for other commands (torch, scipy).
    library = (
        "import resource, sys; from lnassist.collect import collect, connect; "
        "collect(connect(sys.argv[1]), sys.argv[2], sys.argv[3]); "
        "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)"
    )
    bare = subprocess.run(
        [sys.executable, "-c", library, state["api_url"], study["_id"], str(work / "dataset-library")],
        env={**os.environ, "GIRDER_API_KEY": key["key"]},
        capture_output=True,
        text=True,
    )
    if bare.returncode != 0:
        raise SystemExit(bare.stderr)
    library_rss_mb = int(bare.stderr.rsplit("peak_rss_kb", 1)[1].split()[0]) / 1024
    snapshot = json.loads((out / "snapshot.json").read_text())
    regions = snapshot["fetch"]["regions_fetched"]
    region_bytes = snapshot["fetch"]["bytes_fetched"]
    pixels = 0
    for name in out.glob("*.tiff"):
        import tifffile

        with tifffile.TiffFile(name) as tif:
            pixels += tif.pages[0].shape[0] * tif.pages[0].shape[1]

    job = gc.post("lnassist/retrain", parameters={"folderId": study["_id"], "epochs": 1})
    while (job := gc.get(f"job/{job['_id']}"))["status"] not in (3, 4, 5):
        time.sleep(2)
    gc.delete(f"api_key/{key['_id']}")
    listed = gc.get("lnassist/models")
    gc.put("system/setting", parameters={"key": "lnassist.models_folder", "value": before})
    if job["status"] != JOB_SUCCESS:
        raise SystemExit("".join(job.get("log", []))[-3000:])
    stamps = {t["status"]: datetime.fromisoformat(t["time"]) for t in job.get("timestamps", [])}
    started = stamps.get(2)
    ended = datetime.fromisoformat(job["updated"])
    version = next(v for v in listed["versions"] if v["dataset"]["snapshot_id"] == snapshot["id"])
    figures = {
        "command": "python benchmarks/bench_collect.py " + " ".join(argv or sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "slides": args.slides,
        "collect": {
            "wall_s": round(collect_s, 1),
            "lns": snapshot["counts"]["lns"],
            "regions_fetched": regions,
            "regions_per_s": round(regions / collect_s, 2),
            "region_megapixels": round(pixels / 1e6, 1),
            "megapixels_per_s": round(pixels / 1e6 / collect_s, 2),
            "region_mb_written": round(region_bytes / 1e6, 1),
            "mb_per_s_written": round(region_bytes / 1e6 / collect_s, 2),
            "rgb_mb_per_s": round(pixels * 3 / 1e6 / collect_s, 2),
            "peak_rss_mb_command": round(peak_rss_mb, 0),
            "peak_rss_mb_library_call": round(library_rss_mb, 0),
        },
        "retrain_job": {
            "epochs": 1,
            "wall_s": round((ended - started).total_seconds(), 1) if started else None,
            "train_lns": version["split"]["n_train_ln"],
            "heldout_lns": version["split"]["n_heldout_ln"],
            "heldout_auc_parent": version["heldout"]["parent"]["auc"],
            "heldout_auc_candidate": version["heldout"]["candidate"]["auc"],
        },
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
