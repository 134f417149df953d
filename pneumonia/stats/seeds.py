"""Inference across training seeds: is one training recipe (an ablation arm) better than another?

Each arm is trained with a few seeds and every run is scored on the same test images. Two sources
of noise separate two arms' mean metrics:

- the seeds: the same recipe gives a different model, and a different test metric, per seed. With
  3 seeds per arm the spread is known only roughly, so intervals use Student's t with the
  Welch-Satterthwaite degrees of freedom (t(0.975, 2) = 4.30, not 1.96);
- the test set: which patients happen to be in it. Each run's own share of that noise already
  shows in the seed spread; what the seed spread cannot show is the part the runs SHARE (a
  recipe that happens to suit this test set's patients suits them with every seed). That part
  is estimated with ONE patient-grouped bootstrap in which every run is scored on the same
  resampled patients (pairing: the arms' shared errors on the same images cancel in a
  difference), from the covariances between different runs.

``seed_contrast`` adds the two variances. The seed part is the Welch estimate for a linear
contrast of arm means (an arm minus the reference arm, or a factor's main effect averaged over the
other factors); the t quantile takes Welch-Satterthwaite degrees of freedom of the total, the
bootstrap term counted as known; and the interval is never narrower than Welch's over the seeds
alone. The simulations in tests/stats/test_seeds.py measure the coverage (>= 93 % at 3 seeds).

Why hand-written: statsmodels' ``ttest_ind(usevar="unequal")`` / ``CompareMeans`` give Welch's
interval for two samples (the tests check ``seed_contrast`` against them in that case), but not
for a contrast of several arms, nor with a second, bootstrap-estimated variance component. The
power calculation is statsmodels' ``TTestIndPower``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def t_interval(values: Sequence[float | None], level: float = 0.95,
               bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float | None, float | None]:
    """``level`` t-interval of the mean of ``values`` (None entries and NaN ignored), clipped
    to ``bounds`` (the metric's range); (None, None) with fewer than 2 finite values."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size < 2:
        return None, None
    half = stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(max(bounds[0], v.mean() - half)), float(min(bounds[1], v.mean() + half))


def seed_contrast(
    values: Sequence[ArrayLike],
    coefficients: Sequence[float],
    run_draws: Sequence[ArrayLike] | None = None,
    level: float = 0.95,
    test_df: float = math.inf,
) -> dict[str, Any]:
    """Interval and p-value of ``sum_j c_j * mean(values[j])``: a contrast of arm means.

    ``values[j]``: the per-seed metric of arm j (one value per run); ``coefficients``: c_j
    (``[1, -1]``: arm 0 minus arm 1). ``run_draws[j]``: (n_j, B) the same runs' metric on B
    patient resamples, the SAME resamples for every run (None: no test-set term). A run whose
    value is not finite is left out (with its draws).

    The seed term is Welch's: sum_j c_j^2 s_j^2 / n_j. The test-set term is the variance, over
    the resamples, of the part of the contrast that the runs SHARE: the bootstrap covariance
    between different runs (two seeds of one arm, or runs of two arms), so that each run's own
    test-sampling noise, already in the seed spread, is not counted twice. Pairing matters: on
    common resamples the arms' shared errors on the same images cancel in a difference.

    Returns ``estimate``, ``se``, ``se_seed``, ``se_test``, ``df`` (Welch-Satterthwaite of the
    total, the test term counted as known; inf when the seeds agree exactly), ``ci_low``,
    ``ci_high`` and ``pvalue`` (two-sided t; never narrower / smaller than Welch's over the seeds
    alone), ``undefined_share`` (resamples where some run's metric was undefined, left out of the
    covariances) and ``note`` ("" or why there is no interval).
    """
    from scipy import stats

    c = np.asarray(coefficients, dtype=float)
    if len(values) != c.size or (run_draws is not None and len(run_draws) != c.size):
        raise ValueError("one coefficient (and one draws array) per arm")
    arms, draws = [], []
    for j, v in enumerate(values):
        v = np.asarray([np.nan if x is None else x for x in np.ravel(v)], dtype=float)
        ok = np.isfinite(v)
        arms.append(v[ok])
        if run_draws is not None:
            d = np.atleast_2d(np.asarray(run_draws[j], dtype=float))
            if d.shape[0] != v.size:
                raise ValueError("run_draws[j] needs one row per value of arm j")
            draws.append(d[ok])
    used = [j for j in range(c.size) if c[j] != 0]
    nan = float("nan")
    out: dict[str, Any] = {"estimate": nan, "se": nan, "se_seed": nan, "se_test": 0.0,
                           "df": nan, "ci_low": nan, "ci_high": nan, "pvalue": nan,
                           "undefined_share": 0.0, "note": ""}
    if any(arms[j].size == 0 for j in used):
        out["note"] = "an arm has no defined value"
        return out
    out["estimate"] = float(sum(c[j] * arms[j].mean() for j in used))
    if any(arms[j].size < 2 for j in used):
        out["note"] = "needs at least 2 seeds per arm"
        return out
    if run_draws is not None:
        var_test, out["undefined_share"] = _shared_variance([draws[j] for j in used], c[used])
        out["se_test"] = math.sqrt(var_test)
    parts = np.array([c[j] ** 2 * arms[j].var(ddof=1) / arms[j].size for j in used])  # Welch
    dfs = np.array([arms[j].size - 1 for j in used], dtype=float)
    seed_var = float(parts.sum())
    var = seed_var + out["se_test"] ** 2
    out["se_seed"] = math.sqrt(seed_var)
    out["se"] = math.sqrt(var)
    if var == 0:
        out["note"] = "no variation between seeds or test resamples"
        return out
    # Degrees of freedom: Welch-Satterthwaite on the total variance, the test-set term counted
    # with infinite degrees of freedom (it rests on hundreds of resampled patients; the GUM's
    # effective degrees of freedom treat such a component the same way). That can come out
    # narrower than Welch's interval over the seeds alone (on the committed grid -0.109..+0.027
    # vs -0.113..+0.032), so the half-width is the larger of the two: never narrower than Welch.
    denom = float(np.sum(parts**2 / dfs))
    df_denom = denom + out["se_test"] ** 4 / test_df
    df = var**2 / df_denom if df_denom > 0 else math.inf
    est, z = out["estimate"], abs(out["estimate"])
    half = float(stats.t.ppf(0.5 + level / 2, df)) * out["se"]
    pvalue = float(2 * stats.t.sf(z / out["se"], df))
    if seed_var > 0:
        df_seed = seed_var**2 / denom
        half = max(half, float(stats.t.ppf(0.5 + level / 2, df_seed)) * out["se_seed"])
        pvalue = max(pvalue, float(2 * stats.t.sf(z / out["se_seed"], df_seed)))
    out.update(df=float(df), ci_low=est - half, ci_high=est + half, pvalue=pvalue)
    return out


def _shared_variance(draws: list[np.ndarray], c: np.ndarray) -> tuple[float, float]:
    """(variance of the contrast's shared test-set part, share of resamples left out).

    sum_jk c_j c_k C_jk, where C_jk is the mean bootstrap covariance between a run of arm j and
    a DIFFERENT run of arm k (each run's covariance with itself is its own noise, which the
    seed spread already holds). Clipped at 0 (an estimate can come out negative)."""
    stacked = np.vstack(draws)  # (R, B)
    keep = np.isfinite(stacked).all(axis=0)
    undefined = float(1 - keep.mean())
    if keep.sum() < 2:
        return 0.0, undefined
    cov = np.atleast_2d(np.cov(stacked[:, keep]))
    arm = np.repeat(np.arange(len(draws)), [d.shape[0] for d in draws])
    total = 0.0
    for j in range(len(draws)):
        for k in range(len(draws)):
            block = cov[np.ix_(arm == j, arm == k)]
            if j == k:
                n = block.shape[0]
                block_mean = (block.sum() - np.trace(block)) / (n * (n - 1))
            else:
                block_mean = block.mean()
            total += c[j] * c[k] * block_mean
    return max(0.0, float(total)), undefined


def pooled_sd(values: Sequence[ArrayLike]) -> float | None:
    """The within-arm seed standard deviation pooled over the arms with >= 2 seeds (None if
    there is none): sqrt(sum (n_j - 1) s_j^2 / sum (n_j - 1))."""
    num = den = 0.0
    for v in values:
        a = np.asarray([x for x in np.asarray(v, dtype=float).ravel() if math.isfinite(x)])
        if a.size >= 2:
            num += (a.size - 1) * a.var(ddof=1)
            den += a.size - 1
    return math.sqrt(num / den) if den else None


def seeds_needed(sd: float, difference: float, alpha: float = 0.05,
                 power: float = 0.8) -> int | None:
    """Seeds per arm for a two-sided Welch/t test at ``alpha`` to detect ``difference`` with
    ``power`` when the seed standard deviation is ``sd`` (statsmodels ``TTestIndPower``, equal
    arms). None when sd is 0 or unknown (any difference would show with 2 seeds)."""
    from statsmodels.stats.power import TTestIndPower

    if sd is None or not sd > 0:
        return None
    solver, effect = TTestIndPower(), difference / sd
    # solve_power's root finder does not converge (returns NaN) when the answer lies below 2
    # seeds, the fewest a t-test can use: check 2 first. At a huge effect (difference / sd = 20)
    # statsmodels' power itself is NaN (its noncentral t underflows): that power is ~1.
    at_two = solver.power(effect, 2, alpha, ratio=1.0, alternative="two-sided")
    if not at_two < power:
        return 2
    n = solver.solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0,
                           alternative="two-sided")
    return math.ceil(float(np.asarray(n).item()))


