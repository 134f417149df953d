"""pneumonia.stats.table3: Table III's implied confusion, its intervals, comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pneumonia import published
from pneumonia.evaluation.paper import table3_cells
from pneumonia.stats.bootstrap import wilson_interval
from pneumonia.stats.table3 import (
    CELLS,
    cells_from_confusion,
    compare_confusion_to_paper,
    compare_to_paper,
    confusion_intervals,
    paper_cells,
    paper_confusion,
    verdict,
)

# Table III of the paper, as printed (support: the official test set's class counts).
TABLE3 = {
    "accuracy": 0.96,
    "NORMAL_precision": 0.98,
    "NORMAL_recall": 0.91,
    "NORMAL_f1": 0.94,
    "NORMAL_support": 234,
    "PNEUMONIA_precision": 0.95,
    "PNEUMONIA_recall": 0.99,
    "PNEUMONIA_f1": 0.97,
    "PNEUMONIA_support": 390,
}
BASELINE = {"accuracy": 0.92, "NORMAL_recall": 0.82}


def test_paper_confusion_reproduces_every_cell() -> None:
    cm = paper_confusion()
    assert cm.tolist() == [[213, 21], [4, 386]]
    cells = cells_from_confusion(cm)
    assert set(cells) == set(TABLE3)
    for cell, printed in TABLE3.items():
        assert round(cells[cell], 2) == printed, cell
    assert paper_cells() == {k: float(v) for k, v in TABLE3.items()}


def test_paper_confusion_is_the_closest_of_five() -> None:
    # every confusion with 234 NORMAL / 390 PNEUMONIA images: five round to all of Table III;
    # paper_confusion() is the one closest to the printed values (least squared rounding error)
    tn, tp = np.meshgrid(np.arange(235), np.arange(391), indexing="ij")
    fp, fn = 234 - tn, 390 - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        cells = {
            "accuracy": (tn + tp) / 624,
            "NORMAL_precision": tn / (tn + fn),
            "NORMAL_recall": tn / 234,
            "NORMAL_f1": 2 * tn / (2 * tn + fn + fp),
            "PNEUMONIA_precision": tp / (tp + fp),
            "PNEUMONIA_recall": tp / 390,
            "PNEUMONIA_f1": 2 * tp / (2 * tp + fp + fn),
        }
    match = np.ones(tn.shape, bool)
    error = np.zeros(tn.shape)
    for cell, values in cells.items():
        match &= np.round(values, 2) == TABLE3[cell]
        error += (values - TABLE3[cell]) ** 2
    assert int(match.sum()) == 5
    error[~match] = np.inf
    best = np.unravel_index(np.argmin(error), error.shape)
    assert (int(best[0]), int(best[1])) == (paper_confusion()[0, 0], paper_confusion()[1, 1])


def test_table3_matches_the_pipelines_reference_numbers() -> None:
    assert table3_cells() == paper_cells()
    assert published.BASELINE == BASELINE


def test_wilson_599_of_624_by_hand() -> None:
    n, p, z = 624, 599 / 624, 1.959963984540054
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z / (1 + z**2 / n) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    low, high = wilson_interval(599, 624)
    assert low == pytest.approx(centre - half, abs=1e-12)
    assert high == pytest.approx(centre + half, abs=1e-12)
    assert 0.94 < low < 599 / 624 < high < 0.975


@pytest.mark.parametrize(
    ("value", "low", "high", "word"),
    [
        (0.96, 0.94, 0.97, "consistent"),
        (0.96, 0.96, 0.97, "consistent"),
        (0.96, 0.90, 0.95, "below"),
        (0.96, 0.965, 0.99, "above"),
        (0.96, float("nan"), float("nan"), "undefined"),
    ],
)
def test_verdict(value: float, low: float, high: float, word: str) -> None:
    assert verdict(value, low, high) == word


def test_paper_intervals_contain_the_paper_and_are_seeded() -> None:
    a = confusion_intervals(paper_confusion(), seed=0)
    assert a == confusion_intervals(paper_confusion(), seed=0)
    assert a["NORMAL_f1"] != confusion_intervals(paper_confusion(), seed=1)["NORMAL_f1"]
    for cell in CELLS:
        assert a[cell]["ci_low"] < a[cell]["value"] < a[cell]["ci_high"], cell
    assert a["NORMAL_f1"]["method"] == "image bootstrap" and a["accuracy"]["method"] == "wilson"


def test_a_run_equal_to_the_paper_is_consistent() -> None:
    out = compare_confusion_to_paper(paper_confusion(), baseline=BASELINE)
    assert (out["n_consistent"], out["n_cells"]) == (7, 7)
    for cell in CELLS:
        row = out["cells"][cell]
        assert row["verdict"] == "consistent"
        assert row["diff"] == pytest.approx(0, abs=1e-12)
        assert row["diff_ci_low"] < 0 < row["diff_ci_high"]
        assert row["diff_pvalue"] > 0.5
    # the paper's own numbers lie above the baseline's: our interval excludes 0.92 and 0.82
    assert {c: r["verdict"] for c, r in out["baseline"]["cells"].items()} == {
        "accuracy": "above",
        "NORMAL_recall": "above",
    }


def predictions_for(cm: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities reproducing confusion ``cm`` at 0.5, and patients of 1-3 images."""
    rng = np.random.default_rng(seed)
    y, prob = [], []
    for true in (0, 1):
        for pred in (0, 1):
            k = int(cm[true, pred])
            y.append(np.full(k, true))
            prob.append(rng.uniform(0.5, 1.0, k) if pred else rng.uniform(0.0, 0.5, k))
    y_all, prob_all = np.concatenate(y), np.concatenate(prob)
    groups = np.repeat(np.arange(y_all.size), rng.integers(1, 4, y_all.size))[: y_all.size]
    return y_all, prob_all, groups


