"""evaluate's prediction sets (pneumonia.evaluation.confidence) and errors by cause
(pneumonia.evaluation.causes), on synthetic predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pneumonia.evaluation import causes, confidence, further
from pneumonia.stats.conformal import binary_probs, calibrate


def _binary(rng: np.random.Generator, n: int, shift: float = 0.0):
    """P(PNEUMONIA) of a model and labels drawn from it; `shift` makes the model wrong-footed
    (labels flipped with that probability): a test set unlike the calibration set."""
    p = rng.beta(0.6, 0.6, n)
    y = (rng.random(n) < p).astype(int)
    flip = rng.random(n) < shift
    y[flip] = 1 - y[flip]
    groups = np.array([f"p{i // 2}" for i in range(n)])
    return p, y, groups


def test_coverage_verdict_on_exchangeable_and_on_shifted_test_sets(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    val = _binary(rng, 800)
    same = _binary(rng, 800)
    m, sets, curve = confidence.evaluate_sets(*val, *same, alpha=0.1, n_resamples=400, seed=0)
    assert m["conformal_coverage_verdict"] in ("holds", "consistent")
    assert m["conformal_coverage_ci_low"] <= 0.9 + 0.03
    assert 0.85 <= m["conformal_val_coverage"] <= 0.95  # cross-fitted, where it applies
    assert sets.shape == (800, 2)
    assert m["conformal_referral_rate"] == pytest.approx((sets.sum(axis=1) != 1).mean())
    assert m["conformal_qhat"] == m["conformal_qhat"] and m["conformal_n_calibration"] == 800
    assert list(curve.columns) == ["coverage", "risk", "confidence"]
    assert curve["coverage"].iloc[-1] == 1.0

    shifted = _binary(rng, 800, shift=0.3)
    m2, _, curve2 = confidence.evaluate_sets(*val, *shifted, alpha=0.1, n_resamples=400, seed=0)
    assert m2["conformal_coverage_verdict"] == "below", m2["conformal_coverage_ci_high"]
    text = confidence.markdown(m2)
    assert "does NOT hold on the test set" in text and "referral rate" in text
    png = tmp_path / "rc.png"
    confidence.plot_risk_coverage(curve2, m2, png)
    assert png.stat().st_size > 1000


def test_verdict_words() -> None:
    assert confidence.coverage_verdict(0.91, 0.95, 0.9) == "holds"
    assert confidence.coverage_verdict(0.80, 0.89, 0.9) == "below"
    assert confidence.coverage_verdict(0.85, 0.93, 0.9) == "consistent"
    assert confidence.coverage_verdict(None, None, 0.9) == "undefined"


def test_recall_by_cause_and_three_class_report(tmp_path: Path) -> None:
    classes = np.array(["normal"] * 4 + ["bacteria"] * 4 + ["virus"] * 4)
    called = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1], dtype=bool)
    groups = np.array([f"p{i}" for i in range(12)])
    m = causes.recall_by_cause(classes, called, groups, 300, 0)
    assert m["PNEUMONIA_recall_bacteria"] == 1.0 and m["PNEUMONIA_recall_virus"] == 0.5
    assert m["bacteria_support"] == 4 and m["virus_support"] == 4
    assert m["PNEUMONIA_recall_virus_ci_low"] <= 0.5 <= m["PNEUMONIA_recall_virus_ci_high"]
    assert "| virus | 4 | 0.500 [" in causes.recall_markdown(m)

    outputs = np.full((12, 3), 0.1)
    outputs[np.arange(12), [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 1]] = 0.8
    three = causes.three_class_metrics(classes, outputs, groups, 300, 0)
    cm = causes.confusion3(classes, outputs)
    assert cm.tolist() == [[3, 1, 0], [0, 3, 1], [0, 1, 3]]
    assert three["cause_accuracy"] == pytest.approx(9 / 12)
    assert three["cause_bacteria_vs_virus_accuracy"] == pytest.approx(6 / 8)
    assert three["cause_virus_support"] == 4 and three["cause_undefined"] == ""
    text = causes.three_class_markdown(three, cm)
    assert "| bacteria | 0 | 3 | 1 |" in text and "0.907" in text
    causes.plot_confusion3(cm, tmp_path / "cm.png", "t")
    assert (tmp_path / "cm.png").is_file()


def test_evaluate_further_calibrates_on_the_validation_images() -> None:
    """evaluate's wiring: the sets are calibrated on the validation (y, P) given, and applied to
    the test images (a swapped argument once calibrated on labels used as probabilities)."""
    rng = np.random.default_rng(8)
    val_p, val_y, val_g = _binary(rng, 300)
    test_p, test_y, test_g = _binary(rng, 200)
    classes = np.where(test_y == 1, np.where(np.arange(200) % 3 == 0, "virus", "bacteria"),
                       "normal")
    out = further.evaluate_further("binary", classes, test_p[:, None], test_p, test_y,
                                   (test_p >= 0.5).astype(int), test_g, (val_y, val_p, val_g),
                                   0.1, 300, 0)
    expected = calibrate(binary_probs(val_p), val_y, 0.1)
    assert out.metrics["conformal_qhat"] == expected.qhat < 1.0
    assert out.metrics["conformal_n_calibration"] == 300
    assert out.metrics["PNEUMONIA_recall_virus"] == pytest.approx(
        (test_p[classes == "virus"] >= 0.5).mean())
    assert out.prediction_columns(test_p[:, None])["prediction_set"][0] in (
        "NORMAL", "PNEUMONIA", "NORMAL|PNEUMONIA", "")
    assert "## Prediction sets" in out.markdown and out.confusion3 is None
