"""LN metastasis categories, shared by ground truth, annotations and evaluation, and their sizes.

Sizes are the largest tumour-deposit extent (AJCC / the paper):
macrometastasis >= 2 mm, micrometastasis 0.2-2 mm, isolated tumour cells (ITC) < 0.2 mm. Negative nodes
may carry mimics (histiocyte aggregates, HEVs, cautery/crush, floaters) and are still label 0.
"""

from __future__ import annotations

NEGATIVE = "negative"
NEGATIVE_MIMIC = "negative_mimic"
ITC = "itc"
MICRO = "micro"
MACRO = "macro"
CATEGORIES = (NEGATIVE, NEGATIVE_MIMIC, ITC, MICRO, MACRO)
NEGATIVE_CATEGORIES = (NEGATIVE, NEGATIVE_MIMIC)
POSITIVE_CATEGORIES = (ITC, MICRO, MACRO)

MACRO_MIN_UM = 2000.0
MICRO_MIN_UM = 200.0


def label_of(category: str) -> int:
    """LN-level label: 1 for any tumour deposit (ITC included, as in the paper), else 0."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    return int(category in POSITIVE_CATEGORIES)


def category_of_extent(largest_extent_px: float, mpp: float) -> str:
    """Positive category from the largest deposit extent (base px at ``mpp``); 0 extent means no tumour."""
    if largest_extent_px <= 0:
        return NEGATIVE
    extent_um = largest_extent_px * mpp
    if extent_um >= MACRO_MIN_UM:
        return MACRO
    if extent_um >= MICRO_MIN_UM:
        return MICRO
    return ITC
