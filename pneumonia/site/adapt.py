"""`pneumonia site adapt IMAGES --site NAME`: AdaBN, a label-free lever for a shifted site.

AdaBN (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"):
every BatchNormalization layer's moving mean and variance are re-estimated on the site's
unlabelled images; weights, threshold and everything else stay. It is done in one pass: each
BatchNorm layer in training mode normalises with the site batch's own statistics, so the layers
after it see adapted features, exactly as layer-by-layer re-estimation would; with momentum 0
the moving statistics become that batch's. Images beyond one batch (``BATCH``) are averaged
batch by batch (a running mean of the batches' means and variances). Frozen BatchNorm layers
(a pretrained backbone's) are unfrozen for the pass. The head's Dropout comes after every
BatchNorm layer and does not change them.

The adapted weights are registered as the site's version (alias ``site-NAME``, the same
threshold as the base model, no conformal sets: the base model's validation quantile does not
describe the adapted model). What it does is measured in ``pneumonia site adapt-study``
(metrics/site-adapt.md): it is not always a gain. It moves the operating point with the site's
class mix (the pneumonia prevalence enters the re-estimated statistics).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BATCH = 512
MIN_IMAGES = 32  # fewer: batch statistics of a handful of images are noise (docs/new-site.md)


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer, nested models included, in graph order."""
    import keras

    out: list[Any] = []

    def walk(layer: Any) -> None:
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
        for inner in getattr(layer, "layers", []) or []:
            walk(inner)

    for layer in model.layers:
        walk(layer)
    return out


def adapt_batchnorm(model: Any, x: np.ndarray, batch: int = BATCH) -> int:
    """Re-estimate the BatchNorm statistics of `model` (in place) on inputs `x`; return how
    many layers were adapted (0: a model without BatchNorm, left as it was)."""
    bns = batchnorm_layers(model)
    if not bns or len(x) == 0:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in bns]
    try:
        for layer in bns:
            layer.trainable = True
        for i in range(math.ceil(len(x) / batch)):
            for layer in bns:
                layer.momentum = i / (i + 1)  # running mean over batches; the first replaces
            model(x[i * batch:(i + 1) * batch], training=True)
    finally:
        for layer, (momentum, trainable) in zip(bns, saved, strict=True):
            layer.momentum, layer.trainable = momentum, trainable
    return len(bns)


