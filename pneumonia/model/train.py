"""Stage `train`: fine-tune the classifier on the split's train subset, validate on its val subset.
Over 400 lines on purpose: the stage's run and the pieces it composes (dataset, compile,
callbacks, best-weights restore, validation scoring, MLflow logging); resume.py and devices.py
hold the resume state and the device choice.

Paper setup (Sec. IV-E): Adam (lr 2e-6), ReduceLROnPlateau (patience 2), EarlyStopping (patience 5),
online augmentation without flips. The paper does not state the loss: binary cross-entropy on
the single sigmoid output is our choice (the standard one for that head); val_loss is monitored.

Resumable: a run killed at any point (kill -9, preempted GPU) continues from its last finished
epoch when started again with the *same* configuration (params and split.csv): Keras
BackupAndRestore keeps weights, optimizer state and epoch in models/.train-backup/<key>/, next to
the per-epoch history and the MLflow run id. EarlyStopping/ReduceLROnPlateau counters restart on
resume; the best weights do not get lost (they are checkpointed with the all-epochs best
val_loss as threshold).

Outputs: models/model.keras (weights of the best epoch), metrics/train_history.csv,
metrics/train.json, models/mlflow_run.json.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia import pipeline_run, provenance, tracking
from pneumonia.errors import PipelineError
from pneumonia.files import sha256_file, write_json, write_metrics
from pneumonia.model import backup
from pneumonia.model.devices import configure_determinism, select_device
from pneumonia.model.inputs import (
    check_images,
    labels_of,
    make_dataset,
    read_split,
    steps_per_epoch,
    subset_rows,
)
from pneumonia.model.network import build_model, resolve_weights
from pneumonia.model.optimization import ema_callbacks, load_average, make_loss, make_optimizer
from pneumonia.model.resume import (
    code_digest,
    history_callback,
    read_history,
    resume_key,
    write_history,
)
from pneumonia.model.tasks import n_outputs, target_indices, targets
from pneumonia.params import Params, arm_of, params_digest, training_params
from pneumonia.paths import (
    MODEL_FILE,
    MODELS,
    SPLIT_CSV,
    TRAIN_DETAILS,
    TRAIN_HISTORY,
    TRAIN_JSON,
)

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

BACKUP_ROOT = MODELS / ".train-backup"
FINISHED = "finished.json"  # in the backup folder: fit() completed, only the logging remains


# --------------------------------------------------------------------------------------------
# The pieces of a run (each testable alone)
# --------------------------------------------------------------------------------------------
def train_dataset(rows: Any, params: Params, global_batch: int, first_epoch: int = 0) -> Any:
    """The training input of epochs first_epoch .. train.epochs - 1: seeded order, online
    augmentation with `train.augment` (stateless, from (train.seed, epoch, batch))."""
    return make_dataset(
        rows,
        params.data.image_size,
        global_batch,
        training=True,
        seed=params.train.seed,
        augment=params.train.augment,
        epochs=(first_epoch, params.train.epochs),
        targets=targets(rows, params.task) if params.task != "binary" else None,
    )


def compile_model(model: keras.Model, params: Params, steps_per_epoch: int = 1) -> None:
    """Adam at `lr` (constant or scheduled, with or without a weight average), binary
    cross-entropy (the single sigmoid output; categorical for the three-class softmax),
    accuracy: pneumonia.model.optimization."""
    model.compile(
        optimizer=make_optimizer(params, steps_per_epoch),
        loss=make_loss(params),
        metrics=["accuracy"],
        jit_compile=params.train.jit_compile,
    )


def training_callbacks(
    params: Params, backup_dir: Path, best_so_far: float | None
) -> list[keras.callbacks.Callback]:
    """The paper's ReduceLROnPlateau (with `lr_schedule: plateau`) and EarlyStopping on val_loss,
    the best-weights checkpoint (over all epochs, also those before a resume), MLflow and CSV
    history, and the backup; with a weight average, the callbacks that validate and checkpoint
    the average (pneumonia.model.optimization)."""
    import keras

    t = params.train
    schedule = [] if t.lr_schedule != "plateau" else [
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss",
            factor=t.reduce_lr_factor,
            patience=t.reduce_lr_patience,
            min_lr=t.min_lr,
            verbose=1,
        )
    ]
    average = ema_callbacks(t.ema_momentum, backup_dir) if t.ema_momentum > 0 else ()
    callbacks = [
        *average[:1],
        *schedule,
        keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=t.early_stopping_patience,
            restore_best_weights=t.keep_weights == "best",
            verbose=1,
        ),
        keras.callbacks.ModelCheckpoint(
            backup_dir / "best.weights.h5",
            monitor="val_loss",
            save_best_only=True,
            save_weights_only=True,
            initial_value_threshold=best_so_far,
        ),
        pipeline_run.epoch_metrics_callback(),
        # History before the backup: a kill in between re-runs the epoch, whose row then
        # replaces the first attempt's (read_history keeps the last row per epoch).
        history_callback(backup_dir / "history.csv"),
        # The raw weights back before the backup saves them (training resumes from those).
        *average[1:2],
        backup.rng_callback(backup_dir),  # dropout's generator state, before the backup too
        backup.backup_callback(backup_dir),  # two copies: a kill mid-save loses one epoch
        *average[2:],  # then the average, so a resumed run continues it
    ]
    return callbacks


def restore_best(
    model: keras.Model, best_weights: Path, history: list[dict[str, float]]
) -> dict[str, Any]:
    """Load the best epoch's weights into `model`; say which weights the model now holds.

    Returns {"saved_weights": "best" | "last", "saved_epoch": N}. "last" (with a warning) when
    the checkpoint is missing or unreadable (e.g. cut short by a kill while being written): the
    model then holds the last epoch's weights, and train.json says so.
    """
    finite = [r for r in history if math.isfinite(r["val_loss"])]
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    last_epoch = int(history[-1]["epoch"]) if history else 0
    if best is not None and best_weights.is_file():
        try:
            model.load_weights(best_weights)
            return {"saved_weights": "best", "saved_epoch": int(best["epoch"])}
        except (OSError, ValueError) as exc:
            log.warning("could not load the best weights %s (%s): the model keeps the last "
                        "epoch's (%d) weights", best_weights, exc, last_epoch)
    else:
        log.warning("no best-weights checkpoint %s: the model keeps the last epoch's (%d) weights",
                    best_weights, last_epoch)
    return {"saved_weights": "last", "saved_epoch": last_epoch}


def is_original(rows: Any) -> Any:
    """Boolean mask: rows that are original images (not generated by the balance stage)."""
    source = rows["source_image_id"]
    return source.isna() | (source.astype(str) == "")


def score_validation(model: keras.Model, val_rows: Any, image_size: int,
                     batch_size: int, task: str = "binary") -> dict[str, float | int | None]:
    """Loss and accuracy of `model` (as saved) on the whole validation subset and on its
    original images only (generated images excluded): one prediction pass."""
    import keras
    import numpy as np

    ds = make_dataset(val_rows, image_size, batch_size, training=False)
    out = np.asarray(model.predict(ds, verbose=0), dtype="float64")
    eps = keras.config.epsilon()  # Keras' cross-entropies clip to [eps, 1 - eps]
    if task == "binary":
        prob = out.reshape(-1)
        y = np.asarray(labels_of(val_rows), dtype="float64")
        p = np.clip(prob, eps, 1 - eps)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        right = (prob > 0.5) == (y == 1)  # Keras' binary accuracy threshold
    else:  # softmax: categorical cross-entropy of the true class, argmax accuracy
        idx = target_indices(val_rows, task)
        loss = -np.log(np.clip(out[np.arange(len(idx)), idx], eps, 1 - eps))
        right = out.argmax(axis=1) == idx
    original = is_original(val_rows).to_numpy()

    def mean(values: Any, mask: Any) -> float | None:
        return float(values[mask].mean()) if mask.any() else None

    everything = np.ones_like(original, dtype=bool)
    return {
        "val_loss_saved_model": mean(loss, everything),
        "val_accuracy_saved_model": mean(right, everything),
        "best_val_loss_original": mean(loss, original),
        "best_val_accuracy_original": mean(right, original),
        "val_images_original": int(original.sum()),
    }


# --------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------
def save_model_atomically(model: keras.Model, path: Path = MODEL_FILE) -> None:
    """Write to a temp file next to `path`, then rename: a kill never leaves a half model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(params: Params) -> dict[str, Any]:
    """Train, write the stage's outputs, log the run to MLflow; return metrics/train.json."""
    started = time.monotonic()
    df = read_split()
    train_rows, val_rows = subset_rows(df, "train"), subset_rows(df, "val")
    size = params.data.image_size
    check_images(train_rows, size)
    check_images(val_rows, size)
    split_sha = sha256_file(SPLIT_CSV)
    # Checks that can fail fast come before any compute: tracking store, then weights.
    experiment_id = tracking.setup()
    weights = resolve_weights(params.model)

    key = resume_key(params, split_sha, code_digest())
    backup_dir = BACKUP_ROOT / key
    backup_dir.mkdir(parents=True, exist_ok=True)
    history_csv = backup_dir / "history.csv"
    run_id_file = backup_dir / "mlflow_run_id"  # written by _train_and_log

    configure_determinism(params)
    strategy, device, precision, replicas = select_device(params)
    log.info("training on %s, precision %s, %d replica(s)", device, precision, replicas)
    global_batch = params.train.batch_size * replicas

    # Epochs finished earlier; a cut-short or inconsistent backup (weights one epoch ahead of
    # the metadata: a kill between Keras' two writes) is repaired from its previous copy.
    done = backup.recover(backup_dir, steps_per_epoch(len(train_rows), global_batch))
    finished = (backup_dir / FINISHED).is_file()
    if finished:
        log.info("training finished in an earlier attempt (backup %s): not training again, "
                 "only saving and logging", backup_dir)
    elif done:
        log.info("resuming from epoch %d (backup %s)", done, backup_dir)
    # Also after a kill within epoch 1: continue that MLflow run rather than leave it dangling.
    resume_run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None

    train_ds = train_dataset(train_rows, params, global_batch, first_epoch=done)

    with strategy.scope() if strategy else nullcontext():
        model = build_model(params.model, size, weights, n_outputs(params.task))
        compile_model(model, params, steps_per_epoch(len(train_rows), global_batch))

    earlier = read_history(history_csv)
    best_so_far = min(
        (r["val_loss"] for r in earlier if math.isfinite(r["val_loss"])), default=None
    )

    import mlflow

    progress: dict[str, bool] = {"saved": False}
    try:
        with pipeline_run.train_run(resume_run_id) as mlrun:
            info = _train_and_log(
                mlrun, params, model, df, split_sha, train_rows, val_rows, train_ds, backup_dir,
                best_so_far, finished, (device, precision, replicas), started, progress)
    except tracking_errors() as exc:
        if not progress["saved"]:
            raise  # failed before the model was saved: no outputs to tell about
        raise PipelineError(
            f"training finished and the model is saved ({MODEL_FILE}, {TRAIN_JSON}, "
            f"{TRAIN_HISTORY}), but logging the results to MLflow "
            f"({mlflow.get_tracking_uri()}) failed: {type(exc).__name__}: {exc}\n"
            "The stage is marked failed, so DVC records nothing. Fix the tracking store "
            "(start the server, free the disk, or unset MLFLOW_TRACKING_URI), then run "
            f"`dvc repro` again: it finds the finished training in {backup_dir} and only "
            "saves and logs, without training again."
        ) from exc
    log.info(
        "MLflow run %s in %s (experiment %s)", info["run_id"], info["tracking_uri"], experiment_id
    )

    # Finished: the resume state is no longer needed (a re-run starts fresh).
    shutil.rmtree(backup_dir, ignore_errors=True)
    return json.loads(TRAIN_DETAILS.read_text())


