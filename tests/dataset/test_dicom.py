"""DICOM decoding (pneumonia.dataset.dicom) through the one image path (images.open_image)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pneumonia.dataset.images import decode_one, open_image
from tests.conftest import SAMPLE, peak_traced_mb
from tests.inference.dicomkit import (
    deflated,
    dicom16_of,
    dicom_bomb,
    dicom_bytes,
    gray_of,
    hostile_dicoms,
    png_bytes,
)

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


def test_a_window_in_rescaled_units_is_applied_after_the_rescale() -> None:
    """WindowCenter/Width are in the units RescaleSlope/Intercept give (DICOM PS3.3 C.11.2.1.2):
    stored 0..4095 with slope 2, intercept -1000, window 3096 +- 1024 (rescaled) is stored 2048
    +- 512 -- the same picture as the 12-bit window test. Skipping the rescale puts stored 2048
    at the window's bottom (black), not mid-gray."""
    values = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    img = np.asarray(open_image(dicom_bytes(values, bits_stored=12, RescaleSlope=2,
                                            RescaleIntercept=-1000, WindowCenter=3096,
                                            WindowWidth=2048))).ravel()
    assert img[:1536].max() == 0
    assert img[2560:].min() == 255
    assert img[2048] == 128
    assert np.all(np.diff(img.astype(int)) >= 0)


def test_dicom_without_pixel_data_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="no pixel data"):
        open_image(dicom_bytes(None))


def test_corrupt_dicom_pixel_data_is_refused() -> None:
    data = dicom_bytes(np.zeros((64, 64), np.uint16))
    with pytest.raises(ValueError, match="DICOM"):
        open_image(data[:-4000])  # pixel data cut short


def test_deflated_dicom_bomb_is_refused_from_its_header_without_inflating_it() -> None:
    """The issue's file: 131 kB of deflated DICOM announcing 8192 x 8192 16-bit pixels (pydicom
    alone inflates 134 MB of them; predict peaked at 2.8 GB). Refused from the header: the
    message names the size and the limit, and nothing near the pixel data is ever allocated."""
    bomb = dicom_bomb(8192, 8192)
    assert len(bomb) < 200_000
    with pytest.raises(ValueError, match=r"8192 x 8192 = 67\.1 megapixels, over the limit of 50 "
                       r"megapixels \(data\.max_megapixels\)"):
        open_image(bomb)
    assert peak_traced_mb(lambda: open_image(bomb)) < 8  # the 1 MiB header window, not 134 MB


def test_multi_frame_bomb_counts_every_frame() -> None:
    with pytest.raises(ValueError, match=r"4096 x 4096 x 4 frames = 67\.1 megapixels"):
        open_image(dicom_bomb(4096, 4096, frames=4))


def test_deflated_data_beyond_what_the_header_announces_is_refused() -> None:
    """A small header in front of 100 MB of deflated zeros: inflation stops at what the header
    announces."""
    bomb = dicom_bomb(64, 64, trailing_zeros=100_000_000)
    with pytest.raises(ValueError, match="inflates to more than the 8192 bytes"):
        open_image(bomb)
    assert peak_traced_mb(lambda: open_image(bomb)) < 8


def test_deflated_dicom_decodes_like_the_uncompressed_one() -> None:
    gray = gray_of(REAL)
    data = dicom16_of(gray)
    assert b"1.2.840.10008.1.2.1.99" in deflated(data)[:400] and len(deflated(data)) < len(data)
    np.testing.assert_array_equal(np.asarray(open_image(deflated(data))), gray)
    windowed = dicom_bytes(np.arange(4096, dtype=np.uint16).reshape(64, 64), bits_stored=12,
                           WindowCenter=2048, WindowWidth=1024)
    np.testing.assert_array_equal(np.asarray(open_image(deflated(windowed))),
                                  np.asarray(open_image(windowed)))


def test_the_cap_is_checked_on_uncompressed_dicom_and_png_headers() -> None:
    """The cap is a parameter: 100 x 100 pixels pass the default and fail a 0.005 MP cap, as
    DICOM and as PNG, with the size and the limit in the message."""
    gray = np.zeros((100, 100), np.uint8)
    for data, header in ((dicom16_of(gray), "DICOM header"), (png_bytes(gray), "PNG header")):
        assert open_image(data).size == (100, 100)
        with pytest.raises(ValueError, match=rf"{header}.* says 100 x 100 = 0\.0 megapixels, "
                           r"over the limit of 0\.005 megapixels \(data\.max_megapixels\)"):
            decode_one(data, 32, max_megapixels=0.005)


@pytest.mark.parametrize("name", sorted(hostile_dicoms()))
def test_hostile_display_attributes_are_one_clear_error_naming_the_attribute(name: str) -> None:
    """Before: a text WindowCenter raised TypeError inside pydicom, a VOI LUT item without
    LUTDescriptor AttributeError, a VOI LUT without LUTData was displayed with the wrong range.
    Now each is a ValueError (what predict and the served model report) naming the attribute."""
    data, attribute = hostile_dicoms()[name]
    with pytest.raises(ValueError, match=re.escape(attribute)):
        open_image(data)
