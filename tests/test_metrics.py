"""Tests of lnassist.metrics against independent references: scikit-learn, scipy, a slow textbook DeLong,
published numbers (Huang et al. 2022 Table 1; Hanley & McNeil 1982 data), bootstrap and simulation."""

import json

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import confusion_matrix, matthews_corrcoef, roc_auc_score

from lnassist.constants import THRESHOLDS
from lnassist.errors import LnassistError
from lnassist.metrics import (
    LNRecord,
    MetricsError,
    bootstrap_mcc_ci,
    clopper_pearson,
    delong_auc,
    delong_test,
    evaluate,
    mcc_from_counts,
    plot_roc,
    slide_level,
    subset_mask,
    threshold_metrics,
)

Z95 = stats.norm.ppf(0.975)


def tied_data(rng, n=120, levels=6, shift=1.0):
    """Labels and integer-valued (heavily tied) scores of two correlated models."""
    y = rng.random(n) < 0.4
    latent = rng.normal(size=n) + shift * y
    a = np.round(latent * 1.5).clip(-levels, levels)
    b = np.round((latent + rng.normal(scale=0.8, size=n)) * 1.5).clip(-levels, levels)
    return y.astype(int), a, b


def slow_placements(y, s):
    """Textbook DeLong structural components: psi(X_i, Y_j) = 1, 1/2, 0; V10 / V01 are its row / col means."""
    x, z = s[y == 1], s[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    return psi.mean(axis=1), psi.mean(axis=0)


def slow_cov(y, *models):
    v10 = np.array([slow_placements(y, s)[0] for s in models])
    v01 = np.array([slow_placements(y, s)[1] for s in models])
    return np.atleast_2d(np.cov(v10)) / v10.shape[1] + np.atleast_2d(np.cov(v01)) / v01.shape[1]


# ----------------------------------------------------------------------------------------- DeLong AUC


@pytest.mark.parametrize("seed", range(5))
def test_delong_auc_and_variance_match_sklearn_and_slow_textbook(seed):
    rng = np.random.default_rng(seed)
    y, a, _ = tied_data(rng)
    res = delong_auc(y, a)
    assert res.auc == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert res.variance == pytest.approx(slow_cov(y, a)[0, 0], rel=1e-10)
    assert (res.n_positive, res.n_negative) == (int(y.sum()), int((1 - y).sum()))
    half = Z95 * np.sqrt(res.variance)
    assert (res.ci_low, res.ci_high) == pytest.approx((res.auc - half, min(res.auc + half, 1.0)))


def test_delong_ci_hanley_mcneil_published():
    # Hanley & McNeil (1982) CT ratings (1 = definitely normal ... 5 = definitely abnormal) of 58 normal and
    # 51 abnormal patients. Stata's `roctab` (DeLong SE by default) reports area 0.8932, SE 0.0307,
    # 95% CI 0.83295-0.95339 for these data (Stata manual [R] roctab, Example 1).
    neg = np.repeat([1, 2, 3, 4, 5], [33, 6, 6, 11, 2])
    pos = np.repeat([1, 2, 3, 4, 5], [3, 2, 2, 11, 33])
    res = delong_auc(np.r_[np.zeros(58), np.ones(51)], np.r_[neg, pos])
    assert res.auc == pytest.approx(0.8932, abs=5e-5)
    assert np.sqrt(res.variance) == pytest.approx(0.0307, abs=5e-5)
    assert res.ci_low == pytest.approx(0.83295, abs=5e-6)
    assert res.ci_high == pytest.approx(0.95339, abs=5e-6)


def test_delong_variance_agrees_with_stratified_bootstrap():
    rng = np.random.default_rng(11)
    m = n = 300
    y = np.r_[np.ones(m), np.zeros(n)].astype(int)
    s = np.r_[rng.normal(1.0, 1.0, m), rng.normal(0.0, 1.0, n)]
    # Stratified resampling (positives and negatives separately, as pROC's bootstrap); each replicate's AUC
    # by the Mann-Whitney rank-sum identity, vectorised over replicates.
    n_boot = 2000
    idx = np.concatenate([rng.integers(0, m, (n_boot, m)), m + rng.integers(0, n, (n_boot, n))], axis=1)
    ranks = stats.rankdata(s[idx], axis=1)
    boot = (ranks[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    assert boot[0] == pytest.approx(roc_auc_score(y[idx[0]], s[idx[0]]))
    assert delong_auc(y, s).variance == pytest.approx(boot.var(ddof=1), rel=0.10)


def test_delong_ci_covers_true_binormal_auc_at_nominal_rate():
    # Binormal: positives ~ N(d, 1), negatives ~ N(0, 1) -> true AUC = Phi(d / sqrt 2).
    rng = np.random.default_rng(5)
    d, m, n, sims = 1.2, 60, 80, 1000
    true_auc = stats.norm.cdf(d / np.sqrt(2))
    y = np.r_[np.ones(m), np.zeros(n)]
    hits = 0
    for _ in range(sims):
        res = delong_auc(y, np.r_[rng.normal(d, 1, m), rng.normal(0, 1, n)])
        hits += res.ci_low <= true_auc <= res.ci_high
    assert 0.925 <= hits / sims <= 0.975


def test_delong_ci_clipped_for_perfect_separation():
    res = delong_auc([0, 0, 0, 1, 1, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert (res.auc, res.variance, res.ci_low, res.ci_high) == (1.0, 0.0, 1.0, 1.0)
    near = delong_auc([0, 0, 0, 1, 1, 1, 0, 1], [0.1, 0.2, 0.3, 0.7, 0.8, 0.9, 0.75, 0.72])
    assert near.ci_high == 1.0 and near.ci_low < near.auc < 1.0


# ---------------------------------------------------------------------------------------- DeLong test


@pytest.mark.parametrize("seed", range(3))
def test_delong_test_matches_slow_textbook_z(seed):
    y, a, b = tied_data(np.random.default_rng(100 + seed), n=150)
    cov = slow_cov(y, a, b)
    diff = roc_auc_score(y, a) - roc_auc_score(y, b)
    z = diff / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    res = delong_test(y, a, b)
    assert res.auc_a == pytest.approx(roc_auc_score(y, a))
    assert res.auc_b == pytest.approx(roc_auc_score(y, b))
    assert res.z == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)


def test_delong_test_identical_rankings_give_z0_p1():
    y, a, _ = tied_data(np.random.default_rng(1))
    for same in (a, a.copy(), np.exp(a) * 3 + 1):  # a monotone transform keeps the ROC curve
        res = delong_test(y, a, same)
        assert (res.z, res.p_value) == (0.0, 1.0)


def test_delong_test_symmetry_and_power():
    rng = np.random.default_rng(2)
    n = 300
    y = (rng.random(n) < 0.5).astype(int)
    good = y * 2.0 + rng.normal(size=n)
    noise = rng.normal(size=n)
    ab, ba = delong_test(y, good, noise), delong_test(y, noise, good)
    assert ab.z == pytest.approx(-ba.z) and ab.p_value == pytest.approx(ba.p_value)
    assert ab.z > 0 and ab.p_value < 1e-6
    # Two equally informative but independent scores: no difference should be declared.
    other = y * 2.0 + rng.normal(size=n)
    assert delong_test(y, good, other).p_value > 0.01


# ------------------------------------------------------------------------------------ Clopper-Pearson


@pytest.mark.parametrize(("x", "n"), [(0, 1), (1, 1), (0, 7), (3, 7), (7, 7), (12, 861), (263, 295),
                                      (500, 1000)])
def test_clopper_pearson_matches_scipy_binomtest(x, n):
    ref = stats.binomtest(x, n).proportion_ci(confidence_level=0.95, method="exact")
    assert clopper_pearson(x, n) == pytest.approx((ref.low, ref.high), abs=1e-10)
    ref90 = stats.binomtest(x, n).proportion_ci(confidence_level=0.9, method="exact")
    assert clopper_pearson(x, n, 0.9) == pytest.approx((ref90.low, ref90.high), abs=1e-10)


@pytest.mark.parametrize("n", [1, 5, 30, 295])
def test_clopper_pearson_textbook_closed_forms(n):
    alpha = 0.05
    assert clopper_pearson(0, n) == pytest.approx((0.0, 1 - (alpha / 2) ** (1 / n)), abs=1e-12)
    assert clopper_pearson(n, n) == pytest.approx(((alpha / 2) ** (1 / n), 1.0), abs=1e-12)


@pytest.mark.parametrize(("x", "n", "low", "high"), [
    (263, 295, 0.8503, 0.9246),   # our model, sensitivity
    (849, 861, 0.9758, 0.9928),   # our model, specificity
    (289, 295, 0.9563, 0.9925),   # pathologist S.-C.H., sensitivity
    (859, 861, 0.9916, 0.9997),   # pathologist S.-C.H., specificity
    (159, 180, 0.8272, 0.9263),   # Hu et al., sensitivity
    (1025, 1036, 0.9811, 0.9947),  # Hu et al., specificity
])
def test_clopper_pearson_reproduces_paper_table1(x, n, low, high):
    assert clopper_pearson(x, n) == pytest.approx((low, high), abs=5e-5)


# ----------------------------------------------------------------------------------------------- MCC


def test_mcc_matches_sklearn_and_paper():
    rng = np.random.default_rng(3)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        p = np.where(rng.random(50) < 0.7, y, 1 - y)
        tn, fp, fn, tp = confusion_matrix(y, p, labels=[0, 1]).ravel()
        assert mcc_from_counts(tp, fp, tn, fn) == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
    # An empty margin (nothing called positive): scikit-learn's convention is 0.
    assert mcc_from_counts(0, 0, 5, 3) == matthews_corrcoef([0] * 5 + [1] * 3, [0] * 8) == 0.0
    assert mcc_from_counts(263, 12, 849, 32) == pytest.approx(0.8986, abs=5e-5)  # paper, Table 1


def test_bootstrap_mcc_ci_deterministic_and_reproduces_paper():
    counts = dict(tp=263, fp=12, tn=849, fn=32)  # paper Table 1: MCC 0.8986 (0.8686-0.9269), n_boot 10,000
    ci = bootstrap_mcc_ci(**counts, rng=np.random.default_rng(0), n_boot=10_000)
    assert ci == bootstrap_mcc_ci(**counts, rng=np.random.default_rng(0), n_boot=10_000)
    assert ci != bootstrap_mcc_ci(**counts, rng=np.random.default_rng(1), n_boot=10_000)
    assert ci[0] < mcc_from_counts(**counts) < ci[1]
    assert ci == pytest.approx((0.8686, 0.9269), abs=0.002)


def test_bootstrap_mcc_ci_agrees_with_resampling_cases():
    tp, fp, tn, fn = 40, 9, 120, 11
    cells = np.repeat([0, 1, 2, 3], [tp, fp, tn, fn])  # one entry per case
    rng = np.random.default_rng(4)
    boot = np.empty(4000)
    for b in range(boot.size):
        c = np.bincount(rng.choice(cells, cells.size), minlength=4).astype(float)
        boot[b] = (c[0] * c[2] - c[1] * c[3]) / np.sqrt((c[0] + c[1]) * (c[0] + c[3]) * (c[2] + c[1])
                                                         * (c[2] + c[3]))
    ref = np.quantile(boot, [0.025, 0.975])
    ci = bootstrap_mcc_ci(tp, fp, tn, fn, rng=np.random.default_rng(0), n_boot=4000)
    assert ci == pytest.approx(tuple(ref), abs=0.015)


# -------------------------------------------------------------------------------------- threshold use


def test_threshold_metrics_counts_and_convention():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.random(200), 1)  # many scores exactly at 0.4 and 0.15-adjacent grid points
    for t in THRESHOLDS.values():
        res = threshold_metrics(y, s, t, rng=np.random.default_rng(0), n_boot=200)
        tn, fp, fn, tp = confusion_matrix(y, (s >= t).astype(int)).ravel()
        assert (res.tp, res.fp, res.tn, res.fn) == (tp, fp, tn, fn)
        assert res.sensitivity.estimate == pytest.approx(tp / (tp + fn))
        assert res.specificity.estimate == pytest.approx(tn / (tn + fp))
        assert res.ppv.estimate == pytest.approx(tp / (tp + fp))
        assert res.npv.estimate == pytest.approx(tn / (tn + fn))
        assert (res.sensitivity.ci_low, res.sensitivity.ci_high) == clopper_pearson(tp, tp + fn)
        assert res.mcc == pytest.approx(matthews_corrcoef(y, s >= t))
    at = threshold_metrics([0, 1], [0.4, 0.39], 0.4, rng=np.random.default_rng(0), n_boot=10)
    assert (at.tp, at.fp, at.tn, at.fn) == (0, 1, 0, 1)  # score == threshold is a positive call


def test_threshold_metrics_undefined_ppv_is_none():
    res = threshold_metrics([0, 1, 1], [0.1, 0.2, 0.3], 0.9, rng=np.random.default_rng(0), n_boot=10)
    assert (res.ppv.total, res.ppv.estimate, res.ppv.ci_low, res.ppv.ci_high) == (0, None, None, None)
    assert res.mcc == 0.0


# ------------------------------------------------------------------------------ subsets and slide level


CATS = ["negative", "negative_mimic", "macro", "micro", "itc",
        "negative", "itc", "micro", "negative_mimic", "macro"]


def test_subsets_are_all_negatives_plus_one_category():
    itc = subset_mask(CATS, "itc")
    assert [c for c, keep in zip(CATS, itc, strict=True) if keep] == [
        "negative", "negative_mimic", "itc", "negative", "itc", "negative_mimic"]
    micro = subset_mask(CATS, "micro")
    assert np.flatnonzero(micro).tolist() == [0, 1, 3, 5, 7, 8]
    with pytest.raises(MetricsError, match="unknown LN categories"):
        subset_mask(CATS + ["tumour"], "itc")
    with pytest.raises(MetricsError, match="unknown subset"):
        subset_mask(CATS, "negative")


def test_slide_level_is_max_score_and_any_positive():
    ids = ["b", "a", "b", "c", "a", "c"]
    labels = [0, 0, 1, 0, 0, 0]
    scores = [0.9, 0.2, 0.3, 0.05, 0.6, 0.5]
    slides, y, s = slide_level(ids, labels, scores)
    assert slides == ["a", "b", "c"]
    assert y.tolist() == [False, True, False]
    assert s.tolist() == [0.6, 0.9, 0.5]


# --------------------------------------------------------------------------------------------- report


def synthetic_records(rng, n_slides=40):
    recs = []
    for k in range(n_slides):
        for _ in range(rng.integers(2, 8)):
            cat = rng.choice(["negative", "negative", "negative", "negative_mimic", "macro", "micro", "itc"])
            pos = cat in ("macro", "micro", "itc")
            mean = {"negative": 0.15, "negative_mimic": 0.35, "macro": 0.85, "micro": 0.7, "itc": 0.45}[cat]
            score = float(np.clip(rng.normal(mean, 0.15), 0, 1))
            recs.append(LNRecord(slide_id=f"s{k:03d}", score=score, label=int(pos), category=str(cat)))
    return recs


def test_evaluate_report_matches_independent_computation():
    recs = synthetic_records(np.random.default_rng(7))
    report = evaluate(recs, n_boot=200, seed=3)
    json.dumps(report, allow_nan=False)  # strict JSON
    y = np.array([r.label for r in recs])
    s = np.array([r.score for r in recs])
    ln = report["ln"]
    assert ln["all"]["auc"]["auc"] == pytest.approx(roc_auc_score(y, s))
    for subset in ("micro", "itc"):
        keep = [r for r in recs if r.category in ("negative", "negative_mimic", subset)]
        assert ln[subset]["n_positive"] == sum(r.category == subset for r in recs)
        assert ln[subset]["n_negative"] == sum(r.category in ("negative", "negative_mimic") for r in recs)
        assert ln[subset]["auc"]["auc"] == pytest.approx(
            roc_auc_score([r.label for r in keep], [r.score for r in keep]))
    slide_score: dict[str, float] = {}
    slide_label: dict[str, int] = {}
    for r in recs:
        slide_score[r.slide_id] = max(slide_score.get(r.slide_id, -1.0), r.score)
        slide_label[r.slide_id] = max(slide_label.get(r.slide_id, 0), r.label)
    keys = sorted(slide_score)
    assert report["slide"]["all"]["auc"]["auc"] == pytest.approx(
        roc_auc_score([slide_label[k] for k in keys], [slide_score[k] for k in keys]))
    general = ln["all"]["thresholds"]["general"]
    assert general["threshold"] == 0.4 and ln["all"]["thresholds"]["screening"]["threshold"] == 0.15
    assert general["tp"] == int(np.sum((s >= 0.4) & (y == 1)))
    assert general["mcc_ci_low"] <= general["mcc"] <= general["mcc_ci_high"]
    assert report == evaluate(recs, n_boot=200, seed=3)  # seeded bootstrap -> identical report


def test_evaluate_accepts_string_mappings_and_skips_tiny_subsets():
    rows = [{"slide_id": i // 2, "score": str(sc), "label": str(lb), "category": c} for i, (sc, lb, c) in
            enumerate([(0.1, 0, "negative"), (0.3, 0, "negative_mimic"), (0.2, 0, "negative"),
                       (0.05, 0, "negative"),
                       (0.9, 1, "macro"), (0.15, 0, "negative"), (0.8, 1, "macro"), (0.6, 1, "micro"),
                       (0.5, 1, "micro"), (0.7, 1, "itc")])]
    report = evaluate(rows, n_boot=50)
    assert report["ln"]["itc"]["n_positive"] == 1 and "skipped" in report["ln"]["itc"]
    assert report["ln"]["micro"]["auc"]["auc"] == 1.0
    assert report["category_counts"] == {"negative": 4, "negative_mimic": 1, "macro": 2, "micro": 2, "itc": 1}


@pytest.mark.parametrize(("rows", "match"), [
    ([], "no LN records"),
    ([{"slide_id": "a", "score": 0.5, "label": 1}], "lacks the field"),
    ([{"slide_id": "a", "score": 0.5, "label": 0.5, "category": "negative"}], "label must be 0 or 1"),
    ([{"slide_id": "a", "score": "high", "label": 1, "category": "macro"}], "must be numbers"),
    ([{"slide_id": "a", "score": 0.5, "label": 1, "category": "negative"}] * 4, "contradicting"),
])
def test_evaluate_rejects_bad_records(rows, match):
    with pytest.raises(MetricsError, match=match):
        evaluate(rows, n_boot=10)


# ------------------------------------------------------------------------------------- bad input errors


@pytest.mark.parametrize(("labels", "scores", "match"), [
    ([], [], "empty"),
    ([1, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], "at least 2 positive and 2 negative"),
    ([0, 1, 0, 1], [0.1, np.nan, 0.3, 0.4], "non-finite"),
    ([0, 1, 0], [0.1, 0.2, 0.3, 0.4], "differ in length"),
    ([0, 1, 2, 1], [0.1, 0.2, 0.3, 0.4], "must be 0/1"),
    ([[0, 1], [0, 1]], [[0.1, 0.2], [0.3, 0.4]], "one-dimensional"),
])
def test_degenerate_input_raises_metrics_error(labels, scores, match):
    with pytest.raises(MetricsError, match=match) as info:
        delong_auc(labels, scores)
    assert isinstance(info.value, ValueError) and isinstance(info.value, LnassistError)


def test_other_degenerate_inputs():
    with pytest.raises(MetricsError, match="differ in length"):
        delong_test([0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])
    with pytest.raises(MetricsError, match="at least 1 positive"):
        threshold_metrics([0, 0, 0], [0.1, 0.5, 0.9], 0.4, rng=np.random.default_rng(0))
    with pytest.raises(MetricsError, match="successes <= total"):
        clopper_pearson(3, 2)
    with pytest.raises(MetricsError, match="total > 0"):
        clopper_pearson(0, 0)
    with pytest.raises(MetricsError, match="differ in length"):
        slide_level(["a", "b"], [0, 1, 1], [0.1, 0.2, 0.3])


# ------------------------------------------------------------------------------------------- plotting


def test_plot_roc_writes_png_with_curves(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 300)
    good = y + rng.normal(scale=0.6, size=300)
    weak = y + rng.normal(scale=2.0, size=300)
    out = plot_roc({"good": (y, good), "weak": (y, weak)}, tmp_path / "sub" / "roc.png", title="test",
                   size_px=400)
    img = mpimg.imread(out)
    assert img.shape[:2] == (400, 400)
    assert img[..., :3].var() > 1e-3
    # The first curve is drawn in matplotlib's default blue (C0 = #1f77b4): its pixels must be present.
    blue = (img[..., 2] > 0.55) & (img[..., 0] < 0.3) & (img[..., 1] > 0.3) & (img[..., 1] < 0.6)
    assert blue.sum() > 200
    only_weak = mpimg.imread(plot_roc({"weak": (y, weak)}, tmp_path / "weak.png", size_px=400))
    assert not np.array_equal(img, only_weak)
    with pytest.raises(MetricsError):
        plot_roc({}, tmp_path / "empty.png")
