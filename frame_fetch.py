"""Fetch only the bytes the requested frames need, when the source serves byte ranges.

The one DICOM-aware caller of ``ranged_reads``. For one URL and a span of frames:

1. the header is read in growing ranges and walked, element by element (explicit
   and implicit VR little endian, explicit VR big endian, sequences of undefined
   length), up to the Pixel Data element (7FE0,0010) (PS3.5 7.1, 7.5);
2. native Pixel Data: the frames' offsets follow from Rows, Columns, Samples per
   Pixel and Bits Allocated (PS3.5 8.1.1);
3. encapsulated Pixel Data (PS3.5 A.4): the frames are found through the Extended
   Offset Table (7FE0,0001/0002) or the Basic Offset Table; without either, the
   item headers are walked, one fragment per frame;
4. a sparse local file is written: every fetched range at its own offset (header,
   tables, item headers, the frames), holes elsewhere, ending where Pixel Data ends.
   ``dicom_converter.render`` reads it as it reads a whole download.

Whenever the layout cannot be located within ``MAX_REQUESTS`` requests, the source
cannot serve ranges or answers them wrongly, or the transfer syntax is Deflated, the
file is downloaded whole instead (``file_downloader.download``), with the same URL
policy, limits and deadline.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import file_downloader as fd
from dicom_codecs import DEFLATED, EXPLICIT_BE, IMPLICIT_LE, NATIVE_SYNTAXES
from download_limits import DownloadOptions, Limits, check_free_space, local_error
from ranged_reads import RangedReader, RangeUnsupported, WholeAnswer, open_reader
from service_log import redact_url
from url_policy import UrlPolicy

logger = logging.getLogger("file_downloader")

FrameSpan = tuple[int, "int | None"]

# The first request; the header's later ranges double in size from here.
FIRST_READ = 16 * 1024
# All ranged requests of one fetch: the header, the tables, an item walk, the frames.
MAX_REQUESTS = 48
# How far past an item header to read while walking items, so that nearby headers
# (small fragments) come in the same request.
ITEM_LOOKAHEAD = 4 * 1024
MAX_NESTING = 16

UNDEFINED = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_END = 0xFFFEE00D
SEQUENCE_END = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)
EXTENDED_OFFSETS = 0x7FE00001
EXTENDED_LENGTHS = 0x7FE00002
# Values of the Image Pixel Module that the offsets of native frames depend on.
_ATTRIBUTES = {
    0x00280002: "samples",
    0x00280004: "photometric",
    0x00280008: "frames",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits",
}
# VRs with a 4-byte length in explicit VR (PS3.5 7.1.2, Table 7.1-1).
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)


@dataclass(frozen=True)
class Fetched:
    """A local file that ``dicom_converter.render`` reads, and how it was obtained."""

    path: Path
    # Never None: a whole download of a source without validators is named by its sha256.
    identity: fd.SourceIdentity
    bytes_transferred: int
    ranged: bool


class _NotLocated(Exception):
    """The frames cannot be located with ranged reads; ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Encoding:
    little: bool = True
    explicit: bool = True

    @property
    def order(self) -> str:
        return "<" if self.little else ">"


_META = _Encoding()
_IMPLICIT = _Encoding(explicit=False)


@dataclass(frozen=True)
class _Element:
    tag: int
    vr: bytes
    length: int
    value: int  # offset of the value in the file

    @property
    def end(self) -> int:
        return self.value + self.length


# --------------------------------------------------------------------------- fetched bytes


