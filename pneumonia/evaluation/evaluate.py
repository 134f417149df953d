"""Stage `evaluate`'s orchestration: predict the official test set, write every output, log to MLflow,
register and gate the model.

A test image is called PNEUMONIA when P(PNEUMONIA) >= evaluate.threshold (0.5; the paper states
none).
Every reported test metric carries a 95 % interval from a patient-grouped bootstrap
(`evaluate.bootstrap_resamples` resamples of the test patients, seeded by `evaluate.seed`; see
pneumonia.evaluation.metrics). Outputs:

- metrics/evaluate.json: the headline DVC shows (`dvc exp show`, `dvc metrics diff`; keys in
  pneumonia.paths.HEADLINE): accuracy and ROC AUC with their intervals, per-class precision /
  recall / F1, `table3_consistent`, `gate_decision`, and `val_accuracy`, `val_roc_auc`, `val_loss`
  on the validation originals (metrics/predictions_val.csv: what a recipe is chosen on).
- metrics/details/evaluate.json: every key, flat, the contract for MLflow and `pneumonia
  predict`: `accuracy`, `accuracy_ci_low`, `accuracy_ci_high`, `NORMAL_recall`, ... for the
  official test set; the same with `leakfree_` for the leakage-free test subset (test images whose
  patient is not in train/validation and that are no byte-duplicate of a training image: the two
  kinds of leakage the validate stage reports; patients read by
  `evaluate.leakfree_patient_rule`) and `leakfree_alt_` for that subset under the other reading
  of the file names (is NORMAL2-IM-0095 patient IM-0095?); `chosen_` for the test metrics at
  the threshold chosen on the VALIDATION images (`threshold_chosen`, `threshold_rule`); `brier`,
  `ece`. An interval with undefined resamples has `<metric>_ci_undefined_share` beside it.
- metrics/table3.json + table3.md: each Table III cell with its interval, the paper's own
  interval, the difference run - paper with its interval (the run's patient bootstrap combined
  with the paper's binomial uncertainty) and a verdict from that difference (consistent / below
  / above) (pneumonia.evaluation.reports, pneumonia.stats.table3); the Kaggle baseline; the
  leak-free subset under both readings side by side; the validation-chosen threshold;
  calibration.
- metrics/predictions.csv (one row per test image: DVC's `confusion` plot, and what
  `pneumonia compare` reads) + confusion.png, metrics/roc.csv, metrics/reliability.csv,
  metrics/pr.csv (DVC plots, pneumonia.evaluation.plots). Everything is also logged to the
  pipeline's MLflow run (names: pneumonia.evaluation.mlflow_names).

The paper's further work in every evaluation (pneumonia.evaluation.further): PNEUMONIA recall by
cause (bacteria / virus), the three-class report of a `task: three_class` model (whose binary
view, P(PNEUMONIA) = P(bacteria) + P(virus), is what Table III and everything above score), and
split conformal prediction sets calibrated on the validation originals
(`evaluate.conformal_alpha`; metrics/risk_coverage.csv).

After that the model is registered and gated (pneumonia.registry: champion or challenger,
metrics/registry.json), and Grad-CAM overlays of test errors and correct cases are written to
metrics/gradcam/ (pneumonia.inference.gradcam).
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pneumonia import pipeline_run, registry, tracking
from pneumonia.errors import PipelineError
from pneumonia.evaluation import further, leakage, reference_runs
from pneumonia.evaluation.metrics import (
    LEVEL,
    THRESHOLD_METRICS,
    calibration_metrics,
    compute_metrics,
    confusion,
    flat_metrics,
    predict_labels,
    reported_intervals,
)
from pneumonia.evaluation.mlflow_names import mlflow_metrics
from pneumonia.evaluation.paper import metric_name, table3_markdown
from pneumonia.evaluation.plots import (
    plot_calibration,
    plot_confusion,
    pr_frame,
    reliability_frame,
    roc_table,
)
from pneumonia.evaluation.reports import report_text, table3_report
from pneumonia.files import sha256_file, write_json, write_metrics
from pneumonia.inference.gradcam import explain_test_cases
from pneumonia.model.inputs import check_images, labels_of, make_dataset, read_split, subset_rows
from pneumonia.model.tasks import pneumonia_probability, task_of
from pneumonia.params import Params, flatten, params_digest
from pneumonia.paths import (
    CONFUSION_PNG,
    EVALUATE_DETAILS,
    EVALUATE_JSON,
    GRADCAM_DIR,
    LABELS,
    MODEL_FILE,
    PR_CSV,
    PREDICTIONS_CSV,
    PREDICTIONS_VAL_CSV,
    RELIABILITY_CSV,
    ROC_CSV,
    SPLIT_CSV,
    TABLE3_JSON,
    TABLE3_MD,
    VALIDATION_DETAILS,
    VALIDATION_JSON,
)
from pneumonia.stats.calibration import choose_threshold as choose

log = logging.getLogger(__name__)


def load_model() -> Any:
    import keras

    if not MODEL_FILE.is_file():
        raise PipelineError(f"{MODEL_FILE} not found: run the train stage first (`dvc repro`).")
    return keras.saving.load_model(MODEL_FILE, compile=False)


def predict_outputs(params: Params, rows: pd.DataFrame, model: Any = None) -> np.ndarray:
    """The model's raw outputs per row, in the rows' order: (n, 1) P(PNEUMONIA), or a
    three-class model's (n, 3) P(normal, bacteria, virus)."""
    model = model if model is not None else load_model()
    size = int(model.input_shape[1])
    check_images(rows, size)
    ds = make_dataset(rows, size, params.evaluate.batch_size, training=False)
    ds = ds.map(lambda x, y: x)  # images only
    out = np.asarray(model.predict(ds, verbose=0), dtype=float)
    return out.reshape(len(out), -1)


