"""Mutated DICOM files: the renderer answers with an image or a typed 4xx error.

Real files (pydicom's bundled ones, plus the shared corpus when present) are
mutated with Hypothesis: byte flips in the header and in the pixel data,
truncation at element boundaries, absurd Rows/Columns/NumberOfFrames/
BitsAllocated values, huge element lengths, wrong transfer syntax UIDs, and
broken encapsulated fragments or Basic Offset Tables. The codestream headers
inside the frames are mutated too (JPEG and JPEG-LS SOF dimensions, component
counts and precision; JPEG 2000 SIZ and COD fields; RLE segment counts and
offsets; JPEG XL size headers), and so are LUTs: descriptors, LUT data of the
wrong type or length, segmented palettes, palettes over 16 bits, alpha LUTs.

Each case must either render to a decodable image or raise a ServiceError with
a 4xx status. Anything else (a crash, a bare exception, a 5xx) fails. Every
render runs in a worker process whose address space is capped
(``ADDRESS_SPACE``), so an allocation driven by a size the file merely claims
fails the test with MemoryError instead of passing quietly, and a crash in a
codec fails the test instead of killing the test run.

The default run is short (``EXAMPLES`` per property test); ``FUZZ_EXAMPLES=N``
sets the count, ``ADVERSARIAL_LONG=1`` raises it, and ``make fuzz`` runs
50,000 per test.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import generate_uid

from tests.corpus import PROJECT, bundled_file, corpus_dir, env_flag
from tests.dicom_files import with_transfer_syntax

LONG = env_flag("ADVERSARIAL_LONG")
# Cases per property test: FUZZ_EXAMPLES, else (default run, ADVERSARIAL_LONG=1).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0")) or (5000 if LONG else 150)
# The render worker's whole address space: a 1 GB Lambda function's order of size.
ADDRESS_SPACE = 1536 * 1024**2
# A render that takes longer than this is a hang, not a slow case.
CASE_TIMEOUT = 120

BUNDLED_SEEDS = (
    "CT_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_ybr_full_422_uncompressed.dcm",
    "liver_1frame.dcm",
    "image_dfl.dcm",
    "rtdose_1frame.dcm",
)
CORPUS_SEEDS = (
    "CR-MONO1-10-chest.dcm",
    "GH064.dcm",
    "JLSL_16_15_1_1F.dcm",
    "NM-MONO2-16-13x-heart.dcm",
    "TestPattern_Palette_16.dcm",
    "parametric_map_float.dcm",
)
SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.112",
    "1.2.3.4",
)
US_TAGS = {
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
    0x00280101: "BitsStored",
    0x00280002: "SamplesPerPixel",
}
LONG_LENGTH_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


@dataclass(frozen=True)
class Element:
    tag: int
    vr: str | None
    value_offset: int
    length: int


# Encapsulated files whose frame headers are mutated: one or more per codestream family.
CODESTREAM_SEEDS = (
    "MR_small_RLE.dcm",
    "SC_rgb_rle_2frame.dcm",
    "SC_rgb_rle_16bit.dcm",
    "MR_small_jp2klossless.dcm",
    "GDCMJ2K_TextGBR.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "SC_rgb_jls_lossy_line.dcm",
    "JPGExtended.dcm",
    "SC_rgb_jpeg_dcmtk.dcm",
    "SC_rgb_small_odd_jpeg.dcm",
)
CORPUS_CODESTREAM_SEEDS = (
    "JLSL_16_15_1_1F.dcm",
    "GH064.dcm",
    "HTJ2KLossless_08_RGB.dcm",
    "CT-JPEGLosslessSV1.dcm",
    "will-jxl.dcm",
)


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    elements: tuple[Element, ...]
    little_endian: bool
    explicit: bool
    pixel_offset: int | None
    encapsulated: bool
    syntax: str = ""


def _load_seed(path: Path) -> Seed:
    return _seed_from_bytes(path.name, path.read_bytes())


def _seed_from_bytes(name: str, data: bytes) -> Seed:
    ds = pydicom.dcmread(io.BytesIO(data), force=True, defer_size=0)
    implicit, little = ds.original_encoding
    elements = tuple(
        Element(int(tag), getattr(raw, "VR", None), int(raw.value_tell), int(raw.length))
        for tag, raw in ds._dict.items()
        if hasattr(raw, "value_tell")
    )
    pixel = next((e for e in elements if e.tag == 0x7FE00010), None)
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    deflated = syntax == "1.2.840.10008.1.2.1.99"
    return Seed(
        name=name,
        data=data,
        # Offsets in a deflated file are offsets into the inflated stream.
        elements=() if deflated else elements,
        little_endian=little is not False,
        explicit=implicit is False,
        pixel_offset=None if pixel is None or deflated else pixel.value_offset,
        encapsulated=pixel is not None and pixel.length == 0xFFFFFFFF,
        syntax=syntax,
    )


def _seeds(bundled: tuple[str, ...], corpus: tuple[str, ...]) -> list[Seed]:
    paths = [bundled_file(name) for name in bundled]
    folder = corpus_dir()
    paths += [folder / name for name in corpus if (folder / name).exists()]
    return [_load_seed(path) for path in paths]


SEEDS = _seeds(BUNDLED_SEEDS, CORPUS_SEEDS)
CODESTREAM = _seeds(CODESTREAM_SEEDS, CORPUS_CODESTREAM_SEEDS)


def _header_size(seed: Seed, element: Element) -> int:
    if not seed.explicit:
        return 8
    return 12 if element.vr in LONG_LENGTH_VRS else 8


@st.composite
def flip_bytes(draw: st.DrawFn, seed: Seed, start: int, end: int) -> bytes:
    data = bytearray(seed.data)
    end = min(end, len(data))
    if end <= start:
        return bytes(data)
    for _ in range(draw(st.integers(1, 16))):
        position = draw(st.integers(start, end - 1))
        data[position] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def mutated_file(draw: st.DrawFn) -> tuple[str, str, bytes]:
    seed = draw(st.sampled_from(SEEDS))
    pixels = seed.pixel_offset or len(seed.data)
    endian = "<" if seed.little_endian else ">"
    kinds = ["flip_header", "flip_pixels", "truncate", "wrong_syntax"]
    if seed.elements:
        kinds += ["truncate_at_element", "absurd_value", "bad_length"]
    if seed.encapsulated:
        kinds += ["broken_fragments"]
    kind = draw(st.sampled_from(kinds))

    if kind == "flip_header":
        data = draw(flip_bytes(seed, 0, pixels))
    elif kind == "flip_pixels":
        data = draw(flip_bytes(seed, pixels, len(seed.data)))
    elif kind == "truncate":
        data = seed.data[: draw(st.integers(0, len(seed.data) - 1))]
    elif kind == "truncate_at_element":
        element = draw(st.sampled_from(seed.elements))
        cut = element.value_offset - draw(st.sampled_from([0, _header_size(seed, element)]))
        data = seed.data[: max(cut, 0)]
    elif kind == "absurd_value":
        data = _absurd_value(draw, seed, endian)
    elif kind == "bad_length":
        element = draw(st.sampled_from(seed.elements))
        data = bytearray(seed.data)
        if _header_size(seed, element) == 12 or not seed.explicit:
            value = draw(st.sampled_from([0xFFFFFFF0, 0x7FFFFFFF, 0xC0000000, len(data) * 4]))
            struct.pack_into(f"{endian}I", data, element.value_offset - 4, value)
        else:
            value = draw(st.sampled_from([0xFFFF, 0xFFFE, 0x8001]))
            struct.pack_into(f"{endian}H", data, element.value_offset - 2, value)
        data = bytes(data)
    elif kind == "wrong_syntax":
        data = _with_syntax(seed, draw(st.sampled_from(SYNTAXES)))
    else:
        data = _broken_fragments(draw, seed, endian)
    return kind, seed.name, data


def _absurd_value(draw: st.DrawFn, seed: Seed, endian: str) -> bytes:
    data = bytearray(seed.data)
    candidates = [e for e in seed.elements if e.tag in US_TAGS and e.length == 2]
    frames = [e for e in seed.elements if e.tag == 0x00280008]
    if frames and draw(st.booleans()):
        element = frames[0]
        text = draw(st.sampled_from(["0", "-1", "99999999", "1e9", "x", "65536"]))
        raw = text.encode().ljust(element.length, b" ")[: element.length]
        data[element.value_offset : element.value_offset + element.length] = raw
    elif candidates:
        element = draw(st.sampled_from(candidates))
        value = draw(st.sampled_from([0, 1, 2, 3, 7, 9, 24, 33, 64, 255, 4096, 32768, 65535]))
        struct.pack_into(f"{endian}H", data, element.value_offset, value)
    return bytes(data)


def _with_syntax(seed: Seed, uid: str) -> bytes:
    if seed.data[128:132] != b"DICM":
        return seed.data
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in.dcm"
        source.write_bytes(seed.data)
        return with_transfer_syntax(source, Path(folder) / "out.dcm", uid).read_bytes()


def _broken_fragments(draw: st.DrawFn, seed: Seed, endian: str) -> bytes:
    """Corrupt the item structure of encapsulated Pixel Data (PS3.5 A.4)."""
    data = bytearray(seed.data)
    assert seed.pixel_offset is not None
    bot = seed.pixel_offset  # Basic Offset Table item: tag (4) + length (4) + offsets
    choice = draw(st.sampled_from(["bot_length", "bot_offsets", "item_tag", "item_length"]))
    if choice == "bot_length":
        struct.pack_into(f"{endian}I", data, bot + 4, draw(st.sampled_from([4, 12, 0xFFFFFFF0])))
    elif choice == "bot_offsets":
        # An offset table claiming frames at arbitrary places.
        offsets = draw(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4))
        table = struct.pack(f"{endian}{len(offsets)}I", *offsets)
        old_length = struct.unpack_from(f"{endian}I", data, bot + 4)[0]
        data[bot + 4 : bot + 8 + old_length] = struct.pack(f"{endian}I", len(table)) + table
    else:
        first_item = bot + 8 + struct.unpack_from(f"{endian}I", data, bot + 4)[0]
        if choice == "item_tag":
            data[first_item : first_item + 4] = draw(st.binary(min_size=4, max_size=4))
        else:
            value = draw(st.sampled_from([0, 1, 0xFFFFFFFF, 0x7FFFFFFF, len(data)]))
            struct.pack_into(f"{endian}I", data, first_item + 4, value)
    return bytes(data)


# --- Codestream headers inside the frames ---------------------------------------------

_SOF_MARKERS = frozenset(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7})
_FAMILY = {
    "1.2.840.10008.1.2.5": "rle",
    "1.2.840.10008.1.2.4.50": "jpeg",
    "1.2.840.10008.1.2.4.51": "jpeg",
    "1.2.840.10008.1.2.4.57": "jpeg",
    "1.2.840.10008.1.2.4.70": "jpeg",
    "1.2.840.10008.1.2.4.80": "jpeg",
    "1.2.840.10008.1.2.4.81": "jpeg",
    "1.2.840.10008.1.2.4.90": "j2k",
    "1.2.840.10008.1.2.4.91": "j2k",
    "1.2.840.10008.1.2.4.201": "j2k",
    "1.2.840.10008.1.2.4.202": "j2k",
    "1.2.840.10008.1.2.4.203": "j2k",
    "1.2.840.10008.1.2.4.110": "jxl",
    "1.2.840.10008.1.2.4.111": "jxl",
    "1.2.840.10008.1.2.4.112": "jxl",
}
# Values that break parsers: zero, one, powers of two and their neighbours, maxima.
_INTERESTING = {
    "B": [0, 1, 2, 3, 4, 7, 8, 9, 12, 15, 16, 17, 33, 127, 128, 255],
    ">H": [0, 1, 2, 7, 8, 255, 256, 4096, 20000, 32767, 32768, 65535],
    ">I": [0, 1, 2, 7, 64, 4096, 20000, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1],
}
_INTERESTING["<I"] = [*_INTERESTING[">I"], 63, 65, 15, 16]
_MAXIMUM = {"B": 255, ">H": 65535, ">I": 2**32 - 1, "<I": 2**32 - 1}


def _first_fragment(seed: Seed) -> int:
    """Where the first frame's first fragment starts in the file (PS3.5 A.4)."""
    assert seed.pixel_offset is not None
    bot = seed.pixel_offset  # Basic Offset Table item: tag (4) + length (4) + offsets
    first_item = bot + 8 + struct.unpack_from("<I", seed.data, bot + 4)[0]
    return first_item + 8


