"""The paper's operating points (the analysis modes and their decision thresholds) and the other
values a run's request is made of where the server and the image must agree (the whole-slide region).

Standard library only, so the Girder plugin, the Slicer CLIs and the evaluation all read the same
numbers without importing anything heavy. The resolutions the models run at (7.36 / 0.46 um/px)
belong to slide reading and live in :mod:`lnassist.slide`.
"""

from __future__ import annotations

# Huang et al. 2022: 0.4 balances positive and negative calls (best validation MCC); 0.15 is the
# screening threshold (high sensitivity).
THRESHOLDS: dict[str, float] = {"general": 0.4, "screening": 0.15}
MODES: tuple[str, ...] = ("screening", "general")
DEFAULT_MODE = "general"
# x, y, width, height of "no region": the whole slide (the Slicer CLIs' region convention).
WHOLE_SLIDE: tuple[float, float, float, float] = (-1.0, -1.0, -1.0, -1.0)
