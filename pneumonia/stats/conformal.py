"""Split conformal prediction sets: how confident is each prediction, with a coverage guarantee.

Calibrated on images the model never trained on (the validation originals), at a miscoverage
``alpha``: each new image gets the set of labels whose probability is high enough, so that, for
an image exchangeable with the calibration images, P(true label in the set) >= 1 - alpha
(Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle introduction to conformal prediction").

Score: LAC (least ambiguous set-valued classifier, Sadinle et al. 2019), s(x, y) = 1 - p_y(x).
The threshold ``qhat`` is the k-th smallest calibration score, k = ceil((n + 1)(1 - alpha)) (1.0,
i.e. every label in every set, when k > n: too few calibration images for that alpha), and the set
of an image is ``{y : 1 - p_y <= qhat}``. In the binary view (P(NORMAL) = 1 - P(PNEUMONIA)) a set
is {NORMAL}, {PNEUMONIA}, both (qhat >= 0.5: the model is not sure enough to name one) or empty
(qhat < 0.5: neither label is likely enough; the image is atypical of the calibration images).
Both and empty mean the same to a user: the model does not decide, *refer the image to a
radiologist*. The guarantee is marginal (on average over images), and it holds only while new
images are exchangeable with the calibration images: Kermany's validation and test images differ
(evaluate reports the test coverage against 1 - alpha so that a broken guarantee is seen).

Why hand-written, not MAPIE (the kept library for conformal prediction): MAPIE 1.x
(``SplitConformalClassifier(prefit=True)``) wraps a fitted scikit-learn estimator and calls its
``predict_proba`` on features; our probabilities come precomputed from a Keras model, so it would
take a fake pass-through estimator whose "features" are the probabilities, and the calibrated
threshold, which the served model must carry as one number (pneumonia.inference.pyfunc applies
it to new images without MAPIE installed), is only reachable through MAPIE's private
attributes (``_mapie_classifier.quantiles_``). The method itself is a sort and a comparison;
checked against MAPIE 1.6.0 with such a pass-through estimator (LAC, 200 calibration and 200 new
binary images): the same threshold and the same sets. tests/stats/test_conformal.py checks the
coverage on exchangeable synthetic data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.stats.bootstrap import as_weights, group_codes, ratio_or_nan

SEPARATOR = "|"  # between the labels of a set when written as text: "NORMAL|PNEUMONIA"
# Per-image set statistics (conformal_distributions), in report order.
SET_METRICS = ("coverage", "referral_rate", "accuracy_not_referred", "both_rate", "empty_rate")


@dataclass(frozen=True)
class Calibration:
    """A calibrated split conformal predictor: a label is in an image's set when
    1 - P(label) <= ``qhat``."""

    alpha: float
    qhat: float  # in [0, 1]; 1.0 = every label in every set
    n: int  # calibration images

    def as_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "qhat": self.qhat, "n_calibration": self.n}


def binary_probs(prob_pneumonia: ArrayLike) -> np.ndarray:
    """(n, 2) [P(NORMAL), P(PNEUMONIA)] from P(PNEUMONIA)."""
    p = np.asarray(prob_pneumonia, dtype=np.float64).reshape(-1)
    return np.stack([1.0 - p, p], axis=1)


def _check(probs: ArrayLike, y: ArrayLike | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not np.isfinite(p).all():
        raise ValueError(f"probs must be a finite (n, K >= 2) array, got shape {p.shape}")
    if y is None:
        return p, None
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != p.shape[0] or labels.min(initial=0) < 0 or \
            labels.max(initial=0) >= p.shape[1]:
        raise ValueError("y must hold one class index in 0..K-1 per row of probs")
    return p, labels


def scores(probs: ArrayLike, y: ArrayLike) -> np.ndarray:
    """LAC nonconformity score of each image's true label: 1 - P(true label)."""
    p, labels = _check(probs, y)
    return 1.0 - p[np.arange(p.shape[0]), labels]


