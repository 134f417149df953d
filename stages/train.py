"""Stage `train`: fine-tune the classifier on the split's train subset, validate on its val subset.

Paper setup: Adam (lr 2e-6), binary cross-entropy, ReduceLROnPlateau on val_loss (patience 2),
EarlyStopping on val_loss (patience 5), online augmentation without flips.

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

import csv
import hashlib
import json
import logging
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages import tracking
from stages.cli import run_stage
from stages.config import (
    MODEL_FILE,
    MODELS,
    SPLIT_CSV,
    TRAIN_HISTORY,
    TRAIN_JSON,
    Params,
    flatten,
    load_params,
    write_json,
)
from stages.dataset import check_images, make_dataset, read_split, sha256_file, subset_rows
from stages.model import build_model, resolve_weights

if TYPE_CHECKING:
    import keras

log = logging.getLogger("stages.train")

BACKUP_ROOT = MODELS / ".train-backup"
HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr")


# --------------------------------------------------------------------------------------------
# Resume state
# --------------------------------------------------------------------------------------------
def resume_key(params: Params, split_sha256: str) -> str:
    """Short hash of everything that shapes training, so only an identical run resumes."""
    relevant = {
        "lr": params.lr,
        "image_size": params.data.image_size,
        "model": asdict(params.model),
        "train": asdict(params.train),
        "split_sha256": split_sha256,
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def completed_epochs(backup_dir: Path) -> int:
    """Epochs finished by an earlier, interrupted run (0 = fresh start)."""
    meta = backup_dir / "training_metadata.json"  # written by keras BackupAndRestore
    try:
        return int(json.loads(meta.read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def read_history(path: Path) -> list[dict[str, float]]:
    """Per-epoch rows of the history CSV, one per epoch (the last written wins: an epoch
    re-run after a kill replaces the interrupted attempt), sorted by epoch."""
    if not path.is_file():
        return []
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                parsed = {k: float(row[k]) for k in HISTORY_COLUMNS}
            except (KeyError, TypeError, ValueError):
                continue  # a line cut short by a kill
            rows[int(parsed["epoch"])] = parsed
    return [rows[e] | {"epoch": e} for e in sorted(rows)]


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def history_callback(path: Path) -> keras.callbacks.Callback:
    """Append one CSV row per finished epoch (flushed to disk before the epoch's backup)."""
    import keras

    class EpochHistory(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            # The rate used *during* the epoch (ReduceLROnPlateau changes it at the epoch's end).
            self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            row = {"epoch": epoch + 1, "lr": self._lr}
            row |= {k: float(logs.get(k, math.nan)) for k in HISTORY_COLUMNS[1:5]}
            new = not path.exists()
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
                if new:
                    writer.writeheader()
                writer.writerow(row)
                f.flush()
                os.fsync(f.fileno())

    return EpochHistory()


# --------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------
def select_device(params: Params) -> tuple[Any, str, str, int]:
    """Choose the distribution strategy and precision from what is visible.

    Returns (strategy or None, device description, precision, replicas). Never hard-codes a
    device: a GPU machine trains on its GPU(s), any other on the CPU.
    """
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            names.append(
                tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            )
        except (ValueError, RuntimeError):
            names.append(gpu.name)
    mp = params.train.mixed_precision
    use_mp = mp == "on" or (mp == "auto" and bool(gpus))
    if mp == "on" and not gpus:
        log.warning("train.mixed_precision is `on` without a GPU: float16 on CPU is slow")
    precision = "mixed_float16" if use_mp else "float32"
    keras.mixed_precision.set_global_policy(precision)

    if gpus:
        device = f"{len(gpus)} x GPU ({', '.join(names)})"
    else:
        device = f"CPU ({os.cpu_count()} cores)"
    strategy = None
    devices = None  # MirroredStrategy's default: every GPU
    if not gpus and params.train.cpu_devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * params.train.cpu_devices
        )
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        device += f", {len(devices)} logical devices"
    dist = params.train.distribute
    if dist == "mirrored" or (dist == "auto" and len(devices or gpus) > 1):
        strategy = tf.distribute.MirroredStrategy(devices)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    return strategy, device, precision, replicas


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

    key = resume_key(params, split_sha)
    backup_dir = BACKUP_ROOT / key
    backup_dir.mkdir(parents=True, exist_ok=True)
    history_csv = backup_dir / "history.csv"
    run_id_file = backup_dir / "mlflow_run_id"
    done = completed_epochs(backup_dir)
    if done:
        log.info("resuming from epoch %d (backup %s)", done, backup_dir)
    # Also after a kill within epoch 1: continue that MLflow run rather than leave it dangling.
    resume_run_id = run_id_file.read_text().strip() if run_id_file.is_file() else None

    import keras

    keras.utils.set_random_seed(params.train.seed)
    strategy, device, precision, replicas = select_device(params)
    log.info("training on %s, precision %s, %d replica(s)", device, precision, replicas)
    global_batch = params.train.batch_size * replicas

    train_ds = make_dataset(
        train_rows,
        size,
        global_batch,
        training=True,
        seed=params.train.seed,
        augment=params.train.augment,
    )
    val_ds = make_dataset(val_rows, size, global_batch, training=False)

    with strategy.scope() if strategy else nullcontext():
        model = build_model(params.model, size, weights)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=params.lr),
            loss="binary_crossentropy",
            metrics=["accuracy"],
            jit_compile=params.train.jit_compile,
        )

    earlier = read_history(history_csv)
    best_so_far = min(
        (r["val_loss"] for r in earlier if math.isfinite(r["val_loss"])), default=None
    )
    best_weights = backup_dir / "best.weights.h5"

    with tracking.train_run(resume_run_id) as mlrun:
        import mlflow

        run_id_file.write_text(mlrun.info.run_id)
        # evaluate.* are logged by the evaluate stage (they may change without retraining).
        flat = {k: v for k, v in flatten(params).items() if not k.startswith("evaluate.")}
        tracking.log_params(flat)  # skips params a resumed run already holds
        tracking.log_split(df, SPLIT_CSV, split_sha, context="training")

        mlflow.set_tags({"device": device, "precision": precision, "replicas": str(replicas)})

        metrics_callback = tracking.epoch_metrics_callback()
        callbacks = [
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=params.train.reduce_lr_factor,
                patience=params.train.reduce_lr_patience,
                min_lr=params.train.min_lr,
                verbose=1,
            ),
            keras.callbacks.EarlyStopping(
                monitor="val_loss",
                patience=params.train.early_stopping_patience,
                restore_best_weights=True,
                verbose=1,
            ),
            # Best weights over *all* epochs, also those before a resume.
            keras.callbacks.ModelCheckpoint(
                best_weights,
                monitor="val_loss",
                save_best_only=True,
                save_weights_only=True,
                initial_value_threshold=best_so_far,
            ),
            metrics_callback,
            # History before the backup: a kill in between re-runs the epoch, whose row then
            # replaces the first attempt's (read_history keeps the last row per epoch).
            history_callback(history_csv),
            keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
        ]
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=params.train.epochs,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself (seeded, each epoch)
            verbose=2,
        )
        if best_weights.is_file():
            try:
                model.load_weights(best_weights)
            except (OSError, ValueError) as exc:  # cut short by a kill while being written
                log.warning("could not load %s (%s): keeping the last weights", best_weights, exc)

        tracking.check_still_tracking(metrics_callback, backup_dir)
        history = read_history(history_csv)
        save_model_atomically(model)
        write_history(history, TRAIN_HISTORY)
        summary = _summary(history, params, device, precision, replicas, train_rows, val_rows)
        summary["seconds"] = round(time.monotonic() - started, 1)
        # Keras 3 wraps the optimizer in a LossScaleOptimizer under mixed_float16 (compile).
        summary["loss_scaling"] = isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        write_json(summary, TRAIN_JSON)

        final = {
            "best_val_loss": summary["best_val_loss"],
            "best_val_accuracy": summary["best_val_accuracy"],
            "best_epoch": summary["best_epoch"],
            "epochs_run": summary["epochs_run"],
            "train_seconds": summary["seconds"],
        }
        mlflow.log_metrics({k: float(v) for k, v in final.items() if v is not None})
        mlflow.log_artifact(str(TRAIN_JSON), artifact_path="train")
        mlflow.log_artifact(str(TRAIN_HISTORY), artifact_path="train")
        tracking.log_keras_model(model, size)
        info = tracking.write_run_file(mlrun)
    log.info(
        "MLflow run %s in %s (experiment %s)", info["run_id"], info["tracking_uri"], experiment_id
    )

    # Finished: the resume state is no longer needed (a re-run starts fresh).
    shutil.rmtree(backup_dir, ignore_errors=True)
    return summary


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
        "val_images": len(val_rows),
        "seconds": None,
    }


def main() -> None:
    run_stage(lambda: run(load_params()), "train")


if __name__ == "__main__":
    main()
