"""Evaluate's pure parts on hand-made predictions: metrics vs sklearn, orientation, Table III."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    classification_report,
    roc_auc_score,
)

from pneumonia.evaluation.evaluate import (
    compute_metrics,
    confusion,
    mlflow_metrics,
    plot_confusion,
    predict_labels,
    roc_table,
)
from pneumonia.evaluation.paper import (
    compare_table3,
    metric_name,
    reference_metrics,
    table3_cells,
    table3_markdown,
)

# 10 test images: 0 = NORMAL, 1 = PNEUMONIA.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROB = np.array([0.1, 0.4, 0.6, 0.5, 0.9, 0.8, 0.3, 0.7, 0.55, 0.95])


def test_threshold_is_inclusive() -> None:
    assert predict_labels(np.array([0.49, 0.5, 0.51]), 0.5).tolist() == [0, 1, 1]


def test_metrics_match_sklearn() -> None:
    m = compute_metrics(Y_TRUE, PROB, 0.5)
    y_pred = (PROB >= 0.5).astype(int)
    report = classification_report(
        Y_TRUE, y_pred, labels=[0, 1], target_names=["NORMAL", "PNEUMONIA"], output_dict=True
    )
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, y_pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y_TRUE, PROB))
    for ours, theirs in (
        ("NORMAL", "NORMAL"),
        ("PNEUMONIA", "PNEUMONIA"),
        ("macro_avg", "macro avg"),
        ("weighted_avg", "weighted avg"),
    ):
        assert m[ours]["precision"] == pytest.approx(report[theirs]["precision"])
        assert m[ours]["recall"] == pytest.approx(report[theirs]["recall"])
        assert m[ours]["f1"] == pytest.approx(report[theirs]["f1-score"])
        assert m[ours]["support"] == report[theirs]["support"]
    assert m["threshold"] == 0.5 and m["n_test"] == 10
    json.dumps(m, allow_nan=False)  # JSON-ready


def test_degenerate_predictions_write_null_not_crash() -> None:
    # Only PNEUMONIA present, everything predicted PNEUMONIA: no ROC, NORMAL precision undefined.
    m = compute_metrics([1, 1, 1], [0.9, 0.8, 0.7], 0.5)
    assert m["roc_auc"] is None
    assert m["NORMAL"]["precision"] is None
    assert m["NORMAL"]["support"] == 0
    assert m["accuracy"] == 1.0
    json.dumps(m, allow_nan=False)
    assert roc_table([1, 1, 1], [0.9, 0.8, 0.7]).empty


def test_confusion_rows_are_actual_columns_predicted(tmp_path: Path) -> None:
    # One NORMAL image called PNEUMONIA, nothing else wrong.
    cm = confusion([0, 0, 1], [1, 0, 1])
    assert cm.tolist() == [[1, 1], [0, 1]]
    assert cm[0, 1] == 1  # actual NORMAL (row 0), predicted PNEUMONIA (column 1)
    plot_confusion(cm, tmp_path / "c.png", "t")
    assert (tmp_path / "c.png").stat().st_size > 1000


def test_roc_thresholds_are_finite() -> None:
    roc = roc_table(Y_TRUE, PROB)
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    assert np.isfinite(roc["threshold"]).all()
    assert roc["threshold"].iloc[0] > 1.0 >= PROB.max()
    assert roc["fpr"].iloc[-1] == 1.0 and roc["tpr"].iloc[-1] == 1.0


def test_table3_side_by_side_and_baseline() -> None:
    m = compute_metrics(Y_TRUE, PROB, 0.5)
    table = compare_table3(m)
    assert table["accuracy"] == {
        "paper": 0.96,
        "run": m["accuracy"],
        "diff": round(m["accuracy"] - 0.96, 4),
    }
    assert table["NORMAL_recall"]["paper"] == 0.91
    assert table["NORMAL_support"] == {"paper": 234, "run": 4, "diff": -230}
    assert table["PNEUMONIA_precision"]["paper"] == 0.95
    assert table["baseline"]["accuracy"]["reported"] == 0.92
    assert table["baseline"]["NORMAL_recall"]["reported"] == 0.82
    md = table3_markdown(table)
    assert "| metric | paper | this run | diff |" in md
    assert "| NORMAL recall | 0.91 |" in md and "Kaggle ResNet" in md
    json.dumps(table, allow_nan=False)


def test_run_and_reference_runs_share_metric_names() -> None:
    m = compute_metrics(Y_TRUE, PROB, 0.5)
    logged = mlflow_metrics(m, compare_table3(m))
    refs = reference_metrics()
    assert set(refs["paper"]) == {metric_name(c) for c in table3_cells()}
    assert set(refs["paper"]) <= set(logged)
    assert set(refs["kaggle-resnet"]) <= set(logged)
    assert refs["kaggle-resnet"] == {"test_accuracy": 0.92, "test_NORMAL_recall": 0.82}
    assert "test_roc_auc" in logged and "diff_from_paper_accuracy" in logged
    assert all(math.isfinite(v) for v in logged.values())
