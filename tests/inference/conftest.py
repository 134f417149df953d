"""Fixtures for the inference tests: a small real classifier (build_model, random weights) saved
as a .keras file, and a real MLflow sqlite store in which it is the registered champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SIZE = 32


def tiny_model(backbone: str = "densenet121", size: int = SIZE, seed: int = 3):
    """build_model with random weights; the head's last layer scaled so that outputs spread
    over (0, 1) instead of all sitting near 0.5."""
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.params import ModelParams

    keras.utils.set_random_seed(seed)
    model = build_model(ModelParams(backbone=backbone, weights="none", dense_units=8), size, None)
    last = model.get_layer("pneumonia")
    kernel, bias = last.get_weights()
    last.set_weights([kernel * 40.0, bias])
    return model


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.keras"
    tiny_model().save(path)
    return path


@pytest.fixture(scope="session")
def keras_model(model_file: Path):
    import keras

    return keras.saving.load_model(model_file, compile=False)


def reference_probs(model, files: list[Path]) -> np.ndarray:
    """P(PNEUMONIA) computed directly: ingest's decoding, then the model on the arrays."""
    from pneumonia.inference.sources import to_input

    x = np.stack([to_input(f.read_bytes(), int(model.input_shape[1])) for f in files])
    return np.asarray(model.predict_on_batch(x), dtype=float).reshape(-1)


@pytest.fixture(scope="session")
def champion_store(tmp_path_factory: pytest.TempPathFactory, model_file: Path) -> dict[str, str]:
    """A real sqlite MLflow store holding the tiny model as version 1 of `pneumonia-densenet201`
    with alias champion and threshold tag 0.3 (as evaluate's gate leaves it). Logged with a 1 MB
    request limit (default 64 MB), so that the served test's oversized request stays small."""
    import mlflow

    from pneumonia.inference.pyfunc import log_model

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("t", artifact_location=(root / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        model_uri = log_model(model_file, 0.3, max_request_mb=1.0)
    client = mlflow.MlflowClient()
    client.create_registered_model("pneumonia-densenet201")
    mv = client.create_model_version("pneumonia-densenet201", model_uri, run_id=run.info.run_id)
    client.set_model_version_tag("pneumonia-densenet201", mv.version, "threshold", "0.3")
    client.set_registered_model_alias("pneumonia-densenet201", "champion", mv.version)
    return {"uri": uri, "root": str(root), "run_id": run.info.run_id, "model_uri": model_uri}
