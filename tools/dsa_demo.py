#!/usr/bin/env python3
"""``make demo``: the real DSA workflow on this machine, end to end.

Starts the local stack (``tools/dsa_stack.py web`` and ``up``: Girder 3 on secantusdb, Redis,
girder_worker, our dockerd), builds the lnassist image (``tools/docker_env.sh build``: cached, seconds
when nothing changed), registers it with slicer_cli_web unless that very image is registered already,
and makes it the plugin's ``lnassist.analysis_image``. Then it puts three synthetic slides (positive and
negative LNs, ground truth kept) into the collection "LN demo", folder "study" (reused on later runs),
presses "Run LN analysis" on each (``POST /lnassist/item/{id}/analyze``, what the viewer's button
does), waits for the jobs and the ingest of their documents, and prints the study summary read back
from ``GET /lnassist/folder/{id}/summary`` beside the ground truth, with each slide's HistomicsUI URL.
The server keeps running (``make demo-stop`` stops it).

    .venv/bin/python tools/dsa_demo.py [--image lnassist:demo] [--collection "LN demo"] [--out DIR]

Run with .venv's Python (girder_client, tqdm, lnassist for the synthetic slides).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import girder_client
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
STACK = [sys.executable, str(REPO / "tools" / "dsa_stack.py")]
DOCKER_ENV = ["bash", str(REPO / "tools" / "docker_env.sh")]
JOB_SUCCESS, JOB_ERROR, JOB_CANCELED = 3, 4, 5
JOB_NAMES = {0: "inactive", 1: "queued", 2: "running", 3: "success", 4: "error", 5: "cancelled"}
JOB_TIMEOUT_S = 900
INGEST_TIMEOUT_S = 120
FOLDER = "study"
OLD_FOLDER = "study (earlier demo slides)"  # slides of an earlier generator look: moved here, never deleted
TRUTH_KEY = "demo_truth"  # item metadata: the slide's ground truth (counts, categories, seed)
IMAGE_ID_KEY = "lnassist_demo_image_id"  # on slicer_cli_web's tag folder: the Docker image id registered
# (name, width, height, seed, LN categories): small enough to analyse in seconds each.
SLIDES = (
    ("demo-1-itc.tiff", 4600, 2600, 3, ("negative", "itc")),
    ("demo-2-negative.tiff", 4600, 2600, 7, ("negative", "negative_mimic")),
    ("demo-3-itc.tiff", 4600, 2600, 8, ("itc", "negative_mimic")),
)


class DemoError(RuntimeError):
    pass


def step(message: str) -> None:
    print(f"dsa_demo: {message}", file=sys.stderr, flush=True)


def last_error(text: str) -> str:
    """The line of a tool's output that says what went wrong (its last error-like line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"error|invalid|fail|denied|cannot|not found", line, re.I)]
    return (errors or lines or ["(no output)"])[-1].strip()


def run(command: list[str], what: str, log: Path | None = None, timeout: float = 3600) -> str:
    """Run a tool; its stdout, or a DemoError naming what failed with the tool's last error line."""
    try:
        if log is None:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            output, errors = result.stdout, result.stderr
        else:
            with open(log, "w") as out:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)
            output = errors = log.read_text(errors="replace")
    except subprocess.TimeoutExpired:
        raise DemoError(f"{what}: no answer within {timeout:.0f} s") from None
    if result.returncode:
        where = f" (log: {log})" if log else ""
        raise DemoError(f"{what} failed: {last_error(errors + output)}{where}")
    return output


# ------------------------------------------------------------------------------ stack, image


def start_stack() -> dict:
    """The web client built, then the stack up; a running Girder is restarted to serve a new client."""
    step("building HistomicsUI's web client if needed (tools/dsa_stack.py web; about 3 min the first time)")
    built = run([*STACK, "web"], "tools/dsa_stack.py web").strip() == "built"
    if built and subprocess.run([*STACK, "status"], capture_output=True).returncode == 0:
        step("restarting the stack so that Girder serves the new client")
        run([*STACK, "down"], "tools/dsa_stack.py down")
    step("starting the local DSA stack (tools/dsa_stack.py up)")
    return json.loads(run([*STACK, "up"], "tools/dsa_stack.py up (Girder, Redis, girder_worker, dockerd)"))


