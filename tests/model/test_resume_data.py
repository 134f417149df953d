"""A resumed training is fed the epochs it resumes at. Keras' BackupAndRestore resumes the epoch
count, but `fit` reads the data from the start of whatever dataset it is given: the train stage
must build that dataset from the resumed epoch on, or epoch n trains on epoch 0's order and
augmentations again. The kill-and-resume test (test_train.py) checks logs and history only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.trainkit import make_split, write_params


class Interrupted(Exception):
    """Stands for the kill: raised after an epoch's backup is written."""


def test_resumed_training_is_fed_the_resumed_epochs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: train.run stopped after epoch 1 of 2 (its backup written), then train.run
    again: the first batch `fit` receives is epoch 1's, not epoch 0's. The network is a
    one-layer Keras model (the data path is under test, not the DenseNet: ~10x faster)."""
    import keras

    from pneumonia.model import train
    from pneumonia.model.inputs import read_split, subset_rows
    from pneumonia.params import load_params
    from tests.synthkit import brightness_model

    monkeypatch.setattr(train, "build_model", lambda model, size, weights, *_: brightness_model(size))

    make_split(tmp_path)
    write_params(tmp_path, train__epochs=2)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resume")
    params = load_params()
    fed: list[np.ndarray] = []
    real_fit = keras.Model.fit

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            raise Interrupted  # after the train stage's own callbacks (the backup) ran

    def spy_fit(self: keras.Model, x: Any, *args: Any, **kwargs: Any) -> Any:
        fed.append(next(iter(x))[0].numpy())
        if len(fed) == 2:
            raise Interrupted  # the resumed run's data is all this test needs
        kwargs["callbacks"] = [*kwargs["callbacks"], StopAfterFirstEpoch()]
        return real_fit(self, x, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", spy_fit)
    for _ in range(2):
        with pytest.raises(Interrupted):
            train.run(params)

    rows = subset_rows(read_split(), "train")
    batch = params.train.batch_size
    epoch0 = next(iter(train.train_dataset(rows, params, batch)))[0].numpy()
    epoch1 = next(iter(train.train_dataset(rows, params, batch, first_epoch=1)))[0].numpy()
    assert epoch0.tobytes() != epoch1.tobytes()
    assert fed[0].tobytes() == epoch0.tobytes()  # the first run: epoch 0
    assert fed[1].tobytes() == epoch1.tobytes()  # resumed after epoch 1: epoch 1's data
