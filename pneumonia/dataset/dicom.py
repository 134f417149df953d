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

A DICOM file is untrusted input (a served model decodes whatever it is sent), so nothing is
decoded before the header has been checked:
- the size: Rows x Columns x NumberOfFrames against the pixel cap (`pixel_cap.check_pixels`), before
  any pixel data is decoded -- and, for the Deflated transfer syntax, before the data set is even
  inflated (pydicom inflates a whole deflated file at once: a 131 kB file of 8192^2 zeros became
  134 MB, and 2.8 GB peak in `predict`). Here only the attributes before the pixel data are
  inflated, the cap is checked, then the rest is inflated up to the size the header announces.
- the display attributes pydicom's LUT functions read (`_check_display`): each must hold a usable
  number or item, else one ValueError names the attribute (a text WindowCenter raised a TypeError
  inside pydicom, a VOI LUT item without LUTDescriptor an AttributeError).
Every other decoding failure is turned into a ValueError with pydicom's reason, too.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image

from pneumonia.dataset.pixel_cap import DEFAULT_MAX_MEGAPIXELS, check_pixels

_PREAMBLE = 128
_MAGIC = b"DICM"
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
_DEFLATED = "1.2.840.10008.1.2.1.99"
# Inflated bytes read to find the attributes before the pixel data: a few kB in real X-rays.
_HEADER_BYTES = 1 << 20
# Inflated bytes allowed after the pixel data the header announces (trailing attributes).
_TRAILER_BYTES = 1 << 20
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then "DICM"."""
    return data[_PREAMBLE : _PREAMBLE + 4] == _MAGIC


def tag_name(keyword: str) -> str:
    """How messages name a DICOM attribute: 'WindowCenter (0028,1050)'."""
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    tag = tag_for_keyword(keyword)
    return f"{keyword} {Tag(tag)}" if tag is not None else keyword


def _value(ds: Any, keyword: str) -> Any:
    """The attribute's value as pydicom parsed it; pydicom raises on some malformed values
    (an IS of 'many'): that is the attribute's fault, said so."""
    try:
        return ds.get(keyword)
    except Exception as exc:  # noqa: BLE001 - pydicom's value converters raise many types
        raise ValueError(f"DICOM attribute {tag_name(keyword)} is unreadable "
                         f"({type(exc).__name__}: {exc})") from None


def _numbers(ds: Any, keyword: str, where: str = "") -> list[float] | None:
    """The attribute's values as finite numbers, None when absent; ValueError naming it when a
    value is text, empty or not finite (pydicom's arithmetic would fail on it, or yield NaN)."""
    value = _value(ds, keyword)
    if value is None:
        return None
    sequence = hasattr(value, "__len__") and not isinstance(value, (str, bytes))
    values = list(value) if sequence else [value]  # pydicom's MultiValue, or one value
    if not values:
        raise ValueError(f"DICOM attribute {where}{tag_name(keyword)} is empty")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"DICOM attribute {where}{tag_name(keyword)} is {v!r}, "
                             "not a finite number")
    return [float(v) for v in values]


def _integer(ds: Any, keyword: str, default: int | None, lo: int, hi: int) -> int:
    numbers = _numbers(ds, keyword)
    if numbers is None:
        if default is None:
            raise ValueError(f"DICOM attribute {tag_name(keyword)} is missing")
        return default
    v = numbers[0]
    if not v.is_integer() or not lo <= v <= hi:
        raise ValueError(f"DICOM attribute {tag_name(keyword)} is {v:g}; "
                         f"it must be a whole number from {lo} to {hi}")
    return int(v)


def _check_lut(ds: Any, sequence: str, depths: tuple[int, ...]) -> bool:
    """A LUT sequence's first item is complete (pydicom reads only that one), else ValueError
    naming the attribute. False when the sequence is absent or empty."""
    from pydicom.dataset import Dataset

    items = _value(ds, sequence)
    if not items:
        return False
    item = items[0] if hasattr(items, "__getitem__") else None
    if not isinstance(item, Dataset):  # e.g. written with VR UN: bytes, not a sequence
        raise ValueError(  # noqa: TRY004 - bad input, reported like every other
            f"DICOM attribute {tag_name(sequence)} is not a sequence of items")
    where = f"{tag_name(sequence)} item 1: "
    descriptor = _numbers(item, "LUTDescriptor", where)
    if descriptor is None or len(descriptor) != 3:
        raise ValueError(f"DICOM attribute {where}{tag_name('LUTDescriptor')} "
                         f"{'is missing' if descriptor is None else 'needs 3 values'}")
    entries, _, depth = descriptor
    if not (entries.is_integer() and 0 <= entries <= 65535) or depth not in depths:
        raise ValueError(f"DICOM attribute {where}{tag_name('LUTDescriptor')} is "
                         f"{[int(d) if d.is_integer() else d for d in descriptor]}: "
                         f"entries must be 0-65535 and the bit depth one of {list(depths)}")
    data = _value(item, "LUTData")
    needed = int(entries) or 65536
    if data is None:
        raise ValueError(f"DICOM attribute {where}{tag_name('LUTData')} is missing")
    if isinstance(data, bytes):  # VR OW: 16-bit words
        have = len(data) // 2
    else:  # VR US: one number or several
        have = len(data) if hasattr(data, "__len__") and not isinstance(data, str) else 1
    if have < needed:
        raise ValueError(f"DICOM attribute {where}{tag_name('LUTData')} holds {have} entries; "
                         f"its LUTDescriptor announces {needed}")
    return True