def build_image(image: str, out: Path) -> str:
    """``image`` built from this checkout (Docker's layer cache makes an unchanged build seconds); its id."""
    log = out / "image-build.log"
    step(f"building the Docker image {image} (tools/docker_env.sh build; log: {log})")
    run([*DOCKER_ENV, "build", image], f"building the Docker image {image}", log=log)
    inspect = [*DOCKER_ENV, "docker", "image", "inspect", "--format", "{{.Id}}", image]
    return run(inspect, f"docker image inspect {image}").strip()


def wait_for_job(gc: girder_client.GirderClient, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout_s
    while (job := gc.get(f"job/{job_id}"))["status"] not in (JOB_SUCCESS, JOB_ERROR, JOB_CANCELED):
        if time.monotonic() > deadline:
            raise DemoError(f"job {job_id} ({job['title']}) did not finish within {timeout_s:.0f} s")
        time.sleep(1)
    return job


def register_image(gc: girder_client.GirderClient, image: str, image_id: str) -> None:
    """Register ``image`` with slicer_cli_web unless this very build (same image id) is registered,
    then make it the image "Run LN analysis" uses."""
    clis = [cli for cli in gc.get("slicer_cli_web/cli") if cli["image"] == image]
    tag_folder = gc.get(f"item/{clis[0]['_id']}")["folderId"] if clis else None
    registered = tag_folder and gc.getFolder(tag_folder).get("meta", {}).get(IMAGE_ID_KEY)
    if registered == image_id and {cli["name"] for cli in clis} >= {"LNAnalysis"}:
        step(f"{image} is registered already (image {image_id[7:19]})")
    else:
        step(f"registering {image} with slicer_cli_web (PUT /slicer_cli_web/docker_image)")
        job = gc.put("slicer_cli_web/docker_image", parameters={"name": json.dumps([image])})
        job = wait_for_job(gc, job["_id"])
        if job["status"] != JOB_SUCCESS:
            raise DemoError(f"registering {image} failed: {last_error(''.join(job.get('log', [])))}")
        clis = [cli for cli in gc.get("slicer_cli_web/cli") if cli["image"] == image]
        if not clis:
            raise DemoError(f"registering {image} gave no CLIs")
        gc.addMetadataToFolder(gc.get(f"item/{clis[0]['_id']}")["folderId"], {IMAGE_ID_KEY: image_id})
    gc.put("system/setting", parameters={"key": "lnassist.analysis_image", "value": image})


def stack_with_image(image: str, out: Path) -> tuple[dict, dict, girder_client.GirderClient]:
    """The stack running and ``image`` built and registered as the analysis image: (the stack's
    state, the admin's login, a client logged in as the admin). The demo and the benchmarks start so."""
    state = start_stack()
    image_id = build_image(image, out)
    admin = json.loads(Path(state["admin_file"]).read_text())
    gc = girder_client.GirderClient(apiUrl=state["api_url"])
    gc.authenticate(admin["login"], admin["password"])
    register_image(gc, image, image_id)
    return state, admin, gc


# ------------------------------------------------------------------------------------ slides


def truth_of(ground_truth: dict, categories: tuple[str, ...], seed: int) -> dict:
    labels = [node["label"] for node in ground_truth["nodes"]]
    return {
        "positive": sum(labels),
        "negative": len(labels) - sum(labels),
        "total": len(labels),
        "categories": sorted(node["category"] for node in ground_truth["nodes"]),
        "seed": seed,
        "look": ground_truth["look"],
    }


def study_slides(gc: girder_client.GirderClient, collection_name: str, out: Path) -> tuple[dict, list[dict]]:
    """The study folder and its demo slides (items with their ground truth); made on the first run."""
    from lnassist.synth.generate import write_slide
    from lnassist.synth.layout import DEFAULT_LOOK, LayoutConfig

    found = [c for c in gc.get("collection", parameters={"limit": 0}) if c["name"] == collection_name]
    collection = found[0] if found else gc.createCollection(collection_name, public=False)
    folder = gc.createFolder(collection["_id"], FOLDER, parentType="collection", reuseExisting=True)
    items = {item["name"]: item for item in gc.listItem(folder["_id"])}
    slides = []
    for name, width, height, seed, categories in SLIDES:
        item = items.get(name)
        complete = item and TRUTH_KEY in item.get("meta", {}) and "largeImage" in item
        if complete and item["meta"][TRUTH_KEY].get("look") == DEFAULT_LOOK:
            slides.append(item)
            continue
        if complete:  # drawn in an earlier look, maybe annotated by someone: kept, out of the study
            old = gc.createFolder(collection["_id"], OLD_FOLDER, parentType="collection", reuseExisting=True)
            gc.put(f"item/{item['_id']}", parameters={"folderId": old["_id"]})
            step(f"moved {name} of an earlier look to '{OLD_FOLDER}'")
        elif item:  # a half-made slide of an interrupted run
            gc.delete(f"item/{item['_id']}")
        path = out / name
        step(f"generating {name} ({width} x {height} px, LNs: {', '.join(categories)})")
        ground_truth = write_slide(
            path, LayoutConfig(width, height, seed=seed, categories=categories), workers=1, overwrite=True
        )
        file = gc.uploadFileToFolder(folder["_id"], str(path))
        gc.addMetadataToItem(file["itemId"], {TRUTH_KEY: truth_of(ground_truth, categories, seed)})
        item = gc.get(f"item/{file['itemId']}")
        if "largeImage" not in item:
            raise DemoError(f"{name} was uploaded but Girder did not open it as a large image")
        slides.append(item)
    return folder, slides


# ---------------------------------------------------------------------------------- analyses


def summary(gc: girder_client.GirderClient, folder_id: str) -> dict:
    return gc.get(f"lnassist/folder/{folder_id}/summary", parameters={"limit": 0})


def analyse(gc: girder_client.GirderClient, folder: dict, slides: list[dict]) -> dict:
    """Press "Run LN analysis" on every slide; waits for the jobs (progress bar) and for each slide's new LN
    document (ingested after the job's success); the folder summary then."""
    before = {row["item_id"]: row["annotation_id"] for row in summary(gc, folder["_id"])["rows"]}
    started = time.monotonic()
    jobs = {slide["_id"]: gc.post(f"lnassist/item/{slide['_id']}/analyze") for slide in slides}
    names = {slide["_id"]: slide["name"] for slide in slides}
    pending = dict(jobs)
    every = 0.1 if sys.stderr.isatty() else 15  # a log file gets a line now and then, not every frame
    bar = tqdm(total=len(jobs), desc="Run LN analysis", unit="slide", file=sys.stderr, mininterval=every)
    with bar:
        while pending:
            for item_id, job in list(pending.items()):
                job = gc.get(f"job/{job['_id']}")
                if job["status"] in (JOB_ERROR, JOB_CANCELED):
                    ended, log = JOB_NAMES[job["status"]], last_error("".join(job.get("log", [])))
                    raise DemoError(f"the analysis of {names[item_id]} ended {ended}: {log}")
                if job["status"] == JOB_SUCCESS:
                    del pending[item_id]
                    bar.update(1)
                    bar.set_postfix_str(f"{names[item_id]}: done", refresh=False)
                else:
                    state = JOB_NAMES.get(job["status"], "?")
                    bar.set_postfix_str(f"{names[item_id]}: {state}", refresh=sys.stderr.isatty())
                    break  # the worker runs one job at a time, in order
            if pending:
                if time.monotonic() - started > JOB_TIMEOUT_S * len(jobs):
                    raise DemoError("the analysis jobs did not finish in time")
                time.sleep(1)
    step("jobs done; waiting for HistomicsUI to ingest the LN documents")
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    while True:
        result = summary(gc, folder["_id"])
        rows = {row["item_id"]: row for row in result["rows"]}
        new = [rows[i]["analysed"] and rows[i]["annotation_id"] != before.get(i) for i in jobs if i in rows]
        if len(new) == len(jobs) and all(new):
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"the LN documents were not ingested within {INGEST_TIMEOUT_S} s")
        time.sleep(1)


