"""Reading a DICOM file safely, and decoding one frame of it.

Everything here is about the file, not about how it is displayed:

- bounded reading: a header may declare any length, so no read allocates more
  than what the file holds, and a deflated dataset is measured before pydicom
  inflates it;
- the Image Pixel Module (PS3.3 C.7.6.3), validated against the pixel budget
  before anything is allocated;
- the transfer syntax, checked against the installed decoders;
- decoding one frame (integer or float pixel data);
- the embedded JPEG Baseline frame, and the checks that make returning it
  unchanged safe.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

from codestream import ImagePixelModule
from dicom_codecs import (
    BY_UID,
    DEFLATED,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    JPEG_BASELINE,
    NATIVE_SYNTAXES,
    serving_codec,
    supported_syntax_names,
    syntax_name,
)
from errors import (
    CorruptDicom,
    NoPixelData,
    NotDicom,
    ServiceError,
    TooLarge,
    UnsupportedImage,
    UnsupportedTransferSyntax,
    parse_error_text,
)

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset

UNDEFINED_LENGTH = 0xFFFFFFFF
# Values longer than this are read from the file only when needed.
DEFER_SIZE = 64 * 1024
# Reads up to this size are not clamped to what remains of the file.
SMALL_READ = 1024 * 1024
# Colour interpretations a JPEG Baseline frame may carry and be returned as it is.
_PASSTHROUGH_PHOTOMETRIC = ("RGB", "YBR_FULL_422", "YBR_FULL")


def read_dataset(path: Path, max_pixel_bytes: int) -> Dataset:
    """Read a DICOM file header, with or without preamble and file meta.

    Large values (the pixel data) are deferred: they are read from the file
    only when a frame is decoded, so a header that declares gigabytes costs
    nothing. Every other element is converted here, so that a malformed value
    is reported as a corrupt file now rather than failing wherever it is read.
    `max_pixel_bytes` (the MAX_PIXEL_BYTES budget) also bounds how far a
    deflated dataset may inflate.
    """
    import pydicom
    from pydicom import config
    from pydicom.errors import InvalidDicomError

    # pydicom's read-time validation warns with the offending value quoted,
    # which for a Person Name is patient data; those warnings reach the logs.
    config.settings.reading_validation_mode = config.IGNORE
    has_prefix = _has_dicm_prefix(path)
    if has_prefix:
        _check_deflated_size(path, max_pixel_bytes)
    try:
        with _BoundedFile(path) as f:
            ds = pydicom.dcmread(f, force=True, defer_size=DEFER_SIZE)
            if not has_prefix and not _looks_like_dataset(ds):
                raise NotDicom(
                    "the file is not DICOM (no 'DICM' prefix and no DICOM image attributes)"
                )
            _convert_elements(ds.file_meta, None)
            deflated = ds.file_meta.get("TransferSyntaxUID") == DEFLATED
            _convert_elements(ds, None if deflated else f.size)
    except InvalidDicomError as exc:
        raise NotDicom(f"the file is not DICOM: {parse_error_text(exc)}") from exc
    except (MemoryError, ServiceError):
        raise
    except Exception as exc:  # parsers of untrusted bytes raise anything (zlib, struct, ...)
        if has_prefix:
            raise CorruptDicom(
                f"the DICOM file could not be parsed: {parse_error_text(exc)}"
            ) from exc
        raise NotDicom("the file is not DICOM (no 'DICM' prefix and no readable dataset)") from exc
    _ensure_transfer_syntax(ds)
    return ds


class _BoundedFile(io.BufferedReader):
    """A file whose reads never ask for more than what remains in it.

    pydicom reads some values (e.g. Specific Character Set) at whatever length
    the header declares, and a read of n bytes allocates n bytes first: a
    header declaring 3 GiB would allocate 3 GiB for a 100 kB file.
    """

    def __init__(self, path: Path) -> None:
        # A str name: pydicom re-opens the file by name to read deferred values.
        super().__init__(io.FileIO(str(path), "rb"))
        self.size = path.stat().st_size

    def read(self, size: int | None = -1) -> bytes:
        # Small reads cannot allocate much, and tell() costs a system call:
        # only reads that could be large are clamped.
        if size is not None and size > SMALL_READ:
            size = min(size, max(self.size - self.tell(), 0))
            if size == 0:
                return b""
        return super().read(size)


def _convert_elements(ds: Dataset, file_size: int | None) -> None:
    """Convert the values the renderer reads; check deferred ones fit in the file.

    Only rendered attributes are converted (see is_rendered_tag): a CT header
    holds some 230 elements, mostly private, and converting all of them was
    most of the time a small image took to render. The others stay raw and
    are never read.
    """
    from pydicom.dataelem import RawDataElement

    for tag, raw in list(ds._dict.items()):
        if isinstance(raw, RawDataElement) and raw.value is None:
            end = int(raw.value_tell) + int(raw.length)
            if file_size is not None and raw.length != UNDEFINED_LENGTH and end > file_size:
                raise CorruptDicom(
                    f"the file is truncated: element {tag_name(tag)} declares {raw.length} "
                    f"bytes but only {max(file_size - int(raw.value_tell), 0)} remain"
                )
            continue
        if not is_rendered_tag(tag):
            continue
        element = ds[tag]
        if element.VR == "SQ":
            for item in element.value:
                _convert_elements(item, file_size)


# What rendering and the answer's metadata read: the file meta, the Image
# Pixel and presentation groups (0028: pixel module, Modality/VOI LUTs,
# palettes), the pixel data group, and the few identifying attributes below.
RENDERED_GROUPS = frozenset({0x0002, 0x0028, 0x7FE0})
RENDERED_TAGS = frozenset(
    {
        0x00080005,  # Specific Character Set: how Patient's Name is decoded
        0x00080016,  # SOP Class UID
        0x00080018,  # SOP Instance UID
        0x00080020,  # Study Date
        0x00080060,  # Modality
        0x0008103E,  # Series Description
        0x00100010,  # Patient's Name
        0x00180015,  # Body Part Examined
    }
)


def is_rendered_tag(tag: int) -> bool:
    """Whether rendering or the answer reads this element (so it is converted on reading)."""
    return (tag >> 16) in RENDERED_GROUPS or tag in RENDERED_TAGS


def tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _has_dicm_prefix(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _looks_like_dataset(ds: Dataset) -> bool:
    # A raw dataset without file meta (ACR-NEMA style) is accepted only if it
    # holds the attributes every image has; force=True parses any bytes.
    groups = {tag.group for tag in ds.keys()}  # noqa: SIM118 - iterating yields elements
    return bool(groups & {0x0008, 0x0010, 0x0020}) and 0x0028 in groups


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a dataset without file meta the transfer syntax it was read with."""
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        meta = ds.file_meta = FileMetaDataset()
    syntax = meta.get("TransferSyntaxUID")
    if syntax:
        if not isinstance(syntax, str):
            raise CorruptDicom("the file meta Transfer Syntax UID (0002,0010) must be one UID")
        return
    implicit, little = ds.original_encoding
    if implicit is not False:
        meta.TransferSyntaxUID = IMPLICIT_LE
    else:
        meta.TransferSyntaxUID = EXPLICIT_LE if little is not False else EXPLICIT_BE


