"""What a render is asked for, what it may use, and what it answers.

The converter's interface types: ``RenderOptions`` (what the caller asks),
``RenderLimits`` (what the deployment allows), ``RenderResult`` (the image and
what was applied). Entry points parse their requests into these; the
converter (``dicom_converter``, ``frame_sequences``) reads nothing else.
``dicom_converter`` re-exports every name, so callers import them from there.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from errors import InvalidRequest

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
OUTPUT_FORMATS = ("jpg", "jpeg", "png", "webp", "gif")

# Standard CT display windows in Hounsfield units: (center, width).
PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "abdomen": (60.0, 400.0),
    "liver": (30.0, 150.0),
    "soft_tissue": (40.0, 400.0),
}

FORMAT_NAMES = {"jpg": "jpg", "jpeg": "jpg", "png": "png", "webp": "webp", "gif": "gif"}
MEDIA_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp", "gif": "image/gif"}
PIL_FORMATS = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF"}
# Formats that carry a sequence of frames as an animation; the others get a contact sheet.
ANIMATION_FORMATS = ("gif", "webp")
# Formats without a quality setting (lossless, or a palette).
LOSSLESS_FORMATS = ("png", "gif")
REGION_UNITS = ("pixels", "fraction")
# The largest output side, and so the largest region side in pixels.
MAX_SIDE = 16384


def window_is_valid(width: float, function: str) -> bool:
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    if not math.isfinite(width):
        return False
    return width >= 1 if function == "LINEAR" else width > 0


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center and width in modality units."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            raise InvalidRequest("window center and width must be finite numbers")
        if self.function not in VOI_FUNCTIONS:
            raise InvalidRequest(
                f"window function must be one of {', '.join(VOI_FUNCTIONS)}, got {self.function!r}"
            )
        if not window_is_valid(self.width, self.function):
            minimum = "1" if self.function == "LINEAR" else "greater than 0"
            raise InvalidRequest(
                f"window width must be at least {minimum} for {self.function}, got {self.width:g}"
            )


@dataclass(frozen=True)
class FrameRange:
    """Frames to render, 1-based and inclusive; `last` None means to the file's last frame."""

    first: int
    last: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.first) or self.first < 1:
            raise InvalidRequest(
                f"frames are 1-based: the first must be at least 1, got {self.first!r}"
            )
        if self.last is not None and (not _is_int(self.last) or self.last < self.first):
            raise InvalidRequest(
                f"frames N-M needs M >= N, got {self.first}-{self.last!r}; "
                "give frames=all or frames=N-M"
            )

    @classmethod
    def parse(cls, text: str) -> FrameRange:
        """The request form: ``all``, ``N`` or ``N-M`` (1-based, inclusive)."""
        value = str(text).strip().lower()
        if value == "all":
            return cls(1, None)
        first, dash, last = value.partition("-")
        try:
            start = int(first)
            end = int(last) if dash else start
        except ValueError as exc:
            raise InvalidRequest(
                f"frames must be 'all', N or N-M (1-based, inclusive), got {text!r}"
            ) from exc
        return cls(start, end)


@dataclass(frozen=True)
class Region:
    """The source region to crop before fitting to width/height.

    units="pixels": x, y, width, height in source pixels (DICOMweb viewport
    sx,sy,sw,sh, PS3.18 8.3.5.1.3); a negative width or height flips the image
    horizontally or vertically, the region then extending left of x or above y.
    units="fraction": fractions 0.0–1.0 of columns and rows (WADO-URI region,
    PS3.18 6.2.2.1), width and height positive.
    """

    x: float
    y: float
    width: float
    height: float
    units: str = "pixels"

    def __post_init__(self) -> None:
        if self.units not in REGION_UNITS:
            raise InvalidRequest(f"region units must be one of {', '.join(REGION_UNITS)}")
        values = (self.x, self.y, self.width, self.height)
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            raise InvalidRequest("region x, y, width and height must be finite numbers")
        if self.width == 0 or self.height == 0:
            raise InvalidRequest("region width and height must not be 0")
        if self.units == "fraction":
            self._check_fraction()
        elif min(self.x, self.y) < 0 or max(abs(self.width), abs(self.height)) > MAX_SIDE:
            raise InvalidRequest(
                f"viewport sx and sy must be at least 0 and |sw|, |sh| at most {MAX_SIDE} pixels"
            )

    def _check_fraction(self) -> None:
        if self.width < 0 or self.height < 0:
            raise InvalidRequest("region xmax must exceed xmin and ymax must exceed ymin")
        x2, y2 = self.x + self.width, self.y + self.height
        if min(self.x, self.y) < 0 or max(x2, y2) > 1.0 + 1e-9:
            raise InvalidRequest("region values are fractions of the image, from 0.0 to 1.0")

    @property
    def flips(self) -> tuple[bool, bool]:
        """(horizontal, vertical): whether a negative width or height mirrors the region."""
        return self.width < 0, self.height < 0