def predict(params: Params, rows: pd.DataFrame, model: Any = None) -> np.ndarray:
    """P(PNEUMONIA) per row, in the rows' order (a three-class model's bacteria + virus)."""
    return pneumonia_probability(predict_outputs(params, rows, model))


def validation_originals(df: pd.DataFrame) -> pd.DataFrame:
    """The validation images the threshold is chosen on: the real X-rays only. Images generated
    by the balance stage (a source_image_id other than their own id) are augmented copies of
    other validation images; they would weigh NORMAL's few sources two or three times."""
    rows = subset_rows(df, "val")
    source = rows["source_image_id"].fillna("").astype(str)
    return rows[(source == "") | (source == rows["image_id"])].reset_index(drop=True)


def validation_predictions(val: pd.DataFrame, val_prob: np.ndarray) -> pd.DataFrame:
    """metrics/predictions_val.csv's rows: one per validation original (image_id, patient_id,
    actual, probability rounded to 6 places), sorted by image_id. `pneumonia recipe --from-runs`
    writes the same frame for runs whose evaluate stage predated the file."""
    return pd.DataFrame({"image_id": val["image_id"], "patient_id": val["patient_id"],
                         "actual": val["label"], "probability": np.round(val_prob, 6)}
                        ).sort_values("image_id", ignore_index=True)


def choose_threshold(params: Params, y_val: np.ndarray, prob_val: np.ndarray) -> float:
    """threshold_chosen: evaluate.threshold (rule fixed) or Youden's J on validation images."""
    if params.evaluate.threshold_rule == "fixed":
        return params.evaluate.threshold
    if len(set(np.asarray(y_val).tolist())) < 2:
        raise PipelineError(
            f"{SPLIT_CSV}: the validation subset's original images hold only one class, so "
            "`evaluate.threshold_rule: youden` cannot choose a threshold on them. Use "
            "`evaluate.threshold_rule: fixed`, or rebuild the split (`dvc repro split`)."
        )
    return choose(y_val, prob_val, "youden")


def validation_metrics(y_val: np.ndarray, prob_val: np.ndarray, threshold: float) -> dict[str, Any]:
    """The validation originals at the decision threshold: `val_accuracy`, `val_roc_auc` (None
    with one class) and `val_loss` (binary cross-entropy of P(PNEUMONIA), clipped as Keras does).
    What a recipe is chosen on; the test set never is."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_val, dtype=int)
    p = np.asarray(prob_val, dtype=float)
    if y.size == 0:
        return {"val_accuracy": None, "val_roc_auc": None, "val_loss": None}
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    return {
        "val_accuracy": round(float(np.mean(predict_labels(p, threshold) == y)), 6),
        "val_roc_auc": round(float(roc_auc_score(y, p)), 6) if len(set(y.tolist())) == 2
        else None,
        "val_loss": round(float(loss), 6),
    }


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


class Scored(NamedTuple):
    """The model's answers on the test subset and the validation originals."""

    outputs: np.ndarray  # the model's raw outputs on the test rows
    prob: np.ndarray  # P(PNEUMONIA) per test row
    y_true: np.ndarray
    groups: np.ndarray  # patient ids of the test rows
    y_pred: np.ndarray  # at the stage's threshold
    val: pd.DataFrame  # the validation originals
    val_prob: np.ndarray
    chosen: float  # the threshold the rule chose on validation (the fixed one for "fixed")
    n_validation: int | None  # images the threshold was chosen on (None: fixed)


