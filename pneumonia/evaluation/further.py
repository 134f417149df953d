"""The paper's further work (its Sec. VI-A), measured in every evaluation: errors by cause, the
three-class report of a `task: three_class` model, and prediction sets with a coverage guarantee.

`evaluate_further` computes evaluate.json's extra keys and table3.md's extra sections from the
test predictions and the validation originals' predictions (pneumonia.evaluation.causes,
pneumonia.evaluation.confidence); `write_outputs` writes the risk-coverage DVC plot;
`log_artifacts` adds the figures to the open MLflow run. The numbers themselves reach MLflow
with the rest of evaluate.json (pneumonia.evaluation.mlflow_names: `test_<key>`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.evaluation import causes, confidence
from pneumonia.paths import CLASSES, LABELS, RISK_COVERAGE_CSV
from pneumonia.stats.conformal import set_names


@dataclass
class Further:
    metrics: dict[str, Any]  # evaluate.json keys
    markdown: str  # table3.md sections
    sets: np.ndarray  # (n_test, 2) bool prediction sets, [NORMAL, PNEUMONIA]
    curve: pd.DataFrame  # risk-coverage (test set)
    confusion3: np.ndarray | None  # 3x3, three-class models only

    def prediction_columns(self, outputs: np.ndarray) -> dict[str, Any]:
        """predictions.csv's extra columns: the set, and a three-class model's probabilities."""
        cols: dict[str, Any] = {"prediction_set": set_names(self.sets, LABELS)}
        if outputs.shape[1] == len(CLASSES):
            cols |= {f"p_{c}": np.round(outputs[:, i], 6) for i, c in enumerate(CLASSES)}
        return cols


def evaluate_further(task: str, test_classes: Any, outputs: np.ndarray, prob: np.ndarray,
                     y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray,
                     val: tuple[np.ndarray, np.ndarray, np.ndarray], alpha: float,
                     n_resamples: int, seed: int) -> Further:
    """`outputs`: the model's raw test outputs (n, 1) or (n, 3); `prob` = P(PNEUMONIA);
    `y_pred` = the binary decision at evaluate.threshold; `val` = (y, P(PNEUMONIA), patient)
    of the validation originals (the conformal calibration set)."""
    boot = {"n_resamples": n_resamples, "seed": seed}
    metrics: dict[str, Any] = {"task": task}
    metrics |= causes.recall_by_cause(test_classes, np.asarray(y_pred) == 1, groups, **boot)
    markdown = causes.recall_markdown(metrics)
    cm = None
    if outputs.shape[1] == len(CLASSES):
        three = causes.three_class_metrics(test_classes, outputs, groups, **boot)
        cm = causes.confusion3(test_classes, outputs)
        metrics |= three
        markdown += "\n" + causes.three_class_markdown(three, cm)
    val_y, val_prob, val_groups = val
    conformal, sets, curve = confidence.evaluate_sets(val_prob, val_y, val_groups, prob, y_true,
                                                      groups, alpha, **boot)
    metrics |= conformal
    markdown += "\n" + confidence.markdown(conformal)
    return Further(metrics, markdown, sets, curve, cm)


def write_outputs(further: Further, path: Path = RISK_COVERAGE_CSV) -> None:
    """metrics/risk_coverage.csv (a DVC plot)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    further.curve.round(6).to_csv(path, index=False, lineterminator="\n")


def log_artifacts(further: Further, n_test: int) -> None:
    """The risk-coverage table and figure, and a three-class model's 3x3 matrix, to the open
    MLflow run (evaluate/)."""
    import mlflow

    mlflow.log_artifact(str(RISK_COVERAGE_CSV), artifact_path="evaluate")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "risk_coverage.png"
        confidence.plot_risk_coverage(further.curve, further.metrics, png)
        mlflow.log_artifact(str(png), artifact_path="evaluate")
        if further.confusion3 is not None:
            png3 = Path(tmp) / "confusion_three_class.png"
            causes.plot_confusion3(further.confusion3, png3,
                                   f"Test set, three classes (n = {n_test})")
            mlflow.log_artifact(str(png3), artifact_path="evaluate")
            mlflow.log_dict({"classes": list(CLASSES), "rows": "actual", "columns": "predicted",
                             "matrix": further.confusion3.tolist()},
                            "evaluate/confusion_matrix_three_class.json")
    mlflow.set_tags({"task": further.metrics["task"],
                     "conformal.coverage_verdict": further.metrics["conformal_coverage_verdict"]})
