"""Load benchmark of auto-run in the real stack: many slides arrive at once in a switched-on folder.

One small synthetic slide (2000² px, one node) is uploaded to a staging folder and copied ``--slides``
times into a folder with auto-run on, as fast as the API takes the copies (what a bulk import does).
While the auto-run batch works through them, the benchmark

- samples every 0.3 s how many of the batch's jobs Girder has not ended (the bound is
  ``lnassist.batch_max_in_flight``), and
- every ``--interactive-every`` seconds presses "Run LN analysis" on one slide of another folder
  (``POST /lnassist/item/{id}/analyze``) and measures how long that job waits until it runs,

then checks that every arrival was analysed exactly once (one LNAnalysis job per copy, found by its
title) and writes the figures to ``benchmarks/results/batch_load.json``. The stack (``tools/dsa_stack.py
up``), the image and the ``lnassist.analysis_image`` setting come from ``tools/dsa_demo.py``'s helpers
(image ``--image``, built from this checkout if needed).

    .venv/bin/python benchmarks/bench_batch_load.py [--slides 200] [--bound 2] [--interactive-every 60]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import girder_client

from lnassist.dsa import CLI_ANALYSIS
from lnassist.synth.generate import write_slide
from lnassist.synth.layout import LayoutConfig

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "batch_load.json"
UNFINISHED = [0, 1, 2, 820, 821, 822, 823, 824]  # Girder job statuses before an end
JOB_RUNNING, JOB_SUCCESS = 2, 3


def demo_helpers():
    spec = importlib.util.spec_from_file_location("dsa_demo", REPO / "tools" / "dsa_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def running_at(job: dict) -> datetime | None:
    stamps = [t["time"] for t in job.get("timestamps", []) if t["status"] == JOB_RUNNING]
    return datetime.fromisoformat(stamps[0]) if stamps else None


def upload(gc: girder_client.GirderClient, folder_id: str, path: Path) -> dict:
    file = gc.uploadFileToFolder(folder_id, str(path))
    for _ in range(100):
        item = gc.get(f"item/{file['itemId']}")
        if (item.get("largeImage") or {}).get("fileId"):
            return item
        time.sleep(0.2)
    raise RuntimeError(f"{path.name} did not become a large image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--bound", type=int, default=2, help="lnassist.batch_max_in_flight during the run")
    parser.add_argument(
        "--interactive-every", type=float, default=60.0, help="seconds between interactive runs"
    )
    parser.add_argument("--image", default="lnassist:demo")
    args = parser.parse_args(argv)

    demo = demo_helpers()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-load-"))
    state, _, gc = demo.stack_with_image(args.image, work)
    before = gc.get("system/setting", parameters={"key": "lnassist.batch_max_in_flight"})
    gc.put("system/setting", parameters={"key": "lnassist.batch_max_in_flight", "value": args.bound})

    tag = uuid.uuid4().hex[:6]
    collection = gc.createCollection(f"bench-batch-load-{tag}", public=False)
    staging = gc.createFolder(collection["_id"], "staging", parentType="collection")
    inbox = gc.createFolder(collection["_id"], "inbox", parentType="collection")
    clinic = gc.createFolder(collection["_id"], "clinic", parentType="collection")
    slide = work / f"bench-{tag}.tiff"
    write_slide(slide, LayoutConfig(2000, 2000, seed=31, categories=("negative",)), workers=1)
    source = upload(gc, staging["_id"], slide)
    interactive_slide = upload(gc, clinic["_id"], slide)
    gc.put(f"lnassist/folder/{inbox['_id']}/autorun", parameters={"enabled": "true"})

    most, samples, stop = 0, [], threading.Event()

    def sample() -> None:
        nonlocal most
        while not stop.is_set():
            active = gc.get("job/all", parameters={"limit": 0, "statuses": json.dumps(UNFINISHED)})
            batch_jobs = sum(
                j["type"].endswith(f"#{CLI_ANALYSIS}") and bool(j.get("parentId")) for j in active
            )
            most = max(most, batch_jobs)
            samples.append(batch_jobs)
            stop.wait(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    names = [f"copy-{tag}-{i:04d}.tiff" for i in range(args.slides)]
    for name in names:
        gc.post(f"item/{source['_id']}/copy", parameters={"folderId": inbox["_id"], "name": name})
    imported_s = time.monotonic() - started
    sampler.start()

    interactive_jobs = []
    batch = None
    next_interactive = time.monotonic() + 10
    while True:
        batches = gc.get("lnassist/batch", parameters={"folderId": inbox["_id"]})
        total = sum(b["total"] for b in batches)
        ended = sum(b["ended_slides"] for b in batches)
        if total == args.slides and ended == total and all(b["status"] != "running" for b in batches):
            batch = batches
            break
        if time.monotonic() >= next_interactive:
            interactive_jobs.append(gc.post(f"lnassist/item/{interactive_slide['_id']}/analyze")["_id"])
            next_interactive = time.monotonic() + args.interactive_every
        print(
            f"{time.monotonic() - started:6.0f} s: {ended}/{total} ended, most in flight {most}", flush=True
        )
        time.sleep(5)
    elapsed_s = time.monotonic() - started
    stop.set()
    sampler.join()

    waits = []
    for job_id in interactive_jobs:
        while (job := gc.get(f"job/{job_id}"))["status"] in UNFINISHED:
            time.sleep(1)
        if job["status"] == JOB_SUCCESS and running_at(job):
            waits.append((running_at(job) - datetime.fromisoformat(job["created"])).total_seconds())
    once = tally(gc, batch, set(names))
    gc.put("system/setting", parameters={"key": "lnassist.batch_max_in_flight", "value": before})

    result = {
        "command": "python benchmarks/bench_batch_load.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()}, {platform.system()}, worker concurrency 1",
        "slides": args.slides,
        "bound": args.bound,
        "copy_requests_s": round(imported_s, 1),
        "all_analysed_s": round(elapsed_s, 1),
        "slides_per_minute": round(args.slides / elapsed_s * 60, 2),
        **once,
        "most_batch_jobs_in_flight": most,
        "interactive_waits_s": [round(w, 1) for w in waits],
        "interactive_wait_median_s": round(statistics.median(waits), 1) if waits else None,
        "interactive_wait_max_s": round(max(waits), 1) if waits else None,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return 0 if result["exactly_once"] and most <= args.bound else 1


def tally(gc: girder_client.GirderClient, batches: list[dict], names: set[str]) -> dict:
    """Exactly once, from the batches' reports and Girder's jobs: every copy in one report row with
    one attempt, and the batches' child jobs exactly the rows' jobs (a copy's job is titled after its
    file, the source's name, so jobs are matched through their parent, not their title)."""
    rows = [row for b in batches for row in gc.get(f"lnassist/batch/{b['id']}/report")["rows"]]
    parents = {b["job_id"] for b in batches}
    children = [
        j for j in gc.get("job/all", parameters={"limit": 0})
        if j["type"].endswith(f"#{CLI_ANALYSIS}") and j.get("parentId") in parents
    ]  # fmt: skip
    states = Counter()
    for b in batches:
        states.update(b["states"])
    durations = [row["seconds"] for row in rows if row["seconds"]]
    return {
        "batches": len(batches),
        "states": dict(states),
        "attempts_per_slide": dict(Counter(row["attempts"] for row in rows)),
        "child_jobs": len(children),
        "exactly_once": sorted(row["name"] for row in rows) == sorted(names)
        and all(row["attempts"] == 1 for row in rows)
        and sorted(j["_id"] for j in children) == sorted(row["job_id"] for row in rows),
        "slide_seconds_median": round(statistics.median(durations), 1) if durations else None,
    }


if __name__ == "__main__":
    raise SystemExit(main())
