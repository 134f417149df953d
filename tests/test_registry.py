"""The champion gate (pneumonia.registry): the pure decision, then registration in a real MLflow
sqlite store, then the evaluate stage itself doing it (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pneumonia.registry import CHALLENGER, CHAMPION, decide, register_and_gate
from tests.synthkit import brightness_model, write_project
from tests.trainkit import run_stage, write_params


def predictions(prob: np.ndarray, actual: np.ndarray, prefix: str = "img") -> pd.DataFrame:
    n = len(prob)
    return pd.DataFrame({"image_id": [f"{prefix}{i:04d}" for i in range(n)],
                         "patient_id": [f"p{i // 2}" for i in range(n)],  # 2 images per patient
                         "actual": np.where(actual == 1, "PNEUMONIA", "NORMAL"),
                         "probability": prob})


RNG = np.random.default_rng(0)
ACTUAL = np.array([0, 1] * 100)
GOOD = np.where(ACTUAL == 1, 0.9, 0.1)  # every image right

def wrong_on(idx: slice) -> np.ndarray:
    prob = GOOD.copy()
    prob[idx] = 1 - prob[idx]
    return prob


COIN = RNG.uniform(0, 1, 200)  # about half right


def champion_of(prob: np.ndarray, **extra: object) -> dict:
    return {"version": "1", "threshold": 0.5, "predictions": predictions(prob, ACTUAL), **extra}


def acc(prob: np.ndarray) -> float:
    return float(np.mean((prob >= 0.5) == ACTUAL))


def test_first_model_above_the_floor_becomes_champion() -> None:
    d = decide(acc(GOOD), 0.9, predictions(GOOD, ACTUAL), 0.5, None)
    assert d.alias == CHAMPION and "no champion" in d.reason


def test_below_the_floor_is_challenger_even_without_champion() -> None:
    d = decide(acc(COIN), 0.9, predictions(COIN, ACTUAL), 0.5, None)
    assert d.alias == CHALLENGER and "below the floor" in d.reason


def test_clearly_worse_than_the_champion_is_challenger() -> None:
    d = decide(acc(COIN), 0.0, predictions(COIN, ACTUAL), 0.5, champion_of(GOOD))
    assert d.alias == CHALLENGER and "significantly worse" in d.reason
    assert d.details["delta_ci_high"] < 0 and d.details["mcnemar_pvalue"] < 0.001
    assert d.details["common_test_images"] == 200


def test_within_noise_of_the_champion_takes_the_alias() -> None:
    """Champion wrong on 8 images, candidate on 10 others: lower, not significantly."""
    champ, cand = wrong_on(slice(0, 8)), wrong_on(slice(100, 110))
    d = decide(acc(cand), 0.9, predictions(cand, ACTUAL), 0.5, champion_of(champ))
    assert d.details["accuracy_delta"] == pytest.approx(-0.01)
    assert d.details["delta_ci_low"] < 0 < d.details["delta_ci_high"]
    assert d.alias == CHAMPION, d.reason
    assert "not significantly worse" in d.reason
    # the same 10 errors where a perfect champion has none: significantly worse
    d = decide(acc(cand), 0.9, predictions(cand, ACTUAL), 0.5, champion_of(GOOD))
    assert d.alias == CHALLENGER and d.details["delta_ci_high"] < 0


def test_no_common_test_images_or_unreadable_champion_keep_the_champion() -> None:
    other = predictions(GOOD, ACTUAL, prefix="other")
    d = decide(1.0, 0.5, other, 0.5, champion_of(GOOD))
    assert d.alias == CHALLENGER and "no test image in common" in d.reason
    d = decide(1.0, 0.5, predictions(GOOD, ACTUAL), 0.5,
               {"version": "4", "error": "artifact missing"})
    assert d.alias == CHALLENGER and "artifact missing" in d.reason


# --------------------------------------------------------------------------------------------
# Real MLflow store
# --------------------------------------------------------------------------------------------
def test_register_and_gate_in_a_real_store(tmp_path: Path, workdir: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = mlflow.create_experiment("t", artifact_location=(tmp_path / "mlruns").as_uri())
    (workdir / "models").mkdir()
    (workdir / "metrics").mkdir()
    brightness_model(32).save(workdir / "models" / "model.keras")
    client = mlflow.MlflowClient()

    def evaluate(prob: np.ndarray, floor: float) -> tuple:
        preds = predictions(prob, ACTUAL)
        preds.to_csv(workdir / "metrics" / "predictions.csv", index=False)
        with mlflow.start_run(experiment_id=exp) as run:
            mlflow.log_artifact(str(workdir / "metrics" / "predictions.csv"), "evaluate")
            decision, version = register_and_gate(
                "pneu", floor, {}, {"accuracy": acc(prob), "threshold": 0.5}, preds,
                run.info.run_id)
        return decision, version, run.info.run_id

    first, v1, _ = evaluate(GOOD, 0.9)
    assert (first.alias, v1) == (CHAMPION, "1")
    worse, v2, run2 = evaluate(COIN, 0.0)
    assert (worse.alias, v2) == (CHALLENGER, "2") and "significantly worse" in worse.reason
    low, v3, _ = evaluate(COIN, 0.9)
    assert v3 == "3"
    assert low.alias == CHALLENGER and "below the floor" in low.reason

    assert str(client.get_model_version_by_alias("pneu", CHAMPION).version) == "1"
    assert str(client.get_model_version_by_alias("pneu", CHALLENGER).version) == "3"
    tags = client.get_model_version("pneu", "2").tags
    assert tags["gate.decision"] == CHALLENGER and tags["evaluate_run_id"] == run2
    assert tags["threshold"] == "0.5"
    run_tags = client.get_run(run2).data.tags
    assert run_tags["gate.decision"] == CHALLENGER and "worse" in run_tags["gate.reason"]
    gate = json.loads(Path(client.download_artifacts(run2, "evaluate/champion_gate.json",
                                                     str(tmp_path))).read_text())
    assert gate["alias"] == CHALLENGER and gate["version"] == 2
    on_disk = json.loads((workdir / "metrics" / "registry.json").read_text())
    assert on_disk["version"] == 3 and "below the floor" in on_disk["reason"]
    # the registered version is a served pyfunc: image bytes in, probability out
    import base64

    from tests.inference.dicomkit import png_bytes
    from tests.synthkit import synthetic_image

    model = mlflow.pyfunc.load_model("models:/pneu@champion")
    img = png_bytes(synthetic_image(np.random.default_rng(1), 32, positive=True))
    answer = model.predict(pd.DataFrame({"image": [base64.b64encode(img).decode()]}))
    assert answer["label"].tolist() == ["PNEUMONIA"]


@pytest.mark.slow  # ~45 s: three evaluate stages, each a fresh Python importing TensorFlow
def test_evaluate_stage_registers_and_gates(tmp_path: Path) -> None:
    """The evaluate stage itself: a right model becomes champion, a wrong one (above a zero
    floor) and a constant one (below the floor) become challenger; the champion stays."""
    root = tmp_path / "project"
    write_project(root, size=32)
    (root / "models").mkdir()
    # a training run from elsewhere: evaluate logs to a new run and logs the model itself
    (root / "models" / "mlflow_run.json").write_text(json.dumps(
        {"tracking_uri": "sqlite:///elsewhere.db", "experiment_id": "1", "run_id": "0" * 32}))
    outcomes = []
    for model, floor in ((brightness_model(32), 0.9), (brightness_model(32, sign=-1), 0.0),
                         (brightness_model(32, constant=0.9), 0.9)):
        model.save(root / "models" / "model.keras")
        write_params(root, evaluate__champion_min_accuracy=floor)
        r = run_stage(root, "evaluate", timeout=240)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
        outcomes.append(json.loads((root / "metrics" / "registry.json").read_text()))
    assert [o["alias"] for o in outcomes] == [CHAMPION, CHALLENGER, CHALLENGER]
    assert "no champion" in outcomes[0]["reason"]
    assert "significantly worse" in outcomes[1]["reason"]
    assert "below the floor" in outcomes[2]["reason"]
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    assert str(client.get_model_version_by_alias("pneumonia-densenet201", CHAMPION).version) == "1"
