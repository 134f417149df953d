"""`pneumonia site calibrate` and `pneumonia predict --site` end to end: a real model, a real
MLflow store; the registered threshold and quantiles are recomputed here from the model's own
probabilities, so a wrongly fitted threshold or a quantile at the wrong rank fails."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from pneumonia.cli import main
from tests.site.conftest import NAME


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as ex:
        main(argv)
    return int(ex.value.code or 0), capsys.readouterr().err


def config_of(client, version: str) -> dict:
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{NAME}/{version}"))
    return yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]["config"]


@pytest.mark.slow  # ~50 s of CPU: three models logged, TensorFlow twice
def test_calibrate_registers_the_site_and_predict_uses_it(
        store: dict[str, str], labelled: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    import keras
    import mlflow

    from pneumonia.site import labelled as reader
    from pneumonia.site import quantiles, thresholds
    from pneumonia.stats.conformal import binary_probs

    argv = ["site", "calibrate", str(labelled), "--site", "st-marys", "--alpha", "0.2",
            "--threshold-rule", "accuracy", "--conformal", "mondrian",
            "--out", str(tmp_path / "cal.json")]
    code, err = run(argv, capsys)
    assert code == 0, err
    client = mlflow.MlflowClient()
    aliases = {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    assert aliases["champion"] == "1" and aliases["site-st-marys"] == "2"
    mv = client.get_model_version(NAME, "2")
    data = reader.read(labelled, 32)
    assert mv.tags["site.n_normal"] == "12" and mv.tags["site.n_pneumonia"] == "12"
    assert mv.tags["site.labelled_sha256"] == data.digest()
    assert mv.tags["site.rule"] == "accuracy" and mv.tags["site.alpha"] == "0.2"
    assert "evaluate_run_id" not in mv.tags  # the evaluate gate never replays a site version

    # the fit, recomputed from the model's probabilities on the same images
    model = keras.saving.load_model(store["model_file"], compile=False)
    p = np.asarray(model.predict_on_batch(data.arrays), dtype=float).reshape(-1)
    want_t = thresholds.fit_threshold(data.y, p, "accuracy")
    want_q = quantiles.fit_quantile(binary_probs(p), data.y, 0.2, "mondrian")
    config = config_of(client, "2")
    assert config["threshold"] == pytest.approx(want_t, abs=1e-6)
    assert float(mv.tags["threshold"]) == pytest.approx(want_t, rel=1e-5)
    assert config["conformal"]["qhat_per_class"] == pytest.approx(list(want_q.qhat), abs=1e-6)
    assert want_q.rank == (11, 11)  # ceil(13 * 0.8) of 12 per class
    report = json.loads((tmp_path / "cal.json").read_text())
    assert report["version"] == 2 and report["cross_fit"]["folds"] == 5

    # predict --site: the site's threshold and sets, every row naming the calibration
    out = tmp_path / "pred.json"
    code, err = run(["predict", str(labelled), "--site", "st-marys", "--out", str(out)], capsys)
    assert code == 0, err
    rows = json.loads(out.read_text())["predictions"]
    assert len(rows) == 24
    assert all(r["calibration"].startswith("site-st-marys: accuracy threshold, mondrian")
               for r in rows)
    for r in rows:
        prob = r["probability"]
        assert r["label"] == ("PNEUMONIA" if prob >= want_t else "NORMAL")
        in_set = [1 - prob <= want_q.qhat[1] + 1e-6, prob <= want_q.qhat[0] + 1e-6]
        assert ("PNEUMONIA" in r["prediction_set"]) == in_set[0]
        assert ("NORMAL" in r["prediction_set"]) == in_set[1]

    # the served site version: the same decisions, the calibration named in every row
    import base64

    import pandas as pd

    served = mlflow.pyfunc.load_model(f"models:/{NAME}@site-st-marys")
    files = sorted(labelled.rglob("*.png"))[:5]
    answer = served.predict(pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode()
                                                    for f in files]}))
    assert (answer["calibration"] == rows[0]["calibration"]).all()
    assert np.allclose(answer["threshold"], want_t, atol=1e-6)
    assert list(answer["label"]) == ["PNEUMONIA" if q >= want_t else "NORMAL"
                                     for q in answer["probability"]]
    assert list(answer["probability_calibrated"]) == list(answer["probability"])  # no T

    # the same name again: refused without --replace, nothing registered; with it, moved
    code, err = run(argv, capsys)
    assert code == 2 and "site 'st-marys' exists" in err and "--replace" in err
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 2
    code, err = run([*argv, "--replace"], capsys)
    assert code == 0, err
    aliases = {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    assert aliases["champion"] == "1" and aliases["site-st-marys"] == "3"


def test_bad_input_registers_nothing(store: dict[str, str], labelled: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import mlflow

    base = ["site", "calibrate", str(labelled), "--alpha", "0.2"]
    code, err = run([*base, "--site", "St Marys"], capsys)
    assert code == 2 and "not a valid site name" in err
    code, err = run([*base, "--site", "b", "--alpha", "0.05", "--conformal", "mondrian"], capsys)
    assert code == 2 and "each class needs at least 19" in err
    (labelled / "NORMAL" / "bad.png").write_bytes(b"nope")
    code, err = run([*base, "--site", "c"], capsys)
    assert code == 2 and "NORMAL/bad.png" in err
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 1  # the champion only