def score(params: Params, df: pd.DataFrame, rows: pd.DataFrame, model: Any) -> Scored:
    """Predict the test rows and the validation originals; choose the threshold on validation."""
    e = params.evaluate
    outputs = predict_outputs(params, rows, model)
    prob = pneumonia_probability(outputs)
    y_true = np.asarray(labels_of(rows))
    groups = rows["patient_id"].astype(str).to_numpy()
    y_pred = predict_labels(prob, e.threshold)

    # The validation originals: the conformal calibration set, and where a threshold is chosen.
    val = validation_originals(df)
    log.info("predicting %d validation images (conformal calibration, threshold rule %s)",
             len(val), e.threshold_rule)
    val_prob = predict(params, val, model)
    n_validation = None
    if e.threshold_rule == "fixed":
        chosen = e.threshold
    else:
        chosen = choose_threshold(params, np.asarray(labels_of(val)), val_prob)
        n_validation = len(val)
        log.info("threshold chosen on validation: %.4f", chosen)
    return Scored(outputs, prob, y_true, groups, y_pred, val, val_prob, chosen, n_validation)


def all_metrics(params: Params, rows: pd.DataFrame, s: Scored, leaks: dict[str, Any],
                rules: Any, warning: str) -> tuple[dict[str, Any], Any, Any]:
    """Every test metric with its interval, the validation metrics and the further analyses:
    (metrics, the further-work record, the leak-free subsets)."""
    e = params.evaluate
    t = e.threshold
    boot = {"n_resamples": e.bootstrap_resamples, "seed": e.seed}
    metrics: dict[str, Any] = {
        "threshold": t,
        "threshold_rule": e.threshold_rule,
        "threshold_chosen": round(float(s.chosen), 6),
        "bootstrap_resamples": e.bootstrap_resamples,
        "seed": e.seed,
        "ci_level": LEVEL,
    }
    metrics.update(compute_metrics(s.y_true, s.prob, t, s.groups, **boot))
    metrics.update(calibration_metrics(s.y_true, s.prob, s.groups, **boot))
    leakfree, subsets = leakage.leakfree_metrics(leaks, rules, s.y_true, s.prob, t, boot)
    metrics.update(leakfree)
    chosen_iv = reported_intervals(s.y_true, s.prob, threshold=s.chosen, groups=s.groups, **boot)
    metrics.update(flat_metrics(chosen_iv, "chosen_", THRESHOLD_METRICS))
    metrics["threshold_warning"] = warning
    extra = further.evaluate_further(
        params.task, rows["class"].astype(str).to_numpy(), s.outputs, s.prob, s.y_true, s.y_pred,
        s.groups,
        (np.asarray(labels_of(s.val)), s.val_prob, s.val["patient_id"].astype(str).to_numpy()),
        e.conformal_alpha, **boot)
    metrics.update(extra.metrics)
    y_val = np.asarray(labels_of(s.val))
    metrics.update(validation_metrics(y_val, s.val_prob, t))
    return metrics, extra, subsets


def write_test_outputs(rows: pd.DataFrame, s: Scored, extra: Any, threshold: float
                       ) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame, pd.DataFrame]:
    """The per-image predictions (test and validation), ROC, reliability and PR tables, the
    confusion plot and the further-work files: (predictions, confusion matrix, reliability, pr)."""
    # One row per test image, kept in git (a DVC plot with cache: false): DVC's confusion plot
    # reads actual/predicted, and any revision's predictions can be compared with another's
    # (the same images, the patient for grouped statistics) without a DVC remote.
    predictions = pd.DataFrame(
        {
            "image_id": rows["image_id"],
            "patient_id": rows["patient_id"],
            "class": rows["class"],
            "actual": rows["label"],
            "predicted": [LABELS[i] for i in s.y_pred],
            "probability": np.round(s.prob, 6),
            **extra.prediction_columns(s.outputs),
        }
    ).sort_values("image_id")
    predictions.to_csv(PREDICTIONS_CSV, index=False, lineterminator="\n")
    # The validation originals the same way (what a recipe or threshold is chosen on).
    validation_predictions(s.val, s.val_prob).to_csv(PREDICTIONS_VAL_CSV, index=False,
                                                     lineterminator="\n")
    roc_table(s.y_true, s.prob).to_csv(ROC_CSV, index=False)
    reliability = reliability_frame(s.y_true, s.prob)
    reliability.to_csv(RELIABILITY_CSV, index=False, lineterminator="\n")
    pr = pr_frame(s.y_true, s.prob)
    pr.to_csv(PR_CSV, index=False, lineterminator="\n")
    cm = confusion(s.y_true, s.y_pred)
    plot_confusion(cm, CONFUSION_PNG, f"Test set, threshold {threshold:g} (n = {len(rows)})")
    further.write_outputs(extra)
    return predictions, cm, reliability, pr


