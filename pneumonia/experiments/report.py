"""`pneumonia report`: the ablation's finished experiments, aggregated with honest error bars.

For each experiment named `abl-...` (see `pneumonia.experiments.ablation`) the report reads, from
its git commit, params.yaml (-> arm and seed), metrics/evaluate.json (the threshold) and
metrics/predictions.csv (one probability per test image). It writes

- metrics/ablation/<experiment>.csv: each run's per-image test predictions (image, patient,
  label, probability), so the report can be recomputed from the repository alone
  (`pneumonia report --from-committed`; a test does it), or extended with more seeds
  (`pneumonia report --extend`: the new experiments beside the committed runs);
- metrics/ablation.json and metrics/ablation.md: per arm, each metric's mean over seeds with a
  95 % t-interval (the seed-to-seed spread); each arm minus the reference arm (the paper's:
  DenseNet201 if the grid has it, Augmentor balancing) and, when two or more factors vary over a
  complete grid, each factor's main effect (averaged over the other factors' levels), with a
  seed-level 95 % interval (`pneumonia.stats.seeds.seed_contrast`: Welch-Satterthwaite t over the
  seeds, plus the test patients' sampling from one paired patient bootstrap shared by every run).
  Accuracy and ROC AUC are the primary metrics: their comparisons get a word (`better`, `worse`,
  `within noise`) from Holm-corrected p-values over all of them; the other metrics are shown
  descriptively. A power line says how many seeds an arm needs to detect a 2-point accuracy
  difference at the observed seed spread. The answer at the top is worded no stronger than that.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.experiments import revisions
from pneumonia.experiments.predictions import COLUMNS, parse_predictions, read_results
from pneumonia.files import write_json
from pneumonia.formatting import number, p_value, p_value_phrase
from pneumonia.params import arm_of
from pneumonia.paths import METRICS
from pneumonia.stats.bootstrap import patient_weights, point_metrics, weighted_metrics
from pneumonia.stats.seeds import (
    detectable_floor,
    pooled_sd,
    seed_contrast,
    seeds_needed,
    simulated_power,
    simulated_seeds_needed,
    t_interval,
)
from pneumonia.stats.significance import holm

ABLATION_DIR = METRICS / "ablation"
ABLATION_JSON = METRICS / "ablation.json"
ABLATION_MD = METRICS / "ablation.md"
# What the report shows, in order: accuracy and ROC AUC carry the answer; the per-class cells are
# where balancing should act (NORMAL is the minority class).
REPORT_METRICS = ("accuracy", "roc_auc", "NORMAL_recall", "NORMAL_precision", "NORMAL_f1",
                  "PNEUMONIA_recall", "PNEUMONIA_f1")
ANSWER_METRICS = ("accuracy", "roc_auc")  # primary: Holm-corrected words; the rest descriptive
# The paper's arm: DenseNet201 with Augmentor balancing (the reference when the grid has it).
# The reference arm is the paper's choices as the grid's preset runs them (the `cpu` preset: a 64-px
# DenseNet121 from random weights), never the paper's configuration itself: the answer says so.
REFERENCE_NOTE = "the paper's choices of backbone and balancing, as the grid's preset runs them"
PAPER_LEVELS = {"backbone": "densenet201", "balance": "augmentor"}
FACTORS = ("backbone", "balance", "batchnorm")  # the parts of an arm name (params.arm_of)
ALPHA = 0.05
LEVEL = 1 - ALPHA  # 0.95
POWER = 0.8
POWER_DIFFERENCE = 0.02  # the accuracy difference the power line is about (2 points)
POWER_REPS = 4000  # simulated grids per seed count in the power line (seeded)
N_RESAMPLES = 2000
RUN_COLUMNS = list(COLUMNS)


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
    runs = []
    for rev in revisions.named_experiments(prefix, "pneumonia ablation", cwd):
        res, _ = read_results(rev, cwd)
        runs.append(RunResult(rev.name, rev.commit, arm_of(res.params), res.params.train.seed,
                              float(res.evaluation["threshold"]), res.predictions[RUN_COLUMNS]))
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


def _t_interval(values: list[float | None]) -> tuple[float | None, float | None]:
    """95 % t-interval of the mean over seeds (None with fewer than 2 finite values).

    Clipped to [0, 1], the range of every REPORT_METRICS entry (proportions and ROC AUC): with 3
    seeds t(0.975, 2) = 4.30, so a widely spread metric gives an unclipped bound such as a recall
    of 1.35 (seen in the committed CPU grid), which no run can reach.
    """
    return t_interval(values, LEVEL, (0.0, 1.0))


def factors_of(arm: str) -> dict[str, str]:
    """``{"backbone", "balance", "batchnorm"}`` of an arm name (`densenet121/augmentor/bn-frozen`,
    the spelling of params.arm_of); {} for a name of another shape."""
    parts = arm.split("/")
    return dict(zip(FACTORS, parts, strict=True)) if len(parts) == len(FACTORS) else {}


def reference_arm(arms: list[str]) -> str:
    """The paper's arm when the grid has it: Augmentor balancing, DenseNet201 if present (else
    the first backbone in name order), BatchNorm handling first in name order (bn-frozen, the
    project's default). Without an Augmentor arm: the first arm in name order."""
    pool = [a for a in arms if factors_of(a).get("balance") == PAPER_LEVELS["balance"]] or arms
    paper = [a for a in pool if factors_of(a).get("backbone") == PAPER_LEVELS["backbone"]]
    return min(paper or pool)


def _contrasts(arms: list[str], reference: str) -> tuple[dict[str, dict[str, float]], str]:
    """The comparisons the report makes, as contrasts ``{name: {arm: coefficient}}``: each arm
    minus the reference arm, and, when two or more factors vary over a complete grid, each
    non-reference level of each varying factor minus the reference level, averaged over the
    other factors' level combinations (a main effect). Also a note on why main effects are
    missing ("" when there are some or only one factor varies)."""
    out = {arm: {arm: 1.0, reference: -1.0} for arm in arms if arm != reference}
    factors = {a: factors_of(a) for a in arms}
    if any(not f for f in factors.values()):
        return out, ""
    varying = [f for f in FACTORS if len({factors[a][f] for a in arms}) > 1]
    if len(varying) < 2:
        return out, ""
    levels = {f: sorted({factors[a][f] for a in arms}) for f in varying}
    cell = {tuple(factors[a][f] for f in varying): a for a in arms}
    if len(cell) != math.prod(len(v) for v in levels.values()):
        return out, ("no main effects: the grid is incomplete (not every combination of "
                     f"{', '.join(varying)} was run)")
    ref = factors_of(reference)
    for i, factor in enumerate(varying):
        others = [levels[f] for f in varying if f != factor]
        combos = list(itertools.product(*others))
        for level in levels[factor]:
            if level == ref[factor]:
                continue
            coef: dict[str, float] = {}
            for combo in combos:
                key = list(combo)
                for lv, sign in ((level, 1.0), (ref[factor], -1.0)):
                    arm = cell[tuple(key[:i] + [lv] + key[i:])]
                    coef[arm] = coef.get(arm, 0.0) + sign / len(combos)
            out[f"{factor}: {level} - {ref[factor]} (main effect)"] = coef
    # Two-way interactions: for each pair of varying factors and each non-reference level of
    # each, (the first factor's effect at the second's level) - (its effect at the reference
    # level), averaged over the remaining factors' levels. A main effect is an average over the
    # other factor's levels; the interaction says whether that average hides different effects.
    for (i, fa), (j, fb) in itertools.combinations(list(enumerate(varying)), 2):
        rest = [levels[f] for f in varying if f not in (fa, fb)]
        combos = list(itertools.product(*rest))
        for la in levels[fa]:
            for lb in levels[fb]:
                if la == ref[fa] or lb == ref[fb]:
                    continue
                coef = {}
                for combo in combos:
                    for a_lv, b_lv, sign in ((la, lb, 1.0), (ref[fa], lb, -1.0),
                                             (la, ref[fb], -1.0), (ref[fa], ref[fb], 1.0)):
                        key = list(combo)
                        cellkey = []
                        for f in varying:
                            cellkey.append(a_lv if f == fa else b_lv if f == fb else key.pop(0))
                        arm = cell[tuple(cellkey)]
                        coef[arm] = coef.get(arm, 0.0) + sign / len(combos)
                out[interaction_name(fa, la, ref[fa], fb, lb, ref[fb])] = coef
    return out, ""


def interaction_name(fa: str, la: str, ra: str, fb: str, lb: str, rb: str) -> str:
    """`interaction: backbone x balance (resnet50 - densenet121 with none, minus with
    augmentor)`."""
    return f"interaction: {fa} x {fb} ({la} - {ra} with {lb}, minus with {rb})"


def kind_of(name: str, arms: dict | list) -> str:
    """`arm` (an arm minus the reference), `main effect` or `interaction`."""
    if name in arms:
        return "arm"
    return "interaction" if name.startswith("interaction:") else "main effect"


def summarize(runs: list[RunResult], seed: int = 0, n_resamples: int = N_RESAMPLES,
              header: str = "", with_power: bool = True) -> dict:
    """The report's numbers (metrics/ablation.json) from the runs' predictions alone.
    `with_power=False` leaves out the power line (a Monte Carlo search over seeds per arm, the
    slowest part: simulations that call this per simulated grid do not need it)."""
    if not runs:
        raise PipelineError("no finished ablation runs to report on.")
    _check_same_images(runs)
    first = runs[0].predictions
    y = _labels(first)
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
                             **{m: _finite(v) for m, v in
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
            low, high = _t_interval(values)
            entry[m] = {"mean": float(np.mean(finite)) if finite else None,
                        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
                        "ci_low": low, "ci_high": high, "values": values}
        arms[arm] = entry

    reference = reference_arm(list(arms))
    contrasts, main_note = _contrasts(sorted(arms), reference)
    comparisons: dict[str, Any] = {}
    for name, coef in contrasts.items():
        entry = {}
        for m in REPORT_METRICS:
            values = [arms[a][m]["values"] for a in coef]
            draws = [np.stack([boot[r.name][m] for r in by_arm[a]]) for a in coef]
            res = seed_contrast(values, list(coef.values()), draws, LEVEL, n_patients - 1)
            entry[m] = {"delta": _finite(res["estimate"]), "ci_low": _finite(res["ci_low"]),
                        "ci_high": _finite(res["ci_high"]), "se_seed": _finite(res["se_seed"]),
                        "se_test": _finite(res["se_test"]), "df": _finite(res["df"]),
                        "pvalue": _finite(res["pvalue"]),
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


def power(arms: dict, comparisons: dict, metric: str = "accuracy",
          reps: int = POWER_REPS, seed: int = 0) -> dict[str, Any]:
    """How many seeds per arm the report's OWN test needs to detect a POWER_DIFFERENCE in
    ``metric`` with 80 % power: Welch over seeds plus the shared test-set term (each
    comparison's se_test as measured here), Holm over every primary comparison of the report
    (pneumonia.stats.seeds.simulated_power: a simulation, ``reps`` grids per seed count, seeded).
    Two questions: one arm against the reference arm (that arm truly POWER_DIFFERENCE better,
    every other arm equal), and a main effect (every arm of one level truly better). Also the
    power at this report's seeds, the seeds a plain two-sample t-test over seeds would ask for
    (statsmodels TTestIndPower: what the line said before; optimistic), and the smallest
    difference the test set's shared term alone leaves detectable."""
    sd = pooled_sd([[v for v in a[metric]["values"] if v is not None] for a in arms.values()])
    se_tests = [c["metrics"][metric]["se_test"] for c in comparisons.values()
                if c.get("kind", "arm") == "arm" and c["metrics"][metric]["se_test"] is not None]
    se_test = float(np.median(se_tests)) if se_tests else None
    out: dict[str, Any] = {
        "metric": metric, "difference": POWER_DIFFERENCE, "alpha": ALPHA, "power": POWER,
        "pooled_seed_sd": sd, "n_runs": sum(len(a["seeds"]) for a in arms.values()),
        "seeds_now": min((len(a["seeds"]) for a in arms.values()), default=0),
        "method": None, "reps": reps, "seed": seed, "n_tests": 2 * len(comparisons),
        "seeds_per_arm": None, "power_now": None, "main_effect_seeds_per_arm": None,
        "main_effect_power_now": None, "seeds_per_arm_worst": None, "power_now_worst": None,
        "main_effect_seeds_per_arm_worst": None, "main_effect_power_now_worst": None,
        "seeds_per_arm_seed_only": seeds_needed(sd, POWER_DIFFERENCE, ALPHA, POWER)
        if sd is not None else None,
        "se_test": se_test,
        "floor": detectable_floor(se_test, ALPHA, POWER) if se_test is not None else None}
    if sd is None or not comparisons:
        return out
    names = list(comparisons)
    contrasts = [comparisons[n]["arms"] for n in names]
    ses = [comparisons[n]["metrics"][metric]["se_test"] or 0.0 for n in names]
    out["method"] = ("simulation of the report's test: Welch over seeds + each comparison's "
                     "shared test-set term, Holm over the report's "
                     f"{out['n_tests']} primary comparisons")
    questions = {"": next((i for i, n in enumerate(names)
                           if comparisons[n].get("kind", "arm") == "arm"), None),
                 "main_effect_": next((i for i, n in enumerate(names)
                                       if comparisons[n]["main_effect"]), None)}
    for key, target in questions.items():
        if target is None:
            continue
        truth = {a: (POWER_DIFFERENCE if contrasts[target].get(a, 0) > 0 else 0.0) for a in arms}
        args = (contrasts, truth, sd, ses)
        # Holm's threshold for this comparison depends on the others: tested last (every other
        # hypothesis clearly rejected: at 5 %) or first (every other null: at 5 % / m).
        for others, end in (("clear", ""), ("null", "_worst")):
            out[f"{key}seeds_per_arm{end}"] = simulated_seeds_needed(
                *args, target, len(names), ALPHA, POWER, reps, seed, others=others)
            out[f"{key}power_now{end}"] = simulated_power(
                *args, out["seeds_now"], target, len(names), ALPHA, reps, seed, others)
    return out


def _finite(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _seeds_text(arms: dict) -> str:
    seeds = sorted({len(a["seeds"]) for a in arms.values()})
    if len(seeds) == 1:
        return f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''} per arm"
    return f"{seeds[0]}-{seeds[-1]} seeds per arm"


def answer(reference: str, arms: dict, comparisons: dict, n_tests: int) -> str:
    """The report's first sentence: what differs from the reference arm beyond noise."""
    n = _seeds_text(arms)
    if not comparisons:
        return f"Only one arm ({reference}) was run: there is nothing to compare."
    how = (f"{n}; 95 % intervals over seeds (Welch t) that include the test patients' sampling; "
           f"Holm-corrected over the {n_tests} accuracy and ROC AUC comparisons")
    moved = []
    for name, entry in comparisons.items():
        for m in ANSWER_METRICS:
            e = entry["metrics"][m]
            if e["verdict"] == "interaction":
                moved.append(f"{name} on {m}: the effects differ ({e['delta']:+.3f}, 95 % CI "
                             f"{e['ci_low']:+.3f} to {e['ci_high']:+.3f}, Holm p "
                             f"{p_value_phrase(e['pvalue_holm'])})")
            elif e["verdict"] != "within noise":
                moved.append(f"{name} is {e['verdict']} on {m} ({e['delta']:+.3f}, 95 % CI "
                             f"{e['ci_low']:+.3f} to {e['ci_high']:+.3f}, Holm p "
                             f"{p_value_phrase(e['pvalue_holm'])})" + qualifier(name, m, comparisons))
    if not moved:
        return (f"No arm differs from the reference arm ({reference}; {REFERENCE_NOTE}) beyond "
                f"noise in test "
                f"accuracy or ROC AUC ({how}): at this scale the data cannot tell these choices "
                "apart.")
    return (f"Against the reference arm ({reference}; {REFERENCE_NOTE}), with {n}: "
            + "; ".join(moved)
            + f". Every other difference in accuracy and ROC AUC is within noise ({how}).")


def qualifying_interactions(name: str, metric: str, comparisons: dict) -> list[str]:
    """The interactions involving a main effect's factor whose 95 % interval on ``metric``
    excludes 0 (before Holm: a warning that the average hides different effects, not a
    finding), for main effect ``name``; [] for anything else."""
    if not comparisons.get(name, {}).get("main_effect"):
        return []
    factor = name.split(":", 1)[0]
    out = []
    for other, c in comparisons.items():
        if c.get("kind") != "interaction":
            continue
        pair = other.split(":", 1)[1].split("(", 1)[0].split(" x ")
        e = c["metrics"][metric]
        if factor in (p.strip() for p in pair) and e["ci_low"] is not None and (
                e["ci_low"] > 0 or e["ci_high"] < 0):
            out.append(other)
    return out


def qualifier(name: str, metric: str, comparisons: dict) -> str:
    """" — qualified: ..." for a main effect an interaction qualifies ("" otherwise)."""
    found = qualifying_interactions(name, metric, comparisons)
    if not found:
        return ""
    parts = []
    for other in found:
        e = comparisons[other]["metrics"][metric]
        parts.append(f"{other} {e['delta']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}], "
                     f"p {p_value_phrase(e['pvalue'])}, Holm p {p_value_phrase(e['pvalue_holm'])}")
    return (" — qualified by an interaction: the effect is not the same at every level of the "
            "other factor (" + "; ".join(parts) + "), so the average is not the whole story")


def _delta_ci(e: dict) -> str:
    if e["delta"] is None:
        return "n/a"
    ci = ("" if e["ci_low"] is None
          else f" [{number(e['ci_low'], sign=True)}, {number(e['ci_high'], sign=True)}]")
    share = (f" ({e['undefined_share']:.0%} of test resamples undefined)"
             if e.get("undefined_share") else "")
    return number(e["delta"], sign=True) + ci + share


def power_text(p: dict) -> str:
    """The power line of the report."""
    if p["pooled_seed_sd"] is None:
        return "Power: not estimable (no arm has two seeds)."
    text = (f"Power: the seed-to-seed standard deviation of {p['metric']} is "
            f"{p['pooled_seed_sd']:.3f} (pooled within arms over {p['n_runs']} runs, itself "
            "uncertain).")
    if p.get("method"):
        def need(n: int | None) -> str:
            return "more than 100 seeds per arm" if n is None else f"about **{n} seeds per arm**"

        text += (f" For this report's own test ({p['method']}; {p['reps']} simulated grids per "
                 f"seed count, seed {p['seed']}), detecting a {p['difference'] * 100:g}-point "
                 f"{p['metric']} difference with {p['power'] * 100:g} % power takes "
                 f"{need(p['seeds_per_arm'])} for one arm against the reference arm (power at "
                 f"this report's {p['seeds_now']} seeds: {p['power_now']:.2f})")
        if p.get("main_effect_power_now") is not None:
            text += (f", and {need(p['main_effect_seeds_per_arm'])} for a main effect (one "
                     "factor's level against another, each the average of several arms: the "
                     f"question the grid asks; power now: {p['main_effect_power_now']:.2f})")
        text += (" when every other comparison is a clear effect, so that Holm tests this one "
                 "last, at 5 % (the best case). When every other comparison is null, Holm tests "
                 f"it at 5 % / {p['n_tests']}: then one arm against another takes "
                 f"{need(p['seeds_per_arm_worst'])} (power now "
                 f"{p['power_now_worst']:.2f})")
        if p.get("main_effect_power_now_worst") is not None:
            text += (f" and a main effect {need(p['main_effect_seeds_per_arm_worst'])} (power "
                     f"now {p['main_effect_power_now_worst']:.2f})")
        text += "."
    if p.get("seeds_per_arm_seed_only") is not None:
        text += (f" A two-sample t-test over seeds alone (statsmodels TTestIndPower, no test-set "
                 f"term, no multiplicity) would ask only {p['seeds_per_arm_seed_only']} per arm "
                 "for two arms: too few for the test this report runs.")
    if p["se_test"] is not None:
        text += (f" The test set's patient sampling adds se {p['se_test']:.3f} to a difference "
                 "(measured at this report's seeds); if none of it shrank with more seeds, no "
                 f"number of seeds would detect a difference below {p['floor']:.3f} on this "
                 "test set.")
    return text


def markdown(summary: dict, header: str | None = None) -> str:
    """metrics/ablation.md."""
    header = summary.get("header", "") if header is None else header
    lines = ["# Ablation: the backbone or the balancing?", "", f"**{summary['answer']}**", ""]
    if summary.get("selection_note"):
        lines += [summary["selection_note"], ""]
    if header:
        lines += [header, ""]
    lines += [(f"Test set: {summary['n_test_images']} images of {summary['n_test_patients']} "
               "patients. Per arm: mean over seeds [95 % t-interval over seeds, clipped to "
               "[0, 1]]."),
              "", "| arm | seeds | " + " | ".join(REPORT_METRICS) + " |",
              "|---|---|" + "---:|" * len(REPORT_METRICS)]
    for arm, entry in summary["arms"].items():
        cells = []
        for m in REPORT_METRICS:
            e = entry[m]
            ci = "" if e["ci_low"] is None else f" [{number(e['ci_low'])}, {number(e['ci_high'])}]"
            cells.append(number(e["mean"]) + ci)
        lines.append(f"| {arm} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    comps = summary["comparisons"]
    if comps:
        lines += [
            "", f"## Differences from `{summary['reference_arm']}`", "",
            ("Each arm minus the reference arm"
             + ("; a main effect is one factor's level minus its reference level, averaged over "
                "the other factors' levels (an interaction can hide behind an average)"
                if any(c["main_effect"] for c in comps.values()) else "")
             + ("; an interaction is one factor's effect at another factor's level minus its "
                "effect at that factor's reference level (0: the effects add up; `interaction`"
                " when its Holm p is below 0.05)"
                if any(c.get("kind") == "interaction" for c in comps.values()) else "")
             + ". 95 % interval: Student's t over the seeds (se seeds: Welch, seeds unpaired) "
             "widened by the part of the test patients' sampling that the runs share (se test: "
             f"one patient-grouped bootstrap of {summary['n_resamples']} resamples, the same "
             "resampled patients for every run); df: Welch-Satterthwaite of the total; never "
             "narrower than Welch's interval over the seeds alone (pneumonia.stats.seeds). "
             "Accuracy and ROC AUC are the primary metrics: `better` / "
             "`worse` when the Holm-corrected p-value over all their "
             f"{summary['n_tests']} comparisons is below 0.05, else `within noise`."),
            "", ("| comparison | metric | delta [95 % CI] | se seeds | se test | df | p | "
            "p (Holm) | verdict |"), "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for name, c in comps.items():
            for m in ANSWER_METRICS:
                e = c["metrics"][m]
                df = "n/a" if e["df"] is None else ("inf" if math.isinf(e["df"])
                                                    else f"{e['df']:.1f}")
                lines.append(f"| {name} | {m} | {_delta_ci(e)} | {number(e['se_seed'])} | "
                             f"{number(e['se_test'])} | {df} | {p_value(e['pvalue'])} | "
                             f"{p_value(e['pvalue_holm'])} | {e['verdict']} |")
        rest = [m for m in REPORT_METRICS if m not in ANSWER_METRICS]
        lines += ["", ("Descriptive (no verdict, no multiplicity correction): the other metrics' "
                  "differences, same method."), "",
                  "| comparison | " + " | ".join(rest) + " |", "|---|" + "---:|" * len(rest)]
        for name, c in comps.items():
            lines.append(f"| {name} | " + " | ".join(_delta_ci(c["metrics"][m]) for m in rest)
                         + " |")
        if summary.get("main_effects_note"):
            lines += ["", summary["main_effects_note"] + "."]
        qualified = [f"- {name}, {m}{qualifier(name, m, comps)}." for name in comps
                     for m in ANSWER_METRICS if qualifying_interactions(name, m, comps)]
        if qualified:
            lines += ["", ("Main effects that an interaction qualifies (its 95 % interval "
                      "excludes 0):"), "", *qualified]
    lines += ["", power_text(summary["power"])]
    lines += ["", "## Runs", "", "| experiment | arm | seed | threshold | accuracy | roc_auc |",
              "|---|---|---:|---:|---:|---:|"]
    for name, r in summary["runs"].items():
        lines.append(f"| {name} | {r['arm']} | {r['seed']} | {r['threshold']:g} | "
                     f"{number(r['accuracy'])} | {number(r['roc_auc'])} |")
    return "\n".join(lines) + "\n"


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