def detectable_floor(se_test: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest difference detectable with ``power`` however many seeds are run, when the
    test set itself contributes ``se_test`` to a difference (normal approximation)."""
    from scipy.stats import norm

    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se_test)


def holm_reject(pvalues: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down rejections for each row of ``pvalues`` (reps, m) at once: the same
    decisions as statsmodels ``multipletests(method="holm")`` row by row (a test checks it),
    vectorised for the power simulation."""
    p = np.asarray(pvalues, dtype=float)
    m = p.shape[1]
    order = np.argsort(p, axis=1)
    ranked = np.take_along_axis(p, order, axis=1)
    adjusted = np.maximum.accumulate(np.minimum(1.0, ranked * (m - np.arange(m))), axis=1)
    reject = np.empty_like(p, dtype=bool)
    np.put_along_axis(reject, order, adjusted < alpha, axis=1)
    return reject


def simulated_power(contrasts: Sequence[dict[str, float]], truth: dict[str, float], sd: float,
                    se_tests: Sequence[float], n: int, target: int, extra_tests: int = 0,
                    alpha: float = 0.05, reps: int = 2000, seed: int = 0,
                    others: str = "null") -> float:
    """Power of the ablation report's own test for contrast ``target``, by simulation.

    Each arm (``truth``: its true mean) gets ``n`` seeds ~ N(mean, sd); each contrast's estimate
    gets its shared test-set term ~ N(0, se_tests[c]) (the part of the test patients' sampling
    the runs share, which more seeds do not shrink; independent between contrasts: our
    simplification). Every contrast is tested as ``seed_contrast`` tests it (Welch over seeds +
    the test term, Welch-Satterthwaite df, never more significant than Welch over the seeds
    alone), and Holm runs over all of them plus ``extra_tests`` null p-values (the other primary
    metric's comparisons). ``others``: ``null`` — every other hypothesis of the family is true
    as simulated (the target's true effect aside, ``truth`` decides; the extra ones null): the
    worst case for Holm; ``clear`` — every other hypothesis is rejected anyway (large effects),
    so Holm's step-down reaches the target last, at ``alpha`` itself: the best case. Returns the
    share of ``reps`` simulated grids in which ``target`` is rejected."""
    from scipy import stats

    if n < 2:
        return 0.0
    arms = sorted(truth)
    index = {a: i for i, a in enumerate(arms)}
    rng = np.random.default_rng(seed)
    mu = np.array([truth[a] for a in arms])
    values = rng.normal(mu[None, :, None], sd, size=(reps, len(arms), n))
    means, variances = values.mean(axis=2), values.var(axis=2, ddof=1)
    pvalues = []
    for coef, se_test in zip(contrasts, se_tests, strict=True):
        c = np.zeros(len(arms))
        for arm, w in coef.items():
            c[index[arm]] = w
        used = c != 0
        est = means @ c + se_test * rng.standard_normal(reps)
        parts = (c[used] ** 2) * variances[:, used] / n
        seed_var = parts.sum(axis=1)
        var = seed_var + se_test**2
        denom = (parts**2).sum(axis=1) / (n - 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            df = np.where(denom > 0, var**2 / denom, np.inf)
            df_seed = np.where(denom > 0, seed_var**2 / denom, np.inf)
            p_total = 2 * stats.t.sf(np.abs(est) / np.sqrt(var), df)
            p_seed = 2 * stats.t.sf(np.abs(est) / np.sqrt(seed_var), df_seed)
        pvalues.append(np.maximum(p_total, np.nan_to_num(p_seed, nan=1.0)))
    if others == "clear":
        return float((pvalues[target] < alpha).mean())
    if others != "null":
        raise ValueError("others must be 'null' or 'clear'")
    if extra_tests:
        pvalues.extend(rng.uniform(size=(extra_tests, reps)))
    return float(holm_reject(np.stack(pvalues, axis=1), alpha)[:, target].mean())


def simulated_seeds_needed(contrasts: Sequence[dict[str, float]], truth: dict[str, float],
                           sd: float, se_tests: Sequence[float], target: int,
                           extra_tests: int = 0, alpha: float = 0.05, power: float = 0.8,
                           reps: int = 2000, seed: int = 0, most: int = 100,
                           others: str = "null") -> int | None:
    """The fewest seeds per arm (2..most) at which ``simulated_power`` reaches ``power``; None
    when even ``most`` does not (the test-set term alone can make a difference undetectable)."""
    for n in range(2, most + 1):
        if simulated_power(contrasts, truth, sd, se_tests, n, target, extra_tests, alpha, reps,
                           seed, others) >= power:
            return n
    return None
