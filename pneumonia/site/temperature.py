"""Temperature scaling of P(PNEUMONIA) (Guo et al. 2017), fitted on a site's labelled images.

p' = sigmoid(logit(p) / T), T > 0 chosen to minimise the negative log-likelihood of the labels
(scipy.optimize.minimize_scalar over log T). T > 1 softens an over-confident model, T < 1
sharpens it. It is monotone: the ranking (ROC AUC) and, once the threshold and the conformal
quantile are refitted on p', every decision and every prediction set are those of a threshold
and quantiles on p itself (``raw_threshold``, ``raw_qhat``). What it changes is the probability
a user reads: p' is what the site's labels say the model's confidence is worth.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

EPS = 1e-7  # float32 sigmoids saturate at 0 and 1: clipped before the logit


def _logit(p: ArrayLike) -> np.ndarray:
    from scipy.special import logit

    return logit(np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS))


def fit_temperature(y: ArrayLike, prob: ArrayLike) -> float:
    """T minimising the labels' negative log-likelihood under sigmoid(logit(p) / T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_expit

    z = _logit(prob)
    yy = np.asarray(y, dtype=np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(-(yy * log_expit(s) + (1 - yy) * log_expit(-s)).sum())

    res = minimize_scalar(nll, bounds=(np.log(0.01), np.log(100.0)), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


def apply(prob: ArrayLike, temperature: float | None) -> np.ndarray:
    """p' = sigmoid(logit(p) / T); p unchanged when T is None."""
    p = np.asarray(prob, dtype=np.float64)
    if temperature is None:
        return p
    from scipy.special import expit

    return expit(_logit(p) / temperature)


def raw_threshold(threshold: float, temperature: float | None) -> float:
    """The threshold on p that decides as `threshold` on p' does: p' >= t' iff p >= this."""
    if temperature is None:
        return float(threshold)
    from scipy.special import expit, logit

    return float(expit(temperature * logit(threshold)))


def raw_qhat(qhat: tuple[float, float], temperature: float | None) -> tuple[float, float]:
    """(qhat_NORMAL, qhat_PNEUMONIA) on p giving the same sets as `qhat` on p': NORMAL is in
    the set when p' <= q_N, PNEUMONIA when p' >= 1 - q_P."""
    if temperature is None:
        return float(qhat[0]), float(qhat[1])
    from scipy.special import expit, logit

    q_normal = float(expit(temperature * logit(qhat[0])))
    q_pneumonia = float(1.0 - expit(temperature * logit(1.0 - qhat[1])))
    return q_normal, q_pneumonia
