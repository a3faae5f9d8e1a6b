"""AWS Lambda entry point: any supported event in, the seed's response document out.

This is the only module that knows event shapes; with ``delivery`` (how one
conversion is answered: ETags, 304s, the output cache, links) it is the HTTP side.
The path of a request:

    event (REST v1 | HTTP API v2 | Function URL | direct invoke)
      → Incoming (method, route, headers, query, body; one type for every shape)
      → route: GET /health, GET|POST /convert, OPTIONS (CORS preflight)
      → ConvertRequest (convert_api: frozen, validated once; native, DICOMweb and
        WADO-URI names; Accept picks the image format when no field does)
      → delivery.convert: If-None-Match or an output cache → pipeline.probe (HEAD)
        → 304 or the cached render; else pipeline.fetch_identify_render
        (temp_cleaner.workdir → frame_fetch.fetch_frames → dicom_converter.render)
      → Response: the seed's JSON document, the image itself, an S3 link, or 304
      → the event shape's result (proxy envelope, or the document for direct invoke)

S3, SQS and EventBridge notifications go to ``notifications`` (and ``bulk``), and
``urls: [...]`` batches to ``bulk``; both convert through the same pipeline.

Every failure becomes a response in one place, ``error_response``, with the status
and code of ``errors.describe``: a ``ServiceError`` answers with its own; anything
else is a 500 with a generic message and the request id, and the details go to
the log.

Cold start matters: numpy, pydicom, Pillow, requests and boto3 are imported only
inside the routes that need them, so ``/health`` and the init phase stay light.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import platform
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import parse_qsl

import bulk
import delivery
import dicom_codecs
import notifications
import pipeline
import temp_cleaner
from convert_api import (
    ConvertRequest,
    batch_document,
    error_document,
    shown_value,
    timestamp,
    urls_field,
)
from delivery import Response
from errors import (
    ConfigurationError,
    InvalidRequest,
    MethodNotAllowed,
    NotificationFailed,
    RouteNotFound,
    ServiceError,
)
from pipeline import Source
from service_log import (
    RequestLog,
    current_request_id,
    redact_url,
    set_log_level,
    setup_logging,
)
from settings import Settings, get_settings
from url_policy import source_type

__version__ = "1.0.0"

# Measured from the init phase, i.e. the life of this execution environment.
_STARTED = time.monotonic()
_cold = True

ROUTES: dict[str, tuple[str, ...]] = {
    "/": ("GET",),
    "/convert": ("GET", "POST", "OPTIONS"),
    "/health": ("GET", "OPTIONS"),
}

IMAGE_MEDIA_TYPES = (*delivery.ACCEPTED_IMAGES, "image/*")
JSON_MEDIA_TYPES = ("application/json", "application/*", "*/*")

# The sources read by byte ranges (ranged_reads.RANGED_SOURCES, which imports
# requests: written out so that /health stays light; a test checks they agree).
RANGED_SOURCES = ("http", "s3", "r2", "ftp")

# Time kept back from the Lambda deadline for rendering and answering, so that a
# slow source ends in a 504 from us rather than in a killed invocation.
RENDER_RESERVE_SECONDS = 5.0

# JSON lines on stdout; every line carries the request id (service_log).
logger = setup_logging()


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
    context = _optional(event, "requestContext", Mapping) or {}
    headers = _lower_headers(
        _optional(event, "multiValueHeaders", Mapping), _optional(event, "headers", Mapping)
    )
    multi = _optional(event, "multiValueQueryStringParameters", Mapping)
    if multi is not None:
        query = tuple(
            (name, value)
            for name, values in multi.items()
            for value in _strings(values, f"multiValueQueryStringParameters.{name!s:.40}")
        )
    else:
        single = _optional(event, "queryStringParameters", Mapping) or {}
        query = tuple(
            (name, _string(value, f"queryStringParameters.{name!s:.40}"))
            for name, value in single.items()
        )
    return Incoming(
        kind="rest",
        method=(_optional(event, "httpMethod", str) or "GET").upper(),
        path=route_path(_optional(event, "path", str) or "/", context.get("stage")),
        headers=headers,
        query=query,
        body=_body_bytes(event.get("body"), _base64_flag(event)),
    )


def _from_http_v2(event: Mapping[str, Any]) -> Incoming:
    """HTTP API (payload format 2.0) and Lambda Function URLs, which share the shape."""
    context = event["requestContext"]
    domain = str(context.get("domainName") or "")
    raw_query = _optional(event, "rawQueryString", str)
    if raw_query is not None:
        query = tuple(parse_qsl(raw_query, keep_blank_values=True))
    else:
        single = _optional(event, "queryStringParameters", Mapping) or {}
        query = tuple(
            (name, _string(value, f"queryStringParameters.{name!s:.40}"))
            for name, value in single.items()
        )
    method = _optional(context["http"], "method", str, "requestContext.http.method")
    return Incoming(
        kind="url" if ".lambda-url." in domain else "http",
        method=(method or "GET").upper(),
        path=route_path(_optional(event, "rawPath", str) or "/", context.get("stage")),
        headers=_lower_headers(None, _optional(event, "headers", Mapping)),
        query=query,
        body=_body_bytes(event.get("body"), _base64_flag(event)),
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
            raise InvalidRequest(f"action must be 'health' or 'convert', got {shown_value(action)}")
        route = f"/{action}"
    elif path is not None:
        route = route_path(_string(path, "path"), None)
    else:
        route = "/convert"
    body = fields.pop("body", None)
    is_base64 = _base64_flag(fields)
    fields.pop("isBase64Encoded", None)
    if body is not None and not fields.get("url"):
        if isinstance(body, Mapping):
            fields = {**fields, **body}
        else:
            fields = {**fields, **json_fields(_body_bytes(body, is_base64))}
    return Incoming(
        kind="direct",
        method="GET" if route == "/health" else "POST",
        path=route,
        headers={},
        query=(),
        body=None,
        fields=fields,
    )


# What each JSON type is called in a message about an event field of the wrong type.
_TYPE_NAMES = {str: "a string", Mapping: "an object", list: "an array", bool: "true or false"}


def _optional(event: Mapping[str, Any], name: str, kind: type, shown: str = "") -> Any:
    """``event[name]`` when absent, null or of type ``kind``; else a 400 naming the field.

    API Gateway never sends another type, but a direct invoke can send anything.
    """
    value = event.get(name)
    if value is None or isinstance(value, kind):
        return value
    raise InvalidRequest(
        f"event field {shown or name} must be {_TYPE_NAMES[kind]} or null, got {_json_type(value)}"
    )


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"event field {name} must be a string, got {_json_type(value)}")
    return value


def _strings(values: Any, name: str) -> list[str]:
    if values is None:
        return []
    if not isinstance(values, list):
        raise InvalidRequest(
            f"event field {name} must be an array of strings, got {_json_type(values)}"
        )
    return [_string(value, name) for value in values]


def _base64_flag(event: Mapping[str, Any]) -> bool:
    return bool(_optional(event, "isBase64Encoded", bool))


def _json_type(value: Any) -> str:
    """The JSON name of a value's type (never the value: it may be anything)."""
    for kind, name in ((bool, "a boolean"), (str, "a string"), (Mapping, "an object")):
        if isinstance(value, kind):
            return name
    if isinstance(value, (int, float)):
        return "a number"
    return "an array" if isinstance(value, (list, tuple)) else "null"


