"""Patient-grouped (cluster) bootstrap of the test metrics, vectorised over all resamples.
Over 400 lines on purpose: the weighted metrics, their resampling and the guarded intervals are
one algorithm (every function works on the same weight matrix).

Several test images can come from one patient, and images of one patient are correlated, so
resampling images as if they were independent understates the uncertainty. This module resamples
PATIENTS with replacement (all images of a drawn patient enter together) and computes every metric
for all resamples at once.

A resample is a row of an integer weight matrix ``W`` of shape ``(B, n_images)``: ``W[b, i]`` is
how many times the patient of image ``i`` was drawn in resample ``b`` (so all images of a patient
share one weight). Each metric is then a weighted statistic of the original images, computed for
all rows with a few matrix products, one sort and cumulative sums (no Python loop over resamples,
nothing O(n^2)).

Why hand-written: ``scipy.stats.bootstrap`` resamples observations (or paired observations) of
equal-length samples; it cannot resample ragged clusters (patients with different numbers of
images), and it would call the metric once per resample.

Undefined values (e.g. NORMAL precision in a resample with no image predicted NORMAL, or ROC AUC
in a resample without a NORMAL image) are NaN. Leaving them out of the percentiles would describe
only the resamples where the metric exists (one image predicted NORMAL: NORMAL precision 1.0
[1.0, 1.0] while 40 % of the resamples had none), so ``guarded_interval`` reports the undefined
share beside the interval and, when it is > 0, widens the interval to hold whatever the undefined
resamples would have been (each counted at the metric's lowest value for the lower bound and at
its highest for the upper bound); above ``WITHHOLD_SHARE`` it gives no interval at all.

Labels: 0 = NORMAL, 1 = PNEUMONIA; ``prob`` is P(PNEUMONIA); an image is predicted PNEUMONIA when
``prob >= threshold``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.stats.significance import paired_verdict

LABELS = ("NORMAL", "PNEUMONIA")
# Above this share of undefined resamples an interval is withheld: the widened interval would
# rest on a guess about too many resamples (with 95 % it already reaches the metric's bounds once
# the share passes 2.5 %).
WITHHOLD_SHARE = 0.10

# Every metric, in report order. sensitivity = PNEUMONIA_recall, specificity = NORMAL_recall.
METRICS = (
    "accuracy",
    "NORMAL_precision",
    "NORMAL_recall",
    "NORMAL_f1",
    "PNEUMONIA_precision",
    "PNEUMONIA_recall",
    "PNEUMONIA_f1",
    "sensitivity",
    "specificity",
    "roc_auc",
    "pr_auc",
)


# --------------------------------------------------------------------------------------------
# inputs and resample weights


def _check_inputs(y_true: ArrayLike, prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape:
        raise ValueError(f"y_true and prob must be 1-D of equal length, got {y.shape}, {p.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must hold 0 (NORMAL) and 1 (PNEUMONIA) only")
    if not np.isfinite(p).all():
        raise ValueError("prob must be finite")
    return y.astype(np.int8), p


def group_codes(groups: ArrayLike | None, n: int) -> np.ndarray:
    """Integer patient code 0..G-1 of each image; ``None`` = every image its own patient."""
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have one entry per image ({n}), got shape {g.shape}")
    return np.unique(g, return_inverse=True)[1].ravel()


def patient_weights(
    groups: ArrayLike | None, n_images: int, n_resamples: int = 2000, seed: int = 0
) -> np.ndarray:
    """(n_resamples, n_images) int32 weights of a patient-grouped bootstrap.

    Each row draws G patients out of the G patients with replacement
    (``numpy.random.default_rng(seed)``); the weight of an image is the number of times its
    patient was drawn. ``groups=None`` resamples images individually.
    """
    codes = group_codes(groups, n_images)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_resamples, n_groups))
    flat = (draws + n_groups * np.arange(n_resamples)[:, None]).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n_groups).reshape(n_resamples, n_groups)
    return counts[:, codes].astype(np.int32)


def as_weights(weights: ArrayLike, n: int) -> np.ndarray:
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must have shape (B, {n}), got {w.shape}")
    return w


def ratio_or_nan(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0 (no warning)."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


# --------------------------------------------------------------------------------------------
# weighted metrics: each takes weights of shape (B, n) (or (n,)) and returns an array (B,)


def weighted_confusion(weights: ArrayLike, y_true: ArrayLike, pred: ArrayLike) -> np.ndarray:
    """(B, 2, 2) weighted confusion matrices, rows = true label, columns = predicted label."""
    y = np.asarray(y_true).astype(bool)
    yhat = np.asarray(pred).astype(bool)
    w = as_weights(weights, y.size)
    cells = np.stack([~y & ~yhat, ~y & yhat, y & ~yhat, y & yhat], axis=1).astype(np.float64)
    return (w @ cells).reshape(-1, 2, 2)


def threshold_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and per-class precision/recall/F1 from (B, 2, 2) confusion matrices.

    F1 = 2 TP / (2 TP + FP + FN) (the harmonic mean of precision and recall, 0 when one of them
    is 0, as sklearn reports it); NaN only when the class is neither present nor predicted.
    """
    cm = np.asarray(cm, dtype=np.float64).reshape(-1, 2, 2)
    tn, fp, fn, tp = cm[:, 0, 0], cm[:, 0, 1], cm[:, 1, 0], cm[:, 1, 1]
    total = tn + fp + fn + tp
    out = {
        "accuracy": ratio_or_nan(tp + tn, total),
        "NORMAL_precision": ratio_or_nan(tn, tn + fn),
        "NORMAL_recall": ratio_or_nan(tn, tn + fp),
        "NORMAL_f1": ratio_or_nan(2 * tn, 2 * tn + fn + fp),
        "PNEUMONIA_precision": ratio_or_nan(tp, tp + fp),
        "PNEUMONIA_recall": ratio_or_nan(tp, tp + fn),
        "PNEUMONIA_f1": ratio_or_nan(2 * tp, 2 * tp + fp + fn),
    }
    out["sensitivity"] = out["PNEUMONIA_recall"]
    out["specificity"] = out["NORMAL_recall"]
    return out


