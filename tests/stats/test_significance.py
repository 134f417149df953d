"""pneumonia.stats.significance: McNemar, DeLong, paired verdict, two independent proportions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, chi2_contingency, norm
from sklearn.metrics import roc_auc_score

from pneumonia.stats.significance import (
    compare_proportions,
    delong_test,
    mcnemar_exact,
    paired_verdict,
)


def test_mcnemar_known_value() -> None:
    # 20 images: 10 both right, 1 only A right (b), 9 only B right (c)
    y = np.ones(20, int)
    pred_a = np.r_[np.ones(10), 1, np.zeros(9)].astype(int)
    pred_b = np.r_[np.ones(10), 0, np.ones(9)].astype(int)
    res = mcnemar_exact(y, pred_a, pred_b)
    assert (res["b"], res["c"]) == (1, 9)
    assert res["pvalue"] == pytest.approx(0.021484375, abs=1e-15)
    assert res["pvalue"] == pytest.approx(2 * binom.cdf(1, 10, 0.5), abs=1e-15)
    assert mcnemar_exact(y, pred_b, pred_a)["b"] == 9  # orientation: b = A right, B wrong


def test_mcnemar_identical_predictions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    pred = rng.integers(0, 2, 50)
    res = mcnemar_exact(y, pred, pred)
    assert (res["b"], res["c"], res["pvalue"]) == (0, 0, 1.0)


def brute_force_delong(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """delta = AUC_b - AUC_a and its DeLong SE from the O(m n) kernel matrices."""
    pos, neg = y == 1, y == 0
    m, n = pos.sum(), neg.sum()
    v10, v01, aucs = [], [], []
    for s in (a, b):
        psi = (s[pos][:, None] > s[neg][None, :]) + 0.5 * (s[pos][:, None] == s[neg][None, :])
        aucs.append(psi.mean())
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    s10 = np.array(
        [
            [np.sum((v10[i] - aucs[i]) * (v10[j] - aucs[j])) / (m - 1) for j in range(2)]
            for i in range(2)
        ]
    )
    s01 = np.array(
        [
            [np.sum((v01[i] - aucs[i]) * (v01[j] - aucs[j])) / (n - 1) for j in range(2)]
            for i in range(2)
        ]
    )
    s = s10 / m + s01 / n
    return aucs[1] - aucs[0], math.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(150) < 0.6).astype(int)
    a = np.round(rng.normal(0.5 * y, 0.5), 1)  # ties within and across classes
    b = np.round(a + rng.normal(0.2 * y, 0.4), 1)
    res = delong_test(y, a, b)
    delta, se = brute_force_delong(y, a, b)
    assert res["auc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert res["auc_b"] == pytest.approx(roc_auc_score(y, b), abs=1e-12)
    assert res["delta"] == pytest.approx(delta, abs=1e-12)
    assert res["se"] == pytest.approx(se, rel=1e-9)
    assert res["z"] == pytest.approx(delta / se, rel=1e-9)
    assert res["pvalue"] == pytest.approx(2 * norm.sf(abs(delta / se)), rel=1e-9)


def test_delong_identical_models() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 80)
    a = rng.random(80)
    res = delong_test(y, a, a.copy())
    assert res["delta"] == 0 and res["pvalue"] == 1.0 and math.isnan(res["z"])
    assert paired_verdict(res["ci_low"], res["ci_high"]) == "within noise"


def test_delong_detects_a_clear_difference() -> None:
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 400)
    good = rng.normal(2.0 * y, 1.0)
    bad = good + rng.normal(0, 3.0, 400)
    res = delong_test(y, bad, good)
    assert res["delta"] > 0 and res["pvalue"] < 1e-4
    assert paired_verdict(res["ci_low"], res["ci_high"]) == "better"
    assert delong_test(y, good, bad)["pvalue"] == pytest.approx(res["pvalue"])


@pytest.mark.parametrize(
    ("low", "high", "word"),
    [
        (0.01, 0.05, "better"),
        (-0.05, -0.01, "worse"),
        (-0.01, 0.02, "within noise"),
        (0.0, 0.02, "within noise"),
        (float("nan"), float("nan"), "within noise"),
    ],
)
def test_paired_verdict(low: float, high: float, word: str) -> None:
    assert paired_verdict(low, high) == word


def wilson(count: int, nobs: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = count / nobs
    centre = (p + z * z / (2 * nobs)) / (1 + z * z / nobs)
    half = z / (1 + z * z / nobs) * math.sqrt(p * (1 - p) / nobs + z * z / (4 * nobs * nobs))
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("c1", "n1", "c2", "n2"), [(580, 624, 599, 624), (213, 234, 190, 234), (386, 390, 300, 320)]
)
def test_compare_proportions_newcombe_by_hand(c1: int, n1: int, c2: int, n2: int) -> None:
    res = compare_proportions(c1, n1, c2, n2)
    p1, p2 = c1 / n1, c2 / n2
    (l1, u1), (l2, u2) = wilson(c1, n1), wilson(c2, n2)
    d = p1 - p2
    assert res["diff"] == pytest.approx(d)
    assert res["ci_low"] == pytest.approx(d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2))
    assert res["ci_high"] == pytest.approx(d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))
    # the score test is Pearson's chi-square up to the factor (N - 1) / N
    table = [[c1, n1 - c1], [c2, n2 - c2]]
    pearson = chi2_contingency(table, correction=False)[1]
    assert res["pvalue"] == pytest.approx(pearson, rel=0.05)


def test_compare_proportions_equal() -> None:
    res = compare_proportions(90, 100, 180, 200)
    assert res["diff"] == 0 and res["pvalue"] == 1.0 and res["ci_low"] < 0 < res["ci_high"]


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_statsmodels(seed: int) -> None:
    from statsmodels.stats.multitest import multipletests

    from pneumonia.stats.significance import holm

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.random(6) ** 3, [0.04, 0.04]])  # ties too
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1], rel=1e-12)
    assert holm([]).size == 0
