"""Render one frame of a DICOM image the way a radiology viewer does.

The rendering path follows the DICOM grayscale and colour pipelines:

    read and decode one frame (dicom_dataset) → Modality LUT (PS3.3 C.11.1)
    → VOI LUT / window (C.11.2) → Presentation LUT (C.11.6) → colour
    (C.7.6.3.1.2 photometric interpretation, C.7.9 palette) → source region
    (crop, flip) → viewport resize → encode (JPEG / PNG / WebP / GIF)

A range of frames (options.frames) becomes an animation or a contact sheet
(frame_sequences), each frame painted by the same stages. The options,
limits and result types live in render_options, the geometry and encoders in
image_output; their names are importable from here.

Each display stage is a small function named after its DICOM stage, in the
manner of pydicom's ``pixels.processing``: ``stage(arr, ds, ...) -> arr``, and
a stage whose module is absent from the dataset returns its input unchanged.

Grayscale integer images never go through a float copy of the whole frame: the
Modality, VOI and Presentation stages are evaluated on the *range of stored
values* (at most 65,536 entries) and fused into one uint8 lookup table that is
applied to the frame once.

``render(path, options, limits)`` is the entry point; ``python
dicom_converter.py`` is the command line. The converter knows no URL, request
field or service setting: it gets a path, options and limits.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dicom_codecs import supported_syntax_names as supported_syntax_names
from dicom_dataset import (
    ImagePixelModule,
    check_pixel_data_length,
    decode_frame,
    embedded_jpeg_frame,
    image_pixel_module,
    read_dataset,
    transfer_syntax,
    use_frame_functional_groups,
)
from errors import CorruptDicom, InvalidRequest, ServiceError, UnsupportedImage
from frame_sequences import SequenceJob, render_sequence
from image_output import (
    SourceBox,
    crop_region,
    encode_image,
    fitted_image,
    region_box,
    viewport_size,
)
from image_output import encode as encode
from lookup_tables import (
    check_palette_depth,
    first_lut_item,
    lut_item_table,
    lut_lookup,
    palette_tables,
)
from render_options import (
    ANIMATION_FORMATS as ANIMATION_FORMATS,
)
from render_options import (
    FORMAT_NAMES,
    LOSSLESS_FORMATS,
    MEDIA_TYPES,
    NO_WINDOW,
    PRESETS,
    VOI_FUNCTIONS,
    AppliedWindow,
    FrameRange,
    Region,
    RenderLimits,
    RenderOptions,
    RenderResult,
    StageTimer,
    Window,
    window_is_valid,
)
from render_options import (
    OUTPUT_FORMATS as OUTPUT_FORMATS,
)
from render_options import (
    PIL_FORMATS as PIL_FORMATS,
)

if TYPE_CHECKING:
    import argparse

    import numpy as np
    from pydicom.dataset import Dataset

# ---------------------------------------------------------------------------
# Options, limits and results (render_options; re-exported for callers)
# ---------------------------------------------------------------------------

# A thumbnail is decoded at least this many times the viewport (see reduction_factor).
REDUCING_GAP = 3
# The least JPEG quality for colour when the caller gives none (with 4:4:4 chroma).
COLOUR_JPEG_QUALITY = 90

METADATA_TAGS = (
    "PatientName",
    "Modality",
    "Rows",
    "Columns",
    "StudyDate",
    "SeriesDescription",
    "SOPInstanceUID",
    "BodyPartExamined",
    "NumberOfFrames",
)


# ---------------------------------------------------------------------------
# Grayscale stages: Modality LUT → VOI → Presentation
# ---------------------------------------------------------------------------


def apply_modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PS3.3 C.11.1: the Modality LUT Sequence, or Rescale Slope/Intercept.

    Returns `arr` itself when the dataset has neither (or an identity rescale);
    otherwise float64 values in modality units. A rescale that takes a finite
    stored value out of the float range (e.g. RescaleSlope 1e308) is a corrupt
    file: no infinity or NaN goes further down the pipeline.
    """
    import numpy as np

    item = first_lut_item(ds, "ModalityLUTSequence")
    if item is not None:
        first, data, _bits = lut_item_table(item, ds, "ModalityLUTSequence")
        return lut_lookup(arr, first, data)
    slope = _first_number(ds.get("RescaleSlope"))
    intercept = _first_number(ds.get("RescaleIntercept"))
    # Empty or zero slopes occur in the wild; they mean "no rescale".
    if not slope:
        slope = 1.0
    if slope == 1.0 and not intercept:
        return arr
    result = arr.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if slope != 1.0:
            result *= slope
        if intercept:
            result += intercept
    overflow = ~np.isfinite(result)
    if arr.dtype.kind == "f":
        overflow &= np.isfinite(arr)  # NaN stored in float maps is not the rescale's doing
    if overflow.any():
        raise CorruptDicom(
            "RescaleSlope and RescaleIntercept take stored values beyond the range of "
            "real numbers; the Modality LUT (PS3.3 C.11.1) must give finite values"
        )
    return result


