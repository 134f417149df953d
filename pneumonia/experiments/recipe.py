"""`pneumonia recipe`: the search for a CPU recipe — candidate recipes x seeds as queued DVC
experiments — and its report, metrics/recipe.md / .json.

Each candidate (pneumonia.experiments.presets.CANDIDATES) runs once per seed of `recipe.seeds` as
`rcp-<candidate>-s<seed>`. The report reads every finished `rcp-*` experiment from its git commit
(params.yaml, metrics/evaluate.json, metrics/train.json, metrics/predictions.csv) and gives, per
candidate: mean, standard deviation, 95 % t-interval over seeds and range of test accuracy, ROC
AUC and the two recalls; the training time per run; whether it meets the recipe's targets (seed
SD of accuracy <= 0.015 and of NORMAL recall <= 0.05, mean accuracy >= 0.92, mean ROC AUC >= 0.97,
<= 15 min of training); and, against the chosen candidate, Welch's t-test over seeds
(scipy.stats.ttest_ind, equal_var=False): the unit that varies between recipes is the training
run, so candidates are compared over seeds, not over test images. Each run's test predictions
are kept in metrics/recipe/<experiment>.csv and its validation predictions (the evaluate stage's
metrics/predictions_val.csv, the validation originals) in <experiment>.val.csv: the report
recomputes from the repository alone.

**Choosing without peeking** (``choose``): the candidate is chosen on VALIDATION — the highest
mean validation accuracy over seeds (ties: higher validation ROC AUC, then lower validation
loss), over the seeds that have validation predictions for every candidate — and its TEST numbers
are then the untouched estimate. When no run has validation predictions (the committed 2026-11-30
search kept none) the report falls back to choosing on the test set, says so at the top and
labels the `vs chosen` column post-selection: the chosen mean carries a winner's bias and those
p-values were computed after a choice made on the same numbers. When some runs have them but no
seed has them for every candidate, it makes no choice and says why.

`pneumonia recipe --from-runs FOLDER ...` (pneumonia.experiments.recipe_runs) builds the same
report from run folders instead of experiments, into metrics/recipe-rerun{/,.json,.md}: the
search re-run with validation predictions, compared with metrics/recipe.md's test-set choice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.experiments import revisions
from pneumonia.experiments.ablation_stats import ALPHA, POWER, POWER_DIFFERENCE
from pneumonia.experiments.predictions import COLUMNS, parse_predictions, read_results
from pneumonia.experiments.presets import CANDIDATES
from pneumonia.experiments.report import committed_header
from pneumonia.files import write_json
from pneumonia.params import RecipeParams, load_params
from pneumonia.paths import METRICS, PREDICTIONS_VAL_CSV, TRAIN_JSON
from pneumonia.stats.bootstrap import point_metrics
from pneumonia.stats.seeds import seeds_needed, t_interval

VAL_SUFFIX = ".val.csv"  # metrics/recipe/<experiment>.val.csv
VALIDATION_METRICS = ("val_accuracy", "val_roc_auc", "val_loss")

PREFIX = "rcp"
RECIPE_DIR = METRICS / "recipe"
RECIPE_JSON = METRICS / "recipe.json"
RECIPE_MD = METRICS / "recipe.md"
METRICS_SHOWN = ("accuracy", "roc_auc", "NORMAL_recall", "PNEUMONIA_recall")
RUN_COLUMNS = list(COLUMNS)
# The targets of the recipe (issue 21): seed-to-seed spread, level, time per run.
TARGETS = {"accuracy_sd": 0.015, "NORMAL_recall_sd": 0.05, "accuracy_mean": 0.92,
           "roc_auc_mean": 0.97, "train_minutes": 15.0}


@dataclass(frozen=True)
class RecipeRun:
    """One finished experiment of the search."""

    name: str
    commit: str
    candidate: str
    seed: int
    threshold: float
    train_seconds: float | None
    epochs_run: int | None
    predictions: pd.DataFrame  # RUN_COLUMNS, sorted by image_id
    validation: pd.DataFrame | None = None  # the same columns, validation originals; None: absent
    source: str = ""  # a run folder (`--from-runs`); "" for an experiment (its commit)
    val_source: str | None = None  # where the validation predictions came from (recipe_runs)


@dataclass(frozen=True)
class ReportFiles:
    """Where a search's report lives: per-run CSVs, the JSON, the markdown."""

    dir: Path
    json: Path
    md: Path