@dataclass(frozen=True)
class RenderOptions:
    output_format: str = "jpg"
    # None means "not asked for": the default quality is used, and the embedded
    # JPEG frame may be returned as it is.
    quality: int | None = None
    frame: int = 1
    window: Window | None = None
    preset: str | None = None
    width: int | None = None
    height: int | None = None
    include_metadata: bool = True
    # A range of frames: an animation (gif, webp) or a contact sheet (jpg, png);
    # None renders the single `frame`.
    frames: FrameRange | None = None
    # The source region to crop (and flip) before fitting to width/height.
    region: Region | None = None

    def __post_init__(self) -> None:
        fmt = str(self.output_format).lower()
        if fmt not in FORMAT_NAMES:
            raise InvalidRequest(
                f"output_format must be one of {', '.join(OUTPUT_FORMATS)}, "
                f"got {self.output_format!r}"
            )
        object.__setattr__(self, "output_format", FORMAT_NAMES[fmt])
        if self.quality is not None and not (
            isinstance(self.quality, int) and 1 <= self.quality <= 100
        ):
            raise InvalidRequest(f"quality must be an integer from 1 to 100, got {self.quality!r}")
        if not isinstance(self.frame, int) or self.frame < 1:
            raise InvalidRequest(f"frame is 1-based and must be at least 1, got {self.frame!r}")
        if self.preset is not None and self.preset not in PRESETS:
            raise InvalidRequest(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.preset is not None and self.window is not None:
            raise InvalidRequest("give either a window or a preset, not both")
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_SIDE):
                raise InvalidRequest(
                    f"{name} must be an integer from 1 to {MAX_SIDE}, got {value!r}"
                )
        if self.frames is not None and not isinstance(self.frames, FrameRange):
            raise InvalidRequest("frames must be a FrameRange")
        if self.region is not None and not isinstance(self.region, Region):
            raise InvalidRequest("region must be a Region")


@dataclass(frozen=True)
class RenderLimits:
    """What the deployment allows: the pixel budget, the default quality, the frame cap.

    Entry points derive these from their settings (MAX_PIXEL_BYTES,
    DEFAULT_QUALITY, MAX_FRAMES); the converter itself reads no settings.
    """

    max_pixel_bytes: int = 256 * 1024 * 1024
    default_quality: int = 85
    max_frames: int = 300


@dataclass(frozen=True)
class AppliedWindow:
    """The VOI transform that was used, and where it came from."""

    center: float | None
    width: float | None
    function: str
    source: str  # "request", "preset", "file", "voi_lut", "min_max", "none"


NO_WINDOW = AppliedWindow(None, None, "NONE", "none")

# Keys of RenderResult.describe() left out when they hold their single-frame default.
SEQUENCE_KEYS = ("frame_range", "layout", "grid", "frame_durations_ms")


@dataclass(frozen=True)
class RenderResult:
    image: bytes = field(repr=False)
    format: str
    media_type: str
    quality: int | None
    width: int
    height: int
    frame: int
    frames: int
    window: AppliedWindow
    photometric_interpretation: str
    transfer_syntax: str
    passthrough: bool
    metadata: dict[str, Any]
    # Milliseconds spent in each stage: read, decode, render, encode.
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False)
    # Frames rendered, 1-based inclusive (sequences only).
    frame_range: tuple[int, int] | None = None
    layout: str = "single"  # "single" | "animation" | "contact_sheet"
    grid: tuple[int, int] | None = None  # contact sheet (columns, rows)
    frame_durations_ms: tuple[int, ...] | None = None  # animation

    @property
    def file_size(self) -> int:
        return len(self.image)

    def describe(self) -> dict[str, Any]:
        """Everything but the image bytes and timings, as plain JSON-ready values.

        A single frame keeps the single-frame keys: the sequence keys appear
        only for an animation or a contact sheet.
        """
        info = asdict(self)
        del info["image"], info["timings_ms"]
        info["file_size"] = self.file_size
        if self.layout == "single":
            for key in SEQUENCE_KEYS:
                info.pop(key, None)
        for key in SEQUENCE_KEYS:
            if key in info and info[key] is None:
                del info[key]
            elif isinstance(info.get(key), tuple):
                info[key] = list(info[key])
        return info


class StageTimer:
    """Wall time of consecutive stages, in milliseconds."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage] = round(self.laps.get(stage, 0.0) + (now - self._last) * 1000, 2)
        self._last = now


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
