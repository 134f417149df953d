"""train + evaluate for real, as DVC runs them (subprocesses in a project folder), on 32-px
images built from the real sample X-rays: kill -9 during training and resume, then evaluate,
then evaluate again with another threshold. One sequence (module fixture), several checks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.trainkit import make_split, run_stage, stage_env, write_params

EPOCHS = 4


def _wait_for_epoch(root: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Block until the training in `proc` has backed up at least one finished epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for meta in root.glob("models/.train-backup/*/training_metadata.json"):
            try:
                if json.loads(meta.read_text())["epoch"] >= 1:
                    return
            except (ValueError, KeyError, OSError):
                pass  # being written
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{proc.stdout.read()}")
        time.sleep(0.05)
    pytest.fail("no epoch finished in time")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train_evaluate")
    make_split(root)
    write_params(root, train__epochs=EPOCHS)
    env = stage_env(root, MLFLOW_EXPERIMENT_NAME="tiny")

    first = subprocess.Popen(
        [sys.executable, "-m", "stages.train"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for_epoch(root, first)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
        first.stdout.close()
    (meta,) = root.glob("models/.train-backup/*/training_metadata.json")
    killed_after = json.loads(meta.read_text())["epoch"]
    model_after_kill = (root / "models/model.keras").exists()

    second = run_stage(root, "train", MLFLOW_EXPERIMENT_NAME="tiny")
    assert second.returncode == 0, second.stderr[-3000:]
    evaluate = run_stage(root, "evaluate", MLFLOW_EXPERIMENT_NAME="tiny")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    saved = {p: (root / p).read_bytes() for p in ("metrics/evaluate.json", "metrics/table3.md")}
    write_params(root, train__epochs=EPOCHS, evaluate__threshold=0.3)
    reevaluate = run_stage(root, "evaluate", MLFLOW_EXPERIMENT_NAME="tiny")
    assert reevaluate.returncode == 0, reevaluate.stderr[-3000:]
    return {
        "root": root,
        "killed_after": killed_after,
        "model_after_kill": model_after_kill,
        "second": second,
        "evaluate": evaluate,
        "first_evaluation": saved,
        "reevaluate": reevaluate,
    }


def test_killed_training_resumes_from_its_last_epoch(pipeline: dict[str, Any]) -> None:
    root, n = pipeline["root"], pipeline["killed_after"]
    assert 1 <= n < EPOCHS
    assert not pipeline["model_after_kill"]  # killed before the end: no model yet
    log = pipeline["second"].stdout + pipeline["second"].stderr
    assert f"resuming from epoch {n}" in log
    assert f"Epoch {n + 1}/{EPOCHS}" in log and f"Epoch {n}/{EPOCHS}" not in log
    history = pd.read_csv(root / "metrics/train_history.csv")
    assert list(history.columns) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"]
    assert history["epoch"].tolist() == list(range(1, EPOCHS + 1))  # all epochs, once each
    assert not list((root / "models/.train-backup").glob("*"))  # resume state removed


def test_train_outputs(pipeline: dict[str, Any]) -> None:
    import keras
    import numpy as np

    root = pipeline["root"]
    summary = json.loads((root / "metrics/train.json").read_text())
    assert summary["epochs_run"] == EPOCHS and summary["stopped_early"] is False
    assert 1 <= summary["best_epoch"] <= EPOCHS
    history = pd.read_csv(root / "metrics/train_history.csv")
    assert summary["best_val_loss"] == pytest.approx(history["val_loss"].min())
    assert summary["device"].startswith("CPU") and summary["precision"] == "float32"
    assert summary["train_images"] == 144 and summary["val_images"] == 36
    model = keras.saving.load_model(root / "models/model.keras")
    assert model.input_shape == (None, 32, 32, 1)
    out = model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0)
    assert out.shape == (2, 1)
    assert not list((root / "models").glob(".*tmp*"))  # no temp model left behind
    run = json.loads((root / "models/mlflow_run.json").read_text())
    assert set(run) == {"tracking_uri", "experiment_id", "run_id", "model_uri"}
    assert run["model_uri"].startswith("models:/m-")  # the pyfunc evaluate registers


def test_evaluate_outputs(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    # The first evaluation (threshold 0.5) as saved before re-evaluating.
    ev = json.loads(pipeline["first_evaluation"]["metrics/evaluate.json"])
    assert ev["n_test"] == 104 and ev["threshold"] == 0.5
    assert ev["NORMAL"]["support"] == 42 and ev["PNEUMONIA"]["support"] == 62
    for group in ("NORMAL", "PNEUMONIA", "macro_avg", "weighted_avg"):
        assert set(ev[group]) == {"precision", "recall", "f1", "support"}
    assert "roc_auc" in ev and "accuracy" in ev

    predictions = pd.read_csv(root / "metrics/predictions.csv")
    assert list(predictions.columns) == [
        "image_id", "patient_id", "class", "actual", "predicted", "probability"]
    assert predictions["image_id"].is_monotonic_increasing and len(predictions) == 104
    assert predictions["probability"].between(0, 1).all()
    assert (predictions["predicted"] == np.where(predictions["probability"] >= 0.5, "PNEUMONIA",
                                                 "NORMAL")).all()
    assert predictions["patient_id"].notna().all()
    roc = pd.read_csv(root / "metrics/roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    table3 = json.loads((root / "metrics/table3.json").read_text())
    assert table3["accuracy"]["paper"] == 0.96 and "baseline" in table3
    assert (root / "metrics/confusion.png").stat().st_size > 1000
    assert "| metric | paper | this run | diff |" in pipeline["evaluate"].stdout


def _store(root: Path):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return mlflow.MlflowClient()


def test_mlflow_run_holds_params_history_test_metrics_model_and_data(
    pipeline: dict[str, Any],
) -> None:
    root = pipeline["root"]
    client = _store(root)
    run_id = json.loads((root / "models/mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    params = run.data.params
    assert params["lr"] == "0.001" and params["model.backbone"] == "densenet121"
    assert params["train.augment.rotation"] == "10.0" and params["evaluate.threshold"] == "0.5"
    assert run.data.tags["precision"] == "float32" and run.data.tags["device"].startswith("CPU")

    for key in ("loss", "val_loss", "accuracy", "val_accuracy", "lr"):
        steps = {m.step for m in client.get_metric_history(run_id, key)}
        assert steps == set(range(1, EPOCHS + 1)), key  # every epoch, across the kill

    metrics = run.data.metrics
    for label in ("NORMAL", "PNEUMONIA"):
        for m in ("precision", "recall", "f1", "support"):
            if m != "precision" or f"test_{label}_{m}" in metrics:  # undefined -> not logged
                assert f"test_{label}_{m}" in metrics
    assert "test_accuracy" in metrics and "diff_from_paper_accuracy" in metrics

    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluate")}
    assert {"evaluate/confusion_matrix.json", "evaluate/confusion.png"} <= artifacts
    assert {
        "evaluate/classification_report.json",
        "evaluate/classification_report.txt",
    } <= artifacts
    cm = json.loads(
        Path(client.download_artifacts(run_id, "evaluate/confusion_matrix.json")).read_text()
    )
    assert cm["rows"] == "actual" and sum(map(sum, cm["matrix"])) == 104

    # Train logged the served pyfunc (threshold 0.5). The re-evaluation at threshold 0.3 logged
    # a copy with that threshold to its child run, so the served label matches evaluate's.
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    by_run = {m.source_run_id: m for m in models}
    assert run_id in by_run and len(models) == 2
    (child,) = set(by_run) - {run_id}
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == run_id
    versions = client.search_model_versions("name='pneumonia-densenet201'")
    assert sorted(v.tags["threshold"] for v in versions) == ["0.3", "0.5"]
    # test accuracy of a 2-epoch model is below the default floor 0.9: never the champion
    assert {v.tags["gate.decision"] for v in versions} == {"challenger"}
    gate = json.loads((pipeline["root"] / "metrics/registry.json").read_text())
    assert gate["alias"] == "challenger" and "below the floor" in gate["reason"]
    overlays = [p.name for p in (pipeline["root"] / "metrics/gradcam").iterdir()]
    assert 1 <= len(overlays) <= 6 + 2  # explain_max_errors + explain_correct_per_class x 2
    assert all(n.startswith(("error_", "correct_")) and n.endswith(".png") for n in overlays)

    contexts = {
        (d.dataset.name, next(t.value for t in d.tags if t.key == "mlflow.data.context"))
        for d in run.inputs.dataset_inputs
    }
    assert contexts == {("split", "training"), ("split-test", "testing")}


def test_reference_runs_share_metric_names(pipeline: dict[str, Any]) -> None:
    client = _store(pipeline["root"])
    run = client.get_run(
        json.loads((pipeline["root"] / "models/mlflow_run.json").read_text())["run_id"]
    )
    refs = client.search_runs(
        [run.info.experiment_id], filter_string="tags.`pipeline.reference` = 'paper'"
    )
    assert len(refs) == 1
    assert set(refs[0].data.metrics) <= set(run.data.metrics) | {"test_NORMAL_precision"}
    baseline = client.search_runs(
        [run.info.experiment_id], filter_string="tags.`pipeline.reference` = 'kaggle-resnet'"
    )
    assert len(baseline) == 1 and set(baseline[0].data.metrics) <= set(run.data.metrics)


def test_evaluate_rerun_opens_a_child_run_instead_of_overwriting(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    client = _store(root)
    run_id = json.loads((root / "models/mlflow_run.json").read_text())["run_id"]
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1
    assert client.get_run(run_id).data.params["evaluate.threshold"] == "0.5"
    exp_id = client.get_run(run_id).info.experiment_id
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    assert len(children) == 1
    child = children[0]
    assert child.data.params["evaluate.threshold"] == "0.3"
    assert child.data.params["lr"] == "0.001"  # training params copied
    assert "test_accuracy" in child.data.metrics
    assert json.loads((root / "metrics/evaluate.json").read_text())["threshold"] == 0.3
    # Still exactly one pair of reference runs.
    assert len(client.search_runs([exp_id], filter_string="tags.`pipeline.reference` != ''")) == 2


def test_class_weights_balance_the_loss() -> None:
    """balance.method class_weight: each class weighs n / (2 n_class), so both classes carry
    the same total weight in the loss."""
    import pandas as pd

    from pneumonia.model.train import class_weights

    rows = pd.DataFrame({"label": ["NORMAL"] * 10 + ["PNEUMONIA"] * 30})
    w = class_weights(rows)
    assert w == {0: 2.0, 1: 40 / 60}
    assert 10 * w[0] == 30 * w[1]