def report(result: dict, slides: list[dict], girder_url: str, admin_file: str, login: str) -> None:
    """The study summary (as Girder says it) beside the ground truth, then where to look."""
    truth = {slide["_id"]: slide["meta"][TRUTH_KEY] for slide in slides}
    print("\nStudy summary (GET /lnassist/folder/{id}/summary) beside the ground truth; AI LN labels "
          "at the mode's threshold\n")  # fmt: skip
    header = f"{'slide':<24} {'AI LNs':>6} {'AI pos':>6} {'AI neg':>6}   {'true LNs':>8} {'true pos':>8} "
    print(header + f"{'true neg':>8}   true categories")
    rows = [row for row in result["rows"] if row["item_id"] in truth]
    for row in rows:
        t = truth[row["item_id"]]
        found = f"{row['name']:<24} {row['total']:>6} {row['positive']:>6} {row['negative']:>6}"
        true = f"{t['total']:>8} {t['positive']:>8} {t['negative']:>8}"
        print(f"{found}   {true}   {', '.join(t['categories'])}")
    totals = result["totals"]
    true_sum = {key: sum(t[key] for t in truth.values()) for key in ("total", "positive", "negative")}
    print(f"{'study (totals)':<24} {totals['total']:>6} {totals['positive']:>6} {totals['negative']:>6}   "
          f"{true_sum['total']:>8} {true_sum['positive']:>8} {true_sum['negative']:>8}")  # fmt: skip
    true_positive_slides = sum(t["positive"] > 0 for t in truth.values())
    analysed = sum(row["analysed"] for row in rows)
    print(f"\ndemo slides analysed: {analysed} of {len(truth)}; positive slides: AI "
          f"{totals['positive_slides']}, truth {true_positive_slides}")  # fmt: skip
    if totals["slides"] > len(rows):  # slides someone else put into the study folder
        print(f"(the study folder holds {totals['slides'] - len(rows)} more slide(s) than the demo's)")
    print("\nOpen in HistomicsUI (outlines and heatmap on each slide, the LN analysis panel on the right):")
    for row in rows:
        print(f"  {row['name']:<24} {girder_url}/histomics#?image={row['item_id']}")
    print(f"The study table (counts, review states, CSV): {girder_url}/#folder/{result['folder_id']}")
    print(f"Log in as '{login}'; the password is in {admin_file} (key \"password\"; mode 0600).")
    print("The server keeps running; `make demo-stop` stops it (tools/dsa_stack.py down).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="lnassist:demo", help="Docker image tag to build and register")
    parser.add_argument("--collection", default="LN demo", help="Girder collection of the demo study")
    parser.add_argument("--out", type=Path, default=REPO / "demo-output" / "dsa",
                        help="local folder for the slides, their ground truth and the build log")  # fmt: skip
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        state, admin, gc = stack_with_image(args.image, args.out)
        folder, slides = study_slides(gc, args.collection, args.out)
        step(f"collection '{args.collection}', folder '{FOLDER}': {len(slides)} slides")
        result = analyse(gc, folder, slides)
        report(result, slides, state["api_url"].removesuffix("/api/v1"), state["admin_file"], admin["login"])
    except (DemoError, girder_client.HttpError, OSError, ValueError) as error:
        message = error
        if isinstance(error, girder_client.HttpError):
            message = f"{error.method} {error.url} -> HTTP {error.status}: {error.responseText[:300]}"
        print(f"dsa_demo: error: {message}", file=sys.stderr)
        return 1
    step(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
