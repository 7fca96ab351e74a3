"""Synthetic gastric lymph-node slides: layout (vector ground truth), H&E rendering, TIFF, data sets.

No real gastric LN slides are available, so the learning problem of the paper (LN-level metastasis
classification incl. micrometastases and isolated tumour cells, plus mimics) comes from here.
Everything is deterministic from a seed; rendering works on any window without a full-size array.
"""

from lnassist.errors import LnassistError


class SynthError(LnassistError):
    """Bad arguments or inconsistent configuration for the synthetic-slide generator."""
