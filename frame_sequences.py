"""Sequences of frames: animations (GIF, WebP) and contact sheets (JPG, PNG).

PS3.18 answers a multi-frame rendered resource with an animation; a still
format gets a contact sheet instead. Either way:

- the frame range is checked against the file and the MAX_FRAMES cap before
  any pixel is decoded;
- one window serves every frame: the request's, or the one chosen for the
  first frame (a file's min–max or per-frame window would otherwise make the
  loop flicker);
- frames are painted one at a time by the caller's ``Painter`` (decode →
  display stages → source region) and go straight into the encoder, so the
  peak memory is one decoded frame plus the output, not the whole sequence.

Timing (PS3.3 C.7.6.5): Frame Time (0018,1063), else Frame Time Vector
(0018,1065), else Cine Rate (0018,0040), else Recommended Display Frame Rate
(0008,2144), else 10 frames a second. GIF stores centiseconds: the delays are
rounded on the running total, so a 33.3 ms Frame Time gives 3, 3, 4, 3, …
centiseconds and the loop keeps the file's pace; no delay is shorter than
MIN_FRAME_MS (browsers slow shorter ones down to 100 ms).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator
from collections.abc import Sequence as AbcSequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from errors import InvalidRequest
from image_output import (
    MIN_FRAME_MS,
    GifStream,
    encode_image,
    fitted_image,
    viewport_size,
)
from render_options import (
    ANIMATION_FORMATS,
    MAX_SIDE,
    AppliedWindow,
    FrameRange,
    RenderLimits,
    RenderOptions,
    StageTimer,
)

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image
    from pydicom.dataset import Dataset

DEFAULT_FPS = 10.0
# JPEG cannot hold a side over 65,535; the output sides are held to MAX_SIDE.
SHEET_MAX_SIDE = MAX_SIDE

# Paint frame `index` (0-based) with `window` (None: choose one) for an output
# of at most `target` (width, height; None: unbounded) pixels, which decides
# how reduced the frame may be decoded; returns display pixels (uint8 grey or
# RGB, the source region already cut) and the window used.
Target = tuple[int | None, int | None]
Painter = Callable[[int, "AppliedWindow | None", "Target"], "tuple[np.ndarray, AppliedWindow]"]


@dataclass(frozen=True)
class FrameSequence:
    """What was rendered: the encoded image and how its frames are laid out."""

    image: bytes
    width: int
    height: int
    window: AppliedWindow
    first: int  # 1-based
    last: int
    layout: str  # "animation" | "contact_sheet"
    grid: tuple[int, int] | None = None
    durations_ms: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SequenceJob:
    """What every frame of one sequence shares: the options and limits, the output
    quality, the painter, the timer, the source region's size (width, height) and
    the channels the display stages give (1 grey, 3 RGB)."""

    options: RenderOptions
    limits: RenderLimits
    quality: int
    paint: Painter
    timings: StageTimer
    source: tuple[int, int]
    channels: int


def frame_span(frames: FrameRange, total: int, max_frames: int) -> tuple[int, int]:
    """The 1-based inclusive range to render, checked before any frame is decoded."""
    last = total if frames.last is None else frames.last
    if frames.first > total or last > total:
        asked = f"{frames.first}-{last}" if frames.last is not None else f"from {frames.first}"
        raise InvalidRequest(
            f"frames {asked} do not exist: the image has {total} frame(s); "
            f"ask for frames within 1-{total}"
        )
    count = last - frames.first + 1
    if count > max_frames:
        raise InvalidRequest(
            f"frames {frames.first}-{last} is {count} frames, more than MAX_FRAMES "
            f"({max_frames}); ask for a range of at most {max_frames}, e.g. frames="
            f"{frames.first}-{frames.first + max_frames - 1}"
        )
    return frames.first, last


def _element(ds: Dataset, keyword: str) -> Any:
    """The element's value, or None when it is absent or does not parse (a malformed DS)."""
    try:
        return ds.get(keyword)
    except (ValueError, TypeError, OverflowError):
        return None


