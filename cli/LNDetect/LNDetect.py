"""Slicer CLI "Detect LNs": the LN detector's outlines of a slide as one annotation, without scores.

For annotators: the outlines can be corrected in HistomicsUI and then scored with ``LNClassify``.
Parameters: ``LNDetect.xml``.
"""

import argparse
import sys

from lnassist.cli_support import SlicerProgress, analysis_config, cli_parameters, requested_outputs, run_cli

STAGES = (
    ("detect", "finding the lymph nodes", 0.9),
    ("write", "writing the outputs", 0.1),
)


def main(args: argparse.Namespace, cli_name: str) -> None:
    from lnassist.annotations import contour_document, validate_document
    from lnassist.dsa import OUTPUT_ANNOTATION
    from lnassist.outputs import write_documents
    from lnassist.pipeline import detect
    from lnassist.slide import open_slide

    path = requested_outputs(args, (OUTPUT_ANNOTATION,))[OUTPUT_ANNOTATION]
    cfg = analysis_config(args)
    progress = SlicerProgress(STAGES)
    progress("detect", 0.0, f"opening {args.inputImageFile} and loading the detector")
    detection = detect(open_slide(args.inputImageFile, cfg.base_mpp), cfg, progress)
    document = contour_document(
        detection.contours_base_px, detection.base_mpp, detection.provenance(cli_name, cli_parameters(args))
    )
    validate_document(document)
    progress("write", 0.0, f"{len(detection.contours_base_px)} LN outline(s)")
    write_documents({path: document}, overwrite=True)
    progress("write", 1.0, f"wrote {path}")
    progress.finish()


if __name__ == "__main__":
    sys.exit(run_cli(__file__, main))
