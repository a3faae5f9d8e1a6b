"""Helpers for calling the handler with AWS-shaped events and reading its answers.

The events in ``tests/events/`` are shaped exactly as AWS sends them and name the
placeholder URL below; ``with_url`` points one at a real loopback server without
changing its shape (a base64 body stays base64, a query string stays a query string).
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

EVENTS = Path(__file__).resolve().with_name("events")
PLACEHOLDER_URL = "https://example.com/sample.dcm"


def event_names(prefix: str = "") -> list[str]:
    return sorted(p.stem for p in EVENTS.glob(f"{prefix}*.json"))


def load_event(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / f"{name.removesuffix('.json')}.json").read_text())


def with_fields(event: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """A copy of `event` whose request fields (body, query or top level) are updated.

    A field set to None is removed.
    """
    event = copy.deepcopy(event)
    if "httpMethod" in event or "requestContext" in event:
        if event.get("body"):
            _update_body(event, fields)
        else:
            _update_query(event, fields)
    else:
        _merge(event, fields)
    return event


def with_url(event: dict[str, Any], url: str, **fields: Any) -> dict[str, Any]:
    return with_fields(event, url=url, **fields)


def _merge(target: dict[str, Any], fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value


def _update_body(event: dict[str, Any], fields: dict[str, Any]) -> None:
    raw = event["body"]
    encoded = bool(event.get("isBase64Encoded"))
    document = json.loads(base64.b64decode(raw) if encoded else raw)
    _merge(document, fields)
    text = json.dumps(document)
    event["body"] = base64.b64encode(text.encode()).decode() if encoded else text


def _update_query(event: dict[str, Any], fields: dict[str, Any]) -> None:
    strings = {k: _query_text(v) if v is not None else None for k, v in fields.items()}
    if "rawQueryString" in event:  # payload 2.0
        pairs = dict(parse_qsl(event["rawQueryString"], keep_blank_values=True))
        _merge(pairs, strings)
        event["rawQueryString"] = urlencode(pairs)
        event["queryStringParameters"] = pairs
        return
    single = dict(event.get("queryStringParameters") or {})
    _merge(single, strings)
    event["queryStringParameters"] = single or None
    event["multiValueQueryStringParameters"] = {k: [v] for k, v in single.items()} or None


def _query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class LambdaContext:
    """The attributes of Lambda's context object that the handler reads."""

    def __init__(self, remaining_seconds: float = 29.0) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = "dicom-to-jpg-converter"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = (
            "arn:aws:lambda:us-east-1:123456789012:function:dicom-to-jpg-converter"
        )
        self._deadline = time.monotonic() + remaining_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass
class Answer:
    """A handler result read the way the caller sees it."""

    status: int
    headers: dict[str, str]
    document: dict[str, Any] | None
    body: bytes
    raw: dict[str, Any]

    @property
    def media_type(self) -> str:
        return self.headers.get("Content-Type", "")


def read_result(result: dict[str, Any]) -> Answer:
    if "statusCode" not in result:  # direct invoke: the document itself
        error = result.get("error") or {}
        status = int(error.get("status", 200)) if result.get("success") is False else 200
        return Answer(status, {}, result, json.dumps(result).encode(), result)
    headers = dict(result.get("headers") or {})
    text = result.get("body") or ""
    body = base64.b64decode(text) if result.get("isBase64Encoded") else text.encode()
    document = None
    if headers.get("Content-Type") == "application/json":
        document = json.loads(body)
    return Answer(int(result["statusCode"]), headers, document, body, result)


def invoke(event: Any, settings: Any, context: Any = None) -> Answer:
    """Call ``lambda_function.handle`` in-process and read its answer."""
    from lambda_function import handle

    return read_result(handle(event, context or LambdaContext(), settings))
