"""One site calibration: temperature (optional), threshold and conformal quantile fitted on the
same labelled site images, and an estimate of what they give on the site's other images.

The record stores the threshold and the quantiles on the model's own P(PNEUMONIA) (``threshold``,
``qhat``): with a temperature they are mapped back through it (pneumonia.site.temperature), so
`predict` and the served model decide exactly as the fit did without re-applying anything; the
temperature only adds the calibrated probability they report.

The estimate (``cross_fit``): the patients are dealt into 5 folds; each fold is decided by a
calibration fitted on the other four, and the folds' decisions are pooled: accuracy,
sensitivity, specificity, coverage (overall and per class), referral rate. It is an estimate for
new images exchangeable with the labelled ones, from (4/5 of) this many images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.site import draws, quantiles, temperature, thresholds
from pneumonia.stats.conformal import binary_probs

CROSS_FIT_FOLDS = 5


@dataclass(frozen=True)
class Settings:
    rule: thresholds.Rule
    alpha: float = 0.05
    method: str = "lac"  # lac | mondrian
    delta: float | None = None  # training-conditional confidence 1 - delta
    temperature: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rule": str(self.rule), "alpha": self.alpha, "method": self.method,
                "delta": self.delta, "temperature": self.temperature}


@dataclass(frozen=True)
class SiteCalibration:
    settings: Settings
    threshold: float  # on the model's P(PNEUMONIA)
    qhat: tuple[float, float]  # (NORMAL, PNEUMONIA), on the model's probabilities
    temperature: float | None
    quantile: quantiles.Quantile  # as fitted (on the tempered probabilities)
    n: tuple[int, int]
    cross_fit: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.settings.as_dict(), "threshold": self.threshold, "qhat": list(self.qhat),
                "temperature": self.temperature, "rank": list(self.quantile.rank),
                "n_normal": self.n[0], "n_pneumonia": self.n[1], "cross_fit": self.cross_fit}


def fit_once(y: ArrayLike, prob: ArrayLike, settings: Settings
             ) -> tuple[float, tuple[float, float], float | None, quantiles.Quantile]:
    """(threshold, qhat, temperature, quantile) fitted on labelled (y, P(PNEUMONIA))."""
    yy = np.asarray(y, dtype=np.int64)
    t = temperature.fit_temperature(yy, prob) if settings.temperature else None
    p = temperature.apply(prob, t)
    thr = thresholds.fit_threshold(yy, p, settings.rule)
    q = quantiles.fit_quantile(binary_probs(p), yy, settings.alpha, settings.method,
                               settings.delta)
    return temperature.raw_threshold(thr, t), temperature.raw_qhat(q.qhat, t), t, q


def fit(y: ArrayLike, prob: ArrayLike, groups: ArrayLike | None, settings: Settings,
        seed: int = 0) -> SiteCalibration:
    yy = np.asarray(y, dtype=np.int64)
    p = np.asarray(prob, dtype=np.float64)
    thr, qhat, t, q = fit_once(yy, p, settings)
    return SiteCalibration(settings, thr, qhat, t, q, (int((yy == 0).sum()), int(yy.sum())),
                           cross_fit(yy, p, groups, settings, seed))


def cross_fit(y: np.ndarray, prob: np.ndarray, groups: ArrayLike | None, settings: Settings,
              seed: int = 0, n_folds: int = CROSS_FIT_FOLDS) -> dict[str, float]:
    """Pooled decisions of each patient fold by a calibration fitted on the other folds."""
    fold = draws.folds(groups, y.size, n_folds, seed)
    pred = np.zeros(y.size, dtype=bool)
    in_set = np.zeros((y.size, 2), dtype=bool)
    for f in np.unique(fold):
        held = fold == f
        rest = ~held
        if len(np.unique(y[rest])) < 2:  # a fold holding a whole class: cannot fit without it
            return {}
        thr, qhat, _, _ = fit_once(y[rest], prob[rest], settings)
        pred[held] = prob[held] >= thr
        in_set[held] = quantiles.sets(binary_probs(prob[held]), qhat)
    out = thresholds.decision_metrics(y, pred.astype(float), 0.5)
    covered = in_set[np.arange(y.size), y]
    decided = in_set.sum(axis=1) == 1
    out |= {"coverage": float(covered.mean()),
            "coverage_NORMAL": float(covered[y == 0].mean()),
            "coverage_PNEUMONIA": float(covered[y == 1].mean()),
            "referral_rate": float(1 - decided.mean()), "folds": int(np.unique(fold).size)}
    return out
