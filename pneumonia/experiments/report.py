"""`pneumonia report`: the ablation's finished experiments, aggregated with honest error bars.

For each experiment named `abl-...` (see `pneumonia.experiments.ablation`) the report reads, from
its git commit, params.yaml (-> arm and seed), metrics/evaluate.json (the threshold) and
metrics/predictions.csv (one probability per test image). It writes

- metrics/ablation/<experiment>.csv: each run's per-image test predictions (image, patient,
  label, probability), so the report can be recomputed from the repository alone (the tests do);
- metrics/ablation.json and metrics/ablation.md: per arm, each metric's mean over seeds with a
  95 % t-interval (the seed-to-seed spread); between each arm and the reference arm (the paper's:
  Augmentor balancing), the difference of the arms' mean metric with a 95 % interval from a
  two-level bootstrap on the same test images — patients resampled (all images of a patient
  together), then each arm's seeds resampled — and a word: `better`, `worse` or `within noise`.
  The answer in one sentence at the top is worded no stronger than those intervals.

The two-level bootstrap is hand-written (scipy has no hierarchical bootstrap); its patient level is
`pneumonia.stats.bootstrap.patient_weights`, the metrics `weighted_metrics`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pneumonia.errors import PipelineError
from pneumonia.experiments import revisions
from pneumonia.files import write_json
from pneumonia.params import arm_of, parse_params
from pneumonia.paths import EVALUATE_JSON, METRICS, PREDICTIONS_CSV

ABLATION_DIR = METRICS / "ablation"
ABLATION_JSON = METRICS / "ablation.json"
ABLATION_MD = METRICS / "ablation.md"
# What the report shows, in order: accuracy and ROC AUC carry the answer; the per-class cells are
# where balancing should act (NORMAL is the minority class).
REPORT_METRICS = ("accuracy", "roc_auc", "NORMAL_recall", "NORMAL_precision", "NORMAL_f1",
                  "PNEUMONIA_recall", "PNEUMONIA_f1")
ANSWER_METRICS = ("accuracy", "roc_auc")
REFERENCE_METHOD = "augmentor"  # the paper's balancing
N_RESAMPLES = 2000
RUN_COLUMNS = ["image_id", "patient_id", "actual", "probability"]


@dataclass(frozen=True)
class RunResult:
    """One finished experiment: its arm, seed, threshold and per-image test predictions."""

    name: str
    commit: str
    arm: str
    seed: int
    threshold: float
    predictions: pd.DataFrame  # RUN_COLUMNS, sorted by image_id


def _labels(predictions: pd.DataFrame) -> np.ndarray:
    return (predictions["actual"] == "PNEUMONIA").to_numpy(dtype=int)


def collect(prefix: str = "abl", cwd: Path | None = None) -> list[RunResult]:
    """The finished experiments whose name starts with `<prefix>-`, read from their commits."""
    found = {n: c for n, c in revisions.experiments(cwd).items() if n.startswith(f"{prefix}-")}
    if not found:
        raise PipelineError(
            f"no DVC experiment named {prefix}-* in this repository: run `pneumonia ablation` "
            "first (`dvc exp show` lists the experiments)."
        )
    runs = []
    for name, commit in sorted(found.items()):
        rev = revisions.Revision(name, commit)
        try:
            params = parse_params(yaml.safe_load(revisions.read_text(rev, "params.yaml", cwd)))
            evaluation = json.loads(revisions.read_text(rev, EVALUATE_JSON.as_posix(), cwd))
            preds = pd.read_csv(io.StringIO(revisions.read_text(rev, PREDICTIONS_CSV.as_posix(),
                                                                cwd)))
        except PipelineError as exc:
            raise PipelineError(f"experiment {name}: {exc}") from None
        missing = sorted(set(RUN_COLUMNS) - set(preds.columns))
        if missing:
            raise PipelineError(
                f"experiment {name}: {PREDICTIONS_CSV} lacks column(s) {', '.join(missing)} "
                "(written by an older evaluate stage): re-run that experiment."
            )
        runs.append(RunResult(name, commit, arm_of(params), params.train.seed,
                              float(evaluation["threshold"]),
                              preds[RUN_COLUMNS].sort_values("image_id", ignore_index=True)))
    return runs


def _check_same_images(runs: list[RunResult]) -> None:
    first = runs[0].predictions
    for run in runs[1:]:
        p = run.predictions
        if len(p) != len(first) or not (p["image_id"].to_numpy() == first["image_id"].to_numpy()
                                         ).all() or not (p["actual"] == first["actual"]).all():
            raise PipelineError(
                f"experiments {runs[0].name} and {run.name} were evaluated on different test "
                "images: a paired comparison needs the same test set. Re-run them on one dataset."
            )


def _t_interval(values: list[float]) -> tuple[float | None, float | None]:
    """95 % t-interval of the mean over seeds (None with fewer than 2 finite values).

    Clipped to [0, 1], the range of every REPORT_METRICS entry (proportions and ROC AUC): with 3
    seeds t(0.975, 2) = 4.30, so a widely spread metric gives an unclipped bound such as a recall
    of 1.35 (seen in the committed CPU grid), which no run can reach.
    """
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size < 2:
        return None, None
    half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size)
    return float(max(0.0, v.mean() - half)), float(min(1.0, v.mean() + half))


def summarize(runs: list[RunResult], seed: int = 0, n_resamples: int = N_RESAMPLES) -> dict:
    """The report's numbers (metrics/ablation.json) from the runs' predictions alone."""
    from pneumonia.stats.bootstrap import (
        patient_weights,
        percentile_interval,
        point_metrics,
        weighted_metrics,
    )
    from pneumonia.stats.significance import paired_verdict

    if not runs:
        raise PipelineError("no finished ablation runs to report on.")
    _check_same_images(runs)
    first = runs[0].predictions
    y = _labels(first)
    weights = patient_weights(first["patient_id"].to_numpy(), len(y), n_resamples, seed)

    by_arm: dict[str, list[RunResult]] = {}
    for run in sorted(runs, key=lambda r: (r.arm, r.seed)):
        by_arm.setdefault(run.arm, []).append(run)
    per_run, boot = {}, {}
    for run in runs:
        prob = run.predictions["probability"].to_numpy(dtype=float)
        per_run[run.name] = {"arm": run.arm, "seed": run.seed, "commit": run.commit,
                             "threshold": run.threshold,
                             **{m: _finite(v) for m, v in
                                point_metrics(y, prob, run.threshold).items()
                                if m in REPORT_METRICS}}
        boot[run.name] = weighted_metrics(weights, y, prob, run.threshold)

    arms = {}
    for arm, members in by_arm.items():
        entry: dict[str, Any] = {"seeds": [r.seed for r in members],
                                 "runs": [r.name for r in members]}
        for m in REPORT_METRICS:
            values = [per_run[r.name][m] for r in members]
            finite = [v for v in values if v is not None]
            low, high = _t_interval(values)
            entry[m] = {"mean": float(np.mean(finite)) if finite else None,
                        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                        "ci_low": low, "ci_high": high, "values": values}
        arms[arm] = entry

    reference = next((a for a in arms if f"/{REFERENCE_METHOD}/" in a), min(arms))
    rng = np.random.default_rng(seed + 1)

    def arm_draws(arm: str, metric: str) -> np.ndarray:
        """(B,) the arm's mean metric per resample: patients resampled (same for every arm),
        then the arm's seeds resampled with replacement."""
        stacked = np.stack([boot[r.name][metric] for r in by_arm[arm]])  # (k, B)
        pick = rng.integers(0, stacked.shape[0], size=(n_resamples, stacked.shape[0]))
        return np.nanmean(stacked[pick, np.arange(n_resamples)[:, None]], axis=1)

    comparisons = {}
    for arm in arms:
        if arm == reference:
            continue
        entry = {}
        for m in REPORT_METRICS:
            a, b = arms[reference][m]["mean"], arms[arm][m]["mean"]
            low, high, _ = percentile_interval(arm_draws(arm, m) - arm_draws(reference, m))
            entry[m] = {"delta": None if a is None or b is None else b - a,
                        "ci_low": _finite(low), "ci_high": _finite(high),
                        "verdict": paired_verdict(low, high)}
        comparisons[arm] = entry
    return {"reference_arm": reference, "n_test_images": len(y),
            "n_test_patients": int(first["patient_id"].nunique()), "n_resamples": n_resamples,
            "answer": answer(reference, arms, comparisons), "arms": arms,
            "comparisons": comparisons, "runs": per_run}


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def answer(reference: str, arms: dict, comparisons: dict) -> str:
    """The report's first sentence: what differs from the reference arm beyond noise."""
    seeds = sorted({len(a["seeds"]) for a in arms.values()})
    n = f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''}" if len(seeds) == 1 else "several seeds"
    if not comparisons:
        return f"Only one arm ({reference}) was run: there is nothing to compare."
    moved = []
    for arm, entry in comparisons.items():
        for m in ANSWER_METRICS:
            if entry[m]["verdict"] != "within noise":
                moved.append(f"{arm} is {entry[m]['verdict']} on {m} "
                             f"({entry[m]['delta']:+.3f}, 95 % CI {entry[m]['ci_low']:+.3f} to "
                             f"{entry[m]['ci_high']:+.3f})")
    if not moved:
        return (f"No arm differs from the paper's arm ({reference}) beyond noise in test "
                f"accuracy or ROC AUC ({n} per arm; 95 % intervals over test patients and "
                "seeds): at this scale the data cannot tell these choices apart.")
    return (f"Against the paper's arm ({reference}), with {n} per arm: " + "; ".join(moved)
            + ". Every other difference in accuracy and ROC AUC is within noise.")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def markdown(summary: dict, header: str = "") -> str:
    """metrics/ablation.md."""
    lines = ["# Ablation: the backbone or the balancing?", "", f"**{summary['answer']}**", ""]
    if header:
        lines += [header, ""]
    lines += [(f"Test set: {summary['n_test_images']} images of {summary['n_test_patients']} "
               "patients. Per arm: mean over seeds [95 % t-interval over seeds, clipped to "
               "[0, 1]]. Differences: "
               f"arm minus the reference arm `{summary['reference_arm']}`, 95 % interval from "
               f"{summary['n_resamples']} two-level bootstrap resamples (patients, then seeds)."),
              "", "| arm | seeds | " + " | ".join(REPORT_METRICS) + " |",
              "|---|---|" + "---:|" * len(REPORT_METRICS)]
    for arm, entry in summary["arms"].items():
        cells = []
        for m in REPORT_METRICS:
            e = entry[m]
            ci = "" if e["ci_low"] is None else f" [{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}]"
            cells.append(_fmt(e["mean"]) + ci)
        lines.append(f"| {arm} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    if summary["comparisons"]:
        lines += ["", f"## Differences from `{summary['reference_arm']}`", "",
                  "| arm | " + " | ".join(REPORT_METRICS) + " |",
                  "|---|" + "---:|" * len(REPORT_METRICS)]
        for arm, entry in summary["comparisons"].items():
            cells = [f"{e['delta']:+.3f} [{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}] "
                     f"{e['verdict']}" if e["delta"] is not None else "n/a"
                     for e in (entry[m] for m in REPORT_METRICS)]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| experiment | arm | seed | threshold | accuracy | roc_auc |",
              "|---|---|---:|---:|---:|---:|"]
    for name, r in summary["runs"].items():
        lines.append(f"| {name} | {r['arm']} | {r['seed']} | {r['threshold']:g} | "
                     f"{_fmt(r['accuracy'])} | {_fmt(r['roc_auc'])} |")
    return "\n".join(lines) + "\n"


