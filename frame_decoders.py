"""Decoding one frame of pixel data, at full size or reduced, with the fastest codec installed.

The codecs are the ones imagecodecs bundles (manylinux wheels for x86_64 and
aarch64), chosen per codestream family in ``dicom_codecs``:

| family   | codec         | reduced decode                                    |
| -------- | ------------- | ------------------------------------------------- |
| jpeg     | libjpeg-turbo | DCT scaling (1/2, 1/4, 1/8) of lossy 8-bit frames |
| jpeg-ls  | CharLS        | none                                              |
| jpeg2000 | OpenJPEG      | resolution levels (Pillow's OpenJPEG, ``reduce``) |
| htj2k    | OpenJPH       | resolution levels (Pillow's OpenJPEG, ``reduce``) |
| jpeg-xl  | libjxl        | none                                              |
| rle      | pydicom       | area average of the stored values                 |
| native   | pydicom       | area average of the stored values                 |

Without imagecodecs (Python < 3.11) every encapsulated frame goes through
pydicom's own decoder plugins (pylibjpeg, Pillow), as before.

The result is what ``pydicom.pixels.pixel_array(ds, index=i)`` gives: the
dtype of BitsAllocated and PixelRepresentation, the same signedness and
unused-bit corrections (``pydicom.pixels.decoders.base``), and RGB for
YBR_FULL, YBR_FULL_422, YBR_ICT and YBR_RCT colour. Every encapsulated frame's
own header is checked by ``codestream.check_frame_stream`` before a codec runs.

A frame is read from the file alone while Pixel Data is still deferred there (see
``pixel_data_in_file``): native frames at their offset, encapsulated ones through
the offset tables or the item headers. Memory then holds one frame, not all of
them, and a sparse file of a ranged fetch is never read where it has holes.
"""

from __future__ import annotations

import io
import os
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

import codestream
from codestream import ImagePixelModule
from dicom_codecs import BY_UID, DEFLATED, JPEG_BASELINE, NATIVE_SYNTAXES, serving_codec
from errors import CorruptDicom, ServiceError, UnsupportedImage, parse_error_text

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from codestream import StreamHeader

JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
UNDEFINED_LENGTH = 0xFFFFFFFF
_YBR = ("YBR_FULL", "YBR_FULL_422")
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# JPEG component identifiers that mean RGB ("RGB" or "rgb" in ASCII), as pydicom reads them.
_RGB_COMPONENT_IDS = (b"RGB", b"rgb")
# DCT scaling factors libjpeg offers for lossy frames.
_DCT_SCALES = (8, 4, 2)


def decode_frame(
    ds: Dataset, index: int, module: ImagePixelModule, *, max_pixel_bytes: int, reduce: int = 1
) -> np.ndarray:
    """Decode frame `index` (0-based): (rows, columns) or (rows, columns, 3) RGB.

    With `reduce` > 1 the frame may come back smaller, by the largest factor
    <= `reduce` the codec allows on both axes (ceil(rows / factor) rows);
    PALETTE COLOR and float frames never do, since averaging palette indices
    or float values is not averaging what is displayed.
    """
    if module.is_float:
        return _float_frame(ds, index, module)
    if module.photometric_interpretation == "PALETTE COLOR" or reduce < 2:
        reduce = 1
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax in NATIVE_SYNTAXES:
        one, at = _native_frame_dataset(ds, index, module)
        return area_average(_checked(_pydicom_frame(one, at), module, 1), reduce)
    stream = frame_stream(ds, index, module)
    header = codestream.check_frame_stream(syntax, stream, module, max_pixel_bytes)
    family = BY_UID[syntax].family
    decoder = _DECODERS.get(family)
    if decoder is None or not _served_here(syntax):
        # RLE (pylibjpeg-rle or pydicom's own) and the pylibjpeg/Pillow fallbacks.
        one, at = _encapsulated_frame_dataset(ds, index, stream)
        arr = _checked(_pydicom_frame(one, at), module, 1)
        return area_average(arr, reduce) if family == "rle" else arr
    arr, factor = _run(decoder, stream, header, module, syntax, reduce)
    return _checked(arr, module, factor)