def _check_deflated_size(path: Path, max_pixel_bytes: int) -> None:
    """Refuse a deflated dataset that inflates past the pixel budget.

    pydicom inflates deflated files in one call, so a small "deflate bomb"
    would allocate without limit; count the inflated bytes first, inflating at
    most 1 MiB at a time and keeping none of it.
    """
    limit = max_pixel_bytes + 16 * 1024 * 1024
    with path.open("rb") as f:
        f.seek(132)
        if _walk_file_meta(f) != DEFLATED:
            return
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        while pending := f.read(256 * 1024):
            while pending:
                try:
                    inflated += len(inflater.decompress(pending, 1024 * 1024))
                except zlib.error as exc:
                    raise CorruptDicom(
                        f"the deflated dataset is corrupt: {parse_error_text(exc)}"
                    ) from exc
                if inflated > limit:
                    raise TooLarge(
                        f"the deflated dataset inflates to more than {limit} bytes "
                        f"(MAX_PIXEL_BYTES is {max_pixel_bytes})"
                    )
                if inflater.eof:
                    # Bytes after the end of the deflate stream are not inflated (pydicom
                    # stops there too); past it, zlib may keep returning the same tail.
                    return
                # Input held back by max_length comes back as the unconsumed tail.
                pending = inflater.unconsumed_tail


