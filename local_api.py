"""Serve the Lambda handler over real HTTP on localhost, without containers.

    python local_api.py [--port 3000] [--event-format rest|http|url]

Each HTTP request is turned into the event that API Gateway (REST, payload 1.0),
an HTTP API (payload 2.0) or a Lambda Function URL would send, passed to
``lambda_function.lambda_handler``, and its result is written back as the HTTP
response, the way those services do it. Settings come from the environment as
in Lambda (``ALLOWED_HOSTS``, ``OUTPUT_BUCKET``, ...).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

EVENT_FORMATS = ("rest", "http", "url")
REST_STAGE = "prod"
REST_RESOURCES = ("/convert", "/health")
ACCOUNT_ID = "123456789012"
URL_ID = "localfunctionurlid0000000000000"
# API Gateway's own limit on an integration, used when lambda_config.json names none.
DEFAULT_TIMEOUT_SECONDS = 29.0
# API Gateway refuses request payloads above 10 MB.
MAX_REQUEST_BYTES = 10 * 1024 * 1024

Handler = Callable[[dict[str, Any], Any], Any]


class LocalContext:
    """The parts of the Lambda context object the handler reads."""

    def __init__(self, timeout_seconds: float) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self.function_name = "dicom-to-jpg-converter"
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:{ACCOUNT_ID}:function:{self.function_name}"
        )
        self._deadline = time.monotonic() + timeout_seconds

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def function_timeout() -> float:
    """The function timeout from lambda_config.json, as Lambda would enforce it."""
    from errors import ConfigurationError
    from settings import config_section

    try:
        return float(config_section("function")["timeout_seconds"])
    except (ConfigurationError, KeyError, TypeError, ValueError):
        return DEFAULT_TIMEOUT_SECONDS


# ---------------------------------------------------------------------------
# HTTP request → event
# ---------------------------------------------------------------------------


def is_text(content_type: str | None) -> bool:
    """Whether the services pass a body with this type as text rather than base64."""
    media = (content_type or "").split(";")[0].strip().lower()
    return (
        media.startswith("text/")
        or media in ("application/json", "application/xml", "application/javascript", "")
        or media.endswith("+json")
        or media.endswith("+xml")
        or media == "application/x-www-form-urlencoded"
    )


def encode_body(body: bytes, content_type: str | None) -> tuple[str | None, bool]:
    if not body:
        return None, False
    if is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _request_time(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")


def rest_event(
    method: str, target: str, headers: list[tuple[str, str]], body: bytes, source_ip: str
) -> dict[str, Any]:
    """API Gateway REST API, Lambda proxy integration (payload format 1.0)."""
    split = urlsplit(target)
    path = split.path or "/"
    resource = path.rstrip("/") if path.rstrip("/") in REST_RESOURCES else "/{proxy+}"
    multi_headers = _multi(headers)
    multi_query = _multi(parse_qsl(split.query, keep_blank_values=True))
    text, is_b64 = encode_body(body, _header(headers, "content-type"))
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": {k: v[-1] for k, v in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")} if resource == "/{proxy+}" else None,
        "stageVariables": None,
        "requestContext": _rest_context(method, path, resource, headers, source_ip),
        "body": text,
        "isBase64Encoded": is_b64,
    }


def _multi(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Every value of each name, in order (REST's ``multiValue*`` fields)."""
    found: dict[str, list[str]] = {}
    for name, value in pairs:
        found.setdefault(name, []).append(value)
    return found


def _rest_context(
    method: str, path: str, resource: str, headers: list[tuple[str, str]], source_ip: str
) -> dict[str, Any]:
    now = time.time()
    host = _header(headers, "host") or "localhost"
    identity = {
        "accessKey": None,
        "accountId": None,
        "caller": None,
        "cognitoAuthenticationProvider": None,
        "cognitoAuthenticationType": None,
        "cognitoIdentityId": None,
        "cognitoIdentityPoolId": None,
        "principalOrgId": None,
        "sourceIp": source_ip,
        "user": None,
        "userAgent": _header(headers, "user-agent"),
        "userArn": None,
    }
    return {
        "accountId": ACCOUNT_ID,
        "apiId": "localapi00",
        "domainName": host,
        "domainPrefix": host.split(".")[0],
        "extendedRequestId": uuid.uuid4().hex[:16] + "=",
        "httpMethod": method,
        "identity": identity,
        "path": f"/{REST_STAGE}{path}",
        "protocol": "HTTP/1.1",
        "requestId": str(uuid.uuid4()),
        "requestTime": _request_time(now),
        "requestTimeEpoch": int(now * 1000),
        "resourceId": "local0",
        "resourcePath": resource,
        "stage": REST_STAGE,
    }


