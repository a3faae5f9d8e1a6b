"""Make the files that once crashed the renderer or ran away with its memory.

Most were found by tests/test_fuzz_files.py and reduced to one small mutation
of a bundled pydicom file; the lookup-table files are 8 x 8 images built here,
each with one fault in its LUT. The files are committed; this script says
exactly how each was made and remakes them:

    .venv/bin/python tests/regressions/make_regressions.py

tests/test_regressions.py renders every one and checks the typed error it gets.
"""

from __future__ import annotations

import io
import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.corpus import bundled_file  # noqa: E402
from tests.dicom_files import with_transfer_syntax  # noqa: E402


def value_offset(data: bytes, tag: int) -> int:
    """Offset of the value of top-level element `tag` in a file's bytes."""
    import io

    ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=0)
    return int(ds._dict[tag].value_tell)


def deflated_truncated() -> bytes:
    # zlib.error from pydicom's inflate of a cut deflated stream.
    data = bundled_file("image_dfl.dcm").read_bytes()
    return data[: len(data) // 2]


def rle_segment_panic() -> bytes:
    # pylibjpeg-rle's Rust decoder panics (a BaseException) on these segments.
    data = bytearray(bundled_file("MR_small_RLE.dcm").read_bytes())
    start = value_offset(bytes(data), 0x7FE00010)
    rng = random.Random(1)
    for _ in range(2):  # the second mutation of the fuzzing loop that found it
        data = bytearray(bundled_file("MR_small_RLE.dcm").read_bytes())
        for _ in range(rng.randint(1, 16)):
            position = rng.randint(start, len(data) - 1)
            data[position] = rng.randint(0, 255)
    return bytes(data)


def jpeg_rows_mismatch() -> bytes:
    # Rows says 1, the embedded JPEG is 100 x 100: once returned unchanged.
    data = bytearray(bundled_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    struct.pack_into("<H", data, value_offset(bytes(data), 0x00280010), 1)
    return bytes(data)


def patient_name_bad_vr() -> bytes:
    # An unknown VR raised NotImplementedError when the metadata was read.
    data = bytearray(bundled_file("MR_small.dcm").read_bytes())
    offset = value_offset(bytes(data), 0x00100010)
    data[offset - 4 : offset - 2] = b"\x50\x00"
    return bytes(data)


def charset_huge_length() -> bytes:
    # Specific Character Set is never deferred: pydicom read 3 GiB for it.
    data = bytearray(bundled_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    # pydicom converts this element at once, so its offset is found in the bytes.
    offset = bytes(data).index(b"\x08\x00\x05\x00CS") + 8
    data[offset - 4 : offset - 2] = b"UN"  # a 4-byte length field follows UN
    data[offset - 2 : offset] = b"\0\0"
    data[offset : offset + 4] = struct.pack("<I", 0xC0000000)
    return bytes(data)


def multivalued_transfer_syntax() -> bytes:
    # A backslash makes the Transfer Syntax UID two values.
    source = bundled_file("MR_small.dcm")
    target = HERE / "_scratch.dcm"
    try:
        return with_transfer_syntax(source, target, "1.2.840.10008.1.2.1\\1.2").read_bytes()
    finally:
        target.unlink(missing_ok=True)


def no_photometric_interpretation() -> bytes:
    # Renaming the tag removed Photometric Interpretation; the length check needed it.
    data = bytearray(bundled_file("MR_small.dcm").read_bytes())
    offset = value_offset(bytes(data), 0x00280004)
    data[offset - 8 : offset - 4] = struct.pack("<HH", 0x0028, 0x0005)
    return bytes(data)


def offset_table_past_end() -> bytes:
    # A Basic Offset Table length of 0xFFFFFFF0: struct.error in pydicom's get_frame.
    data = bytearray(bundled_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    bot = value_offset(bytes(data), 0x7FE00010)
    struct.pack_into("<I", data, bot + 4, 0xFFFFFFF0)
    return bytes(data)


# Lookup-table files, built from scratch: each is a small image whose only fault
# is in its LUT (PS3.3 C.7.6.3.1.5 palettes, C.7.9.2 segments, C.11 Modality/VOI).


def small_image(photometric: str, bits: int = 8, **attrs: object) -> Dataset:
    """An 8 x 8 native image with a ramp of stored values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.PixelData = struct.pack(f"<64{ {8: 'B', 16: 'H', 32: 'I'}[bits] }", *range(0, 256, 4))
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def with_palette(ds: Dataset, descriptor: list[int], data: bytes | None = None) -> Dataset:
    """Red, Green and Blue palette tables: one descriptor, and plain 8-bit data."""
    for colour, tag in (("Red", 0x00281201), ("Green", 0x00281202), ("Blue", 0x00281203)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", descriptor)
        if data is not None:
            ds.add_new(tag, "OW", data)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def segmented_lut_bomb() -> bytes:
    # 1.1 KB of C.7.9.2 linear segments, each 65,535 entries long: 12 million
    # entries per colour, which pydicom expanded into lists of Python ints.
    words = [0, 1, 0] + [1, 65535, 65535, 1, 65535, 0] * 90
    segments = struct.pack(f"<{len(words)}H", *words)
    ds = with_palette(small_image("PALETTE COLOR"), [0, 0, 16])
    for tag in (0x00281221, 0x00281222, 0x00281223):  # Segmented R, G, B LUT Data
        ds.add_new(tag, "OW", segments)
    return to_bytes(ds)


def palette_descriptor_one_value() -> bytes:
    ds = with_palette(small_image("PALETTE COLOR"), [256, 0, 8], bytes(range(256)))
    ds.RedPaletteColorLookupTableDescriptor = 256
    return to_bytes(ds)


def palette_descriptor_24_bits() -> bytes:
    return to_bytes(with_palette(small_image("PALETTE COLOR"), [256, 0, 24], bytes(768)))


def modality_lut_descriptor_one_value() -> bytes:
    item = Dataset()
    item.LUTDescriptor = [256]
    item.add_new(0x00283006, "US", list(range(256)))  # LUT Data
    return to_bytes(small_image("MONOCHROME2", ModalityLUTSequence=DicomSequence([item])))


def lut_data_not_numbers() -> bytes:
    # VOI LUT Data written with VR LO: pydicom reads text, which the LUT indexed.
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "LO", ["abc", "def"])
    return to_bytes(small_image("MONOCHROME2", VOILUTSequence=DicomSequence([item])))


def palette_32_bit() -> bytes:
    # A 32-bit index makes pydicom's palette domain 2^32 entries.
    return to_bytes(with_palette(small_image("PALETTE COLOR", 32), [256, 0, 8], bytes(range(256))))


def palette_alpha() -> bytes:
    # An Alpha Palette Color LUT made the palette RGBA; the output is RGB.
    ds = with_palette(small_image("PALETTE COLOR"), [256, 0, 8], bytes(range(256)))
    ds.add_new(0x00281204, "OW", bytes(255 - v for v in range(256)))
    return to_bytes(ds)


def rescale_slope_overflow() -> bytes:
    # Stored values of 2 and more times 1e308 overflow to infinity.
    return to_bytes(small_image("MONOCHROME2", 16, RescaleSlope="1e308", RescaleIntercept="0"))


MAKERS: dict[str, Callable[[], bytes]] = {
    "deflated_truncated.dcm": deflated_truncated,
    "rle_segment_panic.dcm": rle_segment_panic,
    "jpeg_rows_mismatch.dcm": jpeg_rows_mismatch,
    "patient_name_bad_vr.dcm": patient_name_bad_vr,
    "charset_huge_length.dcm": charset_huge_length,
    "multivalued_transfer_syntax.dcm": multivalued_transfer_syntax,
    "no_photometric_interpretation.dcm": no_photometric_interpretation,
    "offset_table_past_end.dcm": offset_table_past_end,
    "segmented_lut_bomb.dcm": segmented_lut_bomb,
    "palette_descriptor_one_value.dcm": palette_descriptor_one_value,
    "palette_descriptor_24_bits.dcm": palette_descriptor_24_bits,
    "modality_lut_descriptor_one_value.dcm": modality_lut_descriptor_one_value,
    "lut_data_not_numbers.dcm": lut_data_not_numbers,
    "palette_32_bit.dcm": palette_32_bit,
    "palette_alpha.dcm": palette_alpha,
    "rescale_slope_overflow.dcm": rescale_slope_overflow,
}


def main() -> int:
    for name, make in MAKERS.items():
        (HERE / name).write_bytes(make())
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
