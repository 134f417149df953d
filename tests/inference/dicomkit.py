"""Build real DICOM files (pydicom) from real sample X-rays, for the decoding and serving tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def gray_of(path: Path) -> np.ndarray:
    """A sample image as the 8-bit grayscale array `open_image` + `to_gray8` gives."""
    from pneumonia.dataset.images import open_image, to_gray8

    return np.asarray(to_gray8(open_image(path.read_bytes())))


def dicom_bytes(
    pixels: np.ndarray | None,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    **elements: object,
) -> bytes:
    """A DICOM Part 10 file (explicit VR little endian, uncompressed) holding `pixels` (uint8 or
    uint16, one frame); `pixels=None` gives a file without pixel data. Extra `elements` (e.g.
    WindowCenter=..., RescaleSlope=...) are set on the dataset."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "test"
    if pixels is not None:
        bits = pixels.dtype.itemsize * 8
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = bits
        ds.BitsStored = bits_stored or bits
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 0
        ds.PixelData = np.ascontiguousarray(pixels).astype(f"<u{bits // 8}").tobytes()
    for key, value in elements.items():
        setattr(ds, key, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicom16_of(gray: np.ndarray, monochrome1: bool = False) -> bytes:
    """The 8-bit image as a 16-bit DICOM (v * 257 fills 0..65535), optionally MONOCHROME1
    (stored inverted): both decode back to exactly `gray`."""
    values = gray.astype(np.uint16) * 257
    if monochrome1:
        return dicom_bytes(65535 - values, "MONOCHROME1")
    return dicom_bytes(values, "MONOCHROME2")


def png_bytes(gray: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(gray, "L").save(out, format="PNG")
    return out.getvalue()


def deflated(data: bytes) -> bytes:
    """The same DICOM file in the Deflated Explicit VR Little Endian transfer syntax."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dicom_bomb(rows: int, columns: int, frames: int = 1, trailing_zeros: int = 0) -> bytes:
    """A deflated 16-bit DICOM of rows x columns (x frames) zero pixels, a few hundred kB on disk
    however many pixels it announces: written as a stream (the pixels never exist in memory),
    as a hostile sender would. `trailing_zeros` adds bytes after the pixel data that the header
    does not announce (a bomb hidden behind a small header)."""
    import struct
    import zlib

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "bomb"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    nbytes = rows * columns * frames * 2
    # (7FE0,0010) OW, 2 reserved bytes, 32-bit length: then the pixel bytes
    element = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, nbytes)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [deflate.compress(body.getvalue() + element)]
    chunk = bytes(1 << 22)
    left = nbytes + trailing_zeros
    while left:
        parts.append(deflate.compress(chunk[: min(left, len(chunk))]))
        left -= min(left, len(chunk))
    parts.append(deflate.flush())
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    return head.getvalue() + b"".join(parts)


def _with(data: bytes, edit) -> bytes:
    """`data` re-saved after `edit(dataset)`."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    edit(ds)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _as_vr(data: bytes, tag: int, vr: bytes) -> bytes:
    """Rewrite the VR of `tag` (written as LO) in explicit-VR little-endian bytes: how a hostile
    file gets text into a numeric attribute (pydicom refuses to write 'abc' as a DS)."""
    raw = tag.to_bytes(4, "big")
    key = raw[1::-1] + raw[3:1:-1]  # group, element: little endian
    assert data.count(key + b"LO") == 1
    return data.replace(key + b"LO", key + vr)


def _lut_item(descriptor: list[int] | None, entries: int | None):
    from pydicom.dataset import Dataset

    item = Dataset()
    if descriptor is not None:
        item.add_new(0x00283002, "US", descriptor)  # LUTDescriptor
    if entries is not None:
        item.add_new(0x00283006, "US", list(range(entries)))  # LUTData
    return item


def hostile_dicoms() -> dict[str, tuple[bytes, str]]:
    """DICOM files whose display attributes pydicom cannot use: name -> (file, the attribute the
    error must name). Each is a valid 12-bit 64 x 64 image otherwise."""
    from pydicom.sequence import Sequence

    base = dicom_bytes(np.arange(4096, dtype=np.uint16).reshape(64, 64), bits_stored=12,
                       WindowWidth=1024)
    text_center = _with(base, lambda ds: ds.add_new(0x00281050, "LO", "abc"))

    def voi(descriptor, entries):
        return _with(base, lambda ds: setattr(
            ds, "VOILUTSequence", Sequence([_lut_item(descriptor, entries)])))

    def modality(descriptor, entries):
        return _with(base, lambda ds: setattr(
            ds, "ModalityLUTSequence", Sequence([_lut_item(descriptor, entries)])))

    def setting(**values):
        return _with(base, lambda ds: [setattr(ds, k, v) for k, v in values.items()])

    slope = _with(base, lambda ds: (ds.add_new(0x00281053, "LO", "steep"),
                                    setattr(ds, "RescaleIntercept", 0)))
    frames = _with(base, lambda ds: ds.add_new(0x00280008, "LO", "many"))
    return {
        "text_window_center": (_as_vr(text_center, 0x00281050, b"DS"), "WindowCenter (0028,1050)"),
        "voi_lut_without_descriptor": (voi(None, 16), "LUTDescriptor (0028,3002)"),
        "voi_lut_without_data": (voi([16, 0, 12], None), "LUTData (0028,3006)"),
        "voi_lut_data_short": (voi([4096, 0, 12], 16), "LUTData (0028,3006)"),
        "voi_lut_depth_60": (voi([16, 0, 60], 16), "LUTDescriptor (0028,3002)"),
        "modality_lut_without_descriptor": (modality(None, 16), "LUTDescriptor (0028,3002)"),
        "zero_window_width": (setting(WindowCenter=2048, WindowWidth=0),
                              "WindowWidth (0028,1051)"),
        "unknown_voi_function": (setting(WindowCenter=2048, VOILUTFunction="CUBIC"),
                                 "VOILUTFunction (0028,1056)"),
        "text_rescale_slope": (_as_vr(slope, 0x00281053, b"DS"), "RescaleSlope (0028,1053)"),
        "text_frame_count": (_as_vr(frames, 0x00280008, b"IS"), "NumberOfFrames (0028,0008)"),
        "bits_stored_over_allocated": (setting(BitsStored=20), "BitsStored (0028,0101)"),
    }
