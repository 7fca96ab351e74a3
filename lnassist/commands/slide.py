"""``lnassist info``: what lnassist reads from a slide (size, resolution, pyramid, tissue fraction)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def run_info(args: argparse.Namespace) -> int:
    import cv2

    from lnassist.slide import DETECTOR_MPP, SlideError, describe, open_slide

    slide = open_slide(args.slide, mpp=args.mpp)
    print(json.dumps(describe(slide), indent=2))
    if args.thumbnail is not None:
        thumbnail = slide.read_thumbnail(DETECTOR_MPP)
        if not cv2.imwrite(str(args.thumbnail), cv2.cvtColor(thumbnail, cv2.COLOR_RGB2BGR)):
            raise SlideError(args.thumbnail, "could not write the thumbnail PNG")
    return 0


def add_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info",
        help="print a slide's size, resolution and tissue fraction as JSON",
        description="Open a slide with large_image and print what lnassist reads from it.",
    )
    parser.add_argument("slide", type=Path, help="slide file (any format large_image reads)")
    parser.add_argument(
        "--mpp", type=float, default=None, help="base-level um/px, for slides without resolution metadata"
    )
    parser.add_argument(
        "--thumbnail",
        type=Path,
        default=None,
        help="also write the slide at the detector resolution (7.36 um/px) to this PNG",
    )
    parser.set_defaults(func=run_info)
