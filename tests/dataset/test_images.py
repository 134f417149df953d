"""Image decoding and the PNG encoder (pneumonia.dataset.images), shared by ingest and balance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.dataset.images import encode_png
from tests.dataset.test_ingest import real_gray


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (224, 224), (300, 120)])
def test_png_encoder_round_trips_exactly(shape: tuple[int, int]) -> None:
    """encode_png writes its own PNG (Up filter + zlib): Pillow and TensorFlow (libpng, which
    checks every chunk CRC) must decode exactly the pixels it was given, wrap-around included."""
    rng = np.random.default_rng(sum(shape))
    pixels = rng.integers(0, 256, shape, dtype=np.uint8)
    pixels[0, 0], pixels[-1, -1] = 0, 255  # extremes: Up-filter differences wrap mod 256
    real = np.asarray(real_gray(max(shape)))[: shape[0], : shape[1]]
    for arr in (pixels, real):
        png = encode_png(Image.fromarray(arr, "L"))
        assert png == encode_png(Image.fromarray(arr.copy(), "L"))  # deterministic
        with Image.open(io.BytesIO(png)) as img:
            img.load()
            assert img.mode == "L" and img.format == "PNG" and not img.info
            np.testing.assert_array_equal(np.asarray(img), arr)
    tf = pytest.importorskip("tensorflow")
    decoded = tf.io.decode_png(png, channels=1).numpy()[..., 0]
    np.testing.assert_array_equal(decoded, real)


def test_png_encoder_refuses_non_gray_images() -> None:
    with pytest.raises(ValueError, match="mode L.*got RGB"):
        encode_png(Image.new("RGB", (4, 4)))