def _positive(value: Any) -> float | None:
    if isinstance(value, AbcSequence) and not isinstance(value, (str, bytes)):
        value = value[0] if len(value) else None  # a multi-valued element: its first value
    try:
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _vector(ds: Dataset, total: int) -> list[float] | None:
    """Frame Time Vector: per-frame increments in ms, the first (frame 1's) usually 0."""
    value = _element(ds, "FrameTimeVector")
    try:
        times = [float(v) for v in value] if value is not None else []
    except (TypeError, ValueError):
        return None
    if len(times) != total or not all(math.isfinite(t) and t >= 0 for t in times[1:]):
        return None
    return times


def frame_durations_ms(ds: Dataset, first: int, last: int, total: int) -> list[float]:
    """How long each frame first..last (1-based) shows, in milliseconds, from the file.

    A frame shows until the next one starts: with a Frame Time Vector that is
    the next frame's increment (the last frame keeps its own).
    """
    count = last - first + 1
    frame_time = _positive(_element(ds, "FrameTime"))
    if frame_time is not None:
        return [frame_time] * count
    vector = _vector(ds, total)
    if vector is not None and total > 1:
        shown = [vector[i + 1] if i + 1 < total else vector[i] for i in range(first - 1, last)]
        if all(t > 0 for t in shown):
            return shown
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = _positive(_element(ds, keyword))
        if rate is not None:
            return [1000.0 / rate] * count
    return [1000.0 / DEFAULT_FPS] * count


def gif_durations_ms(durations: list[float]) -> tuple[int, ...]:
    """Durations in whole centiseconds (as ms), rounded on the running total, at least 20 ms."""
    out: list[int] = []
    elapsed, written = 0.0, 0
    for duration in durations:
        elapsed += duration
        step = max(MIN_FRAME_MS, round(elapsed / 10.0) * 10 - written)
        out.append(step)
        written += step
    return tuple(out)


def webp_durations_ms(durations: list[float]) -> tuple[int, ...]:
    """Whole milliseconds on the running total, at least MIN_FRAME_MS."""
    out: list[int] = []
    elapsed, written = 0.0, 0
    for duration in durations:
        elapsed += duration
        step = max(MIN_FRAME_MS, round(elapsed) - written)
        out.append(step)
        written += step
    return tuple(out)


