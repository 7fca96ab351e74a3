"""Slicer CLI "Classify LNs": score the LN outlines of an annotation (e.g. corrected by a pathologist).

Every closed polyline of the input annotation is one LN; the outputs are those of
``LNAnalysis`` for these LNs. Parameters: ``LNClassify.xml``.
"""

import argparse
import sys

from lnassist.cli_support import (
    CliInputError,
    SlicerProgress,
    analysis_config,
    analysis_outputs,
    cli_parameters,
    fetch_annotation_contours,
    read_annotation_contours,
    run_cli,
    write_analysis,
)
from lnassist.pipeline import classify
from lnassist.slide import open_slide

STAGES = (
    ("classify", "scoring each lymph node", 0.95),
    ("write", "writing the outputs", 0.05),
)


def main(args: argparse.Namespace, cli_name: str) -> None:
    paths = analysis_outputs(args)
    if bool(args.inputAnnotationFile) == bool(args.annotationId):
        raise CliInputError(
            "give the LN outlines either as --inputAnnotationFile or as --annotationId (one of them)"
        )
    if args.inputAnnotationFile:
        source = args.inputAnnotationFile
        contours = read_annotation_contours(source)
    else:
        source = f"annotation {args.annotationId}"
        contours = fetch_annotation_contours(args.girderApiUrl, args.girderToken, args.annotationId)
    cfg = analysis_config(args)
    progress = SlicerProgress(STAGES)
    progress("classify", 0.0, f"{len(contours)} LN outline(s) from {source}")
    slide = open_slide(args.inputImageFile, cfg.base_mpp)
    analysis = classify(slide, contours, cfg, progress)
    write_analysis(
        analysis,
        paths,
        cli_name=cli_name,
        parameters=cli_parameters(args),
        contours_from="annotation",
        progress=progress,
        slide=slide,
    )


if __name__ == "__main__":
    sys.exit(run_cli(__file__, main))
