"""``lnassist synth`` (one synthetic LN slide) and ``lnassist synth-dataset`` (train/val/test
slides and their ``manifest.jsonl``)."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

from lnassist.categories import CATEGORIES
from lnassist.commands.args import positive_int
from lnassist.synth.dataset import SPLITS
from lnassist.synth.layout import DEFAULT_LOOK, LOOKS, MPP_20X, TUMOUR_TYPES
from lnassist.synth.stain import SITES

SMALLEST_NODE_HELP = (
    "nodes without a micro- or macrometastasis from this diameter up (500-1000; default: 1000, "
    "smaller only where the canvas is)"
)


def _categories(text: str) -> tuple[str, ...]:
    cats = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in cats if c not in CATEGORIES]
    if bad or not cats:
        raise argparse.ArgumentTypeError(f"categories must be comma-separated from {CATEGORIES}")
    return cats


def _sites(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def run_synth(args: argparse.Namespace) -> int:
    from lnassist.synth.generate import gt_path_for, write_slide
    from lnassist.synth.layout import LayoutConfig

    cfg = LayoutConfig(
        args.width_px,
        args.height_px,
        seed=args.seed,
        site=args.site,
        mpp=args.mpp,
        categories=args.categories,
        n_nodes=args.n_nodes,
        tumour_type=args.tumour_type,
        look=args.look,
        smallest_node_um=args.smallest_node_um,
    )
    t0 = time.perf_counter()
    gt = write_slide(
        args.out,
        cfg,
        tile_px=args.tile_px,
        quality=args.quality,
        workers=args.workers,
        overwrite=args.overwrite,
    )
    cats = ", ".join(n["category"] for n in gt["nodes"])
    print(
        f"wrote {args.out} ({args.width_px} x {args.height_px} px, {len(gt['nodes'])} LNs: {cats}) and "
        f"{gt_path_for(args.out)} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


def run_synth_dataset(args: argparse.Namespace) -> int:
    from lnassist.synth.dataset import DatasetConfig, SplitConfig, build_dataset, load_config, plan_dataset

    cfg = load_config(args.config) if args.config else DatasetConfig()
    over = {
        k: v
        for k, v in (
            ("seed", args.seed),
            ("width_px", args.width_px),
            ("height_px", args.height_px),
            ("look", args.look),
            ("smallest_node_um", args.smallest_node_um),
        )
        if v is not None
    }
    cfg = replace(cfg, **over)
    for split in SPLITS:
        n = getattr(args, f"n_{split}")
        sites = getattr(args, f"{split}_sites")
        sc: SplitConfig = getattr(cfg, split)
        cfg = replace(
            cfg,
            **{
                split: replace(
                    sc, n_slides=sc.n_slides if n is None else n, sites=sc.sites if sites is None else sites
                )
            },
        )
    if args.plan:
        print(json.dumps(plan_dataset(cfg), indent=1))
        return 0
    manifest = build_dataset(args.out_dir, cfg, workers=args.workers, overwrite=args.overwrite)
    print(f"wrote {manifest}")
    return 0


def add_cli(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "synth", help="write one synthetic LN slide (pyramidal TIFF + ground truth JSON)"
    )
    p.add_argument("out", help="output .tiff path; ground truth goes to <stem>.gt.json")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width-px", type=positive_int, default=16000, help="base-level width (px at --mpp)")
    p.add_argument("--height-px", type=positive_int, default=16000)
    p.add_argument("--site", default="A", choices=sorted(SITES), help="stain site")
    p.add_argument(
        "--mpp",
        type=float,
        default=MPP_20X,
        help=f"base-level um/px (default {MPP_20X}, 20x; 0.25 for a 40x slide of the same kind of tissue)",
    )
    p.add_argument(
        "--categories",
        type=_categories,
        default=None,
        help=f"comma-separated node categories (default: random mix); from {', '.join(CATEGORIES)}",
    )
    p.add_argument("--n-nodes", type=positive_int, default=None)
    p.add_argument("--smallest-node-um", type=float, default=None, help=SMALLEST_NODE_HELP)
    p.add_argument("--tumour-type", choices=TUMOUR_TYPES, default=None)
    p.add_argument("--tile-px", type=positive_int, default=512)
    p.add_argument(
        "--look",
        choices=LOOKS,
        default=DEFAULT_LOOK,
        help="scanned: texture, anatomy, section, scanner optics; vector: the first models' flat look",
    )
    p.add_argument("--quality", type=int, default=None, help="JPEG quality (default: 85, or the scanner's)")
    p.add_argument("--workers", type=positive_int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace an existing slide and ground truth")
    p.set_defaults(func=run_synth)

    d = subparsers.add_parser(
        "synth-dataset", help="write train/val/test synthetic slides and manifest.jsonl"
    )
    d.add_argument("out_dir")
    d.add_argument("--config", help="YAML with DatasetConfig fields (splits: n_slides, sites, mix)")
    d.add_argument("--seed", type=int, default=None)
    d.add_argument("--width-px", type=positive_int, default=None)
    d.add_argument("--height-px", type=positive_int, default=None)
    d.add_argument(
        "--look", choices=LOOKS, default=None, help=f"slide look (default: the config's, {DEFAULT_LOOK})"
    )
    d.add_argument("--smallest-node-um", type=float, default=None, help=SMALLEST_NODE_HELP)
    for split in SPLITS:
        d.add_argument(f"--n-{split}", type=int, default=None, help=f"number of {split} slides")
        d.add_argument(
            f"--{split}-sites", type=_sites, default=None, help=f"comma-separated sites for {split}"
        )
    d.add_argument("--workers", type=positive_int, default=2)
    d.add_argument("--overwrite", action="store_true", help="rebuild a data set folder that has a manifest")
    d.add_argument(
        "--plan",
        action="store_true",
        help="print the composition per split (from the layouts) and write nothing",
    )
    d.set_defaults(func=run_synth_dataset)
