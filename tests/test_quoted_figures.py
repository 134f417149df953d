"""Figures quoted in the README, MODEL_CARD and docs come from committed artifacts: each check
recomputes a quoted figure from metrics/*.json or metrics/*/*.csv and looks for it, as written, in
the text that quotes it. A figure that drifts from its artifact (or an artifact regenerated without
the text) fails here, naming the file and the figure. (MODEL_CARD's generated block is checked by
tests/test_docs.py; the ablation's figures in the README too.)

Convention for new quotes: commit the run's outputs under metrics/runs/<name>/ (evaluate.json,
predictions.csv) and add a check here, or generate the sentence as MODEL_CARD's block is.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
METRICS = ROOT / "metrics"


def _text(rel: str) -> str:
    return (ROOT / rel).read_text(encoding="utf-8")


def _recipe() -> dict:
    return json.loads((METRICS / "recipe.json").read_text())["candidates"]


def _mean_sd_ci(m: dict, digits: int = 3) -> str:
    f = f"{{:.{digits}f}}"
    return (f"{f.format(m['mean'])} ± {f.format(m['sd'])} "
            f"[{f.format(m['ci_low'])}, {f.format(m['ci_high'])}]")


def _ci(m: dict, digits: int = 3) -> str:
    f = f"{{:.{digits}f}}"
    return f"{f.format(m['mean'])} [{f.format(m['ci_low'])}, {f.format(m['ci_high'])}]"


def test_cpu_recipe_figures_in_readme_and_experiments() -> None:
    """The CPU recipe (dn121-ema): metrics/recipe.json's means, seed SDs and t-intervals."""
    c = _recipe()["dn121-ema"]
    readme = _text("README.md")
    for quoted in (f"accuracy {_ci(c['accuracy'])} (seed SD {c['accuracy']['sd']:.3f})",
                   f"ROC AUC {_ci(c['roc_auc'])}",
                   f"NORMAL recall {_ci(c['NORMAL_recall'], 2)}"):
        assert quoted in readme, f"README.md: {quoted!r} (metrics/recipe.json dn121-ema)"
    exp = " ".join(_text("docs/experiments.md").split())
    for quoted in (f"accuracy {_mean_sd_ci(c['accuracy'])}", f"ROC AUC {_mean_sd_ci(c['roc_auc'])}",
                   f"NORMAL recall {_mean_sd_ci(c['NORMAL_recall'])}",
                   (f"PNEUMONIA recall {c['PNEUMONIA_recall']['mean']:.3f} ± "
                    f"{c['PNEUMONIA_recall']['sd']:.3f}")):
        assert quoted in exp, f"docs/experiments.md: {quoted!r} (metrics/recipe.json dn121-ema)"


def test_seed_spread_quoted_in_card_experiments_and_reliability() -> None:
    r = _recipe()
    chosen = f"{r['dn121-ema']['NORMAL_recall']['sd']:.3f}"
    earlier = f"{r['prev-cpu']['NORMAL_recall']['sd']:.3f}"
    for rel in ("MODEL_CARD.md", "docs/experiments.md", "docs/reliability.md"):
        text = " ".join(_text(rel).split())
        assert chosen in text and earlier in text, (rel, chosen, earlier)
    exp = " ".join(_text("docs/experiments.md").split())
    assert f"seed SD {r['prev-cpu']['accuracy']['sd']:.3f}" in exp
    assert f"accuracy SD {r['dn121-ema']['accuracy']['sd']:.3f}" in exp


def _range(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}"


def recall_by_cause_sentence() -> str:
    """PNEUMONIA recall by cause (and NORMAL recall) over the committed recipe runs' seeds,
    threshold 0.5; the cause is in Kermany's file name (`person.._bacteria_..`, `_virus_`)."""
    parts = []
    for cand in ("prev-cpu", "dn121-ema"):
        by: dict[str, list[float]] = {"bacteria": [], "virus": [], "normal": []}
        files = sorted((METRICS / "recipe").glob(f"rcp-{cand}-s*.csv"))
        assert len(files) == 5, files
        for f in files:
            d = pd.read_csv(f)
            called = d.probability >= 0.5
            for cause in ("bacteria", "virus"):
                rows = d.image_id.str.contains(f"_{cause}_")
                by[cause].append(float(called[rows].mean()))
            normal = d.actual == "NORMAL"
            by["normal"].append(float((~called[normal]).mean()))
        parts.append(f"{cand}: bacterial {_range(by['bacteria'])}, viral {_range(by['virus'])}, "
                     f"NORMAL recall {_range(by['normal'])}")
    return "; ".join(parts)


