"""train + evaluate for real, as DVC runs them (subprocesses in a project folder), on 32-px
images built from the real sample X-rays: kill -9 during training and resume, then evaluate,
then evaluate again with another threshold. One sequence (module fixture), several checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pneumonia.params import parse_params
from tests.trainkit import (
    TINY_PARAMS,
    make_split,
    run_stage,
    stage_env,
    wait_for_epoch,
    write_params,
)

EPOCHS = 4
LR = 5e-4  # not Adam's default (1e-3): a train stage that ignored `lr` would show it
# The stages' bookkeeping is under test here (resume, outputs, MLflow), not the network: the small
# CNN trains in seconds where a DenseNet's graph takes minutes (tests/model/test_network.py).
PIPELINE = {"lr": LR, "train__epochs": EPOCHS, "model__backbone": "small_cnn"}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("train_evaluate")
    make_split(root)
    write_params(root, **PIPELINE)
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
        wait_for_epoch(root, first)
    finally:
        first.kill()  # SIGKILL; also when no epoch finished: never left running
        first.wait(timeout=60)
        first.stdout.close()
    (meta,) = root.glob("models/.train-backup/*/training_metadata.json")
    killed_after = json.loads(meta.read_text())["epoch"]
    model_after_kill = (root / "models/model.keras").exists()

    second = run_stage(root, "train", MLFLOW_EXPERIMENT_NAME="tiny")
    assert second.returncode == 0, second.stderr[-3000:]
    evaluate = run_stage(root, "evaluate", MLFLOW_EXPERIMENT_NAME="tiny")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    saved = {p: (root / p).read_bytes() for p in ("metrics/details/evaluate.json", "metrics/table3.md")}
    # The same threshold, the Youden threshold chosen on the validation images beside it.
    write_params(root, **PIPELINE, evaluate__threshold_rule="youden")
    youden = run_stage(root, "evaluate", MLFLOW_EXPERIMENT_NAME="tiny")
    assert youden.returncode == 0, youden.stderr[-3000:]
    saved_youden = {p: (root / p).read_text() for p in ("metrics/details/evaluate.json",
                                                         "metrics/table3.json")}
    # Another threshold on the test set: allowed, but loudly flagged as tuning on test.
    write_params(root, **PIPELINE, evaluate__threshold=0.3)
    reevaluate = run_stage(root, "evaluate", MLFLOW_EXPERIMENT_NAME="tiny")
    assert reevaluate.returncode == 0, reevaluate.stderr[-3000:]
    return {
        "root": root,
        "killed_after": killed_after,
        "model_after_kill": model_after_kill,
        "second": second,
        "evaluate": evaluate,
        "first_evaluation": saved,
        "youden": youden,
        "youden_evaluation": saved_youden,
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


def test_train_outputs(pipeline: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    import numpy as np

    root = pipeline["root"]
    summary = json.loads((root / "metrics/details/train.json").read_text())
    assert summary["epochs_run"] == EPOCHS and summary["stopped_early"] is False
    assert 1 <= summary["best_epoch"] <= EPOCHS
    history = pd.read_csv(root / "metrics/train_history.csv")
    assert summary["best_val_loss"] == pytest.approx(history["val_loss"].min())
    assert summary["device"].startswith("CPU") and summary["precision"] == "float32"
    assert summary["train_images"] == 144 and summary["val_images"] == 36
    # The optimizer ran at `lr` (no plateau within 4 epochs at patience 50).
    assert history["lr"].tolist() == pytest.approx([LR] * EPOCHS, rel=1e-6)
    model = keras.saving.load_model(root / "models/model.keras")
    assert model.input_shape == (None, 32, 32, 1)
    assert float(model.optimizer.learning_rate) == pytest.approx(LR, rel=1e-6)

    # The saved model holds the best epoch's weights: re-scored on the validation subset it
    # gives the best_val_loss train.json reports (not the last epoch's, unless that was best).
    from pneumonia.model.inputs import make_dataset, read_split, subset_rows

    monkeypatch.chdir(root)
    val = subset_rows(read_split(), "val")
    scored = model.evaluate(make_dataset(val, 32, 48, training=False), verbose=0, return_dict=True)
    assert summary["saved_weights"] == "best" and summary["saved_epoch"] == summary["best_epoch"]
    assert scored["loss"] == pytest.approx(summary["best_val_loss"], rel=1e-4, abs=1e-5)
    assert summary["val_loss_saved_model"] == pytest.approx(summary["best_val_loss"], rel=1e-4)
    # All validation images are originals here (no balance stage): both scores agree.
    assert summary["val_images_original"] == 36
    assert summary["best_val_loss_original"] == pytest.approx(summary["best_val_loss"], rel=1e-4)
    assert summary["best_val_accuracy_original"] == pytest.approx(summary["best_val_accuracy"])
    out = model.predict(np.zeros((2, 32, 32, 1), "float32"), verbose=0)
    assert out.shape == (2, 1)
    assert not list((root / "models").glob(".*tmp*"))  # no temp model left behind
    run = json.loads((root / "models/mlflow_run.json").read_text())
    # No model_uri: the served pyfunc is logged by evaluate (pneumonia.registry), so training
    # depends on no inference code (dvc.yaml deps).
    assert set(run) == {"tracking_uri", "experiment_id", "run_id", "params_sha256"}


def test_evaluate_outputs(pipeline: dict[str, Any]) -> None:
    from pneumonia.evaluation.metrics import REPORTED

    root = pipeline["root"]
    # The first evaluation (threshold 0.5) as saved before re-evaluating.
    ev = json.loads(pipeline["first_evaluation"]["metrics/details/evaluate.json"])
    assert ev["n_test"] == 104 and ev["threshold"] == 0.5
    assert ev["NORMAL_support"] == 42 and ev["PNEUMONIA_support"] == 62
    assert ev["threshold_rule"] == "fixed" and ev["threshold_chosen"] == 0.5
    assert ev["bootstrap_resamples"] == 2000 and ev["threshold_warning"] == ""
    for key in REPORTED:  # flat keys, each value with its interval (null when undefined)
        for k in (key, f"{key}_ci_low", f"{key}_ci_high", f"leakfree_{key}"):
            assert k in ev, k
        if ev[key] is not None and ev[f"{key}_ci_low"] is not None:
            assert ev[f"{key}_ci_low"] <= ev[key] <= ev[f"{key}_ci_high"], key
        elif ev[key] is not None:  # interval withheld: too many undefined resamples, said so
            assert ev[f"{key}_ci_undefined_share"] > 0.1, key
    assert ev["accuracy_ci_high"] - ev["accuracy_ci_low"] > 0.05  # 104 images: not a point
    # The sample's Kaggle val/test folders share patients with its train folder: excluded.
    assert 0 < ev["leakfree_n_test"] < 104
    assert ev["leakfree_excluded_patient_in_train"] >= 104 - ev["leakfree_n_test"] > 0
    for key in ("brier", "ece"):
        assert ev[f"{key}_ci_low"] <= ev[key] <= ev[f"{key}_ci_high"]

    # by cause (issue 24): PNEUMONIA recall on the bacterial and the viral test images apart
    for cause in ("bacteria", "virus"):
        key = f"PNEUMONIA_recall_{cause}"
        assert ev[f"{key}_ci_low"] <= ev[key] <= ev[f"{key}_ci_high"]
    assert ev["bacteria_support"] + ev["virus_support"] == ev["PNEUMONIA_support"]
    # conformal sets, calibrated on the 36 validation originals (pneumonia.evaluation.confidence)
    assert ev["conformal_n_calibration"] == 36 and ev["conformal_target"] == 0.95
    # the same 36 validation originals, for choosing a recipe on validation: predictions and
    # the headline's val_* keys computed from them (accuracy at the threshold, BCE)
    val = pd.read_csv(root / "metrics/predictions_val.csv")
    assert list(val.columns) == ["image_id", "patient_id", "actual", "probability"]
    assert len(val) == 36 and val["image_id"].is_monotonic_increasing
    y, p = (val["actual"] == "PNEUMONIA").to_numpy(int), val["probability"].to_numpy(float)
    head = json.loads((root / "metrics/evaluate.json").read_text())
    assert head["val_accuracy"] == pytest.approx(((p >= head["threshold"]) == y).mean(), abs=1e-6)
    assert head["val_loss"] == pytest.approx(
        -np.mean(y * np.log(np.clip(p, 1e-7, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-7, 1))),
        abs=1e-4)
    assert 0 <= head["val_roc_auc"] <= 1
    assert ev["conformal_coverage_verdict"] in ("holds", "below", "consistent")
    for key in ("coverage", "val_coverage", "referral_rate"):
        k = f"conformal_{key}"
        assert ev[f"{k}_ci_low"] <= ev[k] <= ev[f"{k}_ci_high"], k

    predictions = pd.read_csv(root / "metrics/predictions.csv", keep_default_na=False)
    assert list(predictions.columns) == [
        "image_id", "patient_id", "class", "actual", "predicted", "probability",
        "prediction_set"]
    assert set(predictions["prediction_set"]) <= {"NORMAL", "PNEUMONIA", "NORMAL|PNEUMONIA", ""}
    assert pd.read_csv(root / "metrics/risk_coverage.csv")["coverage"].max() == 1.0
    table3_md = (root / "metrics/table3.md").read_text()
    assert "## PNEUMONIA recall by cause" in table3_md and "## Prediction sets" in table3_md
    assert predictions["image_id"].is_monotonic_increasing and len(predictions) == 104
    assert predictions["probability"].between(0, 1).all()
    assert (predictions["predicted"] == np.where(predictions["probability"] >= 0.3, "PNEUMONIA",
                                                 "NORMAL")).all()  # the last evaluation's
    assert predictions["patient_id"].notna().all()
    roc = pd.read_csv(root / "metrics/roc.csv")
    assert list(roc.columns) == ["fpr", "tpr", "threshold"]
    reliability = pd.read_csv(root / "metrics/reliability.csv")
    assert reliability["count"].sum() == 104
    assert list(pd.read_csv(root / "metrics/pr.csv").columns) == ["threshold", "precision",
                                                                  "recall"]
    table3 = json.loads((root / "metrics/table3.json").read_text())
    assert table3["cells"]["accuracy"]["paper"] == 0.96 and "baseline" in table3
    assert table3["table3_cells"] == 7 and 0 <= table3["table3_consistent"] <= 7
    assert table3["leakfree"]["n_test"] == ev["leakfree_n_test"]
    assert (root / "metrics/confusion.png").stat().st_size > 1000
    out = pipeline["evaluate"].stdout
    assert ("| metric | paper [95 % CI] | this run [95 % CI] | run - paper [95 % CI] | verdict |"
            in out)
    assert "Table III cells are consistent with this run" in out
    assert "already evaluated on the test set" not in out + pipeline["evaluate"].stderr


def test_youden_threshold_is_chosen_on_validation_images(pipeline: dict[str, Any]) -> None:
    ev = json.loads(pipeline["youden_evaluation"]["metrics/details/evaluate.json"])
    assert ev["threshold_rule"] == "youden" and 0 < ev["threshold_chosen"] < 1
    assert ev["threshold"] == 0.5  # the reported metrics stay at the fixed threshold
    assert "predicting 36 validation images" in pipeline["youden"].stderr
    table3 = json.loads(pipeline["youden_evaluation"]["metrics/table3.json"])
    assert table3["threshold_choice"]["n_validation"] == 36
    assert "chosen on 36 validation images" in pipeline["youden"].stdout
    # the same test threshold as before: no warning
    assert "already evaluated on the test set" not in pipeline["youden"].stdout


def test_test_reevaluation_at_another_threshold_is_flagged(pipeline: dict[str, Any]) -> None:
    text = "WARNING: this model was already evaluated on the test set at threshold 0.5;"
    re = pipeline["reevaluate"]
    assert text in re.stderr  # the log
    assert text in re.stdout  # the printed report
    root = pipeline["root"]
    assert text in (root / "metrics/table3.md").read_text()
    assert json.loads((root / "metrics/details/evaluate.json").read_text())["threshold_warning"].startswith(
        text)


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
    assert params["lr"] == str(LR) and params["model.backbone"] == "small_cnn"
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
    for key in ("test_accuracy_ci_low", "test_accuracy_ci_high", "test_leakfree_accuracy",
                "test_brier", "test_ece", "table3_consistent", "table3_cells",
                "baseline_consistent", "threshold_chosen"):
        assert key in metrics, key
    assert metrics["table3_cells"] == 7

    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluate")}
    assert {"evaluate/confusion_matrix.json", "evaluate/confusion.png"} <= artifacts
    assert {"evaluate/reliability.csv", "evaluate/pr.csv", "evaluate/calibration.png",
            "evaluate/table3.md"} <= artifacts
    assert {
        "evaluate/classification_report.json",
        "evaluate/classification_report.txt",
    } <= artifacts
    cm = json.loads(
        Path(client.download_artifacts(run_id, "evaluate/confusion_matrix.json")).read_text()
    )
    assert cm["rows"] == "actual" and sum(map(sum, cm["matrix"])) == 104

    # Train logs no served model. Each evaluation logged one with its threshold and its
    # conformal calibration (the served prediction set); re-evaluations log to child runs.
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert len(models) == 3
    for child in {m.source_run_id for m in models} - {run_id}:
        assert client.get_run(child).data.tags["mlflow.parentRunId"] == run_id
    assert "test_PNEUMONIA_recall_virus_ci_low" in metrics and "test_conformal_coverage" in metrics
    assert {"evaluate/risk_coverage.csv", "evaluate/risk_coverage.png"} <= artifacts
    # Every evaluation is a registry version: 0.5, the Youden re-evaluation (still served at
    # 0.5: threshold_chosen is reported, not applied), 0.3.
    versions = client.search_model_versions("name='pneumonia-densenet201'")
    assert sorted(v.tags["threshold"] for v in versions) == ["0.3", "0.5", "0.5"]
    from mlflow.models import Model

    latest = max(versions, key=lambda v: int(v.version))
    config = Model.load(latest.source).flavors["python_function"]["config"]
    final = json.loads((root / "metrics/details/evaluate.json").read_text())
    assert config["conformal"]["qhat"] == final["conformal_qhat"]  # the served set's calibration
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
    assert len(children) == 2  # youden (same test threshold), then 0.3
    by_threshold = {c.data.params["evaluate.threshold"]: c for c in children}
    assert set(by_threshold) == {"0.5", "0.3"}
    youden, child = by_threshold["0.5"], by_threshold["0.3"]
    assert youden.data.params["evaluate.threshold_rule"] == "youden"
    assert "evaluate.threshold_tuned_on_test" not in youden.data.tags
    assert child.data.tags["evaluate.threshold_tuned_on_test"] == "true"
    assert "already evaluated on the test set" in child.data.tags["evaluate.warning"]
    assert child.data.params["lr"] == str(LR)  # training params copied
    assert "test_accuracy" in child.data.metrics
    assert json.loads((root / "metrics/details/evaluate.json").read_text())["threshold"] == 0.3
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


# --------------------------------------------------------------------------------------------
# The pieces of a run, each checked alone (fast), and one in-process run
# --------------------------------------------------------------------------------------------
def _params(**train: Any) -> Any:
    raw = json.loads(json.dumps(TINY_PARAMS))
    raw["train"].update(train)
    return parse_params(raw)


def test_callbacks_monitor_val_loss_with_the_params_patiences(tmp_path: Path) -> None:
    import keras

    from pneumonia.model.train import training_callbacks

    params = _params(reduce_lr_factor=0.5, reduce_lr_patience=3, min_lr=1e-7,
                     early_stopping_patience=4)
    cbs = {type(cb).__name__: cb for cb in training_callbacks(params, tmp_path, 0.7)}
    plateau = cbs["ReduceLROnPlateau"]
    assert (plateau.monitor, plateau.factor, plateau.patience, plateau.min_lr) == (
        "val_loss", 0.5, 3, 1e-7)
    stop = cbs["EarlyStopping"]
    assert (stop.monitor, stop.patience, stop.restore_best_weights) == ("val_loss", 4, True)
    best = cbs["ModelCheckpoint"]
    assert (best.monitor, best.save_best_only, best.save_weights_only) == ("val_loss", True, True)
    assert best.best == 0.7  # the best val_loss of the epochs before a resume
    assert Path(best.filepath) == tmp_path / "best.weights.h5"
    assert isinstance(cbs["BackupAndRestore"], keras.callbacks.BackupAndRestore)
    assert {"EpochHistory", "EpochMetrics"} <= set(cbs)


def test_compile_uses_lr_binary_crossentropy() -> None:
    import keras

    from pneumonia.model.train import compile_model

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    raw = json.loads(json.dumps(TINY_PARAMS)) | {"lr": 3e-4}
    compile_model(model, parse_params(raw))
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(3e-4)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    assert model.loss.label_smoothing == 0.0  # train.label_smoothing's default: the plain loss


def test_train_dataset_augments_within_the_ranges_and_never_flips(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """The dataset train.run fits on: each batch is its source images (same order as without
    augmentation) transformed with draws from (train.seed, epoch, batch) inside the configured
    ranges — rotation, independent zoom, shift, multiplicative brightness — never mirrored."""
    import keras
    import tensorflow as tf

    from pneumonia.model.inputs import batch_seed, read_split, subset_rows
    from pneumonia.model.train import train_dataset
    from tests.model.test_inputs import _decompose

    make_split(tmp_path)
    monkeypatch.chdir(tmp_path)
    rows = subset_rows(read_split(), "train")
    params = _params(epochs=2, augment={"rotation": 10, "zoom": 0.1, "shift": 0.1,
                                        "brightness": 0.1})
    plain_params = _params(epochs=2, augment={"rotation": 0, "zoom": 0, "shift": 0,
                                              "brightness": 0})
    augmented = [(x.numpy(), y.numpy()) for x, y in train_dataset(rows, params, 48)]
    plain = [(x.numpy(), y.numpy()) for x, y in train_dataset(rows, plain_params, 48)]
    assert len(augmented) == len(plain) == 2 * 3  # 144 images, batch 48, 2 epochs

    from pneumonia.model.inputs import _affine_layer_class

    layer = _affine_layer_class()(10, 0.1, 0.1, 0.1, brightness_mode="multiplicative",
                                  zoom_independent=True)
    for k, ((x, y), (src, y_src)) in enumerate(zip(augmented, plain, strict=True)):
        epoch, batch = divmod(k, 3)
        assert (y == y_src).all()  # same images in the same order
        assert np.abs(x - src).mean() > 1  # augmented
        seed = batch_seed(params.train.seed, epoch, batch)
        d = _decompose(np.asarray(layer.transforms(len(x), 32, 32, seed)))
        assert np.abs(d["angle"]).max() <= 10 + 1e-4 and (d["det"] > 0).all()  # no flip
        for z in (d["zx"], d["zy"]):
            assert 0.9 - 1e-5 <= z.min() and z.max() <= 1.1 + 1e-5
        assert np.abs(d["shift"]).max() <= 0.1 + 1e-4
        f = np.asarray(layer.brightness_factors(len(x), seed)).reshape(-1)
        assert 0.9 - 1e-6 <= f.min() and f.max() <= 1.1 + 1e-6
        # The batch is exactly those draws (det > 0: no mirror) applied to its source images.
        expected = layer(tf.constant(src), training=True, seed=seed)
        np.testing.assert_allclose(x, keras.ops.convert_to_numpy(expected), atol=1e-3)


def test_restore_best_says_which_weights_the_model_holds(tmp_path: Path) -> None:
    import keras

    from pneumonia.model.train import restore_best

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    history = [{"epoch": 1, "val_loss": 0.5}, {"epoch": 2, "val_loss": 0.3},
               {"epoch": 3, "val_loss": 0.4}]
    best = tmp_path / "best.weights.h5"
    model.layers[0].kernel.assign(np.ones((2, 1), "float32"))
    model.save_weights(best)
    model.layers[0].kernel.assign(np.zeros((2, 1), "float32"))
    assert restore_best(model, best, history) == {"saved_weights": "best", "saved_epoch": 2}
    assert float(keras.ops.sum(model.layers[0].kernel)) == 2.0

    best.write_bytes(b"cut short by a kill")
    model.layers[0].kernel.assign(np.zeros((2, 1), "float32"))
    assert restore_best(model, best, history) == {"saved_weights": "last", "saved_epoch": 3}
    assert float(keras.ops.sum(model.layers[0].kernel)) == 0.0  # the last weights, as said
    best.unlink()
    assert restore_best(model, best, history)["saved_weights"] == "last"


def test_resume_key_covers_the_training_code(tmp_path: Path) -> None:
    """A backup made by other training code is never resumed: the key hashes every file the
    train stage imports (the closure dvc.yaml lists), and nothing else."""
    import shutil

    from pneumonia.model.train import code_digest, code_files, resume_key
    from tests.pipeline.test_layout import REPO, import_closure

    assert {f.relative_to(REPO).as_posix() for f in code_files()} == import_closure("train")
    for folder in ("pneumonia", "stages"):
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    before = code_digest(tmp_path)
    assert before == code_digest(REPO)
    params = _params()
    with open(tmp_path / "pneumonia/dataset/balance.py", "a") as f:  # not imported by train
        f.write("\n# a comment\n")
    assert code_digest(tmp_path) == before
    with open(tmp_path / "pneumonia/model/network.py", "a") as f:
        f.write("\n# a comment\n")
    after = code_digest(tmp_path)
    assert after != before
    assert resume_key(params, "s", before) != resume_key(params, "s", after)


def test_mlflow_failure_after_training_keeps_the_model_and_a_rerun_only_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process: the callbacks and optimizer train.run really fits with; then MLflow fails
    after training -> PipelineError saying the model is saved and what to do; the rerun does
    not train again, logs, and cleans up."""
    import keras
    import mlflow
    from mlflow.exceptions import MlflowException

    from pneumonia.errors import PipelineError
    from pneumonia.model import train
    from pneumonia.params import load_params

    make_split(tmp_path)
    # small_cnn: the train stage's bookkeeping is under test, not the network (a DenseNet's
    # graph is most of the time here).
    write_params(tmp_path, lr=LR, train__epochs=1, train__early_stopping_patience=3,
                 train__reduce_lr_patience=1, model__backbone="small_cnn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "inprocess")
    fits: list[dict[str, Any]] = []
    real_fit = keras.Model.fit

    def spy_fit(self: keras.Model, *args: Any, **kwargs: Any) -> Any:
        fits.append({"callbacks": kwargs["callbacks"],
                     "lr": float(self.optimizer.learning_rate),
                     "steps": kwargs["steps_per_epoch"]})
        return real_fit(self, *args, **kwargs)

    def store_gone(*args: Any, **kwargs: Any) -> None:
        raise MlflowException("the store went away")

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    # Logging the training's files is the last call to the store, after the model is saved.
    monkeypatch.setattr(mlflow, "log_artifact", store_gone)
    params = load_params()
    with pytest.raises(PipelineError) as err:
        train.run(params)
    msg = str(err.value)
    assert "the model is saved (models/model.keras" in msg and "the store went away" in msg
    assert "dvc repro" in msg and "without training again" in msg
    assert keras.saving.load_model(tmp_path / "models/model.keras").input_shape[1:] == (32, 32, 1)
    assert json.loads((tmp_path / "metrics/details/train.json").read_text())["epochs_run"] == 1

    (fit,) = fits
    assert fit["lr"] == pytest.approx(LR) and fit["steps"] == 3
    cbs = {type(cb).__name__: cb for cb in fit["callbacks"]}
    assert cbs["EarlyStopping"].patience == 3 and cbs["EarlyStopping"].restore_best_weights
    assert cbs["ReduceLROnPlateau"].patience == 1
    assert cbs["ReduceLROnPlateau"].monitor == cbs["EarlyStopping"].monitor == "val_loss"

    monkeypatch.undo()  # the store is back
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "inprocess")
    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    summary = train.run(params)
    assert len(fits) == 1  # not trained again
    assert summary["epochs_run"] == 1 and summary["saved_weights"] == "best"
    assert json.loads((tmp_path / "models/mlflow_run.json").read_text())["run_id"]
    assert not list((tmp_path / "models/.train-backup").glob("*"))


