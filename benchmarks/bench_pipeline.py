"""End-to-end time and peak host memory of the LNAnalysis Slicer CLI on synthetic slides (shipped models).

Each run is a fresh process started as the container starts it (``python cli/LNAnalysis/LNAnalysis.py``);
stage times come from the output annotation's ``timings_s`` (load, read, detect, classify incl. CAM),
the rest of the wall time is start-up and writing. Peak RSS is the child's ``ru_maxrss``.
``--paper-config`` times the paper's architectures instead (DeepLabv3+ ResNet50 detector, ResNet50
ESCNN), untrained (timing only: their scores mean nothing), for a GPU:
``python benchmarks/bench_pipeline.py --paper-config --device cuda --out results/pipeline_gpu.json``.

``--classifier A --classifier B`` runs each slide with each classifier, side by side.

    python benchmarks/bench_pipeline.py [--threads N] [--device cuda] [--classifier ID ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (name, side px, LNs): the 20,000^2 slide with 6 LNs and one with twice its area.
SLIDES = (("20k", 20_000, 6), ("28k", 28_284, 12))


def paper_models(folder: Path) -> None:
    """Untrained paper-configuration models registered in ``folder`` (for timing only)."""
    from lnassist.classifier import ClassifierSpec, new_classifier, save_classifier
    from lnassist.detector.model import PAPER, build_detector, save_checkpoint
    from lnassist.registry import ModelEntry, register, sha256_of

    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "det.pt", build_detector(PAPER))
    save_classifier(folder / "cls.pt", new_classifier(ClassifierSpec(backbone="resnet50")))
    for kind, name in (("detector", "det"), ("classifier", "cls")):
        register(
            ModelEntry(f"{name}-paper-untrained", kind, f"{name}.pt", sha256_of(folder / f"{name}.pt"), "0"),
            folder,
        )


def run_once(slide: Path, out: Path, threads: int, device: str, classifier: str | None = None) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "cli" / "LNAnalysis" / "LNAnalysis.py"),
        "--outputAnnotationFile",
        str(out / "ln.anot"),
        "--outputHeatmapAnnotationFile",
        str(out / "heat.anot"),
        "--outputItemMetadata",
        str(out / "meta.json"),
        "--threads",
        str(threads),
        "--device",
        device,
        *(["--classifier", classifier] if classifier else []),
        str(slide),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT / "cli")
    wall = time.perf_counter() - t0
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode != 0:
        raise SystemExit(f"LNAnalysis failed:\n{done.stderr[-3000:]}")
    doc = json.loads((out / "ln.anot").read_text())
    timings = doc["attributes"]["timings_s"]
    return {
        "wall_s": round(wall, 2),
        "stages_s": timings,
        "startup_and_write_s": round(wall - sum(timings.values()), 2),
        "peak_rss_mb": round(max(peak_kb, before) / 1024, 1),
        "lns_found": doc["attributes"]["counts"]["lns"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_cpu.json")
    parser.add_argument("--paper-config", action="store_true", help="untrained ResNet50 models (timing only)")
    parser.add_argument(
        "--classifier",
        action="append",
        help="classifier registry id; repeat to time several on the same slides (default: the default)",
    )
    args = parser.parse_args()

    from lnassist.registry import load_registry
    from lnassist.synth.generate import write_slide
    from lnassist.synth.layout import LayoutConfig

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.paper_config:
            paper_models(Path(tmp) / "models")
            os.environ["LNASSIST_MODELS"] = str(Path(tmp) / "models")
        registry = load_registry()
        classifiers = args.classifier or [registry.defaults["classifier"]]
        for name, side, n_nodes in SLIDES:
            slide = Path(tmp) / f"{name}.tiff"
            t0 = time.perf_counter()
            gt = write_slide(slide, LayoutConfig(side, side, seed=5, n_nodes=n_nodes), workers=2)
            generate_s = time.perf_counter() - t0
            for classifier in classifiers:
                out = Path(tmp) / f"out-{name}-{classifier}"
                out.mkdir()
                row = {
                    "slide": name,
                    "side_px": side,
                    "lns_true": len(gt["nodes"]),
                    "generate_s": round(generate_s, 1),
                    "classifier": classifier,
                }
                row.update(run_once(slide, out, args.threads, args.device, classifier))
                print(json.dumps(row), flush=True)
                results.append(row)
    wall = {(r["slide"], r["classifier"]): r["wall_s"] for r in results}
    first = classifiers[0]
    report = {
        "command": "python benchmarks/bench_pipeline.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "device": args.device,
        },
        "models": registry.defaults,
        "runs": results,
        "cost_ratio_28k_vs_20k": {c: round(wall["28k", c] / wall["20k", c], 2) for c in classifiers},
        f"wall_ratio_vs_{first}": {
            c: {s: round(wall[s, c] / wall[s, first], 2) for s, _, _ in SLIDES} for c in classifiers[1:]
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
