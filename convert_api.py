"""The /convert contract: request fields in, the seed's documents out.

``ConvertRequest`` is the one frozen request for every event shape, validated once:
the fields of a JSON body, a query string or a direct invocation all pass through
``ConvertRequest.from_fields``. Messages name the field and what it accepts.

Three vocabularies name the same options: the native fields, DICOMweb's rendered
parameters (PS3.18 8.3.5.1: ``window=center,width[,function]``,
``viewport=vw,vh[,sx,sy,sw,sh]``, ``quality``; ``Accept`` for the format, which the
handler negotiates) and WADO-URI's (PS3.18 9: ``requestType``, ``contentType``,
``frameNumber``, ``rows``, ``columns``, ``windowCenter``, ``windowWidth``,
``imageQuality``, ``region``; the study, series and object UIDs are accepted and
ignored, since the URL names the file). Each becomes the same ``RenderOptions``,
so the dialects give the same image and the same ETag. Two names for one thing in
one request are refused, naming both; unknown names are refused.

The documents are the seed's public format: ``success_document`` for a rendered
image (inline base64 or a link), ``error_document`` for a failure (its status and
code from ``errors.describe``, the one table), and ``batch_document`` for the
answer to ``urls: [...]``.

This module knows request field names but no event shape and no HTTP: the
handler (``lambda_function``) brings the fields and carries the documents.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import errors
from dicom_codecs import syntax_name
from errors import InvalidRequest
from settings import Settings
from url_policy import STORAGE_TYPES

if TYPE_CHECKING:
    from dicom_converter import RenderOptions, RenderResult

RESPONSE_MODES = ("json", "binary", "url")
OUTPUT_FORMATS = ("jpg", "jpeg", "png", "webp", "gif")
# The native fields (the seed's, and this service's own).
NATIVE_FIELDS = (
    "url",
    "storage_type",
    "output_format",
    "quality",
    "frame",
    "window",
    "window_center",
    "window_width",
    "window_function",
    "preset",
    "width",
    "height",
    "include_metadata",
    "response",
    "frames",
    "crop",
)
# DICOMweb's rendered-resource parameters (PS3.18 8.3.5.1); `window` and `quality`
# share their names with native fields, `window` as "center,width[,function]".
DICOMWEB_FIELDS = ("viewport",)
# WADO-URI (PS3.18 9). The three UIDs are accepted and ignored: the URL names the file.
WADO_URI_FIELDS = (
    "requestType",
    "contentType",
    "frameNumber",
    "rows",
    "columns",
    "windowCenter",
    "windowWidth",
    "imageQuality",
    "region",
    "studyUID",
    "seriesUID",
    "objectUID",
)
REQUEST_FIELDS = NATIVE_FIELDS + DICOMWEB_FIELDS + WADO_URI_FIELDS
# Names that say the same thing, in groups: names of one group go together (a
# center with its width), names of two groups in one request are a 400 naming both.
SAME_THING: tuple[tuple[str, tuple[tuple[str, ...], ...]], ...] = (
    ("the output format", (("output_format",), ("contentType",))),
    ("the quality", (("quality",), ("imageQuality",))),
    ("the frame", (("frame",), ("frameNumber",), ("frames",))),
    ("the output width", (("width",), ("columns",), ("viewport",))),
    ("the output height", (("height",), ("rows",), ("viewport",))),
    (
        "the window",
        (
            ("window",),
            ("window_center", "window_width", "window_function"),
            ("windowCenter", "windowWidth"),
        ),
    ),
    ("the source region", (("crop",), ("region",), ("viewport",))),
)
# WADO-URI contentType → output format. Only rendered images are served.
CONTENT_TYPES = {
    "image/jpeg": "jpg",
    "image/jpg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
}
# DICOMweb's VOI function names (PS3.18 8.3.5.1.4), and ours.
WINDOW_FUNCTIONS = {
    "linear": "LINEAR",
    "linear-exact": "LINEAR_EXACT",
    "linear_exact": "LINEAR_EXACT",
    "sigmoid": "SIGMOID",
}
FORMAT_LABELS = {"jpg": "JPG", "png": "PNG", "webp": "WebP", "gif": "GIF"}
MAX_URL_CHARS = 8192


@dataclass(frozen=True)
class ConvertRequest:
    """One conversion, as the caller asked for it."""

    url: str
    storage_type: str
    options: RenderOptions
    response: str  # json | binary | url

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[str, Any],
        settings: Settings,
        image_preferred: bool = False,
        accepted_format: str | None = None,
    ) -> ConvertRequest:
        """Validate request fields (from a JSON body, a query string or a direct event).

        Native, DICOMweb and WADO-URI names all become the same ``RenderOptions``.
        ``image_preferred``: the caller's Accept header ranks an image above JSON, so
        an absent ``response`` means ``binary``; ``accepted_format`` is the image
        format Accept chose, used for an image answer when no field names one.
        """
        check_names(fields)
        url = url_field(fields.get("url"))
        output_format, image_asked = _output_format(fields)
        response = _choice(fields, "response", RESPONSE_MODES)
        if response is None:
            response = "binary" if image_asked or image_preferred else "json"
        if response == "url" and not settings.output_bucket:
            raise InvalidRequest(
                "response 'url' needs an output bucket, and this deployment has no "
                "OUTPUT_BUCKET; use response 'json' or 'binary'"
            )
        if output_format is None and response == "binary":
            output_format = accepted_format
        return cls(
            url=url,
            storage_type=_choice(fields, "storage_type", STORAGE_TYPES) or "auto",
            options=render_options(fields, output_format or settings.default_output_format),
            response=response,
        )


def render_options(fields: Mapping[str, Any], output_format: str) -> RenderOptions:
    """The rendering options of checked fields, whichever dialect named them."""
    from dicom_converter import RenderOptions

    width, height, viewport_region = _size(fields)
    quality_name = _given(fields, "quality", "imageQuality")
    frame_name = _given(fields, "frame", "frameNumber")
    return RenderOptions(
        output_format=output_format,
        quality=_integer(fields, quality_name, "an integer from 1 to 100"),
        frame=_default(_integer(fields, frame_name, "a 1-based frame number (1, 2, ...)"), 1),
        frames=_frames(fields),
        window=_window(fields),
        preset=_preset(fields),
        width=width,
        height=height,
        region=viewport_region or _region(fields),
        include_metadata=_boolean(fields, "include_metadata", default=True),
    )


def check_names(fields: Mapping[str, Any]) -> None:
    """Unknown names, two names for one thing, and WADO-URI's requestType."""
    unknown = sorted(set(fields) - set(REQUEST_FIELDS))
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(REQUEST_FIELDS)}"
        )
    given = {name for name in fields if _present(fields, name) is not None}
    if "viewport" in given and len(str(fields["viewport"]).split(",")) <= 2:
        given_region = given - {"viewport"}
    else:
        given_region = given
    for thing, groups in SAME_THING:
        names = given_region if thing == "the source region" else given
        found = [next(n for n in group if n in names) for group in groups if names & set(group)]
        if len(found) > 1:
            raise InvalidRequest(
                f"{found[0]} and {found[1]} both give {thing}; give one of them, not both"
            )
    for name in ("studyUID", "seriesUID", "objectUID"):
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise InvalidRequest(
                f"{name} must be a string (it is not read: the URL names the file)"
            )
    request_type = fields.get("requestType")
    if request_type is not None and request_type != "WADO":
        raise InvalidRequest(
            f"requestType must be WADO (WADO-URI), got {shown_value(request_type)}"
        )