def contact_grid(count: int) -> tuple[int, int]:
    """A near-square grid: (columns, rows), columns = ceil(sqrt(n))."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return columns, math.ceil(count / columns)


def tile_size(
    source: tuple[int, int],
    grid: tuple[int, int],
    options: RenderOptions,
    budget: int,
    channels: int,
) -> tuple[int, int]:
    """One size for every tile: the source fitted to width/columns × height/rows.

    Without width/height a tile is the source size, scaled down when the
    sheet would pass MAX_SIDE on a side or the pixel budget in bytes.
    """
    columns, rows = grid
    box_w = None if options.width is None else max(1, options.width // columns)
    box_h = None if options.height is None else max(1, options.height // rows)
    width, height = viewport_size(*source, box_w, box_h)
    scale = min(
        1.0,
        SHEET_MAX_SIDE / (width * columns),
        SHEET_MAX_SIDE / (height * rows),
        math.sqrt(budget / (width * height * columns * rows * channels)),
    )
    if scale < 1.0:
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
    return width, height


def render_sequence(ds: Dataset, total: int, job: SequenceJob) -> FrameSequence:
    """Render ``job.options.frames`` of a file with `total` frames."""
    options = job.options
    assert options.frames is not None
    first, last = frame_span(options.frames, total, job.limits.max_frames)
    if options.output_format in ANIMATION_FORMATS:
        return _animate(first, last, frame_durations_ms(ds, first, last, total), job)
    return _contact_sheet(first, last, job)


def _frames(
    first: int,
    last: int,
    size: tuple[int, int],
    target: Target,
    job: SequenceJob,
    chosen: list[AppliedWindow],
) -> Iterator[Image.Image]:
    """Each frame painted for `target`, fitted to `size`, all with the first frame's window.

    That window is put in `chosen` once the first frame is painted.
    """
    for number in range(first, last + 1):
        job.timings.lap("encode")  # the previous frame went into the encoder since the last lap
        pixels, used = job.paint(number - 1, chosen[0] if chosen else None, target)
        if not chosen:
            chosen.append(used)
        job.timings.lap("render")
        yield fitted_image(pixels, size)
        del pixels


def _animate(first: int, last: int, durations: list[float], job: SequenceJob) -> FrameSequence:
    options = job.options
    size = viewport_size(*job.source, options.width, options.height)
    chosen: list[AppliedWindow] = []
    # Reduced decoding as for a single frame of these options, so frame 1 matches it.
    target = (options.width, options.height)
    frames = _frames(first, last, size, target, job, chosen)
    if options.output_format == "gif":
        shown = gif_durations_ms(durations)
        gif = GifStream(size)
        for image, duration in zip(frames, shown, strict=True):
            gif.add(image, duration)
        data = gif.finish()
    else:
        shown = webp_durations_ms(durations)
        data = _webp(frames, last - first + 1, shown, job.quality)
    job.timings.lap("encode")
    return FrameSequence(data, *size, chosen[0], first, last, "animation", durations_ms=shown)


def _webp(
    frames: Iterator[Image.Image], count: int, durations: tuple[int, ...], quality: int
) -> bytes:
    """Animated WebP, lossy at `quality`, frames handed to libwebp as they are painted."""
    image = next(frames)
    buffer = io.BytesIO()
    if count == 1:
        image.save(buffer, "WEBP", quality=quality, method=4)
        return buffer.getvalue()
    image.save(
        buffer,
        "WEBP",
        save_all=True,
        append_images=[_lazy_frames(frames, count - 1)],
        duration=list(durations),
        loop=0,
        quality=quality,
        method=4,
    )
    return buffer.getvalue()


_LAZY_FRAMES: type | None = None


def _lazy_frames(frames: Iterator[Image.Image], count: int) -> Image.Image:
    """Frames 2..n as one multi-frame image that paints each frame when seeked.

    Pillow's WebP writer walks ``n_frames`` with ``seek()`` and hands each
    frame to libwebp's animation encoder, so only the current frame is held.
    The class is made once: a class made per call sits in a reference cycle,
    which would keep the dataset (via `frames`) alive until the next garbage
    collection.
    """
    global _LAZY_FRAMES
    if _LAZY_FRAMES is None:
        _LAZY_FRAMES = _lazy_frames_class()
    return _LAZY_FRAMES(frames, count)


def _lazy_frames_class() -> type:
    from PIL import Image

    class LazyFrames(Image.Image):
        def __init__(self, frames: Iterator[Image.Image], count: int) -> None:
            super().__init__()
            self._frames, self._count, self._index = frames, count, -1
            self.seek(0)

        @property
        def n_frames(self) -> int:
            return self._count

        @property
        def is_animated(self) -> bool:
            return self._count > 1

        def tell(self) -> int:
            return self._index

        def seek(self, frame: int) -> None:
            if frame == self._index:
                return
            if frame != self._index + 1:
                raise EOFError("frames are painted in order, once")
            image = next(self._frames)
            self.im, self._mode, self._size = image.im, image.mode, image.size
            self._index = frame

    return LazyFrames


def _contact_sheet(first: int, last: int, job: SequenceJob) -> FrameSequence:
    """Frames in row-major order on a near-square grid, frame `first` at the top left.

    The sheet is allocated once; each tile is painted for its own size (so a
    thumbnail may be decoded reduced) and pasted in.
    """
    import numpy as np
    from PIL import Image

    grid = contact_grid(last - first + 1)
    tile = tile_size(job.source, grid, job.options, job.limits.max_pixel_bytes, job.channels)
    shape = (grid[1] * tile[1], grid[0] * tile[0]) + ((3,) if job.channels == 3 else ())
    sheet = np.zeros(shape, np.uint8)
    chosen: list[AppliedWindow] = []
    for position, image in enumerate(_frames(first, last, tile, tile, job, chosen)):
        x, y = (position % grid[0]) * tile[0], (position // grid[0]) * tile[1]
        sheet[y : y + tile[1], x : x + tile[0]] = np.asarray(image)
    image = Image.fromarray(sheet, mode="L" if job.channels == 1 else "RGB")
    del sheet
    data = encode_image(image, job.options.output_format, job.quality)
    job.timings.lap("encode")
    return FrameSequence(
        data, image.width, image.height, chosen[0], first, last, "contact_sheet", grid
    )
