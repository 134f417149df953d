"""Helpers for the registry tests: predictions tables, gate params, one evaluation registered in a
real MLflow store, and (`python -m tests.registrykit`) the worker that races another one."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.params import Params, load_params

REPO = Path(__file__).resolve().parents[1]
ACTUAL = np.array([0, 1] * 100)  # 200 test images, 2 per patient
GOOD = np.where(ACTUAL == 1, 0.9, 0.1)  # every image right at 0.5
FULL = {"dataset": "full", "images": "5856", "image_size": "224", "data_raw": "x",
        "manifest_sha256": "0" * 64}
SAMPLE = {"dataset": "sample", "images": "284", "image_size": "64",
          "data_raw": "data/sample/chest_xray", "manifest_sha256": "1" * 64}


def predictions(prob: np.ndarray, actual: np.ndarray = ACTUAL, prefix: str = "img",
                first: int = 0) -> pd.DataFrame:
    n = len(prob)
    ids = range(first, first + n)
    return pd.DataFrame({"image_id": [f"{prefix}{i:04d}" for i in ids],
                         "patient_id": [f"p{i // 2}" for i in ids],
                         "actual": np.where(actual == 1, "PNEUMONIA", "NORMAL"),
                         "probability": prob})


def wrong_on(idx: slice | list[int], prob: np.ndarray = GOOD) -> np.ndarray:
    out = prob.copy()
    out[idx] = 1 - out[idx]
    return out


def accuracy(prob: np.ndarray, threshold: float = 0.5, actual: np.ndarray = ACTUAL) -> float:
    return float(np.mean((prob >= threshold) == actual))


def gate_params(floor: float = 0.5, margin: float = 0.02,
                name: str = "pneu") -> Params:
    """The committed params.yaml with the gate's params replaced."""
    p = load_params(REPO / "params.yaml")
    e = dataclasses.replace(p.evaluate, champion_min_accuracy=floor, champion_margin=margin,
                            registry_name=name)
    return dataclasses.replace(p, evaluate=e)


def evaluate_once(experiment_id: str, prob: np.ndarray, params: Params, model_uri: str,
                  prov: dict[str, str] = FULL, threshold: float = 0.5,
                  frame: pd.DataFrame | None = None) -> tuple[Any, str, str]:
    """What the evaluate stage does for the registry, in the current directory: log
    predictions.csv to a new run, then register_and_gate. Returns (decision, version, run)."""
    import mlflow

    from pneumonia.registry import register_and_gate

    preds = predictions(prob) if frame is None else frame
    acc = accuracy(preds["probability"].to_numpy(), threshold,
                   (preds["actual"] == "PNEUMONIA").to_numpy(dtype=int))
    Path("metrics").mkdir(exist_ok=True)
    preds.to_csv("metrics/predictions.csv", index=False)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_artifact("metrics/predictions.csv", "evaluate")
        decision, version = register_and_gate(
            params, {"model_uri": model_uri}, {"accuracy": acc, "threshold": threshold},
            preds, run.info.run_id, prov=prov)
    return decision, version, run.info.run_id


def log_stand_in_model(threshold: float = 0.5) -> str:
    """A logged pyfunc with the config evaluate checks (its threshold): the registry tests
    register it again and again; what it computes plays no part in the gate."""
    import mlflow

    class StandIn(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: pd.DataFrame,
                    params: dict[str, Any] | None = None) -> pd.DataFrame:
            return model_input

    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=StandIn(),
                                       model_config={"threshold": threshold},
                                       pip_requirements=["mlflow"])  # no inference: seconds
    return info.model_uri


def main(argv: list[str]) -> None:
    """Worker: `python -m tests.registrykit URI EXPERIMENT MODEL_URI PROB.npy FOLDER [NAME]`:
    prepare an evaluation, say `ready`, wait for `go` in FOLDER's parent, then register and
    gate (registered model NAME, default `pneu`)."""
    import mlflow

    uri, experiment_id, model_uri, prob_file, folder, *rest = argv
    mlflow.set_tracking_uri(uri)
    work = Path(folder)
    work.mkdir(parents=True, exist_ok=True)
    import os

    os.chdir(work)
    prob = np.load(prob_file)
    params = gate_params(floor=0.5, margin=0.02, name=rest[0] if rest else "pneu")
    import pneumonia.registry  # noqa: F401 - imported before the start signal, not after

    (work / "ready").write_text("1")
    deadline = time.monotonic() + 120
    while not (work.parent / "go").exists():
        if time.monotonic() > deadline:
            sys.exit("no start signal")
        time.sleep(0.005)
    decision, version, run_id = evaluate_once(experiment_id, prob, params, model_uri)
    (work / "result.json").write_text(json.dumps(
        {"version": version, "decision": decision.alias, "run_id": run_id}))


if __name__ == "__main__":
    main(sys.argv[1:])
