"""``lnassist analyze``: the LN analysis of one slide into a folder of files (no Girder needed)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from lnassist.commands.args import device, positive_int, set_threads
from lnassist.constants import DEFAULT_MODE, MODES, THRESHOLDS, WHOLE_SLIDE

log = logging.getLogger(__name__)


def run_analyze(args: argparse.Namespace) -> int:
    from lnassist.fileio import refuse_existing
    from lnassist.outputs import local_paths, write_analysis
    from lnassist.pipeline import AnalysisConfig, analyze, parse_region
    from lnassist.slide import open_slide

    paths = local_paths(args.out)
    for path in paths.values():
        refuse_existing(path, args.overwrite)  # before minutes of work, not after
    set_threads(args.threads)
    cfg = AnalysisConfig(
        mode=args.mode,
        threshold=args.threshold,
        detector=args.detector,
        classifier=args.classifier,
        base_mpp=args.mpp,
        region_base_px=parse_region(args.region) if args.region else WHOLE_SLIDE,
        cam=not args.no_cam,
        device=args.device,
    )

    def report(stage: str, fraction: float, message: str) -> None:
        log.info("%s %3.0f%% %s", stage, 100 * fraction, message)

    slide = open_slide(args.slide, cfg.base_mpp)
    analysis = analyze(slide, cfg, report)
    parameters = {
        k: v if v is None or isinstance(v, str | int | float | bool) else str(v)
        for k, v in vars(args).items()
        if k not in ("func", "overwrite", "verbose")
    }
    provenance = analysis.provenance("lnassist analyze", parameters)
    write_analysis(analysis, paths, provenance, slide=slide, overwrite=args.overwrite)
    print(f"{analysis.slide_path}: {analysis.summary_line()}")
    for ln in analysis.lns:
        print(f"  LN {ln.ln_id}: score {ln.score:.3f} -> {'POSITIVE' if ln.positive else 'negative'}")
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="run the LN analysis on a slide: annotation JSON, heatmap, summary, overlay PNG",
        description="Find the lymph nodes of a slide, score each for metastasis (ESCNN), and write the DSA "
        "annotation documents (LN contours; heatmap), a summary and an overview PNG into --out.",
    )
    p.add_argument("slide")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--mode",
        choices=MODES,
        default=DEFAULT_MODE,
        help=f"screening: threshold {THRESHOLDS['screening']} (high sensitivity); "
        f"general: {THRESHOLDS['general']} (default {DEFAULT_MODE})",
    )
    p.add_argument("--threshold", type=float, help="custom threshold in [0, 1] (overrides --mode)")
    p.add_argument("--region", help="x,y,width,height in base pixels (default: whole slide)")
    p.add_argument("--mpp", type=float, help="base resolution (um/px) for slides without metadata")
    p.add_argument("--detector", help="detector id from models/registry.json or a checkpoint path")
    p.add_argument("--classifier", help="classifier id from models/registry.json or a checkpoint path")
    p.add_argument("--no-cam", action="store_true", help="scores only, no heatmap")
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--device", type=device, default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_analyze)