class _Source:
    """The fetched bytes of the object by offset; what is missing is fetched through the
    reader, within ``MAX_REQUESTS``."""

    def __init__(self, reader: RangedReader, first: bytes) -> None:
        self.reader = reader
        self.size = reader.size
        self.chunks: list[tuple[int, bytes]] = [(0, first)]
        # Item headers of ours, written over the fetched bytes (see ``filler``).
        self.fillers: list[tuple[int, bytes]] = []
        self.header_ahead = 2 * FIRST_READ

    def filler(self, start: int, stop: int) -> None:
        """Mark the items between offsets ``start`` and ``stop`` (both item boundaries)
        as one item of ours: the local file's fragments stay a well-formed sequence
        that readers walk item by item, though most of its items were never fetched."""
        if stop - start >= 8:
            self.fillers.append((start, struct.pack("<HHI", 0xFFFE, 0xE000, stop - start - 8)))

    def get(self, pos: int, length: int, ahead: int = 0) -> bytes:
        """Bytes ``pos``..``pos + length``; a missing part is fetched with ``ahead``
        bytes beyond it."""
        if pos < 0 or pos + length > self.size:
            raise _NotLocated("an element runs past the end of the file")
        for start, data in self.chunks:
            if start <= pos and pos + length <= start + len(data):
                return data[pos - start : pos - start + length]
        if self.reader.requests >= MAX_REQUESTS:
            raise _NotLocated(f"the layout needs more than {MAX_REQUESTS} requests")
        data = self.reader.read(pos, min(self.size, pos + max(length, ahead)))
        if len(data) < length:
            raise RangeUnsupported("a range shorter than asked for")
        self.chunks.append((pos, data))
        return data[:length]

    def header(self, pos: int, length: int) -> bytes:
        """Header bytes: read in ranges that double, since the header's end is unknown."""
        fetched = len(self.chunks)
        found = self.get(pos, length, self.header_ahead)
        if len(self.chunks) > fetched:
            self.header_ahead *= 2
        return found

    def element(self, pos: int, encoding: _Encoding) -> _Element:
        """The element header at ``pos`` (PS3.5 7.1.1-7.1.3); items and delimiters have
        no VR in any encoding (PS3.5 7.5)."""
        head = self.header(pos, 8)
        order = encoding.order
        group, number = struct.unpack(order + "HH", head[:4])
        tag = group << 16 | number
        if group == 0xFFFE or not encoding.explicit:
            return _Element(tag, b"", struct.unpack(order + "I", head[4:8])[0], pos + 8)
        vr = head[4:6]
        if not vr.isalpha() or not vr.isupper():
            raise _NotLocated("an element without a valid VR")
        if vr in _LONG_VRS:
            length = struct.unpack(order + "I", self.header(pos + 8, 4))[0]
            return _Element(tag, vr, length, pos + 12)
        return _Element(tag, vr, struct.unpack(order + "H", head[6:8])[0], pos + 8)


# --------------------------------------------------------------------------- the header


@dataclass
class _Layout:
    syntax: str
    encoding: _Encoding
    pixel_data: _Element
    values: dict[str, bytes]


def _transfer_syntax(source: _Source) -> tuple[str, int]:
    """The file meta group's Transfer Syntax UID and where the dataset starts (PS3.10 7.1)."""
    if source.size < 132 or source.header(128, 4) != b"DICM":
        raise _NotLocated("no DICM prefix")
    pos, syntax = 132, ""
    while pos + 8 <= source.size and source.header(pos, 2) == b"\x02\x00":
        element = source.element(pos, _META)
        if element.length == UNDEFINED:
            raise _NotLocated("a file meta element of undefined length")
        if element.tag == 0x00020010:
            raw = source.header(element.value, element.length)
            syntax = raw.decode("ascii", "replace").strip("\0 ")
        pos = element.end
    if syntax == DEFLATED:
        raise _NotLocated("a deflated transfer syntax")
    return syntax, pos


def _dataset_encoding(syntax: str) -> _Encoding:
    if syntax == IMPLICIT_LE:
        return _IMPLICIT
    return _Encoding(little=syntax != EXPLICIT_BE)


