"""An encapsulated frame's own header, read and checked before any decoder runs.

A compressed frame carries its own dimensions, component count and sample
precision, and the decoder allocates what the *stream* says, not what the
DICOM header says. A small file whose JPEG frame header claims 20000 x 20000
would make a decoder allocate gigabytes. So each frame's header is parsed here
first, without decoding anything, and compared with the Image Pixel Module
and the pixel budget:

- JPEG (ITU-T T.81 B.2): the SOFn frame header;
- JPEG-LS (ITU-T T.87 C.2): the SOF55 frame header, and its LSE segments
  (preset parameters, mapping tables, oversize dimensions);
- JPEG 2000 and HTJ2K (ITU-T T.800 A.5, T.814): the SIZ marker, and COD/COC
  for the number of decomposition levels; bare codestreams and JP2 files;
- RLE (PS3.5 Annex G): the 64-byte header of segment offsets;
- JPEG XL (ISO/IEC 18181-1): the SizeHeader and ImageMetadata of a bare
  codestream or of an ISOBMFF container (``jxlc`` / ``jxlp`` boxes).

The Image Pixel Module those headers are compared with (``ImagePixelModule``,
filled and validated by dicom_dataset) is defined here, where the lowest of the
modules that use it can import it.

Light on purpose: no numpy or pydicom, only struct and the syntax table.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from dicom_codecs import BY_UID
from errors import CorruptDicom, TooLarge, UnsupportedTransferSyntax


@dataclass(frozen=True)
class ImagePixelModule:
    """The validated attributes of the Image Pixel Module (PS3.3 C.7.6.3).

    dicom_dataset reads and validates them; the codestream checks and the decoders
    compare each frame's own header with them.
    """

    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    photometric_interpretation: str
    frames: int
    is_float: bool

    @property
    def stored_samples(self) -> int:
        """Samples one frame stores in uncompressed Pixel Data (PS3.5 8.1.1, 8.2)."""
        if self.photometric_interpretation == "YBR_FULL_422":
            # Two chroma samples are shared by each pair of pixels.
            return self.rows * self.columns * 2
        return self.rows * self.columns * self.samples_per_pixel

    @property
    def native_length(self) -> int:
        """Bytes all frames take in uncompressed Pixel Data."""
        samples = self.frames * self.stored_samples
        if self.bits_allocated == 1:
            # Bit-packed frames follow each other without byte alignment.
            return (samples + 7) // 8
        return samples * (self.bits_allocated // 8)

    @property
    def frame_bytes(self) -> int:
        """Bytes one decoded frame takes in memory (1-bit data is unpacked to bytes)."""
        sample_bytes = max(1, self.bits_allocated // 8)
        return self.rows * self.columns * self.samples_per_pixel * sample_bytes


# Decoders index with signed 32-bit integers; no DICOM frame comes near this.
MAX_SIDE = 2**31 - 1
# T.800 A.5.1: Csiz is at most 16384.
MAX_J2K_COMPONENTS = 16384
# T.800 A.4.2: Isot is 0..65534, so a codestream has at most 65535 tiles.
MAX_J2K_TILES = 65535
# T.800 A.6.1: at most 32 decomposition levels.
MAX_J2K_LEVELS = 32


@dataclass(frozen=True)
class StreamHeader:
    """What a frame's codestream says about the image it holds."""

    rows: int
    columns: int
    components: int
    precision: int  # bits per sample
    signed: bool | None = None  # J2K SIZ says; None when the format does not say
    resolution_levels: int = 0  # J2K/HTJ2K decomposition levels (0 otherwise)


_NAMES = {
    "jpeg": "JPEG frame header",
    "jpeg-ls": "JPEG-LS frame header",
    "jpeg2000": "JPEG 2000 SIZ marker",
    "htj2k": "HTJ2K SIZ marker",
    "rle": "RLE header",
    "jpeg-xl": "JPEG XL size header",
}


