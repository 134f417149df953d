"""The evaluate stage's text reports from evaluate.json's flat keys: metrics/table3.json (the run
against the paper's Table III, its baseline, the leak-free subset, the chosen threshold and
calibration) and the classification report text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumonia.evaluation.metrics import (
    AVERAGES,
    ECE_BINS,
    LEVEL,
    REPORTED,
    THRESHOLD_METRICS,
    finite_or_none,
)
from pneumonia.formatting import number
from pneumonia.params import Params
from pneumonia.paths import LABELS
from pneumonia.published import BASELINE, BASELINE_NAME, TABLE3
from pneumonia.stats.bootstrap import METRICS as BOOT_METRICS
from pneumonia.stats.bootstrap import WITHHOLD_SHARE
from pneumonia.stats.table3 import compare_to_paper

# Table III cells a verdict compares on the leak-free subset: those that do not depend on the
# class mix (recall = sensitivity / specificity).
LEAKFREE_CELLS = ("NORMAL_recall", "PNEUMONIA_recall")


def report_text(metrics: dict[str, Any], prefix: str = "") -> str:
    """The classification report (layout of sklearn's and of Table III) from evaluate.json's
    flat keys, with each value's 95 % interval; `n/a` = undefined, by the module's one rule."""
    g = metrics.get
    head = f"{'':<14}{'precision':<27}{'recall':<27}{'f1-score':<27}{'support':>8}"
    lines = [head, ""]

    def cell(key: str) -> str:
        v, lo, hi = g(f"{prefix}{key}"), g(f"{prefix}{key}_ci_low"), g(f"{prefix}{key}_ci_high")
        if v is None:
            text = "n/a"
        elif lo is None or hi is None:
            text = f"{v:.4f} [withheld]"
        else:
            text = f"{v:.4f} [{number(lo, 4)}, {number(hi, 4)}]"
        if g(f"{prefix}{key}_ci_undefined_share"):
            text += "*"
        return f"{text:<27}"

    n = g(f"{prefix}n_test")
    for group in (*LABELS, *AVERAGES):
        support = g(f"{prefix}{group}_support", n)
        lines.append(
            f"{group.replace('_', ' '):<14}"
            + "".join(cell(f"{group}_{m}") for m in ("precision", "recall", "f1"))
            + f"{support:>8}"
        )
        if group == LABELS[-1]:
            lines.append("")
    acc = cell("accuracy").strip()
    lines += ["", f"{'accuracy':<14}{acc}   (n = {n})"]
    undefined = g(f"{prefix}undefined")
    if undefined:
        lines.append(f"n/a = undefined (zero denominator): {undefined}")
    shares = {m: g(f"{prefix}{m}_ci_undefined_share") for m in REPORTED
              if g(f"{prefix}{m}_ci_undefined_share")}
    if shares:
        lines.append("* some bootstrap resamples had the metric undefined (interval widened to "
                     f"cover them; withheld above {WITHHOLD_SHARE:.0%}): "
                     + ", ".join(f"{k} {v:.1%}" for k, v in shares.items()))
    return "\n".join(lines) + "\n"


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to None, recursively."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def _block(metrics: dict[str, Any], prefix: str, names: tuple[str, ...]) -> dict[str, Any]:
    return {
        m: {
            "value": metrics[f"{prefix}{m}"],
            "ci_low": metrics[f"{prefix}{m}_ci_low"],
            "ci_high": metrics[f"{prefix}{m}_ci_high"],
            "undefined_share": metrics.get(f"{prefix}{m}_ci_undefined_share", 0.0),
        }
        for m in names
    }


@dataclass(frozen=True)
class LeakfreeSubset:
    """The leak-free test images under one reading of the file names (the patient rule): their
    labels, P(PNEUMONIA), patient ids (read by the rule) and what was excluded."""

    rule: str
    y: np.ndarray
    prob: np.ndarray
    groups: np.ndarray
    excluded_patient_in_train: int
    excluded_duplicate_of_train: int


def _leakfree_block(metrics: dict[str, Any], prefix: str, subset: LeakfreeSubset,
                    params: Params) -> dict[str, Any]:
    """table3.json's block for one leak-free subset: counts, the metrics of evaluate.json under
    ``prefix``, and verdicts against Table III for the recalls, from the difference run - paper
    (pneumonia.stats.table3, as on the official test set)."""
    e = params.evaluate
    cells: dict[str, Any] = {}
    if subset.y.size:
        paper = compare_to_paper(subset.y, subset.prob, e.threshold, subset.groups, None,
                                 e.bootstrap_resamples, e.seed, LEVEL)
        cells = {c: row for c, row in paper["cells"].items() if c in LEAKFREE_CELLS}
    verdicts = {c: cells[c]["verdict"] if c in cells else "undefined" for c in LEAKFREE_CELLS}
    return {
        "rule": subset.rule,
        "n_test": metrics[f"{prefix}n_test"],
        "n_patients": metrics[f"{prefix}n_patients"],
        "support": {label: metrics[f"{prefix}{label}_support"] for label in LABELS},
        "excluded_patient_in_train": subset.excluded_patient_in_train,
        "excluded_duplicate_of_train": subset.excluded_duplicate_of_train,
        "table3_consistent": sum(v == "consistent" for v in verdicts.values()),
        "table3_cells": len(verdicts),
        "verdicts": verdicts,
        "run_interval_verdicts": {c: cells[c]["run_interval_verdict"] for c in cells},
        "differences": {c: {k: cells[c][k] for k in ("diff", "diff_ci_low", "diff_ci_high",
                                                      "diff_pvalue")} for c in cells},
        "metrics": _block(metrics, prefix, BOOT_METRICS),
    }


def table3_report(
    metrics: dict[str, Any],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    leakfree: LeakfreeSubset,
    params: Params,
    n_validation: int | None,
    warning: str = "",
    leakfree_alt: LeakfreeSubset | None = None,
) -> dict[str, Any]:
    """metrics/table3.json: the run against Table III and the Kaggle baseline (official test
    set, evaluate.threshold), the leak-free subset beside it (under evaluate's patient rule, and
    under the other reading of the file names when ``leakfree_alt`` is given: `leakfree_alt_`
    keys of evaluate.json), the validation-chosen threshold and calibration. `test` = (y, prob,
    patient id) of the official test images; the chosen-threshold numbers come from `metrics`."""
    e = params.evaluate
    t = e.threshold
    y, p, g = test
    paper = compare_to_paper(y, p, t, g, BASELINE, e.bootstrap_resamples, e.seed, LEVEL)
    out: dict[str, Any] = {
        "threshold": t,
        "n_test": metrics["n_test"],
        "n_patients": metrics["n_patients"],
        "bootstrap_resamples": e.bootstrap_resamples,
        "seed": e.seed,
        "ci_level": LEVEL,
        "table3_consistent": paper["n_consistent"],
        "table3_consistent_run_interval": paper["n_consistent_run_interval"],
        "table3_cells": paper["n_cells"],
        "baseline_consistent": paper["baseline"]["n_consistent"],
        "baseline_cells": paper["baseline"]["n_cells"],
        "threshold_warning": warning,
        "cells": paper["cells"],
        "support": {
            label: {"paper": TABLE3[label]["support"], "run": metrics[f"{label}_support"]}
            for label in LABELS
        },
        "baseline": {"name": BASELINE_NAME, **paper["baseline"]},
        "test": {"metrics": _block(metrics, "", BOOT_METRICS)},
    }
    # The leak-free subset has its own class mix (on the Kermany split mostly NORMAL: the
    # PNEUMONIA test patients are the ones also seen in training). Accuracy, precision and F1
    # depend on that mix, so only the recalls are compared with Table III.
    out["leakfree"] = _leakfree_block(metrics, "leakfree_", leakfree, params)
    if leakfree_alt is not None:
        out["leakfree"]["other_reading"] = _leakfree_block(metrics, "leakfree_alt_",
                                                           leakfree_alt, params)
    out["threshold_choice"] = {
        "rule": e.threshold_rule,
        "threshold_chosen": metrics["threshold_chosen"],
        "n_validation": n_validation,
        "metrics": _block(metrics, "chosen_", THRESHOLD_METRICS),
        "at_threshold": _block(metrics, "", THRESHOLD_METRICS),
    }
    out["calibration"] = {
        "bins": ECE_BINS,
        "metrics": {k: {"value": metrics[k], "ci_low": metrics[f"{k}_ci_low"],
                        "ci_high": metrics[f"{k}_ci_high"]} for k in ("brier", "ece")},
    }
    return _clean(out)
