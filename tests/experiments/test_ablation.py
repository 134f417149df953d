"""The ablation grid (`pneumonia ablation`) and its report (`pneumonia report`)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pneumonia.commands.experiments import report_command
from pneumonia.errors import PipelineError
from pneumonia.experiments import ablation, ablation_markdown, ablation_stats, report
from pneumonia.experiments.grid import dataset_override
from pneumonia.formatting import p_value_phrase
from pneumonia.params import arm_of, load_params, parse_params
from tests.trainkit import commit_tiny_grid, with_overrides

REPO = Path(__file__).resolve().parents[2]


def test_grid_covers_every_arm_and_seed_with_matching_arm_names() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["ablation"] = {"backbones": ["densenet121", "resnet50"],
                       "balance_methods": ["augmentor", "none"],
                       "freeze_batchnorm": [True, False], "seeds": [1, 2, 3]}
    params = parse_params(raw)
    runs = ablation.grid(params.ablation)
    assert len(runs) == 2 * 2 * 2 * 3
    assert len({r.name for r in runs}) == len(runs)  # one DVC experiment each
    for run in runs:
        over = run.overrides("cpu")
        assert over["model.weights"] == "none" and over["train.seed"] == str(run.seed)
        # The arm the command names must be the arm the train stage tags (arm_of of the params
        # the experiment will run with), or the report would group runs wrongly.
        assert arm_of(parse_params(with_overrides(raw, over))) == run.arm
    assert ablation.grid(load_params(REPO / "params.yaml").ablation)  # the committed grid parses


def _run(name: str, arm: str, seed: int, prob: np.ndarray, patients: list[str],
         labels: np.ndarray) -> report.RunResult:
    preds = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(len(prob))],
                          "patient_id": patients,
                          "actual": np.where(labels == 1, "PNEUMONIA", "NORMAL"),
                          "probability": prob})
    return report.RunResult(name, "0" * 40, arm, seed, 0.5, preds)


@pytest.fixture
def test_set() -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.62).astype(int)
    patients = [f"p{i // 2}" for i in range(300)]  # two images per patient
    return labels, patients


def test_identical_arms_are_within_noise_and_a_much_better_arm_is_better(test_set) -> None:
    labels, patients = test_set
    rng = np.random.default_rng(1)
    ref, same, good = "densenet121/augmentor/bn-frozen", "densenet121/none/bn-frozen", \
        "densenet121/class_weight/bn-frozen"
    runs = []
    for seed in (1, 2, 3):
        noisy = np.clip(labels * 0.2 + 0.4 + rng.normal(0, 0.25, labels.size), 0, 1)  # weak
        runs.append(_run(f"abl-ref-s{seed}", ref, seed, noisy, patients, labels))
        runs.append(_run(f"abl-same-s{seed}", same, seed, noisy, patients, labels))
        sharp = np.clip(labels * 0.8 + 0.1 + rng.normal(0, 0.05, labels.size), 0, 1)  # strong
        runs.append(_run(f"abl-good-s{seed}", good, seed, sharp, patients, labels))
    s = report.summarize(runs, n_resamples=500)
    assert s["reference_arm"] == ref
    assert s["n_test_patients"] == 150
    same_acc = s["comparisons"][same]["metrics"]["accuracy"]
    assert same_acc["delta"] == 0 and same_acc["verdict"] == "within noise"
    # Seed 1 of one arm is no partner of seed 1 of another (Welch, unpaired over seeds), so
    # identical arms still get an interval of seed noise around 0.
    assert same_acc["ci_low"] < 0 < same_acc["ci_high"]
    good_acc = s["comparisons"][good]["metrics"]["accuracy"]
    assert good_acc["verdict"] == "better" and good_acc["ci_low"] > 0
    assert good_acc["pvalue_holm"] < 0.05 and s["n_tests"] == 4
    assert f"{good} is better on accuracy" in s["answer"]
    p_text = p_value_phrase(good_acc["pvalue_holm"])  # "< 0.001" in words, never "= 0.000"
    assert f"Holm p {p_text})" in s["answer"] and "p = 0.000" not in s["answer"]
    assert p_value_phrase(0.0004) == "< 0.001" and p_value_phrase(0.0204) == "= 0.020"
    # the secondary metrics are descriptive: an interval, no word
    assert "verdict" not in s["comparisons"][good]["metrics"]["NORMAL_recall"]
    # Per-arm means are the means of the runs' own metrics (recomputed independently here).
    accs = [np.mean((r.predictions["probability"] >= 0.5) == (labels == 1)) for r in runs
            if r.arm == good]
    assert s["arms"][good]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    lo, hi = s["arms"][good]["accuracy"]["ci_low"], s["arms"][good]["accuracy"]["ci_high"]
    assert lo <= np.mean(accs) <= hi
    md = ablation_markdown.markdown(s)
    assert md.splitlines()[2] == f"**{s['answer']}**" and "| abl-good-s1 |" in md
    assert "Power: the seed-to-seed standard deviation of accuracy" in md


def test_only_noise_between_arms_says_so(test_set) -> None:
    labels, patients = test_set
    rng = np.random.default_rng(2)
    runs = [_run(f"abl-{m}-s{seed}", f"densenet121/{m}/bn-frozen", seed,
                 np.clip(labels * 0.3 + 0.35 + rng.normal(0, 0.25, labels.size), 0, 1),
                 patients, labels)
            for m in ("augmentor", "none") for seed in (1, 2)]
    s = report.summarize(runs, n_resamples=500)
    verdicts = {s["comparisons"]["densenet121/none/bn-frozen"]["metrics"][m]["verdict"]
                for m in ablation_stats.ANSWER_METRICS}
    assert verdicts == {"within noise"}
    assert s["answer"].startswith("No arm differs from the reference arm")


def test_arms_are_compared_on_the_same_patient_resamples(test_set) -> None:
    """Pairing: two arms that make the same errors, except that one fixes 9 of the reference's
    errors with every seed. On the same resampled patients the shared errors cancel and the
    test-set term is the spread of those 9 images among 300, ~0.01. Scored on different resamples
    (pairing lost) the runs share no resampled patients, the shared term comes out 0 (measured),
    and the interval would rest on the seeds alone, blind to the test set."""
    labels, patients = test_set
    rng = np.random.default_rng(3)
    base = np.clip(labels * 0.3 + 0.35 + rng.normal(0, 0.25, labels.size), 0, 1)
    fixed = np.flatnonzero(labels == 1)[:9]
    base[fixed] = 0.1  # the reference misses these PNEUMONIA images
    runs = []
    for seed in (1, 2, 3):
        prob = np.clip(base + rng.normal(0, 0.01, labels.size), 0, 1)  # seeds differ a little
        runs.append(_run(f"abl-ref-s{seed}", "x/augmentor/bn-frozen", seed, prob, patients,
                         labels))
        better = prob.copy()
        better[fixed] = 0.9
        runs.append(_run(f"abl-fix-s{seed}", "x/none/bn-frozen", seed, better, patients,
                         labels))
    s = report.summarize(runs, n_resamples=500)
    acc = s["comparisons"]["x/none/bn-frozen"]["metrics"]["accuracy"]
    assert acc["delta"] == pytest.approx(9 / 300)
    assert 0.005 < acc["se_test"] < 0.015  # ~ the spread of 9 fixed images among 300: ~0.01
    assert acc["verdict"] == "better"


def test_two_factor_grid_compares_with_the_papers_arm_and_reports_main_effects(test_set) -> None:
    """backbone x balancing, 2 x 3 arms: the reference is DenseNet201 with Augmentor; each
    factor's main effect is the level's gain averaged over the other factor's levels."""
    labels, patients = test_set
    rng = np.random.default_rng(4)
    gain = {"augmentor": 0.0, "class_weight": 0.0, "none": 0.25}
    runs = []
    for backbone in ("densenet201", "resnet50"):
        for method in ("augmentor", "class_weight", "none"):
            for seed in (1, 2, 3):
                sharp = 0.3 + gain[method] + rng.normal(0, 0.02)
                prob = np.clip(labels * sharp + (1 - sharp) / 2
                               + rng.normal(0, 0.2, labels.size), 0, 1)
                runs.append(_run(f"abl-{backbone}-{method}-s{seed}",
                                 f"{backbone}/{method}/bn-frozen", seed, prob, patients, labels))
    s = report.summarize(runs, n_resamples=300)
    assert s["reference_arm"] == "densenet201/augmentor/bn-frozen"
    names = set(s["comparisons"])
    assert len([n for n in names if s["comparisons"][n]["kind"] == "arm"]) == 5  # each vs ref
    main = {n for n, c in s["comparisons"].items() if c["main_effect"]}
    assert main == {"backbone: resnet50 - densenet201 (main effect)",
                    "balance: class_weight - augmentor (main effect)",
                    "balance: none - augmentor (main effect)"}
    effect = s["comparisons"]["balance: none - augmentor (main effect)"]
    assert effect["arms"] == {"densenet201/augmentor/bn-frozen": -0.5,
                              "densenet201/none/bn-frozen": 0.5,
                              "resnet50/augmentor/bn-frozen": -0.5,
                              "resnet50/none/bn-frozen": 0.5}
    want = np.mean([s["arms"][f"{b}/none/bn-frozen"]["accuracy"]["mean"]
                    - s["arms"][f"{b}/augmentor/bn-frozen"]["accuracy"]["mean"]
                    for b in ("densenet201", "resnet50")])
    assert effect["metrics"]["accuracy"]["delta"] == pytest.approx(want)
    assert effect["metrics"]["accuracy"]["verdict"] == "better"
    backbone = s["comparisons"]["backbone: resnet50 - densenet201 (main effect)"]
    assert backbone["metrics"]["accuracy"]["verdict"] == "within noise"
    inter = {n for n, c in s["comparisons"].items() if c["kind"] == "interaction"}
    assert len(inter) == 2  # resnet50 x class_weight, resnet50 x none
    assert s["n_tests"] == 2 * (5 + 3 + 2)  # Holm over every primary comparison
    md = ablation_markdown.markdown(s)
    assert "balance: none - augmentor (main effect)" in md and "averaged over" in md
    # Power for the report's own test (simulated): a main effect (each level the average of
    # several arms) needs fewer seeds per arm than one arm against another; Holm over all 20
    # comparisons (worst case) needs more than the best case.
    pw = s["power"]
    assert pw["n_tests"] == 20 and pw["seeds_now"] == 3
    assert pw["main_effect_power_now"] >= pw["power_now"] >= pw["power_now_worst"]
    big = 10**6  # None: more than 100 seeds
    assert ((pw["main_effect_seeds_per_arm"] or big) <= (pw["seeds_per_arm"] or big)
            <= (pw["seeds_per_arm_worst"] or big))
    assert "for one arm against the reference arm (power at this report's 3 seeds" in md
    # an incomplete grid gets no main effects, and says why
    partial = report.summarize([r for r in runs if r.arm != "resnet50/none/bn-frozen"],
                               n_resamples=200)
    assert not any(c["main_effect"] for c in partial["comparisons"].values())
    assert "grid is incomplete" in partial["main_effects_note"]


