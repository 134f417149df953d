"""pneumonia.stats.conformal: split conformal prediction sets and their coverage."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.stats.conformal import (
    binary_probs,
    calibrate,
    conformal_distributions,
    cross_fit_sets,
    prediction_sets,
    risk_coverage,
    scores,
    set_names,
)


def exchangeable(rng: np.random.Generator, n: int, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of an over-confident model and labels drawn from the TRUE probabilities
    (the model's softened): every image is drawn the same way, so any split is exchangeable."""
    logits = rng.normal(0, 2.5, (n, k))
    truth = np.exp(logits / 2) / np.exp(logits / 2).sum(axis=1, keepdims=True)
    model = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(k, p=t) for t in truth])
    return model, y


@pytest.mark.parametrize(("alpha", "k"), [(0.1, 2), (0.05, 2), (0.2, 3)])
def test_coverage_holds_on_exchangeable_data(alpha: float, k: int) -> None:
    """Marginal guarantee 1 - alpha <= E[coverage] <= 1 - alpha + 1 / (n + 1), measured over
    300 calibration / test draws (the over-confident model alone would cover far less)."""
    rng = np.random.default_rng(11)
    n_cal, n_test, trials = 150, 400, 300
    covered, plain = [], []
    for _ in range(trials):
        probs, y = exchangeable(rng, n_cal + n_test, k)
        cal = calibrate(probs[:n_cal], y[:n_cal], alpha)
        sets = prediction_sets(probs[n_cal:], cal.qhat)
        covered.append(sets[np.arange(n_test), y[n_cal:]].mean())
        plain.append((probs[n_cal:].argmax(axis=1) == y[n_cal:]).mean())
    mean, se = float(np.mean(covered)), float(np.std(covered) / np.sqrt(trials))
    assert mean >= 1 - alpha - 3 * se, (mean, se)
    assert mean <= 1 - alpha + 1 / (n_cal + 1) + 3 * se, (mean, se)
    assert np.mean(plain) < 1 - alpha - 0.03  # the sets, not the model, bring the coverage


def test_quantile_rank_and_too_few_images() -> None:
    probs = binary_probs(np.linspace(0.05, 0.95, 19))
    y = np.ones(19, dtype=int)
    s = np.sort(scores(probs, y))
    # n = 19, alpha = 0.05: k = ceil(20 * 0.95) = 19, the largest score
    assert calibrate(probs, y, 0.05).qhat == pytest.approx(s[-1])
    # alpha = 0.2: k = ceil(20 * 0.8) = 16
    assert calibrate(probs, y, 0.2).qhat == pytest.approx(s[15])
    # n = 10 at alpha = 0.05: k = 11 > n, every label in every set
    cal = calibrate(probs[:10], y[:10], 0.05)
    assert cal.qhat == 1.0 and prediction_sets(binary_probs([0.0, 1.0]), cal.qhat).all()
    with pytest.raises(ValueError, match="alpha"):
        calibrate(probs, y, 0.0)
    with pytest.raises(ValueError, match="class index"):
        calibrate(probs, np.full(19, 2), 0.1)


def test_binary_sets_both_empty_and_names() -> None:
    p = np.array([0.02, 0.3, 0.5, 0.7, 0.98])
    wide = prediction_sets(binary_probs(p), 0.75)  # 1 - P <= 0.75  <=>  P >= 0.25
    assert set_names(wide, ("NORMAL", "PNEUMONIA")) == [
        "NORMAL", "NORMAL|PNEUMONIA", "NORMAL|PNEUMONIA", "NORMAL|PNEUMONIA", "PNEUMONIA"]
    narrow = prediction_sets(binary_probs(p), 0.2)  # P >= 0.8 only
    assert set_names(narrow, ("NORMAL", "PNEUMONIA")) == ["NORMAL", "", "", "", "PNEUMONIA"]
    # a calibration image exactly at the threshold is inside its own set
    probs, y = binary_probs([0.1, 0.35, 0.9]), np.array([0, 1, 1])
    cal = calibrate(probs, y, 0.25)
    assert prediction_sets(probs, cal.qhat)[np.arange(3), y].all()


def test_set_statistics_by_hand() -> None:
    sets = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [0, 1]], dtype=bool)
    y = np.array([0, 0, 1, 1, 1])
    d = conformal_distributions(np.ones((1, 5)), y, sets)
    assert d["coverage"][0] == pytest.approx(3 / 5)  # rows 0, 2, 4
    assert d["referral_rate"][0] == pytest.approx(2 / 5)
    assert d["accuracy_not_referred"][0] == pytest.approx(2 / 3)  # rows 0, 1, 4
    assert d["both_rate"][0] == pytest.approx(1 / 5)
    assert d["empty_rate"][0] == pytest.approx(1 / 5)
    # weights: image 1 (a wrong singleton) drawn twice, image 3 not at all
    d = conformal_distributions(np.array([[1, 2, 1, 0, 1]]), y, sets)
    assert d["coverage"][0] == pytest.approx(3 / 5)
    assert d["accuracy_not_referred"][0] == pytest.approx(2 / 4)


def test_cross_fitting_never_calibrates_on_the_image_itself() -> None:
    """A calibration set with one wild image per patient group: cross-fitted sets come from the
    other folds, so coverage is estimated honestly; the sets are those of a calibration on the
    images outside the image's fold."""
    rng = np.random.default_rng(4)
    probs, y = exchangeable(rng, 600)
    groups = np.repeat(np.arange(300), 2)
    sets = cross_fit_sets(probs, y, groups, 0.1, folds=5, seed=1)
    coverage = sets[np.arange(600), y].mean()
    assert 0.85 <= coverage <= 0.95
    # recompute one fold by hand
    fold = (np.random.default_rng(1).permutation(300) % 5)[groups]
    held = fold == 0
    qhat = calibrate(probs[~held], y[~held], 0.1).qhat
    np.testing.assert_array_equal(sets[held], prediction_sets(probs[held], qhat))


def test_risk_coverage_curve() -> None:
    p = np.array([0.95, 0.9, 0.9, 0.6, 0.3, 0.05])
    y = np.array([1, 1, 0, 0, 0, 0])  # wrong at the 0.5 cut: images 2 (P=0.9) and 3 (P=0.6)
    curve = risk_coverage(y, binary_probs(p))
    np.testing.assert_allclose(curve["confidence"], [0.95, 0.9, 0.7, 0.6])
    np.testing.assert_allclose(curve["coverage"], [2 / 6, 4 / 6, 5 / 6, 1.0])
    np.testing.assert_allclose(curve["risk"], [0.0, 1 / 4, 1 / 5, 2 / 6])