# How the structural errors name the stream.
_STREAMS = {
    "jpeg": "JPEG stream",
    "jpeg-ls": "JPEG-LS stream",
    "jpeg2000": "JPEG 2000 codestream",
    "htj2k": "HTJ2K codestream",
    "rle": "RLE header",
    "jpeg-xl": "JPEG XL codestream",
}


def stream_family(syntax: str) -> str:
    """The codestream family of a transfer syntax UID (a family name is accepted as is)."""
    row = BY_UID.get(str(syntax))
    family = row.family if row is not None else str(syntax)
    if family not in _NAMES:
        raise UnsupportedTransferSyntax(
            f"transfer syntax {syntax} has no encapsulated codestream header to check"
        )
    return family


def read_stream_header(syntax: str, stream: bytes) -> StreamHeader:
    """Parse the header of one frame's codestream, without decoding it.

    `syntax` is the transfer syntax UID (or its family name). Raises
    CorruptDicom when the header is missing, truncated or impossible. An RLE
    header states no dimensions: its rows and columns are 0 and its components
    the number of segments (one byte of one sample each).
    """
    family = stream_family(syntax)
    return _READERS[family](stream if isinstance(stream, bytes) else bytes(stream))


def check_frame_stream(
    syntax: str, stream: bytes, module: ImagePixelModule, max_pixel_bytes: int
) -> StreamHeader:
    """Refuse a frame whose own header disagrees with the DICOM header or the budget.

    422 (CorruptDicom) when its size, components or precision disagree with the
    Image Pixel Module; 413 (TooLarge) when what the stream claims would need
    more than `max_pixel_bytes` decoded. Returns the stream's header; for RLE,
    the frame the header describes, since an RLE header has no dimensions.
    """
    family = stream_family(syntax)
    name = _NAMES[family]
    header = read_stream_header(family, stream)
    if family == "rle":
        header = _rle_frame(header, module)
    else:
        _check_agrees(name, header, module)
    needed = header.rows * header.columns * header.components * _sample_bytes(header.precision)
    if needed > max_pixel_bytes:
        raise TooLarge(
            f"the {name} claims {header.rows} x {header.columns} x {header.components} "
            f"samples at {header.precision} bits, {needed} bytes decoded, above the pixel "
            "budget MAX_PIXEL_BYTES"
        )
    return header


def _check_agrees(name: str, header: StreamHeader, module: ImagePixelModule) -> None:
    if (header.rows, header.columns) != (module.rows, module.columns):
        raise CorruptDicom(
            f"the {name} claims {header.rows} x {header.columns} pixels (rows x columns), "
            f"the DICOM header {module.rows} x {module.columns}"
        )
    if header.components != module.samples_per_pixel:
        raise CorruptDicom(
            f"the {name} claims {header.components} component(s), the DICOM header "
            f"SamplesPerPixel {module.samples_per_pixel}"
        )
    # Precision may be below BitsStored (pydicom follows the stream: a 12-bit
    # JPEG 2000 stream in a BitsStored 16 file is common) but samples wider
    # than the container cannot be what the header describes.
    if header.precision > module.bits_allocated:
        raise CorruptDicom(
            f"the {name} claims {header.precision}-bit samples, the DICOM header "
            f"BitsAllocated {module.bits_allocated}"
        )


def _sample_bytes(precision: int) -> int:
    # Decoders return the smallest machine integer that holds the precision.
    for size in (1, 2, 4):
        if precision <= 8 * size:
            return size
    return 8


def _corrupt(name: str, detail: str) -> CorruptDicom:
    return CorruptDicom(f"the frame's {name} is invalid: {detail}")


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "big")


def _u32(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 4], "big")


# --- JPEG and JPEG-LS (T.81 B.1, T.87 C.1) -------------------------------------------

# T.81 Table B.1: SOF0-3, 5-7, 9-11, 13-15 (C4 is DHT, C8 JPG, CC DAC).
_JPEG_SOF = frozenset(set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC})
_JPEG_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
_SOF55 = 0xF7
_LSE = 0xF8
_SOS = 0xDA
_EOI = 0xD9
_SOI = 0xD8
# Markers without a length: TEM and RST0-7 (T.81 B.1.1.3).
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