COMMITTED = ReportFiles(RECIPE_DIR, RECIPE_JSON, RECIPE_MD)
# The search re-run with validation predictions (`pneumonia recipe --from-runs`): a report of its
# own, because its runs are new trainings (another machine: other per-image predictions than
# metrics/recipe/'s), and metrics/recipe.md's runs are what the ablation and the docs quote.
RERUN = ReportFiles(METRICS / "recipe-rerun", METRICS / "recipe-rerun.json",
                    METRICS / "recipe-rerun.md")


def read_predictions(source: str | Path, where: str) -> pd.DataFrame:
    """A run's predictions (test or validation), checked by the one reader
    (experiments/predictions.py), in RUN_COLUMNS, sorted by image_id."""
    return parse_predictions(source, where)[RUN_COLUMNS]


def experiment_name(candidate: str, seed: int) -> str:
    return f"{PREFIX}-{candidate}-s{seed}"


def candidate_of(name: str) -> tuple[str, int]:
    """`rcp-<candidate>-s<seed>` -> (candidate, seed)."""
    body, _, seed = name[len(PREFIX) + 1:].rpartition("-s")
    if not body or not seed.isdigit():
        raise PipelineError(f"experiment {name}: not named {PREFIX}-<candidate>-s<seed>.")
    return body, int(seed)


def grid(p: RecipeParams) -> list[tuple[str, dict[str, str]]]:
    """(experiment name, overrides) for every candidate x seed."""
    unknown = [c for c in p.candidates if c not in CANDIDATES]
    if unknown:
        raise PipelineError(
            f"params.yaml: `recipe.candidates` names unknown candidate(s) {', '.join(unknown)}; "
            f"known: {', '.join(CANDIDATES)} (pneumonia/experiments/presets.py)."
        )
    return [(experiment_name(c, s), CANDIDATES[c] | {"train.seed": str(s)})
            for c in p.candidates for s in p.seeds]


def collect(cwd: Path | None = None) -> list[RecipeRun]:
    """Every finished `rcp-*` experiment, read from its commit."""
    runs = []
    for rev in revisions.named_experiments(PREFIX, "pneumonia recipe", cwd):
        res, more = read_results(rev, cwd, extra=(TRAIN_JSON.as_posix(),))
        train = more[TRAIN_JSON.as_posix()]
        candidate, seed = candidate_of(rev.name)
        if seed != res.params.train.seed:
            raise PipelineError(f"experiment {rev.name}: its train.seed is "
                                f"{res.params.train.seed}.")
        try:
            val_text = revisions.read_text(rev, PREDICTIONS_VAL_CSV.as_posix(), cwd)
        except PipelineError:
            val = None  # an evaluate stage before validation predictions were kept
        else:
            val = read_predictions(val_text, f"experiment {rev.name}: {PREDICTIONS_VAL_CSV}")
        runs.append(RecipeRun(rev.name, rev.commit, candidate, seed,
                              float(res.evaluation["threshold"]), train.get("seconds"),
                              train.get("epochs_run"), res.predictions[RUN_COLUMNS], val))
    return runs


def _seed_stats(values: list[float | None]) -> dict[str, Any]:
    """Mean, SD, 95 % t-interval of the mean (clipped to [0, 1]: stats.seeds.t_interval), range,
    over seeds; every entry None when a value is (a validation ROC AUC with one class)."""
    if any(x is None for x in values):
        return {"mean": None, "values": list(values), "min": None, "max": None, "sd": None,
                "ci_low": None, "ci_high": None}
    v = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(v.mean()), "values": [float(x) for x in v],
                           "min": float(v.min()), "max": float(v.max()),
                           "sd": None, "ci_low": None, "ci_high": None}
    if v.size >= 2:
        low, high = t_interval(values, 0.95, (0.0, 1.0))
        out |= {"sd": float(v.std(ddof=1)), "ci_low": low, "ci_high": high}
    return out


