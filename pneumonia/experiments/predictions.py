"""A run's test predictions (metrics/predictions.csv as the evaluate stage writes it), read back
the same way by every experiment tool (compare, the ablation report, the recipe search): ids and
patients as text, the columns checked, labels and probabilities valid, each image once.
"""

from __future__ import annotations

import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.files import read_csv_checked
from pneumonia.paths import LABELS

COLUMNS = ("image_id", "patient_id", "actual", "probability")


def parse_predictions(text: str, where: str) -> pd.DataFrame:
    """A predictions.csv's rows, sorted by image_id, checked; `where` names it in errors."""
    frame = read_csv_checked(
        text, where, COLUMNS, dtype={"image_id": str, "patient_id": str},
        damaged="re-run the evaluate stage there (`dvc repro evaluate`).",
        outdated="written by an older evaluate stage: re-run the evaluate stage there "
        "(`dvc repro evaluate`) and commit the result.")
    bad_labels = sorted(set(frame["actual"]) - set(LABELS))
    prob = pd.to_numeric(frame["probability"], errors="coerce")
    if bad_labels or prob.isna().any() or not prob.between(0, 1).all():
        raise PipelineError(
            f"{where}: `actual` must be NORMAL/PNEUMONIA and `probability` a number in [0, 1] on "
            "every row. Re-run the evaluate stage there."
        )
    if frame["image_id"].duplicated().any():
        raise PipelineError(f"{where} lists an image twice: re-run the evaluate stage there.")
    if frame.empty:
        raise PipelineError(f"{where} has no rows: re-run the evaluate stage there.")
    return frame.assign(probability=prob).sort_values("image_id", ignore_index=True)