def _level_sums(
    weights: ArrayLike, y_true: ArrayLike, prob: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted positive and negative counts at each distinct score, scores ascending: (B, K)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(prob, dtype=np.float64)
    w = as_weights(weights, y.size)
    order = np.argsort(p, kind="stable")
    sp = p[order]
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
    ws = w[:, order]
    pos = y[order]
    pos_sum = np.add.reduceat(ws * pos, starts, axis=1)
    neg_sum = np.add.reduceat(ws * ~pos, starts, axis=1)
    return pos_sum, neg_sum


def _auc_from_levels(pos_sum: np.ndarray, neg_sum: np.ndarray) -> np.ndarray:
    # Mann-Whitney: each positive beats the negatives at lower scores, ties count 1/2.
    neg_below = np.cumsum(neg_sum, axis=1) - neg_sum
    num = np.sum(pos_sum * (neg_below + 0.5 * neg_sum), axis=1)
    return ratio_or_nan(num, pos_sum.sum(axis=1) * neg_sum.sum(axis=1))


def _ap_from_levels(pos_sum: np.ndarray, neg_sum: np.ndarray) -> np.ndarray:
    # sklearn's average precision: sum over distinct thresholds (descending) of
    # (recall increment) x (precision at that threshold).
    pos_desc = pos_sum[:, ::-1]
    tp = np.cumsum(pos_desc, axis=1)
    fp = np.cumsum(neg_sum[:, ::-1], axis=1)
    precision = np.zeros_like(tp)
    np.divide(tp, tp + fp, out=precision, where=(tp + fp) > 0)
    return ratio_or_nan(np.sum(pos_desc * precision, axis=1), tp[:, -1])


def weighted_roc_auc(weights: ArrayLike, y_true: ArrayLike, prob: ArrayLike) -> np.ndarray:
    """Weighted ROC AUC (Mann-Whitney, ties 1/2) per row of weights; NaN without both classes."""
    return _auc_from_levels(*_level_sums(weights, y_true, prob))


def weighted_average_precision(
    weights: ArrayLike, y_true: ArrayLike, prob: ArrayLike
) -> np.ndarray:
    """Weighted average precision (sklearn's definition) per row; NaN without positives."""
    return _ap_from_levels(*_level_sums(weights, y_true, prob))


def weighted_metrics(
    weights: ArrayLike, y_true: ArrayLike, prob: ArrayLike, threshold: float
) -> dict[str, np.ndarray]:
    """Every metric of ``METRICS`` for each row of ``weights``: dict of arrays of shape (B,)."""
    y, p = _check_inputs(y_true, prob)
    w = as_weights(weights, y.size)
    out = threshold_metrics(weighted_confusion(w, y, p >= threshold))
    pos_sum, neg_sum = _level_sums(w, y, p)
    out["roc_auc"] = _auc_from_levels(pos_sum, neg_sum)
    out["pr_auc"] = _ap_from_levels(pos_sum, neg_sum)
    return {m: out[m] for m in METRICS}


def point_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, float]:
    """Every metric on the original data (all weights 1)."""
    n = np.asarray(y_true).size
    return {
        m: float(v[0]) for m, v in weighted_metrics(np.ones(n), y_true, prob, threshold).items()
    }


