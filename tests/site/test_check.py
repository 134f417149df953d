"""The label-free checks: the MMD permutation test and Saerens' EM prevalence."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.site.check import em_prevalence, mmd_test, prevalence_interval


def test_mmd_rarely_rejects_the_same_distribution_and_finds_a_shift() -> None:
    rng = np.random.default_rng(0)
    pvals = [mmd_test(rng.normal(size=(60, 5)), rng.normal(size=(60, 5)), 200, s)[1]
             for s in range(40)]
    assert np.mean(np.array(pvals) < 0.05) <= 0.15  # about 5 % false alarms
    a, b = rng.normal(size=(60, 5)), rng.normal(size=(60, 5)) + np.r_[0.8, 0, 0, 0, 0]
    stat, p = mmd_test(a, b, 500)
    assert p < 0.01 and stat > 0
    _, p_far = mmd_test(a, a + 3.0, 500)
    assert p_far == pytest.approx(1 / 501)  # no permutation beats it: the +1 smoothed floor


def test_em_recovers_a_changed_prevalence_from_calibrated_probabilities() -> None:
    rng = np.random.default_rng(1)
    # a calibrated model trained at prevalence 0.5: score s ~ N(+1, 1) for PNEUMONIA, N(-1, 1)
    # for NORMAL, P(PNEUMONIA | s) = sigmoid(2 s); the site has 80 % pneumonia
    y = rng.uniform(size=5000) < 0.8
    s = rng.normal(np.where(y, 1.0, -1.0), 1.0)
    prob = 1 / (1 + np.exp(-2 * s))
    assert prob.mean() < 0.75  # the naive average is biased toward 0.5
    assert em_prevalence(prob, 0.5) == pytest.approx(0.8, abs=0.02)
    est, lo, hi = prevalence_interval(prob[:800], 0.5, resamples=200)
    assert lo < 0.8 < hi and lo < est < hi
