"""Output geometry and encoding: the source region, the viewport fit, the image formats.

The geometry follows PS3.18 8.3.5.1.3: the source region (``viewport``'s
sx, sy, sw, sh, or WADO-URI's ``region``) is cut from the rendered frame
after the VOI and Presentation stages, and the result is then fitted to the
viewport (width, height), keeping its aspect ratio and never upscaling.

A region must lie inside the image: one that reaches past an edge is refused
(InvalidRequest naming the image size) rather than clipped, so that the
answer always shows exactly the rectangle that was asked for.

GIF is written here frame by frame (``GifStream``), so that an animation
never holds more than one frame: grey frames use the one global 256-grey
palette, index = grey level, which is exact; colour frames get their own
local palette, median cut with Floyd–Steinberg dithering.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from errors import InvalidRequest
from render_options import Region, RenderOptions

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

# The global colour table of every GIF: index i is grey level i.
GREY_PALETTE = bytes(level for level in range(256) for _ in range(3))
# Browsers show GIF delays of 0 or 1 centisecond as 10 (and WebP ones under
# 20 ms likewise), so no frame is written shorter than 20 ms.
MIN_FRAME_MS = 20


@dataclass(frozen=True)
class SourceBox:
    """A rectangle of source pixels, [left, right) × [top, bottom), and its mirroring."""

    left: int
    top: int
    right: int
    bottom: int
    flip_x: bool = False
    flip_y: bool = False

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top


def region_box(region: Region | None, columns: int, rows: int) -> SourceBox:
    """The source rectangle of `region` in an image of columns × rows.

    Pixel regions (PS3.18 viewport sx, sy, sw, sh) take |sw| × |sh| pixels
    from (sx, sy); a negative sw or sh mirrors that same rectangle
    horizontally or vertically. Fraction regions (WADO-URI region) scale by
    the image size. Edges are rounded to whole pixels; the rectangle keeps at
    least one pixel each way.
    """
    if region is None:
        return SourceBox(0, 0, columns, rows)
    if region.units == "fraction":
        left, top = round(region.x * columns), round(region.y * rows)
        right = round((region.x + region.width) * columns)
        bottom = round((region.y + region.height) * rows)
    else:
        left, top = round(region.x), round(region.y)
        right, bottom = round(region.x + abs(region.width)), round(region.y + abs(region.height))
    right, bottom = max(right, left + 1), max(bottom, top + 1)
    if right > columns or bottom > rows:
        raise InvalidRequest(
            f"the region reaches beyond the image, which is {columns} x {rows} pixels "
            f"(columns x rows); its right edge must be at most {columns} and its bottom "
            f"edge at most {rows}"
        )
    return SourceBox(left, top, right, bottom, *region.flips)


def crop_region(pixels: np.ndarray, box: SourceBox, columns: int, rows: int) -> np.ndarray:
    """Cut `box` (in source pixels of a columns × rows image) from display `pixels`.

    `pixels` may be a frame decoded at reduced size: the box is scaled to its
    own shape. A view, not a copy, unless a flip is asked for.
    """
    full = (box.left, box.top, box.right, box.bottom) == (0, 0, columns, rows)
    if full and not (box.flip_x or box.flip_y):
        return pixels
    sx, sy = pixels.shape[1] / columns, pixels.shape[0] / rows
    left, right = math.floor(box.left * sx), max(math.ceil(box.right * sx), 1)
    top, bottom = math.floor(box.top * sy), max(math.ceil(box.bottom * sy), 1)
    step_x, step_y = (-1 if box.flip_x else 1), (-1 if box.flip_y else 1)
    return pixels[top:bottom, left:right][::step_y, ::step_x]


def viewport_size(
    width: int, height: int, max_width: int | None, max_height: int | None
) -> tuple[int, int]:
    """Fit (width, height) inside the viewport, keeping aspect ratio, never upscaling."""
    scale = 1.0
    if max_width is not None:
        scale = min(scale, max_width / width)
    if max_height is not None:
        scale = min(scale, max_height / height)
    if scale >= 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def fitted_image(pixels: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """Display pixels as a Pillow image of exactly `size`."""
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L" if pixels.ndim == 2 else "RGB")
    if size != image.size:
        # reducing_gap first shrinks by an integer factor (cheap box filter),
        # then finishes with Lanczos, which keeps edges crisp.
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def encode(
    pixels: np.ndarray, options: RenderOptions, quality: int, size: tuple[int, int] | None = None
) -> tuple[bytes, int, int]:
    """Resize to `size` (default: the viewport fit of `pixels`) and encode.

    Returns (bytes, width, height).
    """
    height, width = pixels.shape[:2]
    size = size or viewport_size(width, height, options.width, options.height)
    image = fitted_image(pixels, size)
    return encode_image(image, options.output_format, quality), image.width, image.height


def encode_image(image: Image.Image, fmt: str, quality: int) -> bytes:
    """One still image in `fmt` (jpg, png, webp or gif)."""
    buffer = io.BytesIO()
    if fmt == "jpg":
        # 4:4:4 chroma: Pillow's default 4:2:0 halves colour resolution, which
        # smears palette and overlay edges (subsampling only concerns RGB).
        image.save(buffer, "JPEG", quality=quality, subsampling=0)
    elif fmt == "png":
        # Level 3 is several times faster than the default 6 for ~5% more bytes.
        image.save(buffer, "PNG", compress_level=3)
    elif fmt == "gif":
        gif = GifStream(image.size, loop=False)
        gif.add(image)
        return gif.finish()
    else:
        image.save(buffer, "WEBP", quality=quality, method=4)
    return buffer.getvalue()


class GifStream:
    """A GIF89a written one frame at a time; only the encoded bytes are kept.

    Header: the logical screen, the global 256-grey table and, for an
    animation, the NETSCAPE2.0 block with loop count 0 (forever).
    """

    def __init__(self, size: tuple[int, int], *, loop: bool = True) -> None:
        self.size = size
        self.frames = 0
        self._out = io.BytesIO()
        width, height = size
        # Global table flag, 8-bit colour resolution, 256 entries.
        screen = width.to_bytes(2, "little") + height.to_bytes(2, "little") + b"\xf7\x00\x00"
        self._out.write(b"GIF89a" + screen + GREY_PALETTE)
        if loop:
            self._out.write(b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")

    def add(self, image: Image.Image, duration_ms: int | None = None) -> None:
        """Append one frame of the screen's size; duration in milliseconds (10 ms steps)."""
        from PIL import GifImagePlugin

        if image.size != self.size:
            raise ValueError(f"GIF frame {image.size} differs from the screen {self.size}")
        frame, local = gif_frame(image)
        params: dict[str, object] = {"include_color_table": local}
        if duration_ms is not None:
            params["duration"] = duration_ms
        for chunk in GifImagePlugin.getdata(frame, **params):
            self._out.write(chunk)
        self.frames += 1

    def finish(self) -> bytes:
        self._out.write(b";")
        return self._out.getvalue()


def gif_frame(image: Image.Image) -> tuple[Image.Image, bool]:
    """The frame as GIF indices, and whether it needs its own (local) colour table.

    Grey, and RGB whose three channels are equal, index the global grey table
    directly: exact. Other colour is median-cut to 256 colours and dithered
    (Floyd–Steinberg), which spreads the quantisation error instead of banding.
    """
    import numpy as np
    from PIL import Image

    if image.mode == "L":
        return image, False
    rgb = np.asarray(image)
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]):
        return Image.fromarray(np.ascontiguousarray(rgb[..., 0]), mode="L"), False
    palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    return image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG), True