def bootstrap_distributions(
    y_true: ArrayLike,
    prob: ArrayLike,
    groups: ArrayLike | None,
    threshold: float,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Every metric on each of ``n_resamples`` patient-grouped resamples: arrays (B,)."""
    y, p = _check_inputs(y_true, prob)
    w = patient_weights(groups, y.size, n_resamples, seed)
    return weighted_metrics(w, y, p, threshold)


# --------------------------------------------------------------------------------------------
# intervals


def percentile_interval(values: ArrayLike, level: float = 0.95) -> tuple[float, float, int]:
    """(low, high, n_undefined): nan-aware percentile interval of bootstrap values."""
    v = np.asarray(values, dtype=np.float64)
    undefined = int(np.isnan(v).sum())
    if undefined == v.size:
        return float("nan"), float("nan"), undefined
    alpha = 1.0 - level
    low, high = np.nanpercentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(low), float(high), undefined


def guarded_interval(
    values: ArrayLike, level: float = 0.95, bounds: tuple[float, float] = (0.0, 1.0)
) -> dict[str, Any]:
    """Percentile interval of bootstrap values that may be undefined (NaN), honest about them.

    Returns ``{"ci_low", "ci_high", "n_undefined", "undefined_share", "withheld"}``. No undefined
    value: the plain percentile interval. Some (share <= WITHHOLD_SHARE): the interval that holds
    whatever they would have been: the lower bound's percentile with every undefined resample at
    ``bounds[0]``, the upper bound's with every one at ``bounds[1]`` (the metric's range). More:
    withheld (NaN bounds, ``withheld`` True).
    """
    v = np.asarray(values, dtype=np.float64)
    undefined = np.isnan(v)
    n_undefined = int(undefined.sum())
    share = n_undefined / v.size if v.size else 1.0
    out: dict[str, Any] = {"ci_low": float("nan"), "ci_high": float("nan"),
                           "n_undefined": n_undefined, "undefined_share": share,
                           "withheld": False}
    if share > WITHHOLD_SHARE or not v.size:
        out["withheld"] = True
        return out
    alpha = 1.0 - level
    out["ci_low"] = float(np.percentile(np.where(undefined, bounds[0], v), 100 * alpha / 2))
    out["ci_high"] = float(np.percentile(np.where(undefined, bounds[1], v),
                                         100 * (1 - alpha / 2)))
    return out


def _check_resampling(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")


def metric_intervals(
    y_true: ArrayLike,
    prob: ArrayLike,
    *,
    threshold: float,
    groups: ArrayLike | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point value and patient-bootstrap percentile interval of every metric.

    Returns ``{metric: {"value", "ci_low", "ci_high", "n_undefined", "undefined_share"}}`` for
    each of ``METRICS``; ``value`` is computed on the original data (equal to sklearn's);
    ``n_undefined`` / ``undefined_share`` count the resamples where the metric was undefined,
    which widen the interval or withhold it (NaN bounds): see ``guarded_interval``; ``method``
    is ``bootstrap``, or ``wilson`` where the bootstrap degenerates (see
    ``intervals_from_distributions``).
    """
    _check_resampling(n_resamples, level)
    point = point_metrics(y_true, prob, threshold)
    boot = bootstrap_distributions(y_true, prob, groups, threshold, n_resamples, seed)
    return intervals_from_distributions(point, boot, level,
                                        point_denominators(y_true, prob, threshold))