def _find_pixel_data(source: _Source) -> _Layout:
    """Walk the top-level elements up to Pixel Data; keep the values frames depend on."""
    syntax, pos = _transfer_syntax(source)
    encoding = _dataset_encoding(syntax)
    values: dict[str, bytes] = {}
    while pos < source.size:
        element = source.element(pos, encoding)
        if element.tag == PIXEL_DATA:
            return _Layout(syntax, encoding, element, values)
        if element.tag in FLOAT_PIXEL_DATA or element.tag >> 16 == 0xFFFE:
            raise _NotLocated("float pixel data, or an item outside a sequence")
        if element.length == UNDEFINED:
            pos = _skip_sequence(source, element.value, _inner(element, encoding), 1)
            continue
        # Every byte before Pixel Data is fetched: the renderer may read any of it.
        value = source.header(element.value, element.length)
        name = _ATTRIBUTES.get(element.tag)
        if name is not None:
            values[name] = value
        elif element.tag in (EXTENDED_OFFSETS, EXTENDED_LENGTHS):
            values[f"eot-{element.tag & 0xF}"] = value
        pos = element.end
    raise _NotLocated("no Pixel Data element")


def _inner(element: _Element, encoding: _Encoding) -> _Encoding:
    # A UN value of undefined length is a sequence in implicit VR LE (PS3.5 6.2.2).
    return _IMPLICIT if element.vr == b"UN" else encoding


def _skip_sequence(source: _Source, pos: int, encoding: _Encoding, depth: int) -> int:
    """The offset after a sequence of undefined length whose items start at ``pos``."""
    if depth > MAX_NESTING:
        raise _NotLocated("sequences nested too deeply")
    while True:
        item = source.element(pos, encoding)
        if item.tag == SEQUENCE_END:
            return item.value
        if item.tag != ITEM:
            raise _NotLocated("a sequence holds something other than items")
        if item.length != UNDEFINED:
            source.header(item.value, item.length)
            pos = item.end
            continue
        pos = item.value
        while (element := source.element(pos, encoding)).tag != ITEM_END:
            if element.length == UNDEFINED:
                pos = _skip_sequence(source, element.value, _inner(element, encoding), depth + 1)
            else:
                source.header(element.value, element.length)
                pos = element.end
        pos = element.value


# --------------------------------------------------------------------------- frames


def _number(values: dict[str, bytes], name: str, order: str, default: int | None = None) -> int:
    raw = values.get(name)
    if raw is None:
        if default is None:
            raise _NotLocated(f"no {name} attribute")
        return default
    if name == "frames":
        text = raw.decode("ascii", "replace").strip("\0 ").split("\\")[0]
        return int(text) if text.isdigit() and int(text) > 0 else 1
    if len(raw) < 2:
        raise _NotLocated(f"an invalid {name} attribute")
    return int(struct.unpack(order + "H", raw[:2])[0])


def _span(frames: FrameSpan, count: int) -> tuple[int, int] | None:
    """0-based first and last frame to fetch; None when none exist (the render reports it)."""
    first, last = frames
    last = count if last is None else min(last, count)
    if first < 1 or first > last:
        return None
    return first - 1, last - 1


def _native(source: _Source, layout: _Layout, frames: FrameSpan) -> int:
    """Fetch native frames (PS3.5 8.1.1); returns where Pixel Data ends."""
    element, values = layout.pixel_data, layout.values
    order = layout.encoding.order
    if element.length == UNDEFINED or element.end > source.size:
        raise _NotLocated("native pixel data of undefined length or past the end")
    count = _number(values, "frames", order, 1)
    bits = _number(values, "bits", order)
    samples = _number(values, "samples", order, 1)
    photometric = values.get("photometric", b"").decode("ascii", "replace").strip("\0 ")
    if photometric == "YBR_FULL_422":
        samples = 2
    if bits % 8 and count > 1:
        raise _NotLocated("bit-packed frames do not start on byte boundaries")
    frame_bytes = _number(values, "rows", order) * _number(values, "columns", order) * samples
    frame_bytes = frame_bytes * bits // 8 if bits % 8 == 0 else element.length
    span = _span(frames, count)
    if span is not None and frame_bytes:
        start = element.value + span[0] * frame_bytes
        stop = min(element.end, element.value + (span[1] + 1) * frame_bytes)
        if start < stop:
            source.get(start, stop - start)
    return element.end


