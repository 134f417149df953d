"""The served model: an MLflow pyfunc that takes image bytes and answers P(PNEUMONIA).
Over 400 lines on purpose: one MLflow PythonModel, its request limits and its logging, which
must travel together as the served model's code.

`PneumoniaModel` wraps the Keras model (an artifact, `models/model.keras` as trained) with the
preprocessing: each row's `image` column holds one image file (PNG, JPEG or DICOM) as base64
text; it is decoded exactly as ingest decodes training images (`sources.to_input`). The answer
has one row per image: `probability` (P(PNEUMONIA)), `label` (NORMAL/PNEUMONIA) and the
`threshold` used (the one recorded when the model was logged, or the request's
`params: {"threshold": t}`), `trained_on` (the training data: sample / full / other / unknown,
pneumonia.provenance) and `warning` (empty, or why the answer must not be trusted: a model
trained on the bundled sample). A three-class model (`task: three_class`) adds `p_normal`,
`p_bacteria`, `p_virus` and `class` (the most probable of the three); its `probability` is
P(bacteria) + P(virus), so a binary client reads it unchanged. A model logged with a conformal
calibration (evaluate, `evaluate.conformal_alpha`) adds `prediction_set` (NORMAL, PNEUMONIA,
NORMAL|PNEUMONIA or empty) and `refer` (true unless the set is one label: refer the image to a
radiologist). A site version (`pneumonia site calibrate`, alias `site-NAME`) decides with the
site's threshold and quantiles (one per label when class-conditional) and adds
`probability_calibrated` (temperature-scaled, or equal to `probability`) and `calibration` (the
site calibration that decided the row). A bad image fails the request with HTTP 400 and a
message naming the row and the problem (never a stack trace).

Limits, recorded in the model's config when it is logged (`model_config`) and checked before
anything is decoded, each a 400 with its name: `max_rows` images per request, `max_request_mb`
MB of image bytes per request (from the base64 text's length), and `max_megapixels` per image
(params.yaml `data.max_megapixels`, from the image's header); `max_request_megapixels` for all
the images of a request together (from their headers) and `max_concurrent_decodes` requests
decoding at once in one server process (params.yaml `serve`; the others wait their turn), so the
memory of decoded pixels is bounded, and it is handed back to the system after each request
(glibc `malloc_trim`). A request param the signature does not declare (`{"thresh": 0.1}`) is a
400 naming it: MLflow itself only logs a warning and drops it. The scoring server itself reads
the whole request body before the model sees it: cap the body size in front of it (a reverse
proxy), see docs/security.md.

The model carries this package's code (MLflow `code_paths`), so a served model decodes images
with the code it was trained with. `log_model` is what the evaluate stage calls
(pneumonia.registry.model_to_register).
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import io
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pneumonia import provenance
from pneumonia.dataset.pixel_cap import DEFAULT_MAX_MEGAPIXELS
from pneumonia.inference.sources import params_max_megapixels, to_input
from pneumonia.model.tasks import pneumonia_probability
from pneumonia.params import ServeParams
from pneumonia.paths import CLASSES, LABELS
from pneumonia.stats.conformal import binary_probs, prediction_sets, set_names

IMAGE_COLUMN = "image"
ARTIFACT = "keras_model"
BATCH = 32
DEFAULT_THRESHOLD = 0.5
# Per request. 64 images are ~10 s of DenseNet201 on 2 CPU cores; 64 MB holds the largest
# uncompressed detector DICOMs (43 x 43 cm at 100 um, 16 bit: ~37 MB) one at a time.
DEFAULT_MAX_ROWS = 64
DEFAULT_MAX_REQUEST_MB = 64.0
DEFAULT_MAX_CONCURRENT_DECODES = ServeParams.max_concurrent_decodes
DEFAULT_MAX_REQUEST_MEGAPIXELS = ServeParams.max_request_megapixels

# One per server process: the requests decoding images now (pyfunc predict runs in the scoring
# server's thread pool, one thread per request). Sized at load_context from the model's config.
_DECODING: dict[int, threading.BoundedSemaphore] = {}
_DECODING_LOCK = threading.Lock()


def decoding_slots(n: int) -> threading.BoundedSemaphore:
    """The process's semaphore admitting `n` requests to decode at once (one per size)."""
    with _DECODING_LOCK:
        return _DECODING.setdefault(n, threading.BoundedSemaphore(n))