def apply_voi_lut(arr: np.ndarray, ds: Dataset, window: AppliedWindow | None = None) -> np.ndarray:
    """PS3.3 C.11.2: map modality values to display values 0.0–255.0.

    `window` is the transform to use (see select_voi); without one, the file's
    own first valid window or VOI LUT Sequence item is used. Returns `arr`
    itself when there is neither.
    """
    import numpy as np

    window = window or file_voi(ds)
    if window is None:
        return arr
    check_window_finite(window)
    if window.source == "voi_lut":
        return _voi_lut_sequence(arr, ds)
    assert window.center is not None and window.width is not None
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        # C.11.2.1.3.1; exp overflows to inf far below the center, giving 0 as it should.
        with np.errstate(over="ignore"):
            return 255.0 / (1.0 + np.exp(-4.0 * (arr - c) / w))
    if window.function == "LINEAR_EXACT":
        # C.11.2.1.3.2
        return np.clip((arr - c) / w + 0.5, 0.0, 1.0) * 255.0
    # C.11.2.1.2.1 LINEAR; width 1 is a step at the center.
    if w == 1:
        return np.where(arr > c - 0.5, 255.0, 0.0)
    return np.clip((arr - (c - 0.5)) / (w - 1) + 0.5, 0.0, 1.0) * 255.0


def apply_presentation_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PS3.3 C.11.6 and C.7.6.3.1.2: invert display values 0.0–255.0 when asked.

    MONOCHROME1 and a Presentation LUT Shape of INVERSE display inverted;
    anything else (IDENTITY, or no shape) returns `arr` itself.
    """
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    if photometric_interpretation(ds) == "MONOCHROME1" or shape == "INVERSE":
        return 255.0 - arr
    return arr


# ---------------------------------------------------------------------------
# Colour stages
# ---------------------------------------------------------------------------


def apply_palette_color(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PS3.3 C.7.9 and C.7.6.3.1.2: PALETTE COLOR through the colour LUTs, to 8-bit RGB.

    The (possibly segmented) tables are validated, expanded to at most 65,536
    entries, mapped over every stored value and scaled to 8 bits; the frame is
    indexed once. Returns `arr` itself when the image is not PALETTE COLOR.
    """
    import numpy as np

    if photometric_interpretation(ds) != "PALETTE COLOR":
        return arr
    check_palette_depth(arr.dtype.kind == "f", arr.dtype.itemsize * 8)
    first, tables = palette_tables(ds)
    domain, index = stored_value_domain(arr)
    positions = np.clip(domain - first, 0, tables.shape[1] - 1)
    lut8 = np.ascontiguousarray(tables[:, positions].T)
    return lut8[index]


def apply_color_depth(arr: np.ndarray, ds: Dataset, bits_stored: int | None = None) -> np.ndarray:
    """PS3.3 C.7.6.3.1.2 RGB: scale samples wider than 8 bits to 0–255.

    `bits_stored` defaults to the dataset's Bits Stored. Returns `arr` itself
    when the samples are already 8-bit.
    """
    import numpy as np

    if arr.dtype == np.uint8:
        return arr
    if bits_stored is None:
        bits_stored = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
    top = float(2**bits_stored - 1)
    if arr.dtype.itemsize <= 2 and arr.dtype.kind == "u":
        lut = np.rint(np.minimum(np.arange(2 ** (arr.dtype.itemsize * 8)), top) * 255.0 / top)
        return lut.astype(np.uint8)[arr]
    return np.rint(np.clip(arr.astype(np.float32), 0, top) * (255.0 / top)).astype(np.uint8)


