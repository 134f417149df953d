"""The served model: an MLflow pyfunc that takes image bytes and answers P(PNEUMONIA).

`PneumoniaModel` wraps the Keras model (an artifact, `models/model.keras` as trained) with the
preprocessing: each row's `image` column holds one image file (PNG, JPEG or DICOM) as base64
text; it is decoded exactly as ingest decodes training images (`sources.to_input`). The answer
has one row per image: `probability` (P(PNEUMONIA)), `label` (NORMAL/PNEUMONIA) and the
`threshold` used (the one recorded when the model was logged, or the request's
`params: {"threshold": t}`), `trained_on` (the training data: sample / full / other / unknown,
pneumonia.provenance) and `warning` (empty, or why the answer must not be trusted: a model
trained on the bundled sample). A bad image fails the request with HTTP 400 and a message naming
the row and the problem.

The model carries this package's code (MLflow `code_paths`), so a served model decodes images
with the code it was trained with. `log_model` is what the train stage calls.
"""

from __future__ import annotations

import base64
import binascii
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

IMAGE_COLUMN = "image"
ARTIFACT = "keras_model"
BATCH = 32
DEFAULT_THRESHOLD = 0.5


def decode_column(values: Any) -> list[bytes]:
    """base64 text (or raw bytes) per row -> bytes; ValueError naming the bad row."""
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (bytes, bytearray)):
            out.append(bytes(v))
            continue
        if not isinstance(v, str):
            raise ValueError(  # noqa: TRY004 - reported to the client as a bad request
                f"row {i}: `{IMAGE_COLUMN}` must be base64 text, got {type(v).__name__}")
        try:
            out.append(base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"row {i}: `{IMAGE_COLUMN}` is not valid base64") from None
    return out


class PneumoniaModel(mlflow.pyfunc.PythonModel):
    """Image bytes (base64, column `image`) -> probability, label, threshold."""

    def load_context(self, context: Any) -> None:
        import keras

        self.model = keras.saving.load_model(context.artifacts[ARTIFACT], compile=False)
        self.size = int(self.model.input_shape[1])
        self.threshold = float((context.model_config or {}).get("threshold", 0.5))
        # The provenance is in model_config (the MLmodel `metadata` is not handed to a
        # PythonModel): every answer says what the model was trained on.
        from pneumonia import provenance

        prov = (context.model_config or {}).get("provenance") or {}
        self.trained_on = provenance.dataset_of(prov)
        self.warning = provenance.warning(prov) or ""

    def predict(self, context, model_input, params=None):  # MLflow's signature, untyped
        from mlflow.exceptions import MlflowException

        from pneumonia.inference.sources import to_input
        from pneumonia.paths import LABELS

        threshold = float((params or {}).get("threshold", self.threshold))
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise MlflowException.invalid_parameter_value(
                    f"the input needs a column `{IMAGE_COLUMN}` (base64 image files); "
                    f"got {list(model_input.columns)}")
            values = model_input[IMAGE_COLUMN].tolist()
        else:
            values = list(model_input)
        try:
            arrays = []
            for i, data in enumerate(decode_column(values)):
                try:
                    arrays.append(to_input(data, self.size))
                except ValueError as exc:
                    raise ValueError(f"row {i}: {exc}") from None
        except ValueError as exc:
            raise MlflowException.invalid_parameter_value(f"bad image: {exc}") from None
        probs = predict_arrays(self.model, arrays)
        labels = [LABELS[int(p >= threshold)] for p in probs]
        return pd.DataFrame({"probability": probs, "label": labels,
                             "threshold": [threshold] * len(probs),
                             "trained_on": [getattr(self, "trained_on", "unknown")] * len(probs),
                             "warning": [getattr(self, "warning", "")] * len(probs)})


def predict_arrays(model: Any, arrays: list[np.ndarray], batch: int = BATCH) -> np.ndarray:
    """P(PNEUMONIA) for decoded inputs, in batches (float64, one per array)."""
    out = [np.asarray(model.predict_on_batch(np.stack(arrays[i : i + batch])), dtype=np.float64)
           .reshape(-1) for i in range(0, len(arrays), batch)]
    return np.concatenate(out) if out else np.zeros(0)


def pip_requirements() -> list[str]:
    """Pinned requirements of the served model (explicit: MLflow's inference takes 5-7 s)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs: list[str] = []
    for dist, name in (("tensorflow", "tensorflow"), ("tensorflow-cpu", "tensorflow"),
                       ("keras", "keras"), ("mlflow", "mlflow"), ("numpy", "numpy"),
                       ("pandas", "pandas"), ("pillow", "pillow"), ("pydicom", "pydicom")):
        try:
            req = f"{name}=={version(dist)}"
        except PackageNotFoundError:
            continue
        if not any(r.startswith(f"{name}==") for r in reqs):
            reqs.append(req)
    return reqs


def input_example() -> pd.DataFrame:
    """A real (tiny, 8 x 8 gray PNG) image, base64: the served model's input example."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, np.uint8), "L").save(buf, format="PNG")
    return pd.DataFrame({IMAGE_COLUMN: [base64.b64encode(buf.getvalue()).decode("ascii")]})


def signature(threshold: float) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("string", "label"),
                        ColSpec("double", "threshold"), ColSpec("string", "trained_on"),
                        ColSpec("string", "warning")]),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold))]),
    )


def log_model(keras_file: Path, threshold: float, name: str = "model",
              provenance: dict[str, str] | None = None) -> str:
    """Log the pyfunc (Keras model file + this package's code) to the active run; return its
    model URI (`models:/m-<id>`). `provenance` (pneumonia.provenance.describe) goes into the
    MLmodel metadata and the model's config."""
    config: dict[str, Any] = {"threshold": float(threshold)}
    if provenance:
        config["provenance"] = dict(provenance)
    package = Path(__file__).resolve().parents[1]  # pneumonia/
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "pneumonia"
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=PneumoniaModel(),
            artifacts={ARTIFACT: str(keras_file)},
            code_paths=[str(code)],
            model_config=config,
            metadata={"provenance": dict(provenance)} if provenance else None,
            signature=signature(threshold),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
        )
    return info.model_uri
