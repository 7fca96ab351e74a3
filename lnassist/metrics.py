"""Evaluation statistics of LN metastasis classifiers, as reported in Huang et al. 2022 (Table 1, Fig. 2).

Owns: ROC AUC with DeLong confidence intervals (fast midrank algorithm of Sun & Xu 2014) and DeLong's
test for two correlated AUCs; threshold metrics (sensitivity, specificity, PPV, NPV with exact
Clopper-Pearson intervals, MCC with a percentile bootstrap interval); the paper's micrometastasis / ITC
subsets and slide-level aggregation; the JSON report of one model; ROC-curve PNGs.

Conventions: label 1 = metastasis-positive; a score >= threshold is called positive; intervals are
two-sided at `CONFIDENCE`. Pure numpy / scipy / matplotlib; no torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from lnassist.categories import CATEGORIES, ITC, MICRO, NEGATIVE_CATEGORIES, POSITIVE_CATEGORIES
from lnassist.constants import THRESHOLDS
from lnassist.errors import LnassistError

CONFIDENCE = 0.95
# Paper, Methods: MCC intervals by bootstrapping with n = 10,000.
N_BOOT = 10_000
BOOTSTRAP_SEED = 0

# Paper: each subset = all negative LNs + the positive LNs of one lesion-size category.
SUBSETS = (MICRO, ITC)


class MetricsError(LnassistError, ValueError):
    """Input that the statistics cannot be computed from (empty, one class, NaN, mismatched lengths)."""


@dataclass(frozen=True)
class AucResult:
    auc: float
    variance: float  # DeLong variance of the AUC estimate
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int


@dataclass(frozen=True)
class DelongTest:
    auc_a: float
    auc_b: float
    z: float
    p_value: float  # two-sided


@dataclass(frozen=True)
class Proportion:
    successes: int
    total: int
    estimate: float | None  # None when total == 0 (e.g. PPV with no positive calls)
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class ThresholdMetrics:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    mcc: float
    mcc_ci_low: float
    mcc_ci_high: float


@dataclass(frozen=True)
class LNRecord:
    slide_id: str
    score: float
    label: int
    category: str

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> LNRecord:
        """Accepts numbers or their strings (as csv.DictReader gives); a label must be exactly 0 or 1."""
        try:
            slide_id, score, label, category = (row[k] for k in ("slide_id", "score", "label", "category"))
        except KeyError as exc:
            needed = "slide_id, score, label, category"
            raise MetricsError(f"LN record lacks the field {exc}; need {needed}") from exc
        try:
            score_f, label_f = float(score), float(label)
        except (TypeError, ValueError) as exc:
            raise MetricsError(f"LN record {dict(row)!r}: score and label must be numbers ({exc})") from exc
        if label_f not in (0.0, 1.0):
            raise MetricsError(f"LN record {dict(row)!r}: label must be 0 or 1")
        return cls(str(slide_id), score_f, int(label_f), str(category))


# ----------------------------------------------------------------------------------------- validation


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"{name} must be numeric: {exc}") from exc
    if arr.ndim != 1:
        raise MetricsError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricsError(f"{name} is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise MetricsError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN/inf), first at index "
                           f"{int(np.flatnonzero(bad)[0])}")
    return arr


def _as_labels(labels: Any, n: int) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise MetricsError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size != n:
        raise MetricsError(f"labels and scores differ in length: {arr.size} vs {n}")
    if arr.dtype == bool:
        return arr
    try:
        as_float = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"labels must be 0/1: {exc}") from exc
    if not np.isin(as_float, (0.0, 1.0)).all():
        raise MetricsError(f"labels must be 0/1, got values {np.unique(arr)[:5].tolist()}")
    return as_float == 1.0


def _labels_scores(labels: Any, scores: Any, min_per_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores)
    y = _as_labels(labels, s.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if min(n_pos, n_neg) < min_per_class:
        raise MetricsError(f"need at least {min_per_class} positive and {min_per_class} negative case(s), "
                           f"got {n_pos} positive and {n_neg} negative")
    return y, s


def _alpha(confidence: float) -> float:
    """The two-sided error rate 1 - confidence, after checking that confidence lies in (0, 1)."""
    if not 0.0 < confidence < 1.0:
        raise MetricsError(f"confidence must lie in (0, 1), got {confidence}")
    return 1.0 - confidence


# ----------------------------------------------------------------------------------------- DeLong AUC


def _delong(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs and their DeLong covariance matrix for k score rows on the same cases (Sun & Xu 2014).

    With T_Z the midranks of a model's scores over all m positives and n negatives, T_X / T_Y the
    midranks within positives / negatives, the placement values are V10 = (T_Z - T_X) / n per positive
    and V01 = 1 - (T_Z - T_Y) / m per negative; AUC = mean(V10) and
    Cov = S10 / m + S01 / n with S10, S01 the sample covariances (across models) of V10 and V01.
    """
    x = scores[:, labels]
    y = scores[:, ~labels]
    m, n = x.shape[1], y.shape[1]
    tz = stats.rankdata(np.concatenate([x, y], axis=1), method="average", axis=1)
    tx = stats.rankdata(x, method="average", axis=1)
    ty = stats.rankdata(y, method="average", axis=1)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    aucs = v10.mean(axis=1)
    cov = np.atleast_2d(np.cov(v10, ddof=1)) / m + np.atleast_2d(np.cov(v01, ddof=1)) / n
    return aucs, cov