def _offsets(source: _Source, layout: _Layout, base: int, table: bytes) -> list[int] | None:
    """Each frame's first item, from the Extended Offset Table or the Basic one."""
    count = _number(layout.values, "frames", "<", 1)
    extended, lengths = layout.values.get("eot-1"), layout.values.get("eot-2")
    if extended and lengths:
        offsets = list(struct.unpack(f"<{len(extended) // 8}Q", extended[: len(extended) // 8 * 8]))
    elif table:
        offsets = list(struct.unpack(f"<{len(table) // 4}I", table[: len(table) // 4 * 4]))
    else:
        return None
    if len(offsets) != count or offsets != sorted(offsets) or base + offsets[-1] >= source.size:
        raise _NotLocated("an offset table that does not match Number of Frames")
    return offsets


def _walk_items(
    source: _Source, pos: int, fetch: Callable[[int], bool], stop: int | None = None
) -> tuple[int, int]:
    """Walk items from ``pos`` to the sequence delimiter (or to ``stop``), fetching the
    values ``fetch(index)`` selects; returns (end offset, items walked)."""
    count, length = 0, 0
    while pos != stop:
        # Reading ahead only pays when the items are small enough to share a request.
        ahead = ITEM_LOOKAHEAD if length < ITEM_LOOKAHEAD else 8
        tag, length = struct.unpack("<II", source.get(pos, 8, ahead))
        tag = (tag & 0xFFFF) << 16 | tag >> 16
        if tag == SEQUENCE_END and stop is None:
            return pos + 8, count
        if tag != ITEM or length == UNDEFINED:
            raise _NotLocated("the encapsulated pixel data holds something other than items")
        if fetch(count):
            # The next item's header comes with this value.
            source.get(pos + 8, length, min(length + 8, source.size - pos - 8))
        pos += 8 + length
        count += 1
        if stop is not None and pos > stop:
            raise _NotLocated("items that cross a frame's offset")
    return pos, count


def _encapsulated(source: _Source, layout: _Layout, frames: FrameSpan) -> int:
    """Fetch encapsulated frames (PS3.5 A.4); returns where Pixel Data ends."""
    table_item = source.element(layout.pixel_data.value, _META)
    if table_item.tag != ITEM or table_item.length == UNDEFINED:
        raise _NotLocated("no Basic Offset Table item")
    base = table_item.end
    table = source.header(table_item.value, table_item.length)
    offsets = _offsets(source, layout, base, table)
    count = _number(layout.values, "frames", "<", 1)
    span = _span(frames, count)
    if offsets is None:
        if count == 1:
            return _walk_items(source, base, lambda _: span is not None)[0]
        selected = range(span[0], span[1] + 1) if span is not None else range(0)
        end, items = _walk_items(source, base, selected.__contains__)
        if items != count:
            raise _NotLocated("no offset table, and fragments that are not one per frame")
        return end
    last_frame = base + offsets[-1]
    if span is None:
        source.filler(base, last_frame)
        return _walk_items(source, last_frame, lambda _: False)[0]
    first, last = span
    start = base + offsets[first]
    source.filler(base, start)
    if last + 1 == count:
        return _walk_items(source, start, lambda _: True)[0]
    stop = base + offsets[last + 1]
    source.get(start, stop - start)
    _walk_items(source, start, lambda _: True, stop)
    source.filler(stop, last_frame)
    return _walk_items(source, last_frame, lambda _: False)[0]


# --------------------------------------------------------------------------- the local file


def _write_sparse(source: _Source, end: int, dest: Path, options: DownloadOptions) -> Path:
    """The fetched ranges at their offsets in ``dest``, a new file ``end`` bytes long;
    the rest are holes, which take no space."""
    needed = sum(len(data) for _, data in source.chunks)
    try:
        check_free_space(
            dest.parent, needed, options.min_free_bytes, f"for the {needed} bytes fetched"
        )
        with dest.open("wb") as f:
            # Fetched bytes first, then the filler item headers over them.
            for start, data in [*sorted(source.chunks), *source.fillers]:
                if start < end:
                    f.seek(start)
                    f.write(data[: end - start])
            f.truncate(end)
    except OSError as exc:
        dest.unlink(missing_ok=True)
        raise local_error(exc, dest) from exc
    return dest


def _ranged(
    reader: RangedReader, first: bytes, frames: FrameSpan, dest: Path, options: DownloadOptions
) -> Path:
    source = _Source(reader, first)
    layout = _find_pixel_data(source)
    native = layout.syntax in NATIVE_SYNTAXES
    if not native and layout.pixel_data.length != UNDEFINED:
        raise _NotLocated("encapsulated pixel data of defined length")
    end = (_native if native else _encapsulated)(source, layout, frames)
    return _write_sparse(source, end, dest, options)


def fetch_frames(
    url: str,
    dest_dir: Path,
    options: DownloadOptions,
    policy: UrlPolicy,
    *,
    storage_type: str = "auto",
    deadline_seconds: float | None = None,
    frames: FrameSpan | None = None,
) -> Fetched:
    """Fetch what rendering ``frames`` (1-based, inclusive; last None: to the end) of
    ``url`` needs into a new file in ``dest_dir``; ``frames`` None: the whole file.

    Ranged when the source serves ranges and the frames can be located, else whole.
    MAX_DOWNLOAD_BYTES (``options.max_bytes``) bounds the bytes transferred. Raises
    only ``errors.ServiceError`` types; on failure no file is left behind.
    """
    limits = Limits.from_options(options, deadline_seconds)
    if frames is not None:
        fetched = _try_ranged(url, Path(dest_dir), options, policy, storage_type, limits, frames)
        if fetched is not None:
            return fetched
    whole = fd.download(url, dest_dir, options, policy, storage_type, limits.remaining())
    return Fetched(whole.path, whole.identity, whole.size, False)


def _try_ranged(
    url: str,
    dest_dir: Path,
    options: DownloadOptions,
    policy: UrlPolicy,
    storage_type: str,
    limits: Limits,
    frames: FrameSpan,
) -> Fetched | None:
    """The ranged fetch of ``frames``, or None when a whole download must be made."""
    started = time.monotonic()
    # One fresh name for whichever file results: a server's whole answer, or the sparse file.
    dest = fd.new_download_path(dest_dir)
    try:
        reader, first = open_reader(
            url,
            options,
            policy,
            FIRST_READ,
            storage_type=storage_type,
            limits=limits,
            whole_dest=dest,
        )
    except WholeAnswer as whole:
        return Fetched(whole.download.path, whole.download.identity, whole.download.size, False)
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, RangeUnsupported):
            return None
        raise
    with reader:
        try:
            if reader.identity is None:
                raise RangeUnsupported("no identity for the source")
            path = _ranged(reader, first, frames, dest, options)
        except (RangeUnsupported, _NotLocated, struct.error, ValueError) as exc:
            # A header this walk cannot follow is the whole download's to judge.
            reason = getattr(exc, "reason", type(exc).__name__)
            logger.info("reading %s whole: %s", redact_url(url), reason)
            return None
        logger.info(
            "fetched frames %d-%s of %s: %d bytes in %d requests, %.2f s",
            frames[0],
            frames[1] or "end",
            redact_url(url),
            reader.transferred,
            reader.requests,
            time.monotonic() - started,
        )
        return Fetched(path, reader.identity, reader.transferred, True)
