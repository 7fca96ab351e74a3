"""Slicer CLI "Detect LNs": the LN detector's outlines of a slide as one annotation, without scores.

For annotators: the outlines can be corrected in HistomicsUI and then scored with ``LNClassify``.
Parameters: ``LNDetect.xml``.
"""

import argparse
import sys

from lnassist.cli_support import (
    SlicerProgress,
    analysis_config,
    cli_parameters,
    contour_document,
    requested_outputs,
    run_cli,
    write_outputs,
)
from lnassist.pipeline import detect

STAGES = (
    ("detect", "finding the lymph nodes", 0.9),
    ("write", "writing the outputs", 0.1),
)


def main(args: argparse.Namespace, cli_name: str) -> None:
    outputs = requested_outputs(args, ("outputAnnotationFile",))
    cfg = analysis_config(args)
    progress = SlicerProgress(STAGES)
    progress("detect", 0.0, f"opening {args.inputImageFile} and loading the detector")
    detected = detect(args.inputImageFile, cfg, progress)
    document = contour_document(detected, cli_name=cli_name, parameters=cli_parameters(args))
    progress("write", 0.0, f"{len(detected.contours_base_px)} LN outline(s)")
    write_outputs({outputs["outputAnnotationFile"]: document})
    progress("write", 1.0, f"wrote {outputs['outputAnnotationFile']}")
    progress.finish()


if __name__ == "__main__":
    sys.exit(run_cli(__file__, main))
