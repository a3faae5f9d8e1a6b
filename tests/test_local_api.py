"""The local API server: real HTTP on loopback → AWS-shaped events → the handler.

The last test runs schemathesis against the server with openapi.yaml: no 5xx and
no answer that breaks the schema. Generated URLs are kept on loopback.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import lambda_function
import local_api
from settings import Settings, load_settings
from tests import servers
from tests.corpus import bundled_file
from tests.handler_support import load_event

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    server = servers.HttpServer(tmp_path_factory.mktemp("api-files"))
    server.put("CT_small.dcm", bundled_file("CT_small.dcm"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sample_url(files_server: servers.HttpServer) -> str:
    return files_server.url("CT_small.dcm")


@pytest.fixture(scope="module")
def api_settings(tmp_path_factory: pytest.TempPathFactory, moto_s3: servers.MotoServer) -> Settings:
    moto_s3.create_bucket("api-output")
    return load_settings(
        {
            "temp_root": str(tmp_path_factory.mktemp("api-temp")),
            "allowed_hosts": "127.0.0.1:*",
            "download_retries": 0,
            "connect_timeout_seconds": 1,
            "read_timeout_seconds": 3,
            "download_deadline_seconds": 5,
            # S3 and R2 URLs go to loopback (moto, or a closed port), never to AWS.
            "s3_endpoint_url": moto_s3.endpoint_url,
            "r2_endpoint_url": "http://127.0.0.1:9",
            "output_bucket": "api-output",
        },
        environ={},
    )


def start(event_format: str, api_settings: Settings) -> local_api.LocalApiServer:
    handler = functools.partial(lambda_function.handle, settings=api_settings)
    server = local_api.make_server("127.0.0.1", 0, event_format, handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module", params=local_api.EVENT_FORMATS)
def api(request: pytest.FixtureRequest, api_settings: Settings) -> Iterator[str]:
    server = start(request.param, api_settings)
    yield server.url
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------
# Events built from HTTP requests have the shapes AWS sends
# ---------------------------------------------------------------------------


def _keys(event: dict[str, Any]) -> tuple[set[str], set[str]]:
    return set(event), set(event["requestContext"])


@pytest.mark.parametrize(
    ("event_format", "fixture"),
    [("rest", "rest_convert_post"), ("http", "http_convert_post"), ("url", "url_convert_post")],
)
def test_built_events_have_the_keys_of_the_aws_fixtures(event_format: str, fixture: str) -> None:
    body = json.dumps({"url": "https://example.com/sample.dcm"}).encode()
    headers = [("Host", "localhost:3000"), ("Content-Type", "application/json")]
    event = local_api.build_event(event_format, "POST", "/convert?x=1", headers, body)
    top, context = _keys(event)
    want_top, want_context = _keys(load_event(fixture))
    assert top == want_top | {"queryStringParameters"} or top == want_top
    assert context == want_context
    parsed = lambda_function.parse_event(event)
    assert (parsed.method, parsed.path) == ("POST", "/convert")
    assert json.loads(parsed.body or b"") == {"url": "https://example.com/sample.dcm"}


def test_binary_request_bodies_are_base64_in_events() -> None:
    event = local_api.build_event(
        "http", "POST", "/convert", [("Content-Type", "application/octet-stream")], b"\x00\xff"
    )
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xff"


def test_v2_events_join_repeated_headers_and_split_cookies() -> None:
    headers = [("X-Tag", "a"), ("x-tag", "b"), ("Cookie", "a=1; b=2")]
    event = local_api.build_event("url", "GET", "/health?q=1&q=2", headers, b"")
    assert event["headers"]["x-tag"] == "a,b"
    assert event["cookies"] == ["a=1", "b=2"]
    assert event["queryStringParameters"] == {"q": "1,2"}
    assert event["rawQueryString"] == "q=1&q=2"
    assert ".lambda-url." in event["requestContext"]["domainName"]


# ---------------------------------------------------------------------------
# Real HTTP through each event format
# ---------------------------------------------------------------------------


def test_health_over_http(api: str) -> None:
    answer = requests.get(f"{api}/health", timeout=10)
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"
    assert answer.headers["X-Request-Id"] == answer.json()["request_id"]


def test_convert_post_over_http(api: str, sample_url: str) -> None:
    answer = requests.post(f"{api}/convert", json={"url": sample_url, "quality": 70}, timeout=20)
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["success"] is True and document["data"]["quality"] == 70
    image = Image.open(io.BytesIO(base64.b64decode(document["data"]["image_base64"])))
    assert image.format == "JPEG" and image.size == (128, 128)


def test_convert_get_with_image_accept_answers_the_image(api: str, sample_url: str) -> None:
    answer = requests.get(
        f"{api}/convert",
        params={"url": sample_url, "output_format": "png", "width": 32},
        headers={"Accept": "image/png,image/*;q=0.9,*/*;q=0.5"},
        timeout=20,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == "PNG" and image.size == (32, 32)


def test_errors_over_http(api: str, files_server: servers.HttpServer) -> None:
    assert requests.get(f"{api}/nowhere", timeout=10).status_code == 404
    answer = requests.delete(f"{api}/convert", timeout=10)
    assert answer.status_code == 405 and answer.headers["Allow"] == "GET, POST, OPTIONS"
    answer = requests.post(f"{api}/convert", data=b"{oops", timeout=10)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request"
    missing = files_server.url("missing.dcm")
    answer = requests.post(f"{api}/convert", json={"url": missing}, timeout=10)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found"


def test_preflight_and_stage_prefix_over_http(api: str) -> None:
    answer = requests.options(
        f"{api}/convert",
        headers={"Origin": "https://viewer.example.org", "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert answer.status_code == 204
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert requests.get(f"{api}/prod/health/", timeout=10).status_code == 200


def test_command_line_server(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "TEMP_ROOT": str(tmp_path / "work"),
        "PYTHONPATH": str(PROJECT),
    }
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "local_api.py"), "--port", "0", "--event-format", "url"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"Serving on (http://127\.0\.0\.1:\d+) \(event format: url\)", line)
        assert match, line
        answer = requests.get(f"{match.group(1)}/health", timeout=10)
        assert answer.status_code == 200 and answer.json()["status"] == "ok"
    finally:
        process.terminate()
        process.wait(timeout=10)


# ---------------------------------------------------------------------------
# Schemathesis against openapi.yaml
# ---------------------------------------------------------------------------

schema = schemathesis.openapi.from_path(PROJECT / "openapi.yaml")

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def rest_api(api_settings: Settings) -> Iterator[str]:
    server = start("rest", api_settings)
    yield server.url
    server.shutdown()
    server.server_close()


def keep_on_loopback(case: Any, sample_url: str) -> None:
    """Generated URLs that could name a host are replaced by the loopback sample."""
    for fields in (case.body, case.query):
        value = fields.get("url") if isinstance(fields, dict) else None
        if isinstance(value, str) and (":" in value or "\\" in value):
            fields["url"] = sample_url


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_matches_openapi(case: Any, rest_api: str, sample_url: str) -> None:
    keep_on_loopback(case, sample_url)
    case.call_and_validate(base_url=rest_api, checks=CHECKS, timeout=20)
