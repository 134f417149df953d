"""A run against the paper: the metric names shared by every run and the reference runs, and the
rendering of metrics/table3.json (a run against Table III, with intervals) as markdown. The
paper's numbers themselves are plain data in pneumonia.published.

One naming scheme everywhere: a test metric is ``test_accuracy``, ``test_roc_auc`` or
``test_<LABEL>_<metric>`` (``test_NORMAL_recall``). The evaluate stage logs a run's results to
MLflow under these names, and the paper's Table III and the Kaggle ResNet baseline are logged as
reference runs under the same names, so the MLflow UI compares them column by column.
"""

from __future__ import annotations

from typing import Any

from pneumonia.formatting import number
from pneumonia.paths import LABELS
from pneumonia.published import BASELINE, TABLE3, TABLE3_ACCURACY, TABLE3_CONFUSION

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


def reference_metrics() -> dict[str, dict[str, float]]:
    """Reference runs to log in MLflow: tag value -> metrics under the shared names."""
    return {
        "paper": {metric_name(k): float(v) for k, v in table3_cells().items()},
        "kaggle-resnet": {metric_name(k): float(v) for k, v in BASELINE.items()},
    }




# --------------------------------------------------------------------------------------------
# metrics/table3.md: rendered from metrics/table3.json alone (the demo renders another
# revision's table3.json the same way)
# --------------------------------------------------------------------------------------------
METRIC_NAMES = {
    "accuracy": "accuracy",
    "NORMAL_precision": "NORMAL precision",
    "NORMAL_recall": "NORMAL recall (specificity)",
    "NORMAL_f1": "NORMAL F1",
    "PNEUMONIA_precision": "PNEUMONIA precision",
    "PNEUMONIA_recall": "PNEUMONIA recall (sensitivity)",
    "PNEUMONIA_f1": "PNEUMONIA F1",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "roc_auc": "ROC AUC",
    "pr_auc": "PR AUC (average precision)",
    "macro_avg_precision": "macro avg precision",
    "macro_avg_recall": "macro avg recall",
    "macro_avg_f1": "macro avg F1",
    "weighted_avg_precision": "weighted avg precision",
    "weighted_avg_recall": "weighted avg recall",
    "weighted_avg_f1": "weighted avg F1",
    "brier": "Brier score (lower is better)",
    "ece": "ECE, 10 bins (lower is better)",
}


def _ci(v: float | None, low: float | None, high: float | None, sign: bool = False,
        undefined_share: float | None = None) -> str:
    """`0.902 [0.871, 0.929]`; `n/a (undefined)` when the value is undefined; with the share of
    undefined bootstrap resamples beside it when > 0 (`[interval withheld]` when the bootstrap
    gave none: pneumonia.stats.bootstrap.guarded_interval)."""
    if v is None:
        return "n/a (undefined)"
    if low is None or high is None:
        text = f"{number(v, sign=sign)} [interval withheld]"
    else:
        text = f"{number(v, sign=sign)} [{number(low, sign=sign)}, {number(high, sign=sign)}]"
    if undefined_share:
        text += f" ({undefined_share:.0%} of resamples undefined)"
    return text


def _ci_of(row: dict[str, Any]) -> str:
    return _ci(row.get("value"), row.get("ci_low"), row.get("ci_high"),
               undefined_share=row.get("undefined_share"))


