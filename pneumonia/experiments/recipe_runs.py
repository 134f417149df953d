"""A recipe search's runs read from run folders instead of DVC experiments: `pneumonia recipe
--from-runs FOLDER ...` (the re-run of the search that chooses on validation, issue 33 item 1).

A run folder is a copy of a finished run's `metrics/` and `models/` (what the training chain in
/work/runs keeps after each `dvc exp run`), named `rcp-<candidate>-s<seed>` or given as
`rcp-<candidate>-s<seed>=FOLDER`. From it: the test predictions (metrics/predictions.csv), the
threshold (metrics/evaluate.json), the training time (metrics/train.json) and the validation
predictions (metrics/predictions_val.csv). A run made before evaluate kept that file gets them
from its model (models/model.keras) and the split it was trained on (`--data DIR`: the data
folder holding split.csv and images/), by the evaluate stage's own functions
(`validation_originals`, `predict`, `validation_predictions`): the same images, the same
pre-processing, the same CSV.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.params import Params

VAL_FROM_EVALUATE = "evaluate stage (metrics/predictions_val.csv)"
VAL_FROM_MODEL = "predicted afterwards from models/model.keras by `pneumonia recipe --from-runs`"


def parse_spec(spec: str) -> tuple[str, Path]:
    """`FOLDER` (named rcp-<candidate>-s<seed>: the caller checks) or `NAME=FOLDER` -> (name,
    folder)."""
    name, sep, folder = spec.partition("=")
    path = Path(folder if sep else spec)
    name = name if sep else path.name
    if not path.is_dir():
        raise PipelineError(f"--from-runs {spec}: {path} is not a folder (a copy of a run's "
                            "metrics/ and models/).")
    return name, path


def _json(path: Path, name: str) -> dict[str, Any]:
    if not path.is_file():
        raise PipelineError(f"run {name}: {path} not found; the folder must hold the run's "
                            "metrics/ (a finished `dvc exp run`).")
    return json.loads(path.read_text(encoding="utf-8"))


def data_rows(split: pd.DataFrame, data: Path) -> pd.DataFrame:
    """split.csv's rows with each `data/...` path re-rooted at ``data`` (the folder that holds
    the run's split.csv and images/)."""
    def moved(p: str) -> str:
        parts = Path(p).parts
        if not parts or parts[0] != "data":
            raise PipelineError(f"{data / 'split.csv'}: path {p} is not under data/.")
        return str(data.joinpath(*parts[1:]))

    return split.assign(path=[moved(p) for p in split["path"]])


def predict_validation(model_file: Path, data: Path, params: Params) -> pd.DataFrame:
    """The validation originals' predictions of a saved model, as the evaluate stage writes
    metrics/predictions_val.csv (pneumonia.evaluation.evaluate's functions, not a copy)."""
    import keras

    from pneumonia.evaluation.evaluate import predict, validation_originals, validation_predictions
    from pneumonia.model.inputs import read_split

    val = validation_originals(data_rows(read_split(data / "split.csv"), data))
    model = keras.saving.load_model(model_file, compile=False)
    return validation_predictions(val, predict(params, val, model))


@dataclass(frozen=True)
class RunFolder:
    """What a run folder holds for the report (pneumonia.experiments.recipe reads the CSVs)."""

    folder: Path
    threshold: float
    train_seconds: float | None
    epochs_run: int | None
    test_csv: Path
    validation_csv: str | None  # the validation predictions' CSV text; None: none
    val_source: str | None


def read_run_folder(name: str, folder: Path, data: Path | None, params: Params) -> RunFolder:
    """One run of the search from its folder (module docstring)."""
    metrics = folder / "metrics"
    evaluation = _json(metrics / "evaluate.json", name)
    train = _json(metrics / "train.json", name)
    details = metrics / "details" / "train.json"  # the complete record (headline: train.json)
    record = _json(details, name) if details.is_file() else train
    if record.get("task", "binary") != "binary":
        raise PipelineError(f"run {name}: {details if details.is_file() else metrics / 'train.json'}"
                            f" says task {record['task']!r}; the recipe search compares binary "
                            "runs (is the folder a copy of another run's metrics?).")
    if "threshold" not in evaluation:
        raise PipelineError(f"run {name}: {metrics / 'evaluate.json'} has no `threshold`.")
    test_csv = metrics / "predictions.csv"
    if not test_csv.is_file():
        raise PipelineError(f"run {name}: {test_csv} not found (the evaluate stage's test "
                            "predictions).")
    val_csv, model_file = metrics / "predictions_val.csv", folder / "models" / "model.keras"
    if val_csv.is_file():
        validation, val_source = val_csv.read_text(encoding="utf-8"), VAL_FROM_EVALUATE
    elif data is not None and model_file.is_file():
        print(f"{name}: no {val_csv}; predicting the validation originals of "
              f"{data / 'split.csv'} with {model_file}")
        validation = predict_validation(model_file, data, params).to_csv(
            index=False, lineterminator="\n")
        val_source = VAL_FROM_MODEL
    else:
        validation, val_source = None, None
    return RunFolder(folder, float(evaluation["threshold"]), train.get("seconds"),
                     train.get("epochs_run"), test_csv, validation, val_source)