def _given(fields: Mapping[str, Any], *names: str) -> str:
    """The one of ``names`` the request gives (``check_names`` allows at most one)."""
    return next((name for name in names if _present(fields, name) is not None), names[0])


def _output_format(fields: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(format asked for, whether the caller asked for the image itself).

    WADO-URI's contentType names a media type, and asks for the image as the answer.
    """
    content_type = fields.get("contentType")
    if content_type is None:
        return _choice(fields, "output_format", OUTPUT_FORMATS), False
    if not isinstance(content_type, str):
        raise InvalidRequest(f"contentType must be a string, got {shown_value(content_type)}")
    for item in content_type.split(","):
        media = item.split(";")[0].strip().lower()
        if media in CONTENT_TYPES:
            return CONTENT_TYPES[media], True
    raise InvalidRequest(
        f"contentType {shown_value(content_type)} is not served: this service answers "
        f"rendered images only; ask for one of {', '.join(CONTENT_TYPES)} "
        "(a DICOM file itself, application/dicom, is read from its own URL)"
    )


def _numbers(value: Any, name: str, form: str, counts: tuple[int, ...]) -> list[float]:
    """A comma-separated list of finite numbers."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{name} must be {form}, got {shown_value(value)}")
    items = value.split(",")
    try:
        numbers = [float(item) for item in items]
    except (TypeError, ValueError):
        numbers = []
    if (
        len(numbers) != len(items)
        or len(numbers) not in counts
        or not all(math.isfinite(n) for n in numbers)
    ):
        raise InvalidRequest(f"{name} must be {form}, got {shown_value(value)}")
    return numbers