def _check_display(ds: Any) -> str:
    """Validate what the modality and VOI transforms read; return the VOI transform to apply
    ("lut", "window" or "none") -- the one pydicom's `apply_voi_lut` picks."""
    # pydicom's windowing reads RescaleSlope/Intercept even beside a Modality LUT Sequence.
    slope, intercept = _numbers(ds, "RescaleSlope"), _numbers(ds, "RescaleIntercept")
    if not _check_lut(ds, "ModalityLUTSequence", (8, 16)) and slope is not None \
            and intercept is not None and slope[0] == 0:
        raise ValueError(f"DICOM attribute {tag_name('RescaleSlope')} is 0: every pixel "
                         "would have the same value")
    bits = _integer(ds, "BitsAllocated", 16, 1, 64)
    _integer(ds, "BitsStored", bits, 1, bits)
    _integer(ds, "PixelRepresentation", 0, 0, 1)
    if _check_lut(ds, "VOILUTSequence", (8, *range(10, 17))):
        return "lut"
    center, width = _numbers(ds, "WindowCenter"), _numbers(ds, "WindowWidth")
    if center is None or width is None:  # pydicom windows only with both
        return "none"
    function = _value(ds, "VOILUTFunction")
    function = "LINEAR" if function is None else str(function).strip().upper()
    if function not in _VOI_FUNCTIONS:
        raise ValueError(f"DICOM attribute {tag_name('VOILUTFunction')} is {function!r}; "
                         f"supported: {', '.join(_VOI_FUNCTIONS)}")
    if width[0] < 1 if function == "LINEAR" else width[0] <= 0:
        raise ValueError(f"DICOM attribute {tag_name('WindowWidth')} is {width[0]:g}; a "
                         f"{function} window needs {'>= 1' if function == 'LINEAR' else '> 0'}")
    return "window"


def _display_range(ds: Any, voi_applied: str) -> tuple[float, float]:
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


def _has_pixels(ds: Any) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _check_size(ds: Any, max_megapixels: float) -> int:
    """Rows x Columns x NumberOfFrames against the cap, from the header alone; return the
    number of bytes the pixel data should take."""
    rows = _integer(ds, "Rows", None, 1, 65535)
    columns = _integer(ds, "Columns", None, 1, 65535)
    frames = _integer(ds, "NumberOfFrames", 1, 1, 2**31 - 1)
    check_pixels(columns, rows, frames, max_megapixels,
                 "DICOM header (Columns x Rows" + (" x NumberOfFrames" if frames > 1 else "") + ")")
    samples = _integer(ds, "SamplesPerPixel", 1, 1, 4)
    bits = _integer(ds, "BitsAllocated", 16, 1, 64)
    return rows * columns * frames * samples * math.ceil(bits / 8)


def _parse(data: bytes, max_megapixels: float) -> Any:
    """The data set, its size checked against the cap before any pixel data is decoded or
    inflated. Raises ValueError."""
    import pydicom
    from pydicom.filereader import read_dataset, read_preamble

    try:
        fp = io.BytesIO(data)
        preamble = read_preamble(fp, True)
        # File meta group 0002: always explicit VR little endian (DICOM PS3.10 7.1).
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag >> 16 != 2)
        start = fp.tell()
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for garbage input
        raise ValueError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
    if str(meta.get("TransferSyntaxUID", "")) != _DEFLATED:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None
        if _has_pixels(ds):
            _check_size(ds, max_megapixels)  # from the header, before `pixel_array` decodes
        return ds
    return _parse_deflated(data[start:], preamble, meta, max_megapixels)