def _jpeg_segments(stream: bytes, name: str) -> list[tuple[int, bytes]]:
    """The marker segments from SOI up to and including SOS: (marker, payload)."""
    if stream[:2] != b"\xff\xd8":
        raise _corrupt(name, "the stream does not start with an SOI marker")
    segments: list[tuple[int, bytes]] = []
    position = 2
    end = len(stream)
    while True:
        if position >= end:
            raise _corrupt(name, "the stream ends before its first scan")
        if stream[position] != 0xFF:
            raise _corrupt(name, f"byte {position} is not a marker")
        while position < end and stream[position] == 0xFF:  # fill bytes (B.1.1.2)
            position += 1
        if position >= end:
            raise _corrupt(name, "the stream ends before its first scan")
        marker = stream[position]
        position += 1
        if marker in _STANDALONE:
            continue
        if marker in (0x00, _SOI, _EOI):
            raise _corrupt(name, f"marker FF{marker:02X} comes before the first scan")
        length = _u16(stream, position)
        if length < 2 or position + length > end:
            raise _corrupt(name, f"the FF{marker:02X} segment runs past the end of the stream")
        segments.append((marker, stream[position + 2 : position + length]))
        position += length
        if marker == _SOS:
            return segments


def _frame_header(payload: bytes, name: str) -> tuple[int, int, int, list[bytes]]:
    """(precision, Y, X, component specifications) of a SOFn / SOF55 segment."""
    if len(payload) < 6:
        raise _corrupt(name, "the frame header segment is too short")
    precision, lines, samples, count = payload[0], _u16(payload, 1), _u16(payload, 3), payload[5]
    if count == 0:
        raise _corrupt(name, "it declares 0 components")
    if len(payload) < 6 + 3 * count:
        raise _corrupt(name, f"its length does not hold {count} component specifications")
    components = [payload[6 + 3 * i : 9 + 3 * i] for i in range(count)]
    return precision, lines, samples, components


def _read_jpeg(stream: bytes) -> StreamHeader:
    name = _STREAMS["jpeg"]
    for marker, payload in _jpeg_segments(stream, name):
        if marker == _SOS:
            raise _corrupt(name, "a scan starts before the frame header (SOF)")
        if marker == _SOF55:
            raise _corrupt(name, "the stream is JPEG-LS, not JPEG (SOF55)")
        if marker not in _JPEG_SOF:
            continue
        precision, lines, samples, components = _frame_header(payload, name)
        # T.81 B.2.2: DCT processes have 8- or 12-bit samples, lossless 2 to 16.
        if marker in _JPEG_LOSSLESS_SOF:
            if not 2 <= precision <= 16:
                raise _corrupt(name, f"lossless precision {precision} is not 2 to 16 bits")
        elif precision not in (8, 12):
            raise _corrupt(name, f"DCT precision {precision} is not 8 or 12 bits")
        if lines == 0:
            # The height would come from a DNL segment after the first scan.
            raise _corrupt(name, "the number of lines is 0 (deferred to a DNL marker)")
        if samples == 0:
            raise _corrupt(name, "the number of samples per line is 0")
        for spec in components:
            horizontal, vertical = spec[1] >> 4, spec[1] & 0x0F
            if not (1 <= horizontal <= 4 and 1 <= vertical <= 4) or spec[2] > 3:
                raise _corrupt(name, f"component {spec[0]} has invalid sampling or table")
        return StreamHeader(lines, samples, len(components), precision)
    raise AssertionError("unreachable: _jpeg_segments ends with SOS")  # pragma: no cover


class _LsState:
    """What the LSE segments of a JPEG-LS stream define (T.87 C.2.4.1)."""

    def __init__(self) -> None:
        self.maxval = 0
        self.tables: dict[int, int] = {}  # table ID → entry width Wt
        self.lines: int | None = None
        self.samples: int | None = None