def calibrate(probs: ArrayLike, y: ArrayLike, alpha: float) -> Calibration:
    """Split conformal calibration at miscoverage ``alpha`` on (probs, true labels)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    s = np.sort(scores(probs, y))
    n = s.size
    k = math.ceil((n + 1) * (1 - alpha))  # rank of the conformal quantile, 1-based
    qhat = 1.0 if k > n else float(s[k - 1])
    return Calibration(float(alpha), qhat, int(n))


def prediction_sets(probs: ArrayLike, qhat: float) -> np.ndarray:
    """(n, K) bool: label k is in image i's set when 1 - P_k <= qhat (the calibration score's
    own arithmetic, so a calibration image at the threshold is in its set)."""
    p, _ = _check(probs)
    return (1.0 - p) <= qhat


def set_names(sets: np.ndarray, labels: tuple[str, ...]) -> list[str]:
    """Each set as text, labels in model order joined by "|"; "" for an empty set."""
    return [SEPARATOR.join(lbl for lbl, inside in zip(labels, row, strict=True) if inside)
            for row in np.asarray(sets, dtype=bool)]


def conformal_distributions(weights: ArrayLike, y: ArrayLike,
                            sets: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted set statistics per row of ``weights`` (B, n): coverage (true label in the set),
    referral rate (the set is not one label), accuracy on the images not referred (their one
    label is the true one), and the shares of sets holding every label / no label."""
    s = np.asarray(sets, dtype=bool)
    labels = np.asarray(y, dtype=np.int64)
    w = as_weights(weights, labels.size)
    size = s.sum(axis=1)
    covered = s[np.arange(labels.size), labels].astype(np.float64)
    decided = (size == 1).astype(np.float64)
    total = w.sum(axis=1)
    return {
        "coverage": ratio_or_nan(w @ covered, total),
        "referral_rate": ratio_or_nan(w @ (1.0 - decided), total),
        "accuracy_not_referred": ratio_or_nan(w @ (covered * decided), w @ decided),
        "both_rate": ratio_or_nan(w @ (size == s.shape[1]).astype(np.float64), total),
        "empty_rate": ratio_or_nan(w @ (size == 0).astype(np.float64), total),
    }


def cross_fit_sets(probs: ArrayLike, y: ArrayLike, groups: ArrayLike | None, alpha: float,
                   folds: int = 5, seed: int = 0) -> np.ndarray:
    """The calibration images' own sets, each from a calibration that did not see it:
    patients are dealt into ``folds`` folds (seeded); each fold's sets come from calibrating on
    the other folds. The coverage of these sets estimates the coverage on new images
    exchangeable with the calibration images (with (folds - 1) / folds of them calibrating)."""
    p, labels = _check(probs, y)

    codes = group_codes(groups, labels.size)
    n_groups = int(codes.max()) + 1 if codes.size else 0
    folds = max(2, min(folds, n_groups))
    fold_of_group = np.random.default_rng(seed).permutation(n_groups) % folds
    fold = fold_of_group[codes]
    out = np.zeros(p.shape, dtype=bool)
    for f in range(folds):
        held = fold == f
        if held.all() or not held.any():
            continue
        cal = calibrate(p[~held], labels[~held], alpha)
        out[held] = prediction_sets(p[held], cal.qhat)
    return out


def risk_coverage(y: ArrayLike, probs: ArrayLike) -> dict[str, np.ndarray]:
    """Selective classification: images ranked by confidence (the largest class probability),
    the model decides only the most confident ones. For each distinct confidence c: coverage
    (share of images with confidence >= c, decided), risk (error rate among them)."""
    p, labels = _check(probs, y)
    confidence = p.max(axis=1)
    wrong = (p.argmax(axis=1) != labels).astype(np.float64)
    order = np.argsort(-confidence, kind="stable")
    conf_sorted, errors = confidence[order], np.cumsum(wrong[order])
    # the last image of each run of equal confidences: a threshold decides all of them or none
    last = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True])
    decided = last + 1.0
    return {"confidence": conf_sorted[last], "coverage": decided / labels.size,
            "risk": errors[last] / decided}
