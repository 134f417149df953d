"""Recall by cause on your own data: images whose cause is unrecorded (`data.layout: folders`,
class `unspecified`) belong to no cause and are counted apart, never an error."""

from __future__ import annotations

import numpy as np

from pneumonia.evaluation.causes import recall_by_cause


def test_unspecified_images_are_left_out_of_the_causes_and_counted() -> None:
    classes = np.array(["normal"] * 4 + ["bacteria"] * 4 + ["virus"] * 4 + ["unspecified"] * 3)
    called = np.array([0] * 4 + [1, 1, 1, 0] + [1, 0, 0, 0] + [0, 0, 0], dtype=bool)
    groups = np.arange(classes.size).astype(str)
    out = recall_by_cause(classes, called, groups, n_resamples=200, seed=0)
    assert out["PNEUMONIA_recall_bacteria"] == 0.75 and out["PNEUMONIA_recall_virus"] == 0.25
    assert out["bacteria_support"] == 4 and out["virus_support"] == 4
    assert out["unspecified_support"] == 3


def test_no_recorded_cause_gives_no_recall_by_cause() -> None:
    classes = np.array(["normal", "unspecified", "unspecified"])
    out = recall_by_cause(classes, np.array([0, 1, 1], dtype=bool), None, n_resamples=200, seed=0)
    assert out["PNEUMONIA_recall_bacteria"] is None and out["PNEUMONIA_recall_virus"] is None
    assert out["unspecified_support"] == 2 and out["bacteria_support"] == 0