def load_committed(folder: Path = ABLATION_DIR) -> list[RunResult]:
    """The runs as `write_report` saved them (metrics/ablation/*.csv + ablation.json)."""
    meta = json.loads(ABLATION_JSON.read_text(encoding="utf-8"))["runs"]
    runs = []
    for name, r in sorted(meta.items()):
        preds = pd.read_csv(folder / f"{name}.csv", dtype={"patient_id": str})
        runs.append(RunResult(name, r["commit"], r["arm"], r["seed"], r["threshold"], preds))
    return runs


def write_report(prefix: str = "abl", header: str = "") -> dict:
    """Collect the finished experiments and write metrics/ablation{.json,.md,/}."""
    runs = collect(prefix)
    summary = summarize(runs)
    ABLATION_DIR.mkdir(parents=True, exist_ok=True)
    for old in ABLATION_DIR.glob("*.csv"):
        old.unlink()
    for run in runs:
        run.predictions.to_csv(ABLATION_DIR / f"{run.name}.csv", index=False,
                               lineterminator="\n")
    write_json(summary, ABLATION_JSON)
    ABLATION_MD.write_text(markdown(summary, header), encoding="utf-8")
    print(markdown(summary, header))
    print(f"wrote {ABLATION_MD}, {ABLATION_JSON} and {ABLATION_DIR}/")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", default="abl", help="experiment name prefix (default abl)")
    parser.add_argument("--header", default="",
                        help="a line under the answer: command, machine, date of the runs")


def command(args: argparse.Namespace) -> int:
    write_report(args.prefix, args.header)
    return 0