def run(params: Params) -> dict[str, Any]:
    """Evaluate on the test subset, write the stage's outputs, log to MLflow."""
    e = params.evaluate
    df = read_split()
    rows = subset_rows(df, "test")
    rules = leakage.patient_rules(e.leakfree_patient_rule)
    leaks = {rule: leakage.leakage_of(rows, rule) for rule in rules}  # input errors before work
    run_info = pipeline_run.read_run_file()
    pipeline_run.check_params_unchanged(run_info, params_digest(params))  # before registering
    experiment_id = tracking.setup()
    t = e.threshold
    earlier = pipeline_run.evaluated_thresholds(run_info["run_id"], metric_name("accuracy"))
    warning = threshold_warning(earlier, t)
    if warning:
        log.warning(warning)

    model = load_model()
    if task_of(model) != params.task:
        raise PipelineError(f"{MODEL_FILE} answers the {task_of(model)} task but params.yaml "
                            f"says `task: {params.task}`: run `dvc repro` to train for it.")
    s = score(params, df, rows, model)
    metrics, extra, subsets = all_metrics(params, rows, s, leaks, rules, warning)
    table3 = table3_report(metrics, (s.y_true, s.prob, s.groups), subsets[0], params,
                           s.n_validation, warning, leakfree_alt=subsets[1])
    write_json(table3, TABLE3_JSON)
    metrics["table3_consistent"] = table3["table3_consistent"]
    # The headline for DVC (metrics/evaluate.json) and every key (metrics/details/evaluate.json);
    # written again with the gate's decision once the model is registered.
    write_metrics(metrics, EVALUATE_JSON)
    markdown = table3_markdown(table3) + "\n" + extra.markdown
    TABLE3_MD.write_text(markdown, encoding="utf-8")
    predictions, cm, reliability, pr = write_test_outputs(rows, s, extra, t)
    report = report_text(metrics)

    import mlflow

    with pipeline_run.evaluate_run(run_info["run_id"], metric_name("accuracy")) as mlrun:
        pipeline_run.log_params(flatten(params.evaluate, "evaluate"))
        mlflow.log_metrics(mlflow_metrics(metrics, table3))
        test_sha = sha256_file(SPLIT_CSV)
        pipeline_run.log_split(rows, SPLIT_CSV, test_sha, context="testing", name="split-test")
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
                     RELIABILITY_CSV, PR_CSV, PREDICTIONS_VAL_CSV):
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        if len(reliability) and len(pr):
            with tempfile.TemporaryDirectory() as tmp:
                png = Path(tmp) / "calibration.png"
                plot_calibration(reliability, pr, png, f"n = {len(rows)} test images")
                mlflow.log_artifact(str(png), artifact_path="evaluate")
        further.log_artifacts(extra, len(rows))
        # validate's complete record (its headline is a subset of it)
        for path in (VALIDATION_DETAILS, VALIDATION_JSON):
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path="validate")
                break
        mlflow.set_tag("evaluate.threshold", f"{t:g}")
        mlflow.set_tag("evaluate.threshold_chosen", f"{s.chosen:.4g} ({e.threshold_rule})")
        if warning:
            mlflow.set_tag("evaluate.threshold_tuned_on_test", "true")
            mlflow.set_tag("evaluate.warning", warning)
        log.info("logged test metrics to MLflow run %s", mlrun.info.run_id)
        # Registry: this model becomes a version; alias champion or challenger (pneumonia.registry).
        decision, _ = registry.register_and_gate(params, run_info, metrics, predictions,
                                                 mlrun.info.run_id)
        metrics["gate_decision"] = decision.alias  # champion | challenger (metrics/registry.json)
        write_metrics(metrics, EVALUATE_JSON)
        mlflow.log_artifact(str(EVALUATE_DETAILS), artifact_path="evaluate")
        explain_test_cases(MODEL_FILE, rows, s.prob, s.y_true, t, e.explain_max_errors,
                           e.explain_correct_per_class, GRADCAM_DIR)
        mlflow.log_artifacts(str(GRADCAM_DIR), artifact_path="evaluate/gradcam")
    reference_runs.ensure_reference_runs(experiment_id)

    print("\n" + markdown)
    print(report)
    return metrics
