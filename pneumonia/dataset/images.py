"""Image decoding, shared by ingest and by everyone who applies the model to new images.

One code path turns any supported file into what the model was trained on: fully decoded (a
truncated file is an error, never half an image; `open_image`, which reads DICOM through
`pneumonia.dataset.dicom`), converted to 8-bit grayscale (`to_gray8`) and squashed to size x size
with Pillow's antialiased LANCZOS filter (`squash`); `decode_one` does all three, for ingest and
for `pneumonia predict` / the served model alike. `encode_png` writes the ingested images.

Decompression bombs: a few kB of PNG or deflated DICOM can announce billions of pixels. The size
is read from the header first (Pillow's `Image.open` parses only the header; DICOM: Rows x
Columns x NumberOfFrames) and an image over `max_megapixels` (params.yaml `data.max_megapixels`,
default 50) is refused before a single pixel is decoded (`check_pixels`).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from pneumonia.dataset.dicom import is_dicom, read_dicom
from pneumonia.dataset.pixel_cap import DEFAULT_MAX_MEGAPIXELS, LIMIT_KEY, check_pixels

# LANCZOS is antialiased: downsampling the ~2000 px originals keeps fine lung texture without
# aliasing (bilinear/nearest, as Keras' loader uses by default, alias on 10x reductions).
RESIZE_METHOD = "Pillow LANCZOS (antialiased), aspect ratio squashed like Keras target_size"
_RESAMPLE = Image.Resampling.LANCZOS
PNG_ZLIB_LEVEL = 1
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_FILTER_UP = 2


def to_gray8(img: Image.Image) -> Image.Image:
    """Convert any Pillow image to 8-bit grayscale (mode L).

    Alpha is dropped, not composited: X-rays have no meaningful transparency, and compositing on
    black or white would invent intensities. 16/32-bit grayscale is scaled by its bit depth
    (65535 -> 255), not clipped, so the full dynamic range survives.
    """
    mode = img.mode
    if mode == "L":
        return img
    if mode in ("LA", "La"):
        return img.getchannel("L")
    if mode.startswith("I;16") or mode == "I":
        # Pillow opens 16-bit PNGs as I;16 or I; both hold values up to 65535.
        arr = np.asarray(img)
        top = int(arr.max(initial=0))
        max_value = max(65535, top)
        # (v * 255 + max / 2) // max, in place on one working copy: uint32 holds 65535 * 255
        # + 32767, so 4 bytes a pixel instead of several int64 temporaries (the peak memory
        # this saves: docs/data.md, "Data handling").
        work = np.maximum(arr, 0)  # a writable copy; mode I may hold negatives
        if max_value > 65535:
            work = work.astype(np.int64)
        elif work.dtype == np.int32:
            work = work.view(np.uint32)  # non-negative now: the same values, no copy
        else:
            work = work.astype(np.uint32)
        work *= 255
        work += max_value // 2
        work //= max_value
        return Image.fromarray(work.astype(np.uint8), "L")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    if mode in ("1", "P", "PA", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        img = img.convert("RGBA" if mode in ("P", "PA") else "RGB")
    return img.convert("L")  # ITU-R 601 luma


def open_image(data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """Fully decode image bytes (PNG, JPEG, ... or DICOM) into a Pillow image.

    Raises ValueError with a user-readable reason for empty, non-image, truncated or
    decompression-bomb files (over `max_megapixels` million pixels, checked from the header
    before decoding), and for DICOM files without usable pixel data.
    """
    if not data:
        raise ValueError("empty file (0 bytes)")
    if is_dicom(data):
        return read_dicom(data, max_megapixels)
    with warnings.catch_warnings():
        # Pillow's own limits (a warning over Image.MAX_IMAGE_PIXELS, 89.5 MP, an error over
        # twice that) fire inside Image.open, before our cap can be checked; data.max_megapixels
        # is at most 89 (params.py), so whatever they refuse is over our cap too. The warning is
        # an error here: the limit is never passed silently.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)  # palette-transparency notes
        try:
            img = Image.open(io.BytesIO(data))  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError(
                f"image too large: more than {Image.MAX_IMAGE_PIXELS / 1e6:.1f} megapixels "
                f"(Pillow's decompression-bomb limit), over the limit of {max_megapixels:g} "
                f"megapixels ({LIMIT_KEY}); refused before decoding (a decompression bomb, or "
                "not an X-ray)") from None
        except UnidentifiedImageError:
            raise ValueError("not an image: Pillow cannot identify the file's content") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ValueError(f"truncated or corrupt image data ({exc})") from None
        check_pixels(img.width, img.height, 1, max_megapixels, f"{img.format} header")
        try:
            img.load()  # decode everything now: truncated files fail here, not later
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ValueError(f"truncated or corrupt image data ({exc})") from None
    return img


def squash(img: Image.Image, size: int) -> Image.Image:
    """8-bit grayscale, squashed to size x size (LANCZOS): what the model was trained on."""
    gray = to_gray8(img)
    if gray.size != (size, size):
        gray = gray.resize((size, size), _RESAMPLE)
    return gray


def decode_one(data: bytes, size: int, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS,
               ) -> tuple[Image.Image, int, int, str]:
    """Fully decode image bytes and return (grayscale size x size image, width, height, mode).

    Raises ValueError with a user-readable reason (see `open_image`).
    """
    img = open_image(data, max_megapixels)
    return squash(img, size), img.width, img.height, img.mode


def encode_png(img: Image.Image) -> bytes:
    """8-bit grayscale PNG bytes: no metadata or timestamps, so the same pixels give the same bytes.

    Written here rather than by `img.save(format="PNG")`: Pillow always chooses a filter per row
    adaptively, and its encoder (1.6 ms per 224 px image at compress_level=1) was half of the
    ingest stage's time (cProfile and `perf record`, 2 vCPUs). Every row here uses the PNG "Up"
    filter (one NumPy subtraction) and zlib's run-length strategy: 0.5-0.6 ms per image, files
    ~4 % smaller; the single-worker stage went from ~19 s to ~12.5 s on the full dataset.
    The bytes depend on the zlib library's version (Pillow's encoder loaded the same system
    zlib), the pixels never do; tests decode them with Pillow and TensorFlow's libpng.
    """
    if img.mode != "L":
        raise ValueError(f"encode_png expects an 8-bit grayscale (mode L) image, got {img.mode}")
    pixels = np.asarray(img, dtype=np.uint8)
    height, width = pixels.shape
    rows = np.empty((height, width + 1), dtype=np.uint8)
    rows[:, 0] = _PNG_FILTER_UP
    rows[0, 1:] = pixels[0]  # the row above the first one is all zeros
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])  # uint8 wraps mod 256, as PNG wants
    deflate = zlib.compressobj(PNG_ZLIB_LEVEL, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    idat = deflate.compress(rows.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bit, grayscale
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", idat),
                     _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
