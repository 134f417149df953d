"""The served model's pyfunc, in-process: a model really logged to a sqlite MLflow store and
loaded back as `mlflow models serve` loads it (mlflow.pyfunc.load_model). Its logged threshold
and limits apply, a probability equal to the threshold is PNEUMONIA, and every bad request is
one MlflowException (HTTP 400 when served) naming the row and the problem -- never a trace.
The real server's 400s: tests/inference/test_serve.py (slow)."""

from __future__ import annotations

import base64
import importlib
import os
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.conftest import zeros_png
from tests.inference.dicomkit import dicom_bomb, hostile_dicoms, png_bytes
from tests.synthkit import brightness_model

SIZE = 32
THRESHOLD = 0.6  # logged; not the 0.5 fallback a served model would use without it


@pytest.fixture(scope="module")
def half_uri(tmp_path_factory: pytest.TempPathFactory, champion_store: dict[str, str]) -> str:
    """A model answering exactly 0.5 (sigmoid(0)) for every image, logged with threshold 0.6
    and small limits (1 MP, 3 rows, 0.5 MB) into the session's store (creating a sqlite store
    takes seconds)."""
    import mlflow

    from pneumonia.inference.pyfunc import log_model

    keras_file = tmp_path_factory.mktemp("pyfunc") / "half.keras"
    brightness_model(SIZE, constant=0.5).save(keras_file)
    mlflow.set_tracking_uri(champion_store["uri"])
    exp = mlflow.get_experiment_by_name("t").experiment_id
    with mlflow.start_run(experiment_id=exp):
        return log_model(keras_file, THRESHOLD, max_megapixels=1.0, max_rows=3,
                         max_request_mb=0.5)


@pytest.fixture(scope="module")
def served_half(half_uri: str) -> Any:
    """That model loaded back as `mlflow models serve` loads it."""
    import mlflow

    return mlflow.pyfunc.load_model(half_uri)


def frame(*images: bytes) -> pd.DataFrame:
    return pd.DataFrame({"image": [base64.b64encode(b).decode("ascii") for b in images]})


def image() -> bytes:
    return png_bytes(np.full((40, 40), 90, np.uint8))


def refused(model: Any, data: pd.DataFrame, params: dict[str, Any] | None = None) -> str:
    """The message of the 400 the request gets."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode

    with pytest.raises(MlflowException) as err:
        model.predict(data, params=params)
    assert err.value.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)  # served as 400
    assert "Traceback" not in err.value.message
    return err.value.message


def test_config_records_the_threshold_and_the_limits(served_half: Any) -> None:
    assert served_half.model_config == {"threshold": THRESHOLD, "max_megapixels": 1.0,
                                        "max_rows": 3, "max_request_mb": 0.5,
                                        "max_request_megapixels": 200.0,
                                        "max_concurrent_decodes": 2}


def test_the_logged_threshold_is_applied(served_half: Any) -> None:
    answer = served_half.predict(frame(image()))
    assert answer["probability"].tolist() == [0.5]
    assert answer["threshold"].tolist() == [THRESHOLD]
    assert answer["label"].tolist() == ["NORMAL"]  # 0.5 < 0.6; at the 0.5 fallback: PNEUMONIA


def test_a_probability_equal_to_the_threshold_is_pneumonia(served_half: Any) -> None:
    answer = served_half.predict(frame(image(), image()), params={"threshold": 0.5})
    assert answer["probability"].tolist() == [0.5, 0.5]
    assert answer["label"].tolist() == ["PNEUMONIA", "PNEUMONIA"]  # P >= threshold
    assert refused(served_half, frame(image()), {"threshold": 1.5}).endswith(
        "params.threshold is 1.5: it must be strictly between 0 and 1")


def test_more_rows_than_the_limit_are_refused_before_decoding(served_half: Any) -> None:
    message = refused(served_half, frame(*[b"never decoded"] * 4))
    assert "too many images: 4 rows" in message and "at most 3" in message
    assert "`max_rows`" in message


def test_a_request_over_the_size_limit_is_refused_before_decoding(served_half: Any) -> None:
    message = refused(served_half, frame(os.urandom(600_000)))
    assert "request too large: the images total 0.6 MB" in message
    assert "limit of 0.5 MB per request (model config `max_request_mb`)" in message


@pytest.mark.parametrize("bomb, size", [
    (lambda: dicom_bomb(8192, 8192), "8192 x 8192 = 67.1 megapixels"),
    (lambda: zeros_png(1200, 1000, bit_depth=16), "1200 x 1000 = 1.2 megapixels"),
])
def test_an_image_over_the_pixel_cap_is_refused_naming_the_row_and_the_limit(
        served_half: Any, bomb: Any, size: str) -> None:
    message = refused(served_half, frame(image(), bomb()))
    assert "bad image: row 1: image too large" in message and size in message
    assert "over the limit of 1 megapixels (data.max_megapixels)" in message


@pytest.mark.parametrize("name", ["text_window_center", "voi_lut_without_descriptor",
                                  "text_rescale_slope"])
def test_hostile_dicom_attributes_are_a_400_naming_the_attribute(served_half: Any,
                                                                  name: str) -> None:
    data, attribute = hostile_dicoms()[name]
    message = refused(served_half, frame(data))
    assert "bad image: row 0: DICOM attribute" in message and attribute in message


def test_the_served_model_keeps_answering_after_bad_requests(served_half: Any) -> None:
    refused(served_half, frame(dicom_bomb(8192, 8192)))
    assert served_half.predict(frame(image()))["probability"].tolist() == [0.5]


def test_an_operator_lowers_the_limits_when_serving(half_uri: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow's MLFLOW_PYFUNC_INFERENCE_CONFIG overrides logged config keys at load time (also
    for `mlflow models serve`): the limits change without logging the model again."""
    import mlflow

    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", '{"max_rows": 1, "max_megapixels": 0.001}')
    model = mlflow.pyfunc.load_model(half_uri)
    assert "at most 1 per request" in refused(model, frame(image(), image()))
    assert "over the limit of 0.001 megapixels" in refused(model, frame(image()))  # 40 x 40


