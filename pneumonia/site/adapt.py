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

import argparse
import hashlib
import math
import sys
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.errors import PipelineError

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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="IMAGES",
                        help="the site's unlabelled images: files, folders, .zip (as predict)")
    parser.add_argument("--site", required=True, metavar="NAME")
    parser.add_argument("--model", metavar="M", default=None,
                        help="the base model (default: the champion, else models/model.keras)")
    parser.add_argument("--replace", action="store_true",
                        help="re-adapt an existing site (its alias moves)")
    parser.add_argument("--dry-run", action="store_true", help="adapt, register nothing")
    parser.add_argument("--save", metavar="FILE.keras", default=None,
                        help="also save the adapted model to FILE.keras")


def command(args: argparse.Namespace) -> int:
    from pneumonia.inference.loading import _mlflow_threshold, workspace_threshold
    from pneumonia.inference.sources import expand, params_max_megapixels, to_input
    from pneumonia.site import names, registry

    site = names.check(args.site)
    items = expand(args.paths)
    if len(items) < MIN_IMAGES:
        raise PipelineError(f"{len(items)} image(s): AdaBN needs at least {MIN_IMAGES} unlabelled "
                            "site images (batch statistics of fewer are noise). Nothing was "
                            "registered.")
    name, replaced, base, model = registry.open_base(args.model, site, args.replace,
                                                     args.dry_run)
    size = int(model.input_shape[1])
    cap = params_max_megapixels()[0]
    arrays, bad, digests = [], [], []
    for item in items:
        try:
            data = item.read()
            arrays.append(to_input(data, size, cap))
            digests.append(hashlib.sha256(data).hexdigest())
        except (OSError, ValueError) as exc:
            bad.append(f"  {item.name}: {exc}")
    if bad:
        raise PipelineError(f"{len(bad)} file(s) cannot be used (nothing was adapted or "
                            "registered):\n" + "\n".join(bad[:30]))
    n_layers = adapt_batchnorm(model, np.stack(arrays))
    if n_layers == 0:
        raise PipelineError(f"{base.spec}: the model has no BatchNormalization layer; AdaBN "
                            "has nothing to adapt. Nothing was registered.")
    digest = hashlib.sha256("".join(sorted(d + "\n" for d in digests)).encode()).hexdigest()
    recorded = (_mlflow_threshold(base.spec) if base.spec.startswith(("runs:/", "models:/"))
                else workspace_threshold())
    threshold = recorded[0] if recorded else 0.5
    record = {"site": site, "calibration": (f"site-{site}: AdaBN on {len(arrays)} unlabelled "
                                            f"images (sha256 {digest[:12]}), threshold "
                                            f"{threshold:g} of the base model"),
              "adabn": {"images": len(arrays), "layers": n_layers, "images_sha256": digest},
              "threshold": threshold, "temperature": None, "base_model": base.spec,
              "base_version": base.version}
    print(record["calibration"] + f"; {n_layers} BatchNorm layers re-estimated", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.save) if args.save else Path(tmp) / "model.keras"
        model.save(out)
        if args.dry_run:
            print("dry run: nothing registered", file=sys.stderr)
            return 0
        adapted = registry.Base(base.spec, out, base.version, base.provenance)
        tags = {"site.name": site, "site.adabn_images": str(len(arrays)),
                "site.images_sha256": digest, "site.base_version": base.version or "",
                "site.base_model": base.spec[:500]}
        version, _ = registry.register(name, site, adapted, threshold, {}, record, tags)
    print(f"registered {name!r} version {version} as {names.alias(site)}"
          + (f" (was version {replaced})" if replaced else ""), file=sys.stderr)
    return 0
