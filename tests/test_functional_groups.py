"""Enhanced multi-frame images: each frame's Modality LUT and VOI from its functional groups.

An enhanced CT keeps Rescale Slope/Intercept and Window Center/Width in the
Pixel Value Transformation and Frame VOI LUT macros (PS3.3 C.7.6.16.2.9,
C.7.6.16.2.10), shared by all frames or per frame. Each case renders an
enhanced file and the classic file that states the same values at the top
level; the images must be identical.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_converter import FrameRange, RenderOptions, render
from tests.dicom_files import image_dataset, write_image

FRAMES = 3


def ramp_frames() -> np.ndarray:
    # Stored values 0..2047: with intercept -1024 they span -1024..1023 HU.
    base = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 2048
    return np.stack([(base + 300 * i) % 2048 for i in range(FRAMES)]).astype(np.uint16)


def item(**values: Any) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def groups(transformation: Dataset | None = None, voi: Dataset | None = None) -> Dataset:
    group = Dataset()
    if transformation is not None:
        group.PixelValueTransformationSequence = Sequence([transformation])
    if voi is not None:
        group.FrameVOILUTSequence = Sequence([voi])
    return group


def write_enhanced(folder: Path, shared: Dataset, per_frame: list[Dataset] | None = None) -> Path:
    frames = ramp_frames()
    ds = image_dataset(frames[0], NumberOfFrames=FRAMES, Modality="CT")
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    if per_frame is not None:
        ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.PixelData = frames.tobytes()
    path = folder / "enhanced.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def classic(folder: Path, frame: int, **attrs: Any) -> Path:
    return write_image(folder, ramp_frames()[frame], f"classic-{frame}.dcm", Modality="CT", **attrs)


def png(path: Path, **options: Any) -> np.ndarray:
    result = render(path, RenderOptions("png", **options))
    return np.asarray(Image.open(io.BytesIO(result.image)))


TRANSFORM = item(RescaleIntercept=-1024, RescaleSlope=1, RescaleType="HU")


def test_shared_rescale_and_window_apply_to_every_frame(tmp_path: Path) -> None:
    path = write_enhanced(
        tmp_path, groups(TRANSFORM, item(WindowCenter=40, WindowWidth=400)), per_frame=None
    )
    for frame in range(FRAMES):
        expected = classic(
            tmp_path,
            frame,
            RescaleIntercept=-1024,
            RescaleSlope=1,
            WindowCenter=40,
            WindowWidth=400,
        )
        assert np.array_equal(png(path, frame=frame + 1), png(expected))
    result = render(path, RenderOptions("png"))
    assert (result.window.center, result.window.width, result.window.source) == (40, 400, "file")


def test_a_per_frame_window_wins_over_the_shared_one(tmp_path: Path) -> None:
    per_frame = [
        groups(),
        groups(voi=item(WindowCenter=-600, WindowWidth=1500, VOILUTFunction="SIGMOID")),
        groups(transformation=item(RescaleIntercept=-1000, RescaleSlope=2, RescaleType="HU")),
    ]
    path = write_enhanced(
        tmp_path, groups(TRANSFORM, item(WindowCenter=40, WindowWidth=400)), per_frame
    )
    shared = {"RescaleIntercept": -1024, "RescaleSlope": 1}
    cases = [
        classic(tmp_path, 0, **shared, WindowCenter=40, WindowWidth=400),
        classic(
            tmp_path, 1, **shared, WindowCenter=-600, WindowWidth=1500, VOILUTFunction="SIGMOID"
        ),
        classic(
            tmp_path, 2, RescaleIntercept=-1000, RescaleSlope=2, WindowCenter=40, WindowWidth=400
        ),
    ]
    for frame, expected in enumerate(cases):
        assert np.array_equal(png(path, frame=frame + 1), png(expected)), frame + 1


def test_a_sequence_keeps_frame_one_window_but_each_frame_rescale(tmp_path: Path) -> None:
    per_frame = [
        groups(),
        groups(),
        groups(transformation=item(RescaleIntercept=-1000, RescaleSlope=2, RescaleType="HU")),
    ]
    path = write_enhanced(
        tmp_path, groups(TRANSFORM, item(WindowCenter=40, WindowWidth=400)), per_frame
    )
    sheet = png(path, frames=FrameRange(1, 3))
    expected = classic(
        tmp_path, 2, RescaleIntercept=-1000, RescaleSlope=2, WindowCenter=40, WindowWidth=400
    )
    # Three frames on a 2 x 2 grid: frame 3 starts the second row.
    assert sheet.shape == (128, 128)
    assert np.array_equal(sheet[64:128, 0:64], png(expected))


def test_a_malformed_value_in_a_group_is_read_as_at_the_top_level(tmp_path: Path) -> None:
    # The same lenient reading as a classic file's malformed Rescale Intercept.
    bad = {"RescaleIntercept": "-1234567", "RescaleSlope": 1}
    enhanced = write_enhanced(tmp_path, groups(item(**bad)))
    flat = classic(tmp_path, 0, **bad)
    for path in (enhanced, flat):
        data = path.read_bytes()
        assert data.count(b"-1234567") == 1
        path.write_bytes(data.replace(b"-1234567", b"not+a+DS"))
    assert np.array_equal(png(enhanced), png(flat))