def test_compare_predictions_to_paper() -> None:
    worse = np.array([[170, 64], [10, 380]])
    y, prob, groups = predictions_for(worse)
    out = compare_to_paper(y, prob, 0.5, groups, baseline=BASELINE, n_resamples=1000, seed=0)
    cells = out["cells"]
    expected = cells_from_confusion(worse)
    for cell in CELLS:
        assert cells[cell]["run"] == pytest.approx(expected[cell]), cell
        assert cells[cell]["paper"] == TABLE3[cell]
    # NORMAL recall 170/234 = 0.73 vs the paper's 0.91: clearly below, significant difference
    normal_recall = cells["NORMAL_recall"]
    assert normal_recall["verdict"] == "below"
    assert normal_recall["diff"] == pytest.approx(170 / 234 - 213 / 234)
    # the smallest p-value 1000 bootstrap resamples can give: 2 / 1001
    assert normal_recall["diff_ci_high"] < 0 and normal_recall["diff_pvalue"] <= 2 / 1001
    assert cells["NORMAL_f1"]["verdict"] == "below" and cells["NORMAL_f1"]["diff_ci_high"] < 0
    # PNEUMONIA recall 380/390 = 0.974 vs 0.99: within our interval
    assert cells["PNEUMONIA_recall"]["verdict"] == "consistent"
    assert out["n_consistent"] == sum(c["verdict"] == "consistent" for c in cells.values())
    assert out["n_consistent"] < out["n_cells"] == 7
    base = out["baseline"]["cells"]
    assert base["NORMAL_recall"]["verdict"] == "below"  # 0.73 vs the baseline's 0.82
    assert "counts unknown" in out["baseline"]["note"]


def test_paper_intervals_are_95_percent_wilson_of_statsmodels() -> None:
    """The paper's proportion cells: Wilson at 95 % exactly (a 90 % interval is caught here)."""
    from statsmodels.stats.proportion import proportion_confint

    out = compare_confusion_to_paper(paper_confusion(), n_resamples=200)
    for cell, (k, n) in {"accuracy": (599, 624), "NORMAL_recall": (213, 234),
                         "PNEUMONIA_precision": (386, 407)}.items():
        low, high = proportion_confint(k, n, alpha=0.05, method="wilson")
        row = out["cells"][cell]
        assert (row["paper_ci_low"], row["paper_ci_high"]) == pytest.approx((low, high)), cell


def test_difference_carries_both_uncertainties_and_patients() -> None:
    """Errors correlated within patients (4 images each, right or wrong together): the interval
    of run - paper must be wider than the run's own patient-grouped interval and close to the
    two independent widths combined (sqrt(w_run^2 + w_paper^2)); draws matched up (sorted)
    would give about |w_run - w_paper|."""
    rng = np.random.default_rng(5)
    patients = 156
    y = np.repeat((np.arange(patients) % 8 >= 3).astype(int), 4)
    right = np.repeat(rng.random(patients) < 0.9, 4)
    prob = np.where(right == (y == 1), 0.8, 0.2)
    groups = np.repeat(np.arange(patients), 4)
    out = compare_to_paper(y, prob, 0.5, groups, n_resamples=3000, seed=1)
    for cell in CELLS:
        row = out["cells"][cell]
        w_run = row["run_ci_high"] - row["run_ci_low"]
        w_paper = row["paper_ci_high"] - row["paper_ci_low"]
        w_diff = row["diff_ci_high"] - row["diff_ci_low"]
        assert w_diff > w_run, cell
        assert w_diff == pytest.approx(math.hypot(w_run, w_paper), rel=0.2), cell
        assert "patient-grouped bootstrap (run)" in row["diff_method"]


def test_verdict_comes_from_the_difference_and_the_old_word_is_kept_beside_it() -> None:
    """NORMAL recall 201/234 = 0.859: the printed 0.91 lies above the run's own interval (the old
    word: below), but the difference run - paper, with the paper's own uncertainty, holds 0."""
    cm = np.array([[201, 33], [4, 386]])
    out = compare_confusion_to_paper(cm, n_resamples=4000, seed=0)
    row = out["cells"]["NORMAL_recall"]
    assert row["run_ci_high"] < 0.91 and row["run_interval_verdict"] == "below"
    assert row["diff_ci_low"] < 0 < row["diff_ci_high"] and row["verdict"] == "consistent"
    assert out["n_consistent"] == sum(c["verdict"] == "consistent" for c in out["cells"].values())
    assert out["n_consistent_run_interval"] < out["n_consistent"]