def _same_images(runs: list[RecipeRun], what: str) -> None:
    """PipelineError unless every run's `what` predictions (test / validation) cover the same
    images with the same labels."""
    frames = [(r.name, r.predictions if what == "test" else r.validation) for r in runs]
    frames = [(n, f) for n, f in frames if f is not None]
    for name, frame in frames[1:]:
        first_name, first = frames[0]
        if not frame["image_id"].equals(first["image_id"]) or not frame["actual"].equals(
                first["actual"]):
            raise PipelineError(f"experiments {first_name} and {name} were evaluated on "
                                f"different {what} images: re-run them on one dataset.")


def summarize(runs: list[RecipeRun], previous: dict[str, Any] | None = None,
              expected: list[str] | None = None) -> dict[str, Any]:
    """metrics/recipe.json: per candidate the seed statistics, targets met, the choice (`choose`)
    and Welch's test of each other candidate against the chosen one. ``previous``: an earlier
    choice of the same search ({candidate, chosen_on, report}) this one is compared with.
    ``expected``: the search's candidates (params.yaml `recipe.candidates`); one without any run
    leaves the search without a choice."""
    from scipy import stats

    if not runs:
        raise PipelineError("no finished recipe runs to report on.")
    _same_images(runs, "test")
    _same_images(runs, "validation")
    first = runs[0].predictions
    y = (first["actual"] == "PNEUMONIA").to_numpy(dtype=int)
    per_run: dict[str, dict[str, Any]] = {}
    for run in runs:
        prob = run.predictions["probability"].to_numpy(dtype=float)
        m = point_metrics(y, prob, run.threshold)
        per_run[run.name] = {"candidate": run.candidate, "seed": run.seed, "commit": run.commit,
                             "threshold": run.threshold, "train_seconds": run.train_seconds,
                             "epochs_run": run.epochs_run,
                             **{k: float(m[k]) for k in METRICS_SHOWN},
                             **validation_metrics(run),
                             "source": run.source, "val_source": run.val_source}
    by_candidate: dict[str, list[str]] = {}
    for name, r in sorted(per_run.items(), key=lambda kv: (kv[1]["candidate"], kv[1]["seed"])):
        by_candidate.setdefault(r["candidate"], []).append(name)
    # Validation: over the seeds that have validation predictions for EVERY candidate, so that
    # each candidate's mean is over the same seeds.
    with_val = {c: {per_run[n]["seed"] for n in names if per_run[n]["val_accuracy"] is not None}
                for c, names in by_candidate.items() if expected is None or c in expected}
    common = sorted(set.intersection(*with_val.values())) if with_val else []
    # Without such seeds (a candidate has none): the seeds common to those that have some, for
    # the validation table and a provisional leader only.
    some = [v for v in with_val.values() if v]
    shown = common or (sorted(set.intersection(*some)) if some else [])
    candidates: dict[str, Any] = {}
    for cand, names in by_candidate.items():
        own = {per_run[n]["seed"] for n in names if per_run[n]["val_accuracy"] is not None}
        entry: dict[str, Any] = {"runs": names, "seeds": [per_run[n]["seed"] for n in names],
                                 "overrides": CANDIDATES.get(cand),
                                 "validation_seeds": sorted(own),
                                 "in_choice": cand in with_val}
        for metric in METRICS_SHOWN:
            entry[metric] = _seed_stats([per_run[n][metric] for n in names])
        secs = [per_run[n]["train_seconds"] for n in names if per_run[n]["train_seconds"]]
        used = [n for n in names if per_run[n]["seed"] in shown and own]
        if used:
            entry["validation"] = {k: _seed_stats([per_run[n][k] for n in used])
                                   for k in VALIDATION_METRICS}
        entry["train_minutes"] = ({"median": float(np.median(secs)) / 60,
                                   "max": float(max(secs)) / 60} if secs else None)
        entry["targets"] = _targets(entry)
        # The powered ablation with this recipe (issue 21 item 3): seeds per arm to detect a
        # 2-point accuracy difference between two arms at this candidate's seed spread.
        sd = entry["accuracy"]["sd"]
        entry["seeds_per_arm_2pt"] = (None if sd is None
                                      else seeds_needed(sd, POWER_DIFFERENCE, ALPHA, POWER))
        candidates[cand] = entry
    missing = sorted(set(expected or ()) - set(candidates))
    pool = {c: e for c, e in candidates.items() if e["in_choice"]}
    best, chosen_on, rule = choose(pool, common, missing)
    for cand, entry in candidates.items():
        if best is None or cand == best:
            continue
        a = np.asarray(entry["accuracy"]["values"])
        b = np.asarray(candidates[best]["accuracy"]["values"])
        if a.size < 2 or b.size < 2:
            entry["vs_chosen"] = None
            continue
        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(0.95)
        entry["vs_chosen"] = {"delta": float(a.mean() - b.mean()), "ci_low": float(ci.low),
                              "ci_high": float(ci.high), "p_value": float(test.pvalue),
                              "post_selection": chosen_on == "test"}
    out = {"n_test_images": len(y), "targets": TARGETS, "chosen": best, "chosen_on": chosen_on,
           "choice_rule": rule, "validation_seeds": common, "validation_seeds_shown": shown,
           "missing_candidates": missing,
           # `best_by_accuracy`: the chosen candidate (the key the presets test and older
           # readers use).
           "best_by_accuracy": best, "candidates": candidates, "runs": per_run}
    if chosen_on == "none":
        out["provisional"] = provisional(pool)
    if previous:
        out["previous_choice"] = previous
        out["choice_changed"] = None if best is None else best != previous["candidate"]
    return out