def tracking_errors() -> tuple[type[BaseException], ...]:
    """What a failing tracking store raises: MLflow's own errors, file-store I/O, HTTP."""
    import requests
    from mlflow.exceptions import MlflowException

    return (MlflowException, OSError, requests.RequestException)


def _train_and_log(
    mlrun: Any, params: Params, model: keras.Model, df: Any, split_sha: str, train_rows: Any,
    val_rows: Any, train_ds: Any, backup_dir: Path, best_so_far: float | None, finished: bool,
    device_info: tuple[str, str, int], started: float, progress: dict[str, bool],
) -> dict[str, str]:
    """Inside the open MLflow run: fit (unless an earlier attempt finished), keep the best
    weights, write the stage's outputs (then progress["saved"] is True), log. Returns the
    run file's content."""
    import keras
    import mlflow

    device, precision, replicas = device_info
    size = params.data.image_size
    global_batch = params.train.batch_size * replicas
    history_csv = backup_dir / "history.csv"
    (backup_dir / "mlflow_run_id").write_text(mlrun.info.run_id)
    pipeline_run.log_params(training_params(params))  # skips params a resumed run already holds
    pipeline_run.log_split(df, SPLIT_CSV, split_sha, context="training")

    mlflow.set_tags({"device": device, "precision": precision, "replicas": str(replicas),
                     "arm": arm_of(params), "seed": str(params.train.seed), "task": params.task})

    class_weight = class_weights(train_rows, params.task) \
        if params.balance.method == "class_weight" else None
    if class_weight:
        log.info("class weights (balance.method class_weight): %s", class_weight)
    if finished:
        model.optimizer.build(model.trainable_variables)  # its state is in the file too
        model.load_weights(backup_dir / "latest.weights.h5")  # BackupAndRestore's last epoch
        if params.train.ema_momentum > 0:  # what fit's end did: the model takes the average
            load_average(model, backup_dir)
    else:
        val_ds = make_dataset(val_rows, size, global_batch, training=False,
                              targets=targets(val_rows, params.task)
                              if params.task != "binary" else None)
        callbacks = training_callbacks(params, backup_dir, best_so_far)
        model.fit(
            train_ds,
            class_weight=class_weight,
            validation_data=val_ds,
            epochs=params.train.epochs,
            steps_per_epoch=steps_per_epoch(len(train_rows), global_batch),
            callbacks=callbacks,
            shuffle=False,  # the dataset orders each epoch itself (seeded)
            verbose=2,
        )
        # A tracking server gone mid-training: stop with the backup kept (TrackingLost).
        pipeline_run.check_still_tracking(
            next(c for c in callbacks if hasattr(c, "lost")), backup_dir)
    history = read_history(history_csv)
    if params.train.keep_weights == "best":
        saved = restore_best(model, backup_dir / "best.weights.h5", history)
    else:  # the weights fit ended with (the average, with train.ema_momentum)
        saved = {"saved_weights": "last", "saved_epoch": int(history[-1]["epoch"]) if history
                 else 0}
    scores = score_validation(model, val_rows, size, global_batch, params.task)
    save_model_atomically(model)
    write_history(history, TRAIN_HISTORY)
    summary = _summary(history, params, device, precision, replicas, train_rows, val_rows)
    summary |= saved | scores
    summary["seconds"] = round(time.monotonic() - started, 1)
    # Keras 3 wraps the optimizer in a LossScaleOptimizer under mixed_float16 (compile).
    summary["loss_scaling"] = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    write_metrics(summary, TRAIN_JSON)  # headline; details/train.json: the summary
    write_json(summary, backup_dir / FINISHED)  # a rerun after a logging failure: no refit
    progress["saved"] = True
    # What the model was trained on (the bundled sample, the full dataset, other): run tags here,
    # and the served model's metadata when evaluate logs it (pneumonia.provenance).
    prov = provenance.describe(params.data.raw, size, mlrun.info.run_id)
    mlflow.set_tags(provenance.as_tags(prov))
    return _log_results(mlrun, model, summary, size, params_digest(params))