def _jpeg_fields(data: bytes, start: int) -> list[tuple[int, str]]:
    fields: list[tuple[int, str]] = []
    position = start + 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        if marker in _SOF_MARKERS:
            # Marker, precision, Y, X, Nf, and the first component's sampling.
            offsets = (1, 4, 5, 7, 9, 11)
            forms = ("B", "B", ">H", ">H", "B", "B")
            fields += [(position + o, f) for o, f in zip(offsets, forms, strict=True)]
        elif marker == 0xF8:  # a JPEG-LS LSE segment: its length, ID and first value
            fields += [(position + 2, ">H"), (position + 4, "B"), (position + 5, ">H")]
        elif marker == 0xDA:
            break
        position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    return fields


def _j2k_fields(data: bytes, start: int) -> list[tuple[int, str]]:
    code = data.find(b"\xff\x4f\xff\x51", start, start + 4096)
    if code < 0:
        return []
    # Lsiz, Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz, XTOsiz, YTOsiz, Csiz, Ssiz, XRsiz, YRsiz.
    fields = [(code + 4, ">H")] + [(code + 8 + 4 * i, ">I") for i in range(8)]
    fields += [(code + 40, ">H"), (code + 42, "B"), (code + 43, "B"), (code + 44, "B")]
    position = code + 4 + struct.unpack_from(">H", data, code + 4)[0]
    while position + 4 <= len(data) and data[position] == 0xFF:
        if data[position + 1] == 0x52:  # COD: layers, levels, code-block width and height
            fields += [(position + 6, ">H"), (position + 9, "B")]
            fields += [(position + 10, "B"), (position + 11, "B")]
        if data[position + 1] == 0x90:
            break
        position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    return fields


