"""JSON log lines and the one redactor of the service.

Every URL that reaches a log line or a caller-facing message goes through
``redact_text`` / ``redact_url``. The rule is by construction, not by a list of
known secret names:

* user info (``user:password@``, or a bare token ``TOKEN@``) becomes ``***@``;
* every query value becomes ``***``; the parameter names stay, so an operator can
  still read ``versionId=***&X-Amz-Signature=***``;
* the secrets botocore prints at DEBUG outside URLs (session-token headers,
  signature lines) become ``***``.

``JsonFormatter`` applies it to every string of a log line, nested fields
included, so a field added later cannot leak what the message would not.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

# A URL in free text: scheme://authority, then path, then query, then fragment.
_URL_RE = re.compile(
    r"(?i)\b(?P<scheme>[a-z][a-z0-9+.-]*://)"
    r"(?P<authority>[^/?#\s'\"<>]*)"
    r"(?P<path>[^?#\s'\"<>]*)"
    r"(?:\?(?P<query>[^#\s'\"<>]*))?"
    r"(?:\#(?P<fragment>[^\s'\"<>]*))?"
)
# The same values as botocore prints them at DEBUG: headers, canonical requests, signatures.
_SECRET_HEADER_RE = re.compile(r"(?i)(x-amz-security-token['\"]?\s*:\s*b?['\"]?)[^\s'\",}]+")
_SIGNATURE_LINE_RE = re.compile(r"(?i)(\bsignature:\s*)[0-9a-f]{16,}")
# The Authorization header botocore prints: "... SignedHeaders=..., Signature=<hex>".
_AUTH_SIGNATURE_RE = re.compile(r"(?i)(?<![\w-])(signature=)[0-9a-f]{16,}")
# A path with a query but no scheme or host: urllib3 logs its request line that way
# ('http://host:port "GET /key?X-Amz-Signature=... HTTP/1.1" 200').
_PATH_QUERY_RE = re.compile(r"(?<![\w:/])(?P<path>/[^?#\s'\"<>]*)\?(?P<query>[^#\s'\"<>]*)")
SHOWN_URL_CHARS = 300


def _redact_match(match: re.Match[str]) -> str:
    authority = match["authority"]
    if "@" in authority:
        # The password may itself hold "@": the host follows the last one.
        authority = "***@" + authority.rpartition("@")[2]
    text = match["scheme"] + authority + match["path"]
    query = match["query"]
    if query is not None:
        text += "?" + _redact_query(query)
    # OAuth's implicit flow puts tokens in the fragment (#access_token=...).
    fragment = match["fragment"]
    if fragment is not None:
        text += "#" + _redact_query(fragment)
    return text


def _redact_query(query: str) -> str:
    parts = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        parts.append(f"{name}=***" if equals else name)
    return "&".join(parts)


def redact_text(text: str) -> str:
    """``text`` with user info, query values and AWS session secrets replaced by ``***``."""
    text = _URL_RE.sub(_redact_match, text)
    text = _PATH_QUERY_RE.sub(lambda m: f"{m['path']}?{_redact_query(m['query'])}", text)
    text = _SECRET_HEADER_RE.sub(r"\1***", text)
    text = _AUTH_SIGNATURE_RE.sub(r"\1***", text)
    return _SIGNATURE_LINE_RE.sub(r"\1***", text)


def redact_url(url: str) -> str:
    """The URL as it may appear in messages and logs (works on text that is no URL, too)."""
    return redact_text(str(url))


def shown_url(url: str) -> str:
    """A redacted URL short enough for an error message."""
    text = redact_url(url)
    return text if len(text) <= SHOWN_URL_CHARS else text[: SHOWN_URL_CHARS - 3] + "..."


def redact_value(value: Any) -> Any:
    """``value`` with every string inside it redacted; numbers and codes pass unchanged."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts records of libraries that print request URLs and headers at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


# urllib3 logs each request line (with a presigned query); botocore logs headers,
# canonical requests and signatures. Filters on loggers do not inherit, so each is named.
REDACTED_LOGGERS = (
    "file_downloader",
    "s3_store",
    "urllib3.connectionpool",
    "botocore.auth",
    "botocore.endpoint",
    "botocore.hooks",
    "botocore.httpsession",
    "botocore.parsers",
    "botocore.retryhandler",
    "botocore.utils",
)
_REDACTING_FILTER = RedactingFilter()
for _name in REDACTED_LOGGERS:
    logging.getLogger(_name).addFilter(_REDACTING_FILTER)


# The request being handled, so that every line (the downloader's too) carries its id.
current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request_id", default=None
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; every string in it goes through the redactor."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        request_id = current_request_id.get()
        if request_id:
            doc["request_id"] = request_id
        doc.update(redact_value(getattr(record, "fields", {})))
        if record.exc_info:
            doc["exception"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(doc, default=lambda v: redact_text(str(v)), separators=(",", ":"))


# Loggers of the modules the handler drives; their levels follow LOG_LEVEL in Lambda.
LIBRARY_LOGGERS = ("file_downloader", "s3_store", "dicom_converter", "dicom_lambda.bulk")


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


def setup_logging(name: str = "dicom_lambda") -> logging.Logger:
    """JSON lines on stdout, which Lambda sends to CloudWatch as they are.

    The service's own logger always writes JSON. In Lambda, the runtime's root
    handler (which carries every other module's lines) is given the same format;
    elsewhere the root logger is left alone, so a host process keeps its logging.
    """
    own = logging.getLogger(name)
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


def set_log_level(level: str, name: str = "dicom_lambda") -> None:
    logging.getLogger(name).setLevel(level.upper())
    if in_lambda():
        for library in LIBRARY_LOGGERS:
            logging.getLogger(library).setLevel(level.upper())


@dataclass
class RequestLog:
    """The fields of the one log line written for each request."""

    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def stage(self, name: str, started: float) -> None:
        self.durations[name] = round((time.perf_counter() - started) * 1000, 2)

    def emit(self, status: int, started: float, logger_name: str = "dicom_lambda") -> None:
        self.durations["total"] = round((time.perf_counter() - started) * 1000, 2)
        level = logging.ERROR if status >= 500 else logging.INFO
        fields = {
            "request_id": self.request_id,
            **self.fields,
            "status": status,
            "durations_ms": self.durations,
            "sizes": self.sizes,
        }
        logging.getLogger(logger_name).log(level, "request", extra={"fields": fields})
