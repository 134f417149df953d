"""The paper's reported numbers (Table III) and the metric names shared by every run.

One naming scheme everywhere: a test metric is ``test_accuracy``, ``test_roc_auc`` or
``test_<LABEL>_<metric>`` (``test_NORMAL_recall``). The evaluate stage logs a run's results to
MLflow under these names, and the paper's Table III and the Kaggle ResNet baseline are logged as
reference runs under the same names, so the MLflow UI compares them column by column.
"""

from __future__ import annotations

from typing import Any

from pneumonia.paths import LABELS

# Table III of the paper: DenseNet201 (last 30 layers fine-tuned) on the official test set.
TABLE3_ACCURACY = 0.96
TABLE3: dict[str, dict[str, float]] = {
    "NORMAL": {"precision": 0.98, "recall": 0.91, "f1": 0.94, "support": 234},
    "PNEUMONIA": {"precision": 0.95, "recall": 0.99, "f1": 0.97, "support": 390},
}

# The Kaggle ResNet notebook the paper compares against: only these two numbers are reported.
BASELINE_NAME = "Kaggle ResNet baseline"
BASELINE = {"accuracy": 0.92, "NORMAL_recall": 0.82}

CLASS_METRICS = ("precision", "recall", "f1", "support")

# MLflow tag marking the reference runs (searched by value, so they are logged only once).
REFERENCE_TAG = "pipeline.reference"


def metric_name(cell: str) -> str:
    """MLflow name of a test metric: ``accuracy`` -> ``test_accuracy``,
    ``NORMAL_recall`` -> ``test_NORMAL_recall``."""
    return f"test_{cell}"


def table3_cells() -> dict[str, float]:
    """Every Table III cell keyed ``accuracy`` / ``<LABEL>_<metric>``."""
    cells: dict[str, float] = {"accuracy": TABLE3_ACCURACY}
    for label in LABELS:
        for metric in CLASS_METRICS:
            cells[f"{label}_{metric}"] = TABLE3[label][metric]
    return cells


def run_cells(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The same cells taken from an evaluate.json-style metrics dict."""
    cells: dict[str, float | None] = {"accuracy": metrics["accuracy"]}
    for label in LABELS:
        for metric in CLASS_METRICS:
            cells[f"{label}_{metric}"] = metrics[label][metric]
    return cells


def reference_metrics() -> dict[str, dict[str, float]]:
    """Reference runs to log in MLflow: tag value -> metrics under the shared names."""
    return {
        "paper": {metric_name(k): float(v) for k, v in table3_cells().items()},
        "kaggle-resnet": {metric_name(k): float(v) for k, v in BASELINE.items()},
    }


def _diff(run: float | None, ref: float) -> float | None:
    return None if run is None else round(run - ref, 4)


def compare_table3(metrics: dict[str, Any]) -> dict[str, Any]:
    """Side-by-side comparison of a run with Table III and the Kaggle baseline.

    Returns a JSON-ready dict (metrics/table3.json): for each cell ``{paper, run, diff}`` with
    diff = run - paper, plus ``baseline`` with the Kaggle ResNet numbers.
    """
    run = run_cells(metrics)
    table = {
        cell: {"paper": ref, "run": run[cell], "diff": _diff(run[cell], ref)}
        for cell, ref in table3_cells().items()
    }
    table["baseline"] = {
        cell: {"reported": ref, "run": run[cell], "diff": _diff(run[cell], ref)}
        for cell, ref in BASELINE.items()
    }
    return table


def _fmt(v: float | None, support: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{int(v)}" if support else f"{v:.2f}"


def _fmt_diff(v: float | None, support: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{int(v):+d}" if support else f"{v:+.2f}"


def table3_markdown(table: dict[str, Any]) -> str:
    """Render `compare_table3` output as a markdown table (metrics/table3.md)."""
    lines = [
        "# Table III: paper vs this run (official test set)",
        "",
        "| metric | paper | this run | diff |",
        "|---|---:|---:|---:|",
    ]
    for cell, row in table.items():
        if cell == "baseline":
            continue
        support = cell.endswith("_support")
        name = cell.replace("_", " ")
        lines.append(
            f"| {name} | {_fmt(row['paper'], support)} | {_fmt(row['run'], support)} "
            f"| {_fmt_diff(row['diff'], support)} |"
        )
    lines += [
        "",
        f"## {BASELINE_NAME} (as reported in the paper)",
        "",
        "| metric | baseline | this run | diff |",
        "|---|---:|---:|---:|",
    ]
    for cell, row in table["baseline"].items():
        lines.append(
            f"| {cell.replace('_', ' ')} | {_fmt(row['reported'])} | {_fmt(row['run'])} "
            f"| {_fmt_diff(row['diff'])} |"
        )
    return "\n".join(lines) + "\n"
