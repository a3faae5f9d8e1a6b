"""The codestream header checks: each parser, every real frame, and the refusals.

Valid streams are made by the real encoders (libjpeg-turbo, CharLS, OpenJPEG,
OpenJPH and libjxl through imagecodecs; pydicom's RLE encoder), then their
headers are mutated byte by byte. Every frame of the shared corpus and of
pydicom's bundled files must agree with its DICOM header.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import generate_uid

from codestream import StreamHeader, check_frame_stream, read_stream_header
from dicom_codecs import BY_UID
from dicom_dataset import ImagePixelModule, image_pixel_module, read_dataset
from errors import CorruptDicom, ServiceError, TooLarge, UnsupportedTransferSyntax
from tests.corpus import corpus_dir, corpus_required

BUDGET = 256 * 1024 * 1024
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS = "1.2.840.10008.1.2.4.80"
J2K = "1.2.840.10008.1.2.4.90"
HTJ2K = "1.2.840.10008.1.2.4.201"
RLE = "1.2.840.10008.1.2.5"
JPEG_XL = "1.2.840.10008.1.2.4.112"

GREY8 = (np.arange(64 * 48) % 251).astype(np.uint8).reshape(64, 48)
GREY12 = (np.arange(64 * 48) * 7 % 4096).astype(np.uint16).reshape(64, 48)
GREY16 = (np.arange(64 * 48) * 977 % 65536).astype(np.uint16).reshape(64, 48)
RGB8 = np.stack([GREY8, GREY8[::-1], 255 - GREY8], axis=-1)
# OpenJPEG keeps the smallest resolution at least 32 samples a side.
LARGE_RGB8 = np.zeros((256, 320, 3), np.uint8)


def pixel_module(
    rows: int = 64,
    columns: int = 48,
    samples: int = 1,
    bits_allocated: int = 8,
    bits_stored: int | None = None,
    photometric: str | None = None,
) -> ImagePixelModule:
    return ImagePixelModule(
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored or bits_allocated,
        pixel_representation=0,
        photometric_interpretation=photometric or ("RGB" if samples == 3 else "MONOCHROME2"),
        frames=1,
        is_float=False,
    )


def refused(syntax: str, stream: bytes, *words: str) -> str:
    """Assert that the header is refused as corrupt; return the message."""
    with pytest.raises(CorruptDicom) as caught:
        read_stream_header(syntax, stream)
    for word in words:
        assert word in caught.value.message
    return caught.value.message


# --- JPEG -------------------------------------------------------------------------


def segment_offset(stream: bytes, markers: set[int]) -> int:
    """Offset of the first marker segment (the FF byte) with one of `markers`."""
    position = 2
    while stream[position + 1] not in markers:
        position += 2 + struct.unpack_from(">H", stream, position + 2)[0]
    return position


def with_sof(stream: bytes, **fields: int) -> bytes:
    """`stream` with fields of its SOFn / SOF55 frame header replaced."""
    data = bytearray(stream)
    sof = segment_offset(stream, set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7})
    layout = {"marker": (sof + 1, "B"), "precision": (sof + 4, "B"), "rows": (sof + 5, ">H")}
    layout |= {"columns": (sof + 7, ">H"), "components": (sof + 9, "B")}
    for name, value in fields.items():
        offset, form = layout[name]
        struct.pack_into(form, data, offset, value)
    return bytes(data)


def insert_before(stream: bytes, markers: set[int], segment: bytes) -> bytes:
    at = segment_offset(stream, markers)
    return stream[:at] + segment + stream[at:]


def marker_segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


@pytest.mark.parametrize(
    ("encode", "expected"),
    [
        (lambda: imagecodecs.jpeg8_encode(GREY8), StreamHeader(64, 48, 1, 8)),
        (lambda: imagecodecs.jpeg8_encode(GREY12, bitspersample=12), StreamHeader(64, 48, 1, 12)),
        (lambda: imagecodecs.ljpeg_encode(GREY12, bitspersample=12), StreamHeader(64, 48, 1, 12)),
        (lambda: imagecodecs.ljpeg_encode(GREY16), StreamHeader(64, 48, 1, 16)),
        (lambda: imagecodecs.jpeg8_encode(RGB8), StreamHeader(64, 48, 3, 8)),
        (
            lambda: imagecodecs.jpeg8_encode(RGB8, colorspace="RGB", subsampling="422"),
            StreamHeader(64, 48, 3, 8),
        ),
    ],
    ids=["baseline", "extended-12", "lossless-12", "lossless-16", "colour", "colour-422"],
)
def test_jpeg_frame_header(encode: Callable[[], bytes], expected: StreamHeader) -> None:
    assert read_stream_header(JPEG_BASELINE, encode()) == expected
    assert read_stream_header("jpeg", encode()) == expected


def test_jpeg_skips_other_segments_and_fill_bytes() -> None:
    stream = imagecodecs.jpeg8_encode(GREY8)
    comment = marker_segment(0xFE, b"written by a test")
    restart = marker_segment(0xDD, b"\x00\x04")
    # B.1.1.2: any marker may be preceded by fill bytes (FF).
    stream = insert_before(stream, {0xC0}, comment + restart + b"\xff\xff")
    assert read_stream_header(JPEG_BASELINE, stream) == StreamHeader(64, 48, 1, 8)


@pytest.mark.parametrize("marker", [0xC1, 0xC2, 0xC9, 0xCA])
def test_jpeg_other_dct_frame_headers(marker: int) -> None:
    stream = with_sof(imagecodecs.jpeg8_encode(GREY8), marker=marker)
    assert read_stream_header(JPEG_BASELINE, stream) == StreamHeader(64, 48, 1, 8)


@pytest.mark.parametrize(
    ("mutation", "words"),
    [
        ({"rows": 0}, ["DNL"]),
        ({"columns": 0}, ["samples per line is 0"]),
        ({"components": 0}, ["0 components"]),
        ({"components": 4}, ["4 component specifications"]),
        ({"precision": 9}, ["precision 9"]),
        ({"precision": 16}, ["precision 16"]),
        ({"marker": 0xF7}, ["JPEG-LS"]),
    ],
)
def test_jpeg_refuses_impossible_frame_headers(mutation: dict[str, int], words: list[str]) -> None:
    refused(JPEG_BASELINE, with_sof(imagecodecs.jpeg8_encode(GREY8), **mutation), *words)


def test_jpeg_lossless_precision_range() -> None:
    stream = imagecodecs.ljpeg_encode(GREY12, bitspersample=12)
    assert read_stream_header(JPEG_LOSSLESS_SV1, with_sof(stream, precision=2)).precision == 2
    refused(JPEG_LOSSLESS_SV1, with_sof(stream, precision=17), "precision 17")
    refused(JPEG_LOSSLESS_SV1, with_sof(stream, precision=1), "precision 1")


def test_jpeg_refuses_broken_structure() -> None:
    stream = imagecodecs.jpeg8_encode(GREY8)
    sof = segment_offset(stream, {0xC0})
    sos = segment_offset(stream, {0xDA})
    refused(JPEG_BASELINE, b"", "SOI")
    refused(JPEG_BASELINE, b"\x00" + stream, "SOI")
    refused(JPEG_BASELINE, stream[: sof + 6], "past the end")
    refused(JPEG_BASELINE, stream[:sof], "ends before")
    refused(JPEG_BASELINE, stream[:sof] + stream[sos:], "before the frame header")
    refused(JPEG_BASELINE, stream[:sof] + b"\xff\xd9", "FFD9")
    refused(JPEG_BASELINE, stream[:sof] + b"\x12\x34" + stream[sof:], "not a marker")
    bad_length = bytearray(stream)
    struct.pack_into(">H", bad_length, sof + 2, 1)
    refused(JPEG_BASELINE, bytes(bad_length), "past the end")
    bad_sampling = bytearray(stream)
    bad_sampling[sof + 11] = 0x50  # H = 5
    refused(JPEG_BASELINE, bytes(bad_sampling), "sampling")


# --- JPEG-LS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (GREY8, StreamHeader(64, 48, 1, 8)),
        (GREY16, StreamHeader(64, 48, 1, 16)),
        (RGB8, StreamHeader(64, 48, 3, 8)),
    ],
    ids=["8-bit", "16-bit", "colour"],
)
def test_jpeg_ls_frame_header(pixels: np.ndarray, expected: StreamHeader) -> None:
    assert read_stream_header(JPEG_LS, imagecodecs.jpegls_encode(pixels)) == expected


def lse(kind: int, body: bytes) -> bytes:
    return marker_segment(0xF8, bytes([kind]) + body)


def test_jpeg_ls_lse_segments() -> None:
    stream = imagecodecs.jpegls_encode(GREY8)
    preset = lse(1, struct.pack(">5H", 255, 3, 7, 21, 64))
    assert read_stream_header(JPEG_LS, insert_before(stream, {0xDA}, preset)).precision == 8
    table = lse(2, bytes([5, 3]) + bytes(range(12)))
    continued = lse(3, bytes([5, 3]) + bytes(6))
    assert read_stream_header(JPEG_LS, insert_before(stream, {0xDA}, table + continued))
    # T.87 C.2.4.1.4: an image over 65535 a side gives its size in an LSE segment.
    oversize = lse(4, bytes([3]) + (70000).to_bytes(3, "big") + (5).to_bytes(3, "big"))
    big = insert_before(with_sof(stream, rows=0, columns=0), {0xDA}, oversize)
    assert read_stream_header(JPEG_LS, big) == StreamHeader(70000, 5, 1, 8)


@pytest.mark.parametrize(
    ("segment", "words"),
    [
        (lse(1, struct.pack(">4H", 255, 3, 7, 21)), ["13 bytes"]),
        (lse(1, struct.pack(">5H", 256, 3, 7, 21, 64)), ["MAXVAL 256"]),
        (lse(2, bytes([5, 3]) + bytes(13)), ["width 3"]),
        (lse(2, bytes([5, 0]) + bytes(4)), ["width 0"]),
        (lse(2, bytes([0, 1]) + bytes(4)), ["table 0"]),
        (lse(3, bytes([6, 1]) + bytes(4)), ["not defined"]),
        (lse(4, bytes([5]) + bytes(10)), ["oversize"]),
        (lse(4, bytes([2]) + bytes(3)), ["oversize"]),
        (lse(9, bytes(4)), ["type 9"]),
        (marker_segment(0xF8, b""), ["empty"]),
    ],
)
def test_jpeg_ls_refuses_bad_lse(segment: bytes, words: list[str]) -> None:
    stream = insert_before(imagecodecs.jpegls_encode(GREY8), {0xDA}, segment)
    refused(JPEG_LS, stream, *words)


def test_jpeg_ls_refuses_bad_frame_and_scan() -> None:
    stream = imagecodecs.jpegls_encode(GREY8)
    refused(JPEG_LS, with_sof(stream, rows=0), "size is 0")
    refused(JPEG_LS, with_sof(stream, precision=1), "precision 1")
    refused(JPEG_LS, with_sof(stream, precision=17), "precision 17")
    refused(JPEG_LS, with_sof(stream, marker=0xC3), "not JPEG-LS")
    refused(JPEG_LS, imagecodecs.jpeg8_encode(GREY8), "not JPEG-LS")
    sos = segment_offset(stream, {0xDA})
    undefined_table = bytearray(stream)
    undefined_table[sos + 6] = 7  # Tm1: mapping table 7
    refused(JPEG_LS, bytes(undefined_table), "mapping table 7")
    unknown_component = bytearray(stream)
    unknown_component[sos + 5] = 99
    refused(JPEG_LS, bytes(unknown_component), "component 99")
    interleave = bytearray(stream)
    interleave[sos + 8] = 3
    refused(JPEG_LS, bytes(interleave), "interleave mode 3")


# --- JPEG 2000 and HTJ2K ----------------------------------------------------------


@pytest.mark.parametrize(
    ("encode", "expected"),
    [
        (
            lambda: imagecodecs.jpeg2k_encode(GREY16, level=0, codecformat="J2K"),
            StreamHeader(64, 48, 1, 16, False, 2),
        ),
        (
            lambda: imagecodecs.jpeg2k_encode(GREY16, level=0, codecformat="JP2"),
            StreamHeader(64, 48, 1, 16, False, 2),
        ),
        (
            lambda: imagecodecs.jpeg2k_encode(
                GREY12.astype(np.int16) - 2048, level=0, codecformat="J2K", bitspersample=12
            ),
            StreamHeader(64, 48, 1, 12, True, 2),
        ),
        (
            lambda: imagecodecs.jpeg2k_encode(
                LARGE_RGB8, level=0, codecformat="J2K", resolutions=4
            ),
            StreamHeader(256, 320, 3, 8, False, 3),
        ),
        (lambda: imagecodecs.htj2k_encode(GREY16), StreamHeader(64, 48, 1, 16, False, 5)),
        (lambda: imagecodecs.htj2k_encode(RGB8), StreamHeader(64, 48, 3, 8, False, 5)),
    ],
    ids=["j2k", "jp2", "signed-12", "colour-3-levels", "htj2k", "htj2k-colour"],
)
def test_j2k_siz_and_levels(encode: Callable[[], bytes], expected: StreamHeader) -> None:
    assert read_stream_header(J2K, encode()) == expected
    assert read_stream_header(HTJ2K, encode()) == expected


def main_header_end(code: bytes) -> int:
    """Offset of the first SOT marker of a bare codestream."""
    position = 2
    while struct.unpack_from(">H", code, position)[0] != 0xFF90:
        position += 2 + struct.unpack_from(">H", code, position + 2)[0]
    return position


def coc(levels: int) -> bytes:
    # Ccoc 0, Scoc 0, SPcoc: levels, 64 x 64 code-blocks, style 0, 5-3 wavelet.
    return marker_segment(0x53, bytes([0, 0, levels, 4, 4, 0, 1]))


def test_j2k_levels_are_the_fewest_of_cod_and_coc() -> None:
    code = bytes(imagecodecs.jpeg2k_encode(LARGE_RGB8, level=0, codecformat="J2K", resolutions=5))
    end = main_header_end(code)
    assert read_stream_header(J2K, code).resolution_levels == 4
    assert read_stream_header(J2K, code[:end] + coc(1) + code[end:]).resolution_levels == 1
    # A tile-part header may override the levels for its tile (T.800 A.4.2).
    tile = bytearray(code[: end + 12] + coc(2) + code[end + 12 :])
    psot = struct.unpack_from(">I", tile, end + 6)[0]
    struct.pack_into(">I", tile, end + 6, psot + len(coc(2)))
    assert read_stream_header(J2K, bytes(tile)).resolution_levels == 2


def with_siz(code: bytes, **fields: int) -> bytes:
    """A bare codestream with SIZ fields replaced (T.800 A.5.1)."""
    data = bytearray(code)
    layout = {"lsiz": (4, ">H"), "xsiz": (8, ">I"), "ysiz": (12, ">I"), "xosiz": (16, ">I")}
    layout |= {"yosiz": (20, ">I"), "xtsiz": (24, ">I"), "ytsiz": (28, ">I")}
    layout |= {"xtosiz": (32, ">I"), "ytosiz": (36, ">I"), "csiz": (40, ">H")}
    layout |= {"ssiz": (42, "B"), "xrsiz": (43, "B"), "yrsiz": (44, "B")}
    for name, value in fields.items():
        offset, form = layout[name]
        struct.pack_into(form, data, offset, value)
    return bytes(data)


J2K_GREY = bytes(imagecodecs.jpeg2k_encode(GREY16, level=0, codecformat="J2K"))


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"csiz": 0}, ["Csiz 0"]),
        ({"csiz": 16385}, ["Csiz 16385"]),
        ({"csiz": 2}, ["Lsiz 41"]),
        ({"lsiz": 40}, ["truncated"]),
        ({"xsiz": 0}, ["empty"]),
        ({"xosiz": 48}, ["empty"]),
        ({"xtsiz": 0}, ["tile grid"]),
        ({"xtosiz": 5}, ["tile grid"]),
        ({"xtsiz": 1, "ytsiz": 1, "xsiz": 4000, "ysiz": 4000}, ["16000000 tiles"]),
        ({"xsiz": 0xFFFFFFFF}, ["impossible"]),
        ({"ssiz": 0x26}, ["precision 39"]),
        ({"xrsiz": 0}, ["subsampling"]),
    ],
)
def test_j2k_refuses_impossible_siz(fields: dict[str, int], words: list[str]) -> None:
    refused(J2K, with_siz(J2K_GREY, **fields), *words)


def test_j2k_refuses_broken_structure() -> None:
    end = main_header_end(J2K_GREY)
    cod = segment_offset_j2k(J2K_GREY, 0xFF52)
    refused(J2K, b"\xff\x4f\xff\x52" + J2K_GREY[4:], "SOC and SIZ")
    refused(J2K, J2K_GREY[:30], "truncated")
    refused(J2K, J2K_GREY[:end], "ends before the first tile")
    no_cod = bytearray(J2K_GREY)
    no_cod[cod + 1] = 0x64  # COD becomes a comment (COM)
    refused(J2K, bytes(no_cod), "no COD")
    many_levels = bytearray(J2K_GREY)
    many_levels[cod + 9] = 33
    refused(J2K, bytes(many_levels), "33 decomposition levels")
    huge_blocks = bytearray(J2K_GREY)
    huge_blocks[cod + 10] = 9
    refused(J2K, bytes(huge_blocks), "code-block")
    jp2 = bytes(imagecodecs.jpeg2k_encode(GREY16, level=0, codecformat="JP2"))
    refused(J2K, jp2.replace(b"jp2c", b"jp2x"), "no codestream")
    refused(J2K, jp2[:40], "no codestream")


def segment_offset_j2k(code: bytes, marker: int) -> int:
    position = 2
    while struct.unpack_from(">H", code, position)[0] != marker:
        position += 2 + struct.unpack_from(">H", code, position + 2)[0]
    return position


# --- RLE --------------------------------------------------------------------------


def rle_frame(pixels: np.ndarray) -> bytes:
    return RLELosslessEncoder.encode(
        pixels,
        rows=pixels.shape[0],
        columns=pixels.shape[1],
        samples_per_pixel=1 if pixels.ndim == 2 else pixels.shape[2],
        bits_allocated=pixels.dtype.itemsize * 8,
        bits_stored=pixels.dtype.itemsize * 8,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2" if pixels.ndim == 2 else "RGB",
        number_of_frames=1,
        planar_configuration=0,
    )


@pytest.mark.parametrize(
    ("pixels", "segments", "bits"),
    [(GREY8, 1, 8), (GREY16, 2, 16), (RGB8, 3, 8), (RGB8.astype(np.uint16) * 257, 6, 16)],
    ids=["grey-8", "grey-16", "rgb-8", "rgb-16"],
)
def test_rle_header(pixels: np.ndarray, segments: int, bits: int) -> None:
    stream = rle_frame(pixels)
    # An RLE header has no dimensions: one segment per byte of each sample.
    assert read_stream_header(RLE, stream) == StreamHeader(0, 0, segments, 8)
    samples = 1 if pixels.ndim == 2 else 3
    module = pixel_module(samples=samples, bits_allocated=bits)
    assert check_frame_stream(RLE, stream, module, BUDGET) == StreamHeader(64, 48, samples, bits)


def with_rle_header(stream: bytes, count: int | None = None, **offsets: int) -> bytes:
    data = bytearray(stream)
    if count is not None:
        struct.pack_into("<I", data, 0, count)
    for name, value in offsets.items():
        struct.pack_into("<I", data, 4 * int(name.removeprefix("offset")), value)
    return bytes(data)


RLE_RGB = rle_frame(RGB8)


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (RLE_RGB[:63], ["shorter than the header"]),
        (with_rle_header(RLE_RGB, 0), ["0 segments"]),
        (with_rle_header(RLE_RGB, 16), ["16 segments"]),
        (with_rle_header(RLE_RGB, 0xFFFFFFFF), ["4294967295 segments"]),
        (with_rle_header(RLE_RGB, offset1=60), ["byte 60, not 64"]),
        (with_rle_header(RLE_RGB, offset1=0), ["byte 0, not 64"]),
        (with_rle_header(RLE_RGB, offset3=64), ["segment 3"]),
        (with_rle_header(RLE_RGB, offset2=0xFFFFFF00), ["segment 2"]),
        (with_rle_header(RLE_RGB, offset3=len(RLE_RGB)), ["segment 3"]),
        (with_rle_header(RLE_RGB, 4), ["segment 4"]),
        (with_rle_header(RLE_RGB[:64], 1), ["last segment"]),
    ],
)
def test_rle_refuses_bad_offsets(stream: bytes, words: list[str]) -> None:
    refused(RLE, stream, *words)


def test_rle_segment_count_must_match_the_dicom_header() -> None:
    with pytest.raises(CorruptDicom, match=r"declares 3 segment.*SamplesPerPixel 1"):
        check_frame_stream(RLE, RLE_RGB, pixel_module(), BUDGET)
    with pytest.raises(CorruptDicom, match="needs 6"):
        check_frame_stream(RLE, RLE_RGB, pixel_module(samples=3, bits_allocated=16), BUDGET)
    with pytest.raises(CorruptDicom, match="BitsAllocated a multiple of 8"):
        check_frame_stream(RLE, rle_frame(GREY8), pixel_module(bits_allocated=1), BUDGET)
    with pytest.raises(TooLarge):
        check_frame_stream(RLE, RLE_RGB, pixel_module(samples=3), 64 * 48 * 3 - 1)


# --- JPEG XL ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (GREY8, StreamHeader(64, 48, 1, 8)),
        (GREY16, StreamHeader(64, 48, 1, 16)),
        (RGB8, StreamHeader(64, 48, 3, 8)),
        (np.zeros((5, 3, 4), np.uint8), StreamHeader(5, 3, 3, 8)),  # alpha is not a component
        (np.zeros((96, 128), np.uint8), StreamHeader(96, 128, 1, 8)),  # 4:3 ratio code
        (np.zeros((720, 1280), np.uint8), StreamHeader(720, 1280, 1, 8)),  # 16:9
        (np.zeros((3000, 7), np.uint8), StreamHeader(3000, 7, 1, 8)),
        (np.zeros((1, 70000), np.uint8), StreamHeader(1, 70000, 1, 8)),
    ],
    ids=["grey-8", "grey-16", "colour", "alpha", "4:3", "16:9", "tall", "wide"],
)
def test_jpeg_xl_size_header(pixels: np.ndarray, expected: StreamHeader) -> None:
    assert read_stream_header(JPEG_XL, imagecodecs.jpegxl_encode(pixels)) == expected


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


JXL_SIGNATURE = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
JXL_FTYP = box(b"ftyp", b"jxl \x00\x00\x00\x00jxl ")


def test_jpeg_xl_container_boxes() -> None:
    code = bytes(imagecodecs.jpegxl_encode(GREY8))
    assert code.startswith(b"\xff\x0a")
    whole = JXL_SIGNATURE + JXL_FTYP + box(b"jxlc", code)
    assert read_stream_header(JPEG_XL, whole) == StreamHeader(64, 48, 1, 8)
    # The codestream split over partial boxes, the header itself cut in two.
    parts = box(b"jxlp", b"\0\0\0\0" + code[:3]) + box(b"jxlp", b"\x80\0\0\1" + code[3:])
    assert read_stream_header(JPEG_XL, JXL_SIGNATURE + JXL_FTYP + parts).rows == 64
    refused(JPEG_XL, JXL_SIGNATURE + JXL_FTYP, "no codestream")
    refused(JPEG_XL, b"\xff\xd8\xff\xe0", "neither")
    refused(JPEG_XL, code[:3], "truncated")
    refused(JPEG_XL, imagecodecs.jpegxl_encode(np.zeros((8, 8), np.float32)), "floating-point")


# --- check_frame_stream -----------------------------------------------------------


def test_check_returns_the_stream_header_when_it_agrees() -> None:
    stream = imagecodecs.jpeg8_encode(GREY12, bitspersample=12)
    module = pixel_module(bits_allocated=16, bits_stored=12)
    assert check_frame_stream(JPEG_BASELINE, stream, module, BUDGET) == StreamHeader(64, 48, 1, 12)
    # pydicom follows the stream's precision when it differs from BitsStored.
    j2k = imagecodecs.jpeg2k_encode(GREY12, level=0, codecformat="J2K", bitspersample=12)
    assert check_frame_stream(J2K, j2k, pixel_module(bits_allocated=16), BUDGET).precision == 12
    colour = imagecodecs.jpeg8_encode(RGB8)
    ybr = pixel_module(samples=3, photometric="YBR_FULL_422")
    assert check_frame_stream(JPEG_BASELINE, colour, ybr, BUDGET).components == 3


def test_check_names_what_disagrees() -> None:
    stream = imagecodecs.jpeg8_encode(GREY8)
    with pytest.raises(CorruptDicom) as caught:
        check_frame_stream(
            JPEG_BASELINE,
            with_sof(stream, rows=20000, columns=20000),
            pixel_module(512, 512),
            BUDGET,
        )
    assert caught.value.status == 422
    assert "JPEG frame header claims 20000 x 20000" in caught.value.message
    assert "the DICOM header 512 x 512" in caught.value.message
    with pytest.raises(CorruptDicom, match=r"3 component.*SamplesPerPixel 1"):
        check_frame_stream(JPEG_BASELINE, imagecodecs.jpeg8_encode(RGB8), pixel_module(), BUDGET)
    with pytest.raises(CorruptDicom, match=r"12-bit samples.*BitsAllocated 8"):
        check_frame_stream(
            JPEG_BASELINE,
            imagecodecs.jpeg8_encode(GREY12, bitspersample=12),
            pixel_module(),
            BUDGET,
        )
    with pytest.raises(CorruptDicom, match="SIZ marker claims 64 x 40"):
        module = pixel_module(bits_allocated=16)
        check_frame_stream(J2K, with_siz(J2K_GREY, xsiz=40), module, BUDGET)


def test_check_refuses_a_stream_over_the_budget() -> None:
    stream = with_sof(imagecodecs.jpeg8_encode(GREY8), rows=20000, columns=20000)
    module = pixel_module(20000, 20000)
    with pytest.raises(TooLarge) as caught:
        check_frame_stream(JPEG_BASELINE, stream, module, BUDGET)
    assert caught.value.status == 413
    assert "20000 x 20000 x 1" in caught.value.message
    assert str(BUDGET) not in caught.value.message  # a setting's value is never echoed
    assert check_frame_stream(JPEG_BASELINE, stream, module, 20000 * 20000).rows == 20000
    with pytest.raises(TooLarge):
        check_frame_stream(J2K, J2K_GREY, pixel_module(bits_allocated=16), 64 * 48 * 2 - 1)


def test_syntaxes_without_a_codestream_are_refused() -> None:
    for uid in ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.100", "1.2.3.4"):
        with pytest.raises(UnsupportedTransferSyntax):
            read_stream_header(uid, b"")


# --- Real frames: every one agrees with its DICOM header --------------------------


def _encapsulated_files() -> list[Path]:
    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    paths = sorted(folder.rglob("*.dcm")) + sorted(corpus_dir().glob("*.dcm"))
    return [path for path in paths if _family(path) not in (None, "native", "video")]


def _family(path: Path) -> str | None:
    try:
        meta = pydicom.dcmread(path, force=True, stop_before_pixels=True).file_meta
    except Exception:  # not DICOM at all: nothing to parse here
        return None
    row = BY_UID.get(str(meta.get("TransferSyntaxUID", "")))
    return row.family if row is not None else None


# Files whose frames are known to be broken: they do not render today either.
BROKEN_FRAMES = {"JPEG2000-embedded-sequence-delimiter.dcm": "impossible"}


@pytest.mark.parametrize("path", _encapsulated_files(), ids=lambda path: path.name)
def test_every_real_frame_agrees_with_its_dicom_header(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = read_dataset(path, BUDGET)
            uid = str(ds.file_meta.TransferSyntaxUID)
            module = image_pixel_module(ds, BUDGET)
        except ServiceError as exc:
            pytest.skip(f"refused before any frame: {exc.message}")
        frames = list(generate_frames(ds.PixelData, number_of_frames=module.frames))
    assert len(frames) == module.frames
    for frame in frames:
        if path.name in BROKEN_FRAMES:
            with pytest.raises(CorruptDicom, match=BROKEN_FRAMES[path.name]):
                check_frame_stream(uid, frame, module, BUDGET)
            continue
        header = check_frame_stream(uid, frame, module, BUDGET)
        assert (header.rows, header.columns) == (module.rows, module.columns)
        assert header.components == module.samples_per_pixel
        assert header.precision <= module.bits_allocated


def test_the_corpus_is_covered() -> None:
    if not (corpus_dir() / "MANIFEST.tsv").exists():
        if corpus_required():
            pytest.fail("the shared corpus is required (DICOM_CORPUS_REQUIRED)")
        pytest.skip("shared corpus absent")
    names = {path.name for path in _encapsulated_files()}
    assert {"GH133.dcm", "HTJ2KLossless_08_RGB.dcm", "will-jxl.dcm", "CT1_JLSN.dcm"} <= names


# --- The regression: a 1 KB file claiming a 20000 x 20000 frame -------------------


def small_jpeg_file(folder: Path, rows: int, columns: int) -> Path:
    """A JPEG Baseline file whose SOF claims 20000 x 20000 (the stream holds 8 x 8)."""
    tiny = imagecodecs.jpeg8_encode(np.zeros((8, 8), np.uint8))
    stream = with_sof(tiny, rows=20000, columns=20000)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG_BASELINE
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    path = folder / "claims-20000.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_small_file_claiming_a_huge_frame_is_refused(tmp_path: Path) -> None:
    path = small_jpeg_file(tmp_path, 512, 512)
    assert path.stat().st_size < 1100
    ds = read_dataset(path, BUDGET)
    module = image_pixel_module(ds, BUDGET)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    with pytest.raises(CorruptDicom, match="claims 20000 x 20000"):
        check_frame_stream(JPEG_BASELINE, frame, module, BUDGET)
    # With a DICOM header that agrees, the budget refuses it.
    matching = small_jpeg_file(tmp_path, 20000, 20000)
    ds = read_dataset(matching, BUDGET)
    with pytest.raises(TooLarge):
        image_pixel_module(ds, BUDGET)
    with pytest.raises(TooLarge):
        check_frame_stream(JPEG_BASELINE, frame, pixel_module(20000, 20000), BUDGET)