def _side(number: float, name: str, value: Any) -> int:
    if not number.is_integer() or not 1 <= number <= 16384:
        raise InvalidRequest(
            f"{name} width and height must be integers from 1 to 16384, got {shown_value(value)}"
        )
    return int(number)


def _size(fields: Mapping[str, Any]) -> tuple[int | None, int | None, Any]:
    """(width, height, source region) from width/height, columns/rows or viewport."""
    from dicom_converter import Region

    viewport = _present(fields, "viewport")
    if viewport is None:
        width_name = _given(fields, "width", "columns")
        height_name = _given(fields, "height", "rows")
        return (
            _integer(fields, width_name, "an integer from 1 to 16384"),
            _integer(fields, height_name, "an integer from 1 to 16384"),
            None,
        )
    form = "vw,vh or vw,vh,sx,sy,sw,sh (DICOMweb viewport)"
    numbers = _numbers(viewport, "viewport", form, (2, 6))
    width, height = (_side(n, "viewport", viewport) for n in numbers[:2])
    region = Region(*numbers[2:], units="pixels") if len(numbers) == 6 else None
    return width, height, region


def _region(fields: Mapping[str, Any]) -> Any:
    """The native ``crop`` (pixels) or WADO-URI's ``region`` (fractions)."""
    from dicom_converter import Region

    crop = _present(fields, "crop")
    if crop is not None:
        form = '{"x", "y", "width", "height"} or "x,y,width,height" in source pixels'
        if isinstance(crop, Mapping):
            if set(crop) != {"x", "y", "width", "height"}:
                raise InvalidRequest(f"crop must be {form}, got {shown_value(crop)}")
            values = [crop[k] for k in ("x", "y", "width", "height")]
            if not all(_is_number(v) for v in values):
                raise InvalidRequest(f"crop must be {form}, got {shown_value(crop)}")
            crop = ",".join(str(v) for v in values)
        return Region(*_numbers(crop, "crop", form, (4,)), units="pixels")
    region = _present(fields, "region")
    if region is None:
        return None
    form = "xmin,ymin,xmax,ymax as fractions from 0.0 to 1.0 (WADO-URI region)"
    x1, y1, x2, y2 = _numbers(region, "region", form, (4,))
    return Region(x1, y1, x2 - x1, y2 - y1, units="fraction")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _frames(fields: Mapping[str, Any]) -> Any:
    from dicom_converter import FrameRange

    value = _present(fields, "frames")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequest(
            f"frames must be 'all', N or N-M (1-based, inclusive), got {shown_value(value)}"
        )
    return FrameRange.parse(str(value))


