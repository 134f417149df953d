"""Input pipeline: data/split.csv rows -> batched (image, label) tf.data datasets.

The PNGs were decoded, converted to 8-bit grayscale and resized once by the ingest stage, so
here each epoch only reads and decodes small PNGs. Decoded images are cached as uint8 (before
augmentation, so every epoch sees fresh augmentations). Online augmentation (training only)
uses Keras preprocessing layers, the modern replacement for the legacy ImageDataGenerator the
paper used: rotation, zoom, shift, brightness — never a flip (a mirrored chest X-ray puts the
heart on the wrong side, which no real test image shows).

tf.data is TF-only; it is confined to this module (the input edge). The augmentation layers are
plain Keras layers.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from stages.config import LABELS, SPLIT_CSV, AugmentParams, PipelineError

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger("stages.dataset")

SPLIT_COLUMNS = ("image_id", "path", "label", "class", "patient_id", "subset", "source_image_id")
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}  # 0 = NORMAL, 1 = PNEUMONIA


def read_split(path: Path = SPLIT_CSV) -> pd.DataFrame:
    """Read and check data/split.csv (the split stage's output)."""
    if not path.is_file():
        raise PipelineError(f"{path} not found. Run `dvc repro` to build it (split stage).")
    df = pd.read_csv(path, dtype={"image_id": str, "patient_id": str, "source_image_id": str})
    missing = [c for c in SPLIT_COLUMNS if c not in df.columns]
    if missing:
        raise PipelineError(
            f"{path} lacks column(s) {', '.join(missing)}: it was written by an older split "
            "stage. Run `dvc repro` to rebuild it."
        )
    bad = sorted(set(df["label"]) - set(LABELS))
    if bad:
        raise PipelineError(f"{path}: unknown label(s) {bad}; expected {LABELS}. Run `dvc repro`.")
    return df


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (dataset digests, resume keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def subset_rows(df: pd.DataFrame, subset: str) -> pd.DataFrame:
    """Rows of one subset (train/val/test), sorted by image_id so order never depends on the
    CSV writer; fails clearly when the subset is empty."""
    rows = df[df["subset"] == subset].sort_values("image_id").reset_index(drop=True)
    if rows.empty:
        raise PipelineError(
            f"{SPLIT_CSV} has no `{subset}` images. Check the split stage's output "
            "(metrics/split.json) and run `dvc repro`."
        )
    return rows


def labels_of(rows: pd.DataFrame) -> list[int]:
    """Model targets for split rows: 0 = NORMAL, 1 = PNEUMONIA."""
    return [LABEL_INDEX[label] for label in rows["label"]]


def check_images(rows: pd.DataFrame, image_size: int) -> None:
    """Fail before training if an image is missing or was ingested at another size."""
    from PIL import Image

    for p in rows["path"]:
        if not Path(p).is_file():
            raise PipelineError(
                f"image {p} (listed in {SPLIT_CSV}) does not exist. Run `dvc repro` to "
                "re-create the images (ingest and balance stages), or `dvc pull` if they are in a "
                "DVC remote."
            )
    # PNG headers are cheap to read; checking one is enough, all come from the same stage run.
    first = rows["path"].iloc[0]
    with Image.open(first) as im:
        size = im.size
    if size != (image_size, image_size):
        raise PipelineError(
            f"{first} is {size[0]}x{size[1]} px but `data.image_size` is {image_size}. The images "
            "were ingested with another size: run `dvc repro` to re-ingest them."
        )


def build_augmentation(aug: AugmentParams, seed: int) -> keras.Sequential:
    """Online augmentation as Keras preprocessing layers on a (B, S, S, 1) float batch in 0..255.

    Ranges of 0 leave their layer out, so all-zero ranges are the identity. No RandomFlip, ever.
    fill_mode "nearest" matches the ImageDataGenerator default the paper used.
    """
    import keras
    from keras import layers

    # float32 even under a mixed_float16 global policy: these run in tf.data on the CPU, and
    # float16 cannot hold 0..255 pixel values with sub-level precision.
    f32 = "float32"
    stack: list[keras.layers.Layer] = []
    if aug.rotation > 0:
        # RandomRotation's factor is a fraction of a full turn.
        stack.append(
            layers.RandomRotation(aug.rotation / 360.0, fill_mode="nearest", seed=seed, dtype=f32)
        )
    if aug.zoom > 0:
        stack.append(layers.RandomZoom(aug.zoom, fill_mode="nearest", seed=seed + 1, dtype=f32))
    if aug.shift > 0:
        stack.append(
            layers.RandomTranslation(
                aug.shift, aug.shift, fill_mode="nearest", seed=seed + 2, dtype=f32
            )
        )
    if aug.brightness > 0:
        stack.append(
            layers.RandomBrightness(
                aug.brightness, value_range=(0.0, 255.0), seed=seed + 3, dtype=f32
            )
        )
    # An empty Sequential cannot be called: all-zero ranges give an explicit Identity instead.
    identity = [layers.Identity(name="no_augmentation", dtype=f32)]
    return keras.Sequential(stack or identity, name="augmentation")


def make_dataset(
    rows: pd.DataFrame,
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    augment: AugmentParams | None = None,
) -> tf.data.Dataset:
    """Batched (float32 image in 0..255, float32 label) dataset for split rows.

    training=True: seeded shuffle, reshuffled each epoch, then augmentation (if `augment`).
    Otherwise the order is the rows' order (predictions line up with `rows`).
    """
    import keras
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    paths = tf.constant(rows["path"].tolist())
    # (N, 1) targets, the shape of the model's single sigmoid output.
    labels = tf.constant([[y] for y in labels_of(rows)], dtype=tf.float32)

    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint8)
        image = tf.ensure_shape(image, (image_size, image_size, 1))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(decode, num_parallel_calls=autotune, deterministic=True)
    ds = ds.cache()  # uint8, ~50 KB per 224-px image: the whole train set fits in memory
    if training:
        ds = ds.shuffle(len(rows), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=autotune)
    if training and augment is not None:
        pipeline = build_augmentation(augment, seed)
        if not isinstance(pipeline.layers[0], keras.layers.Identity):
            ds = ds.map(lambda x, y: (pipeline(x, training=True), y), num_parallel_calls=autotune)
    return ds.prefetch(autotune)
