"""evaluate.json's numbers and table3.json's totals under the MLflow metric names that the paper's
reference runs share (``test_accuracy``, ``diff_from_paper_...``).
"""

from __future__ import annotations

from typing import Any

from pneumonia.evaluation.paper import metric_name

# evaluate.json keys that are settings, not measurements (params, or a string): not MLflow metrics.
SETTINGS = ("threshold", "threshold_rule", "bootstrap_resamples", "seed", "ci_level",
            "undefined", "leakfree_undefined", "chosen_undefined", "threshold_warning")


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
