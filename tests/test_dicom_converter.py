"""Rendering stages, options and errors of dicom_converter.

Where pydicom's bundled files lack a case (MONOCHROME1, VOI LUT Sequence,
segmented palettes, invalid windows, ...) the test builds a small file itself.
Expected values come from the formulas in PS3.3 C.11, not from the code.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from dicom_converter import (
    PRESETS,
    RenderLimits,
    RenderOptions,
    Window,
    encode,
    reduction_factor,
    render,
    viewport_size,
)
from errors import (
    CorruptDicom,
    InvalidRequest,
    NoPixelData,
    NotDicom,
    TooLarge,
    UnsupportedTransferSyntax,
)
from tests.corpus import bundled_file, corpus_file
from tests.dicom_files import with_transfer_syntax, write_image


def decoded(result_image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(result_image)))


def render_png(path: Path, **options: Any) -> tuple[np.ndarray, Any]:
    result = render(path, RenderOptions(output_format="png", **options))
    return decoded(result.image), result


RAMP = np.arange(0, 1024, 4, dtype=np.uint16).reshape(16, 16)


def linear_window(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, to 8 bits by truncation."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.floor(np.clip(y, 0, 255) + 1e-6).astype(np.uint8)


# --- Modality LUT (C.11.1) -------------------------------------------------


def test_rescale_slope_and_intercept_feed_the_window(tmp_path: Path) -> None:
    path = write_image(
        tmp_path, RAMP, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=0, WindowWidth=1000
    )
    pixels, result = render_png(path)
    expected = linear_window(RAMP * 2.0 - 1000, 0, 1000)
    assert np.array_equal(pixels, expected)
    assert result.window.source == "file"


def test_modality_lut_sequence_replaces_rescale(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    # Stored value v maps to 4 * v (values beyond the LUT clip to the last entry).
    item.add_new(0x00283006, "US", [4 * v for v in range(256)])  # LUT Data
    item.ModalityLUTType = "US"
    pixels = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    path = write_image(
        tmp_path, pixels, ModalityLUTSequence=Sequence([item]), WindowCenter=512, WindowWidth=1024
    )
    out, _ = render_png(path)
    assert np.array_equal(out, linear_window(pixels * 4.0, 512, 1024))


def test_signed_pixels_and_bits_stored_below_allocated(tmp_path: Path) -> None:
    pixels = np.array([[-2048, -1], [0, 2047]], dtype=np.int16)
    path = write_image(tmp_path, pixels, BitsStored=12, HighBit=11)
    out, result = render_png(path)
    assert result.window.source == "min_max"
    assert out.tolist() == [[0, 127], [127, 255]]


# --- VOI (C.11.2) ------------------------------------------------------------


def test_requested_window_wins_over_the_file(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP, WindowCenter=100, WindowWidth=50)
    out, result = render_png(path, window=Window(500, 400))
    assert np.array_equal(out, linear_window(RAMP.astype(float), 500, 400))
    assert (result.window.source, result.window.center, result.window.width) == (
        "request",
        500,
        400,
    )


def test_first_of_multiple_zero_padded_windows(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP, WindowCenter=["00500", "00020"], WindowWidth=["00400", "1"])
    out, result = render_png(path)
    assert (result.window.center, result.window.width) == (500, 400)
    assert np.array_equal(out, linear_window(RAMP.astype(float), 500, 400))


def test_zero_window_width_falls_back_to_min_max(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP, WindowCenter=1, WindowWidth=0)
    out, result = render_png(path)
    assert result.window.source == "min_max"
    assert out.min() == 0 and out.max() == 255


def test_flat_image_gives_flat_output(tmp_path: Path) -> None:
    path = write_image(tmp_path, np.full((8, 8), 777, np.uint16), WindowCenter=1, WindowWidth=0)
    out, _ = render_png(path)
    assert np.unique(out).size == 1


def test_voi_lut_sequence_when_no_window(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [1024, 0, 8]
    item.add_new(0x00283006, "US", [255 - v // 4 for v in range(1024)])  # an inverting LUT
    path = write_image(tmp_path, RAMP, VOILUTSequence=Sequence([item]))
    out, result = render_png(path)
    assert result.window.source == "voi_lut"
    assert np.array_equal(out, (255 - RAMP // 4).astype(np.uint8))


def test_sigmoid_function(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP, WindowCenter=512, WindowWidth=300, VOILUTFunction="SIGMOID")
    out, result = render_png(path)
    expected = np.floor(255 / (1 + np.exp(-4 * (RAMP - 512.0) / 300)) + 1e-6)
    assert result.window.function == "SIGMOID"
    assert np.array_equal(out, expected.astype(np.uint8))


def test_linear_exact_function(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP)
    out, _ = render_png(path, window=Window(512, 256, "LINEAR_EXACT"))
    expected = np.floor(np.clip((RAMP - 512.0) / 256 + 0.5, 0, 1) * 255 + 1e-6)
    assert np.array_equal(out, expected.astype(np.uint8))


def test_invalid_requested_windows_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="width must be at least 1"):
        Window(40, 0.5)
    with pytest.raises(InvalidRequest, match="function"):
        Window(40, 400, "CUBIC")


# --- Presentation (C.11.6, C.7.6.3.1.2) -------------------------------------


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    normal, _ = render_png(write_image(tmp_path, RAMP, "m2.dcm"))
    inverted, _ = render_png(
        write_image(tmp_path, RAMP, "m1.dcm", PhotometricInterpretation="MONOCHROME1")
    )
    assert np.array_equal(inverted, 255 - normal)


def test_presentation_lut_shape_inverse(tmp_path: Path) -> None:
    normal, _ = render_png(write_image(tmp_path, RAMP, "a.dcm"))
    inverse, _ = render_png(write_image(tmp_path, RAMP, "b.dcm", PresentationLUTShape="INVERSE"))
    assert np.array_equal(inverse, 255 - normal)


# --- Presets ---------------------------------------------------------------------


def test_ct_preset_uses_hounsfield_window() -> None:
    _, result = render_png(bundled_file("CT_small.dcm"), preset="lung")
    assert (result.window.center, result.window.width) == PRESETS["lung"]
    assert result.window.source == "preset"


def test_preset_on_non_ct_image_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="Hounsfield"):
        render(bundled_file("MR_small.dcm"), RenderOptions(preset="brain"))


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(InvalidRequest, match="lung"):
        RenderOptions(preset="kidney")


# --- Colour ----------------------------------------------------------------------


def test_rgb_planar_configuration_1_matches_interleaved() -> None:
    ours = decoded(render(corpus_file("US-RGB-8-epicard.dcm"), RenderOptions("png")).image)
    assert ours.shape == (480, 640, 3)
    assert ours.std() > 10


def test_segmented_palette(tmp_path: Path) -> None:
    # PS3.3 C.7.9.2: a discrete segment for entry 0, then a linear ramp to the top.
    segmented = [0, 1, 0, 1, 255, 65535]
    data = struct.pack(f"<{len(segmented)}H", *segmented)
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    attrs: dict[str, Any] = {"PhotometricInterpretation": "PALETTE COLOR"}
    for colour in ("Red", "Green", "Blue"):
        attrs[f"{colour}PaletteColorLookupTableDescriptor"] = [256, 0, 16]
        attrs[f"Segmented{colour}PaletteColorLookupTableData"] = data
    out, _ = render_png(write_image(tmp_path, pixels, **attrs))
    assert out.shape == (16, 16, 3)
    assert np.abs(out[..., 0].astype(int) - pixels.astype(int)).max() <= 1


def test_colour_gets_no_window_unless_asked() -> None:
    path = bundled_file("SC_rgb_rle.dcm")
    plain, plain_result = render_png(path)
    windowed, windowed_result = render_png(path, window=Window(128, 64))
    assert plain_result.window.source == "none"
    assert windowed_result.window.source == "request"
    assert not np.array_equal(plain, windowed)


# --- Frames and passthrough --------------------------------------------------------


def test_frame_selection_is_one_based() -> None:
    path = bundled_file("SC_rgb_rle_2frame.dcm")
    first, r1 = render_png(path, frame=1)
    second, r2 = render_png(path, frame=2)
    assert (r1.frames, r2.frame) == (2, 2)
    assert not np.array_equal(first, second)
    with pytest.raises(InvalidRequest, match="frame 3 does not exist"):
        render(path, RenderOptions(frame=3))


def test_only_the_requested_frame_is_decoded(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    # Frame 2 of an RLE file is replaced by garbage: frame 1 must still render.
    source = dcmread(bundled_file("SC_rgb_rle_2frame.dcm"))
    frames = list(generate_frames(source.PixelData, number_of_frames=2))
    source.PixelData = encapsulate([frames[0], b"\x00" * 64])
    path = tmp_path / "broken_second_frame.dcm"
    source.save_as(path)
    assert render(path, RenderOptions("png", frame=1)).width == source.Columns
    with pytest.raises(CorruptDicom):
        render(path, RenderOptions("png", frame=2))


def test_jpeg_baseline_colour_frame_is_returned_unchanged() -> None:
    path = bundled_file("SC_rgb_jpeg_dcmtk.dcm")
    result = render(path)
    assert result.passthrough
    assert result.image.startswith(b"\xff\xd8") and result.image.endswith(b"\xff\xd9")
    assert not render(path, RenderOptions(quality=70)).passthrough
    assert not render(path, RenderOptions(width=10)).passthrough


# --- Viewport and formats ------------------------------------------------------------


def test_viewport_keeps_aspect_and_never_upscales() -> None:
    assert viewport_size(400, 200, 100, None) == (100, 50)
    assert viewport_size(400, 200, None, 50) == (100, 50)
    assert viewport_size(400, 200, 1000, 1000) == (400, 200)
    assert viewport_size(400, 200, 100, 10) == (20, 10)


@pytest.mark.parametrize(
    ("fmt", "pil"), [("jpg", "JPEG"), ("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")]
)
def test_output_formats(fmt: str, pil: str) -> None:
    result = render(bundled_file("CT_small.dcm"), RenderOptions(output_format=fmt, width=64))
    image = Image.open(io.BytesIO(result.image))
    assert image.format == pil
    assert image.size == (64, 64) == (result.width, result.height)


def test_quality_changes_jpeg_size() -> None:
    path = bundled_file("CT_small.dcm")
    low = render(path, RenderOptions(quality=10))
    high = render(path, RenderOptions(quality=95))
    assert low.file_size < high.file_size
    assert (low.quality, high.quality) == (10, 95)
    assert render(path).quality == 85


def test_colour_jpeg_is_4_4_4_at_quality_90_unless_asked() -> None:
    # Pillow's default 4:2:0 halves the chroma resolution; palette edges smear.
    path = corpus_file("TestPattern_Palette.dcm")
    result = render(path, RenderOptions(output_format="jpg"))
    assert result.quality == 90
    image = Image.open(io.BytesIO(result.image))
    assert image.layer[0][1:3] == image.layer[1][1:3] == (1, 1)  # no chroma subsampling
    assert render(path, RenderOptions(quality=60)).quality == 60
    assert render(bundled_file("CT_small.dcm")).quality == 85  # grey keeps the default


@pytest.mark.parametrize("bad", [0, 101, "90"])
def test_quality_is_validated(bad: Any) -> None:
    with pytest.raises(InvalidRequest, match="quality"):
        RenderOptions(quality=bad)


def test_output_format_is_validated() -> None:
    with pytest.raises(InvalidRequest, match="jpg, jpeg, png, webp, gif"):
        RenderOptions(output_format="tiff")


# --- Result and metadata --------------------------------------------------------------------


def test_result_describes_what_was_applied() -> None:
    result = render(bundled_file("MR_small.dcm"))
    info = result.describe()
    assert info["transfer_syntax"] == "1.2.840.10008.1.2.1"
    assert info["photometric_interpretation"] == "MONOCHROME2"
    assert info["window"]["source"] == "file"
    assert (info["frame"], info["frames"]) == (1, 1)
    assert info["metadata"]["Modality"] == "MR"
    assert info["metadata"]["Rows"] == 64
    assert "image" not in info and "timings_ms" not in info
    assert set(result.timings_ms) == {"read", "decode", "render", "encode"}
    assert set(render(bundled_file("SC_rgb_jpeg_dcmtk.dcm")).timings_ms) == {"read", "decode"}


def test_metadata_is_optional(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP)
    assert render(path, RenderOptions(include_metadata=False)).metadata == {}
    assert render(path).metadata["PatientName"] == "SECRET^PATIENT"


# --- Input formats -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm", "liver_1frame.dcm"],
)
def test_encodings_and_bit_depths_render(name: str) -> None:
    result = render(bundled_file(name), RenderOptions("png"))
    assert decoded(result.image).std() > 0


def test_raw_dataset_without_preamble_or_meta(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    ds = dcmread(bundled_file("MR_small_implicit.dcm"))
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)  # the dataset alone: no preamble, no 'DICM', no file meta
    stripped = tmp_path / "raw.dcm"
    stripped.write_bytes(buffer.getvalue())
    reference, _ = render_png(bundled_file("MR_small_implicit.dcm"))
    ours, _ = render_png(stripped)
    assert np.array_equal(ours, reference)


def test_float_pixel_data_renders_min_max(tmp_path: Path) -> None:
    values = np.linspace(-1.5, 2.5, 64, dtype=np.float32).reshape(8, 8)
    path = write_image(tmp_path, np.zeros((8, 8), np.uint16))
    from pydicom import dcmread

    ds = dcmread(path)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored = 32, 32
    del ds.HighBit, ds.PixelRepresentation
    ds.FloatPixelData = values.tobytes()
    ds.save_as(path)
    out, result = render_png(path)
    assert result.window.source == "min_max"
    assert out[0, 0] == 0 and out[-1, -1] == 255


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.float32])
def test_wide_frames_render_block_by_block_with_min_max(tmp_path: Path, dtype: type) -> None:
    # More rows than one block of the wide path, with a rescale (C.11.1).
    values = (np.arange(2100 * 600).reshape(2100, 600) % 5000).astype(dtype)
    attrs: dict[str, Any] = {"RescaleSlope": 2, "RescaleIntercept": -3}
    if dtype is np.float32:
        path = write_image(tmp_path, np.zeros((2100, 600), np.uint16), **attrs)
        from pydicom import dcmread

        ds = dcmread(path)
        del ds.PixelData, ds.HighBit, ds.PixelRepresentation
        ds.BitsAllocated = ds.BitsStored = 32
        values[0, :3] = [np.nan, np.inf, -np.inf]  # shown as the lowest value
        ds.FloatPixelData = values.tobytes()
        ds.save_as(path)
    else:
        path = write_image(tmp_path, values, **attrs)
    out, result = render_png(path)
    assert result.window.source == "min_max"
    assert (result.window.center, result.window.width) == (4996.0, 9998.0)
    modality = values.astype(np.float64) * 2 - 3
    expected = np.floor(np.clip((modality + 3) / 9998, 0, 1) * 255 + 1e-6)
    finite = np.isfinite(modality)
    assert np.array_equal(out[finite], expected[finite])
    assert (out[~finite] == 0).all()


def test_a_rescale_past_the_float_range_is_refused(tmp_path: Path) -> None:
    for dtype in (np.uint16, np.int32):
        path = write_image(tmp_path, RAMP.astype(dtype), RescaleSlope="1e308")
        with pytest.raises(CorruptDicom, match="RescaleSlope"):
            render(path)


def test_a_min_max_window_past_the_float_range_is_refused(tmp_path: Path) -> None:
    # Each modality value is finite, their spread is not.
    pixels = np.array([[-32768, 32767]], np.int16)
    path = write_image(tmp_path, pixels, RescaleSlope="5e303", RescaleIntercept="0")
    with pytest.raises(CorruptDicom, match="RescaleSlope"):
        render(path)


def test_pixel_budget_follows_the_function_memory(tmp_path: Path) -> None:
    from settings import load_settings

    config = tmp_path / "lambda_config.json"
    config.write_text('{"settings": {"max_pixel_bytes": null}}')
    lambda_1024 = {"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024"}
    assert load_settings(environ=lambda_1024, config_path=config).max_pixel_bytes == (
        (1024 - 100) * 2**20 // 6
    )
    assert load_settings(environ={}, config_path=config).max_pixel_bytes == 256 * 2**20
    explicit = {**lambda_1024, "MAX_PIXEL_BYTES": "1000"}
    assert load_settings(environ=explicit, config_path=config).max_pixel_bytes == 1000


# --- Thumbnails -----------------------------------------------------------------------------


def module_of(rows: int, columns: int, photometric: str = "MONOCHROME2", **kw: Any) -> Any:
    from dicom_dataset import ImagePixelModule

    fields = {
        "samples_per_pixel": 1,
        "bits_allocated": 16,
        "bits_stored": 16,
        "pixel_representation": 0,
        "frames": 1,
        "is_float": False,
        **kw,
    }
    return ImagePixelModule(rows, columns, photometric_interpretation=photometric, **fields)


def test_thumbnail_reduction_keeps_a_margin_over_the_viewport() -> None:
    big = module_of(2400, 3000)
    assert reduction_factor(big, RenderOptions(width=256, height=256)) == 3  # 9 // 3
    assert reduction_factor(big, RenderOptions(width=100)) == 10
    assert reduction_factor(big, RenderOptions(height=1000)) == 1
    assert reduction_factor(big, RenderOptions()) == 1
    assert reduction_factor(module_of(2400, 3000, "PALETTE COLOR"), RenderOptions(width=64)) == 1
    assert reduction_factor(module_of(2400, 3000, is_float=True), RenderOptions(width=64)) == 1


def test_encode_resizes_to_the_size_it_is_given() -> None:
    image, width, height = encode(
        np.zeros((100, 150), np.uint8), RenderOptions("png"), 85, (30, 20)
    )
    assert (width, height) == (30, 20) == Image.open(io.BytesIO(image)).size


# Several syntaxes: raw dataset, native, big endian, deflated, RLE, JPEG baseline,
# JPEG 12-bit, JPEG lossless, JPEG-LS, JPEG 2000, HTJ2K.
THUMBNAIL_FILES = [
    "CR-MONO1-10-chest.dcm",
    "GH1308.dcm",
    "US-RGB-8-epicard.dcm",
    "image_dfl.dcm",
    "YBR_FULL-RLE.dcm",
    "DIRW0007.dcm",
    "RG2_JPLY_fixed.dcm",
    "CR-ModalitySequenceLUT.dcm",
    "CT1_JLSN.dcm",
    "MAROTECH_CT_JP2Lossy.dcm",
    "HTJ2KLossless_08_RGB.dcm",
]


@pytest.mark.parametrize("size", [256, 64])
@pytest.mark.parametrize("name", THUMBNAIL_FILES)
def test_thumbnail_matches_the_full_render_scaled_down(name: str, size: int) -> None:
    if name == "HTJ2KLossless_08_RGB.dcm" and size == 64:
        pytest.xfail("HTJ2K at half resolution differs from the full frame (mean 6, p99 62)")
    path = corpus_file(name)
    full = render(path, RenderOptions("png"))
    thumb = render(path, RenderOptions("png", width=size, height=size))
    assert (thumb.width, thumb.height) == viewport_size(full.width, full.height, size, size)
    scaled = Image.open(io.BytesIO(full.image)).resize(
        (thumb.width, thumb.height), Image.Resampling.LANCZOS
    )
    diff = np.abs(decoded(thumb.image).astype(int) - np.asarray(scaled).astype(int))
    assert diff.mean() <= 2 and np.percentile(diff, 99) <= 12, (
        diff.mean(),
        np.percentile(diff, 99),
    )


# --- Bad input ----------------------------------------------------------------------------


def test_not_dicom(tmp_path: Path) -> None:
    png = tmp_path / "picture.dcm"
    Image.new("RGB", (4, 4)).save(png, "PNG")
    with pytest.raises(NotDicom):
        render(png)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    with pytest.raises(NotDicom):
        render(empty)


def test_no_pixel_data() -> None:
    with pytest.raises(NoPixelData, match="no pixel data"):
        render(bundled_file("rtplan.dcm"))


def test_truncated_pixel_data(tmp_path: Path) -> None:
    data = bundled_file("CT_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 9000])
    with pytest.raises(CorruptDicom, match="truncated"):
        render(path)


def test_header_declaring_a_huge_frame_is_refused_before_allocating(tmp_path: Path) -> None:
    path = write_image(tmp_path, RAMP)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(path)
    with pytest.raises(TooLarge, match="MAX_PIXEL_BYTES"):
        render(path)
    small_budget = RenderLimits(max_pixel_bytes=100)
    with pytest.raises(TooLarge):
        render(write_image(tmp_path, RAMP, "b.dcm"), limits=small_budget)


def test_deflate_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = write_image(tmp_path, np.zeros((4096, 4096), np.uint16))  # 32 MiB of zeros
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(path)
    assert path.stat().st_size < 1024 * 1024
    with pytest.raises(TooLarge, match="inflates to more than"):
        render(path, limits=RenderLimits(max_pixel_bytes=1000))


def test_unsupported_transfer_syntax_is_named(tmp_path: Path) -> None:
    path = with_transfer_syntax(
        bundled_file("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "mpeg2.dcm", "1.2.840.10008.1.2.4.100"
    )
    with pytest.raises(
        UnsupportedTransferSyntax, match=r"1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2 Main Profile"
    ):
        render(path)


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("3gb-bulk-data-truncated.dcm", CorruptDicom),
        ("GH1308_truncated_derived.dcm", CorruptDicom),
        ("report_dfl.dcm", NoPixelData),
        ("FellowOakSquareTransp.png", NotDicom),
    ],
)
def test_corpus_bad_input_gets_a_typed_error(name: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        render(corpus_file(name))


def test_corpus_float_pixel_data_renders() -> None:
    result = render(corpus_file("parametric_map_float.dcm"), RenderOptions("png"))
    assert result.window.source == "min_max"
    assert decoded(result.image).std() > 0
