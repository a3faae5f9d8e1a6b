"""Make the files that once crashed the renderer, from pydicom's bundled files.

Each file here was found by tests/test_fuzz_files.py and reduced to one small
mutation of a bundled file. The files are committed; this script says exactly
how each was made and remakes them:

    .venv/bin/python tests/regressions/make_regressions.py

tests/test_regressions.py renders every one and checks the typed error it gets.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pydicom

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


MAKERS: dict[str, Callable[[], bytes]] = {
    "deflated_truncated.dcm": deflated_truncated,
    "rle_segment_panic.dcm": rle_segment_panic,
    "jpeg_rows_mismatch.dcm": jpeg_rows_mismatch,
    "patient_name_bad_vr.dcm": patient_name_bad_vr,
    "charset_huge_length.dcm": charset_huge_length,
    "multivalued_transfer_syntax.dcm": multivalued_transfer_syntax,
    "no_photometric_interpretation.dcm": no_photometric_interpretation,
    "offset_table_past_end.dcm": offset_table_past_end,
}


def main() -> int:
    for name, make in MAKERS.items():
        (HERE / name).write_bytes(make())
        print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