# Which interval a row carries: the percentile bootstrap, or (where the bootstrap degenerates:
# every defined resample equal, e.g. a recall of 148/148) Wilson's score interval.
BOOTSTRAP, WILSON = "bootstrap", "wilson"
# The metrics whose denominator is a count of images only approximately (not a binomial
# proportion): their Wilson fallback is an approximation, said so in ``method``.
APPROXIMATE_DENOMINATOR = ("NORMAL_f1", "PNEUMONIA_f1", "roc_auc", "pr_auc")


def degenerate(values: ArrayLike) -> bool:
    """True when every defined resample has the same value (a zero-width percentile interval:
    a recall of 148/148 is 1.0 in every resample, which says nothing about its uncertainty)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return bool(v.size) and bool((v == v[0]).all())


def wilson_interval(count: int, nobs: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of ``count`` successes in ``nobs`` (statsmodels
    ``proportion_confint(method="wilson")``): never zero-width for nobs >= 1, and inside [0, 1]
    at 0 and 1 (148/148 gives [0.975, 1]); NaN for nobs <= 0."""
    from statsmodels.stats.proportion import proportion_confint

    if nobs <= 0:
        return float("nan"), float("nan")
    low, high = proportion_confint(count, nobs, alpha=1 - level, method="wilson")
    return float(low), float(high)


def point_denominators(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, float]:
    """The number of images each metric of ``METRICS`` is a share of, on the data as they are
    (the n of ``wilson_interval``). F1 = 2TP / (2TP + FP + FN) counts its denominator; ROC AUC
    takes the smaller class and PR AUC the positives (our reading: an approximation, used only
    where the bootstrap degenerates, and labelled so)."""
    y, p = _check_inputs(y_true, prob)
    (tn, fp), (fn, tp) = weighted_confusion(np.ones(y.size), y, p >= threshold)[0]
    pos, neg = tp + fn, tn + fp
    return {"accuracy": float(y.size), "NORMAL_precision": tn + fn, "NORMAL_recall": neg,
            "NORMAL_f1": 2 * tn + fn + fp, "PNEUMONIA_precision": tp + fp,
            "PNEUMONIA_recall": pos, "PNEUMONIA_f1": 2 * tp + fp + fn, "sensitivity": pos,
            "specificity": neg, "roc_auc": min(pos, neg), "pr_auc": pos}