def validation_metrics(run: RecipeRun) -> dict[str, float | None]:
    """A run's validation accuracy (at its threshold), ROC AUC and log loss (sklearn), from its
    validation predictions; None each when it has none."""
    if run.validation is None:
        return dict.fromkeys(VALIDATION_METRICS)
    from sklearn.metrics import log_loss

    y = (run.validation["actual"] == "PNEUMONIA").to_numpy(dtype=int)
    prob = run.validation["probability"].to_numpy(dtype=float)
    m = point_metrics(y, prob, run.threshold)
    auc = m["roc_auc"]
    return {"val_accuracy": float(m["accuracy"]),
            "val_roc_auc": float(auc) if np.isfinite(auc) else None,
            "val_loss": float(log_loss(y, np.clip(prob, 1e-7, 1 - 1e-7), labels=[0, 1]))}


def _validation_key(entry: dict[str, Any]) -> tuple[float, float, float]:
    """Highest mean validation accuracy, then ROC AUC, then lowest validation loss."""
    v = entry["validation"]
    auc = v["val_roc_auc"]["mean"]
    return (v["val_accuracy"]["mean"], -math.inf if auc is None else auc, -v["val_loss"]["mean"])


VALIDATION_RULE = ("highest mean validation accuracy over seeds; ties: validation ROC AUC, then "
                   "validation loss")