def _parse_deflated(body: bytes, preamble: bytes | None, meta: Any,
                    max_megapixels: float) -> Any:
    """A Deflated Explicit VR Little Endian data set, inflated in two bounded steps."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.filereader import read_dataset

    reached: list[int] = []

    def at_pixels(tag: Any, vr: Any, length: int) -> bool:
        if tag in (0x7FE00010, 0x7FE00009, 0x7FE00008):
            reached.append(tag)
        return bool(reached)

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(body, _HEADER_BYTES)
        header = read_dataset(io.BytesIO(head), is_implicit_VR=False, is_little_endian=True,
                              stop_when=at_pixels)
    except Exception as exc:  # noqa: BLE001 - zlib.error, pydicom's parse errors
        raise ValueError(f"unreadable deflated DICOM file ({type(exc).__name__}: {exc})") from None
    if not reached:
        if inflater.eof:  # the whole data set, and no pixel data in it
            return FileDataset(None, header, preamble, FileMetaDataset(meta), False, True)
        raise ValueError(f"deflated DICOM file with over {_HEADER_BYTES // 2**20} MiB of "
                         "attributes before its pixel data: refused (not an X-ray export)")
    expected = _check_size(header, max_megapixels)
    try:
        rest = inflater.decompress(inflater.unconsumed_tail, expected + _TRAILER_BYTES)
    except zlib.error as exc:
        raise ValueError(f"unreadable deflated DICOM file (zlib: {exc})") from None
    if inflater.unconsumed_tail or not inflater.eof:
        raise ValueError(
            f"deflated DICOM data inflates to more than the {expected} bytes of pixel data its "
            "header announces: refused (a decompression bomb or a corrupt file)")
    try:
        dataset = read_dataset(io.BytesIO(head + rest), is_implicit_VR=False,
                               is_little_endian=True)
        ds = FileDataset(None, dataset, preamble, FileMetaDataset(meta), False, True)
        ds.set_original_encoding(False, True, dataset._character_set)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"unreadable deflated DICOM file ({type(exc).__name__}: {exc})") from None
    return ds


def read_dicom(data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """Decode a DICOM file's first frame to an 8-bit Pillow image (mode L, or RGB for color).

    Raises ValueError with a user-readable reason (too many pixels, no pixel data, unsupported
    compression, multi-frame, a display attribute pydicom cannot use, corrupt file), naming the
    DICOM attribute at fault where there is one.
    """
    ds = _parse(data, max_megapixels)
    if not _has_pixels(ds):
        raise ValueError("DICOM file has no pixel data (no PixelData element): not an image")
    photometric = str(_value(ds, "PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    frames = _integer(ds, "NumberOfFrames", 1, 1, 2**31 - 1)
    if frames > 1:
        raise ValueError(f"multi-frame DICOM ({frames} frames): export the one X-ray frame")
    if photometric not in (*_COLOR, "MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"unsupported DICOM photometric interpretation {photometric!r} "
                         f"({tag_name('PhotometricInterpretation')})")
    voi = "none" if photometric in _COLOR else _check_display(ds)
    try:
        with warnings.catch_warnings():
            # pydicom hands compressed frames to Pillow: its bomb warning is an error here too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - missing decoder plugin, truncated pixel data
        raise ValueError(
            f"cannot decode the DICOM pixel data ({type(exc).__name__}: {exc})") from None
    if photometric in _COLOR:
        if arr.ndim != 3 or arr.dtype.itemsize != 1:
            raise ValueError(f"unsupported {photometric} DICOM ({arr.dtype}, shape {arr.shape})")
        return Image.fromarray(np.ascontiguousarray(arr), "RGB")
    if arr.ndim != 2:
        raise ValueError(f"unsupported {photometric} DICOM (shape {arr.shape})")
    return Image.fromarray(_to_gray8(arr, ds, voi, photometric), "L")


def _to_gray8(arr: np.ndarray, ds: Any, voi: str, photometric: str) -> np.ndarray:
    """Modality LUT, VOI LUT, display range -> 0..255 (the attributes already validated)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    step = "the modality LUT (RescaleSlope/RescaleIntercept, ModalityLUTSequence)"
    try:
        arr = apply_modality_lut(arr, ds)
        if voi != "none":
            step = ("the VOI LUT (VOILUTSequence)" if voi == "lut"
                    else "the window (WindowCenter/WindowWidth)")
            arr = apply_voi_lut(arr, ds, index=0)
        step = "the display range (BitsStored, PixelRepresentation)"
        lo, hi = _display_range(ds, voi)
    except Exception as exc:  # noqa: BLE001 - a safety net under _check_display's checks
        raise ValueError(f"cannot apply {step} of this DICOM file "
                         f"({type(exc).__name__}: {exc})") from None
    # In place: one float64 copy of the image at most (a 50 MP image is 400 MB of it).
    scaled = np.array(arr, dtype=np.float64, copy=arr.dtype != np.float64)
    if hi > lo:
        scaled -= lo
        scaled *= 255.0 / (hi - lo)
    else:
        scaled[...] = 0
    if not np.isfinite(scaled).all():
        raise ValueError("the DICOM display transform gives non-finite values: check "
                         f"{tag_name('RescaleSlope')}, {tag_name('RescaleIntercept')} and the "
                         "window")
    np.clip(scaled, 0, 255, out=scaled)
    gray = np.rint(scaled, out=scaled).astype(np.uint8)
    if photometric == "MONOCHROME1":  # low values are white
        np.subtract(255, gray, out=gray)
    return gray
