"""Malformed events straight into ``lambda_handler``: every one is a 4xx in strict JSON.

API Gateway and Function URLs only send well-formed events, but ``aws lambda
invoke`` and a misconfigured trigger can send anything. Hypothesis starts from each
fixture in ``tests/events/`` (the four API shapes and the three notification
shapes) and replaces one field, at any depth, with a value of another JSON type
(null, booleans, numbers including NaN and infinities, strings, arrays, objects), or
removes it, or puts a value of another type into a request field. The handler must
answer, never raise or crash, with a status below 500, and its answer must be
strict JSON (no ``NaN``).

The deployment these events meet reads nothing: ``ALLOWED_HOSTS`` admits only a
name nothing resolves and ``ALLOWED_BUCKETS`` only a bucket no event names, and the
loopback guard stops anything that would still try to leave this machine.
``ADVERSARIAL_LONG=1`` raises the number of generated events.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import lambda_function
from convert_api import REQUEST_FIELDS
from settings import get_settings
from tests.corpus import env_flag
from tests.handler_support import LambdaContext, event_names, load_event, with_url
from tests.loopback_guard import GUARD

EXAMPLES = 3000 if env_flag("ADVERSARIAL_LONG") else 200
# Refused by the URL policy before any connection: a private address.
BLOCKED_URL = "http://10.0.0.1/a.dcm"
EVENTS = {name: load_event(name) for name in event_names()}


def _with_blocked_url(name: str) -> dict[str, Any]:
    event = EVENTS[name]
    if "health" in name or "preflight" in name or "Records" in event or "detail" in event:
        return copy.deepcopy(event)
    return with_url(event, BLOCKED_URL)


BASES = {name: _with_blocked_url(name) for name in EVENTS}


@pytest.fixture(autouse=True)
def _deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TEMP_ROOT", str(tmp_path / "work"))
    monkeypatch.setenv("ALLOWED_HOSTS", "nothing-resolves.invalid:1")
    monkeypatch.setenv("ALLOWED_BUCKETS", "no-event-names-this-bucket")
    for name in ("WATCH_BUCKET", "OUTPUT_BUCKET", "R2_ENDPOINT_URL", "S3_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    with GUARD.watching():
        yield
    get_settings.cache_clear()
    assert GUARD.violations == [], "traffic tried to leave loopback"


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["", "GET", "/convert", "/health", "true", "nan", "1e999", BLOCKED_URL])
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
DELETE = object()


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a field or item inside ``value``."""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        yield (*prefix, key)
        yield from paths(item, (*prefix, key))


def replaced(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    event = copy.deepcopy(event)
    parent: Any = event
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return event


@st.composite
def malformed_events(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(st.sampled_from(sorted(BASES)))
    event = BASES[name]
    value = draw(st.just(DELETE) | JSON_VALUES)
    if draw(st.booleans()) and not ("Records" in event or "detail" in event):
        # A request field of another type, where the shape carries fields.
        field = draw(st.sampled_from([*REQUEST_FIELDS, "urls", "action", "path", "body"]))
        return _with_field(event, field, value)
    path = draw(st.sampled_from(list(paths(event))))
    return replaced(event, path, value)


def _with_field(event: dict[str, Any], field: str, value: Any) -> dict[str, Any]:
    if "httpMethod" in event or "requestContext" in event:
        document = {"url": BLOCKED_URL, field: None if value is DELETE else value}
        event = copy.deepcopy(event)
        event["body"] = json.dumps(document)  # NaN is written as NaN: Python's json reads it
        event["isBase64Encoded"] = False
        if "httpMethod" in event:
            event["httpMethod"] = "POST"
        else:
            event["requestContext"]["http"]["method"] = "POST"
        return event
    event = copy.deepcopy(event)
    if value is DELETE:
        event.pop(field, None)
    else:
        event[field] = value
    return event


def _strict(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def check_answer(result: Any) -> int:
    """The status of a handler result, after checking that it is strict JSON."""
    assert isinstance(result, dict)
    text = json.dumps(result, allow_nan=False)
    if "statusCode" in result:
        status = result["statusCode"]
        body = result.get("body") or ""
        if result["headers"].get("Content-Type") == "application/json":
            _strict(body)
        return int(status)
    _strict(text)
    error = result.get("error")
    return int(error["status"]) if isinstance(error, dict) else 200


@given(event=malformed_events())
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_malformed_events_are_a_4xx_in_strict_json(event: dict[str, Any]) -> None:
    result = lambda_function.lambda_handler(event, LambdaContext())
    status = check_answer(result)
    assert status < 500, result


# The cases the hardening started from, named, so a failure reads plainly.
NAMED = [
    ("rest_convert_get", ("queryStringParameters",), [BLOCKED_URL]),
    ("rest_convert_get", ("multiValueQueryStringParameters", "url"), [7]),
    ("rest_convert_get", ("multiValueQueryStringParameters", "url"), 7),
    ("rest_convert_get", ("multiValueHeaders",), {"Accept": "image/*"}),
    ("rest_convert_post", ("headers",), "Accept: image/*"),
    ("rest_convert_post", ("isBase64Encoded",), "false"),
    ("rest_convert_post", ("httpMethod",), ["POST"]),
    ("rest_convert_post", ("path",), {"p": "/convert"}),
    ("http_convert_get", ("rawQueryString",), 42),
    ("http_convert_get", ("queryStringParameters",), {"url": None}),
    ("http_convert_post", ("requestContext", "http", "method"), 5),
    ("http_convert_post", ("rawPath",), ["/convert"]),
    ("url_convert_post", ("body",), {"url": BLOCKED_URL}),
    ("direct_convert", ("path",), ["/health"]),
    ("direct_convert", ("window_center",), math.nan),
    ("direct_convert", ("window_width",), 10**400),
    ("direct_convert", ("isBase64Encoded",), "yes"),
    ("s3_object_created", ("Records", 0, "s3"), "bucket"),
    ("s3_object_created", ("Records", 0, "s3", "object", "key"), 12),
    ("sqs_s3_notification", ("Records", 0, "body"), {"Records": []}),
    ("eventbridge_object_created", ("detail",), []),
    ("eventbridge_object_created", ("detail", "bucket", "name"), None),
]


@pytest.mark.parametrize(("name", "path", "value"), NAMED)
def test_named_malformed_events(name: str, path: tuple[Any, ...], value: Any) -> None:
    event = replaced(BASES[name], path, value)
    result = lambda_function.lambda_handler(event, LambdaContext())
    status = check_answer(result)
    assert 400 <= status < 500 or (status == 200 and "Records" in event), result


def test_an_r2_url_without_r2_keys_is_a_4xx_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("R2_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("R2_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.setenv("ALLOWED_BUCKETS", "scans")
    get_settings.cache_clear()
    url = "https://0123456789abcdef.r2.cloudflarestorage.com/scans/a.dcm"
    result = lambda_function.lambda_handler({"url": url}, LambdaContext())
    assert result["error"] == {"code": "source_not_configured", "status": 400}
    assert "does not read R2" in result["message"]


def test_a_nan_in_an_answer_becomes_a_500_not_invalid_json() -> None:
    response = lambda_function.Response(200, {"value": math.nan})
    result = lambda_function._serialisable(response, "rest", "req-1")
    assert result["statusCode"] == 500
    _strict(result["body"])
    direct = lambda_function._serialisable(
        lambda_function.Response(200, {"value": math.inf}), "direct", "req-2"
    )
    assert direct["error"]["status"] == 500
    json.dumps(direct, allow_nan=False)
