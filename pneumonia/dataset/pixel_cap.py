"""The pixel cap: an image whose header announces more than `data.max_megapixels` million pixels is
refused before anything is decoded (a decompression bomb). One default and one check for every
decoder (pneumonia.dataset.images for PNG/JPEG, pneumonia.dataset.dicom for DICOM), below both.
"""

from __future__ import annotations

from pneumonia.params import DataParams

# The pixel cap (params.yaml data.max_megapixels): one default for ingest, predict and the
# served model. 50 MP is 2.5x the largest detector (43 x 43 cm at 100 um, ~18.5 MP).
DEFAULT_MAX_MEGAPIXELS: float = DataParams.max_megapixels
LIMIT_KEY = "data.max_megapixels"


def check_pixels(width: int, height: int, frames: int, max_megapixels: float,
                 source: str = "image header") -> None:
    """Refuse an image whose header announces more than `max_megapixels` million pixels
    (width x height x frames), before anything is decoded. ValueError naming the limit."""
    pixels = width * height * frames
    if pixels > max_megapixels * 1e6:
        size = f"{width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
        raise ValueError(
            f"image too large: the {source} says {size} = {pixels / 1e6:.1f} megapixels, over "
            f"the limit of {max_megapixels:g} megapixels ({LIMIT_KEY}); refused before "
            "decoding (a decompression bomb, or not an X-ray). Downscale the image, or raise "
            f"{LIMIT_KEY} in params.yaml if it is genuine")
