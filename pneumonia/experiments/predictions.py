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


def parse_predictions(source: str | Path, where: str) -> pd.DataFrame:
    """The one checked reader of a run's predictions (test or validation; `source`: a CSV file or
    its text), sorted by image_id, probability numeric. PipelineError naming `where` when the CSV
    cannot be read, a column is missing, a label is not NORMAL / PNEUMONIA, a probability is not
    in [0, 1], an image is listed twice or there is no row."""
    frame = read_csv_checked(
        source, where, COLUMNS, dtype={"image_id": str, "patient_id": str},
        damaged="re-run the evaluate stage there (`dvc repro evaluate`).",
        outdated="written by an older evaluate stage: re-run the evaluate stage there "
        "(`dvc repro evaluate`) and commit the result.")
    bad_labels = sorted(set(frame["actual"]) - set(LABELS), key=str)
    if bad_labels:
        raise PipelineError(f"{where}: column `actual` holds a label other than NORMAL / "
                            f"PNEUMONIA ({', '.join(map(str, bad_labels[:3]))}): re-run the "
                            "evaluate stage there.")
    prob = pd.to_numeric(frame["probability"], errors="coerce")
    if prob.isna().any() or not prob.between(0, 1).all():
        raise PipelineError(f"{where}: a `probability` is missing or outside [0, 1]: re-run the "
                            "evaluate stage there.")
    if frame["image_id"].duplicated().any():
        twice = frame["image_id"][frame["image_id"].duplicated()].iloc[0]
        raise PipelineError(f"{where}: image {twice} is listed twice: re-run the evaluate stage "
                            "there.")
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