@pytest.mark.slow  # ~1 min: a real train stage and two evaluate stages, each a fresh Python
def test_params_changed_while_training_registers_nothing(tmp_path: Path) -> None:
    """Issue 35 item 5: a second `dvc exp run -S train.seed=32` in the same workspace rewrites
    params.yaml while the first command's train stage runs. That train stage trains with what it
    read (seed 31); evaluate must stop before registering, naming the cause and the fix
    (`--queue` / `--temp`), and register nothing. The params restored, the same model registers."""
    import mlflow

    make_split(tmp_path)
    write_params(tmp_path, **PIPELINE, train__seed=31)
    env = stage_env(tmp_path, MLFLOW_EXPERIMENT_NAME="race")
    train = subprocess.Popen([sys.executable, "-m", "stages.train"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_epoch(tmp_path, train)
        write_params(tmp_path, **PIPELINE, train__seed=32)  # the other command's -S
        out, _ = train.communicate(timeout=300)
    finally:
        if train.poll() is None:
            train.kill()
            train.wait(timeout=60)
    assert train.returncode == 0, out[-3000:]

    refused = run_stage(tmp_path, "evaluate", MLFLOW_EXPERIMENT_NAME="race")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert "params.yaml changed after the train stage read it" in refused.stderr
    assert "dvc exp run --queue" in refused.stderr and "--temp" in refused.stderr
    assert "Nothing is registered" in refused.stderr and "Traceback" not in refused.stderr
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_registered_models() == []
    assert not (tmp_path / "metrics/registry.json").exists()

    write_params(tmp_path, **PIPELINE, train__seed=31)  # what the train stage read
    evaluated = run_stage(tmp_path, "evaluate", MLFLOW_EXPERIMENT_NAME="race")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert [m.name for m in client.search_registered_models()] == ["pneumonia-densenet201"]