def test_recall_by_cause_in_further_work() -> None:
    text = _text("docs/further-work.md")
    block = re.search(r"<!-- quoted:recall-by-cause -->\n(.*?)\n<!-- /quoted -->", text,
                      re.DOTALL)
    assert block, "docs/further-work.md: the quoted:recall-by-cause block is missing"
    assert block.group(1) == recall_by_cause_sentence()


@pytest.mark.parametrize("rel", ["README.md", "MODEL_CARD.md", "docs/further-work.md"])
def test_no_figure_of_the_uncommitted_seed_42_run(rel: str) -> None:
    """Seed 42's by-cause recall (viral 0.986 [0.965, 1.000]) came from a run whose outputs were
    never committed; the committed seeds of that configuration give 0.892-0.966."""
    assert "0.986\n[0.965, 1.000]" not in _text(rel) and "0.986 [0.965, 1.000]" not in _text(rel)


def test_the_ablation_power_figures_quoted_in_the_docs_are_the_committed_ones() -> None:
    """docs/experiments.md and docs/statistics.md quote metrics/ablation.json's simulated power
    line (issue 33)."""
    p = json.loads((METRICS / "ablation.json").read_text())["power"]
    for rel in ("docs/experiments.md", "docs/statistics.md"):
        text = " ".join(_text(rel).split())
        for figure in (f"{p['seeds_per_arm']}", f"{p['power_now']:.2f}",
                       f"{p['main_effect_seeds_per_arm']}", f"{p['main_effect_power_now']:.2f}",
                       f"{p['main_effect_seeds_per_arm_worst']}",
                       f"{p['power_now_worst']:.2f}", f"{p['main_effect_power_now_worst']:.2f}"):
            assert figure in text, (rel, figure)
    text = " ".join(_text("docs/experiments.md").split())
    assert f"about **{p['seeds_per_arm']}** for one arm against another" in text


def test_the_gate_error_rates_in_statistics_md_are_the_committed_run() -> None:
    """docs/statistics.md's table is benchmarks/gate_error_rates.txt's, row by row."""
    rows = re.findall(r"^\| (0\.\d+) \| ([+-]0\.\d+) \| (0\.\d+) \| (0\.\d+) \|$",
                      _text("benchmarks/gate_error_rates.txt"), re.MULTILINE)
    assert len(rows) == 10
    text = _text("docs/statistics.md")
    for _, _, new, old in rows:
        assert re.search(rf"\| (\*\*)?{re.escape(new)}(\*\*)? \| {re.escape(old)} \|$", text,
                         re.MULTILINE), (new, old)


def test_new_site_figures_are_the_committed_studies() -> None:
    """docs/new-site.md quotes metrics/site.json (k = 100) and metrics/site-adapt.json."""
    text = " ".join(_text("docs/new-site.md").split())
    site = json.loads((METRICS / "site.json").read_text())["arms"]

    def cell(s: dict, signed: bool = False) -> str:
        f = "{:+.3f}" if signed else "{:.3f}"
        return f"{f.format(s['mean'])} [{f.format(s['low'])}, {f.format(s['high'])}]"

    for arm in ("cnn-ema", "dn121-ema (cpu preset)", "cnn-ema re-run here"):
        k100 = site[arm]["k"]["100"]
        assert cell(k100["site_accuracy"]) in text, arm
        assert cell(k100["val_accuracy"]) in text, arm
    logistic = json.loads((METRICS / "site-logistic.json").read_text())
    assert logistic["protocol"]["rule"] == "logistic"
    assert {k: v for k, v in logistic["protocol"].items() if k != "rule"} == \
        {k: v for k, v in json.loads((METRICS / "site.json").read_text())["protocol"].items()
         if k != "rule"}  # the same study, another rule
    for arm in ("cnn-ema", "dn121-ema (cpu preset)", "cnn-ema re-run here",
                "cnn-ema re-run here, 5 seeds averaged"):
        assert cell(logistic["arms"][arm]["k"]["100"]["site_accuracy"]) in text, arm
    every = json.loads((METRICS / "site-adapt.json").read_text())["families"]
    for family in ("cnn-ema", "dn121-ema"):
        adapt = every[family]["conditions"]
        for cond in ("test, adapted on the whole half",
                     "validation (control), adapted on the whole half",
                     "test, adapted on 32", "validation (control), adapted on 32",
                     "test, class-balanced AdaBN on the whole half",
                     "validation (control), class-balanced AdaBN on the whole half"):
            diff = cell(adapt[cond]["accuracy"]["difference"], signed=True)
            # the docs write a minus sign
            assert diff.replace("-", "−") in text, (family, cond, diff)


