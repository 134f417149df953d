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
(metrics/site-adapt.md): it is not always a gain.

**Class-balanced AdaBN** (``balanced_draw``, `site adapt`'s default; our addition, not Li et
al.'s): plain AdaBN moves the operating point with the site's class mix, because the pneumonia
prevalence enters the re-estimated statistics (the training statistics were those of
Augmentor-balanced classes, 50 / 50). On an unshifted site with 74 % pneumonia that cost 8-11
accuracy points. So the adapting images are first resampled, with replacement, toward the
training prior's class mix as the unadapted model sees it: image i is drawn with weight
pi_t / pi * p_i + (1 - pi_t) / (1 - pi) * (1 - p_i), p_i its P(PNEUMONIA), pi the share of the
images the model calls PNEUMONIA at its threshold, pi_t the training prior. Where the model is
confident (p near 0 or 1) the resample's predicted mix is pi_t; less confident images are
shared between the classes, and the mix lands between the site's and pi_t (a test shows both).
No labels are used. This weighting is the one measured in metrics/site-adapt.md.
"""

from __future__ import annotations

import math
import weakref
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


_TRACED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _forward(model: Any) -> Any:
    """`model(x, training=True)` as one traced TensorFlow graph, cached on the model.

    Why a graph: in eager mode Keras' functional call keeps every intermediate tensor of the
    pass alive until it ends; DenseNet121 on 312 images of 64 px held 6.2 GB that way, the
    same pass as a graph 1.25 GB (TensorFlow frees each tensor after its last use), with the
    same statistics (measured on the cpu preset, AMD EPYC). Traced once per model (any batch
    size): the BatchNorm layers' momentum (0) and trainable flag (True) are read when tracing
    and are the same on every call."""
    forward = _TRACED.get(model)
    if forward is None:
        import tensorflow as tf

        spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)
        forward = tf.function(lambda x: model(x, training=True), input_signature=[spec])
        _TRACED[model] = forward
    return forward


def adapt_batchnorm(model: Any, x: np.ndarray, batch: int = BATCH) -> int:
    """Re-estimate the BatchNorm statistics of `model` (in place) on inputs `x`; return how
    many layers were adapted (0: a model without BatchNorm, left as it was).

    Each batch of `batch` images runs through the model in training mode with momentum 0 (each
    layer's moving statistics become that batch's); over several batches the moving mean and
    variance end as the mean of the batches' (a running mean, as momentum i / (i + 1) would)."""
    bns = batchnorm_layers(model)
    if not bns or len(x) == 0:
        return 0
    saved = [(layer.momentum, layer.trainable) for layer in bns]
    sums: list[list[np.ndarray]] = []
    try:
        for layer in bns:
            layer.trainable, layer.momentum = True, 0.0
        forward = _forward(model)
        n = math.ceil(len(x) / batch)
        for i in range(n):
            forward(np.asarray(x[i * batch:(i + 1) * batch], dtype=np.float32))
            stats = [[np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)]
                     for layer in bns]
            sums = stats if not sums else [[a + b for a, b in zip(s, t, strict=True)]
                                           for s, t in zip(sums, stats, strict=True)]
        for layer, (mean, var) in zip(bns, sums, strict=True):
            layer.moving_mean.assign(mean / n)
            layer.moving_variance.assign(var / n)
    finally:
        for layer, (momentum, trainable) in zip(bns, saved, strict=True):
            layer.momentum, layer.trainable = momentum, trainable
    return len(bns)


def balanced_draw(prob: np.ndarray, threshold: float, train_prevalence: float,
                  rng: np.random.Generator, size: int | None = None) -> np.ndarray:
    """Indices (with replacement, `size` of them, default len(prob)) of a resample whose class
    mix, as the unadapted model predicts it, moves to `train_prevalence` (all of the way for
    confident predictions; module docstring)."""
    p = np.clip(np.asarray(prob, dtype=np.float64).reshape(-1), 0.0, 1.0)
    n = p.size
    share = float(np.clip(np.mean(p >= threshold), 1.0 / n, 1.0 - 1.0 / n)) if n > 1 else 0.5
    weight = train_prevalence / share * p + (1 - train_prevalence) / (1 - share) * (1 - p)
    if not np.isfinite(weight).all() or weight.sum() <= 0:
        weight = np.ones(n)
    return rng.choice(n, size=size or n, replace=True, p=weight / weight.sum())
