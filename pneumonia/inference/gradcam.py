"""Grad-CAM (Selvaraju et al. 2017): where in the X-ray the model's P(PNEUMONIA) comes from.

The classifier is `input -> preprocessing layers -> backbone (a nested keras.Model) -> head`
(pneumonia.model.network). The last convolutional feature map is the nested backbone's output
(include_top=False: DenseNet's final `relu`, ResNet50's `conv5_block3_out`); `CamModel` splits the
model there, takes the gradient of the sigmoid's input (the logit) with respect to that map,
averages it per channel (the channel weights), and the ReLU of the weighted sum of channels is the
heatmap, upsampled to the image (bilinear) and scaled to 0..1 by its maximum. The logit rather
than the probability: a saturated sigmoid would give vanishing gradients on confident images.

A three-class model (softmax over normal / bacteria / virus) has one heatmap per class: the
gradient of that class's pre-softmax score (Selvaraju et al.'s y^c), `target=` a class index;
`target="pneumonia"` takes the log-odds of the binary view, log(e^z_bacteria + e^z_virus) -
z_normal; the default is each image's most probable class.

`pneumonia explain IMAGE... --out DIR` (pneumonia.inference.explain) writes one overlay PNG per
image; evaluate writes overlays
of test errors and of a few correct cases (metrics/gradcam/, MLflow evaluate/gradcam/).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.errors import PipelineError
from pneumonia.inference.sources import to_input
from pneumonia.model.network import backbone_of
from pneumonia.paths import LABELS

log = logging.getLogger(__name__)


class CamModel:
    """A model built by `build_model`, split at the backbone's output for Grad-CAM."""

    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        try:
            self.backbone = backbone_of(model)
        except ValueError as exc:
            raise PipelineError(f"Grad-CAM: {exc}") from None
        if len(self.backbone.output.shape) != 4:
            raise PipelineError(
                f"Grad-CAM: backbone {self.backbone.name} outputs shape "
                f"{self.backbone.output.shape}, not a feature map (built with pooling?)")
        layers = [la for la in model.layers if not isinstance(la, keras.layers.InputLayer)]
        at = layers.index(self.backbone)
        self.before, self.after = layers[:at], layers[at + 1:]
        last = self.after[-1]
        self.sigmoid_head = (isinstance(last, keras.layers.Dense)
                             and last.activation is keras.activations.sigmoid)
        self.softmax_head = (isinstance(last, keras.layers.Dense)
                             and last.activation is keras.activations.softmax)

    @staticmethod
    def _call(layer: Any, x: Any) -> Any:
        import keras

        if isinstance(layer, keras.layers.Concatenate):  # gray_to_rgb: [x, x, x]
            return layer([x] * len(layer.input))
        return layer(x, training=False) if "training" in _call_args(layer) else layer(x)

    def __call__(self, x: np.ndarray,
                 target: int | str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps N x H x W in 0..1 at the input's size, P(PNEUMONIA) N). `target`: for a
        three-class model, the class whose heatmap (an index, "pneumonia" for the binary view,
        None for each image's most probable class); a one-output model has one heatmap."""
        import tensorflow as tf

        h = tf.convert_to_tensor(x, dtype=tf.float32)
        for layer in self.before:
            h = self._call(layer, h)
        with tf.GradientTape() as tape:
            feat = self.backbone(h, training=False)
            tape.watch(feat)
            y = feat
            for layer in self.after[:-1]:
                y = self._call(layer, y)
            last = self.after[-1]
            if self.sigmoid_head:  # the logit: W y + b
                score = tf.matmul(tf.cast(y, last.kernel.dtype), last.kernel) + last.bias
                prob = tf.sigmoid(score)
            elif self.softmax_head:  # per-class scores z = W y + b, before the softmax
                z = tf.matmul(tf.cast(y, last.kernel.dtype), last.kernel) + last.bias
                probs = tf.nn.softmax(z)
                prob = probs[:, 1] + probs[:, 2]
                if target == "pneumonia":
                    score = tf.reduce_logsumexp(z[:, 1:], axis=1) - z[:, 0]
                else:
                    k = tf.argmax(z, axis=1) if target is None \
                        else tf.fill([tf.shape(z)[0]], tf.cast(int(target), tf.int64))
                    score = tf.gather(z, k, axis=1, batch_dims=1)
            else:
                score = prob = self._call(last, y)
        grads = tape.gradient(score, feat)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * tf.cast(feat, weights.dtype), axis=-1))
        cam = tf.image.resize(cam[..., None], x.shape[1:3], method="bilinear")[..., 0].numpy()
        peak = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
        cam = np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0.0)
        return cam.astype(np.float32), np.asarray(prob, dtype=np.float64).reshape(-1)


