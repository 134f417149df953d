"""pneumonia.stats.bootstrap: patient-grouped bootstrap and weighted metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from pneumonia.stats.bootstrap import (
    METRICS,
    flat_intervals,
    metric_intervals,
    paired_deltas,
    patient_weights,
    point_metrics,
    weighted_average_precision,
    weighted_confusion,
    weighted_metrics,
    weighted_roc_auc,
)


def tied_data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities rounded to 1 decimal (many ties) and ragged patient groups."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    prob = np.round(np.clip(rng.normal(0.35 + 0.3 * y, 0.25), 0, 1), 1)
    groups = np.array([f"person{g}" for g in np.sort(rng.integers(0, n // 2, n))])
    rng.shuffle(groups)  # images of a patient need not be adjacent
    return y, prob, groups


def test_patient_weights_keep_patients_whole() -> None:
    _, _, groups = tied_data(0)
    w = patient_weights(groups, groups.size, n_resamples=500, seed=3)
    assert w.shape == (500, groups.size)
    patients, first = np.unique(groups, return_index=True)
    for p in patients:
        cols = w[:, groups == p]
        assert (cols == cols[:, :1]).all(), p
    # each resample draws as many patients as there are (weights of one image per patient)
    assert (w[:, first].sum(axis=1) == patients.size).all()
    # not degenerate: patients are dropped and repeated
    assert (w == 0).any() and (w >= 2).any()


def test_patient_weights_seeded() -> None:
    _, _, groups = tied_data(0)
    a = patient_weights(groups, groups.size, 200, seed=1)
    assert np.array_equal(a, patient_weights(groups, groups.size, 200, seed=1))
    assert not np.array_equal(a, patient_weights(groups, groups.size, 200, seed=2))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.5, 0.4, 0.73])
def test_point_values_equal_sklearn(seed: int, threshold: float) -> None:
    y, prob, _ = tied_data(seed)
    pred = (prob >= threshold).astype(int)
    ours = point_metrics(y, prob, threshold)
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[0, 1], zero_division=np.nan)
    expected = {
        "accuracy": accuracy_score(y, pred),
        "NORMAL_precision": p[0],
        "NORMAL_recall": r[0],
        "NORMAL_f1": f[0],
        "PNEUMONIA_precision": p[1],
        "PNEUMONIA_recall": r[1],
        "PNEUMONIA_f1": f[1],
        "sensitivity": r[1],
        "specificity": r[0],
        "roc_auc": roc_auc_score(y, prob),
        "pr_auc": average_precision_score(y, prob),
    }
    assert list(ours) == list(METRICS)
    for m in METRICS:
        assert ours[m] == pytest.approx(expected[m], abs=1e-12), m
    iv = metric_intervals(y, prob, groups=None, threshold=threshold, n_resamples=50, seed=0)
    assert all(iv[m]["value"] == ours[m] for m in METRICS)


def test_weighted_auc_ap_equal_sklearn_on_replicated_data() -> None:
    y, prob, _ = tied_data(5, n=120)
    rng = np.random.default_rng(9)
    weights = rng.integers(0, 4, size=(6, y.size))  # zeros included
    auc = weighted_roc_auc(weights, y, prob)
    ap = weighted_average_precision(weights, y, prob)
    for b, w in enumerate(weights):
        yy, pp = np.repeat(y, w), np.repeat(prob, w)
        assert auc[b] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
        assert ap[b] == pytest.approx(average_precision_score(yy, pp), abs=1e-12)
        cm = weighted_confusion(w, y, prob >= 0.5)[0]
        expected = np.bincount(2 * yy + (pp >= 0.5), minlength=4).reshape(2, 2)
        assert np.array_equal(cm, expected)


def test_undefined_resamples_are_nan_and_counted() -> None:
    # one single image predicted NORMAL: NORMAL precision is undefined whenever it is not drawn
    n = 200
    y = np.r_[np.zeros(40, int), np.ones(160, int)]
    prob = np.full(n, 0.9)
    prob[0] = 0.1
    w_absent = np.ones(n)
    w_absent[0] = 0
    assert np.isnan(weighted_metrics(w_absent, y, prob, 0.5)["NORMAL_precision"][0])
    iv = metric_intervals(y, prob, groups=None, threshold=0.5, n_resamples=1000, seed=0)
    expected_share = (1 - 1 / n) ** n  # P(image 0 never drawn) ~ 1/e
    assert iv["NORMAL_precision"]["n_undefined"] == pytest.approx(1000 * expected_share, rel=0.15)
    # 37 % of the resamples have no NORMAL prediction: no interval (it used to read [1.0, 1.0])
    assert iv["NORMAL_precision"]["undefined_share"] == pytest.approx(expected_share, rel=0.15)
    assert np.isnan(iv["NORMAL_precision"]["ci_low"]) and np.isnan(iv["NORMAL_precision"]["ci_high"])
    assert iv["accuracy"]["n_undefined"] == 0 and iv["accuracy"]["undefined_share"] == 0


def test_a_few_undefined_resamples_widen_the_interval_to_the_metric_bounds() -> None:
    from pneumonia.stats.bootstrap import WITHHOLD_SHARE, guarded_interval

    values = np.linspace(0.80, 0.90, 1000)
    plain = guarded_interval(values)
    assert (plain["ci_low"], plain["ci_high"]) == pytest.approx(
        tuple(np.percentile(values, [2.5, 97.5])))
    assert plain["undefined_share"] == 0 and not plain["withheld"]
    # 1 % undefined: each end as if they had been the worst case on its side
    some = values.copy()
    some[::100] = np.nan
    g = guarded_interval(some)
    assert g["undefined_share"] == pytest.approx(0.01)
    assert g["ci_low"] == pytest.approx(np.percentile(np.where(np.isnan(some), 0, some), 2.5))
    assert g["ci_high"] == pytest.approx(np.percentile(np.where(np.isnan(some), 1, some), 97.5))
    assert g["ci_low"] < plain["ci_low"] and g["ci_high"] > plain["ci_high"]
    # deltas live in [-1, 1]
    delta = guarded_interval(some - 0.85, bounds=(-1, 1))
    assert delta["ci_low"] == pytest.approx(
        np.percentile(np.where(np.isnan(some), -1, some - 0.85), 2.5))
    # past the withholding share: no interval
    many = values.copy()
    many[: int(1000 * WITHHOLD_SHARE) + 1] = np.nan
    assert guarded_interval(many)["withheld"] and np.isnan(guarded_interval(many)["ci_low"])


def test_the_interval_is_the_95_percent_percentile_interval_exactly() -> None:
    """Independent recomputation: the 2.5 and 97.5 percentiles of the same resamples (a 90 %
    interval would give the 5th and 95th: caught here, where a width tolerance cannot)."""
    y, prob, groups = tied_data(6)
    iv = metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=800, seed=2)
    w = patient_weights(groups, y.size, 800, 2)
    for m, dist in weighted_metrics(w, y, prob, 0.5).items():
        low, high = np.percentile(dist[~np.isnan(dist)], [2.5, 97.5])
        assert (iv[m]["ci_low"], iv[m]["ci_high"]) == pytest.approx((low, high), abs=1e-12), m


def test_metric_intervals_takes_threshold_and_groups_by_keyword_only() -> None:
    """Threshold and groups were once swapped between two functions of this name: positional
    arguments after the data are refused."""
    y, prob, groups = tied_data(1)
    with pytest.raises(TypeError):
        metric_intervals(y, prob, groups, 0.5)  # type: ignore[misc]


def test_intervals_seeded() -> None:
    y, prob, groups = tied_data(1)
    a = metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=300, seed=4)
    assert a == metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=300, seed=4)
    b = metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=300, seed=5)
    assert any(a[m]["ci_low"] != b[m]["ci_low"] for m in METRICS)
    for m in METRICS:
        assert a[m]["ci_low"] <= a[m]["value"] <= a[m]["ci_high"], m


def width(iv: dict) -> float:
    return iv["ci_high"] - iv["ci_low"]


def test_iid_interval_width_matches_normal_approximation() -> None:
    rng = np.random.default_rng(11)
    n = 624
    y = rng.integers(0, 2, n)
    correct = rng.random(n) < 0.9
    prob = np.where(correct == (y == 1), 0.8, 0.2)
    iv = metric_intervals(y, prob, groups=np.arange(n), threshold=0.5, n_resamples=2000,
                          seed=0)["accuracy"]
    p = iv["value"]
    normal_width = 2 * 1.959964 * np.sqrt(p * (1 - p) / n)
    # 5 %: B = 2000 percentiles hold the width to ~2 %; a 90 % interval would be 16 % narrower
    assert width(iv) == pytest.approx(normal_width, rel=0.05)


def test_correlated_clusters_widen_the_interval() -> None:
    # 156 patients x 4 images; a patient's images are all right or all wrong together
    rng = np.random.default_rng(12)
    groups = np.repeat(np.arange(156), 4)
    y = np.repeat(rng.integers(0, 2, 156), 4)
    correct = np.repeat(rng.random(156) < 0.85, 4)
    prob = np.where(correct == (y == 1), 0.7, 0.3)
    grouped = metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=2000,
                               seed=0)["accuracy"]
    per_image = metric_intervals(y, prob, groups=None, threshold=0.5, n_resamples=2000,
                                 seed=0)["accuracy"]
    assert grouped["value"] == per_image["value"]
    assert width(grouped) > 1.5 * width(per_image)  # design effect sqrt(4) = 2 expected


def test_flat_intervals_keys_and_nan() -> None:
    iv = {
        "accuracy": {"value": 0.9, "ci_low": 0.85, "ci_high": 0.94, "n_undefined": 0},
        "NORMAL_recall": {"value": 0.8, "ci_low": np.nan, "ci_high": np.nan, "n_undefined": 9},
    }
    flat = flat_intervals(iv)
    assert flat == {
        "accuracy": 0.9,
        "accuracy_ci_low": 0.85,
        "accuracy_ci_high": 0.94,
        "NORMAL_recall": 0.8,
        "NORMAL_recall_ci_low": None,
        "NORMAL_recall_ci_high": None,
    }
    with_undefined = flat_intervals(iv, prefix="test_", undefined=True)
    assert with_undefined["test_NORMAL_recall_ci_n_undefined"] == 9


def test_paired_deltas_identical_models_are_within_noise() -> None:
    y, prob, groups = tied_data(2)
    d = paired_deltas(y, prob, prob, groups, 0.5, 0.5, n_resamples=300, seed=0)
    for m in METRICS:
        assert d[m]["delta"] == 0 and d[m]["ci_low"] == d[m]["ci_high"] == 0, m
        assert d[m]["verdict"] == "within noise"


def test_paired_deltas_share_resamples_and_detect_a_better_model() -> None:
    y, prob, groups = tied_data(3)
    rng = np.random.default_rng(0)
    worse = np.clip(prob + rng.normal(0, 0.35, prob.size), 0, 1)
    ab = paired_deltas(y, worse, prob, groups, 0.5, 0.5, n_resamples=400, seed=1)
    ba = paired_deltas(y, prob, worse, groups, 0.5, 0.5, n_resamples=400, seed=1)
    assert ab["roc_auc"]["verdict"] == "better" and ba["roc_auc"]["verdict"] == "worse"
    for m in METRICS:
        # the same resample weights for both models: swapping them mirrors the interval exactly
        assert ab[m]["delta"] == pytest.approx(-ba[m]["delta"], abs=1e-12)
        assert ab[m]["ci_low"] == pytest.approx(-ba[m]["ci_high"], abs=1e-12)


def test_percentile_interval_is_the_2_5_and_97_5_percentiles_ignoring_undefined() -> None:
    """The interval the paper's F1 cells, the calibration metrics and the recall-by-cause deltas
    use: exactly the 2.5th and 97.5th percentiles of the defined values (a 90 % interval, the 5th
    and 95th, is caught here), and the count of undefined (NaN) ones."""
    from pneumonia.stats.bootstrap import percentile_interval

    values = np.concatenate([np.linspace(0.0, 1.0, 401), [np.nan] * 7])
    low, high, undefined = percentile_interval(values, 0.95)
    assert (low, high) == pytest.approx((0.025, 0.975), abs=1e-12)
    assert undefined == 7


def test_a_degenerate_bootstrap_falls_back_to_wilson_and_says_so() -> None:
    """Issue 33 item 4: a recall of 148/148 is 1.0 in every resample; the percentile interval
    [1, 1] says nothing. Wilson's score interval on the 148 images is [0.975, 1]."""
    from statsmodels.stats.proportion import proportion_confint

    from pneumonia.stats.bootstrap import metric_intervals

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100, int), np.ones(148, int)]
    prob = np.r_[rng.uniform(0, 0.7, 100), rng.uniform(0.6, 1, 148)]  # every positive caught
    groups = np.arange(y.size) // 2
    iv = metric_intervals(y, prob, groups=groups, threshold=0.5, n_resamples=300, seed=1)
    recall = iv["PNEUMONIA_recall"]
    assert recall["value"] == 1.0 and recall["method"] == "wilson"
    low, high = proportion_confint(148, 148, alpha=0.05, method="wilson")
    assert (recall["ci_low"], recall["ci_high"]) == pytest.approx((low, high))
    assert 0.97 < recall["ci_low"] < 0.98 and recall["ci_high"] == pytest.approx(1.0)
    # a metric that varies across resamples keeps its percentile interval
    assert iv["accuracy"]["method"] == "bootstrap"
    assert iv["accuracy"]["ci_low"] < iv["accuracy"]["value"] < iv["accuracy"]["ci_high"]
    # no interval anywhere is zero-width
    assert all(r["ci_high"] > r["ci_low"] for r in iv.values())


def test_evaluate_keys_record_the_fallback_method_and_are_never_zero_width() -> None:
    from pneumonia.evaluation.metrics import compute_metrics
    from pneumonia.stats.multiclass import cause_recalls

    y = np.r_[np.zeros(50, int), np.ones(60, int)]
    prob = np.r_[np.full(50, 0.2), np.full(60, 0.9)]  # perfect: every cell 1.0
    flat = compute_metrics(y, prob, 0.5, np.arange(y.size), n_resamples=200, seed=0)
    assert flat["accuracy_ci_method"] == "wilson"
    assert flat["roc_auc_ci_method"] == "wilson (approximate n)"
    for key in [k for k in flat if k.endswith("_ci_low")]:
        assert flat[key] < flat[key.replace("_ci_low", "_ci_high")], key
    classes = np.r_[["bacteria"] * 30, ["virus"] * 30]
    rec = cause_recalls(classes, np.ones(60, bool), np.arange(60), n_resamples=200, seed=0)
    assert rec["PNEUMONIA_recall_virus"]["method"] == "wilson"
    assert rec["PNEUMONIA_recall_virus"]["ci_low"] < 0.95