def _lower_headers(
    multi: Mapping[str, Any] | None, single: Mapping[str, Any] | None
) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, values in (multi or {}).items():
        headers[str(name).lower()] = ", ".join(_strings(values, f"multiValueHeaders.{name!s:.40}"))
    for name, value in (single or {}).items():
        headers.setdefault(str(name).lower(), _string(value, f"headers.{name!s:.40}"))
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
    if stage and stage != "$default" and segments[:1] == [str(stage)]:
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


def prefers_image(accept: str | None) -> bool:
    """True when an Accept header ranks an image type strictly above JSON."""
    best_image = best_json = 0.0
    for media, weight in delivery.accept_ranks(accept):
        if media in IMAGE_MEDIA_TYPES:
            best_image = max(best_image, weight)
        if media in JSON_MEDIA_TYPES:
            best_json = max(best_json, weight)
    return best_image > best_json


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def error_response(exc: BaseException, request_id: str) -> Response:
    """The response for any error: the document of ``errors.describe``'s one table."""
    document = error_document(exc, request_id)
    headers = {}
    if isinstance(exc, MethodNotAllowed) and exc.allow:
        headers["Allow"] = ", ".join(exc.allow)
    return Response(document["error"]["status"], document, headers=headers)


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
        "Access-Control-Expose-Headers": "X-Request-Id, Location, ETag, X-Source-Validator",
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
                or "Content-Type, Accept, Authorization, X-Api-Key, If-None-Match",
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
    if response.text is not None:
        return {
            "statusCode": response.status,
            "headers": headers,
            "body": response.text,
            "isBase64Encoded": False,
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
        "body": strict_json(response.document),
        "isBase64Encoded": False,
    }


