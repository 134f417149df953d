"""DICOM files (.dcm) as Pillow images, so they take the same gray/resize path as PNG and JPEG.

A chest X-ray DICOM stores raw detector values, often 12-16 bit, and says how to display them:
the modality LUT (RescaleSlope/Intercept or a Modality LUT Sequence) gives the stored values their
units, the VOI LUT (a VOI LUT Sequence, or WindowCenter/WindowWidth) picks the displayed range,
and MONOCHROME1 means low values are displayed white. `read_dicom` applies all three, in that
order (pydicom's `apply_modality_lut` then `apply_voi_lut`), and maps the resulting display range
linearly onto 0..255, so the 8-bit image looks like the one a viewer shows. The range is the one
the transform defines (the window's output range, the VOI LUT's bit depth, or the stored bit
depth after rescaling), never the image's own min/max: the same pixel value always gives the
same gray, as for 16-bit PNGs in `images.to_gray8`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

_PREAMBLE = 128
_MAGIC = b"DICM"
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then "DICM"."""
    return data[_PREAMBLE : _PREAMBLE + 4] == _MAGIC


def _display_range(ds: object, voi_applied: str) -> tuple[float, float]:
    """The output range of the transforms applied (pydicom's own conventions)."""
    if voi_applied == "lut":  # VOI LUT Sequence: values of its nominal bit depth
        depth = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    # Windowing maps onto the modality output range; without VOI the range is the same.
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**depth - 1)
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def read_dicom(data: bytes) -> Image.Image:
    """Decode a DICOM file's first frame to an 8-bit Pillow image (mode L, or RGB for color).

    Raises ValueError with a user-readable reason (no pixel data, unsupported compression,
    multi-frame, corrupt file).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage input
        raise ValueError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError("DICOM file has no pixel data (no PixelData element): not an image")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames): export the one X-ray frame")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder plugin, truncated pixel data
        raise ValueError(
            f"cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if photometric in _COLOR:
        if arr.ndim != 3 or arr.dtype.itemsize != 1:
            raise ValueError(f"unsupported {photometric} DICOM ({arr.dtype}, shape {arr.shape})")
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if not photometric.startswith("MONOCHROME") or arr.ndim != 2:
        raise ValueError(f"unsupported DICOM photometric interpretation {photometric!r}")

    arr = apply_modality_lut(arr, ds)
    voi = "lut" if ds.get("VOILUTSequence") else "window" if "WindowCenter" in ds else "none"
    if voi != "none":
        arr = apply_voi_lut(arr, ds, index=0)
    lo, hi = _display_range(ds, voi)
    scaled = (np.asarray(arr, dtype=np.float64) - lo) * (255.0 / (hi - lo)) if hi > lo else arr * 0
    gray = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
    if photometric == "MONOCHROME1":  # low values are white
        gray = 255 - gray
    return Image.fromarray(gray, "L")
