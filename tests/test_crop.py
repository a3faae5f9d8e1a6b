"""The source region (PS3.18 viewport sx, sy, sw, sh; WADO-URI region): crop, flip, fit.

The region is cut from the rendered frame after the display stages, so a crop
is pixel for pixel the same rectangle of the full render; a negative width or
height mirrors it; the result is then fitted to width/height.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dicom_converter import FrameRange, Region, RenderOptions, render
from errors import InvalidRequest
from image_output import SourceBox, crop_region, region_box
from tests.corpus import bundled_file, corpus_file
from tests.dicom_files import write_image

ROWS, COLUMNS = 30, 40


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    return write_image(tmp_path, (x * 97 + y * 31 + (x * y) % 17).astype(np.uint16))


def png(path: Path, **options: Any) -> np.ndarray:
    result = render(path, RenderOptions("png", **options))
    pixels = np.asarray(Image.open(io.BytesIO(result.image)))
    assert pixels.shape[:2] == (result.height, result.width)
    return pixels


def test_a_crop_is_the_same_rectangle_of_the_full_render(image_file: Path) -> None:
    full = png(image_file)
    assert np.array_equal(png(image_file, region=Region(5, 3, 20, 10)), full[3:13, 5:25])


def test_the_window_comes_from_the_whole_frame_not_the_crop(image_file: Path) -> None:
    crop = render(image_file, RenderOptions("png", region=Region(0, 0, 4, 4)))
    whole = render(image_file, RenderOptions("png"))
    assert crop.window == whole.window


@pytest.mark.parametrize(
    ("region", "flip"),
    [
        (Region(5, 3, -20, 10), (slice(None), slice(None, None, -1))),
        (Region(5, 3, 20, -10), (slice(None, None, -1), slice(None))),
        (Region(5, 3, -20, -10), (slice(None, None, -1), slice(None, None, -1))),
    ],
)
def test_negative_width_or_height_flips(image_file: Path, region: Region, flip: Any) -> None:
    full = png(image_file)
    assert np.array_equal(png(image_file, region=region), full[3:13, 5:25][flip])


def test_whole_image_flip(image_file: Path) -> None:
    full = png(image_file)
    flipped = png(image_file, region=Region(0, 0, -COLUMNS, ROWS))
    assert np.array_equal(flipped, full[:, ::-1])


def test_fraction_region_is_wado_uri_region(image_file: Path) -> None:
    full = png(image_file)
    # region=0.25,0.5,0.75,0.9 (xmin, ymin, xmax, ymax)
    crop = png(image_file, region=Region(0.25, 0.5, 0.5, 0.4, units="fraction"))
    assert np.array_equal(crop, full[15:27, 10:30])


def test_the_crop_is_then_fitted_to_width_and_height(image_file: Path) -> None:
    full = png(image_file)
    crop = png(image_file, region=Region(4, 2, 30, 20), width=15)
    expected = Image.fromarray(full[2:22, 4:34]).resize(
        (15, 10), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    assert np.array_equal(crop, np.asarray(expected))


@pytest.mark.parametrize(
    "region",
    [Region(30, 0, 20, 10), Region(0, 25, 10, 10), Region(35, 20, -10, 5)],
)
def test_a_region_beyond_the_image_is_refused_naming_its_size(
    image_file: Path, region: Region
) -> None:
    with pytest.raises(InvalidRequest, match=f"{COLUMNS} x {ROWS} pixels"):
        render(image_file, RenderOptions("png", region=region))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((0, 0, 0, 5), "must not be 0"),
        ((-1, 0, 5, 5), "at least 0"),
        ((0, 0, float("nan"), 5), "finite"),
        ((0.5, 0.5, -0.2, 0.2, "fraction"), "xmax must exceed xmin"),
        ((0.5, 0.5, 0.6, 0.2, "fraction"), "fractions of the image"),
        ((0, 0, 5, 5, "inches"), "units"),
    ],
)
def test_region_values_are_validated(args: tuple[Any, ...], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        Region(*args)


def test_crop_turns_off_the_embedded_jpeg_passthrough() -> None:
    path = bundled_file("SC_rgb_jpeg_dcmtk.dcm")
    assert render(path, RenderOptions()).passthrough
    cropped = render(path, RenderOptions(region=Region(0, 0, 20, 10)))
    assert not cropped.passthrough and (cropped.width, cropped.height) == (20, 10)


def test_a_reduced_thumbnail_of_a_crop_matches_the_full_crop_scaled() -> None:
    path = corpus_file("CT1_JLSN.dcm")
    region = Region(64, 64, 384, 384)
    full = png(path, region=region)
    thumb = png(path, region=region, width=32)
    scaled = Image.fromarray(full).resize(thumb.shape[::-1], Image.Resampling.LANCZOS)
    diff = np.abs(thumb.astype(int) - np.asarray(scaled).astype(int))
    assert diff.mean() <= 2 and np.percentile(diff, 99) <= 12


def test_crop_scales_to_a_reduced_frame() -> None:
    box = SourceBox(4, 2, 12, 10, flip_x=True)
    half = np.arange(10 * 8).reshape(10, 8)  # a 16 x 20 image decoded at half size
    assert np.array_equal(crop_region(half, box, 16, 20), half[1:5, 2:6][:, ::-1])


def test_region_box_rounds_to_whole_pixels() -> None:
    assert region_box(Region(1.4, 2.6, 3.2, 4.0), 10, 10) == SourceBox(1, 3, 5, 7)
    assert region_box(None, 10, 8) == SourceBox(0, 0, 10, 8)


def test_animations_and_sheets_crop_every_frame(tmp_path: Path) -> None:
    path = bundled_file("SC_rgb_rle_2frame.dcm")
    region = Region(10, 20, -30, 40)
    gif = render(path, RenderOptions("gif", frames=FrameRange(1, None), region=region))
    assert (gif.width, gif.height) == (30, 40)
    sheet = render(path, RenderOptions("png", frames=FrameRange(1, None), region=region))
    assert (sheet.width, sheet.height, sheet.grid) == (60, 40, (2, 1))
    tiles = np.asarray(Image.open(io.BytesIO(sheet.image)))
    assert np.array_equal(tiles[:, :30], png(path, region=region))
    assert np.array_equal(tiles[:, 30:], png(path, frame=2, region=region))