def _read_lse(payload: bytes, state: _LsState, name: str) -> None:
    if not payload:
        raise _corrupt(name, "an LSE segment is empty")
    kind = payload[0]
    tables = state.tables
    if kind == 1:  # preset coding parameters: MAXVAL, T1, T2, T3, RESET
        if len(payload) != 11:
            raise _corrupt(name, "the LSE preset parameters segment is not 13 bytes long")
        state.maxval = _u16(payload, 1)
    elif kind in (2, 3):  # mapping table specification / continuation
        if len(payload) < 4:
            raise _corrupt(name, "an LSE mapping table segment is too short")
        table, width = payload[1], payload[2]
        if table == 0 or width == 0 or (len(payload) - 3) % width:
            raise _corrupt(name, f"LSE mapping table {table} has entries of width {width}")
        if kind == 2:
            tables[table] = width
        elif tables.get(table) != width:
            raise _corrupt(name, f"LSE continues mapping table {table}, which is not defined")
    elif kind == 4:  # oversize image dimensions
        width = payload[1] if len(payload) > 1 else 0
        if width not in (2, 3, 4) or len(payload) != 2 + 2 * width:
            raise _corrupt(name, "the LSE oversize dimension segment is malformed")
        state.lines = int.from_bytes(payload[2 : 2 + width], "big")
        state.samples = int.from_bytes(payload[2 + width : 2 + 2 * width], "big")
    else:
        raise _corrupt(name, f"LSE segment type {kind} is not defined by JPEG-LS (T.87)")


def _read_jpeg_ls(stream: bytes) -> StreamHeader:
    name = _STREAMS["jpeg-ls"]
    state = _LsState()
    frame: tuple[int, int, int, list[bytes]] | None = None
    for marker, payload in _jpeg_segments(stream, name):
        if marker == _LSE:
            _read_lse(payload, state, name)
        elif marker == _SOF55:
            if frame is not None:
                raise _corrupt(name, "the stream has two frame headers")
            frame = _frame_header(payload, name)
        elif marker in _JPEG_SOF:
            raise _corrupt(name, f"the stream is JPEG (SOF FF{marker:02X}), not JPEG-LS")
        elif marker == _SOS:
            if frame is None:
                raise _corrupt(name, "a scan starts before the frame header (SOF55)")
            _check_ls_scan(payload, frame, state, name)
    assert frame is not None
    precision, lines, samples, components = frame
    if not 2 <= precision <= 16:
        raise _corrupt(name, f"precision {precision} is not 2 to 16 bits")
    if state.maxval and state.maxval >= 1 << precision:
        raise _corrupt(name, f"MAXVAL {state.maxval} does not fit {precision}-bit samples")
    # T.87 C.2.2: 0 means the size is given by an LSE oversize segment.
    lines = lines or state.lines or 0
    samples = samples or state.samples or 0
    if lines == 0 or samples == 0:
        raise _corrupt(name, "the image size is 0 and no LSE segment gives it")
    if lines > MAX_SIDE or samples > MAX_SIDE:
        raise _corrupt(name, f"the image size {lines} x {samples} is impossible")
    return StreamHeader(lines, samples, len(components), precision)


def _check_ls_scan(
    payload: bytes, frame: tuple[int, int, int, list[bytes]], state: _LsState, name: str
) -> None:
    count = payload[0] if payload else 0
    if count == 0 or len(payload) < 1 + 2 * count + 3:
        raise _corrupt(name, "the scan header is malformed")
    known = {spec[0] for spec in frame[3]}
    tables = state.tables
    for i in range(count):
        component, table = payload[1 + 2 * i], payload[2 + 2 * i]
        if component not in known:
            raise _corrupt(name, f"the scan names component {component}, not in the frame")
        if table and table not in tables:
            raise _corrupt(name, f"the scan uses mapping table {table}, which is not defined")
    interleave = payload[2 + 2 * count]
    if interleave > 2:
        raise _corrupt(name, f"interleave mode {interleave} is not 0, 1 or 2")


