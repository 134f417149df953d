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
    every = json.loads((METRICS / "site-adapt.json").read_text())["families"]
    for family in ("cnn-ema", "dn121-ema"):
        adapt = every[family]["conditions"]
        for cond in ("test, adapted on the whole half",
                     "validation (control), adapted on the whole half"):
            diff = cell(adapt[cond]["accuracy"]["difference"], signed=True)
            # the docs write a minus sign
            assert diff.replace("-", "−") in text, (family, cond, diff)


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
