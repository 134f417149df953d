"""The evaluate stage's prediction sets: split conformal prediction (pneumonia.stats.conformal),
calibrated on the validation originals at `evaluate.conformal_alpha`, measured on the test set.

In the binary view (P(PNEUMONIA); a three-class model's bacteria + virus) each test image gets a
set: {NORMAL}, {PNEUMONIA}, or not one label (both, or none) = refer it to a radiologist.
Reported, each with a 95 % patient-bootstrap interval:

- `conformal_coverage`: share of test images whose set holds the true label, against the target
  1 - alpha (`conformal_target`); `conformal_coverage_verdict` says whether the guarantee holds on
  test: `holds` (the interval lies at or above the target), `below` (the interval lies below it:
  the test images are not exchangeable with the validation images the sets were calibrated on),
  or `consistent` (the interval contains the target).
- `conformal_referral_rate`, `conformal_accuracy_not_referred` (accuracy on the images the model
  decides), `conformal_both_rate`, `conformal_empty_rate`.
- `conformal_val_coverage`: the same coverage on the validation originals by cross-fitting (5
  patient folds; each fold's sets calibrated on the other four): what the guarantee promises
  where it applies.
- metrics/risk_coverage.csv (a DVC plot) and an MLflow figure: selective classification by
  confidence, the error rate among the images decided vs the share decided, with the conformal
  operating point marked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.stats.bootstrap import intervals_from_distributions, patient_weights
from pneumonia.stats.conformal import (
    binary_probs,
    calibrate,
    conformal_distributions,
    cross_fit_sets,
    prediction_sets,
    risk_coverage,
)

PREFIX = "conformal_"
FOLDS = 5
LEVEL = 0.95
# evaluate.json keys that are not measurements (MLflow params/tags, not metrics)
SETTINGS = (f"{PREFIX}coverage_verdict",)


def _with_intervals(y: np.ndarray, sets: np.ndarray, groups: Any, n_resamples: int,
                    seed: int, prefix: str) -> dict[str, Any]:
    point = {k: float(v[0]) for k, v in
             conformal_distributions(np.ones((1, y.size)), y, sets).items()}
    boot = conformal_distributions(patient_weights(groups, y.size, n_resamples, seed), y, sets)
    out: dict[str, Any] = {}
    for m, row in intervals_from_distributions(point, boot, LEVEL).items():
        finite = np.isfinite(row["value"])
        out[f"{prefix}{m}"] = float(row["value"]) if finite else None
        out[f"{prefix}{m}_ci_low"] = float(row["ci_low"]) if finite else None
        out[f"{prefix}{m}_ci_high"] = float(row["ci_high"]) if finite else None
    return out


def coverage_verdict(low: float | None, high: float | None, target: float) -> str:
    """`holds` / `below` / `consistent`: the coverage interval against 1 - alpha."""
    if low is None or high is None:
        return "undefined"
    if high < target:
        return "below"
    if low >= target:
        return "holds"
    return "consistent"


def evaluate_sets(val_prob: Any, val_y: Any, val_groups: Any, test_prob: Any, test_y: Any,
                  test_groups: Any, alpha: float, n_resamples: int,
                  seed: int) -> tuple[dict[str, Any], np.ndarray, pd.DataFrame]:
    """(evaluate.json's `conformal_` keys, the test sets (n, 2) bool, the risk-coverage table).
    `*_prob` = P(PNEUMONIA), `*_y` = 0 NORMAL / 1 PNEUMONIA."""
    vy, ty = np.asarray(val_y, dtype=int), np.asarray(test_y, dtype=int)
    val, test = binary_probs(val_prob), binary_probs(test_prob)
    cal = calibrate(val, vy, alpha)
    sets = prediction_sets(test, cal.qhat)
    out: dict[str, Any] = {f"{PREFIX}alpha": alpha, f"{PREFIX}target": 1 - alpha,
                           f"{PREFIX}qhat": cal.qhat, f"{PREFIX}n_calibration": cal.n}
    out |= _with_intervals(ty, sets, test_groups, n_resamples, seed, PREFIX)
    crossed = cross_fit_sets(val, vy, val_groups, alpha, FOLDS, seed)
    val_stats = _with_intervals(vy, crossed, val_groups, n_resamples, seed, f"{PREFIX}val_")
    out |= {k: v for k, v in val_stats.items()
            if k.startswith((f"{PREFIX}val_coverage", f"{PREFIX}val_referral_rate"))}
    out[f"{PREFIX}coverage_verdict"] = coverage_verdict(
        out[f"{PREFIX}coverage_ci_low"], out[f"{PREFIX}coverage_ci_high"], 1 - alpha)
    curve = pd.DataFrame(risk_coverage(ty, test))[["coverage", "risk", "confidence"]]
    return out, sets, curve


def _cell(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    return "n/a" if v is None else f"{v:.3f} [{m[key + '_ci_low']:.3f}, {m[key + '_ci_high']:.3f}]"


def markdown(m: dict[str, Any]) -> str:
    """table3.md's section on the prediction sets."""
    target = m[f"{PREFIX}target"]
    verdict = m[f"{PREFIX}coverage_verdict"]
    said = {
        "holds": f"holds on the test set: its interval lies at or above {target:.2f}.",
        "below": (f"does NOT hold on the test set: its interval lies below {target:.2f}. The "
                  "test images are not exchangeable with the validation images the sets were "
                  "calibrated on (Kermany's validation and test sets differ), so the sets are "
                  "too small there."),
        "consistent": f"is consistent with {target:.2f} on the test set (the interval holds it).",
        "undefined": "cannot be judged (no test images).",
    }[verdict]
    lines = [
        f"## Prediction sets (split conformal, alpha = {m[PREFIX + 'alpha']:g})",
        "",
        (f"Calibrated on {m[PREFIX + 'n_calibration']} validation originals: a label is in an "
        f"image's set when its probability is at least {1 - m[PREFIX + 'qhat']:.4f}; a set "
        "that is not one label means *refer to a radiologist*. Promised: the set holds the true "
        f"label for at least {target:.0%} of images exchangeable with the calibration images."),
        "",
        "| | value [95 % CI] |",
        "|---|---|",
        (f"| coverage, validation (cross-fitted, {FOLDS} folds) | "
        f"{_cell(m, PREFIX + 'val_coverage')} |"),
        f"| coverage, test | {_cell(m, PREFIX + 'coverage')} |",
        f"| referral rate, test | {_cell(m, PREFIX + 'referral_rate')} |",
        (f"| accuracy on the images not referred, test | "
        f"{_cell(m, PREFIX + 'accuracy_not_referred')} |"),
        (f"| sets with both labels / with none, test | {_cell(m, PREFIX + 'both_rate')} / "
        f"{_cell(m, PREFIX + 'empty_rate')} |"),
        "",
        f"The coverage guarantee {said}",
    ]
    if m.get(PREFIX + "referral_rate") == 1.0:
        lines.append("Every test image is referred: the sets cover by holding both labels and "
                     "say nothing about the model (too few calibration images for this alpha, "
                     "or a model no better than chance on them).")
    return "\n".join(lines) + "\n"


def plot_risk_coverage(curve: pd.DataFrame, m: dict[str, Any], path: Path) -> None:
    """Risk (error rate among decided images) vs coverage (share decided), with the conformal
    operating point (its referral rate and accuracy on the images not referred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=110)
    ax.plot(curve["coverage"], curve["risk"], lw=1.5, label="by confidence")
    rate, acc = m.get(PREFIX + "referral_rate"), m.get(PREFIX + "accuracy_not_referred")
    if rate is not None and acc is not None:
        ax.plot([1 - rate], [1 - acc], "o", color="tab:red",
                label=f"conformal sets, alpha {m[PREFIX + 'alpha']:g}")
    ax.set(xlabel="coverage (share of test images decided)",
           ylabel="risk (error rate among them)", xlim=(0, 1.02), ylim=(0, None),
           title="Risk-coverage (test set)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