def http_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str,
    function_url: bool = False,
) -> dict[str, Any]:
    """HTTP API (payload format 2.0), or a Lambda Function URL, which uses the same shape."""
    split = urlsplit(target)
    path = split.path or "/"
    joined, cookies = _joined_headers(headers)
    query: dict[str, str] = {}
    for name, value in parse_qsl(split.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    text, is_b64 = encode_body(body, joined.get("content-type"))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": split.query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = joined
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = _http_context(method, path, joined, source_ip, function_url)
    if text is not None:
        event["body"] = text
    event["isBase64Encoded"] = is_b64
    return event


def _joined_headers(headers: list[tuple[str, str]]) -> tuple[dict[str, str], list[str]]:
    """Payload 2.0 headers: lower-case names, repeated values joined by commas; cookies apart."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        lower = name.lower()
        if lower == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        joined[lower] = f"{joined[lower]},{value}" if lower in joined else value
    return joined, cookies


def _http_context(
    method: str, path: str, headers: dict[str, str], source_ip: str, function_url: bool
) -> dict[str, Any]:
    now = time.time()
    if function_url:
        domain = f"{URL_ID}.lambda-url.us-east-1.on.aws"
        api_id, prefix = URL_ID, URL_ID
    else:
        domain = headers.get("host", "localhost")
        api_id, prefix = "localapi00", domain.split(".")[0]
    return {
        "accountId": "anonymous" if function_url else ACCOUNT_ID,
        "apiId": api_id,
        "domainName": domain,
        "domainPrefix": prefix,
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": str(uuid.uuid4()),
        "routeKey": "$default",
        "stage": "$default",
        "time": _request_time(now),
        "timeEpoch": int(now * 1000),
    }


def build_event(
    event_format: str,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    if event_format == "rest":
        return rest_event(method, target, headers, body, source_ip)
    if event_format in ("http", "url"):
        return http_event(method, target, headers, body, source_ip, event_format == "url")
    raise ValueError(f"event format must be one of {', '.join(EVENT_FORMATS)}")


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in reversed(headers):
        if key.lower() == name:
            return value
    return None


# ---------------------------------------------------------------------------
# Lambda result → HTTP response
# ---------------------------------------------------------------------------


def parse_result(result: Any, event_format: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body, as API Gateway or a Function URL derives them."""
    if event_format != "rest" and not (isinstance(result, dict) and "statusCode" in result):
        # Payload 2.0 and Function URLs accept a bare JSON value as a 200 answer.
        return 200, [("Content-Type", "application/json")], json.dumps(result).encode()
    if not isinstance(result, dict) or "statusCode" not in result:
        return 502, [("Content-Type", "application/json")], b'{"message": "Internal server error"}'
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers.extend((str(name), str(v)) for v in values)
    headers.extend(("Set-Cookie", str(c)) for c in result.get("cookies") or [])
    body = result.get("body") or ""
    data = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode("utf-8")
    return int(result["statusCode"]), headers, data


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------


class LocalApiServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog of 5 resets connections when a page of
    # thumbnails or a small load test opens dozens at once.
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], event_format: str, handler: Handler, timeout: float
    ) -> None:
        if event_format not in EVENT_FORMATS:
            raise ValueError(f"event format must be one of {', '.join(EVENT_FORMATS)}")
        super().__init__(address, _RequestHandler)
        self.event_format = event_format
        self.lambda_handler = handler
        self.function_timeout = timeout

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalApiServer
    protocol_version = "HTTP/1.1"

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_REQUEST_BYTES:
            too_long = b'{"message":"Request Too Long"}'
            self._send(413, [("Content-Type", "application/json")], too_long)
            self.close_connection = True
            return
        body = self.rfile.read(length) if length > 0 else b""
        event = build_event(
            self.server.event_format,
            self.command,
            self.path,
            list(self.headers.items()),
            body,
            self.client_address[0],
        )
        context = LocalContext(self.server.function_timeout)
        try:
            result = self.server.lambda_handler(event, context)
        except Exception as exc:  # what API Gateway answers when the function raises
            self.log_error("handler raised %s", type(exc).__name__)
            result = None
        status, headers, data = parse_result(result, self.server.event_format)
        self._send(status, headers, data)

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def __getattr__(self, name: str) -> Any:
        # Every method (TRACE and made-up ones too) goes to the function, as API
        # Gateway's ANY method and Function URLs pass them; the function answers 405.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        # Query strings may carry signed URLs; log the path only.
        line = format % args
        sys.stderr.write(f"{self.address_string()} {line.split('?')[0]}\n")


def make_server(
    host: str = "127.0.0.1",
    port: int = 3000,
    event_format: str = "rest",
    handler: Handler | None = None,
    timeout: float | None = None,
) -> LocalApiServer:
    """A local API server; `handler` defaults to ``lambda_function.lambda_handler``."""
    if handler is None:
        from lambda_function import lambda_handler

        handler = lambda_handler
    return LocalApiServer(
        (host, port), event_format, handler, timeout if timeout else function_timeout()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="local_api", description="Serve the Lambda handler over HTTP on localhost."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3000, help="port (0 picks a free one)")
    parser.add_argument("--event-format", choices=EVENT_FORMATS, default="rest")
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port, args.event_format)
    print(f"Serving on {server.url} (event format: {args.event_format})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
