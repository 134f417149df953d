"""The evaluate stage, by cause of pneumonia (the manifest's `class`: normal / bacteria / virus).

- Every binary evaluation: PNEUMONIA recall on the bacterial and on the viral test images apart
  (`PNEUMONIA_recall_bacteria`, `PNEUMONIA_recall_virus`, patient-bootstrap intervals): which
  pneumonias the model misses (the paper: "We do not know if the miss-classified images are
  bacterial or viral pneumonia"). A three-class model is scored in its binary view too.
- A three-class model (`task: three_class`): the 3x3 confusion matrix, per-class precision /
  recall / F1 and one-vs-rest ROC AUC, macro averages and bacterial-vs-viral accuracy on the
  pneumonia images, each with its interval (pneumonia.stats.multiclass), beside Kermany et al.
  (Cell 2018), who reported bacterial vs viral accuracy 0.907 with a pretrained InceptionV3
  trained on those two classes only.

evaluate.json keys: `PNEUMONIA_recall_<cause>` (+ `_ci_low`, `_ci_high`) and `<cause>_support`;
three-class: `cause_<metric>` for every metric of stats.multiclass.CAUSE_METRICS (+ intervals),
`cause_undefined`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.evaluation.plots import plot_confusion
from pneumonia.paths import UNSPECIFIED
from pneumonia.stats.multiclass import (
    CAUSE_METRICS,
    CAUSE_RECALLS,
    CLASSES,
    PNEUMONIA_CAUSES,
    cause_metrics,
    cause_recalls,
    class_codes,
    weighted_confusion3,
)

KERMANY_BACTERIA_VS_VIRUS = 0.907  # Kermany et al. 2018, Cell 172(5):1122-1131
PREFIX = "cause_"


def _flat(intervals: dict[str, dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    def clean(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None

    out: dict[str, Any] = {}
    for m, row in intervals.items():
        value = clean(row["value"])
        out[f"{prefix}{m}"] = value
        out[f"{prefix}{m}_ci_low"] = clean(row["ci_low"]) if value is not None else None
        out[f"{prefix}{m}_ci_high"] = clean(row["ci_high"]) if value is not None else None
        if value is not None and row.get("method", "bootstrap") != "bootstrap":
            out[f"{prefix}{m}_ci_method"] = row["method"]  # wilson: the bootstrap degenerated
    return out


def recall_by_cause(classes: Any, called_pneumonia: Any, groups: Any, n_resamples: int,
                    seed: int) -> dict[str, Any]:
    """evaluate.json's per-cause keys of a binary evaluation (the module docstring).

    Images of your own data whose cause is unrecorded (`data.layout: folders`, class
    `unspecified`) belong to no cause: they are left out here (counted in
    `unspecified_support`); the binary metrics keep them."""
    classes = np.asarray(classes).astype(str)
    known = classes != UNSPECIFIED
    out: dict[str, Any]
    if known.any():
        keep_groups = None if groups is None else np.asarray(groups)[known]
        out = _flat(cause_recalls(classes[known], np.asarray(called_pneumonia)[known],
                                  keep_groups, n_resamples, seed))
    else:  # no image with a recorded cause: no recall by cause
        out = {f"{m}{end}": None for m in CAUSE_RECALLS for end in ("", "_ci_low", "_ci_high")}
    codes = class_codes(classes[known])
    for i, c in enumerate(CLASSES):
        if c in PNEUMONIA_CAUSES:
            out[f"{c}_support"] = int((codes == i).sum())
    out["unspecified_support"] = int((~known).sum())
    return out


def three_class_metrics(classes: Any, outputs: np.ndarray, groups: Any, n_resamples: int,
                        seed: int) -> dict[str, Any]:
    """evaluate.json's `cause_` keys of a three-class model (outputs (n, 3))."""
    y = class_codes(classes)
    flat = _flat(cause_metrics(y, outputs, groups, n_resamples, seed), PREFIX)
    flat[f"{PREFIX}undefined"] = ", ".join(m for m in CAUSE_METRICS
                                           if flat[f"{PREFIX}{m}"] is None)
    for i, c in enumerate(CLASSES):
        flat[f"{PREFIX}{c}_support"] = int((y == i).sum())
    return flat


def confusion3(classes: Any, outputs: np.ndarray) -> np.ndarray:
    """3x3 counts, rows = actual class, columns = predicted (argmax), in CLASSES order."""
    y = class_codes(classes)
    pred = np.asarray(outputs).argmax(axis=1)
    return weighted_confusion3(np.ones(y.size), y, pred)[0].astype(int)


def _cell(metrics: dict[str, Any], key: str) -> str:
    v = metrics.get(key)
    if v is None:
        return "n/a"
    return f"{v:.3f} [{metrics[key + '_ci_low']:.3f}, {metrics[key + '_ci_high']:.3f}]"


def recall_markdown(metrics: dict[str, Any]) -> str:
    """table3.md's section: which pneumonias are missed."""
    lines = [
        "## PNEUMONIA recall by cause",
        "",
        ("The paper: \"We do not know if the miss-classified images are bacterial or viral "
        "pneumonia.\" Recall of PNEUMONIA on each cause's test images (95 % patient-bootstrap "
        "interval):"),
        "",
        "| cause | test images | PNEUMONIA recall |",
        "|---|---|---|",
    ]
    for c in PNEUMONIA_CAUSES:
        lines.append(f"| {c} | {metrics.get(f'{c}_support', 0)} | "
                     f"{_cell(metrics, f'PNEUMONIA_recall_{c}')} |")
    return "\n".join(lines) + "\n"


def three_class_markdown(metrics: dict[str, Any], cm: np.ndarray) -> str:
    """table3.md's three-class section: the 3x3 matrix and the per-class table."""
    lines = [
        "## Three classes: normal / bacterial / viral",
        "",
        "Confusion matrix (rows = actual, columns = predicted, the most probable class):",
        "",
        "| actual \\ predicted | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
    ]
    for i, c in enumerate(CLASSES):
        lines.append(f"| {c} | " + " | ".join(str(int(v)) for v in cm[i]) + " |")
    lines += ["", "| class | precision | recall | F1 | ROC AUC (one vs rest) | support |",
              "|---|---|---|---|---|---|"]
    for c in CLASSES:
        cells = [_cell(metrics, f"{PREFIX}{c}_{m}") for m in ("precision", "recall", "f1",
                                                               "roc_auc")]
        lines.append(f"| {c} | " + " | ".join(cells)
                     + f" | {metrics.get(f'{PREFIX}{c}_support', 0)} |")
    macro = [_cell(metrics, f"{PREFIX}macro_{m}") for m in ("precision", "recall", "f1",
                                                             "roc_auc")]
    lines.append("| macro average | " + " | ".join(macro) + " | |")
    bv = _cell(metrics, f"{PREFIX}bacteria_vs_virus_accuracy")
    lines += [
        "",
        f"Accuracy over the three classes: {_cell(metrics, PREFIX + 'accuracy')}.",
        "",
        (f"Bacterial vs viral accuracy on the pneumonia test images: {bv} (the larger of "
        "P(bacteria) and P(virus) names the cause). Kermany et al. (Cell 2018) reported "
        f"{KERMANY_BACTERIA_VS_VIRUS} with a pretrained InceptionV3 trained on the two causes "
        "only, on their test set (no interval given)."),
    ]
    return "\n".join(lines) + "\n"


def plot_confusion3(cm: np.ndarray, path: Path, title: str) -> None:
    """The 3x3 confusion matrix as a figure (an MLflow artifact)."""
    plot_confusion(cm, path, title, labels=CLASSES, figsize=(5, 4.5))
