"""pneumonia.stats.multiclass: three-class metrics and the binary view's recall per cause."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

from pneumonia.stats.multiclass import (
    CAUSE_METRICS,
    cause_distributions,
    cause_metrics,
    cause_recall_distributions,
    cause_recalls,
    class_codes,
    weighted_confusion3,
)


def three_class_data(seed: int, n: int = 240) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=[0.4, 0.35, 0.25])
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), y] += 1.3
    prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    groups = np.array([f"p{g}" for g in rng.integers(0, n // 2, n)])
    return y, prob, groups


def test_point_values_match_sklearn() -> None:
    y, prob, _ = three_class_data(0)
    d = {k: float(v[0]) for k, v in cause_distributions(np.ones(y.size), y, prob).items()}
    pred = prob.argmax(axis=1)
    np.testing.assert_array_equal(weighted_confusion3(np.ones(y.size), y, pred)[0],
                                  confusion_matrix(y, pred, labels=[0, 1, 2]))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=[0, 1, 2], zero_division=0)
    for i, c in enumerate(("normal", "bacteria", "virus")):
        assert d[f"{c}_precision"] == pytest.approx(p[i])
        assert d[f"{c}_recall"] == pytest.approx(r[i])
        assert d[f"{c}_f1"] == pytest.approx(f[i])
        assert d[f"{c}_roc_auc"] == pytest.approx(roc_auc_score(y == i, prob[:, i]))
    assert d["macro_f1"] == pytest.approx(f.mean())
    assert d["macro_roc_auc"] == pytest.approx(
        roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert d["accuracy"] == pytest.approx((pred == y).mean())
    pneumonia = y > 0
    by_hand = ((prob[:, 2] > prob[:, 1]).astype(int) + 1 == y)[pneumonia].mean()
    assert d["bacteria_vs_virus_accuracy"] == pytest.approx(by_hand)


def test_bacteria_vs_virus_ignores_the_normal_column() -> None:
    """A model that calls every image normal by argmax but orders bacteria vs virus right is
    perfect at the cause question and useless at three classes."""
    y = np.array([0, 1, 1, 2, 2])
    prob = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1],
                     [0.6, 0.1, 0.3], [0.5, 0.2, 0.3]])
    d = {k: float(v[0]) for k, v in cause_distributions(np.ones(5), y, prob).items()}
    assert d["bacteria_vs_virus_accuracy"] == 1.0
    assert d["accuracy"] == pytest.approx(0.2)
    assert np.isnan(d["bacteria_precision"]) and np.isnan(d["macro_precision"])  # never predicted


def test_intervals_are_patient_grouped_and_cover_the_value() -> None:
    y, prob, groups = three_class_data(1)
    iv = cause_metrics(y, prob, groups, n_resamples=400, seed=2)
    assert tuple(iv) == CAUSE_METRICS
    for m, row in iv.items():
        assert row["ci_low"] <= row["value"] <= row["ci_high"], m
    # the same seed and groups give the same intervals; other groups give other ones
    assert cause_metrics(y, prob, groups, 400, 2)["accuracy"] == iv["accuracy"]
    other = cause_metrics(y, prob, None, 400, 2)["accuracy"]
    assert other["value"] == iv["accuracy"]["value"] and other["ci_low"] != iv["accuracy"]["ci_low"]


def test_recall_per_cause() -> None:
    classes = np.array(["normal", "bacteria", "bacteria", "virus", "virus", "virus"])
    called = np.array([True, True, True, True, False, False])
    d = cause_recall_distributions(np.ones((1, 6)), classes, called)
    assert d["PNEUMONIA_recall_bacteria"][0] == 1.0
    assert d["PNEUMONIA_recall_virus"][0] == pytest.approx(1 / 3)
    iv = cause_recalls(classes, called, [f"p{i}" for i in range(6)], n_resamples=300, seed=0)
    assert iv["PNEUMONIA_recall_virus"]["value"] == pytest.approx(1 / 3)
    assert iv["PNEUMONIA_recall_virus"]["ci_low"] <= 1 / 3 <= iv["PNEUMONIA_recall_virus"][
        "ci_high"]
    # no viral image: undefined (NaN), not 0
    d = cause_recall_distributions(np.ones((1, 2)), ["normal", "bacteria"], [False, True])
    assert np.isnan(d["PNEUMONIA_recall_virus"][0])
    with pytest.raises(ValueError, match="unknown class"):
        class_codes(["normal", "covid"])