def _codestream_fields(seed: Seed) -> list[tuple[int, str]]:
    """(file offset, struct format) of the first frame's header fields."""
    start = _first_fragment(seed)
    family = _FAMILY.get(seed.syntax)
    if family == "rle":  # the segment count and the fifteen offsets
        return [(start + 4 * i, "<I") for i in range(16)]
    if family == "jpeg":
        return _jpeg_fields(seed.data, start)
    if family == "j2k":
        return _j2k_fields(seed.data, start)
    if family == "jxl":  # the SizeHeader and the start of ImageMetadata
        code = seed.data.find(b"\xff\x0a", start, start + 200)
        return [(code + 2 + i, "B") for i in range(10)] if code >= 0 else []
    return []


CODESTREAM_FIELDS = {seed.name: _codestream_fields(seed) for seed in CODESTREAM}


@st.composite
def mutated_codestream(draw: st.DrawFn) -> tuple[str, str, bytes]:
    seed = draw(st.sampled_from([s for s in CODESTREAM if CODESTREAM_FIELDS[s.name]]))
    fields = CODESTREAM_FIELDS[seed.name]
    data = bytearray(seed.data)
    changed = []
    for _ in range(draw(st.integers(1, 3))):
        offset, form = draw(st.sampled_from(fields))
        current = struct.unpack_from(form, data, offset)[0]
        value = draw(
            st.one_of(
                st.sampled_from(_INTERESTING[form]),
                # Off by a little: the size the DICOM header says, plus or minus one.
                st.integers(-2, 2).map(lambda delta, v=current: v + delta),
                st.integers(0, _MAXIMUM[form]),
            )
        )
        value = min(max(value, 0), _MAXIMUM[form])
        struct.pack_into(form, data, offset, value)
        changed.append(f"{offset}:{current}->{value}")
    return f"codestream {' '.join(changed)}", seed.name, bytes(data)