def test_defining_the_served_model_warns_nothing_about_type_hints() -> None:
    """MLflow 3 warns "Add type hints to the `predict` method" when a PythonModel subclass is
    defined with an untyped predict (the first screen of `make demo` showed it). The class is
    defined again here, by reloading its module, with every warning recorded."""
    from pneumonia.inference import pyfunc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(pyfunc)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "type hint" in m.lower()], messages
    # the hint is one MLflow infers no schema from: the explicit signature stays the model's
    from mlflow.types.type_hints import _signature_cannot_be_inferred_from_type_hint

    hint = pyfunc.PneumoniaModel().predict_type_hints.input
    assert _signature_cannot_be_inferred_from_type_hint(hint)


# ---- issue 35: unknown params, a request's total pixels, requests decoding at once ----------
def test_an_unknown_request_param_is_refused_naming_it(served_half: Any) -> None:
    # MLflow drops undeclared params with a server-side warning: {"thresh": 0.1} was answered
    # at the logged threshold as if the client had not asked.
    message = refused(served_half, frame(image()), {"thresh": 0.1})
    assert "unknown request param(s) thresh" in message and "threshold" in message
    assert served_half.predict(frame(image()), params={"threshold": 0.4})["label"].tolist() == [
        "PNEUMONIA"]


def test_a_request_over_its_total_pixels_is_refused_before_decoding(
        half_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from tests.conftest import zeros_png

    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG",
                       '{"max_megapixels": 50, "max_request_megapixels": 60}')
    model = mlflow.pyfunc.load_model(half_uri)
    big = zeros_png(5000, 5000)  # 25 MP each, a few kB: three are 75 MP
    message = refused(model, frame(big, big, big))
    assert "its images total 75.0 megapixels" in message and "max_request_megapixels" in message


def test_requests_decode_one_at_a_time_under_a_limit_of_one(
        half_uri: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import mlflow

    from pneumonia.inference import pyfunc
    from tests.conftest import zeros_png

    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG",
                       '{"max_megapixels": 50, "max_concurrent_decodes": 1}')
    model = mlflow.pyfunc.load_model(half_uri)
    state = {"now": 0, "most": 0}
    lock = threading.Lock()
    decode = pyfunc.to_input

    def counting(*args: Any, **kwargs: Any) -> Any:  # the real decoder, its overlap counted
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            return decode(*args, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(pyfunc, "to_input", counting)
    big = frame(zeros_png(4000, 4000, 8))  # 16 MP: ~0.1 s to decode, long enough to overlap
    threads = [threading.Thread(target=model.predict, args=(big,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert state["most"] == 1