def test_the_ensemble_paragraph_is_the_committed_studies() -> None:
    """docs/new-site.md's seed-ensemble paragraph: the three ensembles' and their single seeds'
    k = 100 accuracy (logistic rule), the referral ranges (class-conditional), and the served
    ensemble's check and timing (metrics/site-ensemble.json)."""
    text = " ".join(_text("docs/new-site.md").split())
    start = text.index("**A seed ensemble, served as one model**")
    para = text[start:text.index("## No labels", start)]
    arms = json.loads((METRICS / "site-logistic.json").read_text())["arms"]
    pairs = [("cnn-ema re-run here", "cnn-ema re-run here, 5 seeds averaged"),
             ("cnn-ema", "cnn-ema, 5 seeds averaged"),
             ("dn121-ema (cpu preset)", "dn121-ema (cpu preset), 5 seeds averaged")]
    k100 = {arm: arms[arm]["k"]["100"] for pair in pairs for arm in pair}

    def acc(arm: str) -> str:
        return f"{k100[arm]['site_accuracy']['mean']:.3f}"

    assert (f"reach {acc(pairs[0][1])} (`cnn-ema` re-run here), {acc(pairs[1][1])} (`cnn-ema`, "
            f"committed recipe runs) and {acc(pairs[2][1])} (`cpu` preset), against "
            f"{acc(pairs[0][0])}, {acc(pairs[1][0])} and {acc(pairs[2][0])}") in para
    gains = [k100[e]["site_accuracy"]["mean"] - k100[s]["site_accuracy"]["mean"]
             for s, e in pairs]
    assert f"+{100 * min(gains):.1f} to +{100 * max(gains):.1f} points" in para
    singles = sorted(k100[s]["mondrian_referral_rate"]["mean"] for s, _ in pairs)
    ensembles = sorted(k100[e]["mondrian_referral_rate"]["mean"] for _, e in pairs)
    assert (f"from {singles[0]:.3f}–{singles[-1]:.3f} to {ensembles[0]:.3f}–"
            f"{ensembles[-1]:.3f}") in para
    assert sum(k100[e]["site_accuracy"]["mean"] >= 0.93 for _, e in pairs) == 1
    assert "met by one ensemble of three" in para
    low = k100[pairs[0][1]]["site_accuracy"]["low"]
    assert low < 0.93 and f"its lower end, {low:.3f}" in para
    served = json.loads((METRICS / "site-ensemble.json").read_text())
    assert served["images"] == 624 and served["max_abs_difference"] < 1e-6
    digits = f"{served['max_abs_difference']:.0e}"  # e.g. 8e-07
    power = str(int(digits.split("e-")[1])).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    assert f"within {digits[0]} × 10⁻{power}" in para
    assert f"took {served['site_calibrate_100_images']['best_wall_s']} s wall" in para


