"""Synthetic X-ray-like data with a known signal, for tests that need a model to be right.

PNEUMONIA images carry a bright square somewhere inside the top-left quadrant; NORMAL images are
noise only. `write_project` writes them as PNGs with a data/split.csv in the split stage's
columns (train/val/test, one patient per image), so the real stages and the model code run on
them. `brightness_model` is a hand-made classifier on mean brightness (no backbone): right on
every image, or (inverted) wrong on every image.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic_image(rng: np.random.Generator, size: int, positive: bool) -> np.ndarray:
    img = rng.normal(100, 20, (size, size)).clip(0, 255)
    if positive:
        side = size // 4
        half = size // 2
        y, x = rng.integers(0, half - side + 1, 2)
        img[y:y + side, x:x + side] = 230
    return img.astype(np.uint8)


def write_project(root: Path, size: int = 32, n: dict[str, int] | None = None,
                  seed: int = 0) -> pd.DataFrame:
    """root/data/images/*.png + root/data/split.csv; n = images per subset (half positive)."""
    from PIL import Image

    n = n or {"train": 96, "val": 32, "test": 48}
    rng = np.random.default_rng(seed)
    images = root / "data" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for subset, count in n.items():
        for i in range(count):
            positive = i % 2 == 1
            image_id = f"{subset}-{i:04d}"
            path = images / f"{image_id}.png"
            Image.fromarray(synthetic_image(rng, size, positive), "L").save(path)
            rows.append({"image_id": image_id, "path": path.relative_to(root).as_posix(),
                         "label": "PNEUMONIA" if positive else "NORMAL",
                         "class": "bacteria" if positive else "normal",
                         "patient_id": f"p{subset}{i}", "subset": subset,
                         "source_image_id": ""})  # originals (split.csv's contract)
    df = pd.DataFrame(rows)
    df.to_csv(root / "data" / "split.csv", index=False)
    # data/manifest.csv as ingest writes it (evaluate reads it for the leak-free test subset):
    # ingest knows only the dataset's train and test folders; split made val out of train.
    manifest = df.assign(split=df["subset"].replace({"val": "train"}),
                         sha256=[hashlib.sha256((root / p).read_bytes()).hexdigest()
                                 for p in df["path"]])
    manifest[["image_id", "path", "label", "class", "patient_id", "split", "sha256"]].to_csv(
        root / "data" / "manifest.csv", index=False)
    return df


def brightness_model(size: int, sign: float = 1.0, constant: float | None = None):
    """P(PNEUMONIA) = sigmoid(sign * (mean pixel - 104)): the square raises the mean by ~8.
    `constant`: the same output (this probability) for every image."""
    import keras

    inp = keras.Input((size, size, 1), name="xray")
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(1, activation="sigmoid", name="pneumonia")(x)
    model = keras.Model(inp, out)
    if constant is None:
        model.get_layer("pneumonia").set_weights([np.array([[sign]]), np.array([-104.0 * sign])])
    else:
        logit = float(np.log(constant / (1 - constant)))
        model.get_layer("pneumonia").set_weights([np.zeros((1, 1)), np.array([logit])])
    return model