def frame_stream(ds: Dataset, index: int, module: ImagePixelModule) -> bytes:
    """Frame `index`'s codestream, found through the Basic or Extended Offset Table."""
    from pydicom.encaps import get_frame

    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frame = partial(get_frame, index=index, number_of_frames=module.frames)
    located = pixel_data_in_file(ds)
    try:
        if located is None:
            stream = frame(ds.PixelData, extended_offsets=extended)
        else:
            with _ClampedFile(located[0]) as f:
                f.seek(located[1])
                stream = frame(f, extended_offsets=extended)
    except (ValueError, KeyError, IndexError, TypeError, struct.error, EOFError) as exc:
        reason = parse_error_text(exc)
        raise CorruptDicom(f"the encapsulated pixel data is invalid: {reason}") from exc
    return bytes(stream)


# --- reading one frame from the file ---------------------------------------------------

# Attributes pydicom's decoders read, copied to the dataset of a single frame.
_PIXEL_KEYWORDS = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
)


class _ClampedFile(io.BufferedReader):
    """A file whose reads never ask for more than what remains in it: an offset table
    may declare any length, and a read allocates what it asks for first."""

    def __init__(self, name: str) -> None:
        super().__init__(io.FileIO(name, "rb"))
        self.size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self.size - self.tell(), 0))
            if size == 0:
                return b""
        return super().read(size)


def pixel_data_in_file(ds: Dataset) -> tuple[str, int, int] | None:
    """(file name, value offset, length) of Pixel Data that is still in its file.

    Read with a deferred Pixel Data, a frame is read from the file alone: ``ds.PixelData``
    would load every frame (and a sparse file of a ranged fetch is mostly holes).
    """
    from pydicom.dataelem import RawDataElement

    raw = ds._dict.get(0x7FE00010)
    name = getattr(ds, "filename", None)
    if (
        not isinstance(raw, RawDataElement)
        or raw.value is not None
        or raw.value_tell is None
        or not isinstance(name, str)
        or ds.file_meta.get("TransferSyntaxUID") == DEFLATED
    ):
        return None
    return name, int(raw.value_tell), int(raw.length)


def _single_frame(ds: Dataset, data: bytes) -> Dataset:
    """A dataset of one frame: the pixel attributes of ``ds`` and ``data`` as Pixel Data."""
    from pydicom.dataset import Dataset, FileMetaDataset

    one = Dataset()
    one.file_meta = FileMetaDataset()
    one.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID
    for keyword in _PIXEL_KEYWORDS:
        if keyword in ds:
            setattr(one, keyword, ds[keyword].value)
    one.NumberOfFrames = 1
    one.PixelData = data
    # The raw element's VR: ds["PixelData"] would read every frame from the file.
    vr = getattr(ds._dict.get(0x7FE00010), "VR", None)
    one["PixelData"].VR = vr or ("OW" if one.get("BitsAllocated", 8) > 8 else "OB")
    return one


def _native_frame_dataset(ds: Dataset, index: int, module: ImagePixelModule) -> tuple[Dataset, int]:
    """(dataset, index) to decode native frame ``index`` from, reading only its bytes.

    Bit-packed frames (BitsAllocated 1) need not start on a byte: they are read whole.
    """
    located = pixel_data_in_file(ds)
    if located is None or module.bits_allocated % 8 or module.frames == 1:
        return ds, index
    length = module.stored_samples * module.bits_allocated // 8
    name, offset, stored = located
    start = index * length
    if stored == UNDEFINED_LENGTH or start + length > stored:
        return ds, index
    with _ClampedFile(name) as f:
        f.seek(offset + start)
        data = f.read(length)
    if len(data) != length:
        return ds, index
    return _single_frame(ds, data), 0


def _encapsulated_frame_dataset(ds: Dataset, index: int, stream: bytes) -> tuple[Dataset, int]:
    """(dataset, index) for pydicom's decoders: one frame (``stream``) when Pixel Data is
    still in the file."""
    if pixel_data_in_file(ds) is None:
        return ds, index
    from pydicom.encaps import encapsulate

    return _single_frame(ds, encapsulate([stream], has_bot=True)), 0


