"""Stage `evaluate`: the trained model on the official test set (subset == test), vs Table III.

A test image is called PNEUMONIA when P(PNEUMONIA) >= evaluate.threshold (0.5, the paper's).
Every reported test metric carries a 95 % interval from a patient-grouped bootstrap
(`evaluate.bootstrap_resamples` resamples of the test patients, seeded by `evaluate.seed`; see
pneumonia.stats.bootstrap). Outputs:

- metrics/evaluate.json: flat keys, the contract for `dvc metrics diff`, MLflow and `pneumonia
  predict`: `accuracy`, `accuracy_ci_low`, `accuracy_ci_high`, `NORMAL_recall`, ... for the
  official test set; the same with `leakfree_` for the leakage-free test subset (test images whose
  patient is not in train/validation and that are no byte-duplicate of a training image: the two
  kinds of leakage the validate stage reports); `chosen_` for the test metrics at the threshold
  chosen on the VALIDATION images (`threshold_chosen`, `threshold_rule`); `brier`, `ece`.
- metrics/table3.json + table3.md: each Table III cell with its interval and a verdict
  (consistent / below / above), the paper's own interval and the difference run - paper with its
  interval (pneumonia.stats.table3); the Kaggle baseline; the leak-free subset side by side; the
  validation-chosen threshold; calibration.
- metrics/predictions.csv (one row per test image: DVC's `confusion` plot, and what
  `pneumonia compare` reads) + confusion.png, metrics/roc.csv, metrics/reliability.csv,
  metrics/pr.csv (DVC plots). Everything is also logged to the pipeline's MLflow run.

Undefined values: a per-class value with a zero denominator (e.g. NORMAL precision of a model that
never predicts NORMAL) is null, listed in `undefined`. An average over the classes is null when a
class it gives weight to is undefined (macro: both classes; weighted: the classes present). Neither
0 (sklearn's zero_division=0 makes "never predicted" look like "always wrong" and the macro average
of an all-PNEUMONIA model 0.31) nor dropping the class (zero_division=nan: 0.625, the one defined
class passed off as an average) describes such a model honestly. The JSON, the MLflow run and the
classification report text follow this one rule.

After that the model is registered and gated (pneumonia.registry: champion or challenger,
metrics/registry.json), and Grad-CAM overlays of test errors and correct cases are written to
metrics/gradcam/ (pneumonia.inference.gradcam).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia import registry, tracking
from pneumonia.errors import PipelineError
from pneumonia.evaluation.paper import (
    BASELINE,
    BASELINE_NAME,
    TABLE3,
    metric_name,
    table3_markdown,
)
from pneumonia.files import sha256_file, write_json
from pneumonia.model.inputs import check_images, labels_of, make_dataset, read_split, subset_rows
from pneumonia.params import Params, flatten
from pneumonia.paths import (
    CONFUSION_PNG,
    EVALUATE_JSON,
    GRADCAM_DIR,
    LABELS,
    MANIFEST,
    MODEL_FILE,
    PR_CSV,
    PREDICTIONS_CSV,
    RELIABILITY_CSV,
    ROC_CSV,
    SPLIT_CSV,
    TABLE3_JSON,
    TABLE3_MD,
    VALIDATION_JSON,
)
from pneumonia.stats.bootstrap import (
    METRICS,
    intervals_from_distributions,
    patient_weights,
    weighted_confusion,
    weighted_metrics,
)

log = logging.getLogger(__name__)

LEVEL = 0.95
ECE_BINS = 10
AVERAGES = ("macro_avg", "weighted_avg")
# Every reported metric with an interval, in report order (bootstrap.METRICS, then the averages).
REPORTED = METRICS + tuple(f"{a}_{m}" for a in AVERAGES for m in ("precision", "recall", "f1"))
# The metrics that depend on the decision threshold (reported again at threshold_chosen).
THRESHOLD_METRICS = tuple(m for m in REPORTED if m not in ("roc_auc", "pr_auc"))
# Table III cells a verdict compares on the leak-free subset: those that do not depend on the
# class mix (recall = sensitivity / specificity).
LEAKFREE_CELLS = ("NORMAL_recall", "PNEUMONIA_recall")
# evaluate.json keys that are settings, not measurements (params, or a string): not MLflow metrics.
SETTINGS = ("threshold", "threshold_rule", "bootstrap_resamples", "seed", "ci_level",
            "undefined", "leakfree_undefined", "chosen_undefined", "threshold_warning")


# --------------------------------------------------------------------------------------------
# Pure metric computations (tested against sklearn on hand-made predictions)
# --------------------------------------------------------------------------------------------
def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def predict_labels(prob: np.ndarray, threshold: float) -> np.ndarray:
    """0 = NORMAL, 1 = PNEUMONIA: P(PNEUMONIA) >= threshold -> PNEUMONIA."""
    return (np.asarray(prob, dtype=float) >= threshold).astype(int)


def metric_distributions(
    weights: np.ndarray, y_true: np.ndarray, prob: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """Every metric of REPORTED for each row of `weights` (B, n): arrays (B,), NaN = undefined.

    bootstrap.weighted_metrics gives accuracy, the per-class cells, sensitivity, specificity,
    ROC AUC and PR AUC; the class averages follow the module's rule for undefined classes.
    """
    out = weighted_metrics(weights, y_true, prob, threshold)
    support = weighted_confusion(weights, y_true, np.asarray(prob) >= threshold).sum(axis=2)
    total = support.sum(axis=1)
    present = support > 0
    for metric in ("precision", "recall", "f1"):
        per_class = np.stack([out[f"{label}_{metric}"] for label in LABELS], axis=1)  # (B, 2)
        out[f"macro_avg_{metric}"] = per_class.mean(axis=1)  # NaN when a class is undefined
        undefined = (np.isnan(per_class) & present).any(axis=1) | (total == 0)
        summed = np.where(present, np.nan_to_num(per_class) * support, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"weighted_avg_{metric}"] = np.where(undefined, np.nan, summed / total)
    return out


def metric_intervals(
    y_true: Any,
    prob: Any,
    threshold: float,
    groups: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """``{metric: {value, ci_low, ci_high}}`` for every metric of REPORTED: the value on the
    images as they are, the interval from a patient-grouped bootstrap (``groups`` = patient id
    of each image; None = each image its own patient). All None when undefined (or no images)."""
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if y.size == 0:
        return {m: {"value": None, "ci_low": None, "ci_high": None} for m in REPORTED}
    point = {k: float(v[0]) for k, v in metric_distributions(np.ones((1, y.size)), y, p,
                                                             threshold).items()}
    weights = patient_weights(groups, y.size, n_resamples, seed)
    boot = metric_distributions(weights, y, p, threshold)
    out: dict[str, dict[str, float | None]] = {}
    for m, row in intervals_from_distributions(point, boot, LEVEL).items():
        value = _finite_or_none(row["value"])
        defined = value is not None
        out[m] = {
            "value": value,
            "ci_low": _finite_or_none(row["ci_low"]) if defined else None,
            "ci_high": _finite_or_none(row["ci_high"]) if defined else None,
        }
    return {m: out[m] for m in REPORTED}


def flat_metrics(
    intervals: dict[str, dict[str, float | None]], prefix: str = "",
    metrics: tuple[str, ...] = REPORTED,
) -> dict[str, Any]:
    """evaluate.json's flat keys: `<prefix><metric>`, `..._ci_low`, `..._ci_high`, and
    `<prefix>undefined` (comma-separated names of the undefined metrics, "" when none)."""
    flat: dict[str, Any] = {}
    for m in metrics:
        row = intervals[m]
        flat[f"{prefix}{m}"] = row["value"]
        flat[f"{prefix}{m}_ci_low"] = row["ci_low"]
        flat[f"{prefix}{m}_ci_high"] = row["ci_high"]
    flat[f"{prefix}undefined"] = ", ".join(m for m in metrics if intervals[m]["value"] is None)
    return flat


def compute_metrics(
    y_true: Any,
    prob: Any,
    threshold: float,
    groups: Any = None,
    n_resamples: int = 2000,
    seed: int = 0,
    prefix: str = "",
) -> dict[str, Any]:
    """Flat test metrics with intervals (evaluate.json keys, see the module docstring), plus
    the class supports, image and patient counts."""
    y = np.asarray(y_true, dtype=int)
    flat = flat_metrics(metric_intervals(y, prob, threshold, groups, n_resamples, seed), prefix)
    for i, label in enumerate(LABELS):
        flat[f"{prefix}{label}_support"] = int((y == i).sum())
    flat[f"{prefix}n_test"] = int(y.size)
    flat[f"{prefix}n_patients"] = len(set(groups)) if groups is not None else int(y.size)
    return flat


def calibration_metrics(
    y_true: Any, prob: Any, groups: Any, n_resamples: int, seed: int, prefix: str = ""
) -> dict[str, float | None]:
    """Brier score and ECE (10 equal-width bins) with patient-bootstrap intervals."""
    from pneumonia.stats.bootstrap import percentile_interval
    from pneumonia.stats.calibration import weighted_calibration

    y = np.asarray(y_true, dtype=int)
    p = np.asarray(prob, dtype=float)
    if y.size == 0:
        return {f"{prefix}{k}{s}": None for k in ("brier", "ece") for s in ("", "_ci_low",
                                                                            "_ci_high")}
    point = weighted_calibration(np.ones((1, y.size)), y, p, ECE_BINS)
    boot = weighted_calibration(patient_weights(groups, y.size, n_resamples, seed), y, p,
                                ECE_BINS)
    out: dict[str, float | None] = {}
    for k in ("brier", "ece"):
        low, high, _ = percentile_interval(boot[k], LEVEL)
        out[f"{prefix}{k}"] = _finite_or_none(point[k][0])
        out[f"{prefix}{k}_ci_low"] = _finite_or_none(low)
        out[f"{prefix}{k}_ci_high"] = _finite_or_none(high)
    return out


def confusion(y_true: Any, y_pred: Any) -> np.ndarray:
    """2x2 counts: rows = actual, columns = predicted, in LABELS order (NORMAL, PNEUMONIA)."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=[0, 1])