def choose(candidates: dict[str, Any], common: list[int], missing: list[str] | None = None
           ) -> tuple[str | None, str, str]:
    """(the chosen candidate, `validation` / `test` / `none`, the rule in words).

    On validation whenever some seeds have validation predictions for every candidate
    (``common``): the rule VALIDATION_RULE over those seeds only, so that every candidate's mean
    is over the same seeds. When no run has validation predictions at all (the 2026-11-30
    search): on the test set (highest mean test accuracy), which the report labels
    post-selection. When some runs have them but no seed has them for every candidate: no
    choice (`none`) — choosing on test would peek, and on a subset of candidates would drop
    one unseen; so too when a candidate of the search (``missing``) has no run at all."""
    if missing:
        return None, "none", (f"candidate(s) {', '.join(missing)} of the search have no "
                              "finished run")
    if common:
        all_seeds = all(sorted(e["seeds"]) == common for e in candidates.values())
        seeds = "" if all_seeds else (
            f", over seed(s) {', '.join(map(str, common))} only: the seeds with validation "
            "predictions for every candidate")
        best = max(candidates, key=lambda c: _validation_key(candidates[c]))
        return best, "validation", VALIDATION_RULE + seeds
    if not any(e["validation_seeds"] for e in candidates.values()):
        return (max(candidates, key=lambda c: candidates[c]["accuracy"]["mean"]), "test",
                "highest mean TEST accuracy over seeds: no run kept validation predictions")
    lacking = sorted(c for c, e in candidates.items() if not e["validation_seeds"])
    return None, "none", ("no seed has validation predictions for every candidate"
                          + (f" ({', '.join(lacking)}: none)" if lacking else ""))


def provisional(candidates: dict[str, Any]) -> dict[str, Any] | None:
    """When there is no choice: the validation leader among the candidates that have validation
    predictions (over their common seeds), to be read as provisional — not a choice."""
    have = {c: set(e["validation_seeds"]) for c, e in candidates.items() if "validation" in e}
    common = sorted(set.intersection(*have.values())) if have else []
    if len(have) < 2 or not common:
        return None
    return {"candidate": max(have, key=lambda c: _validation_key(candidates[c])),
            "among": sorted(have), "seeds": common,
            "without": sorted(set(candidates) - set(have))}


def _targets(entry: dict[str, Any]) -> dict[str, bool | None]:
    acc, nrec, auc = entry["accuracy"], entry["NORMAL_recall"], entry["roc_auc"]
    minutes = entry["train_minutes"]
    return {
        "accuracy_sd": None if acc["sd"] is None else acc["sd"] <= TARGETS["accuracy_sd"],
        "NORMAL_recall_sd": None if nrec["sd"] is None
        else nrec["sd"] <= TARGETS["NORMAL_recall_sd"],
        "accuracy_mean": acc["mean"] >= TARGETS["accuracy_mean"],
        "roc_auc_mean": auc["mean"] >= TARGETS["roc_auc_mean"],
        "train_minutes": None if minutes is None else minutes["max"] <= TARGETS["train_minutes"],
    }


