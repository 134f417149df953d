"""The evaluate stage's plots: the tables DVC plots draw (ROC, reliability, precision-recall) and
the figures it saves (confusion matrix, reliability beside precision-recall).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.evaluation.metrics import ECE_BINS
from pneumonia.paths import LABELS
from pneumonia.stats.calibration import pr_curve_table, reliability_table


def roc_table(y_true: Any, prob: Any) -> pd.DataFrame:
    """ROC points (fpr, tpr, threshold); empty when only one class is present."""
    from sklearn.metrics import roc_curve

    y_true = np.asarray(y_true, dtype=int)
    if len(set(y_true.tolist())) < 2:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    fpr, tpr, thr = roc_curve(y_true, np.asarray(prob, dtype=float))
    # sklearn's first threshold is +inf (nothing predicted positive); CSV/plots need a finite
    # number: the smallest float above 1, which every probability is still below.
    thr = np.where(np.isfinite(thr), thr, np.nextafter(1.0, 2.0))
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thr})


def reliability_frame(y_true: Any, prob: Any) -> pd.DataFrame:
    """metrics/reliability.csv: one row per non-empty probability bin (DVC plot)."""
    columns = ["bin", "bin_low", "bin_high", "mean_predicted", "observed_fraction", "count"]
    if len(np.asarray(y_true)) == 0:
        return pd.DataFrame(columns=columns)
    return pd.DataFrame(reliability_table(y_true, prob, ECE_BINS), columns=columns)


def pr_frame(y_true: Any, prob: Any) -> pd.DataFrame:
    """metrics/pr.csv: precision and recall of PNEUMONIA at each distinct threshold."""
    y = np.asarray(y_true, dtype=int)
    if y.size == 0 or y.sum() == 0:
        return pd.DataFrame(columns=["threshold", "precision", "recall"])
    return pd.DataFrame(pr_curve_table(y, prob), columns=["threshold", "precision", "recall"])


def plot_confusion(cm: np.ndarray, path: Path, title: str,
                   labels: tuple[str, ...] = LABELS,
                   figsize: tuple[float, float] = (4.5, 4)) -> None:
    """Confusion matrix figure: rows = actual, columns = predicted (in `labels` order), counts
    annotated. Binary (LABELS) in evaluate; three classes (pneumonia.evaluation.causes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize, dpi=120)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title, fontsize=10)
    high = cm.max() / 2 if cm.size and cm.max() else 0
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(int(cm[i, j])),
                ha="center",
                va="center",
                color="white" if cm[i, j] > high else "black",
                fontsize=12,
            )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def plot_calibration(reliability: pd.DataFrame, pr: pd.DataFrame, path: Path, title: str) -> None:
    """Reliability diagram and precision-recall curve side by side (an MLflow artifact)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4), dpi=110)
    a.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    a.plot(reliability["mean_predicted"], reliability["observed_fraction"], "o-",
           label="this model")
    a.set(xlabel="mean predicted P(PNEUMONIA)", ylabel="observed fraction PNEUMONIA",
          xlim=(0, 1), ylim=(0, 1), title="Reliability (test set)")
    a.legend(loc="upper left", fontsize=8)
    b.plot(pr["recall"], pr["precision"])
    b.set(xlabel="recall (PNEUMONIA)", ylabel="precision (PNEUMONIA)", xlim=(0, 1),
          ylim=(0, 1.02), title="Precision-recall (test set)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