def roc_table(y_true: Any, prob: Any) -> pd.DataFrame:
    """ROC points (fpr, tpr, threshold); empty when only one class is present."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=int)
    if len(set(y_true.tolist())) < 2:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    fpr, tpr, thr = roc_curve(y_true, np.asarray(prob, dtype=float))
    # sklearn's first threshold is +inf (nothing predicted positive); CSV/plots need a finite
    # number: the smallest float above 1, which every probability is still below.
    thr = np.where(np.isfinite(thr), thr, np.nextafter(1.0, 2.0))
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def reliability_frame(y_true: Any, prob: Any) -> pd.DataFrame:
    """metrics/reliability.csv: one row per non-empty probability bin (DVC plot)."""
    from pneumonia.stats.calibration import reliability_table

    columns = ["bin", "bin_low", "bin_high", "mean_predicted", "observed_fraction", "count"]
    if len(np.asarray(y_true)) == 0:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(reliability_table(y_true, prob, ECE_BINS), columns=columns)


def pr_frame(y_true: Any, prob: Any) -> pd.DataFrame:
    """metrics/pr.csv: precision and recall of PNEUMONIA at each distinct threshold."""
    from pneumonia.stats.calibration import pr_curve_table

    y = np.asarray(y_true, dtype=int)
    if y.size == 0 or y.sum() == 0:
        return pd.DataFrame(columns=["threshold", "precision", "recall"])
    return pd.DataFrame(pr_curve_table(y, prob), columns=["threshold", "precision", "recall"])


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def report_text(metrics: dict[str, Any], prefix: str = "") -> str:
    """The classification report (layout of sklearn's and of Table III) from evaluate.json's
    flat keys, with each value's 95 % interval; `n/a` = undefined, by the module's one rule."""
    g = metrics.get
    head = f"{'':<14}{'precision':<27}{'recall':<27}{'f1-score':<27}{'support':>8}"
    lines = [head, ""]

    def cell(key: str) -> str:
        v, lo, hi = g(f"{prefix}{key}"), g(f"{prefix}{key}_ci_low"), g(f"{prefix}{key}_ci_high")
        text = "n/a" if v is None else f"{v:.4f} [{_fmt(lo)}, {_fmt(hi)}]"
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
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Table III and the other comparisons (metrics/table3.json)
# --------------------------------------------------------------------------------------------
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
        return _finite_or_none(obj)
    return obj


def _block(metrics: dict[str, Any], prefix: str, names: tuple[str, ...]) -> dict[str, Any]:
    return {
        m: {
            "value": metrics[f"{prefix}{m}"],
            "ci_low": metrics[f"{prefix}{m}_ci_low"],
            "ci_high": metrics[f"{prefix}{m}_ci_high"],
        }
        for m in names
    }


def table3_report(
    metrics: dict[str, Any],
    test: tuple[np.ndarray, np.ndarray, np.ndarray],
    leak_counts: dict[str, int],
    params: Params,
    n_validation: int | None,
    warning: str = "",
) -> dict[str, Any]:
    """metrics/table3.json: the run against Table III and the Kaggle baseline (official test
    set, evaluate.threshold), the leak-free subset beside it, the validation-chosen threshold and
    calibration. `test` = (y, prob, patient id) of the official test images; the leak-free and
    chosen-threshold numbers come from `metrics` (evaluate.json)."""
    from pneumonia.stats.bootstrap import METRICS as BOOT_METRICS
    from pneumonia.stats.table3 import CELLS, compare_to_paper, verdict

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
    lf = _block(metrics, "leakfree_", BOOT_METRICS)
    # The leak-free subset has its own class mix (on the Kermany split mostly NORMAL: the
    # PNEUMONIA test patients are the ones also seen in training). Accuracy, precision and F1
    # depend on that mix, so only the recalls are compared with Table III.
    verdicts = {
        c: verdict(out["cells"][c]["paper"], *(np.nan if v is None else v for v in
                                               (lf[c]["ci_low"], lf[c]["ci_high"])))
        for c in CELLS if c in LEAKFREE_CELLS
    }
    out["leakfree"] = {
        "n_test": metrics["leakfree_n_test"],
        "n_patients": metrics["leakfree_n_patients"],
        "support": {label: metrics[f"leakfree_{label}_support"] for label in LABELS},
        **leak_counts,
        "table3_consistent": sum(v == "consistent" for v in verdicts.values()),
        "table3_cells": len(verdicts),
        "verdicts": verdicts,
        "metrics": lf,
    }
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


def mlflow_metrics(metrics: dict[str, Any], table3: dict[str, Any]) -> dict[str, float]:
    """evaluate.json's numbers under the names the paper reference runs use (`test_accuracy`,
    `test_NORMAL_recall`, ... and `test_<metric>_ci_low/_ci_high`, `test_leakfree_...`,
    `test_chosen_...`), the Table III counts and verdict totals, and `diff_from_paper_*`."""
    out = {
        metric_name(k): float(v)
        for k, v in metrics.items()
        if k not in SETTINGS and isinstance(v, (int, float)) and v is not None
    }
    out["threshold_chosen"] = float(metrics["threshold_chosen"])
    for key in ("table3_consistent", "table3_cells", "baseline_consistent", "baseline_cells"):
        out[key] = float(table3[key])
    out["leakfree_table3_consistent"] = float(table3["leakfree"]["table3_consistent"])
    for cell, row in table3["cells"].items():
        for src, suffix in (("diff", ""), ("diff_ci_low", "_ci_low"), ("diff_ci_high", "_ci_high")):
            if row[src] is not None:
                out[f"diff_from_paper_{cell}{suffix}"] = float(row[src])
    for label, row in table3["support"].items():
        out[f"diff_from_paper_{label}_support"] = float(row["run"] - row["paper"])
    return out


# --------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------
def plot_confusion(cm: np.ndarray, path: Path, title: str) -> None:
    """Confusion matrix figure: rows = actual, columns = predicted, counts annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4), dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(LABELS)), LABELS)
    ax.set_yticks(range(len(LABELS)), LABELS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    high = cm.max() / 2 if cm.size and cm.max() else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                color="white" if cm[i, j] > high else "black",
                fontsize=12,
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_calibration(reliability: pd.DataFrame, pr: pd.DataFrame, path: Path, title: str) -> None:
    """Reliability diagram and precision-recall curve side by side (an MLflow artifact)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4), dpi=110)
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    a.plot(reliability["mean_predicted"], reliability["observed_fraction"], "o-",
           label="this model")
    a.set(xlabel="mean predicted P(PNEUMONIA)", ylabel="observed fraction PNEUMONIA",
          xlim=(0, 1), ylim=(0, 1), title="Reliability (test set)")
    a.legend(loc="upper left", fontsize=8)
    b.plot(pr["recall"], pr["precision"])
    b.set(xlabel="recall (PNEUMONIA)", ylabel="precision (PNEUMONIA)", xlim=(0, 1),
          ylim=(0, 1.02), title="Precision-recall (test set)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def load_model() -> Any:
    import keras

    if not MODEL_FILE.is_file():
        raise PipelineError(f"{MODEL_FILE} not found: run the train stage first (`dvc repro`).")
    return keras.saving.load_model(MODEL_FILE, compile=False)


def predict(params: Params, rows: pd.DataFrame, model: Any = None) -> np.ndarray:
    """P(PNEUMONIA) per row, in the rows' order."""
    model = model if model is not None else load_model()
    size = int(model.input_shape[1])
    check_images(rows, size)
    ds = make_dataset(rows, size, params.evaluate.batch_size, training=False)
    ds = ds.map(lambda x, y: x)  # images only
    return np.asarray(model.predict(ds, verbose=0), dtype=float).reshape(-1)


def validation_originals(df: pd.DataFrame) -> pd.DataFrame:
    """The validation images the threshold is chosen on: the real X-rays only. Images generated
    by the balance stage (a source_image_id other than their own id) are augmented copies of
    other validation images; they would weigh NORMAL's few sources two or three times."""
    rows = subset_rows(df, "val")
    source = rows["source_image_id"].fillna("").astype(str)
    return rows[(source == "") | (source == rows["image_id"])].reset_index(drop=True)


def choose_threshold(params: Params, y_val: np.ndarray, prob_val: np.ndarray) -> float:
    """threshold_chosen: evaluate.threshold (rule fixed) or Youden's J on validation images."""
    from pneumonia.stats.calibration import choose_threshold as choose

    if params.evaluate.threshold_rule == "fixed":
        return params.evaluate.threshold
    if len(set(np.asarray(y_val).tolist())) < 2:
        raise PipelineError(
            f"{SPLIT_CSV}: the validation subset's original images hold only one class, so "
            "`evaluate.threshold_rule: youden` cannot choose a threshold on them. Use "
            "`evaluate.threshold_rule: fixed`, or rebuild the split (`dvc repro split`)."
        )
    return choose(y_val, prob_val, "youden")


def leakage_of(rows: pd.DataFrame) -> pd.DataFrame:
    """validate's two kinds of leakage for each test row (in the rows' order), from
    data/manifest.csv: `patient_in_train`, `duplicate_of_train`, `leakfree`."""
    from pneumonia.dataset.validate import leaking_test_images

    if not MANIFEST.is_file():
        raise PipelineError(f"{MANIFEST} not found: run the ingest stage first (`dvc repro`).")
    manifest = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False, na_values=[""])
    needed = {"image_id", "patient_id", "split", "sha256", "label"}
    missing = sorted(needed - set(manifest.columns))
    if missing:
        raise PipelineError(
            f"{MANIFEST} lacks column(s) {', '.join(missing)}: it was written by an older ingest "
            "stage. Run `dvc repro` to rebuild it."
        )
    leaks = leaking_test_images(manifest).set_index("image_id")
    unknown = sorted(set(rows["image_id"]) - set(leaks.index))
    if unknown:
        raise PipelineError(
            f"{len(unknown)} test image(s) of {SPLIT_CSV} are not test images of {MANIFEST} "
            f"(e.g. {', '.join(unknown[:3])}): the two files come from different ingest runs. "
            "Run `dvc repro` to rebuild them together."
        )
    return leaks.loc[rows["image_id"]].reset_index()


