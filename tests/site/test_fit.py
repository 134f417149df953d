"""The site calibration's statistics: threshold rules, conformal ranks, temperature, draws."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumonia.errors import PipelineError
from pneumonia.site import draws, fit, quantiles, temperature, thresholds
from pneumonia.stats.conformal import binary_probs, calibrate


def test_accuracy_threshold_is_the_one_with_most_images_right() -> None:
    # NORMAL at 0.1 0.2 0.3 0.6 ; PNEUMONIA at 0.4 0.7 0.8 0.9: 7 of 8 right between 0.3 and
    # 0.4 or between 0.6 and 0.7 (6 at 0.5); tied, equally far from 0.5: the lower midpoint
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    assert thresholds.fit_threshold(y, p, "accuracy") == pytest.approx(0.35)
    assert thresholds.decision_metrics(y, p, 0.5)["accuracy"] == 6 / 8
    # shift every probability up: the best cut moves with it
    t = thresholds.fit_threshold(y, p + 0.1, "accuracy")
    assert 0.4 < t <= 0.5  # 0.5 itself is a candidate (0.5 >= 0.5 is PNEUMONIA)
    assert thresholds.decision_metrics(y, p + 0.1, t)["accuracy"] == 7 / 8


def test_accuracy_and_youden_differ_on_unbalanced_classes() -> None:
    # 2 NORMAL, 10 PNEUMONIA: accuracy keeps a low threshold (all PNEUMONIA right), Youden
    # gives up PNEUMONIA images to get the NORMAL ones right.
    y = np.array([0, 0] + [1] * 10)
    p = np.array([0.55, 0.6] + [0.5] * 2 + [0.9] * 8)
    acc = thresholds.fit_threshold(y, p, "accuracy")
    you = thresholds.fit_threshold(y, p, "youden")
    assert thresholds.decision_metrics(y, p, acc)["accuracy"] == 10 / 12
    assert acc <= 0.5 and 0.6 < you < 0.9
    assert thresholds.decision_metrics(y, p, you)["specificity"] == 1.0


def test_target_sensitivity_is_the_highest_threshold_that_keeps_it() -> None:
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200, int), np.ones(200, int)]
    p = np.r_[rng.uniform(0, 0.7, 200), rng.uniform(0.3, 1, 200)]
    for target in (0.8, 0.95, 1.0):
        t = thresholds.fit_threshold(y, p, f"sensitivity:{target}")
        assert (p[y == 1] >= t).mean() >= target
        # the next higher distinct positive score would lose it
        above = np.sort(p[y == 1][p[y == 1] >= t])
        assert (p[y == 1] >= above[0] + 1e-9).mean() < target


def _platt_population(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A model whose reported p = sigmoid(s) is miscalibrated for the site: there the true
    P(PNEUMONIA | s) is sigmoid(2 s - 1), so the accuracy-optimal cut is s = 0.5, p = 0.622."""
    s = rng.normal(0.5, 1.5, n)
    y = (rng.uniform(size=n) < 1 / (1 + np.exp(-(2 * s - 1)))).astype(int)
    return y, 1 / (1 + np.exp(-s))


def test_logistic_threshold_finds_where_the_site_posterior_is_one_half() -> None:
    y, p = _platt_population(20000, np.random.default_rng(0))
    assert thresholds.fit_threshold(y, p, "logistic") == pytest.approx(0.622, abs=0.01)
    # on small labelled sets it moves less than the accuracy rule (compared as logits)
    rng = np.random.default_rng(1)
    logit = {"logistic": [], "accuracy": []}
    for _ in range(150):
        ys, ps = _platt_population(60, rng)
        for rule, out in logit.items():
            t = thresholds.fit_threshold(ys, ps, rule)
            out.append(math.log(t / (1 - t)))
    assert np.std(logit["logistic"]) < 0.8 * np.std(logit["accuracy"])
    assert abs(np.median(logit["logistic"]) - 0.5) < 0.15
    # scores that fall with pneumonia: no threshold, a clear refusal
    with pytest.raises(PipelineError, match="does not rise with pneumonia"):
        thresholds.fit_threshold(y, 1 - p, "logistic")


def test_rule_parsing() -> None:
    assert str(thresholds.parse_rule("sensitivity:0.9")) == "sensitivity:0.9"
    assert str(thresholds.parse_rule("logistic")) == "logistic"
    for bad in ("sensitivity", "sensitivity:1.5", "f1", "youden:3", "logistic:2"):
        with pytest.raises(PipelineError, match="threshold rule"):
            thresholds.parse_rule(bad)


def test_lac_quantile_is_at_rank_ceil_n_plus_1_times_1_minus_alpha() -> None:
    # 40 scores 0.01..0.40: rank ceil(41 * 0.9) = 37 -> 0.37; the rank next to it gives 0.36 or
    # 0.38, so a quantile computed one off is caught.
    n = 40
    s = np.arange(1, n + 1) / 100
    y = np.ones(n, int)
    probs = binary_probs(1 - s)  # score of PNEUMONIA = 1 - p = s
    q = quantiles.fit_quantile(probs, y, alpha=0.1)
    assert q.rank == (37, 37) and q.qhat == pytest.approx((0.37, 0.37))
    assert q.qhat[0] == pytest.approx(calibrate(probs, y, 0.1).qhat)  # evaluate's own rule
    assert quantiles.rank(19, 0.05) == 19 and quantiles.rank(18, 0.05) == 19  # 18: too few


