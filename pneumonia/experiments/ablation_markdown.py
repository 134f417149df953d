"""The ablation report's words: the answer at the top (no stronger than the numbers), the
qualifiers an interaction puts on a main effect, the power line, and metrics/ablation.md's
tables. The numbers come from pneumonia.experiments.ablation_stats."""

from __future__ import annotations

import math

from pneumonia.experiments.ablation_stats import (
    ANSWER_METRICS,
    REPORT_METRICS,
)
from pneumonia.formatting import number, p_value, p_value_phrase

# The paper's arm: DenseNet201 with Augmentor balancing (the reference when the grid has it).
# The reference arm is the paper's choices as the grid's preset runs them (the `cpu` preset: a 64-px
# DenseNet121 from random weights), never the paper's configuration itself: the answer says so.
REFERENCE_NOTE = "the paper's choices of backbone and balancing, as the grid's preset runs them"


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