def threshold_warning(earlier: list[float], threshold: float) -> str:
    """The loud message for a test re-evaluation at another threshold ("" when none)."""
    others = sorted({x for x in earlier if not math.isclose(x, threshold)})
    if not others:
        return ""
    shown = ", ".join(f"{x:g}" for x in others)
    return (
        f"WARNING: this model was already evaluated on the test set at threshold {shown}; "
        f"this evaluation uses {threshold:g}. Picking the threshold whose test metrics look best "
        "tunes the model on the test set and makes these test metrics optimistic. Choose the "
        "threshold on validation data instead (`evaluate.threshold_rule: youden`, reported as "
        "threshold_chosen) and keep evaluate.threshold at the value fixed in advance."
    )


def run(params: Params) -> dict[str, Any]:
    """Evaluate on the test subset, write the stage's outputs, log to MLflow."""
    e = params.evaluate
    df = read_split()
    rows = subset_rows(df, "test")
    leaks = leakage_of(rows)
    run_info = tracking.read_run_file()
    experiment_id = tracking.setup()
    t = e.threshold
    earlier = tracking.evaluated_thresholds(run_info["run_id"], metric_name("accuracy"))
    warning = threshold_warning(earlier, t)
    if warning:
        log.warning(warning)

    model = load_model()
    prob = predict(params, rows, model)
    y_true = np.asarray(labels_of(rows))
    groups = rows["patient_id"].astype(str).to_numpy()
    y_pred = predict_labels(prob, t)

    n_validation = None
    if e.threshold_rule == "fixed":
        chosen = t
    else:
        val = validation_originals(df)
        log.info("predicting %d validation images to choose the threshold (%s)", len(val),
                 e.threshold_rule)
        chosen = choose_threshold(params, np.asarray(labels_of(val)), predict(params, val, model))
        n_validation = len(val)
        log.info("threshold chosen on validation: %.4f", chosen)

    boot = {"n_resamples": e.bootstrap_resamples, "seed": e.seed}
    metrics: dict[str, Any] = {
        "threshold": t,
        "threshold_rule": e.threshold_rule,
        "threshold_chosen": round(float(chosen), 6),
        "bootstrap_resamples": e.bootstrap_resamples,
        "seed": e.seed,
        "ci_level": LEVEL,
    }
    metrics.update(compute_metrics(y_true, prob, t, groups, **boot))
    metrics.update(calibration_metrics(y_true, prob, groups, **boot))
    keep = leaks["leakfree"].to_numpy(dtype=bool)
    metrics.update(compute_metrics(y_true[keep], prob[keep], t, groups[keep], **boot,
                                   prefix="leakfree_"))
    chosen_iv = metric_intervals(y_true, prob, chosen, groups, **boot)
    metrics.update(flat_metrics(chosen_iv, "chosen_", THRESHOLD_METRICS))
    metrics["threshold_warning"] = warning
    leak_counts = {
        "excluded_patient_in_train": int(leaks["patient_in_train"].sum()),
        "excluded_duplicate_of_train": int(leaks["duplicate_of_train"].sum()),
    }
    metrics.update({f"leakfree_{k}": v for k, v in leak_counts.items()})
    write_json(metrics, EVALUATE_JSON)

    table3 = table3_report(
        metrics,
        (y_true, prob, groups),
        leak_counts,
        params,
        n_validation,
        warning,
    )
    write_json(table3, TABLE3_JSON)
    markdown = table3_markdown(table3)
    TABLE3_MD.write_text(markdown, encoding="utf-8")

    # One row per test image, kept in git (a DVC plot with cache: false): DVC's confusion plot
    # reads actual/predicted, and any revision's predictions can be compared with another's
    # (the same images, the patient for grouped statistics) without a DVC remote.
    predictions = pd.DataFrame(
        {
            "image_id": rows["image_id"],
            "patient_id": rows["patient_id"],
            "class": rows["class"],
            "actual": rows["label"],
            "predicted": [LABELS[i] for i in y_pred],
            "probability": np.round(prob, 6),
        }
    ).sort_values("image_id")
    predictions.to_csv(PREDICTIONS_CSV, index=False, lineterminator="\n")
    roc_table(y_true, prob).to_csv(ROC_CSV, index=False)
    reliability = reliability_frame(y_true, prob)
    reliability.to_csv(RELIABILITY_CSV, index=False, lineterminator="\n")
    pr = pr_frame(y_true, prob)
    pr.to_csv(PR_CSV, index=False, lineterminator="\n")
    cm = confusion(y_true, y_pred)
    plot_confusion(cm, CONFUSION_PNG, f"Test set, threshold {t:g} (n = {len(rows)})")
    report = report_text(metrics)

    import mlflow

    with tracking.evaluate_run(run_info["run_id"], metric_name("accuracy")) as mlrun:
        tracking.log_params(flatten(params.evaluate, "evaluate"))
        mlflow.log_metrics(mlflow_metrics(metrics, table3))
        test_sha = sha256_file(SPLIT_CSV)
        tracking.log_split(rows, SPLIT_CSV, test_sha, context="testing", name="split-test")
        mlflow.log_dict(
            {
                "labels": list(LABELS),
                "rows": "actual",
                "columns": "predicted",
                "matrix": cm.tolist(),
            },
            "evaluate/confusion_matrix.json",
        )
        mlflow.log_dict(metrics, "evaluate/classification_report.json")
        mlflow.log_text((warning + "\n\n" if warning else "") + report,
                        "evaluate/classification_report.txt")
        for path in (CONFUSION_PNG, TABLE3_MD, TABLE3_JSON, PREDICTIONS_CSV, ROC_CSV,
                     RELIABILITY_CSV, PR_CSV):
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        if len(reliability) and len(pr):
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "calibration.png"
                plot_calibration(reliability, pr, png, f"n = {len(rows)} test images")
                mlflow.log_artifact(str(png), artifact_path="evaluate")
        if VALIDATION_JSON.is_file():
            mlflow.log_artifact(str(VALIDATION_JSON), artifact_path="validate")
        mlflow.set_tag("evaluate.threshold", f"{t:g}")
        mlflow.set_tag("evaluate.threshold_chosen", f"{chosen:.4g} ({e.threshold_rule})")
        if warning:
            mlflow.set_tag("evaluate.threshold_tuned_on_test", "true")
            mlflow.set_tag("evaluate.warning", warning)
        log.info("logged test metrics to MLflow run %s", mlrun.info.run_id)
        # Registry: this model becomes a version; alias champion or challenger (pneumonia.registry).
        e = params.evaluate
        registry.register_and_gate(params, run_info, metrics, predictions, mlrun.info.run_id)
        from pneumonia.inference.gradcam import explain_test_cases

        explain_test_cases(MODEL_FILE, rows, prob, y_true, t, e.explain_max_errors,
                           e.explain_correct_per_class, GRADCAM_DIR)
        mlflow.log_artifacts(str(GRADCAM_DIR), artifact_path="evaluate/gradcam")
    tracking.ensure_reference_runs(experiment_id)

    print("\n" + markdown)
    print(report)
    return metrics
