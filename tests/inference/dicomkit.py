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