def test_seed_interval_is_the_t_interval_kept_inside_the_metric_range() -> None:
    from scipy import stats

    low, high = ablation_stats.seed_t_interval([0.80, 0.82, 0.84])
    half = stats.t.ppf(0.975, 2) * 0.02 / np.sqrt(3)
    assert (low, high) == pytest.approx((0.82 - half, 0.82 + half))
    # three widely spread recalls: the raw t-interval runs past 1 and below 0
    assert ablation_stats.seed_t_interval([0.30, 0.99, 0.85]) == (0.0, 1.0)
    assert ablation_stats.seed_t_interval([0.9, None]) == (None, None)


def test_runs_on_different_test_sets_are_refused(test_set) -> None:
    labels, patients = test_set
    a = _run("abl-a-s1", "x/augmentor/bn-frozen", 1, np.full(300, 0.7), patients, labels)
    b = _run("abl-b-s1", "x/none/bn-frozen", 1, np.full(299, 0.7), patients[:299], labels[:299])
    with pytest.raises(PipelineError, match="different test images"):
        report.summarize([a, b], n_resamples=50)


def test_extend_adds_new_seeds_to_the_committed_runs_and_refuses_to_overwrite_one(
        test_set) -> None:
    labels, patients = test_set
    prob = np.where(labels == 1, 0.8, 0.3)
    committed = [_run(f"abl-x-s{s}", "x/augmentor/bn-frozen", s, prob, patients, labels)
                 for s in (1, 2)]
    new = [_run("abl-x-s3", "x/augmentor/bn-frozen", 3, prob, patients, labels)]
    runs = report.extended(committed, new)
    assert [r.name for r in runs] == ["abl-x-s1", "abl-x-s2", "abl-x-s3"]
    assert report.summarize(runs, n_resamples=50)["arms"]["x/augmentor/bn-frozen"]["seeds"] == [
        1, 2, 3]
    with pytest.raises(PipelineError, match="abl-x-s2 are already in metrics/ablation/"):
        report.extended(committed, [committed[1]])
    both = argparse.Namespace(prefix="abl", header=None, from_committed=True, extend=True)
    with pytest.raises(PipelineError, match="--from-committed and --extend exclude each other"):
        report_command(both)