def test_robustness_of_the_cpu_preset_in_further_work() -> None:
    """docs/further-work.md quotes the committed robustness run of the cpu preset (seed 1):
    metrics/runs/cpu-s1/robustness/robustness.json's clean accuracy, two paired differences and
    the shifts under each verdict."""
    d = json.loads((METRICS / "runs/cpu-s1/robustness/robustness.json").read_text())
    shifts = {s["name"]: s for s in d["shifts"]}
    text = " ".join(_text("docs/further-work.md").split())

    def value(m: dict) -> str:
        return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

    def delta(m: dict) -> str:
        return f"{m['delta']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"

    for quoted in (f"Clean: accuracy {value(d['clean']['accuracy'])}",
                   f"ROC AUC {value(d['clean']['roc_auc'])}",
                   f"accuracy {delta(shifts['resolution_0.5x']['accuracy_delta'])}",
                   f"({delta(shifts['resolution_0.5x']['roc_auc_delta'])})",
                   f"Inverted grey levels cost accuracy {delta(shifts['inverted']['accuracy_delta'])}"):
        assert quoted in text, f"docs/further-work.md: {quoted!r} (metrics/runs/cpu-s1/robustness)"
    for verdict, lead in (("worse", "significantly worse (paired 95 % interval below 0) under "),
                          ("within noise", "within noise under ")):
        names = ", ".join(f"`{n}`" for n, s in shifts.items()
                          if s["accuracy_delta"]["verdict"] == verdict)
        assert lead + names in text, f"docs/further-work.md: the shifts {verdict}"


def test_the_default_margin_and_its_trade_off_are_the_committed_run() -> None:
    """docs/statistics.md's margin and 20-candidates tables are benchmarks/gate_margins.txt's,
    row by row, and the margin it says was decided is params.yaml's and EvaluateParams'
    default (changing the default without re-deciding it fails here)."""
    import yaml

    from pneumonia.params import EvaluateParams

    measured = _text("benchmarks/gate_margins.txt")
    text = _text("docs/statistics.md")
    margins = re.findall(r"^\| (0\.0\d0) \| (0\.\d+) \| ((?:[01]\.\d{3} \| ){5}[01]\.\d{3}) \|$",
                         measured, re.MULTILINE)
    assert len(margins) == 6
    plain = text.replace("**", "")  # the docs bold the default's cells
    for _, _, cells in margins:
        assert cells in plain, cells
    today = re.findall(r"^\| (0\.0\d0) \| (0\.\d+) \| paired.*? \| ((?:[01]\.\d{3} \| ){5}"
                       r"[01]\.\d{3}) \|$", measured, re.MULTILINE)
    assert len(today) == 6
    for _, _, cells in today:
        assert cells in plain, cells
    decided = float(re.search(r"\*\*The default margin: (0\.\d+), decided", text).group(1))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert decided == params["evaluate"]["champion_margin"] == EvaluateParams().champion_margin


def _quoted(rel: str, name: str) -> str:
    block = re.search(rf"<!-- quoted:{name} -->\n(.*?)\n<!-- /quoted -->", _text(rel), re.DOTALL)
    assert block, f"{rel}: the quoted:{name} block is missing"
    return block.group(1)


def test_recall_by_cause_over_the_ablation_seeds_is_the_committed_predictions() -> None:
    """metrics/causes.json is what the committed prediction CSVs give now (re-run `pneumonia
    further-work` after changing them), and docs/further-work.md quotes its sentence."""
    from pneumonia.experiments import further_work

    doc = json.loads((METRICS / "causes.json").read_text())
    assert doc["arms"] == json.loads(json.dumps(further_work.recall_by_cause(ROOT))), \
        "metrics/causes.json is stale: run `pneumonia further-work`"
    assert _quoted("docs/further-work.md", "recall-by-cause-ablation") == \
        further_work.causes_sentence(doc)


def test_three_class_summary_is_the_committed_runs() -> None:
    """metrics/three-class.json's per-run values are metrics/runs/<run>/evaluate.json's, and
    docs/further-work.md quotes its sentence (once a three-class run is committed)."""
    from pneumonia.experiments import further_work

    path = METRICS / "three-class.json"
    if not path.is_file():
        assert "not yet committed" in _quoted("docs/further-work.md", "three-class")
        return
    doc = json.loads(path.read_text())
    runs = sorted(p.parent for p in (METRICS / "runs").glob("tc-*/evaluate.json"))
    assert sorted(doc["runs"]) == [r.name for r in runs], "run `pneumonia further-work`"
    assert doc["runs"] == json.loads(json.dumps(further_work.three_class(runs)["runs"]))
    assert _quoted("docs/further-work.md", "three-class") == \
        further_work.three_class_sentence(doc)


