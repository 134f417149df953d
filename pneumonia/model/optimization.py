"""How the weights are fitted: the optimizer, its learning-rate schedule, weight averaging, loss.

- `train.lr_schedule: plateau` (the paper): Adam at a constant `lr`, cut by ReduceLROnPlateau
  when val_loss stalls. `cosine`: a per-step schedule — linear warm-up from 0 over
  `train.warmup_epochs`, then cosine decay to 0 at `train.epochs` (keras CosineDecay).
- `train.ema_momentum > 0`: an exponential moving average of *every* model weight, updated after
  each training step: the trainable ones and the BatchNorm moving statistics, as timm's ModelEma
  does. Keras' own `Adam(use_ema=True)` averages only the trainable weights; the averaged
  weights then meet BatchNorm statistics of the raw ones, and on this data the average's
  validation accuracy fell to ~0.5 while the raw model's was > 0.9 (a probe, 2026-11-30).
  `WeightAverage` puts the average into the model for each validation pass and keeps it there
  through the epoch-end callbacks (EarlyStopping, the best-weights checkpoint, the CSV history);
  `RawWeightsBack` puts the raw weights back before BackupAndRestore saves them. So what is
  validated, checkpointed and saved is the average; what keeps training is the raw weights. The
  average itself is saved next to the backup after every epoch (weight_average.npz), so a resumed
  run continues the same average; at the end of training the model holds the average.
- `train.label_smoothing`: binary cross-entropy against y (1 - s) + s / 2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia.params import Params

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)


def learning_rate(params: Params, steps_per_epoch: int) -> Any:
    """Adam's `learning_rate`: the constant `lr` (plateau) or a CosineDecay schedule."""
    if params.train.lr_schedule == "plateau":
        return params.lr
    import keras

    warmup = params.train.warmup_epochs * steps_per_epoch
    total = params.train.epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else params.lr,
        decay_steps=max(total - warmup, 1),
        alpha=0.0,
        warmup_target=params.lr if warmup else None,
        warmup_steps=warmup,
    )


def make_optimizer(params: Params, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam at `learning_rate(...)`."""
    import keras

    return keras.optimizers.Adam(learning_rate=learning_rate(params, steps_per_epoch))


def make_loss(params: Params) -> keras.losses.Loss:
    """Binary cross-entropy on the sigmoid output (the paper states no loss: our choice);
    categorical cross-entropy on the three-class softmax (`task: three_class`). Both with
    `train.label_smoothing`."""
    import keras

    if params.task == "three_class":
        return keras.losses.CategoricalCrossentropy(label_smoothing=params.train.label_smoothing)
    return keras.losses.BinaryCrossentropy(label_smoothing=params.train.label_smoothing)


AVERAGE_FILE = "weight_average.npz"  # in the backup folder: the average and its epoch


def ema_callbacks(momentum: float, backup_dir: Path
                  ) -> tuple[keras.callbacks.Callback, keras.callbacks.Callback,
                             keras.callbacks.Callback]:
    """(WeightAverage, RawWeightsBack, SaveAverage). In fit's callback list: WeightAverage
    anywhere; RawWeightsBack after every callback that should see the average and before
    BackupAndRestore (which must save the raw weights training continues from); SaveAverage
    after BackupAndRestore."""
    import keras
    import numpy as np

    state: dict[str, Any] = {"average": None, "raw": None}

    def averaged(model: keras.Model) -> list[Any]:
        """The float weights: trainable ones and BatchNorm moving statistics."""
        return [w for w in model.weights if "float" in str(w.dtype)]

    def assign(variables: list[Any], values: list[Any]) -> None:
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    class WeightAverage(keras.callbacks.Callback):
        """Keeps the average (updated per step); swaps it in for fit's validation."""

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            if state["average"] is not None:
                return
            # First epoch of this fit (after BackupAndRestore restored a resumed run's weights).
            weights = averaged(self.model)
            saved = backup_dir / AVERAGE_FILE
            start = [np.array(w) for w in weights]
            if epoch > 0 and saved.is_file():
                with np.load(saved) as f:
                    done = int(f["epoch"])
                    if done != epoch:
                        log.warning("the weight average in %s is from epoch %d, training resumes "
                                    "after epoch %d: continuing from that average", saved, done,
                                    epoch)
                    start = [f[f"w{i}"] for i in range(len(weights))]
            elif epoch > 0:
                log.warning("no weight average in %s: the average restarts from the weights of "
                            "epoch %d", backup_dir, epoch)
            state["average"] = [keras.Variable(v, trainable=False, dtype=v.dtype)
                                for v in start]

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if "update" not in state:
                import tensorflow as tf  # the train stage runs on TensorFlow (tf.distribute)

                pairs = list(zip(state["average"], averaged(self.model), strict=True))

                # One compiled graph: ~600 eager assign ops per step (DenseNet121) would cost
                # a noticeable share of a CPU step.
                @tf.function
                def update() -> None:
                    for avg, w in pairs:
                        avg.assign(momentum * avg + (1.0 - momentum) * tf.cast(w, avg.dtype))

                state["update"] = update
            state["update"]()

        def on_test_begin(self, logs: dict | None = None) -> None:
            if state["average"] is None or state["raw"] is not None:
                return
            state["raw"] = [np.array(w) for w in averaged(self.model)]
            assign(averaged(self.model), state["average"])

        def on_train_end(self, logs: dict | None = None) -> None:
            if state["average"] is not None:
                assign(averaged(self.model), state["average"])  # the model ends with the average

    class RawWeightsBack(keras.callbacks.Callback):
        """At the epoch's end, after the callbacks before it: the raw weights back."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if state["raw"] is not None:
                assign(averaged(self.model), state["raw"])
                state["raw"] = None

    class SaveAverage(keras.callbacks.Callback):
        """After BackupAndRestore: the average of this epoch, written then renamed."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            tmp = backup_dir / f".{AVERAGE_FILE}.tmp.npz"
            np.savez(tmp, epoch=epoch + 1,
                     **{f"w{i}": np.array(v) for i, v in enumerate(state["average"])})
            os.replace(tmp, backup_dir / AVERAGE_FILE)

    return WeightAverage(), RawWeightsBack(), SaveAverage()


def load_average(model: keras.Model, backup_dir: Path) -> bool:
    """Put the saved weight average (weight_average.npz) into `model`; False if there is none.
    For a run whose fit finished in an earlier attempt (only saving and logging remain)."""
    import numpy as np

    saved = backup_dir / AVERAGE_FILE
    if not saved.is_file():
        return False
    with np.load(saved) as f:
        floats = [w for w in model.weights if "float" in str(w.dtype)]
        for i, variable in enumerate(floats):
            variable.assign(f[f"w{i}"])
    return True