def test_minimum_images() -> None:
    assert quantiles.min_images(0.05) == 19
    assert quantiles.min_images(0.1) == 9
    # (1 - alpha)^n <= delta: 0.95^44 = 0.105, 0.95^45 = 0.0994
    assert quantiles.min_images(0.05, 0.1) == 45
    assert quantiles.rank(45, 0.05, 0.1) == 45


def test_training_conditional_rank_matches_the_binomial_tail() -> None:
    from scipy.stats import binom

    n, alpha, delta = 200, 0.1, 0.05
    k = quantiles.rank(n, alpha, delta)
    assert binom.sf(k - 1, n, 1 - alpha) <= delta < binom.sf(k - 2, n, 1 - alpha)
    assert k > quantiles.rank(n, alpha)  # more conservative than the marginal rank


def test_coverage_guarantees_hold_on_exchangeable_data() -> None:
    """Marginal: mean coverage >= 1 - alpha; training-conditional: coverage >= 1 - alpha in at
    least 1 - delta of calibration draws; Mondrian: each class covered (exchangeable scores)."""
    rng = np.random.default_rng(1)
    alpha, delta, n = 0.1, 0.1, 100
    marg, cond = [], []
    for _ in range(400):
        y = rng.integers(0, 2, 2 * n)
        p = np.clip(rng.beta(2, 2, 2 * n) * 0.6 + 0.4 * y, 0, 1)  # informative, noisy
        probs = binary_probs(p)
        for method, out in (("lac", marg), ("lac_delta", cond)):
            q = quantiles.fit_quantile(probs[:n], y[:n], alpha, "lac",
                                       delta if method == "lac_delta" else None)
            out.append(quantiles.set_metrics(probs[n:], y[n:], q.qhat)["coverage"])
    assert np.mean(marg) >= 1 - alpha - 0.01
    assert np.mean(np.array(cond) >= 1 - alpha) >= 1 - delta - 0.03
    assert np.mean(cond) > np.mean(marg)


def test_mondrian_covers_each_class_where_lac_does_not() -> None:
    rng = np.random.default_rng(2)
    # NORMAL images are hard (probabilities near 0.5), PNEUMONIA easy: the marginal quantile
    # is dominated by PNEUMONIA and under-covers NORMAL.
    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.uniform(size=n) < 0.7).astype(int)
        p = np.where(y == 1, rng.uniform(0.8, 1.0, n), rng.uniform(0.2, 0.75, n))
        return binary_probs(p), y

    pc, yc = sample(400)
    pt, yt = sample(4000)
    lac = quantiles.set_metrics(pt, yt, quantiles.fit_quantile(pc, yc, 0.1, "lac").qhat)
    mon = quantiles.set_metrics(pt, yt, quantiles.fit_quantile(pc, yc, 0.1, "mondrian").qhat)
    assert lac["coverage_NORMAL"] < 0.85
    assert mon["coverage_NORMAL"] >= 0.87 and mon["coverage_PNEUMONIA"] >= 0.87


def test_temperature_recovers_a_known_temperature_and_keeps_decisions() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 5000)
    y = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(int)
    overconfident = 1 / (1 + np.exp(-3 * z))  # logits x 3: T should come out near 3
    t = temperature.fit_temperature(y, overconfident)
    assert t == pytest.approx(3.0, rel=0.1)
    from pneumonia.inference.pyfunc import tempered  # what predict and the served model apply

    np.testing.assert_allclose(tempered(overconfident, t), temperature.apply(overconfident, t),
                               rtol=1e-9, atol=1e-12)
    settings = fit.Settings(thresholds.Rule("accuracy"), 0.1, "mondrian", None, True)
    thr, qhat, t2, q = fit.fit_once(y[:500], overconfident[:500], settings)
    p_cal = temperature.apply(overconfident[500:], t2)
    thr_cal = thresholds.fit_threshold(y[:500], temperature.apply(overconfident[:500], t2),
                                       "accuracy")
    # the raw-space threshold and quantiles decide exactly as the tempered ones
    assert np.array_equal(overconfident[500:] >= thr, p_cal >= thr_cal)
    assert np.array_equal(quantiles.sets(binary_probs(overconfident[500:]), qhat),
                          quantiles.sets(binary_probs(p_cal), q.qhat))


def test_draws_keep_patients_whole_and_hit_k() -> None:
    groups = np.repeat(np.arange(60), 2)  # 60 patients, 2 images each
    groups = np.r_[groups, np.arange(100, 130)]  # and 30 with one image
    rng = np.random.default_rng(4)
    for k in (25, 50, 100):
        mask = draws.draw(groups, groups.size, k, rng)
        assert mask.sum() == k
        for g in np.unique(groups):
            assert len(set(mask[groups == g])) == 1
    fold = draws.folds(groups, groups.size, 5)
    for g in np.unique(groups):
        assert len(set(fold[groups == g])) == 1


def test_cross_fit_estimates_what_the_fit_gives_on_new_images() -> None:
    rng = np.random.default_rng(5)
    y = (rng.uniform(size=300) < 0.6).astype(int)
    p = np.clip(0.55 * y + rng.uniform(0, 0.45, 300) + 0.1, 0, 1)  # every NORMAL < 0.55 + ...
    cal = fit.fit(y, p, None, fit.Settings(thresholds.Rule("accuracy"), 0.1))
    assert cal.cross_fit["folds"] == 5
    assert cal.cross_fit["accuracy"] > 0.9
    assert math.isclose(cal.n[0] + cal.n[1], 300)
