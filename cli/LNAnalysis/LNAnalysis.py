"""Slicer CLI "Run LN analysis": slide -> LN outlines with metastasis scores, heatmaps, item metadata.

Detection and classification are :func:`lnassist.pipeline.analyze`; the outputs are written by
:mod:`lnassist.outputs`. Parameters: ``LNAnalysis.xml``.
"""

import argparse
import sys

from lnassist.cli_support import (
    SlicerProgress,
    analysis_config,
    analysis_outputs,
    cli_parameters,
    run_cli,
    write_analysis,
)

STAGES = (
    ("detect", "finding the lymph nodes", 0.2),
    ("classify", "scoring each lymph node", 0.75),
    ("write", "writing the outputs", 0.05),
)


def main(args: argparse.Namespace, cli_name: str) -> None:
    from lnassist.pipeline import analyze
    from lnassist.slide import open_slide

    paths = analysis_outputs(args)
    cfg = analysis_config(args)
    progress = SlicerProgress(STAGES)
    progress("detect", 0.0, f"opening {args.inputImageFile} and loading the models")
    slide = open_slide(args.inputImageFile, cfg.base_mpp)
    analysis = analyze(slide, cfg, progress)
    write_analysis(
        analysis,
        paths,
        cli_name=cli_name,
        parameters=cli_parameters(args),
        contours_from="detector",
        progress=progress,
        slide=slide,
    )


if __name__ == "__main__":
    sys.exit(run_cli(__file__, main))
