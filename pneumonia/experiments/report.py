"""`pneumonia report`: the ablation's finished experiments, aggregated with honest error bars.

For each experiment named `abl-...` (see `pneumonia.experiments.ablation`) the report reads, from
its git commit, params.yaml (-> arm and seed), metrics/evaluate.json (the threshold) and
metrics/predictions.csv (one probability per test image). It writes

- metrics/ablation/<experiment>.csv: each run's per-image test predictions (image, patient,
  label, probability), so the report can be recomputed from the repository alone
  (`pneumonia report --from-committed`; a test does it), or extended with more seeds
  (`pneumonia report --extend`: the new experiments beside the committed runs);
- metrics/ablation.json and metrics/ablation.md: per arm, each metric's mean over seeds with a
  95 % t-interval; each arm minus the reference arm (the paper's choices) and, over a complete
  grid, main effects and interactions with seed-level intervals and Holm-corrected words
  (`summarize`, with the statistics of pneumonia.experiments.ablation_stats), worded by
  pneumonia.experiments.ablation_markdown no stronger than the numbers allow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.experiments import revisions
from pneumonia.experiments.ablation_markdown import answer, markdown
from pneumonia.experiments.ablation_stats import (
    ALPHA,
    ANSWER_METRICS,
    LEVEL,
    N_RESAMPLES,
    REPORT_METRICS,
    RUN_COLUMNS,
    RunResult,
    arm_contrasts,
    check_same_images,
    finite_or_none,
    kind_of,
    pneumonia_labels,
    power,
    reference_arm,
    seed_t_interval,
)
from pneumonia.experiments.predictions import parse_predictions, read_results
from pneumonia.files import write_json
from pneumonia.params import arm_of
from pneumonia.paths import METRICS
from pneumonia.stats.bootstrap import patient_weights, point_metrics, weighted_metrics
from pneumonia.stats.seeds import seed_contrast
from pneumonia.stats.significance import holm

ABLATION_DIR = METRICS / "ablation"
ABLATION_JSON = METRICS / "ablation.json"
ABLATION_MD = METRICS / "ablation.md"


def collect(prefix: str = "abl", cwd: Path | None = None) -> list[RunResult]:
    """The finished experiments whose name starts with `<prefix>-`, read from their commits."""
    runs = []
    for rev in revisions.named_experiments(prefix, "pneumonia ablation", cwd):
        res, _ = read_results(rev, cwd)
        runs.append(RunResult(rev.name, rev.commit, arm_of(res.params), res.params.train.seed,
                              float(res.evaluation["threshold"]), res.predictions[RUN_COLUMNS]))
    return runs


def summarize(runs: list[RunResult], seed: int = 0, n_resamples: int = N_RESAMPLES,
              header: str = "", with_power: bool = True) -> dict:
    """The report's numbers (metrics/ablation.json) from the runs' predictions alone.
    `with_power=False` leaves out the power line (a Monte Carlo search over seeds per arm, the
    slowest part: simulations that call this per simulated grid do not need it)."""
    if not runs:
        raise PipelineError("no finished ablation runs to report on.")
    check_same_images(runs)
    first = runs[0].predictions
    y = pneumonia_labels(first)
    # ONE patient resample matrix for every run: the arms are compared on the same resampled
    # patients (paired), so their errors on the same images cancel in a difference.
    weights = patient_weights(first["patient_id"].to_numpy(), len(y), n_resamples, seed)
    n_patients = int(first["patient_id"].nunique())

    by_arm: dict[str, list[RunResult]] = {}
    for run in sorted(runs, key=lambda r: (r.arm, r.seed)):
        by_arm.setdefault(run.arm, []).append(run)
    per_run, boot = {}, {}
    for run in runs:
        prob = run.predictions["probability"].to_numpy(dtype=float)
        per_run[run.name] = {"arm": run.arm, "seed": run.seed, "commit": run.commit,
                             "threshold": run.threshold,
                             **{m: finite_or_none(v) for m, v in
                                point_metrics(y, prob, run.threshold).items()
                                if m in REPORT_METRICS}}
        draws = weighted_metrics(weights, y, prob, run.threshold)
        boot[run.name] = {m: draws[m] for m in REPORT_METRICS}

    arms: dict[str, Any] = {}
    for arm, members in by_arm.items():
        entry: dict[str, Any] = {"seeds": [r.seed for r in members],
                                 "runs": [r.name for r in members]}
        for m in REPORT_METRICS:
            values = [per_run[r.name][m] for r in members]
            finite = [v for v in values if v is not None]
            low, high = seed_t_interval(values)
            entry[m] = {"mean": float(np.mean(finite)) if finite else None,
                        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                        "ci_low": low, "ci_high": high, "values": values}
        arms[arm] = entry

    reference = reference_arm(list(arms))
    contrasts, main_note = arm_contrasts(sorted(arms), reference)
    comparisons: dict[str, Any] = {}
    for name, coef in contrasts.items():
        entry = {}
        for m in REPORT_METRICS:
            values = [arms[a][m]["values"] for a in coef]
            draws = [np.stack([boot[r.name][m] for r in by_arm[a]]) for a in coef]
            res = seed_contrast(values, list(coef.values()), draws, LEVEL, n_patients - 1)
            entry[m] = {"delta": finite_or_none(res["estimate"]), "ci_low": finite_or_none(res["ci_low"]),
                        "ci_high": finite_or_none(res["ci_high"]), "se_seed": finite_or_none(res["se_seed"]),
                        "se_test": finite_or_none(res["se_test"]), "df": finite_or_none(res["df"]),
                        "pvalue": finite_or_none(res["pvalue"]),
                        "undefined_share": res["undefined_share"], "note": res["note"]}
        kind = kind_of(name, arms)
        comparisons[name] = {"arms": coef, "main_effect": kind == "main effect", "kind": kind,
                             "metrics": entry}

    # Holm over every primary-metric comparison: the family the answer's words come from.
    family = [(name, m) for name in comparisons for m in ANSWER_METRICS]
    pvalues = [comparisons[n]["metrics"][m]["pvalue"] for n, m in family]
    testable = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(family)
    if testable:
        for i, p in zip(testable, holm([pvalues[i] for i in testable]), strict=True):
            adjusted[i] = float(p)
    for (name, m), p in zip(family, adjusted, strict=True):
        row = comparisons[name]["metrics"][m]
        row["pvalue_holm"] = p
        interaction = comparisons[name]["kind"] == "interaction"
        row["verdict"] = ("within noise" if p is None or p >= ALPHA
                          else "interaction" if interaction
                          else "better" if row["delta"] > 0 else "worse")
    summary = {"reference_arm": reference, "n_test_images": len(y),
               "n_test_patients": int(first["patient_id"].nunique()), "n_resamples": n_resamples,
               "level": LEVEL, "header": header, "main_effects_note": main_note,
               "n_tests": len(testable),
               "power": power(arms, comparisons) if with_power else None}
    summary["answer"] = answer(reference, arms, comparisons, len(testable))
    return {**summary, "arms": arms, "comparisons": comparisons, "runs": per_run}


def load_committed(folder: Path = ABLATION_DIR) -> list[RunResult]:
    """The runs as `write_report` saved them (metrics/ablation/*.csv + ablation.json)."""
    if not ABLATION_JSON.is_file():
        raise PipelineError(f"{ABLATION_JSON} not found: run `pneumonia report` first (it reads "
                            "the finished `abl-*` experiments).")
    meta = json.loads(ABLATION_JSON.read_text(encoding="utf-8"))["runs"]
    runs = []
    for name, r in sorted(meta.items()):
        path = folder / f"{name}.csv"
        if not path.is_file():
            raise PipelineError(f"{path} not found, but {ABLATION_JSON} lists run {name}: "
                                "restore it from git (`git checkout -- metrics/ablation`).")
        preds = parse_predictions(path.read_text(encoding="utf-8"), str(path))
        runs.append(RunResult(name, r["commit"], r["arm"], r["seed"], r["threshold"], preds))
    return runs


def committed_header(report_json: Path = ABLATION_JSON) -> str:
    """The header line of a committed report (its JSON's `header`; "" when none)."""
    if not report_json.is_file():
        return ""
    return str(json.loads(report_json.read_text(encoding="utf-8")).get("header", ""))


def selection_note(summary: dict, runs: list[RunResult], recipe_dir: Path = METRICS / "recipe",
                   recipe_json: Path = METRICS / "recipe.json") -> str:
    """A label for reference-arm runs that ARE the recipe search's runs of a candidate chosen on
    the test set (the same per-image predictions): their mean carries that choice's winner's
    bias. "" when there is none, or the recipe was chosen on validation."""
    if not recipe_json.is_file():
        return ""
    doc = json.loads(recipe_json.read_text(encoding="utf-8"))
    if doc.get("chosen_on", "test") != "test":
        return ""
    chosen = doc.get("chosen", doc.get("best_by_accuracy"))
    reference = summary["reference_arm"]
    same = []
    for run in runs:
        if run.arm != reference:
            continue
        mine = run.predictions.sort_values("image_id", ignore_index=True)
        for name, meta in sorted(doc.get("runs", {}).items()):
            path = recipe_dir / f"{name}.csv"
            if meta.get("candidate") != chosen or not path.is_file():
                continue
            theirs = pd.read_csv(path, dtype={"patient_id": str, "image_id": str})
            theirs = theirs.sort_values("image_id", ignore_index=True)
            if (len(theirs) == len(mine) and (theirs["image_id"] == mine["image_id"]).all()
                    and np.array_equal(theirs["probability"].to_numpy(float),
                                       mine["probability"].to_numpy(float))):
                same.append(f"{run.name} = {name}")
    if not same:
        return ""
    return (f"Chosen after peeking: the reference arm's runs {', '.join(same)} are the recipe "
            f"search's runs of `{chosen}`, which metrics/recipe.md chose on the TEST set. The "
            "reference arm's mean therefore carries a winner's bias, and its comparisons are "
            "post-selection (computed after a choice made on the same test images).")


def _write(summary: dict, runs: list[RunResult] | None) -> None:
    if runs is not None:
        ABLATION_DIR.mkdir(parents=True, exist_ok=True)
        for old in ABLATION_DIR.glob("*.csv"):
            old.unlink()
        for run in runs:
            run.predictions.to_csv(ABLATION_DIR / f"{run.name}.csv", index=False,
                                   lineterminator="\n")
    write_json(summary, ABLATION_JSON)
    ABLATION_MD.write_text(markdown(summary), encoding="utf-8")
    print(markdown(summary))
    print(f"wrote {ABLATION_MD}, {ABLATION_JSON}" + (f" and {ABLATION_DIR}/" if runs else ""))


def extended(committed: list[RunResult], new: list[RunResult]) -> list[RunResult]:
    """The committed runs plus the new experiments (`pneumonia report --extend`): more seeds
    added to a committed grid without re-running it, say after DVC's run cache was lost. A new
    experiment may not reuse a committed run's name: that would overwrite its predictions."""
    clash = sorted({r.name for r in committed} & {r.name for r in new})
    if clash:
        raise PipelineError(
            f"--extend: experiment(s) {', '.join(clash)} are already in {ABLATION_DIR}/: the "
            "committed run would be overwritten. Remove those experiments (`dvc exp remove "
            "NAME`) or drop --extend to report the experiments alone.")
    return sorted(committed + new, key=lambda r: r.name)


def write_report(prefix: str = "abl", header: str = "", extend: bool = False) -> dict:
    """Collect the finished experiments and write metrics/ablation{.json,.md,/}; with `extend`,
    together with the runs the committed report already holds (their predictions are kept)."""
    runs = collect(prefix)
    if extend:
        runs = extended(load_committed(), runs)
        header = header or committed_header()
    summary = summarize(runs, header=header)
    summary["selection_note"] = selection_note(summary, runs)
    _write(summary, runs)
    return summary


def rewrite_committed(header: str | None = None) -> dict:
    """Recompute metrics/ablation.json and .md from the committed per-run predictions
    (metrics/ablation/*.csv), keeping the committed header unless ``header`` is given."""
    header = committed_header() if header is None else header
    runs = load_committed()
    summary = summarize(runs, header=header)
    summary["selection_note"] = selection_note(summary, runs)
    _write(summary, None)
    return summary
