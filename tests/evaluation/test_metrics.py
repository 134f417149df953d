"""Evaluate's pure parts on hand-made predictions: metrics vs sklearn, intervals, the one rule for
undefined values, Table III verdicts, MLflow names, the re-evaluation warning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    classification_report,
    roc_auc_score,
)

from pneumonia.evaluation.evaluate import threshold_warning
from pneumonia.evaluation.metrics import (
    REPORTED,
    calibration_metrics,
    compute_metrics,
    confusion,
    flat_metrics,
    predict_labels,
    reported_intervals,
)
from pneumonia.evaluation.mlflow_names import mlflow_metrics
from pneumonia.evaluation.paper import (
    _ci_of,
    metric_name,
    reference_metrics,
    table3_cells,
    table3_markdown,
)
from pneumonia.evaluation.plots import plot_confusion, pr_frame, reliability_frame, roc_table
from pneumonia.evaluation.reports import LeakfreeSubset, report_text, table3_report
from pneumonia.params import parse_params
from pneumonia.published import TABLE3_CONFUSION

# 10 test images: 0 = NORMAL, 1 = PNEUMONIA.
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
PROB = np.array([0.1, 0.4, 0.6, 0.5, 0.9, 0.8, 0.3, 0.7, 0.55, 0.95])
PARAMS = parse_params({"lr": 1e-3, "data": {"raw": "x"},
                       "evaluate": {"bootstrap_resamples": 500, "seed": 3}})


def test_threshold_is_inclusive() -> None:
    assert predict_labels(np.array([0.49, 0.5, 0.51]), 0.5).tolist() == [0, 1, 1]


def test_metrics_match_sklearn_and_every_value_has_an_interval() -> None:
    m = compute_metrics(Y_TRUE, PROB, 0.5, n_resamples=500)
    y_pred = (PROB >= 0.5).astype(int)
    report = classification_report(
        Y_TRUE, y_pred, labels=[0, 1], target_names=["NORMAL", "PNEUMONIA"], output_dict=True
    )
    assert m["accuracy"] == pytest.approx(accuracy_score(Y_TRUE, y_pred))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(Y_TRUE, PROB))
    assert m["pr_auc"] == pytest.approx(average_precision_score(Y_TRUE, PROB))
    for ours, theirs in (
        ("NORMAL", "NORMAL"),
        ("PNEUMONIA", "PNEUMONIA"),
        ("macro_avg", "macro avg"),
        ("weighted_avg", "weighted avg"),
    ):
        assert m[f"{ours}_precision"] == pytest.approx(report[theirs]["precision"])
        assert m[f"{ours}_recall"] == pytest.approx(report[theirs]["recall"])
        assert m[f"{ours}_f1"] == pytest.approx(report[theirs]["f1-score"])
    assert m["sensitivity"] == m["PNEUMONIA_recall"] and m["specificity"] == m["NORMAL_recall"]
    assert (m["NORMAL_support"], m["PNEUMONIA_support"], m["n_test"]) == (4, 6, 10)
    for key in REPORTED:
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
    assert m["accuracy_ci_high"] - m["accuracy_ci_low"] > 0.2  # 10 images: a wide interval
    assert m["undefined"] == ""
    json.dumps(m, allow_nan=False)  # JSON-ready


def test_evaluate_json_intervals_are_the_95_percent_percentiles() -> None:
    """evaluate.json's interval = the 2.5th and 97.5th percentiles of the patient resamples,
    recomputed here (a 90 % level anywhere on the way would give the 5th and 95th)."""
    from pneumonia.stats.bootstrap import patient_weights, weighted_metrics

    rng = np.random.default_rng(8)
    y = (rng.random(400) < 0.6).astype(int)
    prob = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.25, 400), 0, 1)
    groups = np.arange(400) // 2
    m = compute_metrics(y, prob, 0.5, groups, n_resamples=600, seed=5)
    dist = weighted_metrics(patient_weights(groups, 400, 600, 5), y, prob, 0.5)
    for key in ("accuracy", "roc_auc", "NORMAL_recall"):
        low, high = np.percentile(dist[key], [2.5, 97.5])
        assert (m[f"{key}_ci_low"], m[f"{key}_ci_high"]) == pytest.approx((low, high)), key


def test_intervals_resample_patients_not_images() -> None:
    # Each patient has 4 identical images: resampling images would pretend 4x the information.
    y, p = np.repeat(Y_TRUE, 4), np.repeat(PROB, 4)
    patients = np.repeat(np.arange(10), 4)
    grouped = compute_metrics(y, p, 0.5, patients, n_resamples=1000)
    images = compute_metrics(y, p, 0.5, None, n_resamples=1000)
    assert grouped["n_patients"] == 10 and images["n_patients"] == 40
    width = {k: v["accuracy_ci_high"] - v["accuracy_ci_low"] for k, v in
             (("grouped", grouped), ("images", images))}
    assert width["grouped"] > 1.5 * width["images"]


def test_same_seed_same_intervals_other_seed_other_intervals() -> None:
    a = compute_metrics(Y_TRUE, PROB, 0.5, n_resamples=300, seed=1)
    assert a == compute_metrics(Y_TRUE, PROB, 0.5, n_resamples=300, seed=1)
    b = compute_metrics(Y_TRUE, PROB, 0.5, n_resamples=300, seed=2)
    assert any(a[k] != b[k] for k in a if k.endswith("_ci_low"))


def test_one_rule_for_an_undefined_class_json_and_report_agree() -> None:
    # An all-PNEUMONIA model: NORMAL precision is 0/0. sklearn's macro precision is 0.3125
    # with zero_division=0 and 0.625 with zero_division=nan (the class silently dropped).
    y = np.array([0] * 4 + [1] * 6)
    prob = np.full(10, 0.9)
    m = compute_metrics(y, prob, 0.5, n_resamples=300)
    assert m["NORMAL_precision"] is None and m["NORMAL_precision_ci_low"] is None
    assert m["macro_avg_precision"] is None and m["weighted_avg_precision"] is None
    assert m["NORMAL_recall"] == 0.0 and m["PNEUMONIA_recall"] == 1.0
    assert m["macro_avg_recall"] == pytest.approx(0.5)  # defined for both classes
    assert m["NORMAL_f1"] == 0.0  # 2 TN / (2 TN + FP + FN) = 0 / 4: defined
    assert m["undefined"] == "NORMAL_precision, macro_avg_precision, weighted_avg_precision"
    text = report_text(m)
    normal = next(line for line in text.splitlines() if line.startswith("NORMAL"))
    macro = next(line for line in text.splitlines() if line.startswith("macro avg"))
    assert normal.split()[1] == "n/a" and macro.split()[2] == "n/a"
    assert "0.3125" not in text and "0.6250" not in text
    assert f"{m['PNEUMONIA_precision']:.4f}" in text and f"{m['macro_avg_recall']:.4f}" in text
    assert "n/a = undefined" in text
    json.dumps(m, allow_nan=False)


def test_undefined_resamples_are_shown_and_withhold_the_interval_when_many() -> None:
    """One image predicted NORMAL among 200: NORMAL precision is undefined in ~37 % of the
    resamples. It used to read 1.0 [1.0, 1.0]; now the interval is withheld and the share shown.
    A few undefined resamples (~3 %) widen the interval instead, and say so."""
    y = np.r_[np.zeros(40, int), np.ones(160, int)]
    prob = np.full(200, 0.9)
    prob[0] = 0.1
    m = compute_metrics(y, prob, 0.5, n_resamples=1000, seed=0)
    assert m["NORMAL_precision"] == 1.0
    assert m["NORMAL_precision_ci_low"] is None and m["NORMAL_precision_ci_high"] is None
    assert m["NORMAL_precision_ci_undefined_share"] == pytest.approx(0.37, abs=0.05)
    assert "accuracy_ci_undefined_share" not in m  # only where some resamples were undefined
    text = report_text(m)
    assert "1.0000 [withheld]*" in text and "NORMAL_precision 3" in text
    share = round(100 * m["NORMAL_precision_ci_undefined_share"])
    assert _ci_of(_block_row(m, "NORMAL_precision")) == \
        f"1.000 [interval withheld] ({share}% of resamples undefined)"
    # 10 images, 3 predicted NORMAL: a few resamples draw none of them
    few = compute_metrics(Y_TRUE, PROB, 0.5, n_resamples=2000, seed=0)
    share = few["NORMAL_precision_ci_undefined_share"]
    assert 0 < share <= 0.1 and few["NORMAL_precision_ci_low"] == 0.0  # widened to the bound


def _block_row(m: dict, metric: str) -> dict:
    return {"value": m[metric], "ci_low": m[f"{metric}_ci_low"],
            "ci_high": m[f"{metric}_ci_high"],
            "undefined_share": m.get(f"{metric}_ci_undefined_share", 0.0)}


def test_only_one_class_present_writes_null_not_crash() -> None:
    m = compute_metrics([1, 1, 1], [0.9, 0.8, 0.7], 0.5, n_resamples=200)
    assert m["roc_auc"] is None and m["NORMAL_precision"] is None
    assert m["NORMAL_support"] == 0 and m["accuracy"] == 1.0
    # weighted averages weigh the classes present; macro averages need both classes defined
    assert m["weighted_avg_recall"] == 1.0 and m["macro_avg_recall"] is None
    json.dumps(m, allow_nan=False)
    assert roc_table([1, 1, 1], [0.9, 0.8, 0.7]).empty
    empty = compute_metrics([], [], 0.5, n_resamples=200, prefix="leakfree_")
    assert empty["leakfree_accuracy"] is None and empty["leakfree_n_test"] == 0


def test_calibration_metrics_with_intervals() -> None:
    c = calibration_metrics(Y_TRUE, PROB, None, 300, 0)
    assert c["brier"] == pytest.approx(np.mean((PROB - Y_TRUE) ** 2))
    assert c["brier_ci_low"] <= c["brier"] <= c["brier_ci_high"]
    assert 0 <= c["ece_ci_low"] <= c["ece_ci_high"] <= 1
    rel, pr = reliability_frame(Y_TRUE, PROB), pr_frame(Y_TRUE, PROB)
    assert rel["count"].sum() == 10 and {"mean_predicted", "observed_fraction"} <= set(rel)
    assert list(pr.columns) == ["threshold", "precision", "recall"] and len(pr) == 10


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


def _run_like(cm: tuple[tuple[int, int], tuple[int, int]], seed: int = 0):
    """Test predictions with confusion `cm` (rows actual, columns predicted), 2 images/patient."""
    (tn, fp), (fn, tp) = cm
    y = np.array([0] * (tn + fp) + [1] * (fn + tp))
    rng = np.random.default_rng(seed)
    prob = np.concatenate([rng.uniform(0, 0.5, tn), rng.uniform(0.5, 1, fp),
                           rng.uniform(0, 0.5, fn), rng.uniform(0.5, 1, tp)])
    groups = np.arange(y.size) // 2
    return y, prob, groups


def _evaluation(y, prob, groups, keep=None, keep_alt=None):
    keep = np.ones(y.size, bool) if keep is None else keep
    m = {"threshold": 0.5, "threshold_rule": "fixed", "threshold_chosen": 0.5}
    m.update(compute_metrics(y, prob, 0.5, groups, 500, 3))
    m.update(calibration_metrics(y, prob, groups, 500, 3))
    subsets = []
    for prefix, rule, k in (("leakfree_", "strict", keep), ("leakfree_alt_", "merge_normal2",
                                                            keep if keep_alt is None else keep_alt)):
        m.update(compute_metrics(y[k], prob[k], 0.5, groups[k], 500, 3, prefix))
        m[f"{prefix}patient_rule"] = rule
        subsets.append(LeakfreeSubset(rule, y[k], prob[k], groups[k], int((~k).sum()), 0))
    m.update(flat_metrics(reported_intervals(y, prob, threshold=0.5, groups=groups,
                                                   n_resamples=500, seed=3), "chosen_"))
    return m, table3_report(m, (y, prob, groups), subsets[0], PARAMS, None,
                            leakfree_alt=subsets[1])


def test_a_run_like_the_paper_is_consistent_everywhere_and_above_the_baseline() -> None:
    y, prob, groups = _run_like(TABLE3_CONFUSION)
    keep = groups % 3 != 0
    m, table = _evaluation(y, prob, groups, keep)
    assert table["table3_consistent"] == table["table3_cells"] == 7
    assert all(c["verdict"] == "consistent" for c in table["cells"].values())
    assert table["cells"]["accuracy"]["diff"] == pytest.approx(0.0)
    assert table["cells"]["accuracy"]["diff_ci_low"] < 0 < table["cells"]["accuracy"]["diff_ci_high"]
    assert table["baseline"]["cells"]["accuracy"]["verdict"] == "above"  # 0.92 below our CI
    assert table["support"]["NORMAL"] == {"paper": 234, "run": 234}
    assert table["leakfree"]["n_test"] == int(keep.sum()) == m["leakfree_n_test"]
    md = table3_markdown(table)
    assert "**7 of 7 Table III cells are consistent with this run** (by the interval" in md
    assert "| accuracy | 0.96 [" in md and "| consistent | consistent |" in md
    assert "## Leakage-free test subset" in md and f"leak-free, strict (n = {keep.sum()})" in md
    assert f"leak-free, merge_normal2 (n = {keep.sum()})" in md
    assert "do not depend on the reading of the file names" in md
    # only the recalls (independent of the class mix) get a leak-free verdict
    assert set(table["leakfree"]["verdicts"]) == {"NORMAL_recall", "PNEUMONIA_recall"}
    assert table["leakfree"]["table3_cells"] == 2
    assert "Official class mix: 234 NORMAL / 390 PNEUMONIA (38% NORMAL)" in md
    assert "## Decision threshold chosen on validation" in md and "Brier" in md
    json.dumps(table, allow_nan=False)


def test_leakfree_numbers_under_both_readings_and_a_conclusion_that_depends_on_it() -> None:
    """The merged reading drops more test patients; if the verdicts differ, table3.md says so."""
    y, prob, groups = _run_like(((150, 84), (4, 386)))  # NORMAL recall 0.64: below the paper
    strict = np.ones(y.size, bool)
    merged = np.ones(y.size, bool)
    merged[150:234] = False  # the 84 NORMAL images called PNEUMONIA: patients seen in training
    m, table = _evaluation(y, prob, groups, strict, merged)
    lf, alt = table["leakfree"], table["leakfree"]["other_reading"]
    assert (lf["rule"], alt["rule"]) == ("strict", "merge_normal2")
    assert lf["n_test"] == y.size and alt["n_test"] == y.size - 84 == m["leakfree_alt_n_test"]
    assert lf["verdicts"]["NORMAL_recall"] == "below"  # 150 / 234
    assert alt["verdicts"]["NORMAL_recall"] == "above"  # 150 / 150
    md = table3_markdown(table)
    assert "**The leak-free verdicts DEPEND on the reading of the file names.**" in md
    assert "verdict vs paper (merge_normal2)" in md
    logged = mlflow_metrics(m, table)
    assert "test_leakfree_alt_accuracy" in logged and "leakfree_alt_table3_consistent" in logged
    assert "test_leakfree_alt_patient_rule" not in logged


def test_a_worse_run_is_below_the_paper() -> None:
    y, prob, groups = _run_like(((170, 64), (30, 360)))  # accuracy 0.85
    _, table = _evaluation(y, prob, groups)
    acc = table["cells"]["accuracy"]
    assert acc["verdict"] == "below" and acc["run_ci_high"] < 0.96
    assert acc["diff_ci_high"] < 0 and acc["diff_pvalue"] < 0.05  # 500 resamples: >= 0.004
    assert table["table3_consistent"] < 7
    assert "| below |" in table3_markdown(table)


def test_run_and_reference_runs_share_metric_names() -> None:
    y, prob, groups = _run_like(TABLE3_CONFUSION)
    m, table = _evaluation(y, prob, groups)
    logged = mlflow_metrics(m, table)
    refs = reference_metrics()
    assert set(refs["paper"]) == {metric_name(c) for c in table3_cells()}
    assert set(refs["paper"]) <= set(logged)
    assert set(refs["kaggle-resnet"]) <= set(logged)
    assert refs["kaggle-resnet"] == {"test_accuracy": 0.92, "test_NORMAL_recall": 0.82}
    for key in ("test_roc_auc", "test_accuracy_ci_low", "test_NORMAL_recall_ci_high",
                "test_leakfree_accuracy", "test_chosen_accuracy", "test_brier", "test_ece",
                "table3_consistent", "table3_cells", "baseline_consistent", "threshold_chosen",
                "diff_from_paper_accuracy", "diff_from_paper_accuracy_ci_low"):
        assert key in logged, key
    assert logged["table3_consistent"] == 7 and logged["table3_cells"] == 7
    assert "test_threshold" not in logged and "test_seed" not in logged  # params, not metrics
    assert all(math.isfinite(v) for v in logged.values())


def test_a_test_reevaluation_at_another_threshold_warns() -> None:
    assert threshold_warning([], 0.3) == ""
    assert threshold_warning([0.5], 0.5) == ""  # the same evaluation again
    text = threshold_warning([0.5, 0.5], 0.3)
    assert text.startswith("WARNING") and "at threshold 0.5;" in text and "uses 0.3" in text
    assert "threshold_rule: youden" in text
