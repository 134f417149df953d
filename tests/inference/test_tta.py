"""Test-time augmentation's views: the identity is the image, a shift moves the content the
way the training augmentation does, no view flips, and the output is the mean over views."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.inference import tta


def test_no_view_flips_and_each_is_small() -> None:
    for view in tta.VIEWS:
        a0, a1, _, b0, b1, _, _, _ = tta.transform(view, 64, 64)
        assert a0 * b1 - a1 * b0 > 0  # orientation kept: a flip has a negative determinant
        assert abs(view[0]) <= 10 and abs(view[1] - 1) <= 0.1 and max(map(abs, view[2:])) <= 0.1


def test_identity_view_is_the_image_and_a_shift_moves_a_dot() -> None:
    x = np.zeros((1, 20, 20, 1), np.float32)
    x[0, 10, 10, 0] = 255.0
    assert np.array_equal(tta.view_images(x, tta.VIEWS[0]), x)
    moved = tta.view_images(x, (0.0, 1.0, 0.1, 0.0))  # shift x by 0.1 x 20 = 2 pixels
    assert moved[0, 10, 12, 0] == pytest.approx(255.0) and moved[0, 10, 10, 0] == 0.0


def test_outputs_are_the_mean_over_views() -> None:
    keras = pytest.importorskip("keras")
    inp = keras.Input((16, 16, 1))
    # a model that reads one corner pixel: its views differ, so the mean is checkable
    out = keras.layers.Lambda(lambda t: t[:, 2:3, 3, 0] / 255.0)(inp)
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 1)).astype(np.float32)
    views = tta.VIEWS[:3]
    expect = np.mean([x_v[:, 2, 3, 0] / 255.0 for x_v in
                      (tta.view_images(x, v) for v in views)], axis=0)
    got = tta.outputs(model, x, views, batch=2)
    assert got.shape == (5, 1)
    np.testing.assert_allclose(got[:, 0], expect, rtol=1e-5)
    assert not np.allclose(got[:, 0], x[:, 2, 3, 0] / 255.0)
