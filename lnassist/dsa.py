"""Every name lnassist writes into the Digital Slide Archive, and the colours it draws them in.

The annotation builder (:mod:`lnassist.annotations`), the Slicer CLIs, the overview pictures
(:mod:`lnassist.overlay`), the example HistomicsUI configuration and the Girder plugin all take
these names from here, so renaming a group or a metadata key is one edit. Standard library only:
the Girder server imports it.
"""

from __future__ import annotations

# The Slicer CLIs lnassist registers (the names in cli/slicer_cli_list.json).
CLI_ANALYSIS = "LNAnalysis"
CLI_DETECT = "LNDetect"
CLI_CLASSIFY = "LNClassify"
CLI_RETRAIN = "LNRetrain"
CLI_NAMES = (CLI_ANALYSIS, CLI_DETECT, CLI_CLASSIFY, CLI_RETRAIN)
# Their output parameters (cli/*/*.xml): the server names, uploads and ingests the outputs by these.
OUTPUT_ANNOTATION = "outputAnnotationFile"
OUTPUT_HEATMAP_ANNOTATION = "outputHeatmapAnnotationFile"
OUTPUT_HEATMAP_IMAGE = "outputHeatmapImage"
OUTPUT_ITEM_METADATA = "outputItemMetadata"

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
# Heatmap opacity below the threshold, as fractions of the threshold: cells scoring under
# HEATMAP_CLEAR are transparent (little evidence: a whole node at 0.2-0.35 would otherwise be
# tinted all over), and cells up to HEATMAP_FAINT only faintly tinted, so that at a glance only
# suspicious regions are coloured, as in the paper's figures.
HEATMAP_CLEAR = 0.5
HEATMAP_FAINT = 0.8
# The colour of transparent heatmap cells: whatever ignores alpha (Girder's item thumbnails of the
# heatmap image) then shows white around the LNs rather than a block of the ramp's orange.
CLEAR_RGB = (255, 255, 255)
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

# Document ``attributes`` keys recording where a document came from. ATTR_DOCUMENT is on every
# document lnassist makes and says which one it is, so the server finds lnassist's own documents by
# their attributes (with the models and the CLI that made them), never by name.
ATTR_DOCUMENT = "lnassist_document"
DOCUMENT_LN = "ln"  # LN outlines with scores and labels
DOCUMENT_HEATMAP = "heatmap"
DOCUMENT_CONTOURS = "contours"  # the detector's unscored outlines
ATTR_COUNTS = "counts"
ATTR_MODE = "mode"
ATTR_THRESHOLD = "threshold"
ATTR_MODELS = "models"
ATTR_CLI = "cli"
ATTR_VERSION = "lnassist_version"
ATTR_PARAMETERS = "parameters"
ATTR_TIMINGS = "timings_s"

# Keys of an LN outline element's ``user`` data as the AI wrote them (a person's own outlines have none).
ELEMENT_LN_ID = "ln_id"
ELEMENT_SCORE = "score"
ELEMENT_POSITIVE = "positive"  # the AI's label
ELEMENT_AREA_UM2 = "area_um2"


def heatmap_stops(threshold: float) -> list[tuple[float, tuple[int, int, int], float]]:
    """(score, RGB, opacity) stops of the heatmap colour ramp, shared by the heatmap image, the
    griddata heatmap and the viewer's legend: transparent up to HEATMAP_CLEAR x threshold, faint
    orange at HEATMAP_FAINT x threshold, half-opaque orange at the decision threshold, red at 1.
    Absolute probabilities, so the colour of a score does not depend on the other scores of the
    slide. Scores strictly increase from stop to stop (a threshold of 0 or 1 merges stops)."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    stops = [
        (0.0, CLEAR_RGB, 0.0),
        (HEATMAP_CLEAR * threshold, CLEAR_RGB, 0.0),
        (HEATMAP_FAINT * threshold, THRESHOLD_RGB, 0.1),
        (float(threshold), THRESHOLD_RGB, 0.5),
        (1.0, HEATMAP_RGB, 0.9),
    ]
    kept: list[tuple[float, tuple[int, int, int], float]] = []
    for stop in stops:
        while kept and kept[-1][0] >= stop[0]:
            kept.pop()  # the later stop at the same score wins
        kept.append(stop)
    return kept


def rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({},{},{})".format(*colour)


def rgba(colour: tuple[int, int, int], alpha: float) -> str:
    # Fixed decimals: large_image's schema pattern rejects exponents such as 1e-05.
    return "rgba({},{},{},{:.2f})".format(*colour, alpha)


# The pathologist's review of an LN document (written only by the Girder plugin's review endpoint;
# the plugin undoes any other change to it). In the document's ``attributes`` under ATTR_REVIEW, and
# mirrored into the item's metadata under the METADATA_PREFIX + REVIEW_META_* keys.
ATTR_REVIEW = "lnassist_review"
REVIEW_ACCEPTED = "accepted"  # the AI's result, unchanged, is right
REVIEW_CORRECTED = "corrected"  # right after the pathologist's changes (relabels, outlines, deletions)
REVIEW_REJECTED = "rejected"  # the AI's result is unusable for this slide
REVIEW_STATES: tuple[str, ...] = (REVIEW_ACCEPTED, REVIEW_CORRECTED, REVIEW_REJECTED)
REVIEW_UNREVIEWED = "unreviewed"  # what summaries say for a document without a review
REVIEW_META_STATE = "review_state"
REVIEW_META_BY = "reviewed_by"  # the reviewer's login
REVIEW_META_AT = "reviewed_at"  # UTC ISO 8601
REVIEW_META_ANNOTATION = "review_annotation"  # the reviewed document's id
REVIEW_META_VERSION = "review_version"  # its ``_version`` at review
REVIEW_META_KEYS: tuple[str, ...] = (
    REVIEW_META_STATE,
    REVIEW_META_BY,
    REVIEW_META_AT,
    REVIEW_META_ANNOTATION,
    REVIEW_META_VERSION,
)
