"""pneumonia.stats.significance: McNemar, DeLong, the paired verdict, Holm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom, norm
from sklearn.metrics import roc_auc_score

from pneumonia.stats.significance import (
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


def test_delong_with_zero_variance_and_different_aucs_is_no_test() -> None:
    """A perfect model against a constant one: every DeLong component is constant (se = 0) while
    the AUCs differ by 0.5. No z = -inf, no p = 0, no zero-width interval [-0.5, -0.5]."""
    y = np.r_[np.zeros(30, int), np.ones(50, int)]
    perfect = y * 0.8 + 0.1
    constant = np.full(y.size, 0.5)
    res = delong_test(y, perfect, constant)
    assert res["delta"] == pytest.approx(-0.5) and res["se"] == 0
    assert all(math.isnan(res[k]) for k in ("z", "pvalue", "ci_low", "ci_high"))
    assert "variance is 0" in res["note"]
    assert delong_test(y, perfect, perfect)["note"] == ""


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


@pytest.mark.parametrize("seed", range(5))
def test_holm_equals_statsmodels(seed: int) -> None:
    from statsmodels.stats.multitest import multipletests

    from pneumonia.stats.significance import holm

    rng = np.random.default_rng(seed)
    p = np.concatenate([rng.random(6) ** 3, [0.04, 0.04]])  # ties too
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1], rel=1e-12)
    assert holm([]).size == 0