def _call_args(layer: Any) -> tuple[str, ...]:
    import inspect

    try:
        return tuple(inspect.signature(layer.call).parameters)
    except (TypeError, ValueError):
        return ()


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4) -> Any:
    """The X-ray (gray, H x W uint8) with the heatmap (jet colours) blended over it, as an RGB
    Pillow image."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    heat = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    base = np.repeat(gray.astype(np.float32)[..., None] / 255.0, 3, axis=-1)
    mixed = (1 - alpha) * base + alpha * heat
    return Image.fromarray(np.round(mixed * 255).astype(np.uint8), "RGB")


def write_overlay(gray: np.ndarray, cam: np.ndarray, path: Path, caption: str | None = None,
                  scale: int = 1) -> None:
    """Overlay PNG (upscaled `scale`x for small images), with an optional caption strip."""
    from PIL import Image, ImageDraw

    img = overlay(gray, cam)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    if caption:
        canvas = Image.new("RGB", (img.width, img.height + 14), "black")
        canvas.paste(img, (0, 14))
        ImageDraw.Draw(canvas).text((2, 1), caption, fill="white")
        img = canvas
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


# --------------------------------------------------------------------------------------------
# The evaluate stage: overlays of test errors and of a few correct cases
# --------------------------------------------------------------------------------------------
def pick_cases(actual: np.ndarray, prob: np.ndarray, threshold: float, max_errors: int,
               correct_per_class: int) -> list[tuple[int, str]]:
    """(row index, kind) of the most confident errors (at most `max_errors`) and the
    `correct_per_class` most confident correct cases of each class (0, 1)."""
    pred = (prob >= threshold).astype(int)
    confidence = np.abs(prob - threshold)
    order = np.argsort(-confidence, kind="stable")
    errors = [int(i) for i in order if pred[i] != actual[i]][:max_errors]
    picked = [(i, "error") for i in errors]
    for cls in (0, 1):
        right = [int(i) for i in order if pred[i] == actual[i] == cls][:correct_per_class]
        picked += [(i, "correct") for i in right]
    return picked


def explain_test_cases(model_file: Path, rows: Any, prob: np.ndarray, actual: np.ndarray,
                       threshold: float, max_errors: int, correct_per_class: int,
                       out_dir: Path) -> list[Path]:
    """Write overlays for the picked test images (rows: split.csv rows with image_id, path,
    label) into out_dir (emptied first); return the files written."""
    import shutil

    import keras

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = pick_cases(actual, prob, threshold, max_errors, correct_per_class)
    if not cases:
        return []
    model = keras.saving.load_model(model_file, compile=False)
    size = int(model.input_shape[1])
    try:
        cam_model = CamModel(model)
    except PipelineError as exc:  # not a backbone + head model: the evaluation still stands
        log.warning("no Grad-CAM overlays: %s", exc)
        return []
    x = np.stack([to_input(Path(rows["path"].iloc[i]).read_bytes(), size) for i, _ in cases])
    # The cases are picked by P(PNEUMONIA): a three-class model's map is of the binary view.
    cams, probs = cam_model(x, "pneumonia" if cam_model.softmax_head else None)
    written = []
    for (i, kind), img, cam, p in zip(cases, x, cams, probs, strict=True):
        actual_label = LABELS[int(actual[i])]
        path = out_dir / f"{kind}_{actual_label}_{safe_name(str(rows['image_id'].iloc[i]))}.png"
        write_overlay(img[..., 0].astype(np.uint8), cam, path,
                      f"{kind}: {actual_label}, P={p:.2f}", scale=max(1, 224 // size))
        written.append(path)
    return written