def _walk_file_meta(f: io.BufferedReader) -> str | None:
    """Move past the group 0002 elements; return the Transfer Syntax UID among them.

    The file meta is always explicit VR little endian (PS3.10 7.1). Walking it
    by hand reads nothing but the short UID, whatever lengths the header claims.
    """
    syntax = None
    while True:
        start = f.tell()
        header = f.read(8)
        if len(header) < 8 or int.from_bytes(header[0:2], "little") != 0x0002:
            f.seek(start)
            return syntax
        vr = header[4:6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(f.read(4), "little")
        else:
            length = int.from_bytes(header[6:8], "little")
        if int.from_bytes(header[2:4], "little") == 0x0010 and length <= 64:
            syntax = f.read(length).rstrip(b"\0 ").decode("ascii", "replace")
        else:
            f.seek(length, io.SEEK_CUR)


def image_pixel_module(ds: Dataset, max_pixel_bytes: int) -> ImagePixelModule:
    """Validate the Image Pixel Module before anything is allocated."""
    has_pixels = 0x7FE00010 in ds
    is_float = not has_pixels and (0x7FE00008 in ds or 0x7FE00009 in ds)
    if not has_pixels and not is_float:
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise NoPixelData(f"the DICOM file has no pixel data to render{kind}")

    rows = _single_int(ds, "Rows")
    columns = _single_int(ds, "Columns")
    samples = _single_int(ds, "SamplesPerPixel", default=1)
    bits_allocated = _single_int(ds, "BitsAllocated")
    bits_stored = _single_int(ds, "BitsStored", default=bits_allocated)
    representation = _single_int(ds, "PixelRepresentation", default=0)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    frames = _number_of_frames(ds)

    if rows < 1 or columns < 1:
        raise CorruptDicom(f"Rows and Columns must be at least 1, got {rows} x {columns}")
    if samples not in (1, 3):
        raise UnsupportedImage(f"SamplesPerPixel must be 1 or 3, got {samples}")
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise UnsupportedImage(f"BitsAllocated must be 1, 8, 16, 32 or 64, got {bits_allocated}")
    if not 1 <= bits_stored <= bits_allocated:
        raise CorruptDicom(f"BitsStored {bits_stored} must be from 1 to BitsAllocated")
    if not photometric:
        # Required (Type 1) in the Image Pixel Module, and the decoders need it.
        raise CorruptDicom("the image has no PhotometricInterpretation (0028,0004)")

    module = ImagePixelModule(
        rows=rows,
        columns=columns,
        samples_per_pixel=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=representation,
        photometric_interpretation=photometric,
        frames=frames,
        is_float=is_float,
    )
    if module.frame_bytes > max_pixel_bytes:
        raise TooLarge(
            f"one frame of {rows} x {columns} x {samples} samples at {bits_allocated} bits "
            f"needs {module.frame_bytes} bytes, above the pixel budget MAX_PIXEL_BYTES "
            f"({max_pixel_bytes})"
        )
    return module


def _single_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise CorruptDicom(f"the image has no {keyword} (required to render it)")
        return default
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        raise CorruptDicom(f"{keyword} must be a single value, got {len(value)} values")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise CorruptDicom(f"{keyword} must be an integer, got {value!r}") from exc


def _number_of_frames(ds: Dataset) -> int:
    value = ds.get("NumberOfFrames")
    if value in (None, ""):
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError) as exc:
        raise CorruptDicom(f"NumberOfFrames must be an integer, got {value!r}") from exc
    # PS3.3 C.7.6.6: zero is not allowed, but some writers use it for one frame.
    return max(frames, 1)


def transfer_syntax(ds: Dataset) -> str:
    """The transfer syntax UID, checked against the codecs installed (dicom_codecs' table)."""
    uid = str(ds.file_meta.TransferSyntaxUID)
    if serving_codec(uid) is not None:
        return uid
    if uid in BY_UID and BY_UID[uid].decoders:
        raise UnsupportedTransferSyntax(
            f"transfer syntax {uid} ({syntax_name(uid)}) needs a codec that is not installed"
        )
    raise UnsupportedTransferSyntax(
        f"transfer syntax {uid} ({syntax_name(uid)}) is not supported; "
        f"supported: {', '.join(sorted(set(supported_syntax_names())))}"
    )


# Enhanced multi-frame images (PS3.3 C.7.6.16) carry the Modality LUT and VOI
# attributes of each frame in functional group macros, not at the top level:
# Pixel Value Transformation (C.7.6.16.2.9) and Frame VOI LUT (C.7.6.16.2.10).
FRAME_MACROS = {
    "PixelValueTransformationSequence": ("RescaleIntercept", "RescaleSlope", "RescaleType"),
    "FrameVOILUTSequence": (
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "WindowCenterWidthExplanation",
        "VOILUTSequence",
    ),
}
_SHARED_GROUPS = 0x52009229
_PER_FRAME_GROUPS = 0x52009230


def use_frame_functional_groups(ds: Dataset, index: int) -> None:
    """Give frame `index` (0-based) its own Modality LUT and VOI attributes.

    Each macro is taken from the frame's Per-frame Functional Groups item, else
    from the Shared Functional Groups, and replaces the top-level attributes it
    names, so that the display stages read one frame's values as they read a
    single-frame image's. A file without functional groups is left as it is.
    """
    if _SHARED_GROUPS not in ds and _PER_FRAME_GROUPS not in ds:
        return
    try:
        groups = [_group_item(ds, _PER_FRAME_GROUPS, index), _group_item(ds, _SHARED_GROUPS, 0)]
        for macro, keywords in FRAME_MACROS.items():
            item = next((g[macro][0] for g in groups if g is not None and g.get(macro)), None)
            if item is None:
                continue
            for keyword in keywords:
                if keyword in item:
                    ds[keyword] = item[keyword]
                elif keyword in ds:
                    del ds[keyword]
    except (MemoryError, ServiceError):
        raise
    except Exception as exc:  # pydicom parses a raw sequence on first access: anything
        raise CorruptDicom(
            f"the functional groups of frame {index + 1} could not be read: {parse_error_text(exc)}"
        ) from exc


