"""Test-time augmentation (TTA): the model's output averaged over a few fixed, small views of each
image — a lever that needs no labels (issue 31), measured in `pneumonia site adapt-study`
(metrics/site-adapt.md) and offered as `pneumonia predict --tta`.

The views are our reading of "small": within the training augmentation's ranges (params.yaml
`train.augment`: rotation 10 degrees, zoom 0.1, shift 0.1), at about half of them, so that each
view is an image the model saw the like of in training. Never a flip (the paper never flips, and a
chest X-ray flipped left-right is another anatomy). Each view is one bilinear affine resampling
with the nearest edge pixel filling the border, the same transform and fill as training's
augmentation layer (pneumonia.model.inputs); the views are fixed, not random, so a TTA
prediction repeats exactly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

# (rotation in degrees, zoom (> 1 zooms out), shift x, shift y as a fraction of the side)
VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0.0, 1.0, 0.0, 0.0),  # the image itself
    (5.0, 1.0, 0.0, 0.0), (-5.0, 1.0, 0.0, 0.0),
    (0.0, 0.95, 0.0, 0.0), (0.0, 1.05, 0.0, 0.0),
    (0.0, 1.0, 0.05, 0.0), (0.0, 1.0, -0.05, 0.0),
    (0.0, 1.0, 0.0, 0.05), (0.0, 1.0, 0.0, -0.05),
)
BATCH = 256


def transform(view: tuple[float, float, float, float], height: int, width: int) -> list[float]:
    """The 8 projective coefficients of one view: output pixel (x, y) samples the input at
    c + R(angle) Z (p - c - d) (pneumonia.model.inputs' convention: shift, zoom, rotate about
    the centre c)."""
    degrees, zoom, sx, sy = view
    a = degrees * math.pi / 180.0
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    dx, dy = sx * width, sy * height
    a0, a1 = math.cos(a) * zoom, -math.sin(a) * zoom
    b0, b1 = math.sin(a) * zoom, math.cos(a) * zoom
    a2 = cx - (a0 * (cx + dx) + a1 * (cy + dy))
    b2 = cy - (b0 * (cx + dx) + b1 * (cy + dy))
    return [a0, a1, a2, b0, b1, b2, 0.0, 0.0]


def view_images(x: np.ndarray, view: tuple[float, float, float, float]) -> np.ndarray:
    """The batch `x` (B, H, W, C) as seen in one view (float32, same range)."""
    from keras import ops

    if view == VIEWS[0]:
        return np.asarray(x, dtype=np.float32)
    coeffs = np.tile(np.asarray(transform(view, x.shape[1], x.shape[2]), np.float32),
                     (len(x), 1))
    out = ops.image.affine_transform(ops.convert_to_tensor(np.asarray(x, np.float32)), coeffs,
                                     interpolation="bilinear", fill_mode="nearest")
    return np.asarray(ops.convert_to_numpy(out), dtype=np.float32)


def outputs(model: Any, x: np.ndarray, views: tuple[tuple[float, float, float, float], ...]
            = VIEWS, batch: int = BATCH) -> np.ndarray:
    """The model's outputs (n, k) averaged over `views` (the identity alone: plain outputs)."""
    total: np.ndarray | None = None
    for view in views:
        parts = [np.asarray(model.predict_on_batch(view_images(x[i:i + batch], view)),
                            dtype=np.float64).reshape(min(batch, len(x) - i), -1)
                 for i in range(0, len(x), batch)]
        out = np.concatenate(parts)
        total = out if total is None else total + out
    assert total is not None
    return total / len(views)
