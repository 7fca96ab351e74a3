"""Benchmark of ``GET /lnassist/folder/{id}/summary`` on a study folder of 1,000 slides, each with an
lnassist LN document, in the real stack (``tools/dsa_stack.py up``; reused if running, left running).

One small tiled TIFF is uploaded once; the other items are made through Girder's models in a helper
run by the server venv's Python against the same database, each with a copy of the first item's
``largeImage`` record (what large_image needs to count an item as a slide) and an LN document created
with ``Annotation().createAnnotation`` (as the CLI's ingest does). Then the endpoint is timed as the
admin: the first page (limit 50) and all rows (limit 0), the median of ``--repeats`` requests each.
Results: benchmarks/results/folder_summary.json.

    python benchmarks/bench_folder_summary.py [--items 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import girder_client
import numpy as np

from lnassist import annotations
from lnassist.results import LNResult, ModelRef, Provenance
from lnassist.synth.tiff import write_pyramid

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "folder_summary.json"
STACK = [sys.executable, str(REPO / "tools" / "dsa_stack.py")]
STATE_DIR = Path(os.environ.get("LNASSIST_DSA_DIR", "/var/tmp/lnassist-dsa"))

_HELPER = """
import copy, json, sys
from bson import ObjectId
from girder.models.folder import Folder
from girder.models.item import Item
from girder.models.user import User
from girder_large_image_annotation.models.annotation import Annotation
args = json.load(open(sys.argv[1]))
doc = json.load(open(args['doc']))
user = User().load(args['user'], force=True)
folder = Folder().load(args['folder'], force=True)
template = Item().load(args['template'], force=True)
for n in range(args['count']):
    item = Item().createItem('slide-%04d.tiff' % (n + 1), user, folder)
    item['largeImage'] = copy.deepcopy(template['largeImage'])
    item = Item().save(item)
    Annotation().createAnnotation(item, user, copy.deepcopy(doc))
"""


def ln_doc(rng: np.random.Generator) -> dict:
    square = np.array([[0, 0], [100, 0], [100, 100], [0, 100]], dtype=float)
    lns = []
    for ln_id in range(1, 6):
        score = float(rng.uniform(0, 1))
        lns.append(LNResult(ln_id, square + (150 * ln_id, 100), round(score, 4), score >= 0.4, 2500.0))
    provenance = Provenance(
        models=(ModelRef("classifier-cpu-v1", "classifier", "1", "b" * 64),),
        cli="LNAnalysis",
        lnassist_version="0.1.0",
        mode="general",
        threshold=0.4,
    )
    return annotations.ln_document(lns, provenance)


def timed(gc: girder_client.GirderClient, path: str, params: dict, repeats: int) -> tuple[float, dict]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = gc.get(path, parameters=params)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's collection")
    args = parser.parse_args()
    up = subprocess.run([*STACK, "up"], capture_output=True, text=True, timeout=1500)
    if up.returncode:
        print(up.stderr[-3000:], file=sys.stderr)
        return 1
    state = json.loads(up.stdout)
    admin = json.loads(Path(state["admin_file"]).read_text())
    database_port = json.loads((STATE_DIR / "state.json").read_text())["database_port"]
    gc = girder_client.GirderClient(apiUrl=state["api_url"])
    gc.authenticate(admin["login"], admin["password"])
    me = gc.get("user/me")
    collection = gc.post("collection", parameters={"name": f"lnassist-bench-{uuid.uuid4().hex[:8]}"})
    folder = gc.post(
        "folder", parameters={"parentType": "collection", "parentId": collection["_id"], "name": "study"}
    )
    rng = np.random.default_rng(0)
    doc = ln_doc(rng)
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide-0000.tiff"
        write_pyramid(
            slide,
            1024,
            768,
            lambda x0, y0, w, h: np.full((h, w, 3), 230, np.uint8),
            mpp=0.5,
            magnification=20,
            tile_px=256,
            workers=1,
        )
        uploaded = gc.uploadFileToFolder(folder["_id"], str(slide))
        template = gc.get(f"item/{uploaded['itemId']}")
        for _ in range(100):
            if template.get("largeImage", {}).get("fileId"):
                break
            time.sleep(0.2)
            template = gc.get(f"item/{template['_id']}")
        gc.post("annotation", parameters={"itemId": template["_id"]}, json=doc)
        (Path(tmp) / "doc.json").write_text(json.dumps(doc))
        helper_args = {
            "doc": str(Path(tmp) / "doc.json"),
            "user": me["_id"],
            "folder": folder["_id"],
            "template": template["_id"],
            "count": args.items - 1,
        }
        (Path(tmp) / "args.json").write_text(json.dumps(helper_args))
        env = {**os.environ, "GIRDER_MONGO_URI": f"mongodb://127.0.0.1:{database_port}/girder"}
        python = str(STATE_DIR / "venv" / "bin" / "python")
        start = time.perf_counter()
        subprocess.run([python, "-c", _HELPER, str(Path(tmp) / "args.json")], env=env, check=True)
        setup_s = time.perf_counter() - start
    path = f"lnassist/folder/{folder['_id']}/summary"
    first_s, first = timed(gc, path, {"limit": 50}, args.repeats)
    full_s, full = timed(gc, path, {"limit": 0}, args.repeats)
    assert first["count"] == args.items and len(full["rows"]) == args.items, (
        first["count"],
        len(full["rows"]),
    )
    assert full["totals"]["analysed"] == args.items
    result = {
        "items": args.items,
        "lns_per_item": len(doc["elements"]),
        "first_page_s": round(first_s, 3),
        "all_rows_s": round(full_s, 3),
        "target_s": 1.0,
        "met": max(first_s, full_s) < 1.0,
        "repeats": args.repeats,
        "setup_s": round(setup_s, 1),
        "totals": full["totals"],
        "folder_id": folder["_id"],
        "database": "secantusdb (tools/dsa_stack.py)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        gc.delete(f"collection/{collection['_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