def header_pixels(data: bytes) -> int:
    """Pixels an image's header announces (width x height x frames), without decoding; 0 when
    the header cannot be read (decoding then reports what is wrong)."""
    from PIL import Image

    from pneumonia.dataset.dicom import is_dicom

    try:
        if is_dicom(data):
            import pydicom

            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            return int(ds.Rows) * int(ds.Columns) * int(getattr(ds, "NumberOfFrames", 1) or 1)
        with Image.open(io.BytesIO(data)) as img:
            return img.width * img.height * getattr(img, "n_frames", 1)
    except Exception:  # noqa: BLE001 - any unreadable header: the decoder names the problem
        return 0


def check_request_pixels(images: list[bytes], max_request_megapixels: float) -> None:
    """Refuse a request whose images' headers total more than `max_request_megapixels`."""
    total = sum(header_pixels(b) for b in images)
    if total > max_request_megapixels * 1e6:
        raise ValueError(
            f"request too large: its images total {total / 1e6:.1f} megapixels, over the limit "
            f"of {max_request_megapixels:g} megapixels per request (model config "
            "`max_request_megapixels`, params.yaml serve.max_request_megapixels); send fewer or "
            "smaller images per request")


_LIBC: list[Any] = []


def _give_memory_back() -> None:
    """Return freed heap memory to the system (glibc keeps it in its arenas otherwise: the
    server stayed at 2.8 GB after 8 requests of a 49-megapixel PNG). No-op without glibc.
    libc is looked up once: ctypes.util.find_library runs `ldconfig -p` each time."""
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"))
        except OSError:
            _LIBC.append(None)
    try:
        if _LIBC[0] is not None:
            _LIBC[0].malloc_trim(0)
    except AttributeError:  # not glibc
        pass


def _refuse_unknown_params() -> None:
    """Make undeclared request params a 400 naming them, in this process.

    MLflow 3 (`mlflow.models.utils._enforce_params_schema`, called by `mlflow.pyfunc` for every
    prediction) drops a param the signature does not declare with only a server-side warning, so
    `{"thresh": 0.1}` was answered at the recorded threshold. MLflow has no switch to refuse
    them, and the model's predict only sees the params that are left: the served process wraps
    the function pyfunc calls (its module global) once, when the model loads."""
    import mlflow.pyfunc as pyfunc_module
    from mlflow.exceptions import MlflowException

    original = pyfunc_module._enforce_params_schema
    if getattr(original, "refuses_unknown", False):
        return

    def strict(params: Any, schema: Any) -> Any:
        if isinstance(params, dict) and schema is not None and hasattr(schema, "params"):
            allowed = {p.name for p in schema.params}
            unknown = sorted(str(k) for k in params if str(k) not in allowed)
            if unknown:
                raise MlflowException.invalid_parameter_value(
                    f"unknown request param(s) {', '.join(unknown)}: the served model takes "
                    f"only {', '.join(sorted(allowed))} (e.g. \"params\": {{\"threshold\": "
                    "0.5}})")
        return original(params, schema)

    strict.refuses_unknown = True  # type: ignore[attr-defined]
    pyfunc_module._enforce_params_schema = strict


