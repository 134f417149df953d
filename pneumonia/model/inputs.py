"""Input pipeline: data/split.csv rows -> batched (image, label) tf.data datasets.

The PNGs were decoded, converted to 8-bit grayscale and resized once by the ingest stage, so
here each epoch only reads and decodes small PNGs. Decoded images are cached as uint8 (before
augmentation, so every epoch sees fresh augmentations). Online augmentation (training only)
replaces the legacy ImageDataGenerator the paper used with one Keras layer: rotation, zoom and
shift composed into a single affine resampling per image, then brightness — never a flip (a
mirrored chest X-ray puts the heart on the wrong side, which no real test image shows). Its
random numbers, and each epoch's order, are drawn statelessly from (train.seed, epoch, batch
index): the same seed gives byte-identical batches, run after run, on any number of threads.

tf.data is TF-only; it is confined to this module (the input edge). The augmentation layer is a
plain `keras.layers.Layer` on public `keras.ops` / `keras.random` (TensorFlow ops under the
TensorFlow backend this project trains with) and `tf.random` for the stateless draws: no private
Keras class (Keras' private `src` package may move in any Keras release; tests/test_public_api.py).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.files import read_csv_checked
from pneumonia.params import AugmentParams
from pneumonia.paths import LABELS, SPLIT_CSV

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)

SPLIT_COLUMNS = ("image_id", "path", "label", "class", "patient_id", "subset", "source_image_id")
LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}  # 0 = NORMAL, 1 = PNEUMONIA


def read_split(path: Path = SPLIT_CSV) -> pd.DataFrame:
    """Read and check data/split.csv (the split stage's output)."""
    if not path.is_file():
        raise PipelineError(f"{path} not found. Run `dvc repro` to build it (split stage).")
    df = read_csv_checked(
        path, str(path), SPLIT_COLUMNS,
        dtype={"image_id": str, "patient_id": str, "source_image_id": str},
        damaged="it is damaged. Rebuild it with `dvc checkout data/split.csv`, or "
        "`dvc repro --force split`.",
        outdated="it was written by an older split stage. Run `dvc repro` to rebuild it.")
    bad = sorted(set(df["label"]) - set(LABELS))
    if bad:
        raise PipelineError(f"{path}: unknown label(s) {bad}; expected {LABELS}. Run `dvc repro`.")
    return df


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


@functools.cache
def affine_layer_class() -> type:
    """The augmentation layer class, defined on first use (keras is imported lazily)."""
    import keras
    from keras import ops

    # A plain public Layer, not Keras' private DataLayer base: DataLayer only switches
    # its ops to TensorFlow inside a tf.data graph when Keras runs another backend. This project
    # always runs the TensorFlow backend (tf.data feeds the model), where keras.ops are TF ops.
    class RandomAffineBrightness(keras.layers.Layer):
        """Random rotation, zoom and shift composed into ONE bilinear affine resampling per image,
        then a random brightness change; on a (B, S, S, C) or (S, S, C) batch in 0..255.

        The ranges mean what the paper's ImageDataGenerator / the Keras layers mean (each sampled
        uniformly, per image): rotation -> angle in [-rotation, rotation] degrees; zoom -> scale in
        [1 - zoom, 1 + zoom] (> 1 zooms out), drawn independently for x and y when
        `zoom_independent` (ImageDataGenerator(zoom_range)), else one scale for both axes
        (RandomZoom); shift -> [-shift, shift] x width / height; brightness -> pixels x
        [1 - b, 1 + b] (`multiplicative`, ImageDataGenerator(brightness_range)) or
        + [-b, b] x 255 (`additive`, RandomBrightness), clipped to 0..255. Borders are filled
        with the nearest edge pixel. Never a flip.

        Random numbers: `call(images, seed=s)` with a (2,) int tensor draws them statelessly from
        `s` (the training dataset passes one derived from (train.seed, epoch, batch index), so an
        augmented batch never depends on thread timing or on earlier batches); without `seed`,
        from the layer's own seed generator.

        Chaining the Keras layers resamples the image once per layer (3 bilinear passes, 3 blurs);
        composing the affine maps first does it once, ~3x less work and one blur.
        """

        def __init__(self, rotation: float = 0.0, zoom: float = 0.0, shift: float = 0.0,
                     brightness: float = 0.0, brightness_mode: str = "multiplicative",
                     zoom_independent: bool = True, seed: int | None = None,
                     **kwargs: object) -> None:
            kwargs.setdefault("dtype", "float32")  # not float16 under a mixed-precision policy
            super().__init__(**kwargs)
            self.rotation, self.zoom = float(rotation), float(zoom)
            self.shift, self.brightness = float(shift), float(brightness)
            if brightness_mode not in ("multiplicative", "additive"):
                raise ValueError(f"brightness_mode {brightness_mode!r}")
            self.brightness_mode, self.zoom_independent = brightness_mode, bool(zoom_independent)
            self.seed = seed
            self.generator = keras.random.SeedGenerator(seed)

        def get_config(self) -> dict:
            return {**super().get_config(), "rotation": self.rotation, "zoom": self.zoom,
                    "shift": self.shift, "brightness": self.brightness,
                    "brightness_mode": self.brightness_mode,
                    "zoom_independent": self.zoom_independent, "seed": self.seed}

        def compute_output_shape(self, input_shape: tuple) -> tuple:
            return input_shape

        def _uniform(self, seed: object) -> object:
            """uniform(shape, lo, hi, k): the k-th draw of this call. A tensor `seed` gives
            stateless draws (k folded into it); a SeedGenerator, stateful ones."""
            if isinstance(seed, keras.random.SeedGenerator):
                return lambda shape, lo, hi, k: keras.random.uniform(shape, lo, hi,
                                                                     dtype="float32", seed=seed)
            import tensorflow as tf  # stateless draws: tf.data is TensorFlow's (module docstring)

            base = tf.cast(seed, tf.int64)
            return lambda shape, lo, hi, k: tf.random.stateless_uniform(
                shape, tf.random.experimental.stateless_fold_in(base, k), lo, hi, tf.float32)

        def transforms(self, batch: int, height: int, width: int, seed: object) -> object:
            """(batch, 8) projective transforms [a0, a1, a2, b0, b1, b2, 0, 0]: output pixel
            (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2). With c the image centre,
            d the shift and Z = diag(zx, zy), input = c + R(angle) Z (p - c - d): translate, zoom
            about the centre, rotate about the centre, like the Keras layers in that order.
            `seed`: a SeedGenerator, or a (2,) int tensor for stateless draws."""
            uniform = self._uniform(seed)
            zeros = ops.zeros((batch,), dtype="float32")
            r = self.rotation * math.pi / 180.0
            angle = uniform((batch,), -r, r, 0) if self.rotation else zeros
            lo, hi = 1.0 - self.zoom, 1.0 + self.zoom
            zx = uniform((batch,), lo, hi, 1) if self.zoom else zeros + 1.0
            zy = (uniform((batch,), lo, hi, 2) if self.zoom_independent else zx) if self.zoom \
                else zeros + 1.0
            w, h = ops.cast(width, "float32"), ops.cast(height, "float32")
            dx = uniform((batch,), -self.shift, self.shift, 3) * w if self.shift else zeros
            dy = uniform((batch,), -self.shift, self.shift, 4) * h if self.shift else zeros
            cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
            cos, sin = ops.cos(angle), ops.sin(angle)
            a0, a1, b0, b1 = cos * zx, -sin * zy, sin * zx, cos * zy
            a2 = cx - (a0 * (cx + dx) + a1 * (cy + dy))
            b2 = cy - (b0 * (cx + dx) + b1 * (cy + dy))
            return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

        def brightness_factors(self, batch: int, seed: object) -> object:
            """(batch, 1, 1, 1) factors (multiplicative) or offsets in 0..255 units (additive)."""
            uniform = self._uniform(seed)
            if self.brightness_mode == "multiplicative":
                return uniform((batch, 1, 1, 1), 1.0 - self.brightness, 1.0 + self.brightness, 5)
            limit = self.brightness * 255.0
            return uniform((batch, 1, 1, 1), -limit, limit, 5)

        def call(self, images: object, training: bool = True, seed: object = None) -> object:
            images = ops.cast(images, self.compute_dtype)
            if not training:
                return images
            unbatched = len(images.shape) == 3
            if unbatched:
                images = ops.expand_dims(images, 0)
            shape = ops.shape(images)
            batch, height, width = shape[0], shape[1], shape[2]
            if seed is None:
                seed = self.generator
            if self.rotation or self.zoom or self.shift:
                images = ops.image.affine_transform(
                    images, self.transforms(batch, height, width, seed),
                    interpolation="bilinear", fill_mode="nearest",
                )
            if self.brightness:
                change = self.brightness_factors(batch, seed)
                images = images * change if self.brightness_mode == "multiplicative" \
                    else images + change
                images = ops.clip(images, 0.0, 255.0)
            return ops.squeeze(images, 0) if unbatched else images

    return RandomAffineBrightness


def build_augmentation(aug: AugmentParams, seed: int) -> keras.Sequential:
    """Online augmentation on a (B, S, S, 1) batch in 0..255 (uint8 or float): returns float32.

    One `RandomAffineBrightness` layer (rotation, zoom, shift as one affine resampling, then
    brightness). All-zero ranges give an explicit Identity. No flip, ever. Fill "nearest"
    matches the ImageDataGenerator default the paper used.
    """
    import keras
    from keras import layers

    if keras.backend.backend() != "tensorflow":
        # The layer's keras.ops run inside tf.data's graph: TensorFlow ops only.
        raise PipelineError(
            f"Keras runs the {keras.backend.backend()!r} backend (KERAS_BACKEND), but the "
            "training input pipeline is tf.data and needs the TensorFlow backend: unset "
            "KERAS_BACKEND or set it to `tensorflow`."
        )
    if not (aug.rotation or aug.zoom or aug.shift or aug.brightness):
        # An empty Sequential cannot be called: all-zero ranges give an explicit Identity.
        return keras.Sequential([layers.Identity(name="no_augmentation")], name="augmentation")
    layer = affine_layer_class()(aug.rotation, aug.zoom, aug.shift, aug.brightness,
                                  brightness_mode=aug.brightness_mode,
                                  zoom_independent=aug.zoom_independent, seed=seed,
                                  name="random_affine_brightness")
    return keras.Sequential([layer], name="augmentation")


def batch_seed(seed: int, epoch: object, batch: object) -> object:
    """The (2,) stateless seed of one training batch's augmentation: a function of
    (train.seed, epoch, batch index) only."""
    import tensorflow as tf

    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(batch, tf.int64))


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    """Batches per epoch (the last one may be smaller)."""
    return math.ceil(n_rows / batch_size)