def test_committed_ablation_report_recomputes_from_its_predictions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics/ablation.md's numbers come from the committed per-run predictions: recompute."""
    if not (REPO / report.ABLATION_JSON).is_file():
        pytest.skip("no committed ablation report (metrics/ablation.json) yet")
    monkeypatch.chdir(REPO)
    committed = json.loads(report.ABLATION_JSON.read_text())
    runs = report.load_committed()
    again = report.summarize(runs, n_resamples=committed["n_resamples"],
                             header=committed["header"])
    again["selection_note"] = report.selection_note(again, runs)
    assert again["answer"] == committed["answer"]
    assert report.ABLATION_MD.read_text() == ablation_markdown.markdown(again)
    # floats to 1e-9, not bit for bit: NumPy's SIMD reductions differ in the last bits between
    # CPUs (AVX2 vs AVX-512), and the suite runs on either
    _assert_same(json.loads(json.dumps(again)), committed, "ablation.json")


def _assert_same(got: object, want: object, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def test_dataset_ignored_by_git_is_passed_to_queued_runs_by_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued experiments run in a copy of the git-tracked files: data/raw/ (ignored) would be
    missing there, so the grid passes it as an absolute path; a tracked folder stays relative."""
    monkeypatch.chdir(tmp_path)
    subprocess.run(["git", "init", "-q"], check=True)
    (tmp_path / ".gitignore").write_text("data/raw/\n")
    for folder in ("data/raw/chest_xray", "data/sample/chest_xray"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.png").write_bytes(b"x")
    subprocess.run(["git", "add", ".gitignore", "data/sample"], check=True)
    assert dataset_override("data/raw/chest_xray") == {
        "data.raw": str(tmp_path.resolve() / "data/raw/chest_xray")}
    assert dataset_override("data/sample/chest_xray") == {}
    assert dataset_override(str(tmp_path / "data/raw/chest_xray")) == {}
    with pytest.raises(PipelineError, match="data.raw: data/raw/missing does not exist"):
        dataset_override("data/raw/missing")


def test_report_without_experiments_is_one_clear_message(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    proc = subprocess.run([sys.executable, "-m", "pneumonia", "report"], cwd=tmp_path, check=False,
                          capture_output=True, text=True, env={"PYTHONPATH": str(REPO),
                                                               "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    assert "no DVC experiment named abl-*" in proc.stderr and "Traceback" not in proc.stderr


# Four tiny experiments through DVC's queue. The grid's machinery is under test, not a network:
# small_cnn, whose graph traces in seconds (with densenet121 the test took 7 min on 2 Intel vCPUs).
@pytest.mark.slow
def test_ablation_command_runs_the_grid_and_reports(tmp_path: Path) -> None:
    from tests.pipeline.test_dvc import TINY, dvc, git, make_project

    repo = make_project(tmp_path, {**TINY, "train.epochs": 1})
    commit_tiny_grid(repo, git)
    env_path = str(Path(sys.executable).parent)
    proc = subprocess.run(
        [sys.executable, "-m", "pneumonia", "ablation", "--timeout-min", "20"], cwd=repo,
        capture_output=True, text=True, check=False,
        env={"PYTHONPATH": str(repo), "PATH": f"{env_path}:/usr/bin:/bin", "HOME": str(tmp_path),
             "DVC_NO_ANALYTICS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    dvc(repo, "queue", "stop", "--kill", check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((repo / "metrics/ablation.json").read_text())
    assert set(summary["arms"]) == {"small_cnn/augmentor/bn-frozen", "small_cnn/none/bn-frozen"}
    assert all(a["seeds"] == [1, 2] for a in summary["arms"].values())
    assert len(list((repo / "metrics/ablation").glob("abl-*.csv"))) == 4
    assert (repo / "metrics/ablation.md").read_text().startswith("# Ablation")
    assert summary["n_test_images"] == 100


def test_an_interaction_is_reported_and_qualifies_the_main_effect(test_set) -> None:
    """Issue 33 item 3: balancing helps only with one backbone. The 2 x 2 report carries the
    interaction (coefficients +1/-1/-1/+1, its interval and test), and the main effect of
    balancing says in its sentence that the interaction qualifies it."""
    labels, patients = test_set
    rng = np.random.default_rng(7)
    gain = {("densenet121", "augmentor"): 0.0, ("densenet121", "none"): 0.0,
            ("resnet50", "augmentor"): 0.0, ("resnet50", "none"): -0.25}
    runs = []
    for (backbone, method), g in gain.items():
        for seed in (1, 2, 3, 4):
            sharp = 0.35 + g + rng.normal(0, 0.01)
            prob = np.clip(labels * sharp + (1 - sharp) / 2
                           + rng.normal(0, 0.2, labels.size), 0, 1)
            runs.append(_run(f"abl-{backbone}-{method}-s{seed}",
                             f"{backbone}/{method}/bn-frozen", seed, prob, patients, labels))
    s = report.summarize(runs, n_resamples=300)
    name = ablation_stats.interaction_name("backbone", "resnet50", "densenet121", "balance", "none",
                                   "augmentor")
    inter = s["comparisons"][name]
    assert inter["kind"] == "interaction" and not inter["main_effect"]
    assert inter["arms"] == {"resnet50/none/bn-frozen": 1.0, "densenet121/none/bn-frozen": -1.0,
                             "resnet50/augmentor/bn-frozen": -1.0,
                             "densenet121/augmentor/bn-frozen": 1.0}
    acc = inter["metrics"]["accuracy"]
    arm = {a: s["arms"][a]["accuracy"]["mean"] for a in s["arms"]}
    want = (arm["resnet50/none/bn-frozen"] - arm["densenet121/none/bn-frozen"]
            - arm["resnet50/augmentor/bn-frozen"] + arm["densenet121/augmentor/bn-frozen"])
    assert acc["delta"] == pytest.approx(want) and acc["ci_high"] < 0
    assert acc["verdict"] == "interaction" and acc["pvalue_holm"] < 0.05
    main = "balance: none - augmentor (main effect)"
    assert ablation_markdown.qualifying_interactions(main, "accuracy", s["comparisons"]) == [name]
    md = ablation_markdown.markdown(s)
    assert f"| {name} | accuracy |" in md
    assert f"{main} is worse on accuracy" in s["answer"]
    sentence = s["answer"].split(f"{main} is worse on accuracy", 1)[1].split(";")[0]
    assert "qualified by an interaction" in sentence
    # with equal effects at both backbones there is no qualifier
    flat = [r for r in runs if r.arm != "resnet50/none/bn-frozen"]
    flat += [report.RunResult(r.name.replace("densenet121", "resnet50"), r.commit,
                              "resnet50/none/bn-frozen", r.seed, r.threshold, r.predictions)
             for r in runs if r.arm == "densenet121/none/bn-frozen"]
    s2 = report.summarize(flat, n_resamples=300)
    assert ablation_markdown.qualifying_interactions(main, "accuracy", s2["comparisons"]) == []


def test_reference_runs_chosen_on_test_are_labelled_post_selection(test_set, tmp_path) -> None:
    """Issue 33 item 1: the reference arm's runs that ARE the recipe search's runs of a
    candidate chosen on the test set are named as such; chosen on validation, no label."""
    labels, patients = test_set
    rng = np.random.default_rng(2)
    runs = [_run(f"abl-d-augmentor-s{k}", "d/augmentor/bn-frozen", k,
                 rng.uniform(0, 1, labels.size), patients, labels) for k in (1, 2)]
    runs.append(_run("abl-d-none-s1", "d/none/bn-frozen", 1, rng.uniform(0, 1, labels.size),
                     patients, labels))
    folder = tmp_path / "recipe"
    folder.mkdir()
    runs[0].predictions.to_csv(folder / "rcp-win-s1.csv", index=False)
    doc = {"chosen_on": "test", "chosen": "win",
           "runs": {"rcp-win-s1": {"candidate": "win"}, "rcp-other-s1": {"candidate": "other"}}}
    (tmp_path / "recipe.json").write_text(json.dumps(doc))
    summary = {"reference_arm": "d/augmentor/bn-frozen"}
    note = report.selection_note(summary, runs, folder, tmp_path / "recipe.json")
    assert "abl-d-augmentor-s1 = rcp-win-s1" in note and "TEST set" in note
    assert "s2" not in note
    doc["chosen_on"] = "validation"
    (tmp_path / "recipe.json").write_text(json.dumps(doc))
    assert report.selection_note(summary, runs, folder, tmp_path / "recipe.json") == ""