FINAL_METRICS = ("best_val_loss", "best_val_accuracy", "best_epoch", "epochs_run",
                 "saved_epoch", "val_loss_saved_model", "best_val_loss_original",
                 "best_val_accuracy_original")


def _log_results(mlrun: Any, model: keras.Model, summary: dict[str, Any],
                 size: int, params_sha256: str = "") -> dict[str, str]:
    """Log the finished training's metrics and files to the open MLflow run."""
    import mlflow

    final = {k: summary[k] for k in FINAL_METRICS} | {"train_seconds": summary["seconds"]}
    mlflow.log_metrics({k: float(v) for k, v in final.items() if v is not None})
    mlflow.set_tag("saved_weights", summary["saved_weights"])
    mlflow.log_artifact(str(TRAIN_DETAILS), artifact_path="train")
    mlflow.log_artifact(str(TRAIN_HISTORY), artifact_path="train")
    # The served model (pneumonia.inference.pyfunc) is logged where it is evaluated, with
    # evaluate's threshold and conformal calibration (pneumonia.registry.model_to_register):
    # train depends on no inference, evaluation or statistics code (dvc.yaml deps).
    return pipeline_run.write_run_file(mlrun, params_sha256=params_sha256)


def class_weights(rows: Any, task: str = "binary") -> dict[int, float]:
    """Loss weight per class, n / (K n_class) (scikit-learn's "balanced", K = 2 labels or 3
    classes): each class then weighs as much as each other in the loss, as if it had as many
    images."""
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    y = target_indices(rows, task)
    k = n_outputs(task) if task != "binary" else 2
    weights = compute_class_weight("balanced", classes=np.arange(k), y=y)
    return {i: float(w) for i, w in enumerate(weights)}


def _summary(
    history: list[dict[str, float]],
    params: Params,
    device: str,
    precision: str,
    replicas: int,
    train_rows: Any,
    val_rows: Any,
) -> dict[str, Any]:
    finite = [r for r in history if math.isfinite(r["val_loss"])]
    best = min(finite, key=lambda r: r["val_loss"]) if finite else None
    epochs_run = int(history[-1]["epoch"]) if history else 0
    return {
        "epochs_run": epochs_run,
        "best_epoch": int(best["epoch"]) if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "best_val_accuracy": best["val_accuracy"] if best else None,
        "stopped_early": epochs_run < params.train.epochs,
        "device": device,
        "precision": precision,
        "replicas": replicas,
        "global_batch_size": params.train.batch_size * replicas,
        "train_images": len(train_rows),
        "balance_method": params.balance.method,
        "class_weight": class_weights(train_rows, params.task)
        if params.balance.method == "class_weight" else None,
        "task": params.task,
        "val_images": len(val_rows),
        "seconds": None,
    }

