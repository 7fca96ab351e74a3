"""The LN detector: DeepLabv3+ on whole slides at 1.25x (7.36 um/px) -> binary LN mask -> LN contours.

Modules: ``grid`` (the detector's pixel grid over a slide and its base-pixel coordinates), ``model``
(architecture, input normalisation, checkpoints), ``preprocess`` (glass white balance),
``postprocess`` (the paper's mask -> contours steps),
``data`` (slides + ground-truth masks from a synthetic data set manifest), ``infer`` (tiled prediction,
``detect_slide``), ``train`` and ``evaluate``. The commands (``detect``, ``train-detector``,
``evaluate-detector``) are in :mod:`lnassist.commands.detector`.
"""

from lnassist.errors import LnassistError


class DetectorError(LnassistError):
    """A detector input that cannot be used: bad checkpoint, bad manifest, bad argument."""
