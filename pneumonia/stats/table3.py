"""The paper's Table III as a confusion matrix, intervals for its cells, and a run compared to it.

Table III reports, on the official 624-image test set (234 NORMAL, 390 PNEUMONIA), accuracy 0.96
and NORMAL / PNEUMONIA precision-recall-F1 0.98/0.91/0.94 and 0.95/0.99/0.97. Five confusion
matrices with those class totals round to every cell (NORMAL right 212-214, PNEUMONIA right
385-386); ``paper_confusion`` is the one closest to the printed values: NORMAL 213 right / 21
predicted PNEUMONIA, PNEUMONIA 386 right / 4 predicted NORMAL (the tests check both facts).

The paper gives no patient information, so its own intervals treat images as independent:
Wilson intervals for the proportion cells (accuracy, precision, recall) and a seeded bootstrap
over images of the implied confusion for F1. A run's intervals come from the patient-grouped
bootstrap (``bootstrap.metric_intervals``) when predictions are given, or the same image-level
methods when only a confusion matrix is given.

The difference run - paper combines both uncertainties: the run's patient-grouped bootstrap
draws minus independent draws of the paper's implied confusion (multinomial over its 624 images:
the paper's binomial uncertainty), its percentile interval and bootstrap p-value. (Newcombe's
interval for two proportions, used before, treats the run's images as independent: with errors
correlated within patients it came out narrower than the run's own interval.) The ``verdict``
comes from that difference: ``consistent`` when its interval includes 0, ``below`` / ``above``
when it lies below / above 0; ``run_interval_verdict`` says only where the printed value lies
relative to the run's own interval (it ignores the paper's uncertainty). The headline count
``n_consistent`` uses ``verdict``.

The Kaggle ResNet baseline reports only two numbers (accuracy 0.92, NORMAL recall 0.82) and no
counts: for it only the verdict against our interval is given, no difference test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pneumonia.published import TABLE3_CONFUSION
from pneumonia.stats.bootstrap import (
    LABELS,
    bootstrap_distributions,
    bootstrap_pvalue,
    guarded_interval,
    intervals_from_distributions,
    percentile_interval,
    point_denominators,
    point_metrics,
    threshold_metrics,
    wilson_interval,
)

# The Table III cells with an interval and a verdict (support is a count, not an estimate).
CELLS = ("accuracy", *(f"{label}_{m}" for label in LABELS for m in ("precision", "recall", "f1")))
F1_CELLS = ("NORMAL_f1", "PNEUMONIA_f1")


def paper_confusion() -> np.ndarray:
    """The 2x2 confusion matrix implied by Table III: rows true (NORMAL, PNEUMONIA), columns
    predicted (NORMAL, PNEUMONIA). Its one source is ``pneumonia.published``."""
    return np.array(TABLE3_CONFUSION)


def _check_confusion(cm: ArrayLike) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.shape != (2, 2) or (cm < 0).any() or not np.issubdtype(cm.dtype, np.integer):
        raise ValueError("confusion must be a 2x2 matrix of non-negative integer counts")
    return cm.astype(np.int64)


def cells_from_confusion(cm: ArrayLike) -> dict[str, float]:
    """Accuracy and per-class precision, recall, F1 and support from a 2x2 confusion matrix,
    keyed like Table III (``accuracy``, ``NORMAL_precision``, ..., ``PNEUMONIA_support``)."""
    cm = _check_confusion(cm)
    metrics = {k: float(v[0]) for k, v in threshold_metrics(cm[None]).items()}
    cells = {"accuracy": metrics["accuracy"]}
    for i, label in enumerate(LABELS):
        for metric in ("precision", "recall", "f1"):
            cells[f"{label}_{metric}"] = metrics[f"{label}_{metric}"]
        cells[f"{label}_support"] = float(cm[i].sum())
    return cells


def paper_cells(decimals: int = 2) -> dict[str, float]:
    """Table III as published: the implied confusion's cells rounded to ``decimals``."""
    return {k: round(v, decimals) for k, v in cells_from_confusion(paper_confusion()).items()}


