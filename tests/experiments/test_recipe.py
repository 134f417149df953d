"""`pneumonia recipe` and `pneumonia preset`: the search grid, its report, the presets."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pneumonia.errors import PipelineError
from pneumonia.experiments import presets, recipe
from pneumonia.params import parse_params
from tests.trainkit import REPO, with_overrides


def _run(candidate: str, seed: int, prob: np.ndarray, labels: np.ndarray, minutes: float
         ) -> recipe.RecipeRun:
    preds = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(len(prob))],
                          "patient_id": [f"p{i // 2}" for i in range(len(prob))],
                          "actual": np.where(labels == 1, "PNEUMONIA", "NORMAL"),
                          "probability": prob})
    return recipe.RecipeRun(recipe.experiment_name(candidate, seed), "0" * 40, candidate, seed,
                            0.5, minutes * 60, 10, preds)


def test_every_candidate_is_a_valid_override_set() -> None:
    """Each candidate and preset, applied to params.yaml, passes the params schema."""
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, overrides in (presets.CANDIDATES | presets.PRESETS).items():
        parse_params(with_overrides(base, overrides))  # ParamsError naming the key otherwise
        assert "train.seed" not in overrides, name  # the grid sets the seed


def test_grid_names_and_seeds() -> None:
    p = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).recipe
    runs = recipe.grid(p)
    assert len(runs) == len(p.candidates) * len(p.seeds)
    for name, over in runs:
        cand, seed = recipe.candidate_of(name)
        assert over == presets.CANDIDATES[cand] | {"train.seed": str(seed)}
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["recipe"]["candidates"] = ["no-such-recipe"]
    with pytest.raises(PipelineError, match="unknown candidate"):
        recipe.grid(parse_params(raw).recipe)


def test_report_gives_seed_statistics_targets_and_welch() -> None:
    rng = np.random.default_rng(0)
    y = (np.arange(200) % 3 > 0).astype(int)
    runs = []
    for seed in range(1, 6):
        # "good": right on every image but a few; "noisy": right or wrong by seed.
        good = np.where(y == 1, 0.9, 0.1) + rng.normal(0, 0.01, y.size)
        flip = rng.random(y.size) < 0.02 * seed
        runs.append(_run("good", seed, np.where(flip, 1 - good, good), y, 4.0))
        noisy = np.where(rng.random(y.size) < 0.25, 1 - good, good)
        runs.append(_run("noisy", seed, noisy, y, 20.0))
    summary = recipe.summarize(runs)
    good, noisy = summary["candidates"]["good"], summary["candidates"]["noisy"]
    assert summary["best_by_accuracy"] == "good"
    accs = [summary["runs"][recipe.experiment_name("good", s)]["accuracy"] for s in range(1, 6)]
    assert good["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert good["accuracy"]["sd"] == pytest.approx(np.std(accs, ddof=1))
    from scipy import stats

    half = stats.t.ppf(0.975, 4) * np.std(accs, ddof=1) / np.sqrt(5)
    assert good["accuracy"]["ci_low"] == pytest.approx(np.mean(accs) - half)
    assert good["targets"]["train_minutes"] is True and noisy["targets"]["train_minutes"] is False
    vs = noisy["vs_best"]
    assert vs["delta"] < 0 and vs["ci_high"] < 0 and vs["p_value"] < 0.01
    ref = stats.ttest_ind(noisy["accuracy"]["values"], good["accuracy"]["values"],
                          equal_var=False)
    assert vs["p_value"] == pytest.approx(ref.pvalue)
    from statsmodels.stats.power import TTestIndPower

    # Seeds per arm of a powered ablation with this recipe: 80 % power for 2 points at its SD.
    n = good["seeds_per_arm_2pt"]
    power = TTestIndPower().power(0.02 / good["accuracy"]["sd"], n, 0.05)
    assert power >= 0.8 > TTestIndPower().power(0.02 / good["accuracy"]["sd"], n - 1, 0.05)
    assert (noisy["seeds_per_arm_2pt"] > n) == (noisy["accuracy"]["sd"] > good["accuracy"]["sd"])
    text = recipe.markdown(summary)
    assert "| good | 5 |" in text and "(best)" in text and "missed" in text
    assert text.count(f" | {n} |") >= 1


def test_report_refuses_runs_on_different_test_images() -> None:
    y = np.array([0, 1, 1, 0])
    a = _run("a", 1, np.array([0.1, 0.9, 0.8, 0.2]), y, 1)
    b = _run("a", 2, np.array([0.1, 0.9, 0.8, 0.2]), y, 1)
    b.predictions.loc[0, "image_id"] = "other"
    with pytest.raises(PipelineError, match="different test images"):
        recipe.summarize([a, b])


def test_preset_prints_dvc_flags() -> None:
    out = subprocess.run([sys.executable, "-m", "pneumonia", "preset", "cpu"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout.split()
    flags = dict(out[i + 1].split("=", 1) for i in range(0, len(out), 2))
    assert all(out[i] == "-S" for i in range(0, len(out), 2))
    assert flags == presets.PRESETS["cpu"]
    bad = subprocess.run([sys.executable, "-m", "pneumonia", "preset", "nope"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "unknown preset 'nope'" in bad.stderr


def test_committed_recipe_report_recomputes_from_its_predictions(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pneumonia recipe --from-committed` rebuilds metrics/recipe.md and .json, header kept,
    from the committed per-run predictions alone (no experiments needed)."""
    if not (REPO / recipe.RECIPE_JSON).is_file():
        pytest.skip("no committed recipe report (metrics/recipe.json) yet")
    shutil.copytree(REPO / recipe.RECIPE_DIR, tmp_path / recipe.RECIPE_DIR)
    for path in (recipe.RECIPE_JSON, recipe.RECIPE_MD):
        shutil.copy(REPO / path, tmp_path / path)
    monkeypatch.chdir(tmp_path)
    assert recipe.command(argparse.Namespace(from_committed=True, header=None,
                                             report_only=False)) == 0
    assert recipe.RECIPE_MD.read_text() == (REPO / recipe.RECIPE_MD).read_text()
    again = json.loads(recipe.RECIPE_JSON.read_text())
    committed = json.loads((REPO / recipe.RECIPE_JSON).read_text())
    assert again["best_by_accuracy"] == committed["best_by_accuracy"]
    for cand, entry in committed["candidates"].items():
        assert again["candidates"][cand]["accuracy"]["mean"] == pytest.approx(
            entry["accuracy"]["mean"], abs=1e-12)


def test_the_cpu_preset_is_the_search_s_justified_choice() -> None:
    """PRESETS['cpu'] is the candidate metrics/recipe.json ranks first by mean accuracy, and that
    candidate meets both seed-SD targets: the preset and the committed numbers agree."""
    if not (REPO / recipe.RECIPE_JSON).is_file():
        pytest.skip("no committed recipe report (metrics/recipe.json) yet")
    committed = json.loads((REPO / recipe.RECIPE_JSON).read_text())
    best = committed["best_by_accuracy"]
    assert presets.PRESETS["cpu"] == presets.CANDIDATES[best]
    met = committed["candidates"][best]["targets"]
    assert met["accuracy_sd"] and met["NORMAL_recall_sd"]
    assert len(committed["candidates"][best]["seeds"]) >= 5
