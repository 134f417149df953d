"""Calibration and operating point of P(PNEUMONIA).

- ``brier_score``: ``sklearn.metrics.brier_score_loss``.
- ``expected_calibration_error``: hand-written (scikit-learn has no ECE), equal-width bins with
  the same bin assignment as ``sklearn.calibration.calibration_curve(strategy="uniform")``:
  bins are right-closed, (0.1, 0.2], except the first, [0, 0.1].
- ``reliability_table`` (built on ``calibration_curve``) and ``pr_curve_table``
  (``sklearn.metrics.precision_recall_curve``): lists of row dicts, ready for a DVC plot CSV.
- ``weighted_calibration``: Brier score and ECE for each row of bootstrap weights (the
  patient-grouped intervals of ``bootstrap.patient_weights``), vectorised like ``bootstrap``.
- ``choose_threshold``: the decision threshold chosen on VALIDATION data (never on the test set).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def _inputs(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape or y.size == 0:
        raise ValueError("y_true and prob must be non-empty 1-D arrays of equal length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 and 1 only")
    if not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise ValueError("prob must lie in [0, 1]")
    return y.astype(np.int64), p


def brier_score(y_true: ArrayLike, prob: ArrayLike) -> float:
    """Mean squared error of P(PNEUMONIA) against the 0/1 label (lower is better)."""
    from sklearn.metrics import brier_score_loss

    y, p = _inputs(y_true, prob)
    return float(brier_score_loss(y, p))


def _bins(prob: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return edges, np.searchsorted(edges[1:-1], prob)  # as calibration_curve assigns bins


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE = sum over equal-width bins of (share of images in the bin) x |mean predicted
    probability - observed fraction of PNEUMONIA| (0 = perfectly calibrated)."""
    y, p = _inputs(y_true, prob)
    _, ids = _bins(p, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    gap = np.abs(np.bincount(ids, p, n_bins) - np.bincount(ids, y.astype(float), n_bins))
    return float(gap.sum() / count.sum())  # sum_b n_b/N |mean_p_b - frac_b| = sum_b |S_b|/N


def weighted_calibration(
    weights: ArrayLike, y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10
) -> dict[str, np.ndarray]:
    """Brier score and ECE for each row of ``weights`` (shape (B, n); a row of ones gives
    ``brier_score`` and ``expected_calibration_error``): ``{"brier": (B,), "ece": (B,)}``.

    A weight counts an image that many times (the patient bootstrap's resample weights). The
    bootstrapped ECE is biased upwards like ECE itself (|.| of a noisy bin gap): its interval says
    how much the estimate moves between resamples, not that 0 is excluded.
    """
    y, p = _inputs(y_true, prob)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != y.size:
        raise ValueError(f"weights must have shape (B, {y.size}), got {w.shape}")
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        brier = (w @ (p - y) ** 2) / total
        _, ids = _bins(p, n_bins)
        onehot = np.zeros((y.size, n_bins))
        onehot[np.arange(y.size), ids] = p - y  # the signed gap of each image, in its bin
        ece = np.abs(w @ onehot).sum(axis=1) / total
    return {"brier": np.where(total > 0, brier, np.nan), "ece": np.where(total > 0, ece, np.nan)}


def reliability_table(
    y_true: ArrayLike, prob: ArrayLike, n_bins: int = 10
) -> list[dict[str, float | int]]:
    """One row per non-empty bin: ``bin`` (index), ``bin_low``, ``bin_high``,
    ``mean_predicted``, ``observed_fraction`` (from ``calibration_curve``), ``count``."""
    from sklearn.calibration import calibration_curve

    y, p = _inputs(y_true, prob)
    edges, ids = _bins(p, n_bins)
    count = np.bincount(ids, minlength=n_bins)
    observed, predicted = calibration_curve(y, p, n_bins=n_bins, strategy="uniform")
    nonempty = np.flatnonzero(count)
    return [
        {
            "bin": int(b),
            "bin_low": float(edges[b]),
            "bin_high": float(edges[b + 1]),
            "mean_predicted": float(mp),
            "observed_fraction": float(obs),
            "count": int(count[b]),
        }
        for b, mp, obs in zip(nonempty, predicted, observed, strict=True)
    ]


def pr_curve_table(y_true: ArrayLike, prob: ArrayLike) -> list[dict[str, float]]:
    """Precision-recall curve, one row per distinct threshold (ascending): ``threshold``,
    ``precision``, ``recall`` of PNEUMONIA when predicting PNEUMONIA at prob >= threshold.
    sklearn's final point (precision 1, recall 0, no threshold) is left out."""
    from sklearn.metrics import precision_recall_curve

    y, p = _inputs(y_true, prob)
    precision, recall, thresholds = precision_recall_curve(y, p)
    return [
        {"threshold": float(t), "precision": float(pr), "recall": float(rc)}
        for t, pr, rc in zip(thresholds, precision[:-1], recall[:-1], strict=True)
    ]


def youden_table(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Candidate thresholds strictly inside (0, 1) and Youden's J at each.

    Candidates: the midpoints between consecutive distinct scores, with 0 and 1 added at the
    ends (one candidate per distinct operating point, as far as possible from the scores on
    either side), and 0.5. Predicted PNEUMONIA when prob >= t.
    """
    y, p = _inputs(y_true, prob)
    pos = np.sort(p[y == 1])
    neg = np.sort(p[y == 0])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("choosing a threshold needs both classes in the validation data")
    s = np.unique(np.concatenate([[0.0, 1.0], p]))
    cand = np.unique(np.concatenate([(s[1:] + s[:-1]) / 2, [0.5]]))
    cand = cand[(cand > 0) & (cand < 1)]  # a no-op unless scores are within 1 ulp of 0 or 1
    sensitivity = (pos.size - np.searchsorted(pos, cand, side="left")) / pos.size
    specificity = np.searchsorted(neg, cand, side="left") / neg.size
    return cand, sensitivity + specificity - 1


def choose_threshold(y_val: ArrayLike, prob_val: ArrayLike, rule: str = "youden") -> float:
    """Decision threshold from VALIDATION labels and probabilities, strictly in (0, 1).

    ``rule="youden"``: maximise Youden's J = sensitivity + specificity - 1 over the candidates of
    ``youden_table``; ties go to the candidate closest to 0.5 (then the lower one). Separable
    data thus gets 0.5 when 0.5 separates the classes, else the midpoint of the separating gap.
    ``rule="0.5"``: the fixed threshold 0.5.
    """
    if rule == "0.5":
        return 0.5
    if rule != "youden":
        raise ValueError(f"unknown threshold rule {rule!r} (use 'youden' or '0.5')")
    cand, j = youden_table(y_val, prob_val)
    best = cand[np.isclose(j, j.max(), rtol=0, atol=1e-12)]
    dist = np.abs(best - 0.5)
    return float(best[np.flatnonzero(np.isclose(dist, dist.min(), rtol=0, atol=1e-15))[0]])
