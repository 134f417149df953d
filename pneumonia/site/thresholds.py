"""The decision threshold fitted on a site's labelled images: P(PNEUMONIA) >= t is PNEUMONIA.

Rules (`--threshold-rule`):

- ``accuracy``: the largest share of the labelled images right;
- ``youden``: the largest sensitivity + specificity - 1 (pneumonia.stats.calibration, the rule
  evaluate uses on validation images);
- ``sensitivity:S`` (e.g. ``sensitivity:0.95``): the highest threshold whose PNEUMONIA recall on
  the labelled images is at least S (the most specific one that keeps S);
- ``logistic``: where a logistic fit of the label on logit(P(PNEUMONIA)) over the labelled
  images (Platt scaling: two parameters, scikit-learn) crosses 1/2. It uses every image's
  distance from the boundary, not only which side it falls on, so it moves less from one small
  labelled set to the next than ``accuracy`` (measured in metrics/site-logistic.md).

The candidates are those of ``pneumonia.stats.calibration.youden_table``: the midpoints between
consecutive distinct probabilities (and 0.5), one per operating point, as far as possible from
the images on either side. Ties go to the candidate closest to 0.5, then the lower one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.errors import PipelineError
from pneumonia.stats.calibration import choose_threshold, youden_table

RULES = ("accuracy", "youden", "sensitivity:S", "logistic")


@dataclass(frozen=True)
class Rule:
    name: str  # accuracy | youden | sensitivity
    target: float | None = None  # the sensitivity asked for

    def __str__(self) -> str:
        return self.name if self.target is None else f"{self.name}:{self.target:g}"


def parse_rule(text: str) -> Rule:
    """`accuracy`, `youden`, `logistic` or `sensitivity:S` with S in (0, 1]; a PipelineError
    otherwise."""
    name, _, value = str(text).partition(":")
    if name in ("accuracy", "youden", "logistic") and not value:
        return Rule(name)
    if name == "sensitivity":
        try:
            target = float(value)
        except ValueError:
            target = -1.0
        if 0 < target <= 1:
            return Rule(name, target)
    raise PipelineError(f"threshold rule {text!r}: use accuracy, youden, logistic or "
                        "sensitivity:S with S in (0, 1], e.g. sensitivity:0.95")


def _closest_to_half(cand: np.ndarray, best: np.ndarray) -> float:
    pick = cand[best]
    dist = np.abs(pick - 0.5)
    return float(pick[np.flatnonzero(np.isclose(dist, dist.min(), rtol=0, atol=1e-15))[0]])


def fit_threshold(y: ArrayLike, prob: ArrayLike, rule: Rule | str) -> float:
    """The threshold in (0, 1) that `rule` picks on labelled (y, P(PNEUMONIA)); both classes
    must be present (ValueError otherwise)."""
    rule = parse_rule(rule) if isinstance(rule, str) else rule
    if rule.name == "youden":
        return choose_threshold(y, prob, "youden")
    cand, _ = youden_table(y, prob)  # checks inputs, both classes
    if rule.name == "logistic":
        return _logistic_threshold(np.asarray(y, dtype=np.int64),
                                   np.asarray(prob, dtype=np.float64))
    yy = np.asarray(y, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    pos, neg = np.sort(p[yy == 1]), np.sort(p[yy == 0])
    sensitivity = (pos.size - np.searchsorted(pos, cand, side="left")) / pos.size
    if rule.name == "accuracy":
        correct = (pos.size - np.searchsorted(pos, cand, side="left")
                   + np.searchsorted(neg, cand, side="left"))
        return _closest_to_half(cand, correct == correct.max())
    ok = np.flatnonzero(sensitivity >= rule.target - 1e-12)
    return float(cand[ok.max()])  # the smallest candidate has sensitivity 1: never empty


def _logistic_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """P(PNEUMONIA) where sigmoid(a * logit(p) + b), fitted on (y, p), is 1/2: sigmoid(-b / a)."""
    from sklearn.linear_model import LogisticRegression

    eps = 1e-6
    q = np.clip(p, eps, 1 - eps)
    z = np.log(q / (1 - q)).reshape(-1, 1)
    # C large: (almost) no shrinkage, the fit is the data's; separable labels stay finite
    fit = LogisticRegression(C=1e4, max_iter=1000).fit(z, y)
    a, b = float(fit.coef_[0, 0]), float(fit.intercept_[0])
    if not a > 0:
        raise PipelineError("threshold rule logistic: on the labelled images the model's "
                            "P(PNEUMONIA) does not rise with pneumonia (fitted slope "
                            f"{a:.3g} <= 0); the scores do not rank this site's images. Use "
                            "another rule, and check the images and labels.")
    return float(np.clip(1 / (1 + np.exp(b / a)), eps, 1 - eps))


def decision_metrics(y: ArrayLike, prob: ArrayLike, threshold: float) -> dict[str, float]:
    """Accuracy, sensitivity (PNEUMONIA recall) and specificity (NORMAL recall) at
    `threshold`; NaN for a rate whose class is absent."""
    yy = np.asarray(y, dtype=np.int64)
    pred = np.asarray(prob, dtype=np.float64) >= threshold
    with np.errstate(invalid="ignore"):
        return {"accuracy": float(np.mean(pred == yy)) if yy.size else float("nan"),
                "sensitivity": float(pred[yy == 1].mean()) if (yy == 1).any() else float("nan"),
                "specificity": float((~pred[yy == 0]).mean()) if (yy == 0).any()
                else float("nan")}
