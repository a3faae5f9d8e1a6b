"""AWS Lambda entry point: any supported event in, the seed's response document out.

This is the only module that knows event shapes and HTTP. The path of a request:

    event (REST v1 | HTTP API v2 | Function URL | direct invoke)
      → Incoming (method, route, headers, query, body; one type for every shape)
      → route: GET /health, GET|POST /convert, OPTIONS (CORS preflight)
      → ConvertRequest (frozen, validated once)
      → temp_cleaner.workdir → file_downloader.fetch → dicom_converter.render
      → Response: the seed's JSON document, the image itself, or an S3 link
      → the event shape's result (proxy envelope, or the document for direct invoke)

Every failure becomes a response in one place, ``error_response``: a
``ServiceError`` answers with its own ``status`` and ``code``; anything else is a
500 with a generic message and the request id, and the details go to the log.

Cold start matters: numpy, pydicom, Pillow, requests and boto3 are imported only
inside the routes that need them, so ``/health`` and the init phase stay light.
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import dataclasses
import functools
import json
import logging
import os
import platform
import re
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote_plus

import temp_cleaner
from errors import (
    ConfigurationError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    TooLarge,
    UpstreamError,
)
from settings import Settings, get_settings

if TYPE_CHECKING:
    from collections.abc import Callable

    from bulk import Deadline, Outcome, S3Object
    from dicom_converter import RenderOptions, RenderResult

__version__ = "1.0.0"

# Measured from the init phase, i.e. the life of this execution environment.
_STARTED = time.monotonic()
_cold = True

ROUTES: dict[str, tuple[str, ...]] = {
    "/convert": ("GET", "POST", "OPTIONS"),
    "/health": ("GET", "OPTIONS"),
}

STORAGE_TYPES = ("auto", "s3", "r2", "ftp", "http", "https")
RESPONSE_MODES = ("json", "binary", "url")
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
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/*")
JSON_MEDIA_TYPES = ("application/json", "application/*", "*/*")

# Time kept back from the Lambda deadline for rendering and answering, so that a
# slow source ends in a 504 from us rather than in a killed invocation.
RENDER_RESERVE_SECONDS = 5.0
GENERIC_500 = "internal error; quote the request_id when reporting it"


# ---------------------------------------------------------------------------
# Logging: one JSON object per line, never patient data, credentials or signed URLs
# ---------------------------------------------------------------------------

_QUERY = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"?#]*)\?[^\s'\"#]*")
_USERINFO = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s'\"@]*@")


def scrub(text: str) -> str:
    """Drop query strings and user info from any URL in free text (exception messages)."""
    return _USERINFO.sub(r"\1<redacted>@", _QUERY.sub(r"\1?<redacted>", text))


# The request being handled, so that every line (the downloader's too) carries its id.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request_id", default=None
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        request_id = current_request_id.get()
        if request_id:
            doc["request_id"] = request_id
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc, default=str, separators=(",", ":"))


# Loggers of the modules the handler drives; their levels follow LOG_LEVEL in Lambda.
LIBRARY_LOGGERS = ("file_downloader", "dicom_converter")


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stdout`` is at the time (Lambda's, or a test's capture)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def in_lambda() -> bool:
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ


def _setup_logging() -> logging.Logger:
    """JSON lines on stdout, which Lambda sends to CloudWatch as they are.

    The handler's own logger always writes JSON. In Lambda, the runtime's root
    handler (which carries every other module's lines) is given the same format;
    elsewhere the root logger is left alone, so a host process keeps its logging.
    """
    own = logging.getLogger("dicom_lambda")
    if not any(isinstance(h, StdoutHandler) for h in own.handlers):
        handler = StdoutHandler()
        handler.setFormatter(JsonFormatter())
        own.addHandler(handler)
    own.propagate = False
    own.setLevel(logging.INFO)
    if in_lambda():
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    return own


def set_log_level(level: str) -> None:
    logger.setLevel(level.upper())
    if in_lambda():
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(level.upper())


logger = _setup_logging()


@dataclass
class RequestLog:
    """The fields of the one log line written for each request."""

    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def stage(self, name: str, started: float) -> None:
        self.durations[name] = round((time.perf_counter() - started) * 1000, 2)

    def emit(self, status: int, started: float) -> None:
        self.durations["total"] = round((time.perf_counter() - started) * 1000, 2)
        level = logging.ERROR if status >= 500 else logging.INFO
        fields = {
            "request_id": self.request_id,
            **self.fields,
            "status": status,
            "durations_ms": self.durations,
            "sizes": self.sizes,
        }
        logger.log(level, "request", extra={"fields": fields})


# ---------------------------------------------------------------------------
# Events → Incoming
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """One HTTP-like request, whatever event shape carried it."""

    kind: str  # "rest" | "http" | "url" | "direct"
    method: str
    path: str  # the route, with stage prefix and trailing slash removed
    headers: Mapping[str, str]  # lower-case names
    query: tuple[tuple[str, str], ...]
    body: bytes | None
    fields: Mapping[str, Any] | None = None  # direct invoke: the request fields themselves

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def parse_event(event: Any) -> Incoming:
    """Recognise the event shape and turn it into an ``Incoming``."""
    if not isinstance(event, Mapping):
        raise InvalidRequest("the event must be a JSON object")
    if "httpMethod" in event:
        return _from_rest(event)
    context = event.get("requestContext")
    if isinstance(context, Mapping) and isinstance(context.get("http"), Mapping):
        return _from_http_v2(event)
    return _from_direct(event)


def _from_rest(event: Mapping[str, Any]) -> Incoming:
    """API Gateway REST API, and HTTP API with payload format 1.0."""
    context = _mapping(event.get("requestContext"))
    headers = _lower_headers(event.get("multiValueHeaders"), event.get("headers"))
    multi = event.get("multiValueQueryStringParameters")
    if isinstance(multi, Mapping):
        query = tuple((k, str(v)) for k, values in multi.items() for v in (values or []))
    else:
        query = tuple((k, str(v)) for k, v in (event.get("queryStringParameters") or {}).items())
    return Incoming(
        kind="rest",
        method=str(event.get("httpMethod") or "GET").upper(),
        path=route_path(str(event.get("path") or "/"), context.get("stage")),
        headers=headers,
        query=query,
        body=_body_bytes(event.get("body"), bool(event.get("isBase64Encoded"))),
    )


def _from_http_v2(event: Mapping[str, Any]) -> Incoming:
    """HTTP API (payload format 2.0) and Lambda Function URLs, which share the shape."""
    context = event["requestContext"]
    domain = str(context.get("domainName") or "")
    raw_query = event.get("rawQueryString")
    if isinstance(raw_query, str):
        query = tuple(parse_qsl(raw_query, keep_blank_values=True))
    else:
        query = tuple((k, str(v)) for k, v in (event.get("queryStringParameters") or {}).items())
    return Incoming(
        kind="url" if ".lambda-url." in domain else "http",
        method=str(context["http"].get("method") or "GET").upper(),
        path=route_path(str(event.get("rawPath") or "/"), context.get("stage")),
        headers=_lower_headers(None, event.get("headers")),
        query=query,
        body=_body_bytes(event.get("body"), bool(event.get("isBase64Encoded"))),
    )


def _from_direct(event: Mapping[str, Any]) -> Incoming:
    """``aws lambda invoke`` with the request fields at top level.

    ``{"action": "health"}`` or ``{"path": "/health"}`` asks for health; a
    ``body`` (a JSON string or an object) is accepted in place of top-level fields.
    """
    fields = dict(event)
    action = fields.pop("action", None)
    path = fields.pop("path", None)
    if action is not None:
        if action not in ("health", "convert"):
            raise InvalidRequest(f"action must be 'health' or 'convert', got {_shown(action)}")
        route = f"/{action}"
    elif path is not None:
        route = route_path(str(path), None)
    else:
        route = "/convert"
    body = fields.pop("body", None)
    if body is not None and not fields.get("url"):
        if isinstance(body, Mapping):
            fields = {**fields, **body}
        else:
            raw = _body_bytes(body, bool(fields.pop("isBase64Encoded", False)))
            fields = {**fields, **json_fields(raw)}
    return Incoming(
        kind="direct",
        method="GET" if route == "/health" else "POST",
        path=route,
        headers={},
        query=(),
        body=None,
        fields=fields,
    )


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _lower_headers(multi: Any, single: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(multi, Mapping):
        for name, values in multi.items():
            headers[str(name).lower()] = ", ".join(str(v) for v in (values or []))
    if isinstance(single, Mapping):
        for name, value in single.items():
            headers.setdefault(str(name).lower(), str(value))
    return headers


def _body_bytes(body: Any, is_base64: bool) -> bytes | None:
    if body is None or body == "":
        return None
    if isinstance(body, (bytes, bytearray)):
        return bytes(body)
    if not isinstance(body, str):
        raise InvalidRequest("the request body must be a string")
    if is_base64:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidRequest(
                "the request body is marked base64 but is not valid base64"
            ) from exc
    return body.encode("utf-8")


def route_path(path: str, stage: Any) -> str:
    """The route for a request path, tolerating a stage prefix and a trailing slash.

    REST APIs reached through a custom domain, and HTTP APIs with a named stage,
    put one extra leading segment (the stage or base path) in front of the route.
    """
    segments = [s for s in path.split("/") if s]
    if stage and stage != "$default" and segments[:1] == [str(stage)] and len(segments) > 1:
        segments = segments[1:]
    if len(segments) == 2 and f"/{segments[1]}" in ROUTES:
        segments = segments[1:]
    return "/" + "/".join(segments)


def json_fields(raw: bytes | None) -> dict[str, Any]:
    """The JSON object in a request body: plain, base64 of one, or double-encoded."""
    if raw is None:
        raise InvalidRequest(
            "the request body is empty; send a JSON object with at least 'url', "
            'e.g. {"url": "https://example.com/image.dcm"}'
        )
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the request body must be UTF-8 JSON") from exc
    value = _loads(text)
    if value is _INVALID:
        value = _loads(_unbase64(text))
    if isinstance(value, str):
        # A JSON string holding the JSON document: some clients encode twice.
        value = _loads(value)
    if value is _INVALID:
        raise InvalidRequest(
            "the request body is not valid JSON; send a JSON object such as "
            '{"url": "https://example.com/image.dcm"}'
        )
    if not isinstance(value, dict):
        raise InvalidRequest("the request body must be a JSON object with a 'url' field")
    return value


_INVALID = object()


def _loads(text: str) -> Any:
    if not text:
        return _INVALID
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return _INVALID


def _unbase64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return ""


# ---------------------------------------------------------------------------
# ConvertRequest: one frozen request for every event shape, validated once
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertRequest:
    url: str
    storage_type: str
    options: RenderOptions
    response: str  # json | binary | url

    @classmethod
    def from_fields(
        cls, fields: Mapping[str, Any], settings: Settings, accept: str | None = None
    ) -> ConvertRequest:
        """Validate request fields (from a JSON body, a query string or a direct event)."""
        from dicom_converter import RenderOptions

        unknown = sorted(set(fields) - set(REQUEST_FIELDS))
        if unknown:
            raise InvalidRequest(
                f"unknown field(s) {', '.join(map(repr, unknown))}; "
                f"allowed: {', '.join(REQUEST_FIELDS)}"
            )
        url = _url_field(fields.get("url"))
        response = _choice(fields, "response", RESPONSE_MODES)
        if response is None:
            response = "binary" if prefers_image(accept) else "json"
        if response == "url" and not settings.output_bucket:
            raise InvalidRequest(
                "response 'url' needs an output bucket, and this deployment has no "
                "OUTPUT_BUCKET; use response 'json' or 'binary'"
            )
        options = RenderOptions(
            output_format=_choice(fields, "output_format", ("jpg", "jpeg", "png", "webp"))
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


def _url_field(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidRequest(
            "url is required: the s3://, https://, http:// or ftp:// address of the DICOM file"
        )
    if not isinstance(value, str):
        raise InvalidRequest(f"url must be a string, got {type(value).__name__}")
    if len(value) > 8192:
        raise InvalidRequest("url must be at most 8192 characters long")
    return value.strip()


def _shown(value: Any) -> str:
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
            f"{name} must be one of {', '.join(spelled.values())}, got {_shown(value)}"
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
        raise InvalidRequest(f"{name} must be {what}, got {_shown(value)}")
    return number


def _number(fields: Mapping[str, Any], name: str) -> float | None:
    value = _present(fields, name)
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{name} must be a number, got {_shown(value)}") from exc


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
    raise InvalidRequest(f"{name} must be true or false, got {_shown(value)}")


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
                f'"function": "LINEAR"}}, got {_shown(window)}'
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


def prefers_image(accept: str | None) -> bool:
    """True when an Accept header ranks an image type strictly above JSON."""
    if not accept:
        return False
    best_image = best_json = 0.0
    for part in accept.split(","):
        media, _, params = part.partition(";")
        media = media.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media in IMAGE_MEDIA_TYPES:
            best_image = max(best_image, quality)
        if media in JSON_MEDIA_TYPES:
            best_json = max(best_json, quality)
    return best_image > best_json


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    document: dict[str, Any] | None = None
    image: bytes | None = None
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def timestamp() -> str:
    """ISO 8601 UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def error_response(exc: BaseException, request_id: str) -> Response:
    """The one table from error to response: each ServiceError's own status and code."""
    if isinstance(exc, ServiceError):
        status, code, message = exc.status, exc.code, exc.message
    else:
        status, code, message = 500, "internal_error", GENERIC_500
    document = {
        "success": False,
        "message": message,
        "error": {"code": code, "status": status},
        "timestamp": timestamp(),
        "request_id": request_id,
    }
    headers = {}
    if isinstance(exc, MethodNotAllowed) and exc.allow:
        headers["Allow"] = ", ".join(exc.allow)
    return Response(status, document, headers=headers)


def cors_headers(origin: str | None, settings: Settings | None) -> dict[str, str]:
    allowed = settings.cors_origins if settings is not None else ()
    if "*" in allowed:
        value = "*"
    elif origin and origin in allowed:
        value = origin
    else:
        return {}
    headers = {
        "Access-Control-Allow-Origin": value,
        "Access-Control-Expose-Headers": "X-Request-Id, Location",
    }
    if value != "*":
        headers["Vary"] = "Origin"
    return headers


def preflight(incoming: Incoming, settings: Settings) -> Response:
    allow = ROUTES[incoming.path]
    headers = cors_headers(incoming.header("origin"), settings)
    if headers:
        headers.update(
            {
                "Access-Control-Allow-Methods": ", ".join(allow),
                "Access-Control-Allow-Headers": incoming.header("access-control-request-headers")
                or "Content-Type, Accept, Authorization, X-Api-Key",
                "Access-Control-Max-Age": "600",
            }
        )
    headers["Allow"] = ", ".join(allow)
    return Response(204, headers=headers)


def to_result(response: Response, kind: str, request_id: str) -> dict[str, Any]:
    """The Lambda result for the event shape: a proxy envelope, or the document itself."""
    if kind == "direct":
        return response.document or {}
    headers = {
        "Content-Type": response.media_type,
        "X-Request-Id": request_id,
        "Cache-Control": "no-store",
        **response.headers,
    }
    if response.image is not None:
        body = base64.b64encode(response.image).decode("ascii")
        return {
            "statusCode": response.status,
            "headers": headers,
            "body": body,
            "isBase64Encoded": True,
        }
    if response.document is None:
        headers.pop("Content-Type")
        return {
            "statusCode": response.status,
            "headers": headers,
            "body": "",
            "isBase64Encoded": False,
        }
    return {
        "statusCode": response.status,
        "headers": headers,
        "body": json.dumps(response.document, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def result_size(result: dict[str, Any]) -> int:
    """Bytes of the serialised Lambda result, which is what the payload limit counts."""
    return len(json.dumps(result, separators=(",", ":")).encode("utf-8"))


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------

_IMPLICIT_LE = "1.2.840.10008.1.2"
_SYNTAX_NAMES = {
    _IMPLICIT_LE: "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 and 4)",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction "
    "(Process 14 [Selection Value 1])",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless Image Compression",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Lossy (Near-Lossless) Image Compression",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 with RPCL Options Image "
    "Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}
_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99")
_NATIVE += ("1.2.840.10008.1.2.2",)
_JPEG_8_12 = ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51")
_JPEG = (*_JPEG_8_12, "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_J2K = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")
_HTJ2K = ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_RLE = ("1.2.840.10008.1.2.5",)

# Which transfer syntaxes pydicom 3 decodes with each set of installed modules
# (pydicom.pixels.decoders: the native decoders and the gdcm, pylibjpeg, pillow,
# pyjpegls and rle plugins). Every decoder also needs pydicom and numpy.
CODEC_SYNTAXES: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    ((), _NATIVE + _RLE),
    (("pylibjpeg", "libjpeg"), _JPEG + _JPEG_LS),
    (("pylibjpeg", "openjpeg"), _J2K + _HTJ2K),
    (("pylibjpeg", "rle"), _RLE),
    (("PIL",), _JPEG_8_12 + _J2K),
    (("gdcm",), _JPEG + _JPEG_LS + _J2K),
    (("jpeg_ls",), _JPEG_LS),
)
CODEC_DISTRIBUTIONS = {
    "pydicom": "pydicom",
    "numpy": "numpy",
    "pylibjpeg": "pylibjpeg",
    "libjpeg": "pylibjpeg-libjpeg",
    "openjpeg": "pylibjpeg-openjpeg",
    "rle": "pylibjpeg-rle",
    "PIL": "pillow",
    "gdcm": "python-gdcm",
    "jpeg_ls": "pyjpegls",
}


def _spec(module: str) -> Any:
    import importlib.util

    try:
        return importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None


def _installed(module: str) -> bool:
    return _spec(module) is not None


@cache
def decodable_syntaxes() -> tuple[dict[str, str], ...]:
    """Transfer syntaxes the installed codecs can decode, found without importing them."""
    if not (_installed("pydicom") and _installed("numpy")):
        return ()
    found: set[str] = set()
    for modules, syntaxes in CODEC_SYNTAXES:
        if all(_installed(m) for m in modules):
            found.update(syntaxes)
    order = list(_SYNTAX_NAMES)
    return tuple({"uid": uid, "name": _SYNTAX_NAMES[uid]} for uid in order if uid in found)


@cache
def codec_versions() -> dict[str, str]:
    """Installed versions of the decoding packages.

    Read from the ``NAME-VERSION.dist-info`` folder names beside each package:
    importing ``importlib.metadata`` would add ~15 ms to a cold /health.
    """
    versions: dict[str, str] = {}
    for module, distribution in CODEC_DISTRIBUTIONS.items():
        spec = _spec(module)
        if spec is None or not spec.origin:
            continue
        folder = os.path.dirname(spec.origin)
        if spec.submodule_search_locations is not None:  # a package: its parent folder
            folder = os.path.dirname(folder)
        versions[distribution] = _dist_info_versions(folder).get(
            re.sub(r"[-_.]+", "_", distribution).lower(), "unknown"
        )
    return versions


@cache
def _dist_info_versions(folder: str) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return found
    for name in names:
        if name.endswith(".dist-info"):
            project, _, version = name.removesuffix(".dist-info").partition("-")
            found[re.sub(r"[-_.]+", "_", project).lower()] = version
    return found


@cache
def runtime_info() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "architecture": platform.machine(),
        "execution_env": os.environ.get("AWS_EXECUTION_ENV"),
        "region": os.environ.get("AWS_REGION"),
        "memory_mb": _int_or_none(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")),
    }


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def health(request_id: str, settings: Settings) -> Response:
    document = {
        "success": True,
        "status": "ok",
        "version": __version__,
        "runtime": runtime_info(),
        "transfer_syntaxes": list(decodable_syntaxes()),
        "codecs": codec_versions(),
        "temp": {
            "root": settings.temp_root,
            "free_bytes": temp_cleaner.free_bytes(settings.temp_root),
        },
        "uptime_seconds": round(time.monotonic() - _STARTED, 3),
        "timestamp": timestamp(),
        "request_id": request_id,
    }
    return Response(200, document)


# ---------------------------------------------------------------------------
# Convert
# ---------------------------------------------------------------------------


def convert(
    incoming: Incoming, request_id: str, settings: Settings, context: Any, log: RequestLog
) -> Response:
    fields = _convert_fields(incoming)
    if "urls" in fields:
        return convert_batch(fields, incoming.kind, request_id, settings, context, log)
    request = ConvertRequest.from_fields(fields, settings, incoming.header("accept"))
    import file_downloader

    log.fields["url"] = _redacted(file_downloader, request.url)
    log.fields["source_type"] = file_downloader.source_type(
        request.url, request.storage_type, settings
    )
    with temp_cleaner.workdir(request_id, settings) as folder:
        started = time.perf_counter()
        path = file_downloader.fetch(
            request.url, folder, request.storage_type, _with_deadline(settings, context)
        )
        log.stage("download", started)
        log.sizes["download_bytes"] = path.stat().st_size

        import dicom_converter

        started = time.perf_counter()
        result = dicom_converter.render(path, request.options, settings)
        log.stage("decode_render", started)
        # The converter's own split of that time: read, decode, render, encode.
        log.durations.update(result.timings_ms)
    log.sizes["image_bytes"] = result.file_size
    log.fields["output"] = {"format": result.format, "width": result.width, "height": result.height}
    started = time.perf_counter()
    response = deliver(result, request, incoming.kind, request_id, settings, log)
    log.stage("respond", started)
    return response


def _redacted(file_downloader: Any, url: str) -> str:
    try:
        return str(file_downloader.redact_url(url))
    except Exception:  # a URL too broken to redact is not logged at all
        return "<unparseable>"


def _convert_fields(incoming: Incoming) -> Mapping[str, Any]:
    if incoming.fields is not None:
        return incoming.fields
    if incoming.method == "GET" or (incoming.body is None and incoming.query):
        fields: dict[str, str] = {}
        for name, value in incoming.query:
            if name in fields:
                raise InvalidRequest(f"query parameter {name!r} is given more than once")
            fields[name] = value
        return fields
    return json_fields(incoming.body)


def _remaining_seconds(context: Any) -> float | None:
    """Seconds until Lambda stops the invocation; None without a Lambda context."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    return None if remaining is None else remaining() / 1000.0


def _with_deadline(settings: Settings, context: Any) -> Settings:
    """Shorten the download deadline so it ends before the invocation would be killed."""
    remaining = _remaining_seconds(context)
    if remaining is None:
        return settings
    budget = remaining - RENDER_RESERVE_SECONDS
    if budget >= settings.download_deadline_seconds:
        return settings
    return dataclasses.replace(settings, download_deadline_seconds=max(budget, 1.0))


def success_document(
    result: RenderResult, request_id: str, link: tuple[str, int] | None = None
) -> dict[str, Any]:
    """The seed's document: {success, message, data, timestamp, metadata} plus request_id."""
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
        }
    )
    return {
        "success": True,
        "message": f"DICOM successfully converted to {FORMAT_LABELS.get(result.format, 'image')}",
        "data": data,
        "timestamp": timestamp(),
        "request_id": request_id,
        "metadata": metadata,
    }


def deliver(
    result: RenderResult,
    request: ConvertRequest,
    kind: str,
    request_id: str,
    settings: Settings,
    log: RequestLog,
) -> Response:
    """Answer inline when it fits the payload limit, else with a link, else 413."""
    binary = request.response == "binary" and kind != "direct"
    if request.response == "url":
        return link_response(result, request_id, settings, log, redirect=False)
    if binary:
        inline = Response(200, image=result.image, media_type=result.media_type)
        inline.headers["Content-Disposition"] = (
            f'inline; filename="{temp_cleaner.folder_name(request_id)}.{result.format}"'
        )
    else:
        inline = Response(200, success_document(result, request_id))
    size = result_size(to_result(inline, kind, request_id))
    log.sizes["response_bytes"] = size
    if size <= settings.max_response_bytes:
        return inline
    if settings.output_bucket:
        return link_response(result, request_id, settings, log, redirect=binary)
    raise TooLarge(
        f"the {FORMAT_LABELS.get(result.format, 'image')} image is {result.file_size} bytes "
        f"({result.width}x{result.height}); the response would be {size} bytes, above the "
        f"{settings.max_response_bytes}-byte limit (MAX_RESPONSE_BYTES). Ask for a smaller "
        "width/height or a lower quality, or set OUTPUT_BUCKET so that large images are "
        "returned as a link"
    )


def link_response(
    result: RenderResult, request_id: str, settings: Settings, log: RequestLog, redirect: bool
) -> Response:
    """Store the image in OUTPUT_BUCKET and answer with a presigned GET link."""
    url = upload_image(result, request_id, settings, log)
    document = success_document(result, request_id, link=(url, settings.url_expiry_seconds))
    if redirect:
        # The caller wanted the image itself (an <img> tag, Accept: image/*): send it there.
        return Response(303, document, headers={"Location": url})
    return Response(200, document)


_s3_clients: dict[tuple[str | None, str], Any] = {}


def output_client(settings: Settings) -> Any:
    """An S3 client for the output bucket, built once per endpoint (S3_ENDPOINT_URL applies)."""
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    key = (settings.s3_endpoint_url, region)
    if key not in _s3_clients:
        import boto3
        from botocore.config import Config

        config = Config(
            signature_version="s3v4",
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            retries={"max_attempts": settings.download_retries + 1, "mode": "standard"},
            # Custom endpoints (MinIO, moto, LocalStack) rarely resolve bucket subdomains.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        )
        _s3_clients[key] = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=region, config=config
        )
    return _s3_clients[key]


def upload_image(result: RenderResult, request_id: str, settings: Settings, log: RequestLog) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    assert settings.output_bucket is not None
    key = f"{settings.output_prefix}{temp_cleaner.folder_name(request_id)}.{result.format}"
    client = output_client(settings)
    try:
        client.put_object(
            Bucket=settings.output_bucket,
            Key=key,
            Body=result.image,
            ContentType=result.media_type,
        )
        url = client.generate_presigned_url(
            "get_object",
            Params={"Bucket": settings.output_bucket, "Key": key},
            ExpiresIn=settings.url_expiry_seconds,
        )
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "error"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in ("NoSuchBucket", "AccessDenied", "AllAccessDisabled", "InvalidBucketName"):
            raise ConfigurationError(
                f"the output bucket (OUTPUT_BUCKET) refused the upload: {code}"
            ) from exc
        raise UpstreamError(
            f"the output bucket could not store the image ({code}, HTTP {status}); try again"
        ) from exc
    except BotoCoreError as exc:
        raise UpstreamError(
            f"the output bucket could not be reached ({type(exc).__name__}); try again"
        ) from exc
    log.fields["output_key"] = key
    return url


# ---------------------------------------------------------------------------
# Batch: POST /convert with urls (bulk.py runs the work)
# ---------------------------------------------------------------------------


def convert_batch(
    fields: Mapping[str, Any],
    kind: str,
    request_id: str,
    settings: Settings,
    context: Any,
    log: RequestLog,
) -> Response:
    """``urls: [...]``: every URL fetched and rendered on its own, BATCH_WORKERS at a time.

    The answer holds one result per URL, in order, each with its own success or
    error. With OUTPUT_BUCKET the images are stored there and the results hold links.
    """
    import bulk
    import file_downloader

    urls = _urls_field(fields, settings)
    # The shared options are validated once, with a stand-in URL; each URL on its own.
    shared = {name: value for name, value in fields.items() if name != "urls"}
    template = ConvertRequest.from_fields({**shared, "url": "-"}, settings)
    if template.response == "binary":
        raise InvalidRequest("a batch answers JSON: response must be 'json' or 'url'")
    links = settings.output_bucket is not None
    if links:
        # Built here, before the workers start: creating boto3 clients is not thread-safe.
        output_client(settings)
    deadline = bulk.Deadline.after(_remaining_seconds(context))

    def item(index: int, value: Any) -> dict[str, Any]:
        request = dataclasses.replace(template, url=_url_field(value))
        work_id = f"{request_id}-{index + 1}"
        fetch_settings = deadline.download_settings(settings)
        result = bulk.render_url(
            request.url, request.storage_type, request.options, fetch_settings, work_id
        )
        link = None
        if links:
            stored = upload_image(result, work_id, settings, RequestLog(request_id))
            link = (stored, settings.url_expiry_seconds)
        document = success_document(result, request_id, link)
        return {
            "index": index,
            "url": _redacted(file_downloader, request.url),
            "success": True,
            "data": document["data"],
            "metadata": document["metadata"],
        }

    jobs = [functools.partial(item, index, value) for index, value in enumerate(urls)]
    items = []
    for index, (value, result) in enumerate(
        zip(urls, bulk.run_all(jobs, settings.batch_workers, deadline), strict=True)
    ):
        if isinstance(result, dict):
            items.append(result)
            continue
        error = result or bulk.NotReached(
            "not done before the invocation's deadline; send this URL again"
        )
        shown = _redacted(file_downloader, value) if isinstance(value, str) else None
        items.append(batch_error(index, shown, error, request_id))
    document = batch_document(fit_batch(items, kind, request_id, settings), request_id)
    log.fields["batch"] = {k: document["data"][k] for k in ("converted", "failed", "not_reached")}
    return Response(200, document)


def _urls_field(fields: Mapping[str, Any], settings: Settings) -> list[Any]:
    urls = fields.get("urls")
    if "url" in fields:
        raise InvalidRequest("give either url or urls, not both")
    if not isinstance(urls, list) or not urls:
        raise InvalidRequest(
            "urls must be a non-empty JSON array of URL strings, sent in a POST body"
        )
    if len(urls) > settings.max_batch_urls:
        raise InvalidRequest(
            f"urls holds {len(urls)} URLs; at most {settings.max_batch_urls} are allowed "
            "per request (MAX_BATCH_URLS)"
        )
    return urls


def batch_error(index: int, url: str | None, exc: BaseException, request_id: str) -> dict[str, Any]:
    """One failed item, with the status and code of the one error table."""
    if not isinstance(exc, ServiceError):
        logger.error(
            "unexpected error",
            exc_info=exc,
            extra={"fields": {"request_id": request_id, "index": index}},
        )
    document = error_response(exc, request_id).document
    assert document is not None
    return {
        "index": index,
        "url": url,
        "success": False,
        "message": document["message"],
        "error": document["error"],
    }


def batch_document(items: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
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


def fit_batch(
    items: list[dict[str, Any]], kind: str, request_id: str, settings: Settings
) -> list[dict[str, Any]]:
    """Keep the answer within MAX_RESPONSE_BYTES.

    Inline images are kept in request order while they fit; each one that does not
    becomes a 413 for its item, so earlier results keep their images.
    """
    budget = settings.max_response_bytes

    def size(candidate: list[dict[str, Any]]) -> int:
        document = batch_document(candidate, request_id)
        return result_size(to_result(Response(200, document), kind, request_id))

    if size(items) <= budget:
        return items
    placeholders = [_too_large_item(item, budget, request_id) for item in items]
    spare = budget - size(placeholders)
    if spare < 0:
        raise TooLarge(
            f"the batch answer is above MAX_RESPONSE_BYTES ({budget} bytes) even without "
            "images; send fewer URLs"
        )
    fitted = []
    for item, placeholder in zip(items, placeholders, strict=True):
        extra = _encoded_size(item, kind) - _encoded_size(placeholder, kind)
        keep = extra <= spare
        fitted.append(item if keep else placeholder)
        spare -= extra if keep else 0
    # The counts in the message change a few bytes; drop images from the end if needed.
    for index in reversed(range(len(fitted))):
        if size(fitted) <= budget:
            break
        fitted[index] = placeholders[index]
    return fitted


def _too_large_item(item: dict[str, Any], budget: int, request_id: str) -> dict[str, Any]:
    if "image_base64" not in item.get("data", {}):
        return item
    error = TooLarge(
        f"the image ({item['data']['file_size']} bytes) does not fit in this batch's answer "
        f"under MAX_RESPONSE_BYTES ({budget} bytes); convert this URL alone, ask for a "
        "smaller width/height, or set OUTPUT_BUCKET so that images are returned as links"
    )
    return batch_error(item["index"], item["url"], error, request_id)


def _encoded_size(value: Any, kind: str) -> int:
    """Bytes ``value`` takes in the serialised result: a proxy body is JSON inside JSON."""
    text = json.dumps(value, separators=(",", ":"))
    if kind == "direct":
        return len(text.encode("utf-8"))
    return len(json.dumps(text).encode("utf-8")) - 2


# ---------------------------------------------------------------------------
# S3 notifications: direct, wrapped in SQS, or through EventBridge (bulk.py)
# ---------------------------------------------------------------------------


class NotificationFailed(Exception):
    """Raised when an object of an S3 or EventBridge event failed.

    Those sources invoke the function asynchronously: only an error makes Lambda
    retry the event (and after the retries send it to a failure destination). On a
    retry, the objects already converted are skipped by their ETag.
    """


def notification_kind(event: Any) -> str | None:
    """``s3``, ``sqs`` or ``eventbridge`` for an S3 notification in that shape."""
    if not isinstance(event, Mapping):
        return None
    if event.get("source") == "aws.s3" and "detail-type" in event:
        return "eventbridge"
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        return {"aws:s3": "s3", "aws:sqs": "sqs"}.get(str(records[0].get("eventSource")))
    return None


def s3_notification_objects(records: list[Any]) -> list[S3Object]:
    """The objects of an S3 event notification, whose keys are URL-encoded ('+' is a space)."""
    from bulk import S3Object

    objects = []
    for record in records:
        s3 = _mapping(_mapping(record).get("s3"))
        bucket = _mapping(s3.get("bucket")).get("name")
        found = _mapping(s3.get("object"))
        key = found.get("key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise InvalidRequest("an S3 record lacks s3.bucket.name or s3.object.key")
        event_name = str(_mapping(record).get("eventName", ""))
        objects.append(
            S3Object(
                bucket=bucket,
                key=unquote_plus(key),
                etag=_etag(found.get("eTag")),
                version_id=_text(found.get("versionId")),
                created=event_name.startswith("ObjectCreated:"),
            )
        )
    return objects


def eventbridge_object(event: Mapping[str, Any]) -> S3Object:
    """The object of an S3 event delivered by EventBridge, whose key is not encoded."""
    from bulk import S3Object

    detail = _mapping(event.get("detail"))
    bucket = _mapping(detail.get("bucket")).get("name")
    found = _mapping(detail.get("object"))
    key = found.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise InvalidRequest("an EventBridge S3 event lacks detail.bucket.name or .object.key")
    return S3Object(
        bucket=bucket,
        key=key,
        etag=_etag(found.get("etag")),
        version_id=_text(found.get("version-id")),
        created=event.get("detail-type") == "Object Created",
    )


def sqs_message_objects(body: Any) -> list[S3Object]:
    """The objects in one SQS message: an S3 notification or an EventBridge event, or
    either inside an SNS envelope. S3's test message names none."""
    document = _loads(body) if isinstance(body, str) else _INVALID
    if isinstance(document, Mapping) and document.get("Type") == "Notification":
        document = _loads(str(document.get("Message", "")))
    if isinstance(document, Mapping) and document.get("Event") == "s3:TestEvent":
        return []
    kind = notification_kind(document)
    if kind == "s3":
        return s3_notification_objects(document["Records"])
    if kind == "eventbridge":
        return [eventbridge_object(document)]
    raise InvalidRequest("the SQS message body is not an S3 event notification")


def _etag(value: Any) -> str | None:
    """An ETag without the quotes HeadObject puts around it (notifications have none)."""
    return str(value).strip('"') if value else None


def _text(value: Any) -> str | None:
    return str(value) if value else None


def handle_notification(
    kind: str,
    event: Mapping[str, Any],
    context: Any,
    settings: Settings | None,
    log: RequestLog,
    started: float,
) -> dict[str, Any]:
    """Convert what an S3 notification names; answer in the shape its source expects."""
    import bulk

    log.fields["event_type"] = kind
    try:
        settings = settings or get_settings()
        set_log_level(settings.log_level)
        deadline = bulk.Deadline.after(_remaining_seconds(context))
        client = functools.partial(output_client, settings)
        if kind == "sqs":
            result, outcomes = sqs_batch(event["Records"], settings, deadline, client)
            failed = len(result["batchItemFailures"])
        else:
            if kind == "s3":
                objects = s3_notification_objects(event["Records"])
            else:
                objects = [eventbridge_object(event)]
            outcomes = bulk.convert_objects(objects, settings, deadline, client)
            result = notification_report(outcomes, log.request_id)
            failed = sum(1 for outcome in outcomes if outcome.failed)
    except Exception as exc:
        log.fields["error"] = exc.message if isinstance(exc, ServiceError) else type(exc).__name__
        log.emit(500, started)
        raise
    log.fields["objects"] = {
        status: sum(1 for o in outcomes if o.status == status)
        for status in ("converted", "skipped", "failed")
    }
    log.emit(500 if failed else 200, started)
    if failed and kind != "sqs":
        raise NotificationFailed(result["message"])
    return result


def sqs_batch(
    records: list[Any], settings: Settings, deadline: Deadline, client: Callable[[], Any]
) -> tuple[dict[str, Any], list[Outcome]]:
    """SQS answers ``batchItemFailures``: only the messages listed are retried."""
    import bulk

    messages: list[tuple[str, list[S3Object] | None]] = []
    for record in records:
        message_id = str(_mapping(record).get("messageId"))
        try:
            messages.append((message_id, sqs_message_objects(_mapping(record).get("body"))))
        except ServiceError as exc:
            logger.warning(
                "unreadable SQS message",
                extra={"fields": {"message_id": message_id, "error": exc.message}},
            )
            messages.append((message_id, None))
    objects = [obj for _, found in messages for obj in found or ()]
    outcomes = bulk.convert_objects(objects, settings, deadline, client)
    remaining = iter(outcomes)
    failures = []
    for message_id, found in messages:
        mine = [next(remaining) for _ in found or ()]
        if found is None or any(outcome.failed for outcome in mine):
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}, outcomes


def notification_report(outcomes: list[Outcome], request_id: str) -> dict[str, Any]:
    """The answer to an S3 or EventBridge event: what became of each object."""
    failed = [o for o in outcomes if o.failed]
    counts = ", ".join(
        f"{sum(1 for o in outcomes if o.status == status)} {status}"
        for status in ("converted", "skipped", "failed")
    )
    message = f"{len(outcomes)} object(s): {counts}"
    if failed:
        message += "; " + "; ".join(
            f"s3://{o.object.bucket}/{o.object.key}: {o.reason}: {o.message}" for o in failed
        )
    return {
        "success": not failed,
        "message": message,
        "records": [outcome.describe() for outcome in outcomes],
        "timestamp": timestamp(),
        "request_id": request_id,
    }


# ---------------------------------------------------------------------------
# The handler
# ---------------------------------------------------------------------------


class RouteNotFound(NotFound):
    code = "route_not_found"


def route(
    incoming: Incoming, request_id: str, settings: Settings, context: Any, log: RequestLog
) -> Response:
    allowed = ROUTES.get(incoming.path)
    if allowed is None:
        raise RouteNotFound(
            f"no route for {incoming.path}; use POST /convert, GET /convert or GET /health"
        )
    if incoming.method not in allowed:
        raise MethodNotAllowed(
            f"{incoming.method} is not allowed on {incoming.path}; use {', '.join(allowed)}",
            allow=allowed,
        )
    if incoming.method == "OPTIONS":
        return preflight(incoming, settings)
    if incoming.path == "/health":
        return health(request_id, settings)
    return convert(incoming, request_id, settings, context, log)


def request_id_of(event: Any, context: Any) -> str:
    value = getattr(context, "aws_request_id", None)
    if not value and isinstance(event, Mapping):
        value = _mapping(event.get("requestContext")).get("requestId")
    return str(value) if value else str(uuid.uuid4())


def handle(event: Any, context: Any = None, settings: Settings | None = None) -> dict[str, Any]:
    """Handle one event; `settings` overrides the environment's (tests, local server)."""
    global _cold
    started = time.perf_counter()
    request_id = request_id_of(event, context)
    log = RequestLog(request_id, {"cold_start": _cold})
    _cold = False
    token = current_request_id.set(request_id)
    try:
        kind = notification_kind(event)
        if kind is not None:
            return handle_notification(kind, event, context, settings, log, started)
        return _handle(event, context, settings, request_id, log, started)
    finally:
        current_request_id.reset(token)


def _handle(
    event: Any,
    context: Any,
    settings: Settings | None,
    request_id: str,
    log: RequestLog,
    started: float,
) -> dict[str, Any]:
    kind = "direct"
    origin = None
    try:
        incoming = parse_event(event)
        kind, origin = incoming.kind, incoming.header("origin")
        log.fields.update(event_type=kind, method=incoming.method, route=incoming.path)
        settings = settings or get_settings()
        set_log_level(settings.log_level)
        response = route(incoming, request_id, settings, context, log)
    except Exception as exc:
        response = error_response(exc, request_id)
        assert response.document is not None
        log.fields["code"] = response.document["error"]["code"]
        log.fields["error"] = response.document["message"]
        if not isinstance(exc, ServiceError):
            # The caller sees only the generic message; the details are for the operator.
            logger.error(
                "unexpected error",
                exc_info=exc,
                extra={"fields": {"request_id": request_id, "error_type": type(exc).__name__}},
            )
    if kind != "direct":
        response.headers.update(cors_headers(origin, _settings_or_none(settings)))
    log.emit(response.status, started)
    return to_result(response, kind, request_id)


def _settings_or_none(settings: Settings | None) -> Settings | None:
    if settings is not None:
        return settings
    try:
        return get_settings()
    except ServiceError:
        return None


def lambda_handler(event: Any, context: Any) -> dict[str, Any]:
    """The AWS Lambda entry point (handler ``lambda_function.lambda_handler``)."""
    return handle(event, context)


def _check_settings_at_start() -> None:
    """Validate settings in the init phase so a bad deployment says so in the first log line."""
    try:
        set_log_level(get_settings().log_level)
    except ServiceError as exc:
        logger.error("invalid configuration", extra={"fields": {"error": exc.message}})


_check_settings_at_start()
