"""Image decoding and the PNG encoder (pneumonia.dataset.images), shared by ingest and balance."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pneumonia.dataset.images import decode_one, encode_png, open_image
from tests.conftest import peak_traced_mb, zeros_png
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


def test_16_bit_png_bomb_under_pillows_limit_is_refused_by_ours() -> None:
    """8000 x 8000 16-bit (124 kB): under Pillow's 89.5 MP limit, so Pillow alone decodes it
    (1.7 GB for the issue's 89 MP one); refused from its header instead."""
    bomb = zeros_png(8000, 8000, bit_depth=16)
    with pytest.raises(ValueError, match=r"PNG header says 8000 x 8000 = 64\.0 megapixels, over "
                       r"the limit of 50 megapixels"):
        open_image(bomb)
    assert peak_traced_mb(lambda: open_image(bomb)) < 8


def test_png_over_pillows_own_limit_names_our_limit_too() -> None:
    with pytest.raises(ValueError, match=r"Pillow's decompression-bomb limit.*limit of 50 "
                       r"megapixels \(data\.max_megapixels\)"):
        open_image(zeros_png(10_000, 10_000))


def _png(pixels: np.ndarray, mode: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_color_is_converted_by_luma_not_a_plain_mean(mode: str) -> None:
    """Red, green, blue and a mixed color (R != G != B) become ITU-R 601 luma 0.299 R + 0.587 G
    + 0.114 B (what Pillow's convert("L") computes, and what TensorFlow's rgb_to_grayscale
    computes) -- a plain mean would give 85 for each primary. Alpha is dropped."""
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [200, 100, 50]]], np.uint8)
    pixels = rgb if mode == "RGB" else np.dstack([rgb, np.full((2, 2), 90, np.uint8)])
    gray = np.asarray(decode_one(_png(pixels, mode), 2)[0], float)  # 2 x 2: no resize
    luma = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(gray, luma, atol=1)
    assert gray.tolist() == [[76, 150], [29, 124]]


@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])
def test_images_are_squashed_to_the_square_not_letterboxed_or_cropped(
        shape: tuple[int, int]) -> None:
    """Like Keras' target_size: the whole image, stretched to size x size. A 4:1 image whose
    first quarter is black keeps a black first quarter across the full other side: no bars
    (letterbox), nothing cut off (centre crop)."""
    pixels = np.full(shape, 255, np.uint8)
    if shape[0] < shape[1]:
        pixels[:, : shape[1] // 4] = 0
    else:
        pixels[: shape[0] // 4] = 0
    out = np.asarray(decode_one(_png(pixels, "L"), 32)[0]).astype(int)
    if shape[0] > shape[1]:
        out = out.T
    assert out.shape == (32, 32)
    assert (out == out[0]).all()  # every row alike: no bars above and below
    assert out[:, :6].max() <= 5 and out[:, 10:].min() >= 250  # the black quarter is 8 columns


def _stripes(period: float) -> Image.Image:
    x = np.arange(256)
    row = np.round(128 + 100 * np.sin(2 * np.pi * x / period)).astype(np.uint8)
    return Image.fromarray(np.tile(row, (256, 1)), "L")


def test_resizing_is_lanczos_sharp_and_antialiased() -> None:
    """Downsampling 256 -> 64 px (the originals are ~10x larger than the model input): stripes
    of 3 output pixels keep their contrast (std 67.6 of the ideal 70.7 with LANCZOS; bilinear
    47.8, bicubic 59.2, box 59.2), stripes finer than 2 output pixels vanish instead of
    aliasing (std 0.9; bilinear 3.7, nearest 70.5). Pillow's resampling is integer arithmetic:
    the same on every CPU."""
    from pneumonia.dataset.images import squash

    texture = np.asarray(squash(_stripes(12), 64), float)[:, 4:-4]
    aliased = np.asarray(squash(_stripes(5), 64), float)[:, 4:-4]
    assert texture.std() > 64
    assert aliased.std() < 2
