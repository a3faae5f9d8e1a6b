"""Multi-frame answers: animations (GIF, WebP) and contact sheets (JPG, PNG).

PS3.18 answers a multi-frame rendered resource with an animation. The first
animation frame and the top-left tile are the single-frame render of the first
frame; every frame shares that frame's window; durations follow the file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageSequence
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_converter import (
    AppliedWindow,
    FrameRange,
    RenderLimits,
    RenderOptions,
    Window,
    render,
)
from errors import InvalidRequest
from frame_sequences import (
    SequenceJob,
    contact_grid,
    frame_durations_ms,
    gif_durations_ms,
    render_sequence,
    tile_size,
    webp_durations_ms,
)
from render_options import StageTimer
from tests.corpus import bundled_file, corpus_file
from tests.dicom_files import image_dataset

FRAMES = 12
ROWS, COLUMNS = 30, 40


def cine(count: int = FRAMES, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """16-bit frames that differ from each other in content and in range."""
    y, x = np.mgrid[0:rows, 0:columns]
    frames = [(x * 37 + y * 11 + i * 97) % (900 + 10 * i) + 20 * i for i in range(count)]
    return np.stack(frames).astype(np.uint16)


def write_cine(folder: Path, frames: np.ndarray, name: str = "cine.dcm", **attrs: Any) -> Path:
    ds = image_dataset(frames[0], NumberOfFrames=len(frames), **attrs)
    ds.PixelData = np.ascontiguousarray(frames).tobytes()
    path = folder / name
    ds.save_as(path, enforce_file_format=True)
    return path


def still(path: Path, **options: Any) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(render(path, RenderOptions("png", **options)).image)))


def animation_frames(data: bytes, mode: str = "L") -> list[np.ndarray]:
    with Image.open(io.BytesIO(data)) as image:
        return [np.asarray(frame.convert(mode)) for frame in ImageSequence.Iterator(image)]


def durations(data: bytes) -> list[int]:
    with Image.open(io.BytesIO(data)) as image:
        out = []
        for index in range(image.n_frames):
            image.seek(index)
            image.load()  # WebP reads a frame's duration as it decodes it
            out.append(image.info["duration"])
        return out


def as_window(applied: AppliedWindow) -> Window:
    assert applied.center is not None and applied.width is not None
    return Window(applied.center, applied.width, applied.function)


@pytest.fixture
def cine_file(tmp_path: Path) -> Path:
    return write_cine(tmp_path, cine())


# --- Animations ------------------------------------------------------------------------------


def test_gif_has_every_frame_loops_forever_and_starts_with_frame_1(cine_file: Path) -> None:
    result = render(cine_file, RenderOptions("gif", frames=FrameRange(1, None)))
    assert (result.format, result.media_type, result.layout) == ("gif", "image/gif", "animation")
    assert result.frame_range == (1, FRAMES) and result.quality is None
    with Image.open(io.BytesIO(result.image)) as image:
        assert image.n_frames == FRAMES and image.info["loop"] == 0
    frames = animation_frames(result.image)
    # A 256-grey palette holds grey exactly.
    assert np.array_equal(frames[0], still(cine_file))


def test_every_frame_shares_the_first_frames_window(cine_file: Path) -> None:
    result = render(cine_file, RenderOptions("gif", frames=FrameRange(1, None)))
    assert result.window.source == "min_max"
    frames = animation_frames(result.image)
    window = as_window(result.window)
    for number in (2, 7, FRAMES):
        assert np.array_equal(frames[number - 1], still(cine_file, frame=number, window=window))
    # Without the shared window frame 7 would be stretched to its own min–max.
    assert not np.array_equal(frames[6], still(cine_file, frame=7))


def test_a_requested_window_serves_every_frame(cine_file: Path) -> None:
    window = Window(600, 800)
    result = render(cine_file, RenderOptions("gif", frames=FrameRange(1, None), window=window))
    assert result.window == AppliedWindow(600, 800, "LINEAR", "request")
    assert np.array_equal(
        animation_frames(result.image)[4], still(cine_file, frame=5, window=window)
    )


def test_a_range_starts_at_its_first_frame(cine_file: Path) -> None:
    result = render(cine_file, RenderOptions("gif", frames=FrameRange(3, 5)))
    assert result.frame_range == (3, 5) and result.frame == 3
    frames = animation_frames(result.image)
    assert len(frames) == 3
    assert np.array_equal(frames[0], still(cine_file, frame=3))


def test_webp_animation_has_every_frame(cine_file: Path) -> None:
    result = render(cine_file, RenderOptions("webp", frames=FrameRange(1, None), quality=95))
    assert (result.media_type, result.quality, result.layout) == ("image/webp", 95, "animation")
    with Image.open(io.BytesIO(result.image)) as image:
        assert image.n_frames == FRAMES and image.info["loop"] == 0
    first = animation_frames(result.image)[0].astype(int)
    assert np.abs(first - still(cine_file)).mean() < 3  # lossy


def test_animation_is_fitted_to_width_and_height(cine_file: Path) -> None:
    result = render(cine_file, RenderOptions("gif", frames=FrameRange(1, 4), width=20))
    assert (result.width, result.height) == (20, 15)
    frames = animation_frames(result.image)
    assert frames[0].shape == (15, 20)
    assert np.array_equal(frames[0], still(cine_file, width=20))


def test_colour_frames_are_quantised_closely(tmp_path: Path) -> None:
    y, x = np.mgrid[0:ROWS, 0:COLUMNS]
    rgb = np.stack(
        [np.stack([x * 6 + i, y * 8, (x + y) * 3 + 5 * i], axis=-1) for i in range(4)]
    ).astype(np.uint8)
    path = write_cine(tmp_path, rgb)
    result = render(path, RenderOptions("gif", frames=FrameRange(1, None)))
    frames = animation_frames(result.image, "RGB")
    assert len(frames) == 4
    assert np.abs(frames[0].astype(int) - still(path)).mean() < 4


def test_grey_stored_as_rgb_stays_exact(tmp_path: Path) -> None:
    grey = (cine(3) % 256).astype(np.uint8)
    path = write_cine(tmp_path, np.repeat(grey[..., None], 3, axis=-1))
    result = render(path, RenderOptions("gif", frames=FrameRange(1, None)))
    assert np.array_equal(animation_frames(result.image, "RGB")[1], still(path, frame=2))


def test_a_single_frame_may_be_a_gif() -> None:
    path = bundled_file("CT_small.dcm")
    result = render(path, RenderOptions("gif"))
    assert (result.layout, result.media_type) == ("single", "image/gif")
    assert "layout" not in result.describe() and "grid" not in result.describe()
    with Image.open(io.BytesIO(result.image)) as image:
        assert image.format == "GIF" and getattr(image, "n_frames", 1) == 1
        assert np.array_equal(np.asarray(image.convert("L")), still(path))


def test_bundled_two_frame_colour_file() -> None:
    path = bundled_file("SC_rgb_rle_2frame.dcm")
    for fmt in ("gif", "webp"):
        result = render(path, RenderOptions(fmt, frames=FrameRange(1, None)))
        with Image.open(io.BytesIO(result.image)) as image:
            assert image.n_frames == 2, fmt


# --- Timing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"FrameTime": 40}, [40] * 4),
        ({"FrameTimeVector": [0, 50, 120, 30]}, [50, 120, 30, 30]),
        ({"CineRate": 25}, [40] * 4),
        ({"RecommendedDisplayFrameRate": 20}, [50] * 4),
        ({}, [100] * 4),  # 10 fps
        ({"FrameTime": 40, "CineRate": 5}, [40] * 4),  # Frame Time first
    ],
)
def test_durations_follow_the_file(
    tmp_path: Path, attrs: dict[str, Any], expected: list[int]
) -> None:
    path = write_cine(tmp_path, cine(4), **attrs)
    for fmt in ("gif", "webp"):
        result = render(path, RenderOptions(fmt, frames=FrameRange(1, None)))
        assert list(result.frame_durations_ms or ()) == expected, fmt
        assert result.describe()["frame_durations_ms"] == expected
        assert durations(result.image) == expected, fmt


def test_malformed_timing_falls_back_to_the_next_source() -> None:
    ds = Dataset()
    ds[0x00181063] = RawDataElement(Tag(0x00181063), "DS", 3, b"abc", 0, False, True)
    ds.FrameTimeVector = [0, 0, 0]  # zero increments are no timing
    ds.CineRate = 25
    assert frame_durations_ms(ds, 1, 3, 3) == [40.0] * 3
    assert frame_durations_ms(Dataset(), 2, 3, 3) == [100.0] * 2


def test_gif_centiseconds_keep_the_files_pace() -> None:
    shown = gif_durations_ms([1000 / 30] * 30)
    assert sum(shown) == 1000 and set(shown) == {30, 40}
    assert webp_durations_ms([1000 / 30] * 30) == (33, 34, 33) * 10


def test_no_frame_is_shorter_than_browsers_allow() -> None:
    assert gif_durations_ms([5, 5, 5]) == (20, 20, 20)
    assert webp_durations_ms([1, 1]) == (20, 20)


def test_a_cine_files_frame_time_vector() -> None:
    path = corpus_file("DIRW0007.dcm")
    result = render(path, RenderOptions("webp", frames=FrameRange(1, 5), width=64))
    assert result.frame_durations_ms is not None and len(result.frame_durations_ms) == 5
    assert all(25 <= d <= 60 for d in result.frame_durations_ms)


# --- Contact sheets --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "grid"),
    [(1, (1, 1)), (2, (2, 1)), (5, (3, 2)), (12, (4, 3)), (16, (4, 4)), (17, (5, 4))],
)
def test_grid_is_near_square(count: int, grid: tuple[int, int]) -> None:
    assert contact_grid(count) == grid


def test_contact_sheet_tiles_frames_in_row_major_order(cine_file: Path) -> None:
    result = render(cine_file, RenderOptions("png", frames=FrameRange(1, None)))
    assert (result.layout, result.grid) == ("contact_sheet", (4, 3))
    assert (result.width, result.height) == (4 * COLUMNS, 3 * ROWS)
    sheet = np.asarray(Image.open(io.BytesIO(result.image)))
    assert np.array_equal(sheet[:ROWS, :COLUMNS], still(cine_file))
    window = as_window(result.window)
    tile_6 = sheet[ROWS : 2 * ROWS, COLUMNS : 2 * COLUMNS]  # row 2, column 2: frame 6
    assert np.array_equal(tile_6, still(cine_file, frame=6, window=window))


def test_contact_sheet_is_fitted_to_width_and_height(cine_file: Path) -> None:
    result = render(
        cine_file, RenderOptions("png", frames=FrameRange(1, None), width=100, height=100)
    )
    # Each tile fits 100/4 x 100/3: 25 x 19 for a 40 x 30 frame.
    assert (result.width, result.height) == (4 * 25, 3 * 19)
    sheet = np.asarray(Image.open(io.BytesIO(result.image)))
    assert np.array_equal(sheet[:19, :25], still(cine_file, width=25, height=19))
    assert result.describe()["grid"] == [4, 3]


def test_contact_sheet_shrinks_tiles_to_the_pixel_budget(cine_file: Path) -> None:
    limits = RenderLimits(max_pixel_bytes=4 * COLUMNS * 3 * ROWS // 4 + 4096)
    result = render(cine_file, RenderOptions("jpg", frames=FrameRange(1, None)), limits)
    assert result.width * result.height <= limits.max_pixel_bytes
    assert result.width < 4 * COLUMNS and result.grid == (4, 3)


def test_tile_size_stays_within_the_largest_side() -> None:
    width, height = tile_size((4000, 3000), (10, 10), RenderOptions(), 1 << 40, 1)
    assert width * 10 <= 16384 and height * 10 <= 16384


# --- Bounds ----------------------------------------------------------------------------------


def test_frames_beyond_the_file_are_refused_naming_its_count(cine_file: Path) -> None:
    with pytest.raises(InvalidRequest, match=f"has {FRAMES} frame"):
        render(cine_file, RenderOptions("gif", frames=FrameRange(5, FRAMES + 1)))


def test_more_frames_than_max_frames_is_refused(cine_file: Path) -> None:
    with pytest.raises(InvalidRequest, match=r"MAX_FRAMES \(5\).*frames=1-5"):
        render(
            cine_file, RenderOptions("gif", frames=FrameRange(1, None)), RenderLimits(max_frames=5)
        )


@pytest.mark.parametrize("text", ["0", "3-2", "x", "1-", "-4"])
def test_frame_range_text_is_validated(text: str) -> None:
    with pytest.raises(InvalidRequest, match="frames"):
        FrameRange.parse(text)


def test_frame_range_text_forms() -> None:
    assert FrameRange.parse("all") == FrameRange(1, None)
    assert FrameRange.parse("4") == FrameRange(4, 4)
    assert FrameRange.parse(" 2-9 ") == FrameRange(2, 9)


def test_only_the_requested_frames_are_painted_one_at_a_time() -> None:
    painted: list[int] = []
    windows: list[AppliedWindow | None] = []
    first_window = AppliedWindow(10.0, 20.0, "LINEAR", "min_max")

    def paint(index: int, window: AppliedWindow | None, target: Any) -> Any:
        painted.append(index)
        windows.append(window)
        return np.full((6, 8), index, np.uint8), window or first_window

    options = RenderOptions("gif", frames=FrameRange(4, 7))
    job = SequenceJob(options, RenderLimits(), 85, paint, StageTimer(), (8, 6), channels=1)
    sequence = render_sequence(Dataset(), 50, job)
    assert painted == [3, 4, 5, 6]
    assert windows == [None, first_window, first_window, first_window]
    assert sequence.window == first_window
    assert [int(f[0, 0]) for f in animation_frames(sequence.image)] == [3, 4, 5, 6]


# --- Corpus ----------------------------------------------------------------------------------


def test_nuclear_medicine_series_as_animation_and_sheet() -> None:
    path = corpus_file("NM-MONO2-16-13x-heart.dcm")
    gif = render(path, RenderOptions("gif", frames=FrameRange(1, None)))
    assert (
        animation_frames(gif.image)[0].shape == (64, 64) and len(animation_frames(gif.image)) == 13
    )
    assert np.array_equal(animation_frames(gif.image)[0], still(path))
    sheet = render(path, RenderOptions("png", frames=FrameRange(1, None)))
    assert sheet.grid == (4, 4) and (sheet.width, sheet.height) == (256, 256)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(sheet.image)))[:64, :64], still(path))
