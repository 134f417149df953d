"""A run's results read back the same way by every experiment tool (compare, the ablation report,
the recipe search): its test predictions (metrics/predictions.csv: ids and patients as text, the
columns checked, labels and probabilities valid, each image once), its evaluate.json and its
validated params.yaml, from the experiment's commit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pneumonia.errors import PipelineError
from pneumonia.experiments import revisions
from pneumonia.files import read_csv_checked
from pneumonia.params import Params, parse_params
from pneumonia.paths import EVALUATE_JSON, LABELS, PREDICTIONS_CSV

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


@dataclass(frozen=True)
class Results:
    """A finished experiment's params, evaluate.json and predictions (sorted by image_id)."""

    params: Params
    evaluation: dict[str, Any]
    predictions: pd.DataFrame


def read_results(rev: revisions.Revision, cwd: Path | None = None,
                 extra: tuple[str, ...] = ()) -> tuple[Results, dict[str, Any]]:
    """`rev`'s results, and the JSON files named in `extra` (path -> content); a PipelineError
    names the experiment and what is wrong."""
    try:
        params = parse_params(yaml.safe_load(revisions.read_text(rev, "params.yaml", cwd)))
        evaluation = json.loads(revisions.read_text(rev, EVALUATE_JSON.as_posix(), cwd))
        more = {path: json.loads(revisions.read_text(rev, path, cwd)) for path in extra}
        predictions = parse_predictions(revisions.read_text(rev, PREDICTIONS_CSV.as_posix(), cwd),
                                        f"{PREDICTIONS_CSV} of experiment {rev.name}")
    except PipelineError as exc:
        raise PipelineError(f"experiment {rev.name}: {exc}") from None
    return Results(params, evaluation, predictions), more
