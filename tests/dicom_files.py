"""Small DICOM files built by the tests for cases the bundled files lack."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def write_image(folder: Path, pixels: np.ndarray, name: str = "image.dcm", **attrs: Any) -> Path:
    """Write a single-frame grayscale (or RGB) image with the given attributes."""
    ds = image_dataset(pixels, **attrs)
    ds.PixelData = pixels.tobytes()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def image_dataset(pixels: np.ndarray, **attrs: Any) -> Dataset:
    """The dataset of a single-frame image shaped like `pixels`, without its Pixel Data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PatientName = "SECRET^PATIENT"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1 if pixels.ndim == 2 else pixels.shape[2]
    ds.PhotometricInterpretation = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def _explicit_le_element(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    header = struct.pack("<HH", group, element) + vr
    if vr in (b"OB", b"OW", b"UN"):
        return header + b"\0\0" + struct.pack("<I", len(value)) + value
    return header + struct.pack("<H", len(value)) + value


def _end_of_file_meta(body: bytes) -> int:
    """Offset of the first element after the group 0002 elements (explicit VR LE)."""
    position = 132
    while position + 8 <= len(body) and struct.unpack_from("<H", body, position)[0] == 0x0002:
        vr = body[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            position += 12 + struct.unpack_from("<I", body, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", body, position + 6)[0]
    return position


def with_transfer_syntax(source: Path, target: Path, uid: str) -> Path:
    """Copy `source` with its file meta rewritten to name another transfer syntax.

    pydicom refuses to write UIDs it does not know, so the meta group is built
    by hand (PS3.10 7.1: explicit VR little endian, with a group length).
    """
    meta = dcmread(source, force=True, stop_before_pixels=True).file_meta
    body = source.read_bytes()
    dataset = body[_end_of_file_meta(body) :]

    def ui(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\0" if len(raw) % 2 else raw

    elements = b"".join(
        [
            _explicit_le_element(2, 0x0001, b"OB", b"\0\1"),
            _explicit_le_element(2, 0x0002, b"UI", ui(meta.get("MediaStorageSOPClassUID", "1.2"))),
            _explicit_le_element(
                2, 0x0003, b"UI", ui(meta.get("MediaStorageSOPInstanceUID", "1.2"))
            ),
            _explicit_le_element(2, 0x0010, b"UI", ui(uid)),
        ]
    )
    length = _explicit_le_element(2, 0x0000, b"UL", struct.pack("<I", len(elements)))
    target.write_bytes(b"\0" * 128 + b"DICM" + length + elements + dataset)
    return target