def test_site_check_figures_are_the_committed_study() -> None:
    """docs/new-site.md quotes metrics/site-check.json: false alarms and the test set with all
    images, and the images each robustness shift needs."""
    doc = json.loads((METRICS / "site-check.json").read_text())
    cell = {(s["site"], str(s["images"])): s for s in doc["summary"]}
    text = " ".join(_text("docs/new-site.md").split())

    def rate(s: dict) -> str:
        return f"{s['rate']:.2f} [{s['ci'][0]:.2f}, {s['ci'][1]:.2f}]"

    assert f"{rate(cell[('validation (held out)', 'all')])} of " \
           f"{cell[('validation (held out)', 'all')]['draws']}" in text
    assert rate(cell[("validation (held out), patient ids ignored", "all")]) in text
    assert f"**{rate(cell[('test', 'all')])}**" in text
    need = doc["smallest_n"]
    assert need["inverted"] == 25 and "25 images for inverted grey levels" in text
    assert need["resolution_0.25x"] == need["noise_20"] == 50
    assert "50 for a quarter of the resolution or noise of σ 20" in text
    assert need["rotate_10"] == 200 and "200 for a 10° rotation" in text
    for shift in ("resolution_0.5x", "resolution_2x", "gamma_0.67", "gamma_1.5", "contrast_0.6",
                  "contrast_1.4", "noise_8", "jpeg_30", "jpeg_10", "rotate_5"):
        assert need[shift] is None, shift  # "more than 200" in the docs
    prevalence = doc["prevalence"]
    test = [prevalence[r]["test"]["estimate"] for r in doc["runs"]]
    val = [prevalence[r]["validation"]["estimate"] for r in doc["runs"]]
    assert f"{min(e[0] for e in test):.3f}–{max(e[0] for e in test):.3f} across the five" in text
    assert f"{min(e[0] for e in val):.3f}–{max(e[0] for e in val):.3f} against" in text
    assert all(e[1] > prevalence[r]["test"]["true"] for r, e in zip(doc["runs"], test, strict=True))
    s1 = prevalence[doc["runs"][0]]["test"]["estimate"]
    assert f"seed 1: {s1[0]:.3f} [{s1[1]:.3f}, {s1[2]:.3f}]" in text
    # the "Which bandwidths" figures, and that the aggregate is today's SCALES
    from pneumonia.site.check import SCALES

    assert doc["scales"] == [float(s) for s in SCALES]
    rates = {(r["site"], str(r["images"])): r for r in doc["scale_rates"]}
    c6 = rates[("contrast_0.6", "200")]["scales"]
    assert f"0.68 of draws at 1/16 against {c6['1']:.2f} at 1" in text and \
        f"{c6['0.0625']:.2f}" == "0.68"
    n8 = rates[("noise_8", "200")]["scales"]
    assert f"noise {n8['0.0625']:.2f} against {n8['1']:.2f}" in text
    median_alone = rates[("test", "all")]["scales"]["1"]
    assert f"{median_alone:.2f} on these draws" in text
    # the whole test set against the whole reference, one file per model
    runs = sorted((METRICS / "site-check-test").glob("*.json"))
    ps = [json.loads(f.read_text())["p_value"] for f in runs]
    assert len(runs) == 9 and "every one of the 9 models" in text
    assert max(ps) < 0.01 and f"p = {min(ps):.3f}–{max(ps):.3f}" in text