def url_field(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidRequest(
            "url is required: the s3://, https://, http:// or ftp:// address of the DICOM file"
        )
    if not isinstance(value, str):
        raise InvalidRequest(f"url must be a string, got {type(value).__name__}")
    if len(value) > MAX_URL_CHARS:
        raise InvalidRequest(f"url must be at most {MAX_URL_CHARS} characters long")
    return value.strip()


def shown_value(value: Any) -> str:
    """A caller's value as quoted back in a message, cut short."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _default(value: Any, default: Any) -> Any:
    return default if value is None else value


def _present(fields: Mapping[str, Any], name: str) -> Any:
    value = fields.get(name)
    return None if value is None or value == "" else value


def _choice(fields: Mapping[str, Any], name: str, allowed: Iterable[str]) -> str | None:
    """A case-insensitive choice, returned as spelled in `allowed`.

    Unlike other fields, an empty string is refused rather than read as "not
    given": the API description lists the choices, and "" is not one of them.
    """
    value = fields.get(name)
    if value is None:
        return None
    spelled = {a.lower(): a for a in allowed}
    if not isinstance(value, str) or value.strip().lower() not in spelled:
        raise InvalidRequest(
            f"{name} must be one of {', '.join(spelled.values())}, got {shown_value(value)}"
        )
    return spelled[value.strip().lower()]


def _integer(fields: Mapping[str, Any], name: str, what: str) -> int | None:
    value = _present(fields, name)
    if value is None:
        return None
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip()) if "." in value else int(value.strip())
        except ValueError:
            number = None
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int):
        raise InvalidRequest(f"{name} must be {what}, got {shown_value(value)}")
    return number


def _number(fields: Mapping[str, Any], name: str) -> float | None:
    value = _present(fields, name)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidRequest(f"{name} must be a number, got {shown_value(value)}") from exc
    if not math.isfinite(number):
        # "nan" and "inf" parse as floats, and 1e999 in JSON as infinity.
        raise InvalidRequest(f"{name} must be a finite number, got {shown_value(value)}")
    return number


def _boolean(fields: Mapping[str, Any], name: str, default: bool) -> bool:
    value = _present(fields, name)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise InvalidRequest(f"{name} must be true or false, got {shown_value(value)}")


def _preset(fields: Mapping[str, Any]) -> str | None:
    from dicom_converter import PRESETS

    return _choice(fields, "preset", PRESETS)


def _window(fields: Mapping[str, Any]) -> Any:
    """The VOI window: ``window`` (an object, or DICOMweb's "center,width[,function]"),
    the flat native fields, or WADO-URI's windowCenter/windowWidth."""
    from dicom_converter import VOI_FUNCTIONS, Window

    window = _present(fields, "window")
    if isinstance(window, str):
        return _dicomweb_window(window)
    wado = [name for name in ("windowCenter", "windowWidth") if _present(fields, name) is not None]
    if window is None and wado:
        center, width = (_number(fields, n) for n in ("windowCenter", "windowWidth"))
        if center is None or width is None:
            raise InvalidRequest("windowCenter and windowWidth must be given together")
        return Window(center, width, "LINEAR")
    flat = {k: fields.get(k) for k in ("window_center", "window_width", "window_function")}
    if window is not None:
        if not isinstance(window, Mapping):
            raise InvalidRequest(
                'window must be an object such as {"center": 40, "width": 400, '
                f'"function": "LINEAR"}}, or "40,400[,linear]", got {shown_value(window)}'
            )
        extra = sorted(set(window) - {"center", "width", "function"})
        if extra:
            raise InvalidRequest(f"window takes center, width and function; unknown: {extra}")
        flat = {
            "window_center": window.get("center"),
            "window_width": window.get("width"),
            "window_function": window.get("function"),
        }
    prefix = "window." if window is not None else "window_"
    center = _number(flat, "window_center")
    width = _number(flat, "window_width")
    function = _choice(flat, "window_function", VOI_FUNCTIONS)
    if center is None and width is None:
        if function is not None:
            raise InvalidRequest(f"{prefix}function needs {prefix}center and {prefix}width")
        return None
    if center is None or width is None:
        raise InvalidRequest(f"{prefix}center and {prefix}width must be given together")
    return Window(center, width, function or "LINEAR")


def _dicomweb_window(text: str) -> Any:
    """DICOMweb's ``window=center,width[,function]`` (PS3.18 8.3.5.1.4)."""
    from dicom_converter import Window

    form = "center,width[,linear|linear-exact|sigmoid] (DICOMweb window)"
    parts = [part.strip() for part in text.split(",")]
    function = "LINEAR"
    if len(parts) == 3:
        function = WINDOW_FUNCTIONS.get(parts.pop().lower(), "")
        if not function:
            raise InvalidRequest(f"window must be {form}, got {shown_value(text)}")
    center, width = _numbers(",".join(parts), "window", form, (2,))
    return Window(center, width, function)


def urls_field(fields: Mapping[str, Any], max_urls: int) -> list[Any]:
    """The ``urls`` of a batch; each item is checked on its own, by ``url_field``."""
    urls = fields.get("urls")
    if "url" in fields:
        raise InvalidRequest("give either url or urls, not both")
    if not isinstance(urls, list) or not urls:
        raise InvalidRequest(
            "urls must be a non-empty JSON array of URL strings, sent in a POST body"
        )
    if len(urls) > max_urls:
        raise InvalidRequest(
            f"urls holds {len(urls)} URLs; at most {max_urls} are allowed "
            "per request (MAX_BATCH_URLS)"
        )
    return urls


# ---------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------


def timestamp() -> str:
    """ISO 8601 UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_label(fmt: str) -> str:
    return FORMAT_LABELS.get(fmt, "image")


def success_document(
    result: RenderResult, request_id: str, link: tuple[str, int] | None = None
) -> dict[str, Any]:
    """The seed's document: {success, message, data, timestamp, metadata} plus request_id.

    ``data`` holds the image as base64, or with ``link`` (URL, seconds valid) a link.
    """
    return info_document(result.describe(), result.image, request_id, link)


def info_document(
    described: Mapping[str, Any],
    image: bytes | None,
    request_id: str,
    link: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """The success document of a render's description (``RenderResult.describe()``,
    fresh or kept in the output cache), with the image inline or ``link``."""
    info = dict(described)
    metadata = info.pop("metadata")
    data: dict[str, Any] = {}
    if link is None:
        data["image_base64"] = base64.b64encode(image or b"").decode("ascii")
    else:
        data["image_url"], data["expires_in"] = link
    data.update(
        {
            "file_size": info.pop("file_size"),
            "format": info.pop("format"),
            "quality": info.pop("quality"),
            **info,
            "transfer_syntax_name": syntax_name(info["transfer_syntax"]),
        }
    )
    return {
        "success": True,
        "message": f"DICOM successfully converted to {format_label(data['format'])}",
        "data": data,
        "timestamp": timestamp(),
        "request_id": request_id,
        "metadata": metadata,
    }


def error_document(exc: BaseException, request_id: str) -> dict[str, Any]:
    """The document of a failure, with the status and code of ``errors.describe``."""
    status, code, message = errors.describe(exc)
    return {
        "success": False,
        "message": message,
        "error": {"code": code, "status": status},
        "timestamp": timestamp(),
        "request_id": request_id,
    }


def batch_document(items: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """The answer to ``urls: [...]``: one result per URL, in order, and the counts."""
    converted = sum(1 for item in items if item["success"])
    not_reached = sum(1 for item in items if item.get("error", {}).get("code") == "not_reached")
    failed = len(items) - converted - not_reached
    return {
        "success": converted == len(items),
        "message": f"{converted} of {len(items)} converted, {failed} failed, "
        f"{not_reached} not reached",
        "data": {
            "results": items,
            "converted": converted,
            "failed": failed,
            "not_reached": not_reached,
        },
        "timestamp": timestamp(),
        "request_id": request_id,
    }