def strict_json(value: Any) -> str:
    """JSON as RFC 8259 defines it: a NaN or infinity is an error, never ``NaN``.

    Python's default writes ``NaN``, which strict parsers (browsers' JSON.parse,
    Go, Java) refuse, so one bad number would break the whole answer for them.
    """
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def result_size(result: dict[str, Any]) -> int:
    """Bytes of the serialised Lambda result, which is what the payload limit counts."""
    return len(strict_json(result).encode("utf-8"))


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------


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
        "transfer_syntaxes": list(dicom_codecs.decodable_syntaxes()),
        "codecs": dicom_codecs.codec_versions(),
        "temp": {
            "root": settings.temp_root,
            "free_bytes": temp_cleaner.free_bytes(settings.temp_root),
        },
        "downloads": {
            "max_download_bytes": settings.max_download_bytes,
            "max_download_bytes_counts": "bytes transferred per render (all ranged requests "
            "together, or the whole download), not the size of the file",
            "ranged_sources": list(RANGED_SOURCES),
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
    accept = incoming.header("accept")
    request = ConvertRequest.from_fields(
        fields,
        settings,
        prefers_image(accept),
        delivery.negotiated_format(accept, settings.default_output_format),
    )
    rooms = pipeline.rooms(settings)
    log.fields["url"] = redact_url(request.url)
    log.fields["source_type"] = source_type(request.url, request.storage_type, rooms.endpoints)
    source = Source(request.url, request.storage_type, _download_deadline(context))
    kind = incoming.kind
    asked = delivery.Asked(
        kind=kind,
        request_id=request_id,
        if_none_match=incoming.header("if-none-match"),
        measure=lambda response: result_size(to_result(response, kind, request_id)),
    )
    policy = delivery.DeliveryPolicy(settings.cache_control, settings.max_response_bytes)
    response = delivery.convert(request, source, rooms, policy, asked, log)
    # The answer depends on Accept (its format, JSON or the image), so caches must key on it.
    response.headers["Vary"] = "Accept"
    return response


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


def _download_deadline(context: Any) -> float | None:
    """A download deadline that ends before the invocation would be killed (None: no limit)."""
    remaining = _remaining_seconds(context)
    if remaining is None:
        return None
    return max(remaining - RENDER_RESERVE_SECONDS, 1.0)


def convert_batch(
    fields: Mapping[str, Any],
    kind: str,
    request_id: str,
    settings: Settings,
    context: Any,
    log: RequestLog,
) -> Response:
    """``urls: [...]``: every URL fetched and rendered on its own (``bulk.batch_items``).

    The answer holds one result per URL, in order, each with its own success or
    error, and stays within MAX_RESPONSE_BYTES as this event shape carries it.
    """
    urls = urls_field(fields, settings.max_batch_urls)
    # The shared options are validated once, with a stand-in URL; each URL on its own.
    shared = {name: value for name, value in fields.items() if name != "urls"}
    template = ConvertRequest.from_fields({**shared, "url": "-"}, settings)
    if template.response == "binary":
        raise InvalidRequest("a batch answers JSON: response must be 'json' or 'url'")
    deadline = bulk.Deadline.after(_remaining_seconds(context))
    rooms = pipeline.rooms(settings)
    items = bulk.batch_items(urls, template, rooms, settings.batch_workers, deadline, request_id)

    def measure(document: dict[str, Any]) -> int:
        return result_size(to_result(Response(200, document), kind, request_id))

    fitted = bulk.fit_batch(items, settings.max_response_bytes, measure, request_id)
    document = batch_document(fitted, request_id)
    log.fields["batch"] = {k: document["data"][k] for k in ("converted", "failed", "not_reached")}
    return Response(200, document)


# ---------------------------------------------------------------------------
# S3 notifications: direct, wrapped in SQS, or through EventBridge (notifications.py)
# ---------------------------------------------------------------------------


def handle_notification(
    kind: str,
    event: Mapping[str, Any],
    context: Any,
    settings: Settings | None,
    log: RequestLog,
    started: float,
) -> dict[str, Any]:
    """Convert what an S3 notification names; answer in the shape its source expects."""
    log.fields["event_type"] = kind
    try:
        settings = ready_settings(settings, caller_facing=False)
        deadline = bulk.Deadline.after(_remaining_seconds(context))
        result, outcomes = notifications.handle(kind, event, settings, deadline, log.request_id)
    except ServiceError as exc:
        log.fields["error"] = exc.message
        if exc.status >= 500:
            log.emit(exc.status, started)
            raise
        # A malformed event fails the same way on every retry: answer, do not raise.
        document = error_document(exc, log.request_id)
        log.fields["code"] = exc.code
        log.emit(exc.status, started)
        return document
    except Exception as exc:
        log.fields["error"] = type(exc).__name__
        log.emit(500, started)
        raise
    counts = notifications.count_outcomes(outcomes)
    log.fields["objects"] = counts
    failed = len(result["batchItemFailures"]) if kind == "sqs" else counts["failed"]
    log.emit(500 if failed else 200, started)
    if failed and kind != "sqs":
        raise NotificationFailed(result["message"])
    return result


# ---------------------------------------------------------------------------
# The handler
# ---------------------------------------------------------------------------


def playground_page() -> Response:
    """GET /: the page to try the API with (playground.py)."""
    import playground
    from dicom_converter import PRESETS

    text, headers = playground.page(tuple(PRESETS))
    return Response(200, media_type="text/html; charset=utf-8", headers=headers, text=text)


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
    if incoming.path == "/":
        return playground_page()
    return convert(incoming, request_id, settings, context, log)


def request_id_of(event: Any, context: Any) -> str:
    value = getattr(context, "aws_request_id", None)
    if not value and isinstance(event, Mapping):
        context_value = event.get("requestContext")
        if isinstance(context_value, Mapping):
            value = context_value.get("requestId")
    return str(value) if value else str(uuid.uuid4())


def ready_settings(settings: Settings | None, caller_facing: bool = True) -> Settings:
    """The settings to use (the environment's unless given), checked for triggers too.

    ``caller_facing``: the answer goes to whoever called the URL, not to the operator
    (whose S3 events see the detailed message in the Lambda error).
    """
    settings = settings or get_settings()
    try:
        bulk.check_settings(settings)
    except ServiceError as exc:
        if not caller_facing:
            raise
        # Those messages quote bucket names, prefixes and views to the operator; a
        # caller gets the names of the settings only, the log line the details.
        logger.error("invalid trigger settings", extra={"fields": {"error": exc.message}})
        raise ConfigurationError(
            "settings WATCH_BUCKET, WATCH_PREFIX, WATCH_SUFFIXES, OUTPUT_BUCKET, "
            "OUTPUT_PREFIX, TRIGGER_WINDOW or TRIGGER_PRESET are invalid together; the "
            "function's log says which"
        ) from None
    set_log_level(settings.log_level)
    return settings


def handle(event: Any, context: Any = None, settings: Settings | None = None) -> dict[str, Any]:
    """Handle one event; `settings` overrides the environment's (tests, local server)."""
    global _cold
    started = time.perf_counter()
    request_id = request_id_of(event, context)
    log = RequestLog(request_id, {"cold_start": _cold})
    _cold = False
    token = current_request_id.set(request_id)
    try:
        kind = notifications.notification_kind(event)
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
        settings = ready_settings(settings)
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
        cors = cors_headers(origin, _settings_or_none(settings))
        vary = response.headers.get("Vary")
        if "Vary" in cors and vary and cors["Vary"] not in vary:
            cors["Vary"] = f"{vary}, {cors['Vary']}"
        response.headers.update(cors)
    result = _serialisable(response, kind, request_id)
    log.emit(result.get("statusCode", response.status), started)
    return result


def _serialisable(response: Response, kind: str, request_id: str) -> dict[str, Any]:
    """The Lambda result, checked to be strict JSON (a 500 if a NaN slipped in)."""
    try:
        result = to_result(response, kind, request_id)
        if kind == "direct":
            # The runtime serialises a direct answer itself, and would write NaN.
            strict_json(result)
        return result
    except ValueError:
        logger.error("the answer holds a value JSON cannot carry (NaN or infinity)")
        return to_result(error_response(RuntimeError(), request_id), kind, request_id)


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
        ready_settings(None, caller_facing=False)
    except ServiceError as exc:
        logger.error("invalid configuration", extra={"fields": {"error": exc.message}})


_check_settings_at_start()
