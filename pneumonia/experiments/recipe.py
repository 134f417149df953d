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
loss) — and its TEST numbers are then the untouched estimate. Only when some run has no
validation predictions (the committed 2026-11-30 search kept none) does the report fall back to
choosing on the test set, and then says so at the top and labels the `vs chosen` column
post-selection: the chosen mean carries a winner's bias and those p-values were computed after a
choice made on the same numbers.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.experiments import revisions
from pneumonia.experiments.predictions import read_results
from pneumonia.experiments.presets import CANDIDATES
from pneumonia.experiments.report import (
    ALPHA,
    POWER,
    POWER_DIFFERENCE,
)
from pneumonia.files import write_json
from pneumonia.params import RecipeParams
from pneumonia.paths import METRICS, TRAIN_JSON
from pneumonia.stats.bootstrap import point_metrics
from pneumonia.stats.seeds import seeds_needed, t_interval

# The evaluate stage's validation-originals predictions (issue 36 adds it to pneumonia.paths as
# PREDICTIONS_VAL_CSV; the same file).
PREDICTIONS_VAL_CSV = METRICS / "predictions_val.csv"
VAL_SUFFIX = ".val.csv"  # metrics/recipe/<experiment>.val.csv
VALIDATION_METRICS = ("val_accuracy", "val_roc_auc", "val_loss")

PREFIX = "rcp"
RECIPE_DIR = METRICS / "recipe"
RECIPE_JSON = METRICS / "recipe.json"
RECIPE_MD = METRICS / "recipe.md"
METRICS_SHOWN = ("accuracy", "roc_auc", "NORMAL_recall", "PNEUMONIA_recall")
RUN_COLUMNS = ["image_id", "patient_id", "actual", "probability"]
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


def read_predictions(source: str | Path, where: str) -> pd.DataFrame:
    """The one checked reader of a run's predictions (test or validation): a CSV file or its
    text. PipelineError naming ``where`` when a column is missing, an image is listed twice, a
    label is not NORMAL / PNEUMONIA or a probability is not in [0, 1]. Sorted by image_id."""
    text = io.StringIO(source) if isinstance(source, str) else source
    try:
        frame = pd.read_csv(text, dtype={"patient_id": str, "image_id": str})
    except (OSError, ValueError) as exc:
        raise PipelineError(f"{where}: not a readable predictions CSV ({exc}).") from None
    missing = sorted(set(RUN_COLUMNS) - set(frame.columns))
    if missing:
        raise PipelineError(f"{where}: lacks column(s) {', '.join(missing)} (written by an older "
                            "evaluate stage): re-run that experiment.")
    frame = frame[RUN_COLUMNS]
    if frame["image_id"].duplicated().any():
        twice = frame["image_id"][frame["image_id"].duplicated()].iloc[0]
        raise PipelineError(f"{where}: image {twice} is listed twice.")
    if not frame["actual"].isin(("NORMAL", "PNEUMONIA")).all():
        raise PipelineError(f"{where}: column `actual` holds a label other than NORMAL / "
                            "PNEUMONIA.")
    prob = pd.to_numeric(frame["probability"], errors="coerce")
    if not prob.between(0, 1).all():
        raise PipelineError(f"{where}: a `probability` is missing or outside [0, 1].")
    return frame.sort_values("image_id", ignore_index=True)


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


def _seed_stats(values: list[float]) -> dict[str, Any]:
    """Mean, SD, 95 % t-interval of the mean (clipped to [0, 1]: stats.seeds.t_interval), range,
    over seeds."""
    v = np.asarray(values, dtype=float)
    out: dict[str, Any] = {"mean": float(v.mean()), "values": [float(x) for x in v],
                           "min": float(v.min()), "max": float(v.max()),
                           "sd": None, "ci_low": None, "ci_high": None}
    if v.size >= 2:
        low, high = t_interval(values, 0.95, (0.0, 1.0))
        out |= {"sd": float(v.std(ddof=1)), "ci_low": low, "ci_high": high}
    return out