def delong_auc(labels: Any, scores: Any, confidence: float = CONFIDENCE) -> AucResult:
    """ROC AUC (== Mann-Whitney, ties count 1/2) with its DeLong normal-approximation CI clipped to [0, 1]."""
    z = float(stats.norm.ppf(1.0 - _alpha(confidence) / 2.0))
    y, s = _labels_scores(labels, scores, min_per_class=2)
    aucs, cov = _delong(y, s[None, :])
    auc = float(aucs[0])
    var = max(float(cov[0, 0]), 0.0)
    half = z * math.sqrt(var)
    return AucResult(auc=auc, variance=var, ci_low=max(auc - half, 0.0), ci_high=min(auc + half, 1.0),
                     n_positive=int(y.sum()), n_negative=int((~y).sum()))


def delong_test(labels: Any, scores_a: Any, scores_b: Any) -> DelongTest:
    """DeLong's test of equal AUC for two models scored on the same cases; two-sided p-value.

    Identical ROC rankings give a zero variance of the difference: reported as z = 0, p = 1. A nonzero
    AUC difference with zero variance (possible only in degenerate samples) gives z = +-inf, p = 0.
    """
    a = _as_scores(scores_a, "scores_a")
    b = _as_scores(scores_b, "scores_b")
    if a.size != b.size:
        raise MetricsError(f"scores_a and scores_b differ in length: {a.size} vs {b.size}")
    y, _ = _labels_scores(labels, a, min_per_class=2)
    aucs, cov = _delong(y, np.stack([a, b]))
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    # Rounding leaves ~1e-17 where the exact variance is 0 (e.g. a monotone transform of the same scores).
    tiny = 1e-12 * max(float(cov[0, 0] + cov[1, 1]), 1e-300)
    if var <= tiny:
        if abs(diff) <= 1e-12:
            return DelongTest(float(aucs[0]), float(aucs[1]), 0.0, 1.0)
        return DelongTest(float(aucs[0]), float(aucs[1]), math.copysign(math.inf, diff), 0.0)
    zstat = diff / math.sqrt(var)
    return DelongTest(float(aucs[0]), float(aucs[1]), zstat, float(2.0 * stats.norm.sf(abs(zstat))))


# ------------------------------------------------------------------------------------ threshold metrics