def proportion_counts(cm: ArrayLike) -> dict[str, tuple[int, int]]:
    """(successes, trials) of each proportion cell: accuracy, per-class precision and recall."""
    cm = _check_confusion(cm)
    (tn, fp), (fn, tp) = cm.tolist()
    return {
        "accuracy": (tn + tp, tn + fp + fn + tp),
        "NORMAL_precision": (tn, tn + fn),
        "NORMAL_recall": (tn, tn + fp),
        "PNEUMONIA_precision": (tp, tp + fp),
        "PNEUMONIA_recall": (tp, tp + fn),
    }


def confusion_bootstrap(
    cm: ArrayLike, n_resamples: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Image-level bootstrap of a confusion matrix (no patient information): each resample
    draws the same number of images from the four cells (multinomial), seeded. Returns every
    threshold metric per resample, arrays (B,)."""
    cm = _check_confusion(cm)
    n = int(cm.sum())
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n, cm.ravel() / n, size=n_resamples).reshape(-1, 2, 2)
    return threshold_metrics(draws)


def confusion_intervals(
    cm: ArrayLike, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per cell ``{value, ci_low, ci_high, method}`` from counts only: Wilson for proportion
    cells, image-level bootstrap of the confusion for F1."""
    cm = _check_confusion(cm)
    values = cells_from_confusion(cm)
    counts = proportion_counts(cm)
    boot = confusion_bootstrap(cm, n_resamples, seed)
    out: dict[str, dict[str, Any]] = {}
    for cell in CELLS:
        if cell in counts:
            low, high = wilson_interval(*counts[cell], level=level)
            method = "wilson"
        else:
            low, high, _ = percentile_interval(boot[cell], level)
            method = "image bootstrap"
        out[cell] = {"value": values[cell], "ci_low": low, "ci_high": high, "method": method}
    return out


def verdict(paper_value: float, ci_low: float, ci_high: float) -> str:
    """Where our interval lies relative to the paper's value: ``consistent`` (the value is inside
    [ci_low, ci_high]), ``below`` (our whole interval is below it), ``above`` otherwise.
    ``undefined`` when the interval is NaN. (With ``paper_value`` 0 and the interval of a
    difference run - paper, this is the verdict of the difference.)"""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "undefined"
    if ci_low <= paper_value <= ci_high:
        return "consistent"
    if ci_high < paper_value:
        return "below"
    return "above"


def difference_verdict(diff_low: float | None, diff_high: float | None) -> str:
    """The verdict of a difference run - paper from its interval: ``consistent`` when it holds 0,
    ``below`` / ``above`` when it lies below / above 0, ``undefined`` without an interval."""
    nan = float("nan")
    return verdict(0.0, nan if diff_low is None else diff_low,
                   nan if diff_high is None else diff_high)


def bootstrap_difference(run: np.ndarray, paper: np.ndarray, level: float) -> dict[str, Any]:
    """Interval, bootstrap p-value and undefined share of run - paper from INDEPENDENT draws of
    the two (the paper's images are not ours: draw b of one has nothing to do with draw b of the
    other, so the draws are subtracted as they come, never sorted or matched)."""
    d = np.asarray(run, dtype=np.float64) - np.asarray(paper, dtype=np.float64)
    g = guarded_interval(d, level, (-1.0, 1.0))
    return {"ci_low": g["ci_low"], "ci_high": g["ci_high"], "pvalue": bootstrap_pvalue(d),
            "undefined_share": g["undefined_share"]}


def _compare(
    run_ci: Mapping[str, Mapping[str, float]],
    run_boot: Mapping[str, np.ndarray],
    baseline: Mapping[str, float] | None,
    n_resamples: int,
    seed: int,
    level: float,
    run_method: str,
) -> dict[str, Any]:
    paper_cm = paper_confusion()
    published = paper_cells()
    implied = cells_from_confusion(paper_cm)
    paper_ci = confusion_intervals(paper_cm, level, n_resamples, seed + 1)
    paper_boot = confusion_bootstrap(paper_cm, n_resamples, seed + 1)
    cells: dict[str, Any] = {}
    for cell in CELLS:
        run = run_ci[cell]
        diff = bootstrap_difference(run_boot[cell], paper_boot[cell], level)
        cells[cell] = {
            "run": run["value"],
            "run_ci_low": run["ci_low"],
            "run_ci_high": run["ci_high"],
            "run_undefined_share": run.get("undefined_share", 0.0),
            "paper": published[cell],
            "paper_implied": implied[cell],
            "paper_ci_low": paper_ci[cell]["ci_low"],
            "paper_ci_high": paper_ci[cell]["ci_high"],
            "verdict": difference_verdict(diff["ci_low"], diff["ci_high"]),
            "run_interval_verdict": verdict(published[cell], run["ci_low"], run["ci_high"]),
            "diff": run["value"] - implied[cell],
            "diff_ci_low": diff["ci_low"],
            "diff_ci_high": diff["ci_high"],
            "diff_pvalue": diff["pvalue"],
            "diff_undefined_share": diff["undefined_share"],
            "diff_method": f"{run_method} (run) minus an independent image bootstrap of Table "
                           "III's implied confusion (paper)",
        }
    out: dict[str, Any] = {
        "cells": cells,
        "n_consistent": sum(c["verdict"] == "consistent" for c in cells.values()),
        "n_consistent_run_interval": sum(c["run_interval_verdict"] == "consistent"
                                         for c in cells.values()),
        "n_cells": len(cells),
    }
    if baseline is not None:
        base = {}
        for cell, value in baseline.items():
            run = run_ci[cell]
            base[cell] = {
                "baseline": float(value),
                "run": run["value"],
                "run_ci_low": run["ci_low"],
                "run_ci_high": run["ci_high"],
                "verdict": verdict(float(value), run["ci_low"], run["ci_high"]),
            }
        out["baseline"] = {
            "cells": base,
            "n_consistent": sum(c["verdict"] == "consistent" for c in base.values()),
            "n_cells": len(base),
            "note": "baseline counts unknown: verdict against our interval only, no difference test",
        }
    return out


def compare_to_paper(
    y_true: ArrayLike,
    prob: ArrayLike,
    threshold: float,
    groups: ArrayLike | None = None,
    baseline: Mapping[str, float] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """A run's test predictions against Table III (and optionally the baseline's numbers).

    Run intervals: patient-grouped bootstrap (``groups``; None = per image). Per cell: run value
    and interval (and the share of undefined resamples), published paper value (2 decimals) and
    the implied exact value, the paper's interval, the difference run - implied paper with its
    interval and p-value (the run's patient bootstrap minus independent draws of the paper's
    implied confusion), ``verdict`` from that difference and ``run_interval_verdict`` (published
    value vs our interval). Plus ``n_consistent`` (by ``verdict``), ``n_consistent_run_interval``
    and ``n_cells``. ``baseline``: e.g. ``{"accuracy": 0.92, "NORMAL_recall": 0.82}`` (keys from
    ``bootstrap.METRICS``): verdicts against our interval only (no counts, no difference).
    """
    y = np.asarray(y_true).astype(np.int64)
    p = np.asarray(prob, dtype=np.float64)
    boot = bootstrap_distributions(y, p, groups, threshold, n_resamples, seed)
    run_ci = intervals_from_distributions(point_metrics(y, p, threshold), boot, level,
                                          point_denominators(y, p, threshold))
    method = "patient-grouped bootstrap" if groups is not None else "image bootstrap"
    return _compare(run_ci, boot, baseline, n_resamples, seed, level, method)


def compare_confusion_to_paper(
    run_cm: ArrayLike,
    baseline: Mapping[str, float] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Like ``compare_to_paper`` from a run's 2x2 confusion matrix only (no predictions, no
    patients): the run's intervals are image-level (Wilson; image bootstrap for F1), and so is
    its side of the difference (an image bootstrap of its confusion)."""
    run_cm = _check_confusion(run_cm)
    run_ci = confusion_intervals(run_cm, level, n_resamples, seed)
    boot = confusion_bootstrap(run_cm, n_resamples, seed)
    return _compare(run_ci, boot, baseline, n_resamples, seed, level, "image bootstrap")
