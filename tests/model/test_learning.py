"""Slow, real training runs on the bundled sample, as DVC runs the stages (subprocesses):

- training learns: validation loss falls and the model beats the majority baseline on the
  sample's test images;
- `train.deterministic: true`: the same seeded run, twice, gives identical weights, history and
  predictions.

`make test-slow` (or `pytest -m slow tests/model/test_learning.py`): ~3.5 min on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.trainkit import make_split, run_stage, write_params

# From random init (no downloads): DenseNet121, every layer trainable, 48-px images, batch 4.
# Small batches matter: BatchNormalization's moving statistics (momentum 0.99) need a few
# hundred steps before inference-mode predictions stop being one constant; 144 images / 4 x 15
# epochs = 540 steps. Measured on 2 cores: ~2 min; val loss 0.80 -> 0.18, test accuracy 0.76
# (seed 1), the majority baseline being 62 / 104 = 0.60.
LEARNS = {
    "lr": 1e-3,
    "data__image_size": 48,
    "model__trainable_layers": 1000,
    "model__dense_units": 32,
    "train__epochs": 15,
    "train__batch_size": 4,
    "train__seed": 1,
}


@pytest.mark.slow
def test_training_learns_on_the_sample(tmp_path: Path) -> None:
    make_split(tmp_path, size=48)
    write_params(tmp_path, **LEARNS)
    train = run_stage(tmp_path, "train", timeout=1200)  # ~2 min idle; 10 min seen contended
    assert train.returncode == 0, train.stderr[-3000:]
    evaluate = run_stage(tmp_path, "evaluate", timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]

    history = pd.read_csv(tmp_path / "metrics/train_history.csv")
    assert len(history) == 15
    first, best = history["val_loss"].iloc[0], history["val_loss"].min()
    assert best < 0.7 * first, history.to_string()  # validation loss falls
    ev = json.loads((tmp_path / "metrics/details/evaluate.json").read_text())
    majority = max(ev["NORMAL_support"], ev["PNEUMONIA_support"]) / ev["n_test"]
    assert ev["accuracy"] >= majority + 0.05, (ev["accuracy"], majority)
    assert ev["roc_auc"] > 0.7


def _model_outputs(root: Path) -> tuple[list[np.ndarray], np.ndarray]:
    import keras

    model = keras.saving.load_model(root / "models/model.keras")
    from PIL import Image

    split = pd.read_csv(root / "data/split.csv", keep_default_na=False)
    test = split[split.subset == "test"]
    x = np.stack([np.asarray(Image.open(root / p), "float32") for p in test.path])[..., None]
    return model.get_weights(), model.predict(x, verbose=0)


@pytest.mark.slow
def test_deterministic_training_repeats_exactly(tmp_path: Path) -> None:
    """Two runs of the same seeded configuration with train.deterministic: true, in separate
    processes and folders: byte-identical weights, per-epoch history and predictions."""
    runs = []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        make_split(root)
        write_params(root, train__epochs=2, train__deterministic=True)
        proc = run_stage(root, "train", timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "op determinism on" in proc.stderr
        runs.append(root)
    (wa, pa), (wb, pb) = (_model_outputs(r) for r in runs)
    assert len(wa) == len(wb) and all(np.array_equal(a, b) for a, b in zip(wa, wb, strict=True))
    assert np.array_equal(pa, pb)
    ha, hb = (pd.read_csv(r / "metrics/train_history.csv") for r in runs)
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
