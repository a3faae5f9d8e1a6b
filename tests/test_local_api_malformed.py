"""local_api.py against malformed HTTP, sent byte for byte over raw sockets.

Every request here is one a browser or curl would never send. The server must
answer each with a 4xx in JSON (API Gateway's ``{"message": ...}``), never drop the
connection unanswered, never print a traceback, and keep serving afterwards.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import local_api

MAX = local_api.MAX_REQUEST_BYTES


def echo_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Stands in for the function: answers with the length of the body it was given."""
    body = event.get("body") or ""
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps({"body_chars": len(body), "base64": event.get("isBase64Encoded")}),
    }


@pytest.fixture(scope="module")
def server() -> Iterator[local_api.LocalApiServer]:
    api = local_api.make_server("127.0.0.1", 0, "rest", echo_handler, timeout=5.0)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    yield api
    api.shutdown()
    api.server_close()


def exchange(server: local_api.LocalApiServer, raw: bytes, half_close: bool = True) -> bytes:
    """Send ``raw``, optionally end the sending side, and read until the server closes."""
    with socket.create_connection(server.server_address[:2], timeout=10) as sock:
        sock.sendall(raw)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def status_and_body(answer: bytes) -> tuple[int, dict[str, Any]]:
    assert answer, "the server closed the connection without answering"
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def request(headers: str, body: bytes = b"", line: str = "POST /convert HTTP/1.1") -> bytes:
    return f"{line}\r\nHost: localhost\r\n{headers}\r\n".encode() + body


LONG_NAME = "X-" + "a" * 70_000
MALFORMED = [
    ("content-length not a number", request("Content-Length: abc\r\n"), 400),
    ("content-length negative", request("Content-Length: -1\r\n"), 400),
    ("content-length with a sign", request("Content-Length: +5\r\n", b"hello"), 400),
    ("content-length hex", request("Content-Length: 0x10\r\n"), 400),
    ("content-length list", request("Content-Length: 1, 2\r\n", b"ab"), 400),
    ("content-length twice", request("Content-Length: 1\r\nContent-Length: 2\r\n", b"ab"), 400),
    ("content-length unicode digits", request("Content-Length: ١٢\r\n"), 400),
    ("content-length enormous", request("Content-Length: 99999999999999999999999\r\n"), 400),
    ("body shorter than declared", request("Content-Length: 20\r\n", b"short"), 400),
    ("body over the limit", request(f"Content-Length: {MAX + 1}\r\n"), 413),
    (
        "both length and chunking",
        request("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
        400,
    ),
    ("unknown transfer coding", request("Transfer-Encoding: gzip\r\n"), 400),
    ("chunked then gzip", request("Transfer-Encoding: chunked, gzip\r\n"), 400),
    (
        "chunk size not hex",
        request("Transfer-Encoding: chunked\r\n", b"zz\r\nhi\r\n0\r\n\r\n"),
        400,
    ),
    ("chunk size empty", request("Transfer-Encoding: chunked\r\n", b"\r\nhi\r\n0\r\n\r\n"), 400),
    (
        "chunk size negative",
        request("Transfer-Encoding: chunked\r\n", b"-2\r\nhi\r\n0\r\n\r\n"),
        400,
    ),
    (
        "chunk data without CRLF",
        request("Transfer-Encoding: chunked\r\n", b"2\r\nhiXX0\r\n\r\n"),
        400,
    ),
    ("chunked body cut short", request("Transfer-Encoding: chunked\r\n", b"10\r\nabc"), 400),
    ("chunked without last chunk", request("Transfer-Encoding: chunked\r\n", b"2\r\nhi\r\n"), 400),
    (
        "chunk size line endless",
        request("Transfer-Encoding: chunked\r\n", b"1" * 5000 + b"\r\n"),
        400,
    ),
    (
        "chunked over the limit",
        request("Transfer-Encoding: chunked\r\n", f"{MAX + 1:x}\r\n".encode()),
        413,
    ),
    (
        "too many trailers",
        request("Transfer-Encoding: chunked\r\n", b"0\r\n" + b"T: x\r\n" * 40 + b"\r\n"),
        431,
    ),
    ("header line too long", request(f"{LONG_NAME}: 1\r\n"), 431),
    ("too many headers", request("".join(f"X-H{i}: v\r\n" for i in range(120))), 431),
    (
        "headers over the total limit",
        request("".join(f"X-H{i}: {'v' * 1000}\r\n" for i in range(20))),
        431,
    ),
    ("request line too long", request("", line="GET /" + "a" * 70_000 + " HTTP/1.1"), 414),
    ("request line garbage", b"\x00\x01\x02 \xff\r\n\r\n", 400),
    ("request line without version parts", request("", line="GET / HTTP/x.y"), 400),
    ("header without colon", request("NoColonHere\r\n"), 400),
    ("HTTP/0.9 request", b"GET /health\r\n", 400),
    ("method not a token", request("", line="G(T /health HTTP/1.1"), 400),
]


@pytest.mark.parametrize(
    ("raw", "status"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_requests_get_a_json_4xx(
    server: local_api.LocalApiServer, raw: bytes, status: int, capfd: pytest.CaptureFixture[str]
) -> None:
    answer = exchange(server, raw)
    got, document = status_and_body(answer)
    assert got == status, answer[:300]
    assert isinstance(document.get("message"), str) and document["message"]
    # Our words only: nothing of the request is quoted back.
    assert b"a" * 100 not in answer and b"zz" not in answer.partition(b"\r\n\r\n")[2]
    assert "Traceback" not in capfd.readouterr().err
    # The server still answers a good request afterwards.
    good = exchange(server, request("Content-Length: 2\r\n", b"{}"))
    assert status_and_body(good)[0] == 200


def test_a_valid_chunked_body_reaches_the_function(server: local_api.LocalApiServer) -> None:
    body = b'4\r\n{"a"\r\n3;ext=1\r\n:1}\r\n0\r\nTrailer: x\r\n\r\n'
    answer = exchange(server, request("Transfer-Encoding: chunked\r\n", body))
    assert status_and_body(answer) == (200, {"body_chars": 7, "base64": False})


def test_repeated_equal_content_lengths_are_one(server: local_api.LocalApiServer) -> None:
    answer = exchange(server, request("Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"))
    assert status_and_body(answer)[0] == 200


def test_a_client_that_stops_sending_gets_a_408(
    server: local_api.LocalApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(local_api._RequestHandler, "timeout", 0.5)
    # The connection stays open (no half-close): the server has to give up on its own.
    answer = exchange(server, request("Content-Length: 100\r\n", b"{"), half_close=False)
    assert status_and_body(answer)[0] == 408
    assert "Traceback" not in capfd.readouterr().err


def test_a_client_that_resets_leaves_one_line_and_no_traceback(
    server: local_api.LocalApiServer, capfd: pytest.CaptureFixture[str]
) -> None:
    with socket.create_connection(server.server_address[:2], timeout=5) as sock:
        sock.sendall(request("Content-Length: 100000\r\n", b"{" * 1000))
        # SO_LINGER 0: close sends a reset instead of a FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    good = exchange(server, request("Content-Length: 2\r\n", b"{}"))
    assert status_and_body(good)[0] == 200
    assert "Traceback" not in capfd.readouterr().err