def _group_item(ds: Dataset, tag: int, index: int) -> Dataset | None:
    sequence = ds[tag].value if tag in ds else None
    if not sequence or index >= len(sequence):
        return None
    return sequence[index]


def check_pixel_data_length(ds: Dataset, module: ImagePixelModule) -> None:
    """Refuse native pixel data shorter than the header says (truncated files).

    read_dataset already refused deferred values that run past the end of the
    file; this checks the length against what Rows, Columns and the rest need.
    """
    from pydicom.dataelem import RawDataElement

    if module.is_float or ds.file_meta.TransferSyntaxUID not in NATIVE_SYNTAXES:
        return
    element = ds._dict.get(0x7FE00010)
    if isinstance(element, RawDataElement) and element.value is None:
        length = int(element.length)
    else:
        length = len(ds.PixelData or b"")
    expected = module.native_length
    # A final pad byte may make the length one more; less is missing data.
    if length < expected:
        raise CorruptDicom(
            f"the pixel data is truncated: {length} bytes for {module.frames} frame(s) "
            f"that need {expected}"
        )


def decode_frame(
    ds: Dataset,
    index: int,
    module: ImagePixelModule,
    *,
    max_pixel_bytes: int | None = None,
    reduce: int = 1,
) -> np.ndarray:
    """Decode only frame `index` (0-based) to an ndarray, colour converted to RGB.

    See frame_decoders.decode_frame; `reduce` > 1 may give a smaller frame.
    Each encapsulated frame's own header is held to `max_pixel_bytes`, by
    default what the module's frame needs (the module was held to the budget).
    """
    import frame_decoders

    budget = module.frame_bytes if max_pixel_bytes is None else max_pixel_bytes
    return frame_decoders.decode_frame(ds, index, module, max_pixel_bytes=budget, reduce=reduce)


def embedded_jpeg_frame(ds: Dataset, index: int, module: ImagePixelModule) -> bytes | None:
    """The frame's own JPEG stream, when it is exactly the image the header describes.

    That holds for 8-bit JPEG Baseline colour frames whose stream carries the
    header's dimensions and decodes whole: colour frames get no VOI stage, so
    every decoder shows the same pixels the stream already holds. Whether the
    caller's options allow returning it unchanged is the renderer's question.
    """
    if (
        ds.file_meta.TransferSyntaxUID != JPEG_BASELINE
        or module.samples_per_pixel != 3
        or module.bits_allocated != 8
        or module.photometric_interpretation not in _PASSTHROUGH_PHOTOMETRIC
    ):
        return None
    import frame_decoders

    # Read from the file alone: only this frame's bytes, wherever Pixel Data is deferred.
    stream = frame_decoders.frame_stream(ds, index, module)
    # Trailing padding after EOI is allowed in DICOM fragments; strip it.
    end = stream.rfind(b"\xff\xd9")
    if not stream.startswith(b"\xff\xd8") or end < 0:
        return None
    # Returned unchecked, a stream that disagrees with the header would be shown
    # as if it were the image the header describes.
    if jpeg_frame_header(stream) != (8, module.rows, module.columns, 3):
        return None
    stream = stream[: end + 2]
    if not jpeg_decodes(stream):
        return None
    return stream


def jpeg_decodes(stream: bytes) -> bool:
    """Whether the whole entropy-coded stream decodes, checked at 1/8 scale.

    DCT scaling makes this a small fraction of a full decode, and it keeps a
    truncated or damaged stream from being returned as an image.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(stream)) as image:
            image.draft("RGB", (max(image.width // 8, 1), max(image.height // 8, 1)))
            image.load()
    except (OSError, ValueError, SyntaxError):
        return False
    return True


def jpeg_frame_header(stream: bytes) -> tuple[int, int, int, int] | None:
    """(precision, rows, columns, components) from a JPEG's SOF0/SOF1 segment (T.81 B.2.2)."""
    position = 2
    while position + 4 <= len(stream):
        if stream[position] != 0xFF:
            return None
        marker = stream[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(stream[position + 2 : position + 4], "big")
        if marker in (0xC0, 0xC1):
            segment = stream[position + 4 : position + 2 + length]
            if len(segment) < 6:
                return None
            rows = int.from_bytes(segment[1:3], "big")
            columns = int.from_bytes(segment[3:5], "big")
            return segment[0], rows, columns, segment[5]
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            return None
        position += 2 + length
    return None