def _decode_failed(exc: BaseException) -> CorruptDicom:
    return CorruptDicom(f"the pixel data could not be decoded: {parse_error_text(exc)}")


def _run(
    decoder: Callable[..., tuple[np.ndarray, int]],
    stream: bytes,
    header: StreamHeader,
    module: ImagePixelModule,
    syntax: str,
    reduce: int,
) -> tuple[np.ndarray, int]:
    try:
        return decoder(stream, header, module, syntax, reduce)
    except (KeyboardInterrupt, SystemExit, MemoryError, ServiceError):
        raise
    except BaseException as exc:
        # Codecs raise anything on bad data, and some raise BaseException subclasses.
        raise _decode_failed(exc) from exc


def _pydicom_frame(ds: Dataset, index: int) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, index=index)
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:
        # pydicom's plugins raise anything on bad data (their availability was
        # checked before), and the Rust ones raise pyo3's PanicException.
        raise _decode_failed(exc) from exc


def _checked(arr: np.ndarray, module: ImagePixelModule, factor: int) -> np.ndarray:
    expected = (-(-module.rows // factor), -(-module.columns // factor))
    if module.samples_per_pixel > 1:
        expected += (module.samples_per_pixel,)
    if arr.shape != expected:
        raise CorruptDicom(f"decoded frame has shape {arr.shape}, the header says {expected}")
    return np.ascontiguousarray(arr)


def _float_frame(ds: Dataset, index: int, module: ImagePixelModule) -> np.ndarray:
    # Float Pixel Data (7FE0,0008) / Double Float (7FE0,0009): parametric maps.
    keyword = "FloatPixelData" if 0x7FE00008 in ds else "DoubleFloatPixelData"
    dtype = np.dtype("<f4" if keyword == "FloatPixelData" else "<f8")
    if not ds.original_encoding[1]:
        dtype = dtype.newbyteorder(">")
    count = module.rows * module.columns * module.samples_per_pixel
    data = ds[keyword].value
    start = index * count * dtype.itemsize
    if len(data) < start + count * dtype.itemsize:
        raise CorruptDicom(f"the {keyword} is truncated: frame {index + 1} is incomplete")
    if module.samples_per_pixel != 1:
        raise UnsupportedImage("float pixel data with more than one sample is not supported")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    return arr.reshape(module.rows, module.columns).astype(np.float32)


# --- area average (native and RLE) ---------------------------------------------------


def area_average(arr: np.ndarray, factor: int) -> np.ndarray:
    """The mean of each `factor` x `factor` block (partial blocks at the edges), same dtype.

    Sums build up in a 32- or 64-bit integer array `factor` times smaller than
    the frame, one strided slice at a time: no float copy of the frame, and
    `factor` passes over it in all. Means round half up, signed ones too.
    """
    if factor < 2 or arr.dtype.kind not in "uib":
        return arr
    # 65535 x 128 x 128 still fits in 31 bits.
    wide = np.int32 if arr.dtype.itemsize <= 2 and factor <= 128 else np.int64
    rows, columns = arr.shape[0], arr.shape[1]
    by_rows = np.zeros((-(-rows // factor), *arr.shape[1:]), dtype=wide)
    for k in range(min(factor, rows)):
        part = arr[k::factor]
        np.add(by_rows[: len(part)], part, out=by_rows[: len(part)])
    sums = np.zeros((by_rows.shape[0], -(-columns // factor), *arr.shape[2:]), dtype=wide)
    for k in range(min(factor, columns)):
        part = by_rows[:, k::factor]
        np.add(sums[:, : part.shape[1]], part, out=sums[:, : part.shape[1]])
    row_counts = np.minimum(factor, rows - np.arange(0, rows, factor))
    column_counts = np.minimum(factor, columns - np.arange(0, columns, factor))
    counts = np.outer(row_counts, column_counts).astype(np.int64)
    if sums.ndim == 3:
        counts = counts[:, :, None]
    means = (2 * sums.astype(np.int64) + counts) // (2 * counts)
    return means.astype(arr.dtype)


# --- stored values: what pydicom's decoders make of a codec's output -----------------


def _as_stored(
    arr: np.ndarray, module: ImagePixelModule, family: str, header: StreamHeader
) -> np.ndarray:
    """The codec's samples in the dtype of BitsAllocated and PixelRepresentation.

    pydicom reads a codec's bytes as integers of the pixel representation's
    signedness, widens them to BitsAllocated, then applies one correction:
    J2K (monochrome) when the stream's signedness differs from the header,
    JPEG-LS when signed (the format cannot say), others the unused high bits.
    """
    if arr.dtype.kind not in "ui":
        raise UnsupportedImage(f"the codestream holds {arr.dtype} samples; integer ones are needed")
    kind = "i" if module.pixel_representation == 1 else "u"
    arr = arr.view(np.dtype(f"{kind}{arr.dtype.itemsize}"))
    target = np.dtype(f"{kind}{max(1, module.bits_allocated // 8)}")
    arr = arr.astype(target, copy=False)
    bits = 8 * target.itemsize
    if family in ("jpeg2000", "htj2k"):
        signed = header.signed if header.signed is not None else bool(module.pixel_representation)
        shift = bits - header.precision
        if module.photometric_interpretation not in _MONOCHROME or signed == bool(kind == "i"):
            shift = 0
    elif family == "jpeg-ls":
        shift = bits - header.precision if kind == "i" else 0
    else:
        shift = max(0, module.bits_allocated - module.bits_stored)
    if shift > 0:
        if not arr.flags.writeable:
            arr = arr.copy()
        np.left_shift(arr, shift, out=arr)
        np.right_shift(arr, shift, out=arr)
    return arr


def _ybr_to_rgb(arr: np.ndarray) -> np.ndarray:
    from pydicom.pixels import convert_color_space

    return convert_color_space(arr, "YBR_FULL", "RGB")


# --- JPEG (libjpeg-turbo) ------------------------------------------------------------


def _jpeg_markers(stream: bytes) -> tuple[bool, bool, bytes]:
    """(JFIF APP0 present, Adobe APP14 present, component IDs), read up to the scan."""
    jfif = adobe = False
    ids = b""
    position = 2
    while position + 4 <= len(stream) and stream[position] == 0xFF:
        marker = stream[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        length = int.from_bytes(stream[position + 2 : position + 4], "big")
        segment = stream[position + 4 : position + 2 + length]
        if 0xE0 <= marker <= 0xEF:
            jfif = jfif or segment.startswith(b"JFIF")
            adobe = adobe or (marker == 0xEE and segment.startswith(b"Adobe"))
        elif (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            ids = bytes(segment[6 : 6 + 3 * segment[5] : 3]) if len(segment) > 5 else b""
        elif marker == 0xDA or length < 2:
            break
        position += 2 + length
    return jfif, adobe, ids


def _is_ycbcr(markers: tuple[bool, bool, bytes], module: ImagePixelModule) -> bool:
    """Whether pydicom takes a 3-component JPEG/JPEG-LS frame as YCbCr and converts it.

    Its rules (DecodeRunner._conform_jpg_colorspace): "RGB" component IDs mean
    RGB, a JFIF marker means YCbCr, and otherwise the header's interpretation.
    """
    jfif, _, ids = markers
    if module.samples_per_pixel != 3 or ids in _RGB_COMPONENT_IDS:
        return False
    return jfif or module.photometric_interpretation in _YBR


def _jpeg(
    stream: bytes, header: StreamHeader, module: ImagePixelModule, syntax: str, reduce: int
) -> tuple[np.ndarray, int]:
    from imagecodecs import jpeg8_decode

    markers = _jpeg_markers(stream)
    ycbcr = _is_ycbcr(markers, module)
    if reduce > 1 and header.precision == 8 and syntax in (JPEG_BASELINE, JPEG_EXTENDED):
        scaled = _jpeg_scaled(stream, module, markers, ycbcr, reduce)
        if scaled is not None:
            return scaled
    if module.samples_per_pixel != 3:
        arr = jpeg8_decode(stream)
    elif syntax in (JPEG_BASELINE, JPEG_EXTENDED):
        # libjpeg-turbo's own YCbCr → RGB (with its chroma up-sampling) is the
        # reference decoders' one, and it runs inside the decode pass.
        arr = jpeg8_decode(stream, colorspace="YCbCr" if ycbcr else "RGB", outcolorspace="RGB")
    else:
        # Lossless colour: the samples as stored, converted the way pydicom does.
        space = "YCbCr" if ycbcr else "RGB"
        arr = _as_stored(
            jpeg8_decode(stream, colorspace=space, outcolorspace=space), module, "jpeg", header
        )
        return (_ybr_to_rgb(arr) if ycbcr else arr), 1
    return _as_stored(arr, module, "jpeg", header), 1


def _jpeg_scaled(
    stream: bytes,
    module: ImagePixelModule,
    markers: tuple[bool, bool, bytes],
    ycbcr: bool,
    reduce: int,
) -> tuple[np.ndarray, int] | None:
    """A lossy 8-bit frame decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling via Pillow)."""
    from PIL import Image

    scale = next((s for s in _DCT_SCALES if s <= reduce), 1)
    colour = module.samples_per_pixel == 3
    # Pillow's raw YCbCr output is the stored samples only when libjpeg itself
    # takes the frame as YCbCr (no Adobe marker, no "RGB" component IDs).
    if scale < 2 or module.columns < scale or module.rows < scale:
        return None
    if colour and (markers[1] or markers[2] in _RGB_COMPONENT_IDS):
        return None
    try:
        with Image.open(io.BytesIO(stream), formats=("JPEG",)) as image:
            image.draft("YCbCr" if colour else "L", (module.columns // scale, module.rows // scale))
            if image.mode != ("YCbCr" if colour else "L"):
                return None
            arr = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the full decode reports what is wrong with the stream
    if ycbcr:
        arr = _ybr_to_rgb(arr)
    return arr, scale


# --- JPEG-LS (CharLS), JPEG XL (libjxl) ----------------------------------------------


def _jpeg_ls(
    stream: bytes, header: StreamHeader, module: ImagePixelModule, syntax: str, reduce: int
) -> tuple[np.ndarray, int]:
    from imagecodecs import jpegls_decode

    arr = _as_stored(jpegls_decode(stream), module, "jpeg-ls", header)
    if _is_ycbcr(_jpeg_markers(stream), module):
        arr = _ybr_to_rgb(arr)
    return arr, 1


def _jpeg_xl(
    stream: bytes, header: StreamHeader, module: ImagePixelModule, syntax: str, reduce: int
) -> tuple[np.ndarray, int]:
    from imagecodecs import jpegxl_decode

    # libjxl always hands back RGB (or grey) samples, whatever the DICOM header
    # says: a recompressed YCbCr JPEG is reconstructed as RGB (PS3.5 A.4.12).
    arr = jpegxl_decode(stream)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return _as_stored(arr, module, "jpeg-xl", header), 1


# --- JPEG 2000 (OpenJPEG) and HTJ2K (OpenJPH) ----------------------------------------


def _j2k_colour(arr: np.ndarray, module: ImagePixelModule) -> np.ndarray:
    # OpenJPEG and OpenJPH undo the stream's own colour transform (YBR_ICT and
    # YBR_RCT come back RGB); YBR_FULL data without one is converted as pydicom does.
    if module.samples_per_pixel == 3 and module.photometric_interpretation in _YBR:
        return _ybr_to_rgb(arr)
    return arr


def _levels(header: StreamHeader, reduce: int) -> int:
    level = 0
    while level < header.resolution_levels and 2 ** (level + 1) <= reduce:
        level += 1
    return level


def _htj2k(
    stream: bytes, header: StreamHeader, module: ImagePixelModule, syntax: str, reduce: int
) -> tuple[np.ndarray, int]:
    from imagecodecs import htj2k_decode

    if _levels(header, reduce):
        # OpenJPH's reduced output (imagecodecs' skipres) has the right size but
        # wrong values (an 8-bit frame's mean moves by 3 grey levels, samples by
        # 12); OpenJPEG decodes HTJ2K resolution levels correctly.
        return _jpeg2000(stream, header, module, syntax, reduce)
    with _unraisable_errors() as errors:
        arr = htj2k_decode(stream)
    if errors:
        # imagecodecs' OpenJPH glue reports a damaged stream from a callback that
        # cannot raise: the error only reaches sys.unraisablehook.
        raise errors[0]
    return _j2k_colour(_as_stored(arr, module, "htj2k", header), module), 1


@contextmanager
def _unraisable_errors() -> Iterator[list[BaseException]]:
    caught: list[BaseException] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        caught.append(unraisable.exc_value or RuntimeError("codec error"))

    sys.unraisablehook = hook
    try:
        yield caught
    finally:
        sys.unraisablehook = previous


def _jpeg2000(
    stream: bytes, header: StreamHeader, module: ImagePixelModule, syntax: str, reduce: int
) -> tuple[np.ndarray, int]:
    level = _pillow_level(header, module, _levels(header, reduce))
    if level:
        arr = _j2k_reduced(stream, header, level)
        if arr is not None:
            return _j2k_colour(_as_stored(arr, module, "jpeg2000", header), module), 2**level
    if BY_UID[syntax].family == "htj2k":
        return _htj2k(stream, header, module, syntax, 1)
    from imagecodecs import jpeg2k_decode

    arr = jpeg2k_decode(stream)
    return _j2k_colour(_as_stored(arr, module, "jpeg2000", header), module), 1


def _pillow_level(header: StreamHeader, module: ImagePixelModule, level: int) -> int:
    """The largest level <= `level` Pillow's OpenJPEG can return unscaled.

    imagecodecs' jpeg2k_decode has no resolution option; Pillow's has
    (``reduce``), for grey up to 16 bits and colour up to 8. Pillow rounds the
    reduced size half up where OpenJPEG takes the ceiling, and refuses the
    frame when they differ, so only levels where both agree are used.
    """
    if header.components not in (1, 3) or header.precision > (16 if header.components == 1 else 8):
        return 0
    while level > 0:
        power, half = 1 << level, 1 << (level - 1)
        if all((n + half) // power == -(-n // power) for n in (module.rows, module.columns)):
            return level
        level -= 1
    return 0


def _j2k_reduced(stream: bytes, header: StreamHeader, level: int) -> np.ndarray | None:
    """The frame at resolution level `level` through Pillow, as OpenJPEG's own samples."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(stream), formats=("JPEG2000",)) as image:
            image.reduce = level  # type: ignore[method-assign,assignment]
            image.load()
            out = np.asarray(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # the full decode reports what is wrong with the stream
    # Pillow's OpenJPEG glue (Jpeg2KDecode.c) stores (sample + offset) << shift,
    # offsetting signed samples to unsigned and scaling them to the mode's depth.
    depth = 8 if out.dtype.itemsize == 1 else 16
    shift = depth - header.precision
    offset = 1 << (header.precision - 1) if header.signed else 0
    if shift < 0:
        return None
    values = (out.astype(np.int32) >> shift) - offset
    size = 1 if header.precision <= 8 else 2
    return values.astype(np.dtype(f"{'i' if header.signed else 'u'}{size}"))


_DECODERS: dict[str, Callable[..., tuple[np.ndarray, int]]] = {
    "jpeg": _jpeg,
    "jpeg-ls": _jpeg_ls,
    "jpeg2000": _jpeg2000,
    "htj2k": _htj2k,
    "jpeg-xl": _jpeg_xl,
}


def _served_here(syntax: str) -> bool:
    """Whether the table's codec for `syntax` is one of imagecodecs' (called from here)."""
    codec = serving_codec(syntax)
    return codec is not None and any(m.startswith("imagecodecs.") for m in codec.modules)