def make_dataset(
    rows: pd.DataFrame,
    image_size: int,
    batch_size: int,
    *,
    training: bool,
    seed: int = 0,
    augment: AugmentParams | None = None,
    epochs: tuple[int, int] = (0, 1),
    targets: Any = None,
) -> tf.data.Dataset:
    """Batched (float32 image in 0..255, float32 label) dataset for split rows.

    training=True: the batches of epochs `epochs[0]` .. `epochs[1] - 1` one after the other
    (`steps_per_epoch` batches each; fit with steps_per_epoch). Each epoch's order and each
    batch's augmentation are drawn statelessly from (seed, epoch[, batch index]): two datasets
    built alike yield identical batches, and a run resumed at epoch k sees exactly the epochs
    an uninterrupted run would have. Otherwise one pass in the rows' order (predictions line up
    with `rows`). `targets`: (N, K) float targets instead of the 0/1 labels.
    """
    import keras
    import tensorflow as tf

    autotune = tf.data.AUTOTUNE
    paths = tf.constant(rows["path"].tolist())
    # (N, 1) targets, the shape of the model's single sigmoid output; or the caller's `targets`
    # (a three-class softmax's (N, 3) one-hot rows: pneumonia.model.tasks.targets).
    labels = tf.constant(targets if targets is not None else [[y] for y in labels_of(rows)],
                         dtype=tf.float32)

    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_png(tf.io.read_file(path), channels=1, dtype=tf.uint8)
        image = tf.ensure_shape(image, (image_size, image_size, 1))
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(decode, num_parallel_calls=autotune, deterministic=True)
    # uint8, ~50 KB per 224-px image: the whole train set fits in memory. One cache, filled on
    # the first pass and shared by every epoch below.
    ds = ds.cache()
    if not training:
        ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y),
                                      num_parallel_calls=autotune)
        return ds.prefetch(autotune)

    pipeline = build_augmentation(augment, seed) if augment is not None else None
    layer = None
    if pipeline is not None and not isinstance(pipeline.layers[0], keras.layers.Identity):
        layer = pipeline.layers[0]
    n = len(rows)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        # The epoch's order: a shuffle seeded from (seed, epoch), not from iterator state.
        order_seed = tf.random.stateless_uniform(
            [], tf.stack([tf.constant(seed, tf.int64), epoch]), 0, 2**31 - 1, tf.int64)
        batches = ds.shuffle(n, seed=order_seed, reshuffle_each_iteration=False).batch(batch_size)

        def augment_batch(i: tf.Tensor, xy: tuple) -> tuple[tf.Tensor, tf.Tensor]:
            x, y = xy
            if layer is None:
                return tf.cast(x, tf.float32), y
            # Whole batches at once: one vectorized resampling per batch; float32 out.
            return layer(x, training=True, seed=batch_seed(seed, epoch, i)), y

        return batches.enumerate().map(augment_batch, num_parallel_calls=autotune,
                                       deterministic=True)

    first, last = epochs
    out = tf.data.Dataset.range(first, last).flat_map(one_epoch)
    options = tf.data.Options()
    options.deterministic = True  # elements in order, whatever the threads do
    return out.with_options(options).prefetch(autotune)