# --- LUTs -------------------------------------------------------------------------------

US = "US"
LUT_DESCRIPTOR = 0x00283002
LUT_DATA = 0x00283006
PALETTE_DESCRIPTORS = (0x00281101, 0x00281102, 0x00281103)
PALETTE_DATA = (0x00281201, 0x00281202, 0x00281203)
SEGMENTED_DATA = (0x00281221, 0x00281222, 0x00281223)


def _image(pixels: np.ndarray, photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit, ds.PixelRepresentation = ds.BitsStored - 1, 0
    ds.PixelData = pixels.tobytes()
    return ds


def _lut_item(descriptor: list[int], data: np.ndarray) -> Dataset:
    item = Dataset()
    item.add_new(LUT_DESCRIPTOR, US, descriptor)
    item.add_new(LUT_DATA, "OW", data.astype("<u2").tobytes())
    return item


def _modality_lut_image() -> Dataset:
    ds = _image((np.arange(64 * 48) % 4096).astype(np.uint16).reshape(64, 48))
    item = _lut_item([4096, 0, 16], np.arange(4096) * 2)
    item.ModalityLUTType = "HU"
    ds.ModalityLUTSequence = [item]
    return ds


def _voi_lut_image() -> Dataset:
    ds = _image((np.arange(64 * 48) % 4096).astype(np.uint16).reshape(64, 48))
    ds.VOILUTSequence = [_lut_item([4096, 0, 8], np.arange(4096) // 16)]
    return ds


def _palette_image(segmented: bool = False) -> Dataset:
    ds = _image((np.arange(64 * 48) % 256).astype(np.uint8).reshape(64, 48), "PALETTE COLOR")
    ramp = (np.arange(256) * 257).astype("<u2")
    for descriptor, data, segment in zip(
        PALETTE_DESCRIPTORS, PALETTE_DATA, SEGMENTED_DATA, strict=True
    ):
        ds.add_new(descriptor, US, [256, 0, 16])
        if segmented:  # PS3.3 C.7.9.2: one discrete value, then a linear run to 65535
            words = np.array([0, 1, 0, 1, 255, 65535], "<u2")
            ds.add_new(segment, "OW", words.tobytes())
        else:
            ds.add_new(data, "OW", ramp.tobytes())
    return ds


LUT_SEEDS: dict[str, Callable[[], Dataset]] = {
    "modality-lut": _modality_lut_image,
    "voi-lut": _voi_lut_image,
    "palette": _palette_image,
    "segmented-palette": lambda: _palette_image(segmented=True),
}
_DESCRIPTOR_VALUES = [0, 1, 2, 8, 9, 12, 15, 16, 17, 32, 255, 256, 4095, 4096, 65535]


def _lut_items(ds: Dataset) -> list[Dataset]:
    """The datasets that hold a LUT: sequence items, or the image itself for palettes."""
    items = [item for key in ("ModalityLUTSequence", "VOILUTSequence") for item in ds.get(key, [])]
    return items or [ds]


@st.composite
def mutated_lut(draw: st.DrawFn) -> tuple[str, str, bytes]:
    name = draw(st.sampled_from(sorted(LUT_SEEDS)))
    ds = LUT_SEEDS[name]()
    holder = draw(st.sampled_from(_lut_items(ds)))
    descriptors = [t for t in (LUT_DESCRIPTOR, *PALETTE_DESCRIPTORS) if t in holder]
    datas = [t for t in (LUT_DATA, *PALETTE_DATA, *SEGMENTED_DATA) if t in holder]
    kind = draw(st.sampled_from(["descriptor", "data", "segmented", "bits", "alpha"]))
    if kind == "descriptor":
        values = draw(st.lists(st.sampled_from(_DESCRIPTOR_VALUES), min_size=0, max_size=4))
        tag = draw(st.sampled_from(descriptors))
        if draw(st.booleans()) and len(values) > 1:  # a signed first mapped value
            values[1] = -values[1] // 2
            holder.add_new(tag, "SS", [max(-32768, min(v, 32767)) for v in values])
        else:
            holder.add_new(tag, US, values)
    elif kind == "data":
        tag = draw(st.sampled_from(datas))
        form = draw(st.sampled_from(["OW", "OB", "LO", "DS", "FD", "UN"]))
        value: Any = {
            "OW": draw(st.binary(max_size=64)),
            "OB": draw(st.binary(max_size=64)),
            "UN": draw(st.binary(max_size=64)),
            "LO": draw(st.sampled_from(["", "abc", "1\\2\\x"])),
            "DS": draw(st.sampled_from(["1.5", "nan", "1e308\\-1e308", "inf"])),
            "FD": draw(st.lists(st.sampled_from([0.5, 1e308, float("inf"), float("nan")]))),
        }[form]
        holder.add_new(tag, form, value)
    elif kind == "segmented":
        # Opcodes 0 (discrete), 1 (linear), 2 (indirect) and junk, with any lengths.
        words = draw(st.lists(st.sampled_from([0, 1, 2, 3, 255, 256, 65535]), max_size=300))
        if draw(st.booleans()):  # the expansion bomb: linear runs of 65535 entries
            words = [0, 1, 0] + [1, 65535, 65535] * draw(st.integers(1, 200))
        for tag in SEGMENTED_DATA:
            ds.add_new(tag, "OW", np.array(words, "<u2").tobytes())
        for tag in PALETTE_DESCRIPTORS:
            ds.add_new(tag, US, [draw(st.sampled_from([0, 1, 256, 4096])), 0, 16])
        ds.PhotometricInterpretation = "PALETTE COLOR"
    elif kind == "bits":
        bits = draw(st.sampled_from([1, 8, 16, 32]))
        dtype = {1: np.uint8, 8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]
        count = ds.Rows * ds.Columns // (8 if bits == 1 else 1)
        ds.PixelData = (np.arange(count) * 977).astype(dtype).tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    else:
        ds.add_new(0x00281104, US, [256, 0, 16])  # Alpha Palette Color LUT Descriptor
        ds.add_new(0x00281204, "OW", bytes(512))
    return f"lut {kind}", name, _dataset_bytes(ds)


def _dataset_bytes(ds: Dataset) -> bytes:
    """The dataset as a file, written however invalid its values are."""
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode
    return buffer.getvalue()


# --- The render worker -------------------------------------------------------------------

# Runs in its own process: requests and answers are length-prefixed pickles on
# stdin and stdout; anything a codec prints goes to stderr.
WORKER = r"""
import io, os, pickle, resource, struct, sys

answers = os.fdopen(os.dup(1), "wb")
os.dup2(2, 1)
from dicom_converter import RenderOptions, render
from errors import ServiceError
from PIL import Image

limit = int(sys.argv[1])
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))
requests = sys.stdin.buffer
while len(size := requests.read(4)) == 4:
    path, output_format = pickle.loads(requests.read(struct.unpack("<I", size)[0]))
    try:
        result = render(path, RenderOptions(output_format=output_format))
        image = Image.open(io.BytesIO(result.image))
        image.load()
        answer = ("image", image.size == (result.width, result.height), str(image.size))
    except ServiceError as exc:
        answer = ("error", exc.status, exc.message)
    except BaseException as exc:
        answer = ("exception", type(exc).__name__, str(exc)[:500])
    body = pickle.dumps(answer)
    answers.write(struct.pack("<I", len(body)) + body)
    answers.flush()
"""


class RenderWorker:
    """Renders files one at a time in a process whose address space is capped."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        # The worker's stderr, kept for the report when it dies; lives as long as the worker.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115

    def _start(self) -> subprocess.Popen[bytes]:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(ADDRESS_SPACE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=PROJECT,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
            bufsize=0,
        )
        return self.process

    def render(self, path: Path, output_format: str) -> tuple[str, Any, str]:
        """("image", size matches, size) | ("error", status, message) | a failure."""
        process = self.process
        if process is None or process.poll() is not None:
            process = self._start()
        assert process.stdin is not None
        body = pickle.dumps((str(path), output_format))
        try:
            process.stdin.write(struct.pack("<I", len(body)) + body)
            size = struct.unpack("<I", self._read(process, 4))[0]
            return pickle.loads(self._read(process, size))  # type: ignore[no-any-return]
        except (OSError, EOFError, TimeoutError) as exc:
            self.close()
            self.log.seek(0)
            return "crash", str(exc), self.log.read()[-2000:].decode(errors="replace")

    def _read(self, process: subprocess.Popen[bytes], size: int) -> bytes:
        assert process.stdout is not None
        data = b""
        while len(data) < size:
            ready, _, _ = select.select([process.stdout], [], [], CASE_TIMEOUT)
            if not ready:
                raise TimeoutError(f"no answer within {CASE_TIMEOUT} s")
            chunk = os.read(process.stdout.fileno(), size - len(data))
            if not chunk:
                raise EOFError(f"the render worker died (exit status {process.wait()})")
            data += chunk
        return data

    def close(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@pytest.fixture(scope="module")
def worker() -> Iterator[RenderWorker]:
    renderer = RenderWorker()
    yield renderer
    renderer.close()
    renderer.log.close()


def render_outcome(
    worker: RenderWorker, folder: Path, data: bytes, output_format: str = "png"
) -> tuple[str, Any, str]:
    path = folder / "case.dcm"
    path.write_bytes(data)
    return worker.render(path, output_format)


def check_case(
    worker: RenderWorker, folder: Path, kind: str, seed: str, data: bytes, output_format: str
) -> None:
    outcome, detail, message = render_outcome(worker, folder, data, output_format)
    if outcome == "error":
        assert 400 <= detail < 500, f"{kind} of {seed}: status {detail}: {message}"
        assert message
        return
    assert outcome == "image", f"{kind} of {seed}: {outcome} {detail}: {message}"
    assert detail, f"{kind} of {seed}: the image is {message}, not the size the result says"


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ_SETTINGS
@given(case=mutated_file(), output_format=st.sampled_from(["png", "jpg"]))
def test_mutated_files_render_or_fail_cleanly(
    worker: RenderWorker, case: tuple[str, str, bytes], output_format: str
) -> None:
    kind, seed, data = case
    with tempfile.TemporaryDirectory() as folder:
        check_case(worker, Path(folder), kind, seed, data, output_format)


@FUZZ_SETTINGS
@given(case=mutated_codestream())
def test_mutated_codestream_headers_render_or_fail_cleanly(
    worker: RenderWorker, case: tuple[str, str, bytes]
) -> None:
    kind, seed, data = case
    with tempfile.TemporaryDirectory() as folder:
        check_case(worker, Path(folder), kind, seed, data, "png")


@FUZZ_SETTINGS
@given(case=mutated_lut())
def test_mutated_luts_render_or_fail_cleanly(
    worker: RenderWorker, case: tuple[str, str, bytes]
) -> None:
    kind, seed, data = case
    with tempfile.TemporaryDirectory() as folder:
        check_case(worker, Path(folder), kind, seed, data, "png")


@pytest.mark.parametrize("seed", SEEDS, ids=[seed.name for seed in SEEDS])
def test_truncation_at_every_element_boundary(worker: RenderWorker, seed: Seed) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for element in seed.elements:
            for cut in (element.value_offset - _header_size(seed, element), element.value_offset):
                data = seed.data[: max(cut, 0)]
                check_case(worker, Path(folder), "truncate", seed.name, data, "png")


def test_every_seed_has_codestream_fields() -> None:
    assert all(CODESTREAM_FIELDS[seed.name] for seed in CODESTREAM), CODESTREAM_FIELDS


# --- Streams that claim much more than their file holds ------------------------------


def _encapsulated_file(
    syntax: str, stream: bytes, rows: int, columns: int, samples: int = 1, bits: int = 8
) -> bytes:
    pixels = np.zeros((1, 1), np.uint8 if bits == 8 else np.uint16)
    ds = _image(pixels, "MONOCHROME2" if samples == 1 else "RGB")
    ds.file_meta.TransferSyntaxUID = syntax
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    return _dataset_bytes(ds)


def _patched(stream: bytes, at: bytes, offset: int, form: str, *values: int) -> bytes:
    data = bytearray(stream)
    struct.pack_into(form, data, bytes(stream).index(at) + offset, *values)
    return bytes(data)


GREY = np.zeros((8, 8), np.uint8)
_JPEG = bytes(imagecodecs.jpeg8_encode(GREY))
_JPEG_LS = bytes(imagecodecs.jpegls_encode(GREY))
_J2K = bytes(imagecodecs.jpeg2k_encode(GREY, level=0, codecformat="J2K"))
_HTJ2K_RGB = bytes(imagecodecs.htj2k_encode(np.zeros((8, 8, 3), np.uint8)))
_RLE_15 = struct.pack("<16I", 15, *range(64, 64 + 15 * 2, 2)) + b"\x00\x00" * 15
CLAIMS = {
    # name: (syntax, stream, Rows, Columns, status)
    "jpeg-sof-disagrees": (
        "1.2.840.10008.1.2.4.50",
        _patched(_JPEG, b"\xff\xc0", 5, ">HH", 20000, 20000),
        512,
        512,
        422,
    ),
    "jpeg-sof-over-budget": (
        "1.2.840.10008.1.2.4.50",
        _patched(_JPEG, b"\xff\xc0", 5, ">HH", 20000, 20000),
        20000,
        20000,
        413,
    ),
    "jpeg-ls-sof-disagrees": (
        "1.2.840.10008.1.2.4.80",
        _patched(_JPEG_LS, b"\xff\xf7", 5, ">HH", 20000, 20000),
        512,
        512,
        422,
    ),
    "j2k-siz-disagrees": (
        "1.2.840.10008.1.2.4.90",
        # Image and tile both 20000 x 20000: a valid SIZ that disagrees.
        _patched(_J2K, b"\xff\x51", 6, ">6I", 20000, 20000, 0, 0, 20000, 20000),
        512,
        512,
        422,
    ),
    "htj2k-siz-components": ("1.2.840.10008.1.2.4.201", _HTJ2K_RGB, 8, 8, 422),
    "rle-segments-disagree": ("1.2.840.10008.1.2.5", _RLE_15, 512, 512, 422),
}


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_claimed_frames_are_refused_before_decoding(
    worker: RenderWorker, tmp_path: Path, name: str
) -> None:
    syntax, stream, rows, columns, status = CLAIMS[name]
    data = _encapsulated_file(syntax, stream, rows, columns)
    assert len(data) < 1200  # a file of about a kilobyte
    outcome, detail, message = render_outcome(worker, tmp_path, data)
    assert (outcome, detail) == ("error", status), message
