"""Training of the LN metastasis classifier: configuration, data, loss, the training loop.

- :mod:`.config`: :class:`TrainConfig` (the paper's recipe as defaults, CPU preset, YAML I/O).
- :mod:`.loss`: forward-corrected cross-entropy and transition-matrix estimation.
- :mod:`.data`: training images (one LN, or one slide) from a ``manifest.jsonl``.
- :mod:`.loop`: epochs, validation, lr drop / early stop, checkpoints, resume, ``torch.distributed``.

The command ``lnassist train-classifier`` is in :mod:`lnassist.commands.training`.
"""

from lnassist.errors import LnassistError


class TrainingError(LnassistError):
    """A training configuration, data set or checkpoint that cannot be used."""