def intervals_from_distributions(
    point: Mapping[str, float], boot: Mapping[str, np.ndarray], level: float = 0.95,
    denominators: Mapping[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """``metric_intervals``' output from point values and bootstrap distributions (every metric
    in [0, 1]: the bounds of ``guarded_interval``).

    ``method`` says which interval a row carries: ``bootstrap`` (percentile), or, where the
    bootstrap degenerates (``degenerate``: every defined resample equal, a zero-width interval)
    and ``denominators`` gives the metric's n, ``wilson`` (Wilson's score interval of the value
    as a share of n; ``wilson (approximate n)`` for the metrics of
    ``APPROXIMATE_DENOMINATOR``). A degenerate interval without a denominator stays
    ``bootstrap (degenerate)``."""
    out: dict[str, dict[str, Any]] = {}
    for m, value in point.items():
        g = guarded_interval(boot[m], level)
        method = BOOTSTRAP
        low, high = g["ci_low"], g["ci_high"]
        if not g["withheld"] and np.isfinite(value) and degenerate(boot[m]):
            n = (denominators or {}).get(m)
            if n is not None and n >= 1:
                low, high = wilson_interval(round(float(value) * n), round(n), level)
                # At k = 0 or k = n the bound is exactly 0 or 1, but statsmodels' float
                # arithmetic can give 0.9999999999999999 (seen at 62/62): an interval must
                # contain its point, so clamp to it.
                low, high = float(min(low, value)), float(max(high, value))
                method = WILSON + (" (approximate n)" if m in APPROXIMATE_DENOMINATOR else "")
            else:
                method = f"{BOOTSTRAP} (degenerate)"
        out[m] = {"value": value, "ci_low": low, "ci_high": high,
                  "n_undefined": g["n_undefined"], "undefined_share": g["undefined_share"],
                  "method": method}
    return out


def flat_intervals(
    intervals: Mapping[str, Mapping[str, Any]], prefix: str = "", undefined: bool = False
) -> dict[str, float | int | None]:
    """Flat JSON/MLflow-ready keys from ``metric_intervals`` (or ``paired_deltas``) output.

    ``{"accuracy": .., "accuracy_ci_low": .., "accuracy_ci_high": .., "NORMAL_recall": ..}``;
    ``prefix`` is prepended to every key (``test_``); ``undefined=True`` adds
    ``<metric>_ci_n_undefined``. Non-finite values become None (JSON has no NaN; drop the Nones
    before ``mlflow.log_metrics``).
    """

    def clean(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None

    flat: dict[str, float | int | None] = {}
    for m, row in intervals.items():
        value = row["delta"] if "delta" in row else row["value"]
        key = f"{prefix}{m}" if "delta" not in row else f"{prefix}{m}_delta"
        flat[key] = clean(value)
        flat[f"{key}_ci_low"] = clean(row["ci_low"])
        flat[f"{key}_ci_high"] = clean(row["ci_high"])
        if undefined:
            flat[f"{key}_ci_n_undefined"] = int(row["n_undefined"])
    return flat


def paired_deltas(
    y_true: ArrayLike,
    prob_a: ArrayLike,
    prob_b: ArrayLike,
    groups: ArrayLike | None,
    threshold_a: float,
    threshold_b: float,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, Any]]:
    """Paired comparison of two models scored on the SAME images: delta = b - a per metric.

    Both models are evaluated on the same patient resamples (one weight matrix), so the interval
    of the delta accounts for their correlation. Returns ``{metric: {"a", "b", "delta", "ci_low",
    "ci_high", "n_undefined", "undefined_share", "pvalue", "verdict"}}`` where verdict is
    ``better`` / ``worse`` (B better / worse than A: the interval excludes 0; higher is better for
    every metric) or ``within noise``, for this one metric alone (no multiplicity correction:
    ``pneumonia compare`` applies Holm over its primary metrics), and ``pvalue`` the two-sided
    bootstrap p-value of delta = 0 (``bootstrap_pvalue``).
    """
    _check_resampling(n_resamples, level)
    y, pa = _check_inputs(y_true, prob_a)
    _, pb = _check_inputs(y_true, prob_b)
    point_a = point_metrics(y, pa, threshold_a)
    point_b = point_metrics(y, pb, threshold_b)
    w = patient_weights(groups, y.size, n_resamples, seed)
    boot_a = weighted_metrics(w, y, pa, threshold_a)
    boot_b = weighted_metrics(w, y, pb, threshold_b)
    out: dict[str, dict[str, Any]] = {}
    for m in METRICS:
        diff = boot_b[m] - boot_a[m]
        g = guarded_interval(diff, level, (-1.0, 1.0))
        out[m] = {
            "a": point_a[m],
            "b": point_b[m],
            "delta": point_b[m] - point_a[m],
            "ci_low": g["ci_low"],
            "ci_high": g["ci_high"],
            "n_undefined": g["n_undefined"],
            "undefined_share": g["undefined_share"],
            "pvalue": bootstrap_pvalue(diff),
            "verdict": paired_verdict(g["ci_low"], g["ci_high"]),
        }
    return out


def bootstrap_pvalue(diff: ArrayLike) -> float:
    """Two-sided bootstrap p-value of "the difference is 0" from its resampled values: twice the
    smaller share of resamples on either side of 0, with the +1 correction so that B resamples
    never report p = 0 (Davison & Hinkley); NaN values are left out; NaN when none is finite."""
    d = np.asarray(diff, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    tail = min(np.sum(d <= 0), np.sum(d >= 0))
    return float(min(1.0, 2 * (tail + 1) / (d.size + 1)))