def check_request(values: list[Any], max_rows: int, max_request_mb: float) -> None:
    """Refuse a request over the row or size limit before decoding anything (ValueError)."""
    if len(values) > max_rows:
        raise ValueError(
            f"too many images: {len(values)} rows, the served model takes at most {max_rows} per "
            "request (model config `max_rows`); split the request")
    # base64 holds 3 bytes in 4 characters: the decoded size, known before decoding.
    size = sum(len(v) * 3 // 4 if isinstance(v, str) else len(v)
               for v in values if isinstance(v, (str, bytes, bytearray)))
    if size > max_request_mb * 1e6:
        raise ValueError(
            f"request too large: the images total {size / 1e6:.1f} MB, over the limit of "
            f"{max_request_mb:g} MB per request (model config `max_request_mb`); send fewer or "
            "smaller images per request")


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
        config = context.model_config or {}
        self.threshold = float(config.get("threshold", DEFAULT_THRESHOLD))
        conformal = config.get("conformal") or {}
        self.qhat = float(conformal["qhat"]) if "qhat" in conformal else None
        if "qhat_per_class" in conformal:  # a site calibration (pneumonia.site): per label
            self.qhat = np.asarray(conformal["qhat_per_class"], dtype=np.float64)
        self.site = config.get("site") or None
        self.max_megapixels = float(config.get("max_megapixels", DEFAULT_MAX_MEGAPIXELS))
        self.max_rows = int(config.get("max_rows", DEFAULT_MAX_ROWS))
        self.max_request_mb = float(config.get("max_request_mb", DEFAULT_MAX_REQUEST_MB))
        self.max_request_megapixels = float(config.get("max_request_megapixels",
                                                       DEFAULT_MAX_REQUEST_MEGAPIXELS))
        slots = int(config.get("max_concurrent_decodes", DEFAULT_MAX_CONCURRENT_DECODES))
        self.decoding = decoding_slots(max(1, slots))
        _refuse_unknown_params()
        # The provenance is in model_config (the MLmodel `metadata` is not handed to a
        # PythonModel): every answer says what the model was trained on.
        prov = config.get("provenance") or {}
        self.trained_on = provenance.dataset_of(prov)
        self.warning = provenance.warning(prov) or ""

    # Typed as MLflow 3 asks (an untyped predict makes it warn "Add type hints to the `predict`
    # method" when the class is defined). pd.DataFrame is one of the hints MLflow infers no schema
    # from (mlflow.types.type_hints.type_hints_no_signature_inference), so the explicit
    # `signature()` below stays the model's signature and validation is unchanged.
    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        threshold = float((params or {}).get("threshold", self.threshold))
        if not 0 < threshold < 1:
            raise MlflowException.invalid_parameter_value(
                f"params.threshold is {threshold}: it must be strictly between 0 and 1")
        if isinstance(model_input, pd.DataFrame):
            if IMAGE_COLUMN not in model_input.columns:
                raise MlflowException.invalid_parameter_value(
                    f"the input needs a column `{IMAGE_COLUMN}` (base64 image files); "
                    f"got {list(model_input.columns)}")
            values = model_input[IMAGE_COLUMN].tolist()
        else:
            values = list(model_input)
        try:
            check_request(values, self.max_rows, self.max_request_mb)
        except ValueError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        try:
            images = decode_column(values)
            check_request_pixels(images, getattr(self, "max_request_megapixels",
                                                 DEFAULT_MAX_REQUEST_MEGAPIXELS))
        except ValueError as exc:
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        slots = getattr(self, "decoding", None) or decoding_slots(DEFAULT_MAX_CONCURRENT_DECODES)
        try:
            with slots:  # at most max_concurrent_decodes requests hold decoded pixels at once
                arrays = []
                for i, data in enumerate(images):
                    try:
                        arrays.append(to_input(data, self.size, self.max_megapixels))
                    except ValueError as exc:
                        raise ValueError(f"row {i}: {exc}") from None
                    except Exception as exc:  # noqa: BLE001 - a 400 naming the row, not a trace
                        raise ValueError(f"row {i}: cannot decode this image "
                                         f"({type(exc).__name__}: {exc})") from None
                del images, values
                _give_memory_back()
        except ValueError as exc:
            _give_memory_back()
            raise MlflowException.invalid_parameter_value(f"bad image: {exc}") from None
        frame = answer(predict_outputs(self.model, arrays), threshold, self.qhat)
        site = getattr(self, "site", None)
        if site:  # a site version: the calibrated probability and which calibration decided
            frame["probability_calibrated"] = tempered(frame["probability"].to_numpy(),
                                                       site.get("temperature"))
            frame["calibration"] = site["calibration"]
        frame["trained_on"] = getattr(self, "trained_on", "unknown")
        frame["warning"] = getattr(self, "warning", "")
        return frame


def answer(outputs: np.ndarray, threshold: float, qhat: float | np.ndarray | None = None
           ) -> pd.DataFrame:
    """The served table from the model's raw outputs (N, 1) or (N, 3): see the module
    docstring. `qhat`: the conformal calibration's threshold (pneumonia.stats.conformal), one
    number or one per label (NORMAL, PNEUMONIA: a site's class-conditional calibration)."""
    probs = pneumonia_probability(outputs)
    frame = pd.DataFrame({"probability": probs,
                          "label": [LABELS[int(p >= threshold)] for p in probs],
                          "threshold": [threshold] * len(probs)})
    if outputs.shape[1] == len(CLASSES):
        for i, c in enumerate(CLASSES):
            frame[f"p_{c}"] = outputs[:, i]
        frame["class"] = [CLASSES[i] for i in outputs.argmax(axis=1)] if len(outputs) else []
    if qhat is not None:
        sets = prediction_sets(binary_probs(probs), qhat) if len(probs) else np.zeros((0, 2))
        frame["prediction_set"] = set_names(sets, LABELS)
        frame["refer"] = sets.sum(axis=1) != 1
    return frame


