"""The paper's published numbers, as plain data: Table III and the Kaggle baseline it cites.

A leaf of the package (it imports nothing of it): both `pneumonia.stats` (the paper's own
intervals, pneumonia.stats.table3) and `pneumonia.evaluation` (table3.md, the MLflow reference
runs) read it, and neither depends on the other for it.
"""

from __future__ import annotations

# Table III of the paper: DenseNet201 (last 30 layers fine-tuned) on the official test set. Table III
# has no accuracy row: the accuracy, 0.96, is from the text of its Sec. V.
TABLE3_ACCURACY = 0.96
TABLE3: dict[str, dict[str, float]] = {
    "NORMAL": {"precision": 0.98, "recall": 0.91, "f1": 0.94, "support": 234},
    "PNEUMONIA": {"precision": 0.95, "recall": 0.99, "f1": 0.97, "support": 390},
}

# The confusion matrix Table III implies (rows actual NORMAL, PNEUMONIA; columns predicted):
# of the five matrices with the test set's class totals that round to every printed cell, the one
# closest to the printed values (tests/stats/test_table3.py checks both facts). The paper's own
# intervals and the run-vs-paper differences (pneumonia.stats.table3) start from it.
TABLE3_CONFUSION = ((213, 21), (4, 386))

# The Kaggle ResNet notebook the paper compares against: only these two numbers are reported.
BASELINE_NAME = "Kaggle ResNet baseline"
BASELINE = {"accuracy": 0.92, "NORMAL_recall": 0.82}
