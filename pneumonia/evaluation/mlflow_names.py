"""evaluate.json's numbers and table3.json's totals under the MLflow metric names that the paper's
reference runs share (``test_accuracy``, ``diff_from_paper_...``).
"""

from __future__ import annotations

from typing import Any

from pneumonia.evaluation.paper import metric_name

# evaluate.json keys that are settings, not measurements (params, or a string): not MLflow metrics.
SETTINGS = ("threshold", "threshold_rule", "bootstrap_resamples", "seed", "ci_level",
            "undefined", "leakfree_undefined", "leakfree_alt_undefined", "chosen_undefined",
            "threshold_warning", "leakfree_patient_rule", "leakfree_alt_patient_rule",
            # pneumonia.evaluation.further: the task, words, and the conformal alpha (a param)
            "task", "cause_undefined", "conformal_alpha", "conformal_coverage_verdict",
            # the headline's copies: Table III's count is logged below, the gate's word is a tag
            "table3_consistent", "gate_decision")
# Validation-originals metrics (not test metrics): MLflow names `evaluate_val_accuracy`, ...
VALIDATION = ("val_accuracy", "val_roc_auc", "val_loss")


def mlflow_metrics(metrics: dict[str, Any], table3: dict[str, Any]) -> dict[str, float]:
    """evaluate.json's numbers under the names the paper reference runs use (`test_accuracy`,
    `test_NORMAL_recall`, ... and `test_<metric>_ci_low/_ci_high`, `test_leakfree_...`,
    `test_leakfree_alt_...`, `test_chosen_...`), the Table III counts and verdict totals, and
    `diff_from_paper_*`."""
    out = {
        metric_name(k): float(v)
        for k, v in metrics.items()
        if k not in SETTINGS and k not in VALIDATION and isinstance(v, (int, float))
        and v is not None
    }
    out |= {f"evaluate_{k}": float(metrics[k]) for k in VALIDATION
            if isinstance(metrics.get(k), (int, float))}
    out["threshold_chosen"] = float(metrics["threshold_chosen"])
    for key in ("table3_consistent", "table3_cells", "baseline_consistent", "baseline_cells"):
        out[key] = float(table3[key])
    out["leakfree_table3_consistent"] = float(table3["leakfree"]["table3_consistent"])
    if "other_reading" in table3["leakfree"]:
        out["leakfree_alt_table3_consistent"] = float(
            table3["leakfree"]["other_reading"]["table3_consistent"])
    for cell, row in table3["cells"].items():
        for src, suffix in (("diff", ""), ("diff_ci_low", "_ci_low"), ("diff_ci_high", "_ci_high")):
            if row[src] is not None:
                out[f"diff_from_paper_{cell}{suffix}"] = float(row[src])
    for label, row in table3["support"].items():
        out[f"diff_from_paper_{label}_support"] = float(row["run"] - row["paper"])
    return out
