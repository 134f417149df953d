"""The conformal quantile fitted on a site's labelled images, and how many images it needs.

Score: LAC, s = 1 - P(true label) (pneumonia.stats.conformal); an image's set holds label y when
1 - P(y) <= qhat_y. Three ways to pick qhat from the n sorted calibration scores:

- ``lac`` (marginal, as evaluate): the k-th smallest, k = ceil((n + 1)(1 - alpha)). For a new
  image exchangeable with the calibration images, P(true label in set) >= 1 - alpha, on average
  over calibration draws and images.
- ``mondrian`` (class-conditional; Vovk et al. 2005, "Mondrian" conformal): the same rank within
  each true class's own scores, one qhat per class; then P(y in set | true label y) >= 1 - alpha
  for each class: the NORMAL images get their own coverage, not the average's.
- ``delta`` given (training-conditional, Vovk 2012 "Conditional validity of inductive conformal
  predictors"): the coverage of a split-conformal set with rank k, given the calibration draw, is
  Beta(k, n + 1 - k) distributed (exchangeable, continuous scores), so P(coverage < 1 - alpha) =
  P(Binomial(n, 1 - alpha) >= k). The smallest k with that at most delta makes coverage >= 1 -
  alpha hold with probability >= 1 - delta over calibration draws (per class with ``mondrian``).

MAPIE is not used here: it is not in the lock (adding it would change uv.lock for a sort and a
binomial tail), its split classifier takes a fitted scikit-learn estimator rather than the
precomputed probabilities we have (pneumonia.stats.conformal explains), and it has no
training-conditional (1 - delta) quantile. The marginal rank is the same as
pneumonia.stats.conformal.calibrate's (checked in tests/site/test_quantiles.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.stats.conformal import scores

METHODS = ("lac", "mondrian")


@dataclass(frozen=True)
class Quantile:
    """A fitted conformal quantile: ``qhat`` per label (NORMAL, PNEUMONIA); equal for lac."""

    method: str
    alpha: float
    delta: float | None
    qhat: tuple[float, float]
    n: tuple[int, int]  # calibration images per class (NORMAL, PNEUMONIA)
    rank: tuple[int, int]  # the 1-based rank used (per class for mondrian; both equal for lac)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "alpha": self.alpha, "delta": self.delta,
                "qhat": list(self.qhat), "n": list(self.n), "rank": list(self.rank)}


def rank(n: int, alpha: float, delta: float | None = None) -> int:
    """The 1-based rank of the conformal quantile among n sorted scores (> n: too few images,
    every label in every set)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if delta is None:
        return math.ceil((n + 1) * (1 - alpha))
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    from scipy.stats import binom

    # P(coverage < 1 - alpha) = P(Binomial(n, 1 - alpha) >= k) = binom.sf(k - 1, n, 1 - alpha);
    # it falls as k grows: the smallest k with it <= delta.
    ok = np.flatnonzero(binom.sf(np.arange(n), n, 1 - alpha) <= delta)  # k - 1 = 0..n-1
    return int(ok[0]) + 1 if ok.size else n + 1


def min_images(alpha: float, delta: float | None = None) -> int:
    """The smallest calibration set (per class for mondrian) whose quantile is not 1.0 (a set
    that holds every label): (1 - alpha) / alpha images marginally (19 at alpha 0.05); with
    delta, the smallest n with (1 - alpha)^n <= delta (45 at alpha 0.05, delta 0.1)."""
    if delta is not None:  # rank n is reached when P(Binomial(n, 1 - alpha) >= n) <= delta
        rank(1, alpha, delta)  # checks alpha and delta
        n = max(1, math.floor(math.log(delta) / math.log(1 - alpha)))
        while (1 - alpha) ** n > delta:
            n += 1
        return n
    n = 1
    while rank(n, alpha) > n:
        n += 1
    return n


def _qhat(s: np.ndarray, alpha: float, delta: float | None) -> tuple[float, int]:
    s = np.sort(s)
    k = rank(s.size, alpha, delta)
    return (1.0 if k > s.size else float(s[k - 1])), k


def fit_quantile(probs: ArrayLike, y: ArrayLike, alpha: float, method: str = "lac",
                 delta: float | None = None) -> Quantile:
    """Fit qhat on (n, 2) [P(NORMAL), P(PNEUMONIA)] and labels 0/1."""
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r} (use {', '.join(METHODS)})")
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    s = scores(probs, labels)
    n = (int((labels == 0).sum()), int((labels == 1).sum()))
    if method == "lac":
        q, k = _qhat(s, alpha, delta)
        return Quantile(method, float(alpha), delta, (q, q), n, (k, k))
    q0, k0 = _qhat(s[labels == 0], alpha, delta)
    q1, k1 = _qhat(s[labels == 1], alpha, delta)
    return Quantile(method, float(alpha), delta, (q0, q1), n, (k0, k1))


def sets(probs: ArrayLike, qhat: tuple[float, float] | ArrayLike) -> np.ndarray:
    """(n, 2) bool: label y in the set when 1 - P(y) <= qhat_y."""
    p = np.asarray(probs, dtype=np.float64)
    return (1.0 - p) <= np.asarray(qhat, dtype=np.float64).reshape(1, -1)


def set_metrics(probs: ArrayLike, y: ArrayLike, qhat: tuple[float, float] | ArrayLike
                ) -> dict[str, float]:
    """Coverage overall and per class, referral rate (the set is not one label) and accuracy
    on the images not referred."""
    s = sets(probs, qhat)
    labels = np.asarray(y, dtype=np.int64)
    covered = s[np.arange(labels.size), labels]
    decided = s.sum(axis=1) == 1
    nan = float("nan")
    return {"coverage": float(covered.mean()) if labels.size else nan,
            "coverage_NORMAL": float(covered[labels == 0].mean()) if (labels == 0).any() else nan,
            "coverage_PNEUMONIA": float(covered[labels == 1].mean()) if (labels == 1).any()
            else nan,
            "referral_rate": float(1 - decided.mean()) if labels.size else nan,
            "accuracy_not_referred": float(covered[decided].mean()) if decided.any() else nan}
