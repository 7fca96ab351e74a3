"""Every name lnassist writes into the Digital Slide Archive, and the colours it draws them in.

The annotation builder (:mod:`lnassist.annotations`), the Slicer CLIs, the overview pictures
(:mod:`lnassist.overlay`), the example HistomicsUI configuration and the Girder plugin all take
these names from here, so renaming a group or a metadata key is one edit. Standard library only:
the Girder server imports it.
"""

from __future__ import annotations

# Annotation document names (HistomicsUI lists documents by name; lnassist never finds its own
# documents by name: their attributes say what made them).
DOC_LN = "LN metastasis"
DOC_HEATMAP = "LN metastasis heatmap"
DOC_CONTOURS = "LN contours"

# Element groups: one per verdict, one for the heatmaps, one for the detector's unscored outlines.
GROUP_POSITIVE = "LN metastasis positive"
GROUP_NEGATIVE = "LN metastasis negative"
GROUP_HEATMAP = "LN metastasis heatmap"
GROUP_DETECTED = "LN"

# Colours (RGB) of each group's outlines, and of the heatmap ramp's ends and threshold.
POSITIVE_RGB = (220, 38, 38)
NEGATIVE_RGB = (22, 163, 74)
DETECTED_RGB = (37, 99, 235)
HEATMAP_RGB = (255, 0, 0)
THRESHOLD_RGB = (255, 165, 0)
LINE_WIDTH = 2  # screen pixels

# Every group lnassist writes, with its outline colour (examples/histomicsui_config.yaml lists these).
GROUP_RGB = {
    GROUP_POSITIVE: POSITIVE_RGB,
    GROUP_NEGATIVE: NEGATIVE_RGB,
    GROUP_HEATMAP: HEATMAP_RGB,
    GROUP_DETECTED: DETECTED_RGB,
}

# Girder item metadata: every key lnassist writes starts with this prefix (Girder refuses keys
# with '.' or a leading '$').
METADATA_PREFIX = "lnassist_"

# Document ``attributes`` keys recording where a document came from.
ATTR_COUNTS = "counts"
ATTR_MODE = "mode"
ATTR_THRESHOLD = "threshold"
ATTR_MODELS = "models"
ATTR_CLI = "cli"
ATTR_VERSION = "lnassist_version"
ATTR_PARAMETERS = "parameters"
ATTR_TIMINGS = "timings_s"


def rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*colour)


def rgba(colour: tuple[int, int, int], alpha: float) -> str:
    # Fixed decimals: large_image's schema pattern rejects exponents such as 1e-05.
    return "rgba({},{},{},{:.2f})".format(*colour, alpha)
