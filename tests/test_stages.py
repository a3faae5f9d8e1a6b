"""Each display stage of dicom_converter on its own, with datasets built here.

Every stage has the shape ``stage(arr, ds, ...) -> arr`` and returns its input
unchanged when the dataset lacks its module. Expected values are computed from
the formulas of PS3.3 C.11 and C.7, not from the code under test.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_converter import (
    AppliedWindow,
    RenderOptions,
    Window,
    apply_color_depth,
    apply_color_window,
    apply_modality_lut,
    apply_palette_color,
    apply_presentation_lut,
    apply_voi_lut,
    file_voi,
    grayscale_display_lut,
    select_voi,
    stored_value_domain,
    to_display_bytes,
)
from errors import CorruptDicom, InvalidRequest, UnsupportedImage
from lookup_tables import LUT_DEPTHS, SegmentedLut, lut_descriptor, lut_words

VALUES = np.arange(0, 1024, 8, dtype=np.int64)


def dataset(**attrs: object) -> Dataset:
    ds = Dataset()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = descriptor
    item.add_new(0x00283006, "US", data)  # LUT Data
    return item


def window(center: float, width: float, function: str = "LINEAR") -> AppliedWindow:
    return AppliedWindow(center, width, function, "request")


# --- Modality LUT (C.11.1) -----------------------------------------------------


def test_modality_rescale_is_slope_times_value_plus_intercept() -> None:
    out = apply_modality_lut(VALUES, dataset(RescaleSlope=2.5, RescaleIntercept=-1024))
    assert out.dtype == np.float64
    assert np.array_equal(out, VALUES * 2.5 - 1024)


def test_modality_intercept_alone_and_slope_alone() -> None:
    assert np.array_equal(
        apply_modality_lut(VALUES, dataset(RescaleIntercept=-1000)), VALUES - 1000
    )
    assert np.array_equal(apply_modality_lut(VALUES, dataset(RescaleSlope=3)), VALUES * 3.0)


def test_modality_first_of_multiple_values_is_used() -> None:
    ds = dataset(RescaleSlope=["2", "5"], RescaleIntercept=["-10", "7"])
    assert np.array_equal(apply_modality_lut(VALUES, ds), VALUES * 2.0 - 10)


def test_modality_lut_sequence_replaces_rescale_and_clips_to_its_ends() -> None:
    # C.11.1.1.1: first mapped value 10; values below take entry 0, past the end the last.
    item = lut_item([4, 10, 16], [100, 200, 300, 400])
    ds = dataset(ModalityLUTSequence=Sequence([item]), RescaleSlope=7, RescaleIntercept=7)
    out = apply_modality_lut(np.array([0, 10, 11, 12, 13, 14, 999]), ds)
    assert out.tolist() == [100, 100, 200, 300, 400, 400, 400]


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"RescaleSlope": 1, "RescaleIntercept": 0},
        {"RescaleSlope": 0},  # seen in the wild: means no rescale
        {"RescaleSlope": "", "RescaleIntercept": ""},
        {"ModalityLUTSequence": Sequence([])},
        {"ModalityLUTSequence": Sequence([Dataset()])},
    ],
)
def test_modality_absent_returns_the_input(attrs: dict[str, object]) -> None:
    assert apply_modality_lut(VALUES, dataset(**attrs)) is VALUES


# --- VOI LUT (C.11.2) ----------------------------------------------------------


def test_voi_linear_follows_c_11_2_1_2_1() -> None:
    c, w = 500.0, 400.0
    out = apply_voi_lut(VALUES, Dataset(), window(c, w))
    expected = np.clip((VALUES - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255
    assert np.allclose(out, expected)
    # Below c - 0.5 - (w-1)/2 is black, above c - 0.5 + (w-1)/2 is white.
    assert out[np.less_equal(VALUES, c - 0.5 - (w - 1) / 2)].max() == 0
    assert out[np.greater(VALUES, c - 0.5 + (w - 1) / 2)].min() == 255


def test_voi_linear_width_one_is_a_step_at_the_center() -> None:
    out = apply_voi_lut(np.array([99, 100, 101]), Dataset(), window(100, 1))
    assert out.tolist() == [0, 255, 255]


def test_voi_linear_exact_follows_c_11_2_1_3_2() -> None:
    c, w = 512.0, 256.0
    out = apply_voi_lut(VALUES, Dataset(), window(c, w, "LINEAR_EXACT"))
    assert np.allclose(out, np.clip((VALUES - c) / w + 0.5, 0, 1) * 255)


def test_voi_sigmoid_follows_c_11_2_1_3_1() -> None:
    c, w = 512.0, 300.0
    out = apply_voi_lut(VALUES, Dataset(), window(c, w, "SIGMOID"))
    assert np.allclose(out, 255 / (1 + np.exp(-4 * (VALUES - c) / w)))
    assert out[np.searchsorted(VALUES, 512)] == pytest.approx(127.5)


def test_voi_uses_the_files_window_and_function_when_none_is_given() -> None:
    ds = dataset(WindowCenter=["300", "40"], WindowWidth=["200", "80"], VOILUTFunction="SIGMOID")
    assert np.allclose(apply_voi_lut(VALUES, ds), 255 / (1 + np.exp(-4 * (VALUES - 300) / 200)))


def test_voi_lut_sequence_scales_by_its_bit_depth() -> None:
    item = lut_item([1024, 0, 10], [1023 - v for v in range(1024)])  # inverting, 10 bits
    ds = dataset(VOILUTSequence=Sequence([item]))
    assert np.allclose(apply_voi_lut(VALUES, ds), (1023 - VALUES) / 1023 * 255)


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"WindowCenter": 40, "WindowWidth": 0},  # invalid: counts as absent
        {"WindowCenter": 40},
        {"VOILUTSequence": Sequence([])},
    ],
)
def test_voi_absent_returns_the_input(attrs: dict[str, object]) -> None:
    assert apply_voi_lut(VALUES, dataset(**attrs)) is VALUES


def test_voi_selection_precedence() -> None:
    frame = np.array([[10, 20], [30, 40]], np.uint16)
    domain, _ = stored_value_domain(frame)
    item = lut_item([2, 0, 8], [0, 255])
    ds = dataset(WindowCenter=100, WindowWidth=50, VOILUTSequence=Sequence([item]))
    asked = RenderOptions(window=Window(1, 2))
    assert select_voi(ds, asked, frame, domain).source == "request"
    assert select_voi(ds, RenderOptions(), frame, domain).source == "file"
    del ds.WindowCenter, ds.WindowWidth
    assert select_voi(ds, RenderOptions(), frame, domain).source == "voi_lut"
    del ds.VOILUTSequence
    chosen = select_voi(ds, RenderOptions(), frame, domain)
    # LINEAR window mapping min to 0 and max to full scale.
    assert (chosen.source, chosen.center, chosen.width) == ("min_max", 25.5, 31)
    assert file_voi(ds) is None


def test_preset_on_a_non_ct_dataset_is_refused() -> None:
    frame = np.zeros((2, 2), np.uint16)
    domain, _ = stored_value_domain(frame)
    with pytest.raises(InvalidRequest, match="Hounsfield"):
        select_voi(dataset(Modality="MR"), RenderOptions(preset="lung"), frame, domain)
    chosen = select_voi(dataset(RescaleType="HU"), RenderOptions(preset="lung"), frame, domain)
    assert (chosen.center, chosen.width, chosen.source) == (-600, 1500, "preset")


# --- Presentation LUT (C.11.6) and MONOCHROME1 (C.7.6.3.1.2) -------------------


def test_monochrome1_is_inverted() -> None:
    display = np.array([0.0, 100.0, 255.0])
    out = apply_presentation_lut(display, dataset(PhotometricInterpretation="MONOCHROME1"))
    assert out.tolist() == [255.0, 155.0, 0.0]


def test_inverse_shape_is_inverted() -> None:
    display = np.array([0.0, 100.0, 255.0])
    out = apply_presentation_lut(
        display, dataset(PhotometricInterpretation="MONOCHROME2", PresentationLUTShape="INVERSE")
    )
    assert out.tolist() == [255.0, 155.0, 0.0]


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"PhotometricInterpretation": "MONOCHROME2"},
        {"PhotometricInterpretation": "MONOCHROME2", "PresentationLUTShape": "IDENTITY"},
    ],
)
def test_presentation_absent_returns_the_input(attrs: dict[str, object]) -> None:
    display = np.array([0.0, 100.0, 255.0])
    assert apply_presentation_lut(display, dataset(**attrs)) is display


# --- The fused grayscale LUT equals the stages applied one after another --------


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_fused_lut_matches_the_stage_composition(dtype: type) -> None:
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 200, size=(16, 16)).astype(dtype)
    ds = dataset(
        PhotometricInterpretation="MONOCHROME1",
        RescaleSlope=1.5,
        RescaleIntercept=-20,
        WindowCenter=100,
        WindowWidth=120,
    )
    lut, index, applied = grayscale_display_lut(ds, frame, RenderOptions())
    staged = apply_presentation_lut(apply_voi_lut(apply_modality_lut(frame, ds), ds), ds)
    assert applied.source == "file"
    assert np.array_equal(lut[index], to_display_bytes(staged))


# --- Palette Color (C.7.9) -------------------------------------------------------


def palette_dataset(bits: int, red: list[int], green: list[int], blue: list[int]) -> Dataset:
    ds = dataset(PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8, BitsStored=8)
    fmt = f"<{len(red)}{'H' if bits > 8 else 'B'}"
    for name, table in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{name}PaletteColorLookupTableDescriptor", [len(red), 0, bits])
        ds.add_new(
            {"Red": 0x00281201, "Green": 0x00281202, "Blue": 0x00281203}[name],
            "OW",
            struct.pack(fmt, *table) if bits > 8 else bytes(table),
        )
    return ds


def test_palette_lookup_of_8_bit_tables() -> None:
    ds = palette_dataset(8, [0, 10, 20, 30], [255, 254, 253, 252], [1, 1, 2, 2])
    frame = np.array([[0, 1], [2, 3]], np.uint8)
    out = apply_palette_color(frame, ds)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[1, 1].tolist() == [30, 252, 2]
    assert out[0, 1].tolist() == [10, 254, 1]


def test_palette_16_bit_tables_are_scaled_to_8_bits() -> None:
    ds = palette_dataset(16, [0, 257, 65535, 32896], [0] * 4, [65535] * 4)
    out = apply_palette_color(np.array([[0, 1, 2, 3]], np.uint8), ds)
    assert out[0, :, 0].tolist() == [0, 1, 255, 128]
    assert out[0, :, 2].tolist() == [255] * 4


def test_palette_with_broken_tables_is_a_corrupt_file() -> None:
    ds = dataset(PhotometricInterpretation="PALETTE COLOR")
    ds.RedPaletteColorLookupTableDescriptor = [4, 0, 8]
    with pytest.raises(CorruptDicom, match="GreenPaletteColorLookupTableDescriptor"):
        apply_palette_color(np.zeros((2, 2), np.uint8), ds)


@pytest.mark.parametrize("photometric", [None, "MONOCHROME2", "RGB"])
def test_palette_absent_returns_the_input(photometric: str | None) -> None:
    frame = np.zeros((2, 2), np.uint8)
    ds = dataset() if photometric is None else dataset(PhotometricInterpretation=photometric)
    assert apply_palette_color(frame, ds) is frame


# --- RGB depth and a requested window on colour (C.7.6.3.1.2, C.11.2) ------------


def test_rgb_samples_wider_than_8_bits_are_scaled_by_bits_stored() -> None:
    frame = np.array([[[0, 2047, 4095]]], np.uint16)
    out = apply_color_depth(frame, dataset(BitsStored=12))
    assert out.dtype == np.uint8
    assert out.tolist() == [[[0, round(2047 * 255 / 4095), 255]]]
    # Bits Stored given explicitly wins over the dataset's.
    assert apply_color_depth(frame, Dataset(), bits_stored=12).tolist() == out.tolist()


def test_rgb_depth_absent_returns_the_input() -> None:
    frame = np.zeros((2, 2, 3), np.uint8)
    assert apply_color_depth(frame, dataset(BitsStored=8)) is frame


def test_colour_window_applies_the_voi_formula_to_each_channel() -> None:
    frame = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = apply_color_window(frame, Dataset(), window(128, 64))
    expected = to_display_bytes(np.clip((np.arange(256) - 127.5) / 63 + 0.5, 0, 1) * 255).reshape(
        16, 16
    )
    for channel in range(3):
        assert np.array_equal(out[..., channel], expected)


def test_colour_window_absent_returns_the_input() -> None:
    frame = np.zeros((2, 2, 3), np.uint8)
    assert apply_color_window(frame, Dataset()) is frame


# --- To display bytes ---------------------------------------------------------------


def test_display_bytes_truncate_like_dcmtk() -> None:
    out = to_display_bytes(np.array([0.0, 0.999, 1.0, 127.9999999, 254.99, 255.0]))
    assert out.tolist() == [0, 0, 1, 128, 254, 255]


# --- LUT safety: descriptors, data and expansion (C.11.1.1.1, C.7.6.3.1.5, C.7.9.2) -------


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        ([256], "three integers"),
        ([256, 0], "three integers"),
        ([256, 0, 16, 1], "three integers"),
        ([256, 0, 24], "24 bits per entry; it must be 8 to 16"),
        ([256, 0, 7], "7 bits per entry"),
    ],
)
def test_a_bad_modality_lut_descriptor_is_a_corrupt_file(
    descriptor: list[int], message: str
) -> None:
    item = lut_item(descriptor, list(range(256)))
    with pytest.raises(CorruptDicom, match=message):
        apply_modality_lut(VALUES, dataset(ModalityLUTSequence=Sequence([item])))


def test_a_descriptor_of_0_entries_means_65536() -> None:
    assert lut_descriptor([0, 0, 16], "d", LUT_DEPTHS) == (65536, 0, 16)
    # Read as SS (signed pixel data), a count over 32,767 is negative.
    assert lut_descriptor([-28672, -2048, 12], "d", LUT_DEPTHS) == (36864, -2048, 12)


def test_lut_data_must_be_integers() -> None:
    item = Dataset()
    item.LUTDescriptor = [2, 0, 8]
    item.add_new(0x00283006, "LO", ["abc", "def"])
    with pytest.raises(CorruptDicom, match="LUT Data must hold integers"):
        apply_voi_lut(VALUES, dataset(VOILUTSequence=Sequence([item])))
    with pytest.raises(CorruptDicom, match="must hold integers"):
        lut_words([1.5, 2.5], "LUT Data", True)
    with pytest.raises(CorruptDicom, match="odd length"):
        lut_words(b"\x01\x02\x03", "LUT Data", True)


def test_a_lut_item_without_data_is_a_corrupt_file() -> None:
    item = Dataset()
    item.LUTDescriptor = [2, 0, 8]
    with pytest.raises(CorruptDicom, match="no LUT Data"):
        apply_modality_lut(VALUES, dataset(ModalityLUTSequence=Sequence([item])))


def test_a_rescale_that_overflows_is_a_corrupt_file_naming_the_attribute() -> None:
    with pytest.raises(CorruptDicom, match="RescaleSlope and RescaleIntercept"):
        apply_modality_lut(VALUES, dataset(RescaleSlope=1e308))
    # NaN stored in a float map is not the rescale's doing: it passes through.
    floats = np.array([1.0, np.nan], np.float32)
    assert np.isnan(apply_modality_lut(floats, dataset(RescaleSlope=2))[1])


def test_a_non_finite_window_is_refused() -> None:
    with pytest.raises(CorruptDicom, match="not finite"):
        apply_voi_lut(VALUES, Dataset(), AppliedWindow(0.0, math.inf, "LINEAR", "min_max"))


def test_min_max_over_the_float_range_is_refused() -> None:
    ds = dataset(RescaleSlope="5e303")
    frame = np.array([[-32768, 32767]], np.int16)
    with pytest.raises(CorruptDicom, match="RescaleSlope"):
        grayscale_display_lut(ds, frame, RenderOptions())


def segmented(words: list[int]) -> bytes:
    return struct.pack(f"<{len(words)}H", *words)


def test_segments_expand_as_c_7_9_2_describes() -> None:
    # Discrete 0, 10; linear to 50 over 4; indirect: copy the first 2 segments again.
    words = [0, 2, 0, 10, 1, 4, 50, 2, 2, 0, 0]
    assert SegmentedLut(words, None).expand() == [0, 10, 20, 30, 40, 50, 0, 10, 20, 30, 40, 50]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([0, 1, 0] + [1, 65535, 65535] * 2, "past 65536 entries"),
        ([1, 4, 50], "starts with a linear segment"),
        ([0, 1, 7, 2, 1, 3, 0], "too many segments"),  # an indirect segment copying itself
        ([0, 1, 7, 9, 1, 7], "invalid segment"),  # unknown opcode
    ],
)
def test_bad_segments_are_refused_quickly(words: list[int], message: str) -> None:
    with pytest.raises(CorruptDicom, match=message):
        SegmentedLut(words, None).expand()


def test_a_segmented_palette_bomb_is_refused_before_it_expands() -> None:
    ds = dataset(PhotometricInterpretation="PALETTE COLOR")
    bomb = segmented([0, 1, 0] + [1, 65535, 65535, 1, 65535, 0] * 90)  # 1.1 KB
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [0, 0, 16])
        setattr(ds, f"Segmented{colour}PaletteColorLookupTableData", bomb)
    with pytest.raises(CorruptDicom, match="past 65536 entries"):
        apply_palette_color(np.zeros((2, 2), np.uint16), ds)


def test_mismatched_palette_descriptors_are_a_corrupt_file() -> None:
    ds = palette_dataset(8, [0, 1], [0, 1], [0, 1])
    ds.BluePaletteColorLookupTableDescriptor = [2, 1, 8]
    with pytest.raises(CorruptDicom, match="must be identical"):
        apply_palette_color(np.zeros((2, 2), np.uint8), ds)


def test_palette_data_shorter_than_its_descriptor_is_a_corrupt_file() -> None:
    ds = palette_dataset(8, [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3])
    ds.RedPaletteColorLookupTableDescriptor = [400, 0, 8]
    ds.GreenPaletteColorLookupTableDescriptor = ds.BluePaletteColorLookupTableDescriptor = [
        400,
        0,
        8,
    ]
    with pytest.raises(CorruptDicom, match="400 entries"):
        apply_palette_color(np.zeros((2, 2), np.uint8), ds)


def test_palette_values_outside_the_table_take_its_ends() -> None:
    ds = palette_dataset(8, [10, 20, 30, 40], [0] * 4, [0] * 4)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [4, 100, 8])
    out = apply_palette_color(np.array([[0, 99, 100, 103, 104, 255]], np.uint8), ds)
    assert out[0, :, 0].tolist() == [10, 10, 10, 40, 40, 40]


def test_an_alpha_palette_is_ignored() -> None:
    ds = palette_dataset(8, [0, 10, 20, 30], [0] * 4, [0] * 4)
    ds.add_new(0x00281204, "OW", bytes([255, 0, 255, 0]))  # Alpha Palette Color LUT Data
    out = apply_palette_color(np.array([[0, 3]], np.uint8), ds)
    assert out.shape == (1, 2, 3) and out[0, :, 0].tolist() == [0, 30]


@pytest.mark.parametrize("dtype", [np.uint32, np.float32])
def test_palette_indices_wider_than_16_bits_are_unsupported(dtype: type) -> None:
    ds = palette_dataset(8, [0, 1], [0, 1], [0, 1])
    with pytest.raises(UnsupportedImage, match="at most 16 bits"):
        apply_palette_color(np.zeros((2, 2), dtype), ds)
