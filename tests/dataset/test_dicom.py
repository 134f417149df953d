"""DICOM decoding (pneumonia.dataset.dicom) through the one image path (images.open_image)."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.dataset.images import decode_one, open_image
from tests.conftest import SAMPLE
from tests.inference.dicomkit import dicom16_of, dicom_bytes, gray_of, png_bytes

REAL = min((SAMPLE / "test" / "NORMAL").iterdir())


@pytest.mark.parametrize("monochrome1", [False, True])
def test_16bit_dicom_decodes_to_the_same_pixels_as_the_image_it_holds(monochrome1: bool) -> None:
    gray = gray_of(REAL)
    data = dicom16_of(gray, monochrome1=monochrome1)
    img = open_image(data)
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), gray)
    # and the resize path is the same one: identical model input as from a PNG of the pixels
    np.testing.assert_array_equal(np.asarray(decode_one(data, 64)[0]),
                                  np.asarray(decode_one(png_bytes(gray), 64)[0]))


def test_monochrome1_is_inverted() -> None:
    ramp = np.tile(np.arange(0, 256, dtype=np.uint16) * 257, (4, 1))
    m2 = np.asarray(open_image(dicom_bytes(ramp, "MONOCHROME2")))
    m1 = np.asarray(open_image(dicom_bytes(ramp, "MONOCHROME1")))
    assert m2[0, 0] == 0 and m2[0, -1] == 255
    np.testing.assert_array_equal(m1, 255 - m2)


def test_window_center_width_is_applied_on_12_bit_data() -> None:
    """A 12-bit ramp with window 2048 +- 512: below -> black, above -> white, linear between
    (a plain bit-depth scaling would map 1536 to ~95, not 0)."""
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    img = np.asarray(open_image(dicom_bytes(values, bits_stored=12, WindowCenter=2048,
                                            WindowWidth=1024))).ravel()
    assert img[:1536].max() == 0
    assert img[2560:].min() == 255
    assert img[2048] == 128
    assert np.all(np.diff(img.astype(int)) >= 0)


def test_rescale_slope_intercept_is_the_modality_lut() -> None:
    """Without a window, the stored bit depth after rescaling is the display range: the same
    pixels rescaled keep their gray levels."""
    values = np.arange(256, dtype=np.uint16).reshape(16, 16) * 16  # 12-bit
    plain = np.asarray(open_image(dicom_bytes(values, bits_stored=12)))
    rescaled = np.asarray(open_image(dicom_bytes(values, bits_stored=12, RescaleSlope=2,
                                                 RescaleIntercept=-1000)))
    np.testing.assert_array_equal(plain, rescaled)
    assert plain[0, 0] == 0 and plain[-1, -1] == round(4080 * 255 / 4095)


def test_dicom_without_pixel_data_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no pixel data"):
        open_image(dicom_bytes(None))


def test_corrupt_dicom_pixel_data_is_refused() -> None:
    data = dicom_bytes(np.zeros((64, 64), np.uint16))
    with pytest.raises(ValueError, match="DICOM"):
        open_image(data[:-4000])  # pixel data cut short
