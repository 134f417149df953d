"""The ablation's statistics: the arms' factors and contrasts (each arm vs the reference arm,
main effects, interactions), per-arm t-intervals over seeds, and the power line (how many seeds a
2-point difference needs). pneumonia.experiments.report.summarize puts them together;
ablation_markdown words them."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.experiments.predictions import COLUMNS
from pneumonia.stats.seeds import (
    detectable_floor,
    pooled_sd,
    seeds_needed,
    simulated_power,
    simulated_seeds_needed,
    t_interval,
)

# What the report shows, in order: accuracy and ROC AUC carry the answer; the per-class cells are
# where balancing should act (NORMAL is the minority class).
REPORT_METRICS = ("accuracy", "roc_auc", "NORMAL_recall", "NORMAL_precision", "NORMAL_f1",
                  "PNEUMONIA_recall", "PNEUMONIA_f1")


ANSWER_METRICS = ("accuracy", "roc_auc")  # primary: Holm-corrected words; the rest descriptive


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


def pneumonia_labels(predictions: pd.DataFrame) -> np.ndarray:
    return (predictions["actual"] == "PNEUMONIA").to_numpy(dtype=int)


def check_same_images(runs: list[RunResult]) -> None:
    first = runs[0].predictions
    for run in runs[1:]:
        p = run.predictions
        if len(p) != len(first) or not (p["image_id"].to_numpy() == first["image_id"].to_numpy()
                                         ).all() or not (p["actual"] == first["actual"]).all():
            raise PipelineError(
                f"experiments {runs[0].name} and {run.name} were evaluated on different test "
                "images: a paired comparison needs the same test set. Re-run them on one dataset."
            )


def seed_t_interval(values: list[float | None]) -> tuple[float | None, float | None]:
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


def arm_contrasts(arms: list[str], reference: str) -> tuple[dict[str, dict[str, float]], str]:
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


def finite_or_none(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)
