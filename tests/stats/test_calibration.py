"""pneumonia.stats.calibration: Brier, ECE, reliability and PR tables, threshold choice."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from pneumonia.stats.calibration import (
    brier_score,
    choose_threshold,
    expected_calibration_error,
    pr_curve_table,
    reliability_table,
    weighted_calibration,
    youden_table,
)


def calibrated(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.random(n)
    return (rng.random(n) < prob).astype(int), prob


def test_brier_known_value() -> None:
    assert brier_score([0, 1, 1], [0.1, 0.9, 0.6]) == pytest.approx((0.01 + 0.01 + 0.16) / 3)


def test_ece_by_hand() -> None:
    # bin [0, 0.1]: mean 0.05, observed 1/2 -> gap 0.45; bin (0.9, 1]: 0.95 vs 1 -> 0.05
    ece = expected_calibration_error([0, 1, 1, 1], [0.05, 0.05, 0.95, 0.95])
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)


def test_ece_calibrated_near_zero_and_shifted_larger() -> None:
    y, prob = calibrated()
    ece = expected_calibration_error(y, prob)
    assert ece < 0.02
    shifted = np.clip(prob + 0.2, 0, 1)
    assert expected_calibration_error(y, shifted) > 0.1 > ece
    assert brier_score(y, shifted) > brier_score(y, prob)


def test_reliability_table_consistent_with_ece() -> None:
    y, prob = calibrated(2000, seed=1)
    prob[:5] = [0.0, 0.1, 0.2, 1.0, 0.55]  # bin edges: right-closed bins
    rows = reliability_table(y, prob, n_bins=10)
    assert sum(r["count"] for r in rows) == y.size
    for r in rows:
        in_bin = (prob > r["bin_low"]) & (prob <= r["bin_high"])
        if r["bin"] == 0:
            in_bin |= prob == 0
        assert in_bin.sum() == r["count"]
        assert r["mean_predicted"] == pytest.approx(prob[in_bin].mean())
        assert r["observed_fraction"] == pytest.approx(y[in_bin].mean())
    ece = sum(r["count"] * abs(r["mean_predicted"] - r["observed_fraction"]) for r in rows)
    assert ece / y.size == pytest.approx(expected_calibration_error(y, prob, n_bins=10))


def test_pr_curve_table() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    prob = np.array([0.1, 0.4, 0.35, 0.8, 0.8, 0.9])
    rows = pr_curve_table(y, prob)
    assert [r["threshold"] for r in rows] == sorted(set(prob.tolist()))
    for r in rows:
        pred = prob >= r["threshold"]
        assert r["precision"] == pytest.approx((pred & (y == 1)).sum() / pred.sum())
        assert r["recall"] == pytest.approx((pred & (y == 1)).sum() / 3)


@pytest.mark.parametrize(
    ("neg_max", "pos_min", "expected"),
    [(0.3, 0.7, 0.5), (0.6, 0.8, 0.7), (0.1, 0.3, 0.2), (0.5, 0.9, 0.7)],
)
def test_threshold_separates_separable_data(
    neg_max: float, pos_min: float, expected: float
) -> None:
    rng = np.random.default_rng(2)
    neg = np.r_[rng.uniform(0, neg_max, 30), neg_max]
    pos = np.r_[rng.uniform(pos_min, 1, 50), pos_min]
    y = np.r_[np.zeros(neg.size, int), np.ones(pos.size, int)]
    t = choose_threshold(y, np.r_[neg, pos])
    assert t == pytest.approx(expected)
    assert (neg < t).all() and (pos >= t).all()


def test_threshold_matches_best_youden_of_the_roc_curve() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    prob = np.round(1 / (1 + np.exp(-rng.normal(1.5 * (2 * y - 1), 1.5))), 2)
    prob[:3] = [0.0, 1.0, 1.0]
    t = choose_threshold(y, prob)
    assert 0 < t < 1
    fpr, tpr, _ = roc_curve(y, prob)
    pred = prob >= t
    j = pred[y == 1].mean() - pred[y == 0].mean()
    assert j == pytest.approx(np.max(tpr - fpr), abs=1e-12)
    cand, js = youden_table(y, prob)
    assert ((cand > 0) & (cand < 1)).all() and js.max() == pytest.approx(j)


def test_threshold_rules() -> None:
    y, prob = calibrated(200)
    assert choose_threshold(y, prob, rule="0.5") == 0.5
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(y, prob, rule="f1")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(5, int), prob[:5])
    # all saturated probabilities: still strictly inside (0, 1)
    t = choose_threshold([0, 0, 1, 1], [0.0, 0.0, 1.0, 1.0])
    assert t == 0.5


def test_weighted_calibration_is_brier_and_ece_of_the_repeated_images() -> None:
    y, prob = calibrated(300, seed=3)
    rng = np.random.default_rng(1)
    w = rng.integers(0, 3, size=(4, y.size))
    got = weighted_calibration(np.vstack([np.ones(y.size), w]), y, prob)
    assert got["brier"][0] == pytest.approx(brier_score(y, prob))
    assert got["ece"][0] == pytest.approx(expected_calibration_error(y, prob))
    for b in range(4):  # a weight k = the image k times
        rep = np.repeat(np.arange(y.size), w[b])
        assert got["brier"][b + 1] == pytest.approx(brier_score(y[rep], prob[rep]))
        assert got["ece"][b + 1] == pytest.approx(expected_calibration_error(y[rep], prob[rep]))
