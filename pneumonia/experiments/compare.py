"""`pneumonia compare [BASE] [HEAD]`: is HEAD's model really better than BASE's, or is it noise?

Both revisions (git revisions, DVC experiment names, or `workspace`; see `revisions`) must hold
metrics/predictions.csv for the SAME test images (committed by the evaluate stage) and
metrics/evaluate.json (its `threshold`: each model is scored at its own decision threshold, the
one its predictions.csv `predicted` column uses). Because both models see the same images, the
comparison is paired:

- each metric's delta = HEAD - BASE with a 95 % interval from a patient-grouped bootstrap in which
  both models are scored on the same resampled patients (`stats.bootstrap.paired_deltas`);
- the PRIMARY metrics, accuracy and ROC AUC, get a word: `better` / `worse` when their bootstrap
  p-value, Holm-corrected over the primary metrics, is below 0.05, else `within noise`. The other
  metrics are descriptive (interval, no word): testing 9 metrics each at 5 % called two equally
  good models different in ~15 % of comparisons;
- McNemar's exact test on the images one model gets right and the other wrong (accuracy), and
  DeLong's test of the two correlated ROC AUCs. Both treat images as independent; the word comes
  from the patient bootstrap, which does not.
- PNEUMONIA recall on the bacterial and on the viral test images apart (predictions.csv's
  `class`), paired the same way: which pneumonias a change gains or loses.

The output is markdown (stdout, and `--out FILE`), e.g. for a pull-request comment. Python callers
(a registry gate) use `compare_predictions` on two predictions tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.evaluation.paper import METRIC_NAMES
from pneumonia.experiments import revisions
from pneumonia.experiments.predictions import parse_predictions
from pneumonia.formatting import number, p_value
from pneumonia.paths import EVALUATE_JSON, LABELS, PREDICTIONS_CSV, UNSPECIFIED
from pneumonia.stats.bootstrap import paired_deltas
from pneumonia.stats.multiclass import paired_cause_recalls
from pneumonia.stats.significance import delong_test, holm, mcnemar_exact

N_RESAMPLES = 2000
# Primary metrics: the family a word (better / worse) is given for, Holm-corrected.
PRIMARY = ("accuracy", "roc_auc")
ALPHA = 0.05
# The metrics compared, named as in table3.md.
NAMES = {k: METRIC_NAMES[k] for k in (
    "accuracy", "NORMAL_precision", "NORMAL_recall", "NORMAL_f1", "PNEUMONIA_precision",
    "PNEUMONIA_recall", "PNEUMONIA_f1", "roc_auc", "pr_auc")}
NAMES |= {f"PNEUMONIA_recall_{c}": f"PNEUMONIA recall, {c} images" for c in ("bacteria", "virus")}


def check_same_images(base: pd.DataFrame, head: pd.DataFrame, labels: tuple[str, str]) -> None:
    """Refuse a comparison of predictions on different test images (or labels, patients), or of
    a table that lists an image twice."""
    for label, frame in zip(labels, (base, head), strict=True):
        dup = frame["image_id"][frame["image_id"].duplicated()]
        if len(dup):
            raise PipelineError(
                f"the predictions of {label} list {dup.nunique()} test image(s) more than once "
                f"(e.g. {', '.join(map(str, dup.unique()[:3]))}): one row per image is needed. "
                "Re-run the evaluate stage there (`dvc repro evaluate`), or drop the duplicates."
            )
    a, b = set(base["image_id"]), set(head["image_id"])
    if a != b:
        only_a, only_b = sorted(a - b), sorted(b - a)
        raise PipelineError(
            f"{labels[0]} and {labels[1]} were evaluated on different test images "
            f"({len(a)} vs {len(b)}; {len(only_a)} only in {labels[0]}, e.g. "
            f"{', '.join(only_a[:3]) or '-'}; {len(only_b)} only in {labels[1]}, e.g. "
            f"{', '.join(only_b[:3]) or '-'}). A paired comparison needs the same test set: "
            "re-run one of them on the other's data (`dvc repro`)."
        )
    for column in ("actual", "patient_id"):
        differ = base[column].to_numpy() != head[column].to_numpy()
        if differ.any():
            example = base["image_id"][differ].iloc[0]
            raise PipelineError(
                f"{labels[0]} and {labels[1]} disagree on `{column}` for {int(differ.sum())} test "
                f"image(s) (e.g. {example}): the datasets differ. Re-run one of them on the "
                "other's data (`dvc repro`)."
            )


def compare_predictions(
    base: pd.DataFrame,
    head: pd.DataFrame,
    threshold_base: float = 0.5,
    threshold_head: float = 0.5,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    labels: tuple[str, str] = ("base", "head"),
) -> dict[str, Any]:
    """The paired comparison of two predictions tables (predictions.csv's columns) on the same
    images: ``{"n_images", "n_patients", "thresholds", "primary", "metrics": {metric: {a, b,
    delta, ci_low, ci_high, undefined_share, pvalue, primary, pvalue_holm, verdict}},
    "mcnemar": {...}, "delong": {...}}``; delta = head - base, each model at its own threshold.
    ``verdict`` is better / worse / within noise for the PRIMARY metrics (Holm over them) and
    ``descriptive`` for the others."""
    if n_resamples < 200:
        raise PipelineError("--resamples must be at least 200 (2000 recommended).")
    base = base.sort_values("image_id", ignore_index=True)
    head = head.sort_values("image_id", ignore_index=True)
    check_same_images(base, head, labels)
    y = (base["actual"] == LABELS[1]).to_numpy(dtype=int)
    pa = base["probability"].to_numpy(dtype=float)
    pb = head["probability"].to_numpy(dtype=float)
    groups = base["patient_id"].astype(str).to_numpy()
    deltas = paired_deltas(y, pa, pb, groups, threshold_base, threshold_head, n_resamples, seed)
    mcnemar = mcnemar_exact(y, (pa >= threshold_base).astype(int), (pb >= threshold_head).astype(int))
    try:
        delong = delong_test(y, pa, pb)
    except ValueError as exc:  # fewer than 2 images of a class
        delong = {"error": str(exc)}
    metrics = {m: {**deltas[m], "primary": m in PRIMARY, "pvalue_holm": None,
                   "verdict": "descriptive"} for m in NAMES if m in deltas}
    if "class" in base.columns and "class" in head.columns:
        classes = base["class"].astype(str).to_numpy()
        known = classes != UNSPECIFIED  # own data without a recorded cause: in no cause
        try:
            causes = paired_cause_recalls(classes[known], (pa >= threshold_base)[known],
                                          (pb >= threshold_head)[known], groups[known],
                                          n_resamples, seed) if known.any() else {}
        except ValueError as exc:  # a class value outside normal / bacteria / virus
            raise PipelineError(f"{labels[0]} / {labels[1]}: predictions.csv `class`: {exc}. "
                                "Re-run the evaluate stage there.") from None
        metrics |= {m: {**row, "primary": False, "pvalue_holm": None, "verdict": "descriptive"}
                    for m, row in causes.items()}
    testable = [m for m in PRIMARY if math.isfinite(metrics[m]["pvalue"])]
    for m, p in zip(testable, holm([metrics[m]["pvalue"] for m in testable]), strict=True):
        metrics[m]["pvalue_holm"] = float(p)
    for m in PRIMARY:
        row = metrics[m]
        p = row["pvalue_holm"]
        row["verdict"] = ("within noise" if p is None or p >= ALPHA
                          else "better" if row["delta"] > 0 else "worse")
    return {
        "labels": list(labels),
        "n_images": int(y.size),
        "n_patients": len(set(groups)),
        "thresholds": [threshold_base, threshold_head],
        "n_resamples": n_resamples,
        "seed": seed,
        "primary": list(PRIMARY),
        "metrics": metrics,
        "mcnemar": mcnemar,
        "delong": delong,
    }


def _delta(row: dict[str, Any]) -> str:
    text = (f"{number(row['delta'], sign=True)} [{number(row['ci_low'], sign=True)}, "
            f"{number(row['ci_high'], sign=True)}]")
    if row.get("undefined_share"):
        text += f" ({row['undefined_share']:.0%} of resamples undefined)"
    return text


def markdown(result: dict[str, Any]) -> str:
    """The comparison as markdown (what the command prints and `--out` writes)."""
    a, b = result["labels"]
    ta, tb = result["thresholds"]
    m = result["metrics"]
    primary = [k for k in m if m[k]["primary"]]
    better = [NAMES[k] for k in primary if m[k]["verdict"] == "better"]
    worse = [NAMES[k] for k in primary if m[k]["verdict"] == "worse"]
    names = " and ".join(NAMES[k] for k in primary)
    if not better and not worse:
        summary = (f"Neither {' nor '.join(NAMES[k] for k in primary)} changed beyond noise "
                   "(Holm-corrected, 5 %): this does not "
                   "show the models are equal, only that this test set cannot tell them apart.")
    else:
        parts = [f"better on {', '.join(better)}" if better else "",
                 f"worse on {', '.join(worse)}" if worse else ""]
        summary = (f"{b} is " + " and ".join(p for p in parts if p) +
                   " (Holm-corrected p < 0.05 over the primary metrics).")
    lines = [
        f"## Paired comparison: {b} vs {a}",
        "",
        (f"{result['n_images']} test images of {result['n_patients']} patients, the same for "
        f"both; thresholds {ta:g} ({a}) and {tb:g} ({b}). Delta = {b} - {a}, 95 % interval from "
        f"a paired patient-grouped bootstrap ({result['n_resamples']} resamples, seed "
        f"{result['seed']}). Primary metrics ({names}): `better` / `worse` when the bootstrap "
        "p-value, Holm-corrected over the primary metrics, is below 0.05, else `within noise`. "
        "The other metrics are descriptive: an interval, no verdict (with nine metrics each "
        "tested at 5 %, two equally good models would often differ on one by chance)."),
        "",
        f"**{summary}**",
        "",
        f"| primary metric | {a} | {b} | delta [95 % CI] | p | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in primary:
        row = m[k]
        holm_p = "n/a" if row["pvalue_holm"] is None else p_value(row["pvalue_holm"])
        lines.append(f"| {NAMES[k]} | {number(row['a'])} | {number(row['b'])} | {_delta(row)} | "
                     f"{p_value(row['pvalue'])} | {holm_p} | {row['verdict']} |")
    lines += ["", f"| descriptive metric | {a} | {b} | delta [95 % CI] |", "|---|---|---|---|"]
    for k, row in m.items():
        if not row["primary"]:
            lines.append(f"| {NAMES[k]} | {number(row['a'])} | {number(row['b'])} | "
                         f"{_delta(row)} |")
    mc = result["mcnemar"]
    lines += [
        "",
        (f"- McNemar's exact test (accuracy): {mc['b']} image(s) right in {a} only, {mc['c']} "
        f"right in {b} only; p = {p_value(mc['pvalue'])}."),
    ]
    dl = result["delong"]
    if "error" in dl:
        lines.append(f"- DeLong's test (ROC AUC): not computed ({dl['error']}).")
    elif dl.get("note"):
        lines.append(f"- DeLong's test (ROC AUC): delta {number(dl['delta'], sign=True)}; "
                     "not testable "
                     f"({dl['note']}).")
    else:
        lines.append(
            f"- DeLong's test (ROC AUC): delta {number(dl['delta'], sign=True)} "
            f"[{number(dl['ci_low'], sign=True)}, {number(dl['ci_high'], sign=True)}], "
            f"p = {p_value(dl['pvalue'])}."
        )
    lines.append(
        "- McNemar and DeLong treat images as independent; several images can come from one "
        "patient, so the verdict column uses the patient-grouped bootstrap instead."
    )
    return "\n".join(lines) + "\n"


def read_revision(name: str, cwd: Path | None = None) -> tuple[str, pd.DataFrame, float]:
    """(label, predictions, threshold) of a revision; PipelineError naming what is missing."""
    rev = revisions.resolve(name, cwd)
    preds = parse_predictions(revisions.read_text(rev, PREDICTIONS_CSV.as_posix(), cwd),
                              f"{PREDICTIONS_CSV} of {rev.label}")
    try:
        evaluation = json.loads(revisions.read_text(rev, EVALUATE_JSON.as_posix(), cwd))
        threshold = float(evaluation["threshold"])
    except (ValueError, KeyError, TypeError):
        raise PipelineError(
            f"{EVALUATE_JSON} of {rev.label} has no readable `threshold`: re-run the evaluate "
            "stage there (`dvc repro evaluate`)."
        ) from None
    return rev.label, preds, threshold


def compare_revisions(base: str, head: str, n_resamples: int = N_RESAMPLES, seed: int = 0,
                      cwd: Path | None = None) -> dict[str, Any]:
    """`compare_predictions` for two revisions (git revision, DVC experiment or `workspace`)."""
    label_a, preds_a, ta = read_revision(base, cwd)
    label_b, preds_b, tb = read_revision(head, cwd)
    return compare_predictions(preds_a, preds_b, ta, tb, n_resamples, seed, (label_a, label_b))


