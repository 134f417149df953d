"""The classifier: a pre-trained backbone, fine-tuned in its last layers, with a small head.

Layout (paper Sec. IV-D, Fig. 3; the head's size and dropout are ours, the paper gives none)::

    xray (S, S, 1) float32, 0..255
      -> gray_to_rgb: Concatenate([x, x, x])           backbones expect 3 channels
      -> <backbone>_preprocess: Rescaling/Normalization  exactly keras.applications' preprocess_input
      -> backbone (include_top=False), last N layers trainable; BatchNorm frozen when pretrained
      -> GlobalAveragePooling2D -> Dense(units, relu) -> Dropout -> Dense(1, sigmoid, float32)
                                       (`task: three_class`: Dense(3, softmax, float32))

Only built-in Keras layers are used, so ``models/model.keras`` loads with plain
``keras.saving.load_model`` (no custom objects) and the model takes raw pixel values: whoever
serves it needs no separate preprocessing code.
"""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from pneumonia.errors import PipelineError
from pneumonia.model.backbones import PREPROCESSING, WEIGHTS_URL, build_backbone
from pneumonia.params import ModelParams

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

def keras_models_dir() -> Path:
    """Where keras.applications caches downloaded weights ($KERAS_HOME/models, ~/.keras/models)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def resolve_weights(params: ModelParams, timeout: float = 5.0) -> str | None:
    """The `weights=` argument for keras.applications, checked before any compute.

    ``imagenet`` needs the weights file in the Keras cache or a reachable download URL; without
    either, fail now with the exact file to fetch instead of after minutes of data loading.
    """
    w = params.weights
    if w == "none":
        return None
    if w != "imagenet":
        if not Path(w).is_file():
            raise PipelineError(
                f"params.yaml: `model.weights` is {w!r}, which is not a file. Give the path to a "
                "Keras weights file, or use `imagenet` or `none`."
            )
        return w
    if params.backbone not in WEIGHTS_URL:
        raise PipelineError(
            f"params.yaml: `model.backbone: {params.backbone}` has no ImageNet weights: set "
            "`model.weights: none` (trained from random weights) or pick a pretrained backbone "
            f"({', '.join(WEIGHTS_URL)})."
        )
    url = WEIGHTS_URL[params.backbone]
    cached = keras_models_dir() / url.rsplit("/", 1)[1]
    if cached.is_file():
        return "imagenet"
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=timeout):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise PipelineError(
            f"model.weights is `imagenet` but the ImageNet weights for {params.backbone} are not "
            f"in the Keras cache and cannot be downloaded ({exc}). Either download\n  {url}\n"
            f"on a machine with internet access and put it at\n  {cached}\n"
            "or set `model.weights` in params.yaml to the path of that file, or to `none` "
            "(random initialisation: for smoke tests only, results will not match the paper)."
        ) from None
    return "imagenet"


def build_model(params: ModelParams, image_size: int, weights: str | None,
                outputs: int = 1) -> keras.Model:
    """Build the (uncompiled) classifier.

    `weights` is the resolved value from `resolve_weights` (None, "imagenet" or a file path).
    All backbone layers but the last `params.trainable_layers` are frozen; the head is trainable.
    `outputs`: 1 = one sigmoid, P(PNEUMONIA) (the paper); 3 = a softmax over normal / bacteria /
    virus (`task: three_class`, pneumonia.model.tasks).
    """
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 1), dtype="float32", name="xray")
    x = layers.Concatenate(axis=-1, name="gray_to_rgb")([inputs, inputs, inputs])
    scale, mean, std = PREPROCESSING[params.backbone]
    x = layers.Rescaling(scale, name=f"{params.backbone}_rescale")(x)
    x = layers.Normalization(
        axis=-1, mean=list(mean), variance=[s * s for s in std], name=f"{params.backbone}_normalize"
    )(x)

    try:
        with warnings.catch_warnings():
            # A file of another network makes Keras warn once per layer before it fails.
            warnings.filterwarnings("ignore", message="Skipping nested container")
            base = build_backbone(params.backbone, weights, image_size)
    except (ValueError, OSError) as exc:
        if weights in (None, "imagenet"):
            raise  # not a user's file: a bug or a broken Keras cache keeps its traceback
        raise PipelineError(
            f"params.yaml: `model.weights` is {weights!r}, which does not hold weights for "
            f"`model.backbone: {params.backbone}` (include_top=False): Keras could not load it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]}). Give a weights file saved from "
            f"{params.backbone} without its top (e.g. ~/.keras/models/"
            f"{WEIGHTS_URL[params.backbone].rsplit('/', 1)[1]}), set `model.backbone` to the "
            "network the file belongs to, or use `imagenet` or `none`."
        ) from None
    # Pretrained: BatchNormalization stays in inference mode (Keras transfer-learning guide), so
    # fine-tuning does not wreck the ImageNet statistics. In Keras 3.15 the guide's
    # `base(x, training=False)` does NOT do that inside a functional model: fit's training=True
    # overrides the recorded training=False (Keras' functional.py, operation_fn), and
    # the moving statistics of trainable BN layers drift (tests/test_model.py measures it). A BN
    # layer with trainable=False always runs in inference mode, so freeze BN layers instead.
    # Random init (weights None): there are no statistics to protect; BN must learn them.
    # `model.freeze_batchnorm: false` lets BN learn in the trainable layers also when pretrained.
    freeze_all_but_last(base, params.trainable_layers,
                        freeze_batchnorm=weights is not None and params.freeze_batchnorm)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = params.bn_momentum  # frozen BN layers never update: no effect there
    x = base(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(params.dense_units, activation="relu", name="dense")(x)
    x = layers.Dropout(params.dropout, name="dropout")(x)
    # float32 output: under mixed_float16 a float16 sigmoid saturates and the loss loses precision.
    # The layer keeps its name `pneumonia` for three classes too (one name for the head).
    activation = "sigmoid" if outputs == 1 else "softmax"
    head = layers.Dense(outputs, activation=activation, dtype="float32", name="pneumonia")(x)
    return keras.Model(inputs, head, name=f"{params.backbone}_pneumonia")


def freeze_all_but_last(base: keras.Model, n: int, freeze_batchnorm: bool = False) -> None:
    """Make only the last `n` layers of `base` trainable (paper: the last 30 of DenseNet201).

    With `freeze_batchnorm`, BatchNormalization layers among them stay frozen too, which in Keras
    means inference mode (pretrained moving mean/variance used and never updated).
    """
    import keras

    base.trainable = True
    cut = max(len(base.layers) - n, 0)
    for i, layer in enumerate(base.layers):
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = i >= cut and not (freeze_batchnorm and is_bn)


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested backbone model inside a model built by `build_model`."""
    import keras

    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"expected exactly one nested backbone in {model.name}, got {nested}")
    return nested[0]
