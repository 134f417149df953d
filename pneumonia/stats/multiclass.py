"""Metrics over the three causes (normal / bacteria / virus), vectorised over bootstrap resamples.

The same weight-matrix bootstrap as ``bootstrap`` (a row of ``W`` (B, n) = how often each image's
patient was drawn): every metric below is computed for all resamples at once and its interval is
the nan-aware percentile interval of its distribution.

- ``cause_metrics``: for a three-class model (``prob`` (n, 3), columns in ``CLASSES`` order): the
  3x3 confusion (argmax), accuracy, per-class precision / recall / F1, one-vs-rest ROC AUC, their
  macro averages, and ``bacteria_vs_virus_accuracy``: on the images whose true class is bacteria
  or virus, the share whose P(bacteria) vs P(virus) comparison names the right one. That is the
  question Kermany et al. (Cell 2018) answered with a model trained on the two causes only
  (accuracy 0.907); here the three-class model answers it by its two pneumonia columns.
- ``cause_recalls``: for ANY model that calls an image PNEUMONIA or not (the binary view): the
  PNEUMONIA recall on the bacterial and on the viral test images separately (the paper: "We do
  not know if the miss-classified images are bacterial or viral pneumonia").

Undefined values (no image of a class in a resample, a class never predicted) are NaN, as in
``bootstrap``; the undefined-average rule is ``evaluate``'s: a macro average is NaN when one of
its classes is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.stats.bootstrap import (
    as_weights,
    intervals_from_distributions,
    patient_weights,
    percentile_interval,
    ratio_or_nan,
    weighted_roc_auc,
)
from pneumonia.stats.significance import paired_verdict

CLASSES = ("normal", "bacteria", "virus")  # column order of a three-class model's output
PNEUMONIA_CAUSES = ("bacteria", "virus")
# Every three-class metric, in report order.
CAUSE_METRICS = (
    "accuracy",
    *(f"{c}_{m}" for c in CLASSES for m in ("precision", "recall", "f1", "roc_auc")),
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "macro_roc_auc",
    "bacteria_vs_virus_accuracy",
)
# The binary view's recall per cause (evaluate.json keys).
CAUSE_RECALLS = tuple(f"PNEUMONIA_recall_{c}" for c in PNEUMONIA_CAUSES)


def class_codes(classes: ArrayLike) -> np.ndarray:
    """0 = normal, 1 = bacteria, 2 = virus for each entry of the manifest's `class` column;
    ValueError naming an unknown value."""
    values = np.asarray(classes).astype(str)
    unknown = sorted(set(values.tolist()) - set(CLASSES))
    if unknown:
        raise ValueError(f"unknown class value(s) {unknown}; expected {list(CLASSES)}")
    index = {c: i for i, c in enumerate(CLASSES)}
    return np.array([index[v] for v in values], dtype=np.int64)


def _check_probs(y: np.ndarray, prob: ArrayLike) -> np.ndarray:
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape != (y.size, len(CLASSES)):
        raise ValueError(f"prob must have shape ({y.size}, {len(CLASSES)}), got {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("prob must be finite")
    return p


def weighted_confusion3(weights: ArrayLike, y_true: ArrayLike, pred: ArrayLike) -> np.ndarray:
    """(B, 3, 3) weighted confusion matrices, rows = true class, columns = predicted class."""
    y = np.asarray(y_true, dtype=np.int64)
    yhat = np.asarray(pred, dtype=np.int64)
    w = as_weights(weights, y.size)
    k = len(CLASSES)
    cells = np.zeros((y.size, k * k))
    cells[np.arange(y.size), y * k + yhat] = 1.0
    return (w @ cells).reshape(-1, k, k)


def cause_distributions(weights: ArrayLike, y_true: ArrayLike,
                        prob: ArrayLike) -> dict[str, np.ndarray]:
    """Every metric of ``CAUSE_METRICS`` for each row of ``weights``: arrays (B,)."""
    y = np.asarray(y_true, dtype=np.int64)
    p = _check_probs(y, prob)
    w = as_weights(weights, y.size)
    cm = weighted_confusion3(w, y, p.argmax(axis=1))
    diag = np.diagonal(cm, axis1=1, axis2=2)  # (B, 3)
    actual, predicted = cm.sum(axis=2), cm.sum(axis=1)
    out: dict[str, np.ndarray] = {"accuracy": ratio_or_nan(diag.sum(axis=1), cm.sum(axis=(1, 2)))}
    for i, c in enumerate(CLASSES):
        out[f"{c}_precision"] = ratio_or_nan(diag[:, i], predicted[:, i])
        out[f"{c}_recall"] = ratio_or_nan(diag[:, i], actual[:, i])
        out[f"{c}_f1"] = ratio_or_nan(2 * diag[:, i], actual[:, i] + predicted[:, i])
        out[f"{c}_roc_auc"] = weighted_roc_auc(w, y == i, p[:, i])
    for m in ("precision", "recall", "f1", "roc_auc"):
        # NaN when a class is undefined (the module's rule): np.mean propagates it.
        out[f"macro_{m}"] = np.mean([out[f"{c}_{m}"] for c in CLASSES], axis=0)
    pneumonia = y > 0
    right = pneumonia & ((p[:, 2] > p[:, 1]) == (y == 2))  # ties -> bacteria (the majority)
    out["bacteria_vs_virus_accuracy"] = ratio_or_nan(w @ right.astype(np.float64),
                                               w @ pneumonia.astype(np.float64))
    return {m: out[m] for m in CAUSE_METRICS}


def cause_recall_distributions(weights: ArrayLike, classes: ArrayLike,
                               called_pneumonia: ArrayLike) -> dict[str, np.ndarray]:
    """PNEUMONIA recall on the bacterial and on the viral images, per row of ``weights``."""
    codes = class_codes(classes)
    called = np.asarray(called_pneumonia, dtype=bool)
    if called.shape != codes.shape:
        raise ValueError("classes and called_pneumonia must have the same length")
    w = as_weights(weights, codes.size)
    out = {}
    for i, cause in enumerate(CLASSES):
        if cause in PNEUMONIA_CAUSES:
            mask = (codes == i).astype(np.float64)
            out[f"PNEUMONIA_recall_{cause}"] = ratio_or_nan(w @ (mask * called), w @ mask)
    return out


def _intervals(point_of: Any, weights: np.ndarray, level: float,
               denominators: dict[str, float] | None = None) -> dict[str, dict[str, Any]]:
    point = {k: float(v[0]) for k, v in point_of(np.ones((1, weights.shape[1]))).items()}
    return intervals_from_distributions(point, point_of(weights), level, denominators)


def cause_metrics(y_true: ArrayLike, prob: ArrayLike, groups: ArrayLike | None,
                  n_resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, dict[str, Any]]:
    """``{metric: {value, ci_low, ci_high, n_undefined}}`` for every metric of
    ``CAUSE_METRICS``: the value on the images as they are, the interval from the
    patient-grouped bootstrap (``groups`` = patient of each image)."""
    y = np.asarray(y_true, dtype=np.int64)
    w = patient_weights(groups, y.size, n_resamples, seed)
    return _intervals(lambda ws: cause_distributions(ws, y, prob), w, level)


def cause_recalls(classes: ArrayLike, called_pneumonia: ArrayLike, groups: ArrayLike | None,
                  n_resamples: int = 2000, seed: int = 0,
                  level: float = 0.95) -> dict[str, dict[str, Any]]:
    """``{PNEUMONIA_recall_bacteria | _virus: {value, ci_low, ci_high, n_undefined}}``."""
    n = np.asarray(classes).size
    w = patient_weights(groups, n, n_resamples, seed)
    # Each recall is a share of its cause's images: Wilson's interval on that count where the
    # bootstrap degenerates (viral recall 148/148: [0.975, 1], not [1, 1]).
    codes = class_codes(classes)
    support = {f"PNEUMONIA_recall_{c}": float((codes == i).sum())
               for i, c in enumerate(CLASSES) if c in PNEUMONIA_CAUSES}
    return _intervals(lambda ws: cause_recall_distributions(ws, classes, called_pneumonia), w,
                      level, support)


def paired_cause_recalls(classes: ArrayLike, called_a: ArrayLike, called_b: ArrayLike,
                         groups: ArrayLike | None, n_resamples: int = 2000, seed: int = 0,
                         level: float = 0.95) -> dict[str, dict[str, Any]]:
    """Two models on the same images: each cause's PNEUMONIA recall, delta = b - a, with the
    interval from one patient-grouped bootstrap for both (the weights ``paired_deltas`` draws
    with the same seed). Same row layout as ``bootstrap.paired_deltas``."""
    n = np.asarray(classes).size
    w = patient_weights(groups, n, n_resamples, seed)
    point_a = cause_recall_distributions(np.ones((1, n)), classes, called_a)
    point_b = cause_recall_distributions(np.ones((1, n)), classes, called_b)
    boot_a = cause_recall_distributions(w, classes, called_a)
    boot_b = cause_recall_distributions(w, classes, called_b)
    out: dict[str, dict[str, Any]] = {}
    for m in CAUSE_RECALLS:
        low, high, undefined = percentile_interval(boot_b[m] - boot_a[m], level)
        a, b = float(point_a[m][0]), float(point_b[m][0])
        out[m] = {"a": a, "b": b, "delta": b - a, "ci_low": low, "ci_high": high,
                  "n_undefined": undefined, "verdict": paired_verdict(low, high)}
    return out
