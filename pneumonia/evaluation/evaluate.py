"""Stage `evaluate`: the trained model on the official test set (subset == test), vs Table III.

A test image is called PNEUMONIA when P(PNEUMONIA) >= evaluate.threshold. Outputs:
metrics/evaluate.json (accuracy, ROC AUC, per-class and averaged precision/recall/F1/support),
metrics/table3.json + table3.md (paper vs this run, and the Kaggle ResNet baseline),
metrics/predictions.csv (one row per test image: DVC's `confusion` plot, and what
`pneumonia compare` reads) + confusion.png, metrics/roc.csv. Everything is also logged to the pipeline's MLflow run.
The model is then registered and gated (pneumonia.registry: champion or challenger,
metrics/registry.json), and Grad-CAM overlays of test errors and correct cases are written to
metrics/gradcam/ (pneumonia.inference.gradcam).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia import registry, tracking
from pneumonia.errors import PipelineError
from pneumonia.evaluation.paper import compare_table3, metric_name, table3_markdown
from pneumonia.files import sha256_file, write_json
from pneumonia.model.inputs import check_images, labels_of, make_dataset, read_split, subset_rows
from pneumonia.params import Params, flatten
from pneumonia.paths import (
    CONFUSION_PNG,
    EVALUATE_JSON,
    GRADCAM_DIR,
    LABELS,
    MODEL_FILE,
    PREDICTIONS_CSV,
    ROC_CSV,
    SPLIT_CSV,
    TABLE3_JSON,
    TABLE3_MD,
    VALIDATION_JSON,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Pure metric computations (tested against sklearn on hand-made predictions)
# --------------------------------------------------------------------------------------------
def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def predict_labels(prob: np.ndarray, threshold: float) -> np.ndarray:
    """0 = NORMAL, 1 = PNEUMONIA: P(PNEUMONIA) >= threshold -> PNEUMONIA."""
    return (np.asarray(prob, dtype=float) >= threshold).astype(int)


def compute_metrics(y_true: Any, prob: Any, threshold: float) -> dict[str, Any]:
    """Test metrics (metrics/evaluate.json) from true labels (0/1) and P(PNEUMONIA).

    Undefined values (a class never predicted, only one class present so no ROC) are None
    (JSON null), never a crash or a silent 0.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=int)
    prob = np.asarray(prob, dtype=float)
    y_pred = predict_labels(prob, threshold)
    out: dict[str, Any] = {
        "accuracy": _finite_or_none(accuracy_score(y_true, y_pred)) if len(y_true) else None,
        "roc_auc": (
            _finite_or_none(roc_auc_score(y_true, prob)) if len(set(y_true.tolist())) == 2 else None
        ),
    }
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], zero_division=np.nan
    )
    for i, label in enumerate(LABELS):
        out[label] = {
            "precision": _finite_or_none(p[i]),
            "recall": _finite_or_none(r[i]),
            "f1": _finite_or_none(f[i]),
            "support": int(s[i]),
        }
    for name, average in (("macro_avg", "macro"), ("weighted_avg", "weighted")):
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=[0, 1], average=average, zero_division=np.nan
        )
        out[name] = {
            "precision": _finite_or_none(p),
            "recall": _finite_or_none(r),
            "f1": _finite_or_none(f),
            "support": len(y_true),
        }
    out["threshold"] = float(threshold)
    out["n_test"] = len(y_true)
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


def report_text(y_true: Any, y_pred: Any) -> str:
    """sklearn's classification report, the layout of the paper's Table III."""
    from sklearn.metrics import classification_report

    return classification_report(
        y_true, y_pred, labels=[0, 1], target_names=list(LABELS), digits=4, zero_division=0
    )


def mlflow_metrics(metrics: dict[str, Any], table3: dict[str, Any]) -> dict[str, float]:
    """Test metrics under the names the paper reference run uses, plus diff_from_paper_*."""
    flat: dict[str, Any] = {"accuracy": metrics["accuracy"], "roc_auc": metrics["roc_auc"]}
    for group in (*LABELS, "macro_avg", "weighted_avg"):
        for k, v in metrics[group].items():
            flat[f"{group}_{k}"] = v
    out = {metric_name(k): float(v) for k, v in flat.items() if v is not None}
    for cell, row in table3.items():
        if cell != "baseline" and row["diff"] is not None:
            out[f"diff_from_paper_{cell}"] = float(row["diff"])
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


def predict(params: Params, rows: pd.DataFrame) -> np.ndarray:
    """P(PNEUMONIA) per row, in the rows' order."""
    import keras

    if not MODEL_FILE.is_file():
        raise PipelineError(f"{MODEL_FILE} not found: run the train stage first (`dvc repro`).")
    model = keras.saving.load_model(MODEL_FILE, compile=False)
    size = int(model.input_shape[1])
    check_images(rows, size)
    ds = make_dataset(rows, size, params.evaluate.batch_size, training=False)
    ds = ds.map(lambda x, y: x)  # images only
    return np.asarray(model.predict(ds, verbose=0), dtype=float).reshape(-1)


def run(params: Params) -> dict[str, Any]:
    """Evaluate on the test subset, write the stage's outputs, log to MLflow."""
    df = read_split()
    rows = subset_rows(df, "test")
    run_info = tracking.read_run_file()
    experiment_id = tracking.setup()

    prob = predict(params, rows)
    y_true = np.asarray(labels_of(rows))
    t = params.evaluate.threshold
    y_pred = predict_labels(prob, t)

    metrics = compute_metrics(y_true, prob, t)
    write_json(metrics, EVALUATE_JSON)
    table3 = compare_table3(metrics)
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
    cm = confusion(y_true, y_pred)
    plot_confusion(cm, CONFUSION_PNG, f"Test set, threshold {t:g} (n = {len(rows)})")

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
        mlflow.log_text(report_text(y_true, y_pred), "evaluate/classification_report.txt")
        for path in (CONFUSION_PNG, TABLE3_MD, TABLE3_JSON, PREDICTIONS_CSV, ROC_CSV):
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        if VALIDATION_JSON.is_file():
            mlflow.log_artifact(str(VALIDATION_JSON), artifact_path="validate")
        mlflow.set_tag("evaluate.threshold", f"{t:g}")
        log.info("logged test metrics to MLflow run %s", mlrun.info.run_id)
        # Registry: this model becomes a version; alias champion or challenger (pneumonia.registry).
        e = params.evaluate
        registry.register_and_gate(e.registry_name, e.champion_min_accuracy, run_info, metrics,
                                   predictions, mlrun.info.run_id)
        from pneumonia.inference.gradcam import explain_test_cases

        explain_test_cases(MODEL_FILE, rows, prob, y_true, t, e.explain_max_errors,
                           e.explain_correct_per_class, GRADCAM_DIR)
        mlflow.log_artifacts(str(GRADCAM_DIR), artifact_path="evaluate/gradcam")
    tracking.ensure_reference_runs(experiment_id)

    print("\n" + markdown)
    return metrics