def summarize(runs: list[RecipeRun]) -> dict[str, Any]:
    """metrics/recipe.json: per candidate the seed statistics, targets met, and Welch's test
    against the candidate with the highest mean accuracy."""
    from scipy import stats

    if not runs:
        raise PipelineError("no finished recipe runs to report on.")
    first = runs[0].predictions
    for run in runs[1:]:
        if not run.predictions["image_id"].equals(first["image_id"]) or not run.predictions[
                "actual"].equals(first["actual"]):
            raise PipelineError(f"experiments {runs[0].name} and {run.name} were evaluated on "
                                "different test images: re-run them on one dataset.")
    y = (first["actual"] == "PNEUMONIA").to_numpy(dtype=int)
    per_run: dict[str, dict[str, Any]] = {}
    for run in runs:
        prob = run.predictions["probability"].to_numpy(dtype=float)
        m = point_metrics(y, prob, run.threshold)
        per_run[run.name] = {"candidate": run.candidate, "seed": run.seed, "commit": run.commit,
                             "threshold": run.threshold, "train_seconds": run.train_seconds,
                             "epochs_run": run.epochs_run,
                             **{k: float(m[k]) for k in METRICS_SHOWN},
                             **validation_metrics(run)}
    by_candidate: dict[str, list[str]] = {}
    for name, r in sorted(per_run.items(), key=lambda kv: (kv[1]["candidate"], kv[1]["seed"])):
        by_candidate.setdefault(r["candidate"], []).append(name)
    candidates: dict[str, Any] = {}
    for cand, names in by_candidate.items():
        entry: dict[str, Any] = {"runs": names, "seeds": [per_run[n]["seed"] for n in names],
                                 "overrides": CANDIDATES.get(cand)}
        for metric in METRICS_SHOWN:
            entry[metric] = _seed_stats([per_run[n][metric] for n in names])
        secs = [per_run[n]["train_seconds"] for n in names if per_run[n]["train_seconds"]]
        if all(per_run[n]["val_accuracy"] is not None for n in names):
            entry["validation"] = {k: _seed_stats([per_run[n][k] for n in names])
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
    best, chosen_on, rule = choose(candidates)
    for cand, entry in candidates.items():
        if cand == best:
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
    # `best_by_accuracy`: the chosen candidate (the key the presets test and older readers use).
    return {"n_test_images": len(y), "targets": TARGETS, "chosen": best, "chosen_on": chosen_on,
            "choice_rule": rule, "best_by_accuracy": best, "candidates": candidates,
            "runs": per_run}


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


def choose(candidates: dict[str, Any]) -> tuple[str, str, str]:
    """(the chosen candidate, `validation` or `test`, the rule in words). On validation when
    every candidate has validation predictions for every run: highest mean validation accuracy,
    ties broken by higher mean validation ROC AUC, then lower mean validation loss. Otherwise on
    the test set (highest mean test accuracy), which the report labels post-selection."""
    if candidates and all("validation" in e for e in candidates.values()):
        def key(c: str) -> tuple[float, float, float]:
            v = candidates[c]["validation"]
            auc = v["val_roc_auc"]["mean"]
            return (v["val_accuracy"]["mean"], -math.inf if auc is None else auc,
                    -v["val_loss"]["mean"])

        return (max(candidates, key=key), "validation",
                ("highest mean validation accuracy over seeds (ties: validation ROC AUC, then "
                "validation loss)"))
    return (max(candidates, key=lambda c: candidates[c]["accuracy"]["mean"]), "test",
            "highest mean TEST accuracy over seeds: no validation predictions for every run")


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
    sd = "" if s["sd"] is None else f" ± {s['sd']:.3f}"
    ci = "" if s["ci_low"] is None else f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]"
    return f"{s['mean']:.3f}{sd}{ci}"