def test_site_calibrate_timing_in_new_site_md_is_the_committed_benchmark() -> None:
    """docs/new-site.md quotes benchmarks/site_calibrate.json: both runs' wall and CPU seconds,
    the ratio to the goal, and the total of the per-step breakdown."""
    doc = json.loads((Path(__file__).resolve().parent.parent / "benchmarks/site_calibrate.json")
                     .read_text())
    text = " ".join(_text("docs/new-site.md").split())
    walls = [f"{r['wall_s']:.1f} s" for r in doc["runs"]]
    assert f"**{walls[0]} and {walls[1]} wall**" in text
    cpu = [f"{r['cpu_s']:.1f}" for r in doc["runs"]]
    assert f"({cpu[0]} and {cpu[1]} CPU-seconds)" in text
    assert f"{doc['ratio_to_goal']:.2f} of the goal" in text
    assert f"{doc['phases']['cpu_s_total']} CPU-seconds in all" in text
    assert doc["best_wall_s"] < doc["goal_s"] and "**Met**" in text  # the docs say it is met
    # measured on idle cores: the other processes barely ran
    assert all(r["other_processes_cpu_s"] < 5 for r in doc["runs"])


def test_served_memory_figures_in_reliability_are_the_committed_benchmark() -> None:
    """docs/reliability.md quotes benchmarks/serve_memory.json: idle, peak and growth per
    `serve.max_concurrent_decodes`, and the RSS 3 s after the last answer."""
    bench = json.loads((ROOT / "benchmarks/serve_memory.json").read_text())
    runs = {r["max_concurrent_decodes"]: r for r in bench["runs"]}
    text = " ".join(_text("docs/reliability.md").split())
    assert bench["machine"]["cpu"] in text and bench["machine"]["date"][:10] in text
    idle = {f"{r['idle_gb']:.2f}" for r in runs.values()}
    assert len(idle) == 1 and f"idle {idle.pop()} GB" in text
    import yaml

    assert yaml.safe_load(_text("params.yaml"))["serve"]["max_concurrent_decodes"] == 2
    assert (f"peak **{runs[2]['peak_gb']:.2f} GB (+{runs[2]['growth_gb']:.2f} GB)** with the "
            "default limit of 2") in text
    for limit in (1, 8):
        r = runs[limit]
        assert f"{r['peak_gb']:.2f} GB (+{r['growth_gb']:.2f}) with {limit}" in text, limit
    after = {f"{r['after_3s_gb']:.2f}" for r in runs.values()}
    assert len(after) == 1 and f"3 s after the last answer {after.pop()} GB in every case" in text


def _acc_auc(frame: pd.DataFrame) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    positive = (frame["actual"] == "PNEUMONIA").to_numpy()
    called = (frame["probability"] >= 0.5).to_numpy()
    return float((called == positive).mean()), float(roc_auc_score(positive,
                                                                    frame["probability"]))


def same_seed_other_cpu_sentence() -> str:
    """The same configuration and seed on two CPU types, both committed: the recipe search's
    runs (Intel Xeon, metrics/recipe/rcp-<candidate>-s<seed>.csv) and their re-runs on the AMD
    EPYC (metrics/runs/<name>/predictions.csv). Test accuracy / ROC AUC at threshold 0.5, and the
    share of test images both runs call alike."""
    pairs = [(f"cnn-ema seed {s}", f"recipe/rcp-cnn-ema-s{s}.csv", f"runs/cnn-ema-s{s}")
             for s in range(1, 6)]
    pairs.append(("cpu preset (dn121-ema) seed 1", "recipe/rcp-dn121-ema-s1.csv", "runs/cpu-s1"))
    parts, agree, d_acc, d_auc = [], [], [], []
    for label, intel_csv, amd_dir in pairs:
        intel = pd.read_csv(METRICS / intel_csv)
        amd = pd.read_csv(METRICS / amd_dir / "predictions.csv")
        assert list(intel["image_id"]) == list(amd["image_id"]), label
        (a1, r1), (a2, r2) = _acc_auc(intel), _acc_auc(amd)
        parts.append(f"{label}: {a1:.3f} / {r1:.3f} → {a2:.3f} / {r2:.3f}")
        d_acc.append(abs(round(a2, 3) - round(a1, 3)))
        d_auc.append(abs(round(r2, 3) - round(r1, 3)))
        agree.append(float(((intel["probability"] >= 0.5) == (amd["probability"] >= 0.5)).mean()))
    return (f"{'; '.join(parts)}. Largest change: accuracy {max(d_acc):.3f}, ROC AUC "
            f"{max(d_auc):.3f}; the two runs of a pair call {min(agree):.1%}–{max(agree):.1%} of "
            "the 624 test images alike.")