# --- JPEG 2000 and HTJ2K (T.800 Annex A, I.2) ------------------------------------------

_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_SOT = 0xFF90
_SOD = 0xFF93
_EOC = 0xFFD9
_COD = 0xFF52
_COC = 0xFF53


def _boxes(data: bytes, start: int, name: str) -> list[tuple[bytes, int, int]]:
    """The ISOBMFF / JP2 boxes from `start`: (type, payload start, payload end)."""
    boxes = []
    position = start
    while position + 8 <= len(data):
        length, kind = _u32(data, position), data[position + 4 : position + 8]
        header = 8
        if length == 1:  # the 64-bit XLBox follows
            if position + 16 > len(data):
                break
            length, header = int.from_bytes(data[position + 8 : position + 16], "big"), 16
        elif length == 0:  # the last box runs to the end
            length = len(data) - position
        if length < header:
            raise _corrupt(name, f"box {kind!r} has length {length}")
        boxes.append((kind, position + header, min(position + length, len(data))))
        position += length
    return boxes


def _j2k_codestream(stream: bytes, name: str) -> bytes:
    if stream.startswith(_J2K_SOC_SIZ):
        return stream
    if stream.startswith(_JP2_SIGNATURE):
        for kind, start, end in _boxes(stream, 0, name):
            if kind == b"jp2c":
                if not stream[start:end].startswith(_J2K_SOC_SIZ):
                    raise _corrupt(name, "the JP2 codestream box does not start with SOC, SIZ")
                return stream[start:end]
        raise _corrupt(name, "the JP2 file has no codestream (jp2c) box")
    raise _corrupt(name, "the stream does not start with the SOC and SIZ markers")