def table3_markdown(table: dict[str, Any]) -> str:
    """Render metrics/table3.json (evaluate's `table3_report`) as markdown (metrics/table3.md)."""
    t = table["threshold"]
    lines = ["# Table III: paper vs this run (official test set)", ""]
    if table.get("threshold_warning"):
        lines += [f"> **{table['threshold_warning']}**", ""]
    lines += [
        (f"{table['n_test']} test images of {table['n_patients']} patients, threshold {t:g}. "
        f"Intervals: {table['ci_level']:.0%}, patient-grouped bootstrap "
        f"({table['bootstrap_resamples']} resamples, seed {table['seed']}). The paper's "
        "interval treats its images as independent (Wilson; image bootstrap for F1), from the "
        f"confusion matrix its Table III implies, {[list(r) for r in TABLE3_CONFUSION]}. "
        "run - paper: this run's patient-grouped bootstrap minus independent draws of that "
        "confusion (the paper's binomial uncertainty), unpaired (the paper's predictions are "
        "not published). Verdict: `consistent` = the interval of run - paper includes 0; "
        "`below` / `above` = it lies wholly below / above 0. The last column says only where "
        "the printed value lies relative to this run's own interval (it ignores the paper's "
        "uncertainty)."),
        "",
        (f"**{table['table3_consistent']} of {table['table3_cells']} Table III cells are "
        "consistent with this run** (by the interval of run - paper; "
        f"{table.get('table3_consistent_run_interval', 'n/a')} of {table['table3_cells']} printed "
        "values lie inside this run's own interval)."),
        "",
        ("| metric | paper [95 % CI] | this run [95 % CI] | run - paper [95 % CI] | verdict | "
         "printed value vs this run's CI |"),
        "|---|---|---|---|---|---|",
    ]
    for cell, row in table["cells"].items():
        paper = (f"{row['paper']:.2f} [{number(row['paper_ci_low'])}, "
                 f"{number(row['paper_ci_high'])}]")
        run = _ci(row["run"], row["run_ci_low"], row["run_ci_high"],
                  undefined_share=row.get("run_undefined_share"))
        diff = _ci(row["diff"], row["diff_ci_low"], row["diff_ci_high"], sign=True,
                   undefined_share=row.get("diff_undefined_share"))
        lines.append(f"| {METRIC_NAMES[cell]} | {paper} | {run} | {diff} | {row['verdict']} | "
                     f"{row.get('run_interval_verdict', '')} |")
    for label, row in table["support"].items():
        lines.append(f"| {label} support | {row['paper']} | {row['run']} | | | |")

    base = table["baseline"]
    lines += [
        "",
        f"## {base['name']} (as reported in the paper)",
        "",
        (f"{base['n_consistent']} of {base['n_cells']} baseline numbers are consistent with this "
        f"run. The baseline reports no counts: no interval of its own, no difference test."),
        "",
        "| metric | baseline | this run [95 % CI] | verdict |",
        "|---|---|---|---|",
    ]
    for cell, row in base["cells"].items():
        run = _ci(row["run"], row["run_ci_low"], row["run_ci_high"])
        lines.append(f"| {METRIC_NAMES[cell]} | {row['baseline']:.2f} | {run} | {row['verdict']} |")

    lf = table["leakfree"]
    alt = lf.get("other_reading")
    official = table["test"]["metrics"]
    n_off = {k: v["run"] for k, v in table["support"].items()}

    def mix(n: dict[str, int]) -> str:
        total = sum(n.values())
        share = f" ({n['NORMAL'] / total:.0%} NORMAL)" if total else ""
        return f"{n['NORMAL']} NORMAL / {n['PNEUMONIA']} PNEUMONIA{share}"

    def subset(block: dict[str, Any]) -> str:
        return (f"`{block.get('rule', 'strict')}`: {block['n_test']} of {table['n_test']} test "
                f"images ({block['n_patients']} patients; excluded "
                f"{block['excluded_patient_in_train']} of a patient seen in training, "
                f"{block['excluded_duplicate_of_train']} duplicates of a training image; the "
                f"two can overlap), class mix {mix(block['support'])}")

    readings = [lf] + ([alt] if alt else [])
    lines += [
        "",
        "## Leakage-free test subset",
        "",
        ("The official test set shares patients (and possibly identical files) with the "
         "training data. The leak-free subset keeps the test images whose patient has no "
         "train/validation image and that are no byte-duplicate of a training image. Which "
         "images share a patient rests on a reading of the file names: `strict` takes the ids "
         "as written; `merge_normal2` reads NORMAL2-IM-0095 as the same patient as IM-0095 (a "
         "published audit's reading). Nobody can know which is right, so both are shown; "
         "`evaluate.leakfree_patient_rule` picks the first."),
        "",
        *[f"- {subset(b)}" for b in readings],
        "",
        (f"Official class mix: {mix(n_off)}. Accuracy, precision, F1 and PR AUC depend on the "
         "class mix, so they differ between the columns even for the same model; recall "
         "(sensitivity, specificity) and ROC AUC do not. Only the recalls get a verdict against "
         "Table III (from the interval of run - paper, as above): "
         + "; ".join(f"`{b.get('rule', 'strict')}` {b['table3_consistent']} of "
                     f"{b['table3_cells']} consistent" for b in readings) + "."),
    ]
    if alt:
        same = lf["verdicts"] == alt["verdicts"]
        lines += ["", ("**The leak-free verdicts " + ("do not depend" if same else "DEPEND")
                       + " on the reading of the file names.**")]
    head = [f"official test (n = {table['n_test']})"]
    head += [f"leak-free, {b.get('rule', 'strict')} (n = {b['n_test']})" for b in readings]
    head += [f"verdict vs paper ({b.get('rule', 'strict')})" for b in readings]
    lines += ["", "| metric | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m, row in official.items():
        cells = [_ci_of(row)] + [_ci_of(b["metrics"][m]) for b in readings]
        cells += [b["verdicts"].get(m, "") for b in readings]
        lines.append(f"| {METRIC_NAMES[m]} | " + " | ".join(cells) + " |")

    ch = table["threshold_choice"]
    chosen = ch["threshold_chosen"]
    if ch["rule"] == "fixed":
        how = (f"`evaluate.threshold_rule: fixed`: the threshold is evaluate.threshold "
               f"({chosen:g}); set `youden` to choose one on the validation images.")
    else:
        how = (f"`evaluate.threshold_rule: {ch['rule']}`: chosen on {ch['n_validation']} "
               f"validation images (originals, never the test set): **{chosen:.4f}**.")
    lines += ["", "## Decision threshold chosen on validation", "", how]
    if ch["rule"] != "fixed":
        lines += [
            "",
            f"| metric (test set) | at {t:g} | at {chosen:.4g} (chosen on validation) |",
            "|---|---|---|",
        ]
        for m, row in ch["metrics"].items():
            lines.append(f"| {METRIC_NAMES[m]} | {_ci_of(ch['at_threshold'][m])} | {_ci_of(row)} |")

    cal = table["calibration"]
    lines += [
        "",
        "## Calibration of P(PNEUMONIA) (test set)",
        "",
        "| metric | this run [95 % CI] |",
        "|---|---|",
    ]
    for m, row in cal["metrics"].items():
        lines.append(f"| {METRIC_NAMES[m]} | {_ci_of(row)} |")
    lines += [
        "",
        ("Reliability diagram: metrics/reliability.csv; precision-recall curve: metrics/pr.csv "
        "(`dvc plots show`)."),
    ]
    return "\n".join(lines) + "\n"
