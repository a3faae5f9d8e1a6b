"""The /convert contract: request fields in, the seed's documents out.

``ConvertRequest`` is the one frozen request for every event shape, validated once:
the fields of a JSON body, a query string or a direct invocation all pass through
``ConvertRequest.from_fields``. Messages name the field and what it accepts.

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
OUTPUT_FORMATS = ("jpg", "jpeg", "png", "webp")
REQUEST_FIELDS = (
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
)
FORMAT_LABELS = {"jpg": "JPG", "png": "PNG", "webp": "WebP"}
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
        cls, fields: Mapping[str, Any], settings: Settings, image_preferred: bool = False
    ) -> ConvertRequest:
        """Validate request fields (from a JSON body, a query string or a direct event).

        ``image_preferred``: the caller's Accept header ranks an image above JSON, so
        an absent ``response`` means ``binary``.
        """
        from dicom_converter import RenderOptions

        unknown = sorted(set(fields) - set(REQUEST_FIELDS))
        if unknown:
            raise InvalidRequest(
                f"unknown field(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(REQUEST_FIELDS)}"
            )
        url = url_field(fields.get("url"))
        response = _choice(fields, "response", RESPONSE_MODES)
        if response is None:
            response = "binary" if image_preferred else "json"
        if response == "url" and not settings.output_bucket:
            raise InvalidRequest(
                "response 'url' needs an output bucket, and this deployment has no "
                "OUTPUT_BUCKET; use response 'json' or 'binary'"
            )
        options = RenderOptions(
            output_format=_choice(fields, "output_format", OUTPUT_FORMATS)
            or settings.default_output_format,
            quality=_integer(fields, "quality", "an integer from 1 to 100"),
            frame=_default(_integer(fields, "frame", "a 1-based frame number (1, 2, ...)"), 1),
            window=_window(fields),
            preset=_preset(fields),
            width=_integer(fields, "width", "an integer from 1 to 16384"),
            height=_integer(fields, "height", "an integer from 1 to 16384"),
            include_metadata=_boolean(fields, "include_metadata", default=True),
        )
        return cls(
            url=url,
            storage_type=_choice(fields, "storage_type", STORAGE_TYPES) or "auto",
            options=options,
            response=response,
        )


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
    """The VOI window: ``window: {center, width, function}`` or the flat fields."""
    from dicom_converter import VOI_FUNCTIONS, Window

    flat = {k: fields.get(k) for k in ("window_center", "window_width", "window_function")}
    window = _present(fields, "window")
    if window is not None:
        if any(v is not None for v in flat.values()):
            raise InvalidRequest("give either window or window_center/window_width, not both")
        if not isinstance(window, Mapping):
            raise InvalidRequest(
                'window must be an object such as {"center": 40, "width": 400, '
                f'"function": "LINEAR"}}, got {shown_value(window)}'
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
    info = result.describe()
    metadata = info.pop("metadata")
    data: dict[str, Any] = {}
    if link is None:
        data["image_base64"] = base64.b64encode(result.image).decode("ascii")
    else:
        data["image_url"], data["expires_in"] = link
    data.update(
        {
            "file_size": info.pop("file_size"),
            "format": info.pop("format"),
            "quality": info.pop("quality"),
            **info,
            "transfer_syntax_name": syntax_name(result.transfer_syntax),
        }
    )
    return {
        "success": True,
        "message": f"DICOM successfully converted to {format_label(result.format)}",
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