def tempered(prob: Any, temperature: float | None) -> np.ndarray:
    """A site calibration's temperature applied to P(PNEUMONIA): sigmoid(logit(p) / T), p
    unchanged without one. The same formula as pneumonia.site.temperature.apply, written here
    so that the served model (and the train stage, which logs it) does not import pneumonia.site."""
    p = np.asarray(prob, dtype=np.float64)
    if temperature is None:
        return p
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-np.log(q / (1 - q)) / float(temperature)))


def predict_outputs(model: Any, arrays: list[np.ndarray], batch: int = BATCH) -> np.ndarray:
    """The model's raw outputs for decoded inputs, in batches: float64 (N, 1) P(PNEUMONIA) or
    (N, 3) P(normal, bacteria, virus)."""
    width = int(model.output_shape[-1])
    out = [np.asarray(model.predict_on_batch(np.stack(arrays[i : i + batch])), dtype=np.float64)
           .reshape(-1, width) for i in range(0, len(arrays), batch)]
    return np.concatenate(out) if out else np.zeros((0, width))


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


def signature(threshold: float, outputs: int = 1, conformal: bool = False,
              site: bool = False) -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    columns = [ColSpec("double", "probability"), ColSpec("string", "label"),
               ColSpec("double", "threshold")]
    if outputs == len(CLASSES):
        columns += [ColSpec("double", f"p_{c}") for c in CLASSES] + [ColSpec("string", "class")]
    if conformal:
        columns += [ColSpec("string", "prediction_set"), ColSpec("boolean", "refer")]
    if site:  # pneumonia.site: the temperature-scaled probability and the calibration's name
        columns += [ColSpec("double", "probability_calibrated"), ColSpec("string", "calibration")]
    columns += [ColSpec("string", "trained_on"), ColSpec("string", "warning")]
    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        outputs=Schema(columns),
        params=ParamSchema([ParamSpec("threshold", "double", float(threshold))]),
    )


def conformal_config(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The conformal calibration a served model carries (model config `conformal`), from
    evaluate.json's keys; None without one."""
    if metrics.get("conformal_qhat") is None:
        return None
    return {"alpha": float(metrics["conformal_alpha"]), "qhat": float(metrics["conformal_qhat"]),
            "n_calibration": int(metrics["conformal_n_calibration"])}


def output_width(keras_file: Path) -> int:
    """Units of the model's `pneumonia` head (1 or 3), read from the .keras archive's
    config.json: no TensorFlow import, no weights loaded. 1 when the layer is not found."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(keras_file) as zf:
            config = json.loads(zf.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return 1
    for layer in config.get("config", {}).get("layers", []):
        if layer.get("name") == "pneumonia":
            return int(layer.get("config", {}).get("units", 1))
    return 1


def serve_params() -> ServeParams:
    """params.yaml `serve` when there is a readable params.yaml here, else the defaults."""
    from pneumonia.errors import PipelineError
    from pneumonia.params import load_params

    try:
        return load_params().serve
    except (PipelineError, OSError):
        return ServeParams()


def log_model(keras_file: Path, threshold: float, name: str = "model",
              conformal: dict[str, Any] | None = None, max_megapixels: float | None = None,
              max_rows: int = DEFAULT_MAX_ROWS, max_request_mb: float = DEFAULT_MAX_REQUEST_MB,
              provenance: dict[str, str] | None = None,
              serve: ServeParams | None = None,
              site: dict[str, Any] | None = None) -> str:
    """Log the pyfunc (Keras model file + this package's code) to the active run; return its
    model URI (`models:/m-<id>`). Its config records the threshold and the limits; the pixel cap
    is `max_megapixels`, by default params.yaml `data.max_megapixels` (the stages run where
    params.yaml is), else the default. `conformal`: {"alpha", "qhat", ...} of evaluate's
    calibration (the served answer then carries each image's prediction set). `provenance`
    (pneumonia.provenance.describe) goes into the MLmodel metadata and the model's config.
    `site`: a site calibration's record (pneumonia.site.fit; `site calibrate`): the answer then
    adds `probability_calibrated` and `calibration`."""
    if max_megapixels is None:
        max_megapixels, _ = params_max_megapixels()
    serve = serve or serve_params()
    config = {"threshold": float(threshold), "max_megapixels": float(max_megapixels),
              "max_rows": int(max_rows), "max_request_mb": float(max_request_mb),
              "max_request_megapixels": float(serve.max_request_megapixels),
              "max_concurrent_decodes": int(serve.max_concurrent_decodes),
              **({"conformal": conformal} if conformal else {}),
              **({"provenance": dict(provenance)} if provenance else {}),
              **({"site": dict(site)} if site else {})}
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
            signature=signature(threshold, output_width(keras_file), bool(conformal),
                                bool(site)),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
        )
    return info.model_uri
