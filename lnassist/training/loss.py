"""Forward-corrected cross-entropy (Patrini et al. 2017, used by the paper) and its transition matrix.

With label noise, the label a model is trained on (``observed``) is not always the true class.
``transition[i][j] = P(observed = j | true = i)``. Forward correction trains the model's clean
class probabilities ``p`` through the noise model: the loss is the cross-entropy of the observed
label under ``q = p @ transition``. With the identity matrix it is plain cross-entropy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lnassist.training import TrainingError


def check_transition(transition: Sequence[Sequence[float]] | np.ndarray, num_classes: int = 2) -> np.ndarray:
    """A row-stochastic ``num_classes`` square matrix as float64, or :class:`TrainingError`."""
    t = np.asarray(transition, dtype=np.float64)
    if t.shape != (num_classes, num_classes):
        raise TrainingError(f"transition matrix must be {num_classes}x{num_classes}, got shape {t.shape}")
    if not np.isfinite(t).all() or (t < 0).any() or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise TrainingError(f"transition matrix rows must be probabilities summing to 1, got {t.tolist()}")
    if abs(np.linalg.det(t)) < 1e-6:
        raise TrainingError(
            f"transition matrix {t.tolist()} is singular: observed labels carry no information"
        )
    return t


def forward_corrected_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, transition: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over the batch of ``-log (softmax(logits) @ transition)[target]``.

    ``logits`` (n, k), ``target`` (n,) observed class indices, ``transition`` (k, k) or None for
    the identity. Computed in log space (log-sum-exp) so it stays finite for confident logits.
    """
    log_p = F.log_softmax(logits, dim=-1)
    if transition is None:
        return F.nll_loss(log_p, target)
    log_t = torch.log(transition.to(log_p.dtype).to(log_p.device))
    # log q_j = log sum_i p_i T_ij
    log_q = torch.logsumexp(log_p.unsqueeze(-1) + log_t.unsqueeze(0), dim=1)
    return F.nll_loss(log_q, target)


def estimate_transition(
    true_labels: Sequence[int],
    observed_labels: Sequence[int],
    num_classes: int = 2,
    pseudo_count: float = 0.0,
) -> np.ndarray:
    """Row-normalised confusion matrix of observed (e.g. one annotator's) labels against the truth.

    ``pseudo_count`` is added to every cell before normalising (Laplace smoothing), which keeps
    the matrix invertible when the sample has no errors of some kind.
    """
    y = np.asarray(true_labels)
    o = np.asarray(observed_labels)
    if y.shape != o.shape or y.ndim != 1 or len(y) == 0:
        raise TrainingError(f"need two equally long non-empty label lists, got {y.shape} and {o.shape}")
    if not (np.isin(y, range(num_classes)).all() and np.isin(o, range(num_classes)).all()):
        raise TrainingError(f"labels must be class indices 0..{num_classes - 1}")
    counts = np.full((num_classes, num_classes), float(pseudo_count))
    np.add.at(counts, (y, o), 1.0)
    rows = counts.sum(axis=1, keepdims=True)
    if (rows == 0).any():
        missing = [int(i) for i in np.flatnonzero(rows[:, 0] == 0)]
        raise TrainingError(f"no sample of true class(es) {missing}: cannot estimate their transition rows")
    return check_transition(counts / rows, num_classes)
