"""Bounded reading, the Image Pixel Module, decoding and the embedded JPEG checks."""

from __future__ import annotations

import io
import signal
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from dicom_dataset import (
    _check_deflated_size,
    check_pixel_data_length,
    decode_frame,
    embedded_jpeg_frame,
    image_pixel_module,
    jpeg_decodes,
    jpeg_frame_header,
    parse_error_text,
    read_dataset,
    transfer_syntax,
)
from errors import CorruptDicom, NoPixelData, TooLarge, UnsupportedTransferSyntax
from tests.corpus import bundled_file
from tests.dicom_files import with_transfer_syntax, write_image

BUDGET = 256 * 1024 * 1024


def jpeg_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), "red" if mode == "RGB" else 128).save(buffer, "JPEG")
    return buffer.getvalue()


def test_read_defers_pixel_data_and_gives_raw_files_a_syntax(tmp_path: Path) -> None:
    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8)
    ds = read_dataset(write_image(tmp_path, pixels), BUDGET)
    module = image_pixel_module(ds, BUDGET)
    assert (module.rows, module.columns, module.frames, module.bits_allocated) == (8, 8, 1, 16)
    assert module.native_length == 128 == module.frame_bytes
    assert transfer_syntax(ds) == "1.2.840.10008.1.2.1"
    assert np.array_equal(decode_frame(ds, 0, module), pixels)


def test_pixel_budget_is_checked_before_decoding(tmp_path: Path) -> None:
    ds = read_dataset(write_image(tmp_path, np.zeros((8, 8), np.uint16)), BUDGET)
    with pytest.raises(TooLarge, match=r"MAX_PIXEL_BYTES \(127\)"):
        image_pixel_module(ds, 127)
    assert image_pixel_module(ds, 128).frame_bytes == 128


def test_deflate_bomb_names_the_setting(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    # 18 MiB of zeros: more than the 16 MiB of headroom the header gets beyond the budget.
    path = write_image(tmp_path, np.zeros((3072, 3072), np.uint16))
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    with pytest.raises(TooLarge, match=r"MAX_PIXEL_BYTES is 1000\)"):
        read_dataset(path, 1000)
    assert read_dataset(path, BUDGET).Rows == 3072


@contextmanager
def fails_after(seconds: int) -> Iterator[None]:
    """Turn a hang into a test failure."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_deflate_check_stops_at_the_end_of_the_stream(tmp_path: Path) -> None:
    # A pad byte after the deflate stream, reached just after a full 1 MiB step:
    # zlib then keeps handing the pad byte back as the unconsumed tail.
    deflater = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = deflater.compress(bytes(1024 * 1024 + 1000)) + deflater.flush() + b"\0"
    syntax = b"1.2.840.10008.1.2.1.99\0"
    meta = struct.pack("<HH2sH", 2, 0x0010, b"UI", len(syntax)) + syntax
    path = tmp_path / "deflated.dcm"
    path.write_bytes(bytes(128) + b"DICM" + meta + body)
    with fails_after(10):
        _check_deflated_size(path, BUDGET)


def test_no_pixel_data_names_the_sop_class() -> None:
    ds = read_dataset(bundled_file("rtplan.dcm"), BUDGET)
    with pytest.raises(NoPixelData, match="RT Plan"):
        image_pixel_module(ds, BUDGET)


def test_short_native_pixel_data_is_truncated(tmp_path: Path) -> None:
    path = write_image(tmp_path, np.zeros((8, 8), np.uint16))
    ds = read_dataset(path, BUDGET)
    ds.Rows = 9
    with pytest.raises(CorruptDicom, match="128 bytes for 1 frame"):
        check_pixel_data_length(ds, image_pixel_module(ds, BUDGET))


def test_unknown_syntax_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    path = with_transfer_syntax(bundled_file("CT_small.dcm"), tmp_path / "x.dcm", "1.2.3.4")
    with pytest.raises(UnsupportedTransferSyntax, match=r"1\.2\.3\.4 \(unknown\).*RLE Lossless"):
        transfer_syntax(read_dataset(path, BUDGET))


def test_embedded_jpeg_frame_is_the_stream_itself() -> None:
    ds = read_dataset(bundled_file("SC_rgb_jpeg_dcmtk.dcm"), BUDGET)
    module = image_pixel_module(ds, BUDGET)
    stream = embedded_jpeg_frame(ds, 0, module)
    assert stream is not None and stream.endswith(b"\xff\xd9")
    assert Image.open(io.BytesIO(stream)).size == (module.columns, module.rows)


def test_embedded_jpeg_frame_only_for_baseline_colour() -> None:
    ds = read_dataset(bundled_file("SC_rgb_rle.dcm"), BUDGET)
    assert embedded_jpeg_frame(ds, 0, image_pixel_module(ds, BUDGET)) is None


def test_jpeg_frame_header_reads_the_sof_segment() -> None:
    assert jpeg_frame_header(jpeg_bytes(33, 17)) == (8, 17, 33, 3)
    assert jpeg_frame_header(jpeg_bytes(5, 6, "L")) == (8, 6, 5, 1)
    assert jpeg_frame_header(b"\xff\xd8\xff\xda\x00\x02") is None  # scan before any frame
    assert jpeg_frame_header(b"\xff\xd8garbage") is None


def test_jpeg_decodes_refuses_a_damaged_stream() -> None:
    stream = jpeg_bytes(64, 64)
    assert jpeg_decodes(stream)
    assert not jpeg_decodes(stream[: len(stream) // 3])


def test_parse_error_text_drops_quoted_values() -> None:
    error = ValueError("bad value 'SECRET^PATIENT' in \"Name\"\nsecond line")
    assert parse_error_text(error) == "bad value '…' in '…'"


def test_only_rendered_attributes_are_converted(tmp_path: Path) -> None:
    # A malformed value the renderer never reads (here an unknown VR in a
    # private group, which pydicom cannot convert) does not stop a render, while
    # the attributes it reads are converted on reading.
    from pydicom.dataelem import RawDataElement

    path = write_image(tmp_path, np.arange(16, dtype=np.uint8).reshape(4, 4))
    ds = dcmread(path)
    ds.add_new(0x00091010, "LO", "PRIVATE")
    ds.save_as(path)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(b"\x09\x00\x10\x10LO")
    data[at + 4 : at + 6] = b"P\x00"
    path.write_bytes(bytes(data))
    read = read_dataset(path, BUDGET)
    assert isinstance(read._dict[0x00091010], RawDataElement)
    assert not isinstance(read._dict[0x00280010], RawDataElement)
    assert not isinstance(read._dict[0x00100010], RawDataElement)
    module = image_pixel_module(read, BUDGET)
    assert decode_frame(read, 0, module).shape == (4, 4)


def test_every_metadata_attribute_is_converted_on_reading() -> None:
    from pydicom.datadict import tag_for_keyword

    from dicom_converter import METADATA_TAGS
    from dicom_dataset import is_rendered_tag

    for keyword in METADATA_TAGS:
        assert is_rendered_tag(tag_for_keyword(keyword)), keyword