def test_same_seed_on_another_cpu_in_reliability() -> None:
    text = _text("docs/reliability.md")
    block = re.search(r"<!-- quoted:same-seed-other-cpu -->\n(.*?)\n<!-- /quoted -->", text,
                      re.DOTALL)
    assert block, "docs/reliability.md: the quoted:same-seed-other-cpu block is missing"
    assert " ".join(block.group(1).split()) == same_seed_other_cpu_sentence()
    flat = " ".join(text.split())
    assert f"own seed SD ({_recipe()['cnn-ema']['accuracy']['sd']:.3f}," in flat
    intel = _acc_auc(pd.read_csv(METRICS / "recipe/rcp-dn121-ema-s1.csv"))[0]
    amd = _acc_auc(pd.read_csv(METRICS / "runs/cpu-s1/predictions.csv"))[0]
    assert f"its one pair moved {abs(round(amd, 3) - round(intel, 3)):.3f}" in flat


DEMO_RUNS = {"demo-s42": 42, "demo-s1": 1, "demo-s2": 2}  # metrics/runs/<name>/: the seed


def _demo(name: str) -> dict:
    return json.loads((METRICS / "runs" / name / "evaluate.json").read_text())


def demo_table() -> str:
    """docs/experiments.md's table of the committed demo runs (metrics/runs/demo-s*/)."""
    def cell(e: dict, key: str) -> str:
        return f"{e[key]:.3f} [{e[key + '_ci_low']:.3f}, {e[key + '_ci_high']:.3f}]"

    rows = ["| seed | accuracy [95 % CI] | ROC AUC [95 % CI] | NORMAL recall | PNEUMONIA recall |",
            "|---|---|---|---|---|"]
    for name, seed in DEMO_RUNS.items():
        e = _demo(name)
        rows.append(f"| {seed} | {cell(e, 'accuracy')} | {cell(e, 'roc_auc')} | "
                    f"{e['NORMAL_recall']:.2f} | {e['PNEUMONIA_recall']:.2f} |")
    return "\n".join(rows)


def test_demo_runs_in_experiments_and_readme() -> None:
    """The demo's figures: docs/experiments.md's table is the committed runs', and the README's
    status row quotes their range; each run had the demo's 100 test images."""
    runs = [_demo(name) for name in DEMO_RUNS]
    assert all(e["n_test"] == 100 for e in runs)
    text = _text("docs/experiments.md")
    block = re.search(r"<!-- quoted:demo-runs -->\n(.*?)\n<!-- /quoted -->", text, re.DOTALL)
    assert block, "docs/experiments.md: the quoted:demo-runs block is missing"
    assert block.group(1) == demo_table()
    acc = [e["accuracy"] for e in runs]
    auc = [e["roc_auc"] for e in runs]
    readme = " ".join(_text("README.md").split())
    assert (f"accuracy {min(acc):.2f}–{max(acc):.2f}, ROC AUC {min(auc):.3f}–{max(auc):.3f} over "
            f"seeds {', '.join(map(str, DEMO_RUNS.values()))}") in readme


def test_the_demo_repeats_byte_for_byte_on_one_machine() -> None:
    """docs/reliability.md says the demo run twice on one machine gave byte-identical
    predictions: the two committed runs' predictions.csv are the same bytes."""
    first = (METRICS / "runs/demo-s42/predictions.csv").read_bytes()
    again = (METRICS / "runs/demo-s42-rerun/predictions.csv").read_bytes()
    assert first == again
    assert ((METRICS / "runs/demo-s42/evaluate.json").read_bytes()
            == (METRICS / "runs/demo-s42-rerun/evaluate.json").read_bytes())
    text = " ".join(_text("docs/reliability.md").split())
    assert "`metrics/runs/demo-s42/` and `metrics/runs/demo-s42-rerun/`" in text
    assert "byte-identical `predictions.csv` and `evaluate.json`" in text
