"""Shortcut measurement of a classifier on a manifest split (issue #15, :mod:`lnassist.escnn.shortcut`).

Per LN: the share of trunk channels whose global maximum lies within ``--within-px`` of the tissue
edge (with the share of the logit evidence they carry and the chance level), and |delta score| under
a 0.5 px bilinear shift, a half-stride whole-pixel shift, a horizontal flip and a 90 degree
rotation; summarised per category. Writes benchmarks/results/shortcut_<name>.json.

The LNs are a manifest's split: ``--manifest``, or by default the data set of
``benchmarks/shortcut_data.yaml`` (10 test slides, 39 LNs, 20 of them ITC), built into ``--data-dir``
by ``lnassist synth-dataset`` on first use (about 2 minutes on one core).

    python benchmarks/bench_shortcut.py --model classifier-cpu-v1 [--manifest M] [--split test]
        [--name NAME] [--within-px 40] [--max-nodes N] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

from lnassist.classifier import load_classifier  # noqa: E402
from lnassist.escnn.shortcut import EDGE_WITHIN_PX, SUBPIXEL_SHIFT_PX, measure_manifest, summarise  # noqa: E402
from lnassist.escnn.streaming import StreamingConfig  # noqa: E402
from lnassist.registry import resolve  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", help="manifest.jsonl (default: the data set of --synth-config)")
    parser.add_argument("--synth-config", default=str(HERE / "shortcut_data.yaml"))
    parser.add_argument("--data-dir", default="/tmp/shortcut-data", help="where --synth-config is built")
    parser.add_argument("--model", required=True, help="classifier registry id or checkpoint path")
    parser.add_argument("--split", default="test")
    parser.add_argument("--name", help="results name (default: the model id)")
    parser.add_argument("--within-px", type=float, default=EDGE_WITHIN_PX, help="edge band, input px")
    parser.add_argument("--max-nodes", type=int, help="the first N LNs of the split")
    parser.add_argument("--tile-px", type=int, help="streaming tile (results do not depend on it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="output JSON (default benchmarks/results/shortcut_<name>.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    manifest, data = args.manifest, None
    if manifest is None:
        from lnassist.synth.dataset import build_dataset, load_config

        data = {"synth_config": args.synth_config, "data_dir": args.data_dir}
        manifest = Path(args.data_dir) / "manifest.jsonl"
        if not manifest.is_file():
            build_dataset(args.data_dir, load_config(args.synth_config), workers=1)

    path, entry = resolve("classifier", args.model)
    classifier = load_classifier(path)
    name = args.name or entry.id
    out = Path(args.out) if args.out else HERE / "results" / f"shortcut_{name}.json"

    def show(r: dict) -> None:
        deltas = " ".join(f"{t}={d:.3f}" for t, d in r["abs_delta"].items())
        print(
            f"{r['key']:>14} {r['category']:>15} score {r['score']:.3f} edge share {r['edge_share']:.2f} "
            f"(chance {r['edge_area_share']:.2f}) |d| {deltas}",
            flush=True,
        )

    t0 = time.perf_counter()
    records = measure_manifest(
        classifier,
        manifest,
        args.split,
        args.within_px,
        StreamingConfig(tile_px=args.tile_px),
        args.max_nodes,
        show,
    )
    result = {
        "benchmark": "shortcut: channel maxima near the LN edge, score change under shift/flip/rotation",
        "command": "python benchmarks/bench_shortcut.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "threads": args.threads},
        "model": {"id": entry.id, "sha256": entry.sha256, "spec": asdict(classifier.spec)},
        "manifest": str(manifest),
        "data": data,
        "split": args.split,
        "within_px": args.within_px,
        "subpixel_shift_px": SUBPIXEL_SHIFT_PX,
        "wall_s": round(time.perf_counter() - t0, 1),
        "summary": summarise(records),
        "nodes": records,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