def clopper_pearson(successes: int, total: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial proportion, as epiR's exact limits."""
    alpha = _alpha(confidence)
    if total <= 0 or not 0 <= successes <= total:
        raise MetricsError(f"Clopper-Pearson needs 0 <= successes <= total and total > 0, "
                           f"got {successes}/{total}")
    low = 0.0 if successes == 0 else float(stats.beta.ppf(alpha / 2.0, successes, total - successes + 1))
    high = 1.0 if successes == total else float(stats.beta.ppf(1.0 - alpha / 2.0, successes + 1,
                                                                total - successes))
    return low, high


def _proportion(successes: int, total: int, confidence: float) -> Proportion:
    if total == 0:
        return Proportion(successes, total, None, None, None)
    low, high = clopper_pearson(successes, total, confidence)
    return Proportion(successes, total, successes / total, low, high)


def _mcc(tp: Any, fp: Any, tn: Any, fn: Any) -> np.ndarray:
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    # A confusion matrix with an empty row or column has no correlation: 0, as scikit-learn defines it.
    safe = np.where(denom > 0, denom, 1.0)
    return np.where(denom > 0, (tp * tn - fp * fn) / safe, 0.0)


def mcc_from_counts(tp: int, fp: int, tn: int, fn: int) -> float:
    """Matthews correlation coefficient of a confusion matrix (0 when a margin is empty)."""
    return float(_mcc(tp, fp, tn, fn))


def bootstrap_mcc_ci(tp: int, fp: int, tn: int, fn: int, rng: np.random.Generator,
                     n_boot: int = N_BOOT, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the MCC, resampling cases with replacement.

    Resampling N cases from the empirical confusion matrix is exactly a Multinomial(N, counts / N) draw of
    the four cells, so each replicate costs O(1) rather than O(N).
    """
    alpha = _alpha(confidence)
    if n_boot < 1:
        raise MetricsError(f"n_boot must be >= 1, got {n_boot}")
    counts = np.array([tp, fp, tn, fn], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise MetricsError("bootstrap of an empty confusion matrix")
    draws = rng.multinomial(total, counts / total, size=n_boot)
    boot = _mcc(draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3])
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def threshold_metrics(labels: Any, scores: Any, threshold: float, *, rng: np.random.Generator,
                      n_boot: int = N_BOOT, confidence: float = CONFIDENCE) -> ThresholdMetrics:
    """Confusion counts, sensitivity / specificity / PPV / NPV (exact CIs) and MCC (bootstrap CI).

    A case is called positive when score >= threshold.
    """
    y, s = _labels_scores(labels, scores)
    if not math.isfinite(threshold):
        raise MetricsError(f"threshold must be finite, got {threshold}")
    called = s >= threshold
    tp = int(np.sum(called & y))
    fp = int(np.sum(called & ~y))
    tn = int(np.sum(~called & ~y))
    fn = int(np.sum(~called & y))
    low, high = bootstrap_mcc_ci(tp, fp, tn, fn, rng=rng, n_boot=n_boot, confidence=confidence)
    return ThresholdMetrics(
        threshold=float(threshold), tp=tp, fp=fp, tn=tn, fn=fn,
        sensitivity=_proportion(tp, tp + fn, confidence),
        specificity=_proportion(tn, tn + fp, confidence),
        ppv=_proportion(tp, tp + fp, confidence),
        npv=_proportion(tn, tn + fn, confidence),
        mcc=mcc_from_counts(tp, fp, tn, fn), mcc_ci_low=low, mcc_ci_high=high,
    )


# --------------------------------------------------------------------------------- subsets and slides


def _as_categories(categories: Sequence[str]) -> np.ndarray:
    cats = np.asarray(list(categories), dtype=object)
    unknown = sorted(set(cats.tolist()) - set(CATEGORIES), key=str)
    if unknown:
        raise MetricsError(f"unknown LN categories {unknown}; allowed: {CATEGORIES}")
    return cats


def subset_mask(categories: Sequence[str], subset: str) -> np.ndarray:
    """Cases of the paper's subset: every negative LN (mimics included) plus the positives of `subset`."""
    if subset not in POSITIVE_CATEGORIES:
        raise MetricsError(f"unknown subset {subset!r}; choose from {POSITIVE_CATEGORIES}")
    cats = _as_categories(categories)
    return np.isin(cats, NEGATIVE_CATEGORIES) | (cats == subset)


def slide_level(slide_ids: Sequence[str], labels: Any,
                scores: Any) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Slide score = max over the slide's LN scores; slide label = 1 if any of its LNs is positive.

    Returns (slide ids sorted, labels, scores) in that order.
    """
    s = _as_scores(scores)
    y = _as_labels(labels, s.size)
    ids = np.asarray([str(v) for v in slide_ids], dtype=object)
    if ids.size != s.size:
        raise MetricsError(f"slide_ids and scores differ in length: {ids.size} vs {s.size}")
    unique, inverse = np.unique(ids, return_inverse=True)
    slide_scores = np.full(unique.size, -np.inf)
    np.maximum.at(slide_scores, inverse, s)
    slide_labels = np.zeros(unique.size, dtype=bool)
    np.logical_or.at(slide_labels, inverse, y)
    return unique.tolist(), slide_labels, slide_scores


# --------------------------------------------------------------------------------------------- report


def _evaluate_set(labels: np.ndarray, scores: np.ndarray, thresholds: Mapping[str, float], n_boot: int,
                  seed: int, confidence: float) -> dict[str, Any]:
    return {
        "n_positive": int(labels.sum()),
        "n_negative": int((~labels).sum()),
        "auc": asdict(delong_auc(labels, scores, confidence)),
        # A fresh generator per threshold keeps each interval reproducible on its own.
        "thresholds": {name: asdict(threshold_metrics(labels, scores, t, rng=np.random.default_rng(seed),
                                                      n_boot=n_boot, confidence=confidence))
                       for name, t in thresholds.items()},
    }


def evaluate(records: Iterable[LNRecord | Mapping[str, Any]], *,
             thresholds: Mapping[str, float] = THRESHOLDS, n_boot: int = N_BOOT,
             seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The JSON-serialisable report of one model on per-LN records (the paper's Table 1 / Fig. 2 numbers).

    Keys: "conventions", "ln" -> {"all", "micro", "itc"} and "slide" -> {"all"}, each with counts, DeLong
    AUC + CI and metrics at every threshold. A subset with fewer than 2 positives is reported with a
    "skipped" reason instead of statistics, and so is the slide level with fewer than 2 slides of a class;
    the full LN set must have both classes (>= 2 each).
    """
    recs = [r if isinstance(r, LNRecord) else LNRecord.from_mapping(r) for r in records]
    if not recs:
        raise MetricsError("no LN records to evaluate")
    cats = [r.category for r in recs]
    labels = _as_labels([r.label for r in recs], len(recs))
    scores = _as_scores([r.score for r in recs])
    mismatch = np.isin(_as_categories(cats), POSITIVE_CATEGORIES) != labels
    if mismatch.any():
        i = int(np.flatnonzero(mismatch)[0])
        raise MetricsError(f"{int(mismatch.sum())} LN record(s) have a label contradicting the category, "
                           f"first: slide {recs[i].slide_id!r} label {recs[i].label} category {cats[i]!r}")

    def run(y: np.ndarray, s: np.ndarray) -> dict[str, Any]:
        return _evaluate_set(y, s, thresholds, n_boot, seed, confidence)

    ln: dict[str, Any] = {"all": run(labels, scores)}
    for subset in SUBSETS:
        mask = subset_mask(cats, subset)
        n_pos = int(labels[mask].sum())
        if n_pos < 2:
            ln[subset] = {"n_positive": n_pos, "n_negative": int((~labels[mask]).sum()),
                          "skipped": f"fewer than 2 {subset!r} LNs; DeLong variance undefined"}
        else:
            ln[subset] = run(labels[mask], scores[mask])
    _, slide_labels, slide_scores = slide_level([r.slide_id for r in recs], labels, scores)
    n_pos_slides, n_neg_slides = int(slide_labels.sum()), int((~slide_labels).sum())
    if min(n_pos_slides, n_neg_slides) < 2:
        slide = {"n_positive": n_pos_slides, "n_negative": n_neg_slides,
                 "skipped": "fewer than 2 positive or 2 negative slides; DeLong variance undefined"}
    else:
        slide = run(slide_labels, slide_scores)
    return {
        "conventions": {
            "positive_call": "score >= threshold",
            "confidence": confidence,
            "auc_ci": "DeLong variance (Sun & Xu 2014 midrank algorithm), normal interval clipped to [0, 1]",
            "proportion_ci": "exact Clopper-Pearson",
            "mcc_ci": "percentile bootstrap over cases",
            "n_boot": n_boot,
            "seed": seed,
            "subsets": "all negative LNs (incl. mimics) + the subset's positive LNs",
            "slide": "score = max over the slide's LNs; label = any positive LN",
        },
        "category_counts": {c: cats.count(c) for c in CATEGORIES},
        "ln": ln,
        "slide": {"all": slide},
    }


# ------------------------------------------------------------------------------------------- plotting


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | Path, title: str = "",
             size_px: int = 500) -> Path:
    """Write a PNG of the ROC curves of one or more models, {name: (labels, scores)}, AUC in the legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    if not curves:
        raise MetricsError("plot_roc needs at least one (labels, scores) curve")
    dpi = 100
    fig = Figure(figsize=(size_px / dpi, size_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)  # an explicit Agg canvas; pyplot's global backend stays untouched
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
    for name, (labels, scores) in curves.items():
        y, s = _labels_scores(labels, scores, min_per_class=2)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {delong_auc(y, s).auc:.4f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out