def _cell(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "n/a"
    sd = "" if s["sd"] is None else f" ± {s['sd']:.3f}"
    ci = "" if s["ci_low"] is None else f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
    return f"{s['mean']:.3f}{sd}{ci}"


def _choice_lines(summary: dict[str, Any]) -> list[str]:
    """The report's opening: what was chosen, on what, and how to read the test numbers."""
    chosen, on = summary.get("chosen", summary["best_by_accuracy"]), summary.get("chosen_on",
                                                                                "test")
    if on == "test":
        lines = [(f"**Chosen on the TEST set: `{chosen}`** ({summary.get('choice_rule', '')}). "
                  "These runs kept no validation predictions, so the choice was made on the "
                  "same test numbers this report shows: the chosen candidate's test mean "
                  "carries a winner's bias (it is the best of several noisy means), and the "
                  "`vs chosen` intervals and p-values are post-selection, computed after a "
                  "choice made on these numbers: read them as descriptive. Re-run the "
                  "candidates with an evaluate stage that writes metrics/predictions_val.csv "
                  "and the report chooses on validation.")]
    elif on == "validation":
        lines = [(f"**Chosen on validation: `{chosen}`** ({summary['choice_rule']}; the "
                  "validation originals, never the test set). Its test numbers below are the "
                  "untouched estimate; the `vs chosen` comparisons on test were computed after "
                  "that choice, which the test numbers played no part in.")]
    else:
        lines = [(f"**No choice yet** ({summary['choice_rule']}): choosing on the test set "
                  "would peek, and choosing among the other candidates would drop one unseen. "
                  "The test numbers below are descriptive; no `vs chosen` comparison is made.")]
        lead = summary.get("provisional")
        if lead:
            lines[0] += (f" Among {', '.join(lead['among'])} (seed(s) "
                         f"{', '.join(map(str, lead['seeds']))}), validation favours "
                         f"`{lead['candidate']}` — provisional, not a choice.")
            if lead["without"]:
                lines[0] += (f" Without validation predictions: {', '.join(lead['without'])}.")
    prev = summary.get("previous_choice")
    if prev:
        if chosen is None or on == "none":
            verdict = "no choice can be compared with it yet"
        elif summary.get("choice_changed"):
            verdict = f"the choice CHANGES, from `{prev['candidate']}` to `{chosen}`"
        else:
            verdict = f"the choice is unchanged (`{chosen}`)"
        where = "TEST" if prev["chosen_on"] == "test" else prev["chosen_on"]
        lines += ["", (f"Earlier choice: `{prev['candidate']}`, chosen on the {where} set in "
                       f"{prev['report']}; on validation here {verdict}.")]
    return lines


def markdown(summary: dict[str, Any], header: str = "") -> str:
    """metrics/recipe.md (or the re-run's)."""
    cands = summary["candidates"]
    chosen = summary.get("chosen", summary["best_by_accuracy"])
    on = summary.get("chosen_on", "test")
    lines = ["# The CPU recipe search", ""]
    if header:
        lines += [header, ""]
    lines += [*_choice_lines(summary), ""]
    vs_head = {"test": "vs chosen (accuracy; post-selection)",
               "validation": "vs chosen (accuracy; computed after the choice)"}.get(on, "vs chosen")
    lines += [
        (f"Test set: {summary['n_test_images']} images. Per candidate, over its seeds: mean ± "
        "standard deviation [95 % t-interval of the mean]. Train time: the train stage's wall "
        "time per run (median / max). `vs chosen`: accuracy difference from the chosen "
        "candidate, Welch's t-test over seeds (95 % interval, p). Seeds / arm: "
        "how many seeds each arm of an ablation run with this recipe would need to detect a "
        "2-point accuracy difference (two-sided 5 %, 80 % power, at this candidate's seed SD; "
        "statsmodels TTestIndPower; the SD of a few seeds is itself uncertain)."), "",
        ("| candidate | seeds | accuracy | ROC AUC | NORMAL recall | PNEUMONIA recall | "
        f"train min | {vs_head} | seeds / arm |"),
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for cand, e in cands.items():
        t = e["train_minutes"]
        tm = "n/a" if t is None else f"{t['median']:.1f} / {t['max']:.1f}"
        vs = e.get("vs_chosen", e.get("vs_best"))
        mark = "(chosen; untouched estimate)" if on == "validation" else "(chosen)"
        vs_txt = (mark if cand == chosen else "n/a" if vs is None else
                  f"{vs['delta']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}], "
                  f"p = {vs['p_value']:.2g}")
        need = e.get("seeds_per_arm_2pt")
        lines.append(f"| {cand} | {len(e['seeds'])} | " + " | ".join(
            _cell(e[m]) for m in METRICS_SHOWN) + f" | {tm} | {vs_txt} | "
            + ("n/a" if need is None else str(need)) + " |")
    if any("validation" in e for e in cands.values()):
        common = summary.get("validation_seeds") or summary.get("validation_seeds_shown")
        over = ("over the seeds with validation predictions for every candidate shown: "
                + ", ".join(map(str, common)))
        lines += ["", (f"Validation (the originals of the validation split; what the choice "
                       f"uses), mean ± SD [95 % t-interval], {over}:"), "",
                  "| candidate | seeds | val accuracy | val ROC AUC | val loss |",
                  "|---|---|---:|---:|---:|"]
        for cand, e in cands.items():
            if "validation" not in e:
                lines.append(f"| {cand} | none | n/a | n/a | n/a |")
                continue
            v = e["validation"]
            seeds = ", ".join(map(str, common))
            lines.append(f"| {cand} | {seeds} | {_cell(v['val_accuracy'])} | "
                         f"{_cell(v['val_roc_auc'])} | {_cell(v['val_loss'])} |")
    lines += ["", ("Targets: seed SD of accuracy ≤ 0.015 and of NORMAL recall ≤ 0.05, mean "
              "accuracy ≥ 0.92, mean ROC AUC ≥ 0.97, ≤ 15 min of training per run."), "",
              "| candidate | acc SD | NORMAL recall SD | acc mean | AUC mean | time |",
              "|---|---|---|---|---|---|"]
    word = {True: "met", False: "missed", None: "n/a"}
    for cand, e in cands.items():
        t = e["targets"]
        lines.append(f"| {cand} | " + " | ".join(word[t[k]] for k in (
            "accuracy_sd", "NORMAL_recall_sd", "accuracy_mean", "roc_auc_mean", "train_minutes"))
            + " |")
    lines += ["", "## Candidates", ""]
    for cand, e in cands.items():
        over = e["overrides"]
        flags = "(no longer defined)" if over is None else " ".join(
            f"-S {k}={v}" for k, v in over.items())
        lines.append(f"- `{cand}`: `{flags}`")
    lines += _runs_table(summary["runs"])
    return "\n".join(lines) + "\n"


def _runs_table(runs: dict[str, dict[str, Any]]) -> list[str]:
    with_val = any(r.get("val_accuracy") is not None for r in runs.values())
    head = "| experiment | seed | accuracy | ROC AUC | NORMAL recall | train min | epochs |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if with_val:
        head += " val accuracy | validation predictions |"
        rule += "---:|---|"
    lines = ["", "## Runs", "", head, rule]
    for name, r in runs.items():
        mins = "n/a" if not r["train_seconds"] else f"{r['train_seconds'] / 60:.1f}"
        row = (f"| {name} | {r['seed']} | {r['accuracy']:.3f} | {r['roc_auc']:.3f} | "
               f"{r['NORMAL_recall']:.3f} | {mins} | {r['epochs_run']} |")
        if with_val:
            val = r.get("val_accuracy")
            row += (" n/a | none |" if val is None
                    else f" {val:.3f} | {r.get('val_source') or 'evaluate stage'} |")
        lines.append(row)
    if any(r.get("source") for r in runs.values()):
        lines += ["", "Run folders: " + "; ".join(f"{n} = {r['source']}"
                                                   for n, r in runs.items() if r.get("source"))
                  + "."]
    return lines


def write_report(header: str = "", runs: list[RecipeRun] | None = None,
                 files: ReportFiles = COMMITTED, previous: dict[str, Any] | None = None,
                 expected: list[str] | None = None) -> dict[str, Any]:
    """Collect the finished `rcp-*` experiments (or take ``runs``); write the report's
    per-run CSVs, JSON and markdown (``files``: metrics/recipe{/,.json,.md} by default);
    ``expected``: the search's candidates (`summarize`)."""
    runs = collect() if runs is None else runs
    summary = summarize(runs, previous, expected)
    files.dir.mkdir(parents=True, exist_ok=True)
    for old in files.dir.glob("*.csv"):
        old.unlink()
    for run in runs:
        run.predictions.to_csv(files.dir / f"{run.name}.csv", index=False, lineterminator="\n")
        if run.validation is not None:
            run.validation.to_csv(files.dir / f"{run.name}{VAL_SUFFIX}", index=False,
                                  lineterminator="\n")
    summary["header"] = header
    write_json(summary, files.json)
    files.md.write_text(markdown(summary, header), encoding="utf-8")
    print(markdown(summary, header))
    print(f"wrote {files.md}, {files.json} and {files.dir}/")
    return summary


def load_committed(files: ReportFiles = COMMITTED) -> list[RecipeRun]:
    """The runs as `write_report` saved them (<dir>/*.csv + *.val.csv + the JSON)."""
    meta = json.loads(files.json.read_text(encoding="utf-8"))["runs"]
    runs = []
    for name, r in sorted(meta.items()):
        path, val = files.dir / f"{name}.csv", files.dir / f"{name}{VAL_SUFFIX}"
        if not path.is_file():
            raise PipelineError(f"{path} not found, but {files.json} lists run {name}: restore "
                                f"it from git (`git checkout -- {files.dir}`).")
        runs.append(RecipeRun(name, r["commit"], r["candidate"], r["seed"], r["threshold"],
                              r["train_seconds"], r["epochs_run"],
                              read_predictions(path, str(path)),
                              read_predictions(val, str(val)) if val.is_file() else None,
                              r.get("source", ""), r.get("val_source")))
    return runs


def previous_choice(files: ReportFiles = COMMITTED) -> dict[str, Any] | None:
    """The choice a committed report made ({candidate, chosen_on, report}); None without one."""
    if not files.json.is_file():
        return None
    doc = json.loads(files.json.read_text(encoding="utf-8"))
    chosen = doc.get("chosen", doc.get("best_by_accuracy"))
    if chosen is None:
        return None
    return {"candidate": chosen, "chosen_on": doc.get("chosen_on", "test"),
            "report": files.md.as_posix()}


def from_runs(specs: list[str], data: Path | None, header: str | None,
              candidates: list[str] | None = None) -> dict[str, Any]:
    """`pneumonia recipe --from-runs`: the re-run's report (RERUN) from run folders
    (pneumonia.experiments.recipe_runs), added to (or replacing, by name) the runs it already
    holds, compared with metrics/recipe.md's choice. ``candidates``: the search's candidates
    (default params.yaml `recipe.candidates`); runs of others are left out of the report, and
    the report names the candidates of params.yaml it leaves out (their runs stay in the
    tables, outside the choice)."""
    from pneumonia.experiments import recipe_runs

    params = load_params()
    declared = list(params.recipe.candidates)
    expected = list(candidates) if candidates else declared
    runs = {r.name: r for r in (load_committed(RERUN) if RERUN.json.is_file() else [])}
    for spec in specs:
        name, folder = recipe_runs.parse_spec(spec)
        candidate, seed = candidate_of(name)
        got = recipe_runs.read_run_folder(name, folder, data, params)
        where = f"{got.val_source} for {name}"
        runs[name] = RecipeRun(
            name, "", candidate, seed, got.threshold, got.train_seconds, got.epochs_run,
            read_predictions(got.test_csv, str(got.test_csv)),
            None if got.validation_csv is None else read_predictions(got.validation_csv, where),
            source=str(folder), val_source=got.val_source)
    ordered = sorted(runs.values(), key=lambda r: (r.candidate, r.seed))
    _no_twins(ordered)
    if header is None:
        header = committed_header(RERUN.json)
    left_out = [c for c in declared if c not in expected]
    if left_out and "left out of this search" not in header:
        header = (header + " " if header else "") + (
            f"Candidates: {', '.join(expected)}; left out of this search by `--candidates` "
            f"(params.yaml lists them): {', '.join(left_out)} — the choice is among the "
            "candidates named only.")
    return write_report(header, ordered, RERUN, previous_choice(COMMITTED), expected)


def _no_twins(runs: list[RecipeRun]) -> None:
    """PipelineError when two runs hold identical test predictions: a copy of a failed run's
    folder (the workspace's metrics of the run before) would otherwise count twice."""
    seen: dict[bytes, str] = {}
    for run in runs:
        key = np.round(run.predictions["probability"].to_numpy(dtype=float), 6).tobytes()
        if key in seen:
            raise PipelineError(f"runs {seen[key]} and {run.name} hold identical test "
                                "predictions: one folder is a copy of the other run's metrics "
                                "(did a `dvc exp run` fail?). Leave it out.")
        seen[key] = run.name
