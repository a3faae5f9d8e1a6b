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
import re
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
# All request headers together; API Gateway's REST limit is 10 KiB, browsers with
# cookies may send more to a local page, so a little more room.
MAX_HEADER_BYTES = 16 * 1024
# A chunk-size line ("1f4;ext=1\r\n") and each trailer line.
MAX_CHUNK_LINE_BYTES = 1024
MAX_TRAILERS = 32
# Silence allowed while reading a request (line, headers or body): a client that
# stops sending gets a 408, not a thread held forever.
REQUEST_READ_TIMEOUT_SECONDS = 30.0
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
# RFC 9110 5.6.2: a method is a token.
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# http.server's refusals, in words that quote nothing of the request.
_OWN_REFUSALS = {
    400: "the request line or a header is malformed",
    408: "the request did not arrive in time",
    414: "the request line is longer than 65536 bytes",
    431: "a header line is longer than 65536 bytes, or there are more than 100 headers",
    501: "the request method is not supported",
    505: "the HTTP version is not supported; send HTTP/1.1",
}

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
        data = json.dumps(result, allow_nan=False).encode()
        return 200, [("Content-Type", "application/json")], data
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

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that resets or vanishes is the client's affair: one line, no traceback.
        error = sys.exc_info()[1]
        sys.stderr.write(f"{client_address[0]} connection ended: {type(error).__name__}\n")


class _Refusal(Exception):
    """A request the server answers with a 4xx before the function sees it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _content_length(values: list[str]) -> int:
    """The one Content-Length of a request (RFC 9110 8.6); repeated equal values are one."""
    texts = {v.strip() for value in values for v in value.split(",")}
    if len(texts) != 1:
        raise _Refusal(400, "Content-Length is given more than once with different values")
    text = texts.pop()
    if not text.isascii() or not text.isdigit() or len(text) > 19:
        raise _Refusal(400, "Content-Length must be a decimal number of bytes")
    return int(text)


def _read_exactly(rfile: Any, size: int) -> bytes:
    data = rfile.read(size)
    if len(data) < size:
        raise _Refusal(400, f"the body ended after {len(data)} of {size} bytes")
    return data


def read_chunked(rfile: Any, limit: int) -> bytes:
    """A ``Transfer-Encoding: chunked`` body (RFC 9112 7.1), at most ``limit`` bytes."""
    body = bytearray()
    while True:
        line = rfile.readline(MAX_CHUNK_LINE_BYTES + 1)
        if len(line) > MAX_CHUNK_LINE_BYTES or not line.endswith(b"\n"):
            raise _Refusal(400, "a chunk-size line is missing, unfinished or too long")
        size_text = line.split(b";", 1)[0].strip()
        if not size_text or not set(size_text) <= _HEX_DIGITS:
            raise _Refusal(400, "a chunk size must be a hexadecimal number")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > limit:
            raise _Refusal(413, f"the request body is larger than {limit} bytes")
        body += _read_exactly(rfile, size)
        if rfile.readline(3) not in (b"\r\n", b"\n"):
            raise _Refusal(400, "a chunk's data must be followed by CRLF")
    for _ in range(MAX_TRAILERS + 1):
        line = rfile.readline(MAX_CHUNK_LINE_BYTES + 1)
        if line in (b"\r\n", b"\n"):
            return bytes(body)
        if not line.endswith(b"\n"):
            raise _Refusal(400, "the chunked body ends without its final CRLF")
    raise _Refusal(431, f"more than {MAX_TRAILERS} trailer fields")


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalApiServer
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle's algorithm the body
    # waits for the client's delayed ACK (40 ms on Linux) on a kept-alive connection.
    disable_nagle_algorithm = True
    timeout = REQUEST_READ_TIMEOUT_SECONDS

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
        except _Refusal as refusal:
            self._refuse(refusal.status, refusal.message)
            return
        except TimeoutError:
            self._refuse(408, "the request did not arrive in time")
            return
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
        try:
            status, headers, data = parse_result(result, self.server.event_format)
        except (TypeError, ValueError) as exc:
            self.log_error("the function's result is malformed: %s", type(exc).__name__)
            data = b'{"message": "Internal server error"}'
            status, headers = 502, [("Content-Type", "application/json")]
        self._send(status, headers, data)

    def _read_body(self) -> bytes:
        """The request body, as API Gateway would accept it; ``_Refusal`` otherwise."""
        if self.request_version == "HTTP/0.9":
            raise _Refusal(400, "HTTP/0.9 is not served; send HTTP/1.1")
        if not _TOKEN_RE.match(self.command):
            raise _Refusal(400, "the request method must be an HTTP token, e.g. GET or POST")
        if self.headers.defects:
            raise _Refusal(400, "a header line is malformed (each must be 'Name: value')")
        header_bytes = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if header_bytes > MAX_HEADER_BYTES:
            raise _Refusal(431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
        encodings = self.headers.get_all("Transfer-Encoding") or []
        lengths = self.headers.get_all("Content-Length") or []
        if encodings:
            if lengths:
                # RFC 9112 6.1: both at once is how requests are smuggled past proxies.
                raise _Refusal(400, "send either Content-Length or Transfer-Encoding, not both")
            if ",".join(encodings).strip().lower() != "chunked":
                raise _Refusal(400, "the only Transfer-Encoding accepted is chunked")
            return read_chunked(self.rfile, MAX_REQUEST_BYTES)
        length = _content_length(lengths) if lengths else 0
        if length > MAX_REQUEST_BYTES:
            raise _Refusal(413, f"the request body is larger than {MAX_REQUEST_BYTES} bytes")
        return _read_exactly(self.rfile, length) if length else b""

    def _refuse(self, status: int, message: str) -> None:
        """A 4xx in API Gateway's words; the connection is closed, its state is unknown."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # a status line all the same
        data = json.dumps({"message": message}).encode("utf-8")
        self._send(status, [("Content-Type", "application/json"), ("Connection", "close")], data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own refusals (bad request line, header line too long, too many
        # headers), in JSON like every other answer and in our words: its own message
        # and HTML page quote the request back.
        self.log_error("code %d", code)
        text = _OWN_REFUSALS.get(code) or self.responses.get(code, ("error",))[0]
        if self.request_version == "HTTP/0.9":
            # Set before the version was read: answer with a status line all the same.
            self.request_version = "HTTP/1.0"
        self.close_connection = True
        data = json.dumps({"message": text}).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(data)

    def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("content-length", "transfer-encoding"):
                if name.lower() == "connection" and value.lower() != "close":
                    continue
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
