"""Fixtures for the site tests: a labelled site folder of real PNGs, and a real MLflow sqlite
store holding a small real classifier as the registered champion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

NAME = "pneumonia-densenet201"


def write_pngs(folder: Path, n: int, level: int, seed: int, prefix: str = "img") -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        pixels = np.clip(rng.normal(level, 40, (48, 48)), 0, 255).astype(np.uint8)
        path = folder / f"{prefix}{i:03d}.png"
        Image.fromarray(pixels, "L").save(path)
        out.append(path)
    return out


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """site/NORMAL: 12 darker images; site/PNEUMONIA: 12 brighter ones."""
    root = tmp_path / "site"
    write_pngs(root / "NORMAL", 12, 90, 1, "n")
    write_pngs(root / "PNEUMONIA", 12, 160, 2, "p")
    return root


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh sqlite store (this test's own): the tiny model as version 1, alias champion,
    threshold tag 0.3; the working directory is an empty project folder."""
    import mlflow

    from pneumonia.inference.pyfunc import log_model
    from tests.inference.conftest import SIZE, tiny_model

    root = tmp_path / "store"
    root.mkdir()
    model_file = root / "model.keras"
    tiny_model(size=SIZE).save(model_file)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "site-tests")
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.create_experiment("site-tests", artifact_location=(root / "mlruns").as_uri())
    with mlflow.start_run(experiment_id=exp) as run:
        model_uri = log_model(model_file, 0.3)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    mv = client.create_model_version(NAME, model_uri, run_id=run.info.run_id)
    client.set_model_version_tag(NAME, mv.version, "threshold", "0.3")
    client.set_registered_model_alias(NAME, "champion", mv.version)
    return {"uri": uri, "model_file": str(model_file)}
