"""The CPU recipe's levers reach the model: the learning-rate schedule, the weight average (EMA),
label smoothing, keep_weights, the new backbones (with Grad-CAM), mixed bfloat16 — and their
defaults are the paper's configuration."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pneumonia.params import load_params, parse_params
from tests.trainkit import REPO, TINY_PARAMS


def _params(model: dict[str, Any] | None = None, **train: Any) -> Any:
    raw = json.loads(json.dumps(TINY_PARAMS))
    raw["train"].update(train)
    raw["model"].update(model or {})
    return parse_params(raw)


def test_defaults_are_the_papers_configuration() -> None:
    t = load_params(REPO / "params.yaml").train
    assert (t.lr_schedule, t.warmup_epochs, t.ema_momentum, t.label_smoothing, t.keep_weights) == (
        "plateau", 0, 0.0, 0.0, "best")


def test_plateau_keeps_a_constant_lr_and_reduce_on_plateau(tmp_path: Path) -> None:
    from pneumonia.model.optimization import learning_rate
    from pneumonia.model.train import training_callbacks

    p = _params()
    assert learning_rate(p, 10) == p.lr
    names = [type(cb).__name__ for cb in training_callbacks(p, tmp_path, None)]
    assert "ReduceLROnPlateau" in names and "EmaSwap" not in names


def test_cosine_schedule_lr_at_each_epoch(tmp_path: Path) -> None:
    """Linear warm-up to lr over warmup_epochs, then cosine decay to 0 at train.epochs."""
    from pneumonia.model.optimization import learning_rate
    from pneumonia.model.train import training_callbacks

    p = _params(epochs=10, lr_schedule="cosine", warmup_epochs=2)
    steps = 7
    schedule = learning_rate(p, steps)
    for epoch in range(11):
        lr = float(schedule(epoch * steps))
        if epoch <= 2:
            expected = p.lr * epoch / 2
        else:
            expected = p.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 2) / 8))
        assert lr == pytest.approx(expected, rel=1e-5, abs=1e-12), epoch
    names = [type(cb).__name__ for cb in training_callbacks(p, tmp_path, None)]
    assert "ReduceLROnPlateau" not in names  # it cannot change a scheduled rate


def test_label_smoothing_and_keep_weights_reach_loss_and_callbacks(tmp_path: Path) -> None:
    import keras

    from pneumonia.model.train import compile_model, training_callbacks

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    compile_model(model, _params(label_smoothing=0.1))
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)
    assert model.loss.label_smoothing == pytest.approx(0.1)
    for keep, restore in (("best", True), ("last", False)):
        cbs = {type(c).__name__: c for c in training_callbacks(_params(keep_weights=keep),
                                                               tmp_path, None)}
        assert cbs["EarlyStopping"].restore_best_weights is restore


def _xy(n: int, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype("float32")
    x = rng.uniform(0, 255, (n, size, size, 1)).astype("float32")
    x[y == 1, 4:12, 4:12] += 60  # a located signal, so the loss moves
    return np.clip(x, 0, 255), y


def test_ema_average_is_validated_checkpointed_and_kept(tmp_path: Path) -> None:
    """With train.ema_momentum, fit's validation and the best-epoch checkpoint use the moving
    average of every weight (BatchNorm statistics included), training continues from the raw
    weights, the average is saved for a resume, and the model ends with the average."""
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.model.optimization import AVERAGE_FILE
    from pneumonia.model.train import compile_model, training_callbacks

    keras.utils.set_random_seed(0)
    p = _params({"backbone": "small_cnn", "dense_units": 8}, ema_momentum=0.9, epochs=3,
                keep_weights="last", early_stopping_patience=50)
    model = build_model(p.model, 16, None)
    compile_model(model, p, steps_per_epoch=4)
    x, y = _xy(64)
    vx, vy = _xy(32, seed=1)
    callbacks = [c for c in training_callbacks(p, tmp_path, None)
                 if type(c).__name__ not in ("EpochMetrics",)]
    names = [type(c).__name__ for c in callbacks]
    assert names.index("RawWeightsBack") < names.index("BackupAndRestore") < names.index(
        "SaveAverage")
    raw_at_epoch_end: list[list[np.ndarray]] = []

    class Spy(keras.callbacks.Callback):  # after RawWeightsBack: what training continues from
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            raw_at_epoch_end.append([np.array(v) for v in self.model.weights])

    history = model.fit(x, y, batch_size=16, epochs=3, validation_data=(vx, vy),
                        callbacks=[*callbacks, Spy()], verbose=0)
    final = [np.array(v) for v in model.weights]
    with np.load(tmp_path / AVERAGE_FILE) as f:
        assert int(f["epoch"]) == 3
        saved = [f[f"w{i}"] for i in range(len(final))]
    assert all(np.array_equal(a, b) for a, b in zip(saved, final, strict=True))
    # BatchNorm moving statistics are averaged too (they are not trainable).
    bn = [i for i, v in enumerate(model.weights) if "moving_mean" in v.path]
    assert bn and not np.allclose(final[bn[0]], raw_at_epoch_end[-1][bn[0]])
    # The last epoch's val_loss was computed on the average (nothing changed it since) ...
    assert model.evaluate(vx, vy, verbose=0)[0] == pytest.approx(history.history["val_loss"][-1],
                                                                rel=1e-5)
    # ... while training continued from raw weights, which differ from the average.
    assert not all(np.allclose(a, b) for a, b in zip(raw_at_epoch_end[-1], final, strict=True))
    # The best-epoch checkpoint holds an average too, not the raw weights of that epoch.
    best = keras.models.clone_model(model)
    best.compile(optimizer=keras.optimizers.Adam(), loss=model.loss)
    best.optimizer.build(best.trainable_variables)  # the checkpoint holds Adam's state too
    best.load_weights(tmp_path / "best.weights.h5")
    best_epoch = int(np.argmin(history.history["val_loss"]))
    assert not all(np.allclose(np.array(a), b) for a, b in zip(
        best.weights, raw_at_epoch_end[best_epoch], strict=True))
    assert best.evaluate(vx, vy, verbose=0)[0] == pytest.approx(
        min(history.history["val_loss"]), rel=1e-5)


def test_ema_average_continues_after_a_resume(tmp_path: Path) -> None:
    """A run cut after epoch 2 and resumed ends with the same average as an uncut run."""
    import keras

    from pneumonia.model.network import build_model
    from pneumonia.model.train import compile_model, training_callbacks

    # No dropout: its random masks are not part of the backup, the average is what is tested.
    p = _params({"backbone": "small_cnn", "dense_units": 8, "dropout": 0.0}, ema_momentum=0.8,
                epochs=4, keep_weights="last", early_stopping_patience=50)
    x, y = _xy(64)
    vx, vy = _xy(32, seed=1)

    def fit(folder: Path, epochs: int) -> list[np.ndarray]:
        keras.utils.set_random_seed(0)
        model = build_model(p.model, 16, None)
        compile_model(model, p, steps_per_epoch=4)
        callbacks = [c for c in training_callbacks(p, folder, None)
                     if type(c).__name__ not in ("EpochMetrics",)]
        model.fit(x, y, batch_size=16, epochs=epochs, validation_data=(vx, vy),
                  callbacks=callbacks, verbose=0, shuffle=False)
        return [np.array(v) for v in model.weights]

    uncut = fit(tmp_path / "uncut", 4)
    fit(tmp_path / "cut", 2)  # "killed" after epoch 2: the backup stays
    resumed = fit(tmp_path / "cut", 4)
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(uncut, resumed, strict=True))


# The two keras.applications networks take about a minute each on 2 cores: slow tests.
@pytest.mark.parametrize("backbone", [
    "small_cnn",
    pytest.param("mobilenetv3small", marks=pytest.mark.slow),
    pytest.param("efficientnetb0", marks=pytest.mark.slow),
])
def test_cpu_backbones_train_and_explain(backbone: str) -> None:
    """Each new backbone builds from random weights, trains a step and gives a Grad-CAM map."""
    from pneumonia.inference.gradcam import CamModel
    from pneumonia.model.network import build_model
    from pneumonia.model.train import compile_model

    p = _params({"backbone": backbone, "dense_units": 4, "trainable_layers": 1000})
    model = build_model(p.model, 64, None)
    compile_model(model, p)
    x, y = _xy(8, size=64)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    heat, prob = CamModel(model)(x[:2])
    assert heat.shape[:3] == (2, 64, 64) and np.isfinite(heat).all()
    assert prob.shape == (2,) and ((prob > 0) & (prob < 1)).all()


def test_small_cnn_has_no_pretrained_weights() -> None:
    from pneumonia.params import ParamsError

    raw = json.loads(json.dumps(TINY_PARAMS))
    raw["model"].update(backbone="small_cnn", weights="imagenet")
    with pytest.raises(ParamsError, match="small_cnn` has no pretrained weights"):
        parse_params(raw)


def test_bfloat16_sets_the_mixed_bfloat16_policy() -> None:
    code = (
        "import json, sys; from pneumonia.params import parse_params;"
        "from pneumonia.model.devices import select_device;"
        f"raw = {json.dumps(TINY_PARAMS)!r};"
        "raw = json.loads(raw); raw['train']['mixed_precision'] = 'bfloat16';"
        "_, _, precision, _ = select_device(parse_params(raw));"
        "import keras; print(precision, keras.mixed_precision.global_policy().name)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin"})
    assert out.stdout.split() == ["mixed_bfloat16", "mixed_bfloat16"]


@pytest.mark.gpu
def test_a_gpu_is_used_with_mixed_float16_when_visible() -> None:
    """On a GPU machine the train stage trains on the GPU, in mixed_float16 by default
    (`train.mixed_precision: auto`), never on the CPU."""
    code = (
        "import json; from pneumonia.params import parse_params;"
        "from pneumonia.model.devices import select_device;"
        f"raw = json.loads({json.dumps(TINY_PARAMS)!r});"
        "_, device, precision, replicas = select_device(parse_params(raw));"
        "print(json.dumps([device, precision, replicas]))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    device, precision, replicas = json.loads(out.stdout.strip().splitlines()[-1])
    assert "GPU" in device and precision == "mixed_float16" and replicas >= 1
