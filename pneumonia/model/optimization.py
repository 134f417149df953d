"""How the weights are fitted: the optimizer, its learning-rate schedule, weight averaging, loss.

- `train.lr_schedule: plateau` (the paper): Adam at a constant `lr`, cut by ReduceLROnPlateau
  when val_loss stalls. `cosine`: a per-step schedule — linear warm-up from 0 over
  `train.warmup_epochs`, then cosine decay to 0 at `train.epochs` (keras CosineDecay).
- `train.ema_momentum > 0`: Adam keeps an exponential moving average of the trainable weights
  (Keras' own `use_ema`; the averages are optimizer variables, so BackupAndRestore keeps them and
  a resumed run continues the same average). `EmaSwap` puts the average into the model for each
  validation pass and keeps it there through the epoch-end callbacks (EarlyStopping,
  the best-weights checkpoint, the CSV history), then `EmaRestore` puts the raw weights back
  before BackupAndRestore saves them: what is validated, checkpointed and saved is the average;
  what keeps training is the raw weights. At the end of `fit`, Keras' own
  `finalize_variable_values` leaves the average in the model.
- `train.label_smoothing`: binary cross-entropy against y (1 - s) + s / 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pneumonia.params import Params

if TYPE_CHECKING:
    import keras


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
    """Adam at `learning_rate(...)`, with an EMA of the weights when `train.ema_momentum > 0`."""
    import keras

    ema = params.train.ema_momentum
    return keras.optimizers.Adam(
        learning_rate=learning_rate(params, steps_per_epoch),
        use_ema=ema > 0,
        ema_momentum=ema if ema > 0 else 0.99,  # Keras' default; unused when use_ema is False
    )


def make_loss(params: Params) -> keras.losses.Loss:
    """Binary cross-entropy on the sigmoid output (the paper states no loss: our choice)."""
    import keras

    return keras.losses.BinaryCrossentropy(label_smoothing=params.train.label_smoothing)


def ema_callbacks() -> tuple[keras.callbacks.Callback, keras.callbacks.Callback]:
    """(EmaSwap, EmaRestore): EmaSwap anywhere in fit's callbacks, EmaRestore after every
    callback that should see the average and before BackupAndRestore (which must save the raw
    weights that training continues from)."""
    import keras

    raw: list[Any] = []  # the raw weights while the average is in the model

    class EmaSwap(keras.callbacks.Callback):
        """fit's validation pass (and the epoch-end callbacks after it) see the average."""

        def on_test_begin(self, logs: dict | None = None) -> None:
            opt = self.model.optimizer
            # Under mixed_float16 Keras wraps Adam in a LossScaleOptimizer, which delegates
            # finalize_variable_values to it but has no use_ema of its own.
            inner = getattr(opt, "inner_optimizer", opt)
            if raw or not getattr(inner, "use_ema", False) or not opt.built:
                return
            variables = self.model.trainable_variables
            raw.extend(v.numpy() for v in variables)
            opt.finalize_variable_values(variables)  # with use_ema: variables <- their average

    class EmaRestore(keras.callbacks.Callback):
        """At the epoch's end, after the callbacks before it: the raw weights back."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if not raw:
                return
            for variable, value in zip(self.model.trainable_variables, raw, strict=True):
                variable.assign(value)
            raw.clear()

    return EmaSwap(), EmaRestore()
