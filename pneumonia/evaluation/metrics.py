"""The evaluate stage's test metrics, each with its 95 % patient-bootstrap interval and one rule for
undefined values.

Every reported metric (``REPORTED``: accuracy, per-class precision / recall / F1, sensitivity,
specificity, ROC AUC, PR AUC, the macro and weighted averages) carries a 95 % interval from a
patient-grouped bootstrap (pneumonia.stats.bootstrap); Brier score and ECE likewise
(``calibration_metrics``). ``compute_metrics`` gives evaluate.json's flat keys.

Undefined values: a per-class value with a zero denominator (e.g. NORMAL precision of a model that
never predicts NORMAL) is null, listed in `undefined`. An average over the classes is null when a
class it gives weight to is undefined (macro: both classes; weighted: the classes present). Neither
0 (sklearn's zero_division=0 makes "never predicted" look like "always wrong" and the macro average
of an all-PNEUMONIA model 0.31) nor dropping the class (zero_division=nan: 0.625, the one defined
class passed off as an average) describes such a model honestly. The JSON, the MLflow run and the
classification report text follow this one rule.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pneumonia.paths import LABELS
from pneumonia.stats.bootstrap import (
    METRICS,
    intervals_from_distributions,
    patient_weights,
    percentile_interval,
    point_denominators,
    weighted_confusion,
    weighted_metrics,
)
from pneumonia.stats.calibration import weighted_calibration

LEVEL = 0.95
ECE_BINS = 10
AVERAGES = ("macro_avg", "weighted_avg")
# Every reported metric with an interval, in report order (bootstrap.METRICS, then the averages).
REPORTED = METRICS + tuple(f"{a}_{m}" for a in AVERAGES for m in ("precision", "recall", "f1"))
# The metrics that depend on the decision threshold (reported again at threshold_chosen).
THRESHOLD_METRICS = tuple(m for m in REPORTED if m not in ("roc_auc", "pr_auc"))


def finite_or_none(v: Any) -> float | None:
    """``v`` as a float, or None when it is None, NaN or infinite (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def predict_labels(prob: np.ndarray, threshold: float) -> np.ndarray:
    """0 = NORMAL, 1 = PNEUMONIA: P(PNEUMONIA) >= threshold -> PNEUMONIA."""
    return (np.asarray(prob, dtype=float) >= threshold).astype(int)


def metric_distributions(
    weights: np.ndarray, y_true: np.ndarray, prob: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every metric of REPORTED for each row of `weights` (B, n): arrays (B,), NaN = undefined.

    bootstrap.weighted_metrics gives accuracy, the per-class cells, sensitivity, specificity,
    ROC AUC and PR AUC; the class averages follow the module's rule for undefined classes.
    """
    out = weighted_metrics(weights, y_true, prob, threshold)
    support = weighted_confusion(weights, y_true, np.asarray(prob) >= threshold).sum(axis=2)
    total = support.sum(axis=1)
    present = support > 0
    for metric in ("precision", "recall", "f1"):
        per_class = np.stack([out[f"{label}_{metric}"] for label in LABELS], axis=1)  # (B, 2)
        out[f"macro_avg_{metric}"] = per_class.mean(axis=1)  # NaN when a class is undefined
        undefined = (np.isnan(per_class) & present).any(axis=1) | (total == 0)
        summed = np.where(present, np.nan_to_num(per_class) * support, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"weighted_avg_{metric}"] = np.where(undefined, np.nan, summed / total)
    return out


def reported_intervals(
    y_true: Any,
    prob: Any,
    *,
    threshold: float,
    groups: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """``{metric: {value, ci_low, ci_high, undefined_share}}`` for every metric of REPORTED: the
    value on the images as they are, the interval from a patient-grouped bootstrap (``groups`` =
    patient id of each image; None = each image its own patient), and the share of resamples in
    which the metric was undefined (which widen the interval, or withhold it above
    bootstrap.WITHHOLD_SHARE: see ``bootstrap.guarded_interval``). All None when undefined (or
    no images). ``bootstrap.metric_intervals`` plus the class averages, None for undefined."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if y.size == 0:
        return {m: {"value": None, "ci_low": None, "ci_high": None, "undefined_share": None}
                for m in REPORTED}
    point = {k: float(v[0]) for k, v in metric_distributions(np.ones((1, y.size)), y, p,
                                                             threshold).items()}
    weights = patient_weights(groups, y.size, n_resamples, seed)
    boot = metric_distributions(weights, y, p, threshold)
    out: dict[str, dict[str, float | None]] = {}
    # Where the bootstrap degenerates (a recall of 148/148 in every resample) the interval is
    # Wilson's on the metric's denominator (bootstrap.intervals_from_distributions); the class
    # averages are shares of every image.
    denominators = point_denominators(y, p, threshold)
    denominators.update({m: float(y.size) for m in REPORTED if m not in denominators})
    for m, row in intervals_from_distributions(point, boot, LEVEL, denominators).items():
        value = finite_or_none(row["value"])
        defined = value is not None
        out[m] = {
            "value": value,
            "ci_low": finite_or_none(row["ci_low"]) if defined else None,
            "ci_high": finite_or_none(row["ci_high"]) if defined else None,
            "undefined_share": float(row["undefined_share"]) if defined else None,
            "method": row["method"],
        }
    return {m: out[m] for m in REPORTED}


def flat_metrics(
    intervals: dict[str, dict[str, float | None]], prefix: str = "",
    metrics: tuple[str, ...] = REPORTED,
) -> dict[str, Any]:
    """evaluate.json's flat keys: `<prefix><metric>`, `..._ci_low`, `..._ci_high`, `...
    _ci_undefined_share` only where some resamples were undefined (> 0), `..._ci_method` only
    where the interval is not the percentile bootstrap (`wilson` where it degenerated), and
    `<prefix>undefined`
    (comma-separated names of the undefined metrics, "" when none)."""
    flat: dict[str, Any] = {}
    for m in metrics:
        row = intervals[m]
        flat[f"{prefix}{m}"] = row["value"]
        flat[f"{prefix}{m}_ci_low"] = row["ci_low"]
        flat[f"{prefix}{m}_ci_high"] = row["ci_high"]
        if row.get("undefined_share"):
            flat[f"{prefix}{m}_ci_undefined_share"] = round(row["undefined_share"], 6)
        if row["value"] is not None and row.get("method", "bootstrap") != "bootstrap":
            flat[f"{prefix}{m}_ci_method"] = row["method"]  # e.g. wilson (bootstrap degenerate)
    flat[f"{prefix}undefined"] = ", ".join(m for m in metrics if intervals[m]["value"] is None)
    return flat


def compute_metrics(
    y_true: Any,
    prob: Any,
    threshold: float,
    groups: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    prefix: str = "",
) -> dict[str, Any]:
    """Flat test metrics with intervals (evaluate.json keys, see the module docstring), plus
    the class supports, image and patient counts."""
    y = np.asarray(y_true, dtype=int)
    flat = flat_metrics(reported_intervals(y, prob, threshold=threshold, groups=groups,
                                           n_resamples=n_resamples, seed=seed), prefix)
    for i, label in enumerate(LABELS):
        flat[f"{prefix}{label}_support"] = int((y == i).sum())
    flat[f"{prefix}n_test"] = int(y.size)
    flat[f"{prefix}n_patients"] = len(set(groups)) if groups is not None else int(y.size)
    return flat


def calibration_metrics(
    y_true: Any, prob: Any, groups: Any, n_resamples: int, seed: int, prefix: str = ""
) -> dict[str, float | None]:
    """Brier score and ECE (10 equal-width bins) with patient-bootstrap intervals."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if y.size == 0:
        return {f"{prefix}{k}{s}": None for k in ("brier", "ece") for s in ("", "_ci_low",
                                                                            "_ci_high")}
    point = weighted_calibration(np.ones((1, y.size)), y, p, ECE_BINS)
    boot = weighted_calibration(patient_weights(groups, y.size, n_resamples, seed), y, p,
                                ECE_BINS)
    out: dict[str, float | None] = {}
    for k in ("brier", "ece"):
        low, high, _ = percentile_interval(boot[k], LEVEL)
        out[f"{prefix}{k}"] = finite_or_none(point[k][0])
        out[f"{prefix}{k}_ci_low"] = finite_or_none(low)
        out[f"{prefix}{k}_ci_high"] = finite_or_none(high)
    return out


def confusion(y_true: Any, y_pred: Any) -> np.ndarray:
    """2x2 counts: rows = actual, columns = predicted, in LABELS order (NORMAL, PNEUMONIA)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=[0, 1])