def _read_j2k(stream: bytes, family: str) -> StreamHeader:
    name = _STREAMS[family]
    code = _j2k_codestream(stream, name)
    if len(code) < 6:
        raise _corrupt(name, "the SIZ marker is truncated")
    length = _u16(code, 4)
    if length < 41 or len(code) < 4 + length:
        raise _corrupt(name, "the SIZ marker is truncated")
    xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz = struct.unpack_from(">8I", code, 8)
    count = _u16(code, 40)
    if not 1 <= count <= MAX_J2K_COMPONENTS:
        raise _corrupt(name, f"Csiz {count} is not 1 to {MAX_J2K_COMPONENTS} components")
    if length != 38 + 3 * count:
        raise _corrupt(name, f"Lsiz {length} does not match {count} components")
    if xsiz <= xosiz or ysiz <= yosiz:
        raise _corrupt(name, "the image area is empty (Xsiz <= XOsiz or Ysiz <= YOsiz)")
    columns, rows = xsiz - xosiz, ysiz - yosiz
    if columns > MAX_SIDE or rows > MAX_SIDE:
        raise _corrupt(name, f"the image size {rows} x {columns} is impossible")
    # T.800 A.5.1: the first tile must overlap the image area.
    if (
        xtsiz == 0
        or ytsiz == 0
        or xtosiz > xosiz
        or ytosiz > yosiz
        or xtsiz + xtosiz <= xosiz
        or ytsiz + ytosiz <= yosiz
    ):
        raise _corrupt(name, "the tile grid does not cover the image")
    tiles = -(-(xsiz - xtosiz) // xtsiz) * -(-(ysiz - ytosiz) // ytsiz)
    if tiles > MAX_J2K_TILES:
        raise _corrupt(name, f"it declares {tiles} tiles, more than {MAX_J2K_TILES}")
    precisions, signed = [], None
    for i in range(count):
        ssiz, xrsiz, yrsiz = code[42 + 3 * i], code[43 + 3 * i], code[44 + 3 * i]
        precision = (ssiz & 0x7F) + 1
        if precision > 38:
            raise _corrupt(name, f"component {i} has precision {precision}, above 38 bits")
        if xrsiz == 0 or yrsiz == 0:
            raise _corrupt(name, f"component {i} has a subsampling factor of 0")
        precisions.append(precision)
        if signed is None:
            signed = bool(ssiz & 0x80)
    levels = _j2k_levels(code, 4 + length, count, name)
    return StreamHeader(rows, columns, count, max(precisions), signed, levels)


def _j2k_levels(code: bytes, position: int, components: int, name: str) -> int:
    """The fewest decomposition levels that COD and COC give in any header.

    A tile-part header may override the main header's levels; the decoder can
    discard at most that many resolution levels of the whole image.
    """
    main, position = _j2k_header_levels(code, position, components, name, main=True)
    if main is None:
        raise _corrupt(name, "the main header has no COD marker")
    fewest = main
    # Tile-part headers are found by their lengths (Psot), without reading tile data.
    while position + 12 <= len(code) and _u16(code, position) == _SOT:
        psot = _u32(code, position + 6)
        levels, _ = _j2k_header_levels(code, position + 12, components, name, main=False)
        if levels is not None:
            fewest = min(fewest, levels)
        if psot < 14:  # 0: this tile-part runs to EOC, the last one
            break
        position += psot
    return fewest


def _j2k_header_levels(
    code: bytes, position: int, components: int, name: str, main: bool
) -> tuple[int | None, int]:
    """(fewest levels in COD/COC, position of the SOT or SOD that ends the header)."""
    fewest: int | None = None
    end_marker = _SOT if main else _SOD
    while True:
        if position + 2 > len(code):
            if main:
                raise _corrupt(name, "the main header ends before the first tile")
            return fewest, position
        marker = _u16(code, position)
        if marker == end_marker or (not main and marker in (_SOT, _EOC)):
            return fewest, position
        if marker >> 8 != 0xFF or position + 4 > len(code):
            if main:
                raise _corrupt(name, f"byte {position} of the main header is not a marker")
            return fewest, position
        length = _u16(code, position + 2)
        if length < 2 or position + 2 + length > len(code):
            if main:
                raise _corrupt(name, f"marker {marker:04X} runs past the end of the stream")
            return fewest, position
        segment = code[position + 4 : position + 2 + length]
        levels = None
        if marker == _COD:
            levels = _cod_levels(segment, 5, name)
        elif marker == _COC:
            levels = _cod_levels(segment, 2 if components < 257 else 3, name)
        if levels is not None:
            fewest = levels if fewest is None else min(fewest, levels)
        position += 2 + length


def _cod_levels(segment: bytes, offset: int, name: str) -> int:
    # COD: Scod, SGcod (4 bytes), SPcod; COC: Ccoc (1 or 2 bytes), Scoc, SPcoc.
    # SPcod/SPcoc start with the levels, then the code-block exponents (A.6.1).
    if len(segment) < offset + 3:
        raise _corrupt(name, "a COD or COC marker is too short")
    levels, width, height = segment[offset], segment[offset + 1], segment[offset + 2]
    if levels > MAX_J2K_LEVELS:
        raise _corrupt(name, f"{levels} decomposition levels, more than {MAX_J2K_LEVELS}")
    # Code-blocks are 4 to 1024 samples a side and at most 4096 samples.
    if width > 8 or height > 8 or width + height > 8:
        raise _corrupt(name, "the code-block size is out of range")
    return levels


# --- RLE (PS3.5 Annex G) --------------------------------------------------------------


def _read_rle(stream: bytes) -> StreamHeader:
    name = _STREAMS["rle"]
    if len(stream) < 64:
        raise _corrupt(name, f"the frame is {len(stream)} bytes, shorter than the header")
    count, *offsets = struct.unpack_from("<16I", stream)
    if not 1 <= count <= 15:
        raise _corrupt(name, f"it declares {count} segments; RLE allows 1 to 15")
    used = offsets[:count]
    if used[0] != 64:
        raise _corrupt(name, f"the first segment starts at byte {used[0]}, not 64")
    for i in range(1, count):
        if not used[i - 1] < used[i] < len(stream):
            raise _corrupt(
                name, f"segment {i + 1} starts at byte {used[i]}, out of order or past the end"
            )
    if used[-1] >= len(stream):
        raise _corrupt(name, "the last segment starts past the end of the frame")
    # Rows and columns are not in an RLE header: each segment holds one byte
    # of one sample for every pixel.
    return StreamHeader(0, 0, count, 8)


def _rle_frame(header: StreamHeader, module: ImagePixelModule) -> StreamHeader:
    name = _NAMES["rle"]
    if module.bits_allocated % 8:
        raise CorruptDicom(
            f"RLE frames need BitsAllocated a multiple of 8, not {module.bits_allocated}"
        )
    sample_bytes = module.bits_allocated // 8
    expected = module.samples_per_pixel * sample_bytes
    if header.components != expected:
        raise CorruptDicom(
            f"the {name} declares {header.components} segment(s), the DICOM header "
            f"SamplesPerPixel {module.samples_per_pixel} x BitsAllocated "
            f"{module.bits_allocated} needs {expected}"
        )
    return StreamHeader(
        module.rows, module.columns, module.samples_per_pixel, module.bits_allocated
    )


# --- JPEG XL (ISO/IEC 18181-1, 18181-2) --------------------------------------------------

_JXL_CODESTREAM = b"\xff\x0a"
_JXL_CONTAINER = b"\x00\x00\x00\x0cJXL \r\n\x87\n"
# 18181-1 D.2 (SizeHeader): the aspect ratios that stand in for xsize.
_JXL_RATIOS = ((1, 1), (12, 10), (4, 3), (3, 2), (16, 9), (5, 4), (2, 1))
# The ImageMetadata fields read here fit in far fewer bytes than this.
_JXL_HEADER_BYTES = 4096


class _Bits:
    """An LSB-first bit reader (18181-1 B.2)."""

    def __init__(self, data: bytes, name: str) -> None:
        self.value = int.from_bytes(data, "little")
        self.size = 8 * len(data)
        self.position = 0
        self.name = name

    def u(self, bits: int) -> int:
        if self.position + bits > self.size:
            raise _corrupt(self.name, "the header is truncated")
        value = (self.value >> self.position) & ((1 << bits) - 1)
        self.position += bits
        return value

    def bool(self) -> bool:
        return bool(self.u(1))

    def u32(self, *distributions: tuple[int, int]) -> int:
        """U32(d0, d1, d2, d3): each distribution is (bits, offset); bits 0 is a constant."""
        bits, offset = distributions[self.u(2)]
        return offset + (self.u(bits) if bits else 0)

    def enum(self) -> int:
        return self.u32((0, 0), (0, 1), (4, 2), (6, 18))


def _jxl_codestream(stream: bytes, name: str) -> bytes:
    if stream.startswith(_JXL_CODESTREAM):
        return stream[:_JXL_HEADER_BYTES]
    if not stream.startswith(_JXL_CONTAINER):
        raise _corrupt(name, "the stream is neither a JPEG XL codestream nor a JXL container")
    parts = []
    for kind, start, end in _boxes(stream, 0, name):
        if kind == b"jxlc":
            return stream[start : min(end, start + _JXL_HEADER_BYTES)]
        if kind == b"jxlp":  # a partial codestream after a 4-byte sequence number
            parts.append(stream[start + 4 : end])
            if sum(map(len, parts)) >= _JXL_HEADER_BYTES:
                break
    code = b"".join(parts)
    if not code.startswith(_JXL_CODESTREAM):
        raise _corrupt(name, "the JXL container holds no codestream (jxlc or jxlp box)")
    return code[:_JXL_HEADER_BYTES]


def _jxl_size(bits: _Bits) -> tuple[int, int]:
    """SizeHeader: (ysize, xsize)."""
    small = bits.bool()
    rows = 8 * (bits.u(5) + 1) if small else bits.u32((9, 1), (13, 1), (18, 1), (30, 1))
    ratio = bits.u(3)
    if ratio:
        numerator, denominator = _JXL_RATIOS[ratio - 1]
        columns = rows * numerator // denominator
    elif small:
        columns = 8 * (bits.u(5) + 1)
    else:
        columns = bits.u32((9, 1), (13, 1), (18, 1), (30, 1))
    return rows, columns


def _jxl_preview(bits: _Bits) -> None:
    # PreviewHeader: read only to step over it.
    div8 = bits.bool()
    ysize = (0, 16), (0, 32), (5, 1), (9, 33)
    other = (6, 1), (8, 65), (10, 321), (12, 1345)
    bits.u32(*(ysize if div8 else other))
    if not bits.u(3):
        bits.u32(*(ysize if div8 else other))


def _jxl_bit_depth(bits: _Bits) -> tuple[int, bool]:
    """BitDepth: (bits per sample, floating point)."""
    if bits.bool():
        depth = bits.u32((0, 32), (0, 16), (0, 24), (6, 1))
        bits.u(4)  # exponent bits - 1
        return depth, True
    return bits.u32((0, 8), (0, 10), (0, 12), (6, 1)), False


def _jxl_extra_channel(bits: _Bits) -> None:
    # ExtraChannelInfo, read only to reach the colour encoding behind it.
    if bits.bool():  # all default: an 8-bit alpha channel
        return
    kind = bits.enum()
    _jxl_bit_depth(bits)
    bits.u32((0, 0), (0, 3), (0, 4), (3, 1))  # dim_shift
    name_length = bits.u32((0, 0), (4, 0), (5, 16), (10, 48))
    bits.u(8 * name_length)
    if kind == 0:  # alpha: alpha_associated
        bits.bool()
    elif kind == 2:  # spot colour: four F16 values
        bits.u(64)
    elif kind == 5:  # colour filter array channel
        bits.u32((0, 1), (2, 0), (4, 3), (8, 19))


def _read_jxl(stream: bytes) -> StreamHeader:
    name = _STREAMS["jpeg-xl"]
    bits = _Bits(_jxl_codestream(stream, name)[2:], name)
    rows, columns = _jxl_size(bits)
    precision, floating, grey, orientation = 8, False, False, 1
    if not bits.bool():  # ImageMetadata is not all default
        if bits.bool():  # extra fields
            orientation = bits.u(3) + 1
            if bits.bool():  # intrinsic size
                _jxl_size(bits)
            if bits.bool():
                _jxl_preview(bits)
            if bits.bool():  # AnimationHeader
                bits.u32((0, 100), (0, 1000), (10, 1), (30, 1))
                bits.u32((0, 1), (0, 1001), (8, 1), (10, 1))
                bits.u32((0, 0), (3, 0), (16, 0), (32, 0))
                bits.bool()
        precision, floating = _jxl_bit_depth(bits)
        bits.bool()  # modular_16bit_buffers
        for _ in range(bits.u32((0, 0), (0, 1), (4, 2), (12, 1))):
            _jxl_extra_channel(bits)
        bits.bool()  # xyb_encoded
        if not bits.bool():  # ColourEncoding is not all default
            bits.bool()  # want_icc
            grey = bits.enum() == 1  # colour_space kGrey
    if floating:
        raise _corrupt(name, "it holds floating-point samples; DICOM pixel data is integer")
    if not 1 <= precision <= 32:
        raise _corrupt(name, f"{precision}-bit samples are out of range")
    # Orientations 5-8 transpose the image; decoders return it oriented.
    if orientation > 4:
        rows, columns = columns, rows
    return StreamHeader(rows, columns, 1 if grey else 3, precision)


_READERS = {
    "jpeg": _read_jpeg,
    "jpeg-ls": _read_jpeg_ls,
    "jpeg2000": lambda stream: _read_j2k(stream, "jpeg2000"),
    "htj2k": lambda stream: _read_j2k(stream, "htj2k"),
    "rle": _read_rle,
    "jpeg-xl": _read_jxl,
}