def markdown(summary: dict[str, Any], header: str = "") -> str:
    """metrics/recipe.md."""
    cands = summary["candidates"]
    chosen = summary.get("chosen", summary["best_by_accuracy"])
    on_test = summary.get("chosen_on", "test") == "test"
    lines = ["# The CPU recipe search", ""]
    if header:
        lines += [header, ""]
    if on_test:
        lines += [(f"**Chosen on the TEST set: `{chosen}`** ({summary.get('choice_rule', '')}). "
                   "These runs kept no validation predictions, so the choice was made on the "
                   "same test numbers this report shows: the chosen candidate's test mean "
                   "carries a winner's bias (it is the best of several noisy means), and the "
                   "`vs chosen` intervals and p-values are post-selection, computed after a "
                   "choice made on these numbers: read them as descriptive. Re-run the "
                   "candidates with an evaluate stage that writes metrics/predictions_val.csv "
                   "and the report chooses on validation."), ""]
    else:
        lines += [(f"**Chosen on validation: `{chosen}`** ({summary['choice_rule']}; the "
                   "validation originals, never the test set). Its test numbers below are the "
                   "untouched estimate; the `vs chosen` comparisons on test were computed after "
                   "that choice, which the test numbers played no part in."), ""]
    vs_head = "vs chosen (accuracy; post-selection)" if on_test else "vs chosen (accuracy)"
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
        vs_txt = ("(chosen)" if cand == chosen else "n/a" if vs is None else
                  f"{vs['delta']:+.3f} [{vs['ci_low']:+.3f}, {vs['ci_high']:+.3f}], "
                  f"p = {vs['p_value']:.2g}")
        need = e.get("seeds_per_arm_2pt")
        lines.append(f"| {cand} | {len(e['seeds'])} | " + " | ".join(
            _cell(e[m]) for m in METRICS_SHOWN) + f" | {tm} | {vs_txt} | "
            + ("n/a" if need is None else str(need)) + " |")
    if all("validation" in e for e in cands.values()):
        lines += ["", ("Validation (the originals of the validation split; what the choice used), "
                  "mean ± SD over seeds:"), "",
                  "| candidate | val accuracy | val ROC AUC | val loss |", "|---|---:|---:|---:|"]
        for cand, e in cands.items():
            v = e["validation"]
            auc = "n/a" if v["val_roc_auc"]["mean"] is None else _cell(v["val_roc_auc"])
            lines.append(f"| {cand} | {_cell(v['val_accuracy'])} | {auc} | "
                         f"{_cell(v['val_loss'])} |")
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
    lines += ["", "## Runs", "", ("| experiment | seed | accuracy | ROC AUC | NORMAL recall | "
              "train min | epochs |"), "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in summary["runs"].items():
        mins = "n/a" if not r["train_seconds"] else f"{r['train_seconds'] / 60:.1f}"
        lines.append(f"| {name} | {r['seed']} | {r['accuracy']:.3f} | {r['roc_auc']:.3f} | "
                     f"{r['NORMAL_recall']:.3f} | {mins} | {r['epochs_run']} |")
    return "\n".join(lines) + "\n"


def write_report(header: str = "", runs: list[RecipeRun] | None = None) -> dict[str, Any]:
    """Collect the finished `rcp-*` experiments; write metrics/recipe{.json,.md,/}."""
    runs = collect() if runs is None else runs
    summary = summarize(runs)
    RECIPE_DIR.mkdir(parents=True, exist_ok=True)
    for old in RECIPE_DIR.glob("*.csv"):
        old.unlink()
    for run in runs:
        run.predictions.to_csv(RECIPE_DIR / f"{run.name}.csv", index=False, lineterminator="\n")
        if run.validation is not None:
            run.validation.to_csv(RECIPE_DIR / f"{run.name}{VAL_SUFFIX}", index=False,
                                  lineterminator="\n")
    summary["header"] = header
    write_json(summary, RECIPE_JSON)
    RECIPE_MD.write_text(markdown(summary, header), encoding="utf-8")
    print(markdown(summary, header))
    print(f"wrote {RECIPE_MD}, {RECIPE_JSON} and {RECIPE_DIR}/")
    return summary


def load_committed() -> list[RecipeRun]:
    """The runs as `write_report` saved them (metrics/recipe/*.csv + recipe.json)."""
    meta = json.loads(RECIPE_JSON.read_text(encoding="utf-8"))["runs"]
    runs = []
    for name, r in sorted(meta.items()):
        path, val = RECIPE_DIR / f"{name}.csv", RECIPE_DIR / f"{name}{VAL_SUFFIX}"
        if not path.is_file():
            raise PipelineError(f"{path} not found, but {RECIPE_JSON} lists run {name}: restore "
                                "it from git (`git checkout -- metrics/recipe`).")
        runs.append(RecipeRun(name, r["commit"], r["candidate"], r["seed"], r["threshold"],
                              r["train_seconds"], r["epochs_run"],
                              read_predictions(path, str(path)),
                              read_predictions(val, str(val)) if val.is_file() else None))
    return runs


