"""Hypothesis tests for comparing models (named so that pytest does not collect it).

- Paired, two models on the same images: exact McNemar on paired correctness (statsmodels), and
  DeLong's test of two correlated ROC AUCs. DeLong is hand-written (the fast midrank algorithm of
  Sun & Xu 2014): scipy, statsmodels and scikit-learn do not provide it.
- ``paired_verdict``: the word for a paired delta interval (higher is better for our metrics).
- ``holm``: Holm's step-down adjustment of a family of p-values (familywise error control).

Both McNemar and DeLong treat images as independent; with several images per patient the
patient-grouped bootstrap (``bootstrap.paired_deltas``) is the more honest interval.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def paired_verdict(ci_low: float, ci_high: float) -> str:
    """``better`` if the interval of delta = b - a lies above 0, ``worse`` if below, else
    ``within noise`` (also when the interval is undefined)."""
    if ci_low is not None and np.isfinite(ci_low) and ci_low > 0:
        return "better"
    if ci_high is not None and np.isfinite(ci_high) and ci_high < 0:
        return "worse"
    return "within noise"


def mcnemar_exact(y_true: ArrayLike, pred_a: ArrayLike, pred_b: ArrayLike) -> dict[str, Any]:
    """Exact McNemar test of paired correctness (``statsmodels ... mcnemar(exact=True)``).

    ``b`` = images A classifies correctly and B wrongly, ``c`` = A wrong and B right; the exact
    two-sided p-value is the binomial test of b among b + c discordant pairs (p = 1 when none).
    """
    from statsmodels.stats.contingency_tables import mcnemar

    y = np.asarray(y_true)
    a_ok = np.asarray(pred_a) == y
    b_ok = np.asarray(pred_b) == y
    if not (a_ok.shape == b_ok.shape == y.shape):
        raise ValueError("y_true, pred_a and pred_b must have the same shape")
    table = np.array(
        [[np.sum(a_ok & b_ok), np.sum(a_ok & ~b_ok)], [np.sum(~a_ok & b_ok), np.sum(~a_ok & ~b_ok)]]
    )
    b, c = int(table[0, 1]), int(table[1, 0])
    pvalue = 1.0 if b + c == 0 else float(mcnemar(table, exact=True).pvalue)
    return {"b": b, "c": c, "pvalue": pvalue, "table": table.tolist()}


def _midrank_components(pos: np.ndarray, neg: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong structural components V10 (one per positive), V01 (one per negative)."""
    from scipy.stats import rankdata  # lazy: scipy.stats is a second to import (docs/layout.md)

    m, n = pos.size, neg.size
    tz = rankdata(np.concatenate([pos, neg]))  # midranks in the combined sample
    tx = rankdata(pos)
    ty = rankdata(neg)
    v10 = (tz[:m] - tx) / n  # share of negatives each positive beats (ties 1/2)
    v01 = 1.0 - (tz[m:] - ty) / m  # share of positives that beat each negative
    auc = float(v10.mean())
    return auc, v10, v01


def delong_test(
    y_true: ArrayLike, prob_a: ArrayLike, prob_b: ArrayLike, level: float = 0.95
) -> dict[str, float]:
    """DeLong's test of two correlated ROC AUCs (same images): delta = AUC_b - AUC_a.

    Returns ``auc_a, auc_b, delta, se, z, pvalue`` (two-sided), a normal ``ci_low/ci_high`` for
    delta and ``note`` ("" when the test applies). When the two models' components are identical
    (se = 0 and delta = 0) z is NaN, the p-value 1 and the interval [0, 0]. When se = 0 but the
    AUCs differ (e.g. a perfect model against a constant one: every component constant), the
    normal approximation has nothing to work with: z, p-value and interval are NaN and ``note``
    says why (z = inf, p = 0 and a zero-width interval would claim certainty DeLong cannot give).
    """
    from scipy.stats import norm  # lazy: scipy.stats is a second to import (docs/layout.md)

    y = np.asarray(y_true).astype(bool)
    scores = [np.asarray(prob_a, dtype=np.float64), np.asarray(prob_b, dtype=np.float64)]
    if any(s.shape != y.shape for s in scores):
        raise ValueError("y_true, prob_a and prob_b must have the same shape")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least 2 images of each class")
    aucs, v10s, v01s = zip(*(_midrank_components(s[y], s[~y]) for s in scores), strict=True)
    s10 = np.cov(np.vstack(v10s))  # 2x2, ddof 1
    s01 = np.cov(np.vstack(v01s))
    cov = s10 / m + s01 / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    delta = float(aucs[1] - aucs[0])
    se = math.sqrt(max(var, 0.0))
    scale = max(float(cov[0, 0] + cov[1, 1]), 1e-300)
    q = float(norm.ppf(0.5 + level / 2))
    note = ""
    if se <= 1e-12 * math.sqrt(scale) or se == 0.0:
        se = 0.0
        if abs(delta) < 1e-12:  # the same ranking: no difference, certainly
            z, pvalue, low, high = float("nan"), 1.0, delta, delta
        else:
            nan = float("nan")
            z, pvalue, low, high = nan, nan, nan, nan
            note = ("DeLong's variance is 0 (each model ranks every image pair the same way, "
                    "e.g. a perfect model against a constant one): no normal test is possible")
    else:
        z = delta / se
        pvalue = float(2 * norm.sf(abs(z)))
        low, high = delta - q * se, delta + q * se
    return {
        "auc_a": float(aucs[0]),
        "auc_b": float(aucs[1]),
        "delta": delta,
        "se": se,
        "z": z,
        "pvalue": pvalue,
        "ci_low": low,
        "ci_high": high,
        "note": note,
    }


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1), in the input order.

    Equal to statsmodels' ``multipletests(p, method="holm")[1]`` (the tests check it). Hand-
    written because statsmodels 0.15 runs ``gc.collect()`` on every Holm call: 0.1-0.4 s in a
    large process, which the ablation report's coverage simulation calls hundreds of times.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p, kind="stable")
    steps = p[order] * np.arange(p.size, 0, -1)
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted
