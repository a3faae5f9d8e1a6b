"""Mutated DICOM files: the renderer answers with an image or a typed 4xx error.

Real files (pydicom's bundled ones, plus the shared corpus when present) are
mutated with Hypothesis: byte flips in the header and in the pixel data,
truncation at element boundaries, absurd Rows/Columns/NumberOfFrames/
BitsAllocated values, huge element lengths, wrong transfer syntax UIDs, and
broken encapsulated fragments or Basic Offset Tables.

Each case must either render to a decodable image or raise a ServiceError with
a 4xx status. Anything else (a crash, a bare exception, a 5xx) fails. Each
render runs under an address-space limit, so an allocation driven by a size the
file merely claims fails the test with MemoryError instead of passing quietly.

The default run makes FUZZ_EXAMPLES cases (2,000); the long mode is
``FUZZ_EXAMPLES=50000 make test`` or ``make fuzz``.
"""

from __future__ import annotations

import io
import os
import resource
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dicom_converter import RenderOptions, render
from errors import ServiceError
from tests.corpus import bundled_file, corpus_dir
from tests.dicom_files import with_transfer_syntax

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
ADDRESS_SPACE_HEADROOM = 2 * 1024**3

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


@dataclass(frozen=True)
class Seed:
    name: str
    data: bytes
    elements: tuple[Element, ...]
    little_endian: bool
    explicit: bool
    pixel_offset: int | None
    encapsulated: bool


def _load_seed(path: Path) -> Seed:
    ds = pydicom.dcmread(path, force=True, defer_size=0)
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
        name=path.name,
        data=path.read_bytes(),
        # Offsets in a deflated file are offsets into the inflated stream.
        elements=() if deflated else elements,
        little_endian=little is not False,
        explicit=implicit is False,
        pixel_offset=None if pixel is None or deflated else pixel.value_offset,
        encapsulated=pixel is not None and pixel.length == 0xFFFFFFFF,
    )


def _seeds() -> list[Seed]:
    paths = [bundled_file(name) for name in BUNDLED_SEEDS]
    folder = corpus_dir()
    paths += [folder / name for name in CORPUS_SEEDS if (folder / name).exists()]
    return [_load_seed(path) for path in paths]


SEEDS = _seeds()


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


@contextmanager
def address_space_limit(headroom: int) -> Iterator[None]:
    """Cap this process's address space at its current size plus `headroom`."""
    with open("/proc/self/status", encoding="ascii") as status:
        size_kb = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = size_kb * 1024 + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_case(folder: Path, kind: str, seed: str, data: bytes, output_format: str) -> None:
    path = folder / "case.dcm"
    path.write_bytes(data)
    try:
        with address_space_limit(ADDRESS_SPACE_HEADROOM):
            result = render(path, RenderOptions(output_format=output_format))
    except ServiceError as exc:
        assert 400 <= exc.status < 500, f"{kind} of {seed}: status {exc.status}: {exc.message}"
        assert exc.message
        return
    image = Image.open(io.BytesIO(result.image))
    image.load()
    assert image.size == (result.width, result.height)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=mutated_file(), output_format=st.sampled_from(["png", "jpg"]))
def test_mutated_files_render_or_fail_cleanly(
    case: tuple[str, str, bytes], output_format: str
) -> None:
    kind, seed, data = case
    with tempfile.TemporaryDirectory() as folder:
        check_case(Path(folder), kind, seed, data, output_format)


@pytest.mark.parametrize("seed", SEEDS, ids=[seed.name for seed in SEEDS])
def test_truncation_at_every_element_boundary(seed: Seed) -> None:
    with tempfile.TemporaryDirectory() as folder:
        for element in seed.elements:
            for cut in (element.value_offset - _header_size(seed, element), element.value_offset):
                check_case(Path(folder), "truncate", seed.name, seed.data[: max(cut, 0)], "png")