def apply_color_window(
    arr: np.ndarray, ds: Dataset, window: AppliedWindow | None = None
) -> np.ndarray:
    """PS3.3 C.11.2 on 8-bit colour: a requested window on every channel, through one LUT.

    Colour images get no VOI stage of their own, so without a requested
    window this returns `arr` itself.
    """
    import numpy as np

    if window is None:
        return arr
    lut = to_display_bytes(apply_voi_lut(np.arange(256, dtype=np.float64), ds, window))
    return lut[arr]


# ---------------------------------------------------------------------------
# Helpers of the stages
# ---------------------------------------------------------------------------


def photometric_interpretation(ds: Dataset) -> str:
    return str(ds.get("PhotometricInterpretation", "") or "").strip().upper()


def stored_value_domain(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every value a stored integer pixel can take, and the index of each pixel.

    The LUT is indexed by the pixel's bit pattern: uint8/uint16 directly, and
    int8/int16 through an unsigned view, so applying it needs no copy of the
    frame.
    """
    import numpy as np

    unsigned = np.dtype(f"uint{frame.dtype.itemsize * 8}")
    domain = np.arange(2 ** (frame.dtype.itemsize * 8), dtype=unsigned).view(frame.dtype)
    return domain.astype(np.int64), frame.view(unsigned)


def _first_number(value: Any) -> float | None:
    """The first value of a possibly multi-valued, possibly empty DS/IS element."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def file_voi(ds: Dataset) -> AppliedWindow | None:
    """The file's own VOI: its first valid Window Center/Width, else its VOI LUT Sequence.

    An invalid window (e.g. WindowWidth 0) counts as absent.
    """
    function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
    if function not in VOI_FUNCTIONS:
        function = "LINEAR"
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is not None and width is not None and window_is_valid(width, function):
        return AppliedWindow(center, width, function, "file")
    if first_lut_item(ds, "VOILUTSequence") is not None:
        return AppliedWindow(None, None, "LUT", "voi_lut")
    return None


def select_voi(
    ds: Dataset,
    options: RenderOptions,
    frame: np.ndarray,
    modality: np.ndarray,
    fixed: AppliedWindow | None = None,
) -> AppliedWindow:
    """Choose the VOI transform. Precedence:

    `fixed` (the window of a sequence's first frame) → request window or
    preset → file's first Window Center/Width → first VOI LUT Sequence item →
    min–max of the frame after the Modality LUT.
    """
    chosen = fixed or requested_window(ds, options) or file_voi(ds)
    if chosen is not None:
        return chosen
    lo, hi = min_max_after_modality(frame, modality)
    # The window that maps min to 0 and max to full scale with the LINEAR formula.
    return AppliedWindow((lo + hi + 1) / 2, hi - lo + 1, "LINEAR", "min_max")


def check_window_finite(window: AppliedWindow) -> None:
    """PS3.3 C.11.2.1.2: a window is finite; one computed from the modality range may not be.

    Modality values near the ends of the float range (a huge RescaleSlope or
    RescaleIntercept) make a min–max width of infinity, and JSON has no infinity.
    """
    for value in (window.center, window.width):
        if value is not None and not math.isfinite(value):
            raise CorruptDicom(
                "the VOI window from the modality range is not finite: RescaleSlope and "
                "RescaleIntercept spread the stored values beyond the range of real numbers"
            )


def requested_window(ds: Dataset, options: RenderOptions) -> AppliedWindow | None:
    """The window the caller asked for, directly or as a named CT preset."""
    if options.window is not None:
        w = options.window
        return AppliedWindow(w.center, w.width, w.function, "request")
    if options.preset is not None:
        _check_preset_applies(ds, options.preset)
        center, width = PRESETS[options.preset]
        return AppliedWindow(center, width, "LINEAR", "preset")
    return None


def min_max_after_modality(frame: np.ndarray, modality: np.ndarray) -> tuple[float, float]:
    """Min and max of the frame after the Modality LUT, without a copy of the frame.

    `modality` is the Modality LUT over every stored value (indexed by the bit
    pattern, see stored_value_domain). Only the stored values between the
    frame's own min and max are looked at: exact for rescale slope/intercept,
    and for a Modality LUT Sequence it spans the values the frame can hold.
    """
    import numpy as np

    lo, hi = frame.min(), frame.max()
    values = np.arange(int(lo), int(hi) + 1, dtype=np.int64)
    unsigned = np.dtype(f"uint{frame.dtype.itemsize * 8}")
    section = modality[values.astype(frame.dtype).view(unsigned)]
    return float(section.min()), float(section.max())


def _check_preset_applies(ds: Dataset, preset: str) -> None:
    modality = str(ds.get("Modality", "") or "").upper()
    rescale_type = str(ds.get("RescaleType", "") or "").upper()
    if modality == "CT" or rescale_type == "HU":
        return
    raise InvalidRequest(
        f"preset {preset!r} is a CT window in Hounsfield units, but this image is "
        f"{modality or 'of unknown modality'} without an HU rescale; give a window instead"
    )


def _voi_lut_sequence(values: np.ndarray, ds: Dataset) -> np.ndarray:
    import numpy as np

    item = first_lut_item(ds, "VOILUTSequence")
    assert item is not None
    first, data, bits = lut_item_table(item, ds, "VOILUTSequence")
    mapped = lut_lookup(values, first, data)
    # Some writers declare 16 bits but fill fewer; scale by what the data uses.
    full = float(2**bits - 1)
    top = max(float(mapped.max(initial=0)), 1.0)
    scale = full if top > full / 2 else top
    return np.clip(mapped / scale, 0.0, 1.0) * 255.0


def to_display_bytes(display: np.ndarray) -> np.ndarray:
    """Display values 0.0–255.0 to uint8 by truncation, as dcmtk writes them.

    The tiny offset absorbs float error, so that an exact identity window
    (e.g. min–max over 0..255) maps every value to itself.
    """
    import numpy as np

    return np.floor(display + 1e-6).astype(np.uint8)


# ---------------------------------------------------------------------------
# The display pipeline of one decoded frame
# ---------------------------------------------------------------------------


def grayscale_display_lut(
    ds: Dataset, frame: np.ndarray, options: RenderOptions, fixed: AppliedWindow | None = None
) -> tuple[np.ndarray, np.ndarray, AppliedWindow]:
    """Fuse Modality LUT, VOI and Presentation into one uint8 LUT for `frame`.

    Returns the LUT, the frame's index array into it, and the window used
    (`fixed`, when given).
    """
    domain, index = stored_value_domain(frame)
    modality = apply_modality_lut(domain, ds)
    window = select_voi(ds, options, frame, modality, fixed)
    # A flat frame gets the min–max window of width 1: a step at its one value,
    # so every pixel shows black (white for MONOCHROME1), as dcmtk shows it.
    display = apply_voi_lut(modality, ds, window)
    display = apply_presentation_lut(display, ds)
    return to_display_bytes(display), index, window


def render_grayscale(
    ds: Dataset, frame: np.ndarray, options: RenderOptions, fixed: AppliedWindow | None = None
) -> tuple[np.ndarray, AppliedWindow]:
    """A MONOCHROME1/2 frame to uint8 grey, and the window used (`fixed`, when given)."""
    if frame.dtype.kind == "f" or frame.dtype.itemsize > 2:
        return _render_grayscale_wide(ds, frame, options, fixed)
    lut, index, window = grayscale_display_lut(ds, frame, options, fixed)
    # Fancy indexing with uint16 indices converts them in small buffers;
    # np.take would first make an intp copy of the whole frame.
    return lut[index], window


# Pixels per block of rows in the 32-bit and float path: its float64 temporaries
# stay near 8 MB each whatever the frame size.
WIDE_BLOCK_PIXELS = 1 << 20


def _row_blocks(frame: np.ndarray) -> Iterator[slice]:
    step = max(1, WIDE_BLOCK_PIXELS // max(frame.shape[1], 1))
    for start in range(0, frame.shape[0], step):
        yield slice(start, start + step)


def _render_grayscale_wide(
    ds: Dataset, frame: np.ndarray, options: RenderOptions, fixed: AppliedWindow | None = None
) -> tuple[np.ndarray, AppliedWindow]:
    """32-bit and float frames: too many values for a LUT, so the stages run on row blocks.

    Each block goes through Modality, VOI and Presentation in float64 and into
    the uint8 output, so the extra memory is a block, not float copies of the
    frame. Non-finite stored values (NaN in float maps) display as the lowest value.
    """
    import numpy as np

    if fixed is not None and fixed.width == 0:
        return np.zeros(frame.shape, np.uint8), fixed  # a flat first frame's window
    lo, hi = wide_modality_range(ds, frame)
    requested = fixed or requested_window(ds, options)
    if requested is not None:
        window = requested
    elif hi > lo:
        window = AppliedWindow((lo + hi) / 2, hi - lo, "LINEAR_EXACT", "min_max")
    else:
        return np.zeros(frame.shape, np.uint8), AppliedWindow(lo, 0.0, "LINEAR_EXACT", "min_max")
    check_window_finite(window)
    out = np.empty(frame.shape, np.uint8)
    for rows in _row_blocks(frame):
        values = apply_modality_lut(frame[rows], ds)
        if values.dtype.kind == "f":
            values = np.where(np.isfinite(values), values, lo)
        display = apply_presentation_lut(apply_voi_lut(values, ds, window), ds)
        out[rows] = to_display_bytes(display)
    return out, window


def wide_modality_range(ds: Dataset, frame: np.ndarray) -> tuple[float, float]:
    """Min and max of a 32-bit or float frame after the Modality LUT, block by block."""
    import numpy as np

    if frame.dtype.kind in "iu" and first_lut_item(ds, "ModalityLUTSequence") is None:
        # A rescale is monotonic: the ends of the stored range give the ends.
        ends = apply_modality_lut(np.array([frame.min(), frame.max()], dtype=np.float64), ds)
        return float(ends.min()), float(ends.max())
    lo, hi = math.inf, -math.inf
    for rows in _row_blocks(frame):
        values = apply_modality_lut(frame[rows], ds)
        if values.dtype.kind == "f":
            values = values[np.isfinite(values)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    if lo > hi:
        raise CorruptDicom("the pixel data holds no finite values")
    return lo, hi


def display_pixels(
    ds: Dataset,
    frame: np.ndarray,
    module: ImagePixelModule,
    options: RenderOptions,
    fixed: AppliedWindow | None = None,
) -> tuple[np.ndarray, AppliedWindow]:
    """Take a decoded frame through every display stage to uint8 grey or RGB.

    `fixed` is a window chosen earlier (a sequence's first frame) to use as it is.
    """
    photometric = module.photometric_interpretation
    if module.samples_per_pixel == 1 and photometric == "PALETTE COLOR":
        rgb = apply_palette_color(frame, ds)
    elif module.samples_per_pixel == 3:
        rgb = apply_color_depth(frame, ds, module.bits_stored)
    elif photometric in ("MONOCHROME1", "MONOCHROME2"):
        return render_grayscale(ds, frame, options, fixed)
    else:
        raise UnsupportedImage(
            f"PhotometricInterpretation {photometric!r} with {module.samples_per_pixel} "
            "sample(s) per pixel is not supported"
        )
    # Colour gets no VOI stage unless the caller asks for a window.
    if options.window is not None:
        w = options.window
        window = AppliedWindow(w.center, w.width, w.function, "request")
        return apply_color_window(rgb, ds, window), window
    if options.preset is not None:
        raise InvalidRequest(
            f"preset {options.preset!r} applies to grayscale CT images; this image is colour"
        )
    return rgb, NO_WINDOW


# ---------------------------------------------------------------------------
# Viewport and encoding
# ---------------------------------------------------------------------------


def passthrough_frame(
    ds: Dataset, module: ImagePixelModule, options: RenderOptions
) -> bytes | None:
    """The embedded JPEG frame, when the options ask for exactly what it holds.

    That is a JPEG with no window, preset, explicit quality or downscaling.
    """
    if (
        options.output_format != "jpg"
        or options.quality is not None
        or options.window is not None
        or options.preset is not None
        or options.region is not None
    ):
        return None
    if options.width is not None and options.width < module.columns:
        return None
    if options.height is not None and options.height < module.rows:
        return None
    return embedded_jpeg_frame(ds, options.frame - 1, module)


# ---------------------------------------------------------------------------
# render()
# ---------------------------------------------------------------------------


def selected_metadata(ds: Dataset) -> dict[str, Any]:
    """The seed's metadata fields, as JSON-ready values, where present."""
    out: dict[str, Any] = {}
    for keyword in METADATA_TAGS:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if keyword in ("Rows", "Columns", "NumberOfFrames"):
            try:
                out[keyword] = int(value)
            except (TypeError, ValueError):
                continue
        else:
            out[keyword] = str(value)
    return out


def open_image(
    path: Path, frame: int, limits: RenderLimits
) -> tuple[Dataset, ImagePixelModule, str]:
    """Read and check everything a frame needs before any pixel is decoded."""
    ds = read_dataset(path, limits.max_pixel_bytes)
    module = image_pixel_module(ds, limits.max_pixel_bytes)
    syntax = transfer_syntax(ds)
    if frame > module.frames:
        raise InvalidRequest(
            f"frame {frame} does not exist: the image has {module.frames} frame(s)"
        )
    check_pixel_data_length(ds, module)
    return ds, module, syntax


def reduction_factor(
    module: ImagePixelModule,
    options: RenderOptions,
    box: SourceBox | None = None,
    target: tuple[int | None, int | None] | None = None,
) -> int:
    """How much smaller a thumbnail frame may be decoded: 1, or an integer factor >= 2.

    `box` is the source region (default: the whole image) and `target` the
    (width, height) it is fitted to (default: the options' width and height).
    The decoded region stays at least REDUCING_GAP times the target, so that
    Lanczos does the last step: a box average or a wavelet resolution level
    straight to the viewport softens or aliases edges (up to 140 grey levels
    at p99 measured on GH133 as HTJ2K), like Pillow's reducing_gap. Palette
    indices cannot be averaged and float frames are never reduced.
    """
    if module.is_float or module.photometric_interpretation == "PALETTE COLOR":
        return 1
    width, height = (box.width, box.height) if box else (module.columns, module.rows)
    target_w, target_h = target or (options.width, options.height)
    factors = []
    if target_w is not None:
        factors.append(width // target_w)
    if target_h is not None:
        factors.append(height // target_h)
    factor = min(factors, default=1) // REDUCING_GAP
    return factor if factor >= 2 else 1


def paint_frame(
    ds: Dataset,
    module: ImagePixelModule,
    options: RenderOptions,
    budget: int,
    index: int,
    fixed: AppliedWindow | None,
    target: tuple[int | None, int | None] | None,
    timings: StageTimer | None = None,
    release: bool = False,
) -> tuple[np.ndarray, AppliedWindow]:
    """Decode frame `index` (0-based) and take it through the display stages and the region.

    Returns display pixels at decoded resolution (reduced when `target`, the
    output size, allows) and the window used (`fixed`, when given). `release`
    drops the encoded pixel data from `ds` once decoded (a single frame).
    """
    if module.photometric_interpretation == "PALETTE COLOR":
        check_palette_depth(module.is_float, module.bits_allocated)
    box = region_box(options.region, module.columns, module.rows)
    reduce = reduction_factor(module, options, box, target)
    frame = decode_frame(ds, index, module, max_pixel_bytes=budget, reduce=reduce)
    if timings is not None:
        timings.lap("decode")
    if release:
        # The encoded pixel data (up to a frame's size again) is not needed past
        # decoding; dropping it lowers the peak of the display stages by that much.
        for tag in {0x7FE00010, 0x7FE00008, 0x7FE00009} & set(ds.keys()):
            del ds[tag]
    use_frame_functional_groups(ds, index)
    pixels, window = display_pixels(ds, frame, module, options, fixed)
    del frame  # the stored frame is no longer needed while the region is cut
    return crop_region(pixels, box, module.columns, module.rows), window


def render_frame(
    ds: Dataset,
    module: ImagePixelModule,
    options: RenderOptions,
    quality: int,
    timings: StageTimer,
    budget: int,
) -> tuple[bytes, int, int, AppliedWindow]:
    """Decode the frame, take it through the display stages, cut the region, encode.

    A thumbnail may be decoded at reduced size; the output size always comes
    from the module's own rows and columns (or the region's).
    """
    box = region_box(options.region, module.columns, module.rows)
    size = viewport_size(box.width, box.height, options.width, options.height)
    pixels, window = paint_frame(
        ds, module, options, budget, options.frame - 1, None, None, timings, release=True
    )
    timings.lap("render")
    image = fitted_image(pixels, size)
    del pixels
    data = encode_image(image, options.output_format, quality)
    timings.lap("encode")
    return data, image.width, image.height, window


def output_quality(options: RenderOptions, limits: RenderLimits, module: ImagePixelModule) -> int:
    """The caller's quality, else the default; for colour JPEG at least 90 (palette edges)."""
    if options.quality is not None:
        return options.quality
    colour = module.samples_per_pixel == 3 or module.photometric_interpretation == "PALETTE COLOR"
    if colour and options.output_format == "jpg":
        return max(limits.default_quality, COLOUR_JPEG_QUALITY)
    return limits.default_quality


def render(
    path: str | os.PathLike[str],
    options: RenderOptions | None = None,
    limits: RenderLimits | None = None,
) -> RenderResult:
    """Render the DICOM file at `path` to an encoded image.

    One frame (options.frame), or with options.frames an animation (gif,
    webp) or a contact sheet (jpg, png) of a range of frames.
    """
    options = options or RenderOptions()
    limits = limits or RenderLimits()
    timings = StageTimer()
    ds, module, syntax = open_image(Path(path), 1 if options.frames else options.frame, limits)
    quality = output_quality(options, limits, module)
    timings.lap("read")
    if options.frames is not None:
        return render_frames(ds, module, syntax, options, limits, quality, timings)

    passthrough = passthrough_frame(ds, module, options)
    if passthrough is not None:
        image, width, height, window = passthrough, module.columns, module.rows, NO_WINDOW
        timings.lap("decode")
    else:
        image, width, height, window = render_frame(
            ds, module, options, quality, timings, limits.max_pixel_bytes
        )

    return RenderResult(
        image=image,
        format=options.output_format,
        media_type=MEDIA_TYPES[options.output_format],
        quality=None if options.output_format in LOSSLESS_FORMATS else quality,
        width=width,
        height=height,
        frame=options.frame,
        frames=module.frames,
        window=window,
        photometric_interpretation=module.photometric_interpretation,
        transfer_syntax=syntax,
        passthrough=passthrough is not None,
        metadata=selected_metadata(ds) if options.include_metadata else {},
        timings_ms=timings.laps,
    )


def render_frames(
    ds: Dataset,
    module: ImagePixelModule,
    syntax: str,
    options: RenderOptions,
    limits: RenderLimits,
    quality: int,
    timings: StageTimer,
) -> RenderResult:
    """options.frames as one animation or contact sheet (see frame_sequences)."""
    box = region_box(options.region, module.columns, module.rows)
    paint = partial(paint_frame, ds, module, options, limits.max_pixel_bytes, timings=timings)
    colour = module.samples_per_pixel == 3 or module.photometric_interpretation == "PALETTE COLOR"
    job = SequenceJob(
        options, limits, quality, paint, timings, (box.width, box.height), 3 if colour else 1
    )
    sequence = render_sequence(ds, module.frames, job)
    return RenderResult(
        image=sequence.image,
        format=options.output_format,
        media_type=MEDIA_TYPES[options.output_format],
        quality=None if options.output_format in LOSSLESS_FORMATS else quality,
        width=sequence.width,
        height=sequence.height,
        frame=sequence.first,
        frames=module.frames,
        window=sequence.window,
        photometric_interpretation=module.photometric_interpretation,
        transfer_syntax=syntax,
        passthrough=False,
        metadata=selected_metadata(ds) if options.include_metadata else {},
        timings_ms=timings.laps,
        frame_range=(sequence.first, sequence.last),
        layout=sequence.layout,
        grid=sequence.grid,
        frame_durations_ms=sequence.durations_ms,
    )


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def parse_window(text: str) -> Window:
    """Parse the CLI form ``CENTER,WIDTH[,FUNCTION]``."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidRequest(f"--window takes CENTER,WIDTH[,FUNCTION], got {text!r}")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError as exc:
        raise InvalidRequest(f"--window center and width must be numbers, got {text!r}") from exc
    function = parts[2].upper() if len(parts) == 3 else "LINEAR"
    return Window(center, width, function)


def parse_crop(text: str) -> Region:
    """Parse the CLI form ``X,Y,WIDTH,HEIGHT`` in source pixels (negative WIDTH/HEIGHT flip)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x, y, width, height = (float(p) for p in parts)
    except ValueError as exc:
        raise InvalidRequest(
            f"--crop takes X,Y,WIDTH,HEIGHT in pixels (negative WIDTH/HEIGHT flip), got {text!r}"
        ) from exc
    return Region(x, y, width, height)


def _collect_inputs(inputs: Sequence[str]) -> list[tuple[Path, Path]]:
    """Expand folders recursively; return (file, path relative to its input root)."""
    found: list[tuple[Path, Path]] = []
    for name in inputs:
        root = Path(name)
        if root.is_dir():
            for file in sorted(p for p in root.rglob("*") if p.is_file()):
                found.append((file, file.relative_to(root)))
        else:
            found.append((root, Path(root.name)))
    return found


def _progress(done: int, total: int, stream: Any) -> None:
    if not getattr(stream, "isatty", lambda: False)():
        return
    filled = int(30 * done / max(total, 1))
    stream.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
    if done == total:
        stream.write("\n")
    stream.flush()


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="dicom_converter",
        description="Render DICOM files to JPG/PNG/WebP/GIF the way a radiology viewer does.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM files or folders")
    parser.add_argument("-o", "--output", required=True, help="output file, or folder")
    parser.add_argument(
        "--format",
        choices=sorted(FORMAT_NAMES),
        help="output format (default: the output file's extension, else jpg)",
    )
    parser.add_argument("--quality", type=int)
    parser.add_argument("--frame", type=int, default=1, help="1-based frame number")
    parser.add_argument(
        "--frames",
        help="all or N-M (1-based): an animation (gif, webp) or a contact sheet (jpg, png)",
    )
    parser.add_argument(
        "--crop", help="X,Y,WIDTH,HEIGHT source pixels to show; a negative WIDTH/HEIGHT flips"
    )
    parser.add_argument("--window", help="CENTER,WIDTH[,LINEAR|LINEAR_EXACT|SIGMOID]")
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--width", type=int, help="maximum output width")
    parser.add_argument("--height", type=int, help="maximum output height")
    parser.add_argument("--metadata", action="store_true", help="print what was applied as JSON")
    return parser


def cli_output_format(requested: str | None, output: str) -> str:
    """--format, else the format the output file's extension names, else jpg.

    An output file named for one format and a --format naming another would
    hold bytes its name misdescribes: refused.
    """
    named = FORMAT_NAMES.get(Path(output).suffix.lower().lstrip("."))
    if requested is None:
        return named or "jpg"
    if named is not None and FORMAT_NAMES[requested] != named:
        raise InvalidRequest(
            f"--format {requested} does not match the output file {Path(output).name}; "
            "leave out --format, or name the file for the format"
        )
    return requested


def _cli_options(args: argparse.Namespace) -> RenderOptions:
    return RenderOptions(
        output_format=cli_output_format(args.format, args.output),
        quality=args.quality,
        frame=args.frame,
        window=parse_window(args.window) if args.window else None,
        preset=args.preset,
        width=args.width,
        height=args.height,
        include_metadata=args.metadata,
        frames=FrameRange.parse(args.frames) if args.frames else None,
        region=parse_crop(args.crop) if args.crop else None,
    )


def cli_limits() -> RenderLimits:
    """The pixel budget and default quality from the settings (MAX_PIXEL_BYTES, DEFAULT_QUALITY).

    For the command lines: this one and the seed's test_local_dicom.py.
    """
    # Imported here: the command line is an entry point, the converter is not.
    from settings import load_settings

    settings = load_settings()
    return RenderLimits(
        max_pixel_bytes=settings.max_pixel_bytes, default_quality=settings.default_quality
    )


def _convert_one(
    source: Path, target: Path, options: RenderOptions, limits: RenderLimits, echo: str
) -> bool:
    """Render one file to `target`; print what `echo` asks ("json", "path" or "")."""
    import json

    try:
        result = render(source, options, limits)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result.image)
        if echo == "json":
            print(json.dumps({"input": str(source), "output": str(target), **result.describe()}))
        elif echo == "path":
            print(target)
    except ServiceError as exc:
        print(f"error: {source}: {exc.message}", file=sys.stderr)
        return False
    except OSError as exc:
        print(f"error: {source}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def main(argv: Iterable[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        options = _cli_options(args)
        limits = cli_limits()
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2

    jobs = _collect_inputs(args.inputs)
    single = len(jobs) == 1 and not Path(args.inputs[0]).is_dir()
    output = Path(args.output)
    echo = "json" if args.metadata else "path" if single else ""
    failures = 0
    for done, (source, relative) in enumerate(jobs, start=1):
        target = output if single else (output / relative).with_suffix(f".{options.output_format}")
        if not _convert_one(source, target, options, limits, echo):
            failures += 1
        _progress(done, len(jobs), sys.stderr)
    if not single:
        print(f"converted {len(jobs) - failures} of {len(jobs)} file(s) into {output}")
    if failures:
        print(f"{failures} file(s) failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
