"""Real servers on loopback for tests: S3 and R2 (moto), FTP/FTPS (pyftpdlib), HTTP/HTTPS.

Every server binds to 127.0.0.0/8 on a port the OS picks, so nothing here reaches
beyond this machine. ``tests/conftest.py`` wraps these classes in fixtures; they can
also be used directly, e.g. from a script that needs a local S3.

HTTP routes are plain functions of the request handler; the ``respond``, ``redirect``,
``fail_first``, ``declare_length``, ``chunked``, ``drip``, ``stall`` and ``gzipped``
helpers build the misbehaving ones.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import trustme

LOOPBACK = "127.0.0.1"

# ---------------------------------------------------------------------------- moto

# Runs in a child process: one moto server per process keeps S3 and R2 state apart.
# The child prints its port once listening and exits when the parent closes stdin.
_MOTO_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address=sys.argv[1], port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""

_ALLOW_ALL_POLICY = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)


@dataclass
class MotoServer:
    """An S3 API served by moto in its own process.

    ``access_key_id``/``secret_access_key`` are the credentials the server accepts.
    When ``enforces_auth`` is true, every request must be SigV4-signed with exactly
    those keys (moto checks signatures against an IAM user); otherwise any keys pass.
    """

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str = "us-east-1"
    enforces_auth: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def client(self, region: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region or self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self, bucket: str, versioned: bool = False) -> None:
        client = self.client()
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        if versioned:
            client.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            )

    def put_object(self, bucket: str, key: str, body: bytes | Path) -> str | None:
        """Store ``body`` (bytes or a file) at ``bucket/key``; returns the VersionId, if any."""
        self.create_bucket(bucket)
        data = body.read_bytes() if isinstance(body, Path) else body
        return self.client().put_object(Bucket=bucket, Key=key, Body=data).get("VersionId")

    def presign(self, bucket: str, key: str, expires: int = 600) -> str:
        return self.client().generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.stdin:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def start_moto(
    access_key_id: str = "testing",
    secret_access_key: str = "testing",
    *,
    enforce_auth: bool = False,
    host: str = LOOPBACK,
) -> MotoServer:
    """Start moto's server mode in a child process on ``host`` and a free port.

    With ``enforce_auth`` an IAM user with its own generated keys is created and
    moto then refuses requests not signed with them; the returned server carries
    those keys (the arguments are only used to bootstrap).
    """
    # The child keeps its own handle on the log; ours is only read if startup fails.
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _MOTO_CHILD, host],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.strip().isdigit():
            process.kill()
            log.seek(0)
            output = log.read().decode(errors="replace")
            raise RuntimeError(f"moto server did not start: {output}")
    server = MotoServer(
        endpoint_url=f"http://{host}:{int(line)}",
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        process=process,
    )
    if enforce_auth:
        _enforce_auth(server)
    return server


def _enforce_auth(server: MotoServer) -> None:
    import boto3
    import requests

    iam = boto3.client(
        "iam",
        endpoint_url=server.endpoint_url,
        region_name=server.region,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
    )
    iam.create_user(UserName="r2-reader")
    iam.put_user_policy(UserName="r2-reader", PolicyName="all", PolicyDocument=_ALLOW_ALL_POLICY)
    key = iam.create_access_key(UserName="r2-reader")["AccessKey"]
    server.access_key_id, server.secret_access_key = key["AccessKeyId"], key["SecretAccessKey"]
    # From now on moto authenticates every request (a count of 0 unauthenticated ones).
    answer = requests.post(f"{server.endpoint_url}/moto-api/reset-auth", data=b"0", timeout=10)
    answer.raise_for_status()
    server.enforces_auth = True


# ---------------------------------------------------------------------------- TLS


@dataclass
class TestCA:
    """A throwaway certificate authority (trustme) and its bundle on disk."""

    ca: trustme.CA
    bundle: Path

    __test__ = False  # not a test class, despite the name

    def issue(self, *names: str, folder: Path) -> Path:
        """A PEM file with a certificate for ``names`` (DNS names or IPs), chain and key."""
        cert = self.ca.issue_cert(*names)
        path = folder / f"cert-{'-'.join(n.replace(':', '_') for n in names)}.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(path))
        return path

    def server_context(self, *names: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(*names).configure_cert(context)
        return context


def make_ca(folder: Path) -> TestCA:
    ca = trustme.CA()
    bundle = folder / "test-ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return TestCA(ca=ca, bundle=bundle)


# ---------------------------------------------------------------------------- HTTP

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    target: str
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ThreadingServer

    def do_GET(self) -> None:
        self.server.owner.dispatch(self)

    def do_HEAD(self) -> None:
        self.server.owner.dispatch(self)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _ThreadingServer(ThreadingHTTPServer):
    daemon_threads = True
    owner: HttpServer
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs in the connection's thread, not in the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # clients that hang up mid-body are part of the tests


class HttpServer:
    """A threaded HTTP (or HTTPS) server on loopback.

    GET ``/<name>`` serves ``root/<name>``; ``route(path, handler)`` installs scripted
    behaviour for one path (query strings are ignored for matching). Every request
    is recorded in ``requests``.
    """

    def __init__(self, root: Path, host: str = LOOPBACK, tls: ssl.SSLContext | None = None) -> None:
        self.root = root
        self.host = host
        self.requests: list[RecordedRequest] = []
        self._routes: dict[str, Route] = {}
        self._lock = threading.Lock()
        self._server = _ThreadingServer((host, 0), _Handler)
        self._server.owner = self
        self._server.tls = tls
        self.port = self._server.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, path: str, host: str | None = None) -> str:
        """The URL of ``path`` on this server, optionally spelling the host differently."""
        return f"{self.scheme}://{host or self.host}:{self.port}/{path.lstrip('/')}"

    def put(self, name: str, body: bytes | Path) -> str:
        """Serve ``body`` (bytes or a file) at ``/<name>``; returns its URL."""
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body.read_bytes() if isinstance(body, Path) else body)
        return self.url(quote(name))

    def route(self, path: str, handler: Route) -> str:
        """Install ``handler`` for ``path``; returns the URL."""
        with self._lock:
            self._routes["/" + unquote(path.lstrip("/"))] = handler
        return self.url(path)

    def hits(self, path: str) -> int:
        wanted = "/" + unquote(path.lstrip("/"))
        return sum(1 for r in self.requests if r.path == wanted)

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self.requests.clear()

    def dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(handler.path).path)
        with self._lock:
            self.requests.append(
                RecordedRequest(handler.command, path, handler.path, dict(handler.headers.items()))
            )
            route = self._routes.get(path)
        (route or self._serve_file)(handler)

    def _serve_file(self, handler: BaseHTTPRequestHandler) -> None:
        relative = unquote(urlsplit(handler.path).path).lstrip("/")
        target = (self.root / relative).resolve()
        if not target.is_relative_to(self.root.resolve()) or not target.is_file():
            send(handler, 404, b"not found")
            return
        send(handler, 200, target.read_bytes(), {"Content-Type": "application/dicom"})

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> None:
    """A complete response with Content-Length."""
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def respond(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Route:
    return lambda handler: send(handler, status, body, headers)


def serve_bytes(body: bytes | Path, headers: dict[str, str] | None = None) -> Route:
    data = body.read_bytes() if isinstance(body, Path) else body
    return respond(200, data, headers)


def redirect(location: str, status: int = 302) -> Route:
    return respond(status, b"", {"Location": location})


def fail_first(count: int, status: int, then: Route) -> Route:
    """Answer ``status`` to the first ``count`` requests, then behave like ``then``."""
    remaining = [count]
    lock = threading.Lock()

    def route(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            failing = remaining[0] > 0
            remaining[0] -= 1
        if failing:
            send(handler, status, b"try again")
        else:
            then(handler)

    return route


def declare_length(body: bytes | Path, declared: int) -> Route:
    """Send ``body`` under a Content-Length of ``declared``, then close the connection."""
    data = body.read_bytes() if isinstance(body, Path) else body

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Length", str(declared))
        handler.send_header("Connection", "close")
        handler.end_headers()
        _write_quietly(handler, data)

    return route


def chunked(pieces: Callable[[], Iterable[bytes]]) -> Route:
    """A body in Transfer-Encoding: chunked, without Content-Length."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for piece in pieces():
            if not _write_quietly(handler, b"%x\r\n%s\r\n" % (len(piece), piece)):
                return
        _write_quietly(handler, b"0\r\n\r\n")

    return route


def drip(body: bytes, interval: float, piece: int = 1, max_seconds: float = 15.0) -> Route:
    """Send ``body`` ``piece`` bytes at a time, every ``interval`` seconds (a slow drip)."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        stop = time.monotonic() + max_seconds
        for start in range(0, len(body), piece):
            if time.monotonic() > stop or not _write_quietly(handler, body[start : start + piece]):
                return
            time.sleep(interval)

    return route


def stall(prefix: bytes, declared: int, seconds: float) -> Route:
    """Send headers and ``prefix`` of a ``declared``-byte body, then go silent."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        _write_quietly(handler, prefix)
        time.sleep(seconds)

    return route


def gzipped(body: bytes | Path, declared: int | None = None) -> Route:
    """``body`` gzip-compressed with Content-Encoding: gzip (declared length optional)."""
    data = gzip.compress(body.read_bytes() if isinstance(body, Path) else body)

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(declared if declared is not None else len(data)))
        handler.end_headers()
        _write_quietly(handler, data)

    return route


def _write_quietly(handler: BaseHTTPRequestHandler, data: bytes) -> bool:
    try:
        handler.wfile.write(data)
        handler.wfile.flush()
        return True
    except OSError:
        handler.close_connection = True
        return False


# ---------------------------------------------------------------------------- FTP


class FtpServer:
    """pyftpdlib on loopback serving ``root`` read-only to ``user`` and to anonymous.

    With ``certfile`` (a PEM with key and certificate) it speaks explicit FTPS
    (AUTH TLS); plain FTP logins are then still accepted.
    """

    def __init__(
        self,
        root: Path,
        user: str = "dicom",
        password: str = "s3cr3t:p@ss/word%",
        certfile: Path | None = None,
        host: str = LOOPBACK,
    ) -> None:
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
        from pyftpdlib.ioloop import IOLoop
        from pyftpdlib.servers import FTPServer

        logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
        self.root, self.user, self.password, self.host = root, user, password, host
        self.scheme = "ftps" if certfile else "ftp"
        authorizer = DummyAuthorizer()
        authorizer.add_user(user, password, str(root), perm="elr")
        authorizer.add_anonymous(str(root), perm="elr")
        base = TLS_FTPHandler if certfile else FTPHandler
        handler = type(
            "Handler",
            (base,),
            {"authorizer": authorizer, "timeout": 30, "auth_failed_timeout": 0.05},
        )
        if certfile:
            handler.certfile = str(certfile)
        # An IOLoop per server: pyftpdlib's default loop is a process-wide singleton.
        self._server = FTPServer((host, 0), handler, ioloop=IOLoop())
        self.port = self._server.address[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            self._server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        self._server.close_all()

    def put(self, name: str, body: bytes | Path) -> str:
        """Place a file for download; returns its URL with the user's credentials."""
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body.read_bytes() if isinstance(body, Path) else body)
        return self.url(name)

    def url(self, path: str, *, anonymous: bool = False, password: str | None = None) -> str:
        """``ftp://user:password@host:port/path`` with percent-encoded credentials."""
        location = f"{self.host}:{self.port}/{quote(path.lstrip('/'))}"
        if anonymous:
            return f"{self.scheme}://{location}"
        secret = self.password if password is None else password
        return f"{self.scheme}://{quote(self.user, safe='')}:{quote(secret, safe='')}@{location}"

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- hostile peers
#
# Routes and servers that misbehave on purpose, for the adversarial tests. Each one
# gives up on its own after a bounded time, so a client that stops reading never
# leaves a thread spinning.


def sequence(*routes: Route) -> Route:
    """The n-th request is answered by ``routes[n]``; the last route answers the rest."""
    calls = [0]
    lock = threading.Lock()

    def route(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            index = min(calls[0], len(routes) - 1)
            calls[0] += 1
        routes[index](handler)

    return route


def endless(piece: bytes, interval: float = 0.0, max_seconds: float = 30.0) -> Route:
    """A body without length or chunking (it ends when the connection closes) that
    repeats ``piece`` until the client hangs up."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom")
        handler.send_header("Connection", "close")
        handler.end_headers()
        stop = time.monotonic() + max_seconds
        while time.monotonic() < stop and _write_quietly(handler, piece):
            if interval:
                time.sleep(interval)

    return route


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Close with a TCP reset (RST) instead of an orderly FIN."""
    handler.close_connection = True
    with contextlib.suppress(OSError):
        handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        handler.connection.close()


def reset_after(prefix: bytes, declared: int) -> Route:
    """Headers and ``prefix`` of a ``declared``-byte body, then a connection reset."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(declared))
        handler.end_headers()
        _write_quietly(handler, prefix)
        _reset(handler)

    return route


def reset_at_once() -> Route:
    """Read the request, then reset the connection without answering."""
    return _reset


def silent(seconds: float) -> Route:
    """Read the request and send nothing for ``seconds``, then hang up."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        time.sleep(seconds)

    return route


def drip_headers(interval: float, max_seconds: float = 15.0) -> Route:
    """A status line, then one byte of a header that never ends every ``interval`` s."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        if not _write_quietly(handler, b"HTTP/1.1 200 OK\r\nX-Drip: "):
            return
        stop = time.monotonic() + max_seconds
        while time.monotonic() < stop:
            time.sleep(interval)
            if not _write_quietly(handler, b"a"):
                return

    return route


def endless_continue(interval: float, max_seconds: float = 15.0) -> Route:
    """Interim ``100 Continue`` responses, one every ``interval`` s, and never a final one."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        stop = time.monotonic() + max_seconds
        while time.monotonic() < stop:
            if not _write_quietly(handler, b"HTTP/1.1 100 Continue\r\n\r\n"):
                return
            time.sleep(interval)

    return route


def compression_bomb(expanded: int, encoding: str = "gzip", members: bool = False) -> Route:
    """A chunked body of zeros compressed on the fly, inflating to ``expanded`` bytes.

    ``encoding`` is the Content-Encoding (``gzip`` or ``deflate``). With ``members``
    the body is a series of 16 MiB gzip members (RFC 1952 2.2) instead of one stream.
    Nothing the size of the expanded body is ever held in memory.
    """
    block = bytes(1024 * 1024)
    member = gzip.compress(bytes(16 * 1024 * 1024)) if members else b""

    def pieces() -> Iterable[bytes]:
        if members:
            for _ in range(max(1, expanded // (16 * 1024 * 1024))):
                yield member
            return
        compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
        for _ in range(max(1, expanded // len(block))):
            data = compressor.compress(block)
            if data:
                yield data
        yield compressor.flush()

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Encoding", encoding)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for piece in pieces():
            if not _write_quietly(handler, b"%x\r\n%s\r\n" % (len(piece), piece)):
                return
        _write_quietly(handler, b"0\r\n\r\n")

    return route


def lying_chunk(size: int, sent: bytes) -> Route:
    """A chunked body whose first chunk claims ``size`` bytes but carries only ``sent``."""

    def route(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        _write_quietly(handler, b"%x\r\n" % size + sent)

    return route


S3_REQUEST_ID = "4442587FB7D0A2F9"


def s3_error(status: int, code: str, message: str = "The request failed.") -> Route:
    """An S3 REST error: the XML document S3 (and R2) send with 4xx and 5xx answers."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{S3_REQUEST_ID}</RequestId><HostId>local-s3-stub</HostId></Error>"
    ).encode()
    return respond(
        status, body, {"Content-Type": "application/xml", "x-amz-request-id": S3_REQUEST_ID}
    )


def s3_object(body: bytes | Path) -> Route:
    """A successful GetObject answer for ``body``."""
    data = body.read_bytes() if isinstance(body, Path) else body
    headers = {
        "Content-Type": "application/dicom",
        "ETag": '"0123456789abcdef0123456789abcdef"',
        "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
        "x-amz-request-id": S3_REQUEST_ID,
    }
    return respond(200, data, headers)


class RawTcpServer:
    """A TCP server on loopback that runs ``behaviour(connection)`` for each client.

    For peers that do not speak HTTP at all, e.g. a TLS handshake that never ends.
    """

    def __init__(self, behaviour: Callable[[socket.socket], None], host: str = LOOPBACK) -> None:
        self.host = host
        self.accepted = 0
        self._behaviour = behaviour
        self._socket = socket.create_server((host, 0))
        self._socket.settimeout(0.1)
        self.port = self._socket.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError), connection:
            self._behaviour(connection)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._socket.close()


def tls_handshake_drip(
    interval: float, max_seconds: float = 15.0
) -> Callable[[socket.socket], None]:
    """Answer a TLS ClientHello with the header of a 16 kB handshake record, then one
    byte of it every ``interval`` seconds."""

    def behaviour(connection: socket.socket) -> None:
        connection.recv(65536)
        connection.sendall(b"\x16\x03\x03\x40\x00")
        stop = time.monotonic() + max_seconds
        while time.monotonic() < stop:
            time.sleep(interval)
            connection.sendall(b"\x00")

    return behaviour


FTP_BEHAVIOURS = ("silent", "drip_greeting", "stall_retr", "slow_data", "busy", "no_size")


def hostile_ftp(root: Path, behaviour: str, interval: float = 0.2) -> FtpServer:
    """An ``FtpServer`` (pyftpdlib) whose sessions misbehave in one way:

    * ``silent``: accepts the connection and never sends its greeting;
    * ``drip_greeting``: sends ``220-`` continuation lines every ``interval`` s, never the last;
    * ``stall_retr``: answers RETR with 150 and sends no data;
    * ``slow_data``: sends file data at about 1 kB/s;
    * ``busy``: answers every connection with 421 (a transient refusal) and hangs up;
    * ``no_size``: refuses SIZE (it is optional, RFC 3659) and serves files normally.

    ``server.sessions`` counts the connections the server accepted.
    """
    from pyftpdlib.handlers import ThrottledDTPHandler

    if behaviour not in FTP_BEHAVIOURS:
        raise ValueError(f"behaviour must be one of {FTP_BEHAVIOURS}")
    server = FtpServer(root)
    sessions = [0]
    base = server._server.handler

    def count(handler: Any) -> None:
        sessions[0] += 1

    def silent_greeting(handler: Any) -> None:
        count(handler)

    def drip_greeting(handler: Any) -> None:
        count(handler)

        def tick() -> None:
            if not handler._closed:
                handler.push("220-please wait\r\n")
                handler.ioloop.call_later(interval, tick, _errback=handler.handle_error)

        tick()

    def busy(handler: Any) -> None:
        count(handler)
        handler.respond("421 Too many connections, try again later.")
        handler.close_when_done()

    def greet_and_count(handler: Any) -> None:
        count(handler)
        base.handle(handler)

    def stall_retr(handler: Any, file: str) -> None:
        handler.respond("150 File status okay. About to open data connection.")

    def no_size(handler: Any, path: str) -> None:
        handler.respond("502 Command not implemented.")

    overrides: dict[str, dict[str, Any]] = {
        "silent": {"handle": silent_greeting},
        "drip_greeting": {"handle": drip_greeting},
        "stall_retr": {"handle": greet_and_count, "ftp_RETR": stall_retr},
        "slow_data": {
            "handle": greet_and_count,
            "dtp_handler": type("SlowDTP", (ThrottledDTPHandler,), {"write_limit": 1024}),
        },
        "busy": {"handle": busy},
        "no_size": {"handle": greet_and_count, "ftp_SIZE": no_size},
    }
    server._server.handler = type(f"Hostile_{behaviour}", (base,), overrides[behaviour])
    server.sessions = sessions  # type: ignore[attr-defined]
    return server


def widen_backlog(server: Any, backlog: int = 256) -> Any:
    """Let a socketserver-based ``server`` queue ``backlog`` pending connections.

    socketserver listens with a backlog of 5; a test that opens dozens of
    connections at once would otherwise see resets or SYN retries instead of answers.
    """
    listener = server._server.socket if isinstance(server, HttpServer) else server.socket
    listener.listen(backlog)
    return server


# ---------------------------------------------------------------------------- ranges


class RangeFile:
    """A route serving one file with HTTP range requests (RFC 9110 14), counting bytes.

    ``mode`` picks the behaviour: "ranges" honours ``Range`` (206 with Content-Range,
    ``If-Range`` checked against the ETag); "ignore" always answers 200 with the whole
    body and no Accept-Ranges; "full" advertises ranges but answers a ranged request
    with 200 and the whole body; "shifted" answers 206 with the requested length but a
    Content-Range (and bytes) one byte further on; "ranges-after-first" honours only the
    first ranged request and lies ("full") after it. ``etag``/``last_modified`` set
    the validators (None leaves one out). ``served`` counts body bytes sent.
    """

    def __init__(
        self,
        path: Path,
        mode: str = "ranges",
        etag: str | None = '"v1"',
        last_modified: str | None = "Tue, 01 Dec 2026 00:00:00 GMT",
    ) -> None:
        self.path, self.mode, self.etag, self.last_modified = path, mode, etag, last_modified
        self.size = path.stat().st_size
        self.served = 0
        self.ranged_requests = 0
        self._lock = threading.Lock()

    def __call__(self, handler: BaseHTTPRequestHandler) -> None:
        wanted = self._wanted(handler)
        mode = self.mode
        if mode == "ranges-after-first":
            mode = "ranges" if self.ranged_requests <= 1 else "full"
        if wanted is None or mode in ("ignore", "full"):
            self._send(handler, 200, 0, self.size, None)
            return
        start, stop = wanted
        if start >= self.size:
            send(handler, 416, b"", {"Content-Range": f"bytes */{self.size}"})
            return
        stop = min(stop, self.size)
        shift = 1 if mode == "shifted" and stop < self.size else 0
        shown = f"bytes {start + shift}-{stop - 1 + shift}/{self.size}"
        self._send(handler, 206, start + shift, stop + shift, shown)

    def _wanted(self, handler: BaseHTTPRequestHandler) -> tuple[int, int] | None:
        header = handler.headers.get("Range", "")
        if not header.startswith("bytes=") or "," in header:
            return None
        first, _, last = header[6:].partition("-")
        if not first.isdigit():
            return None
        if_range = handler.headers.get("If-Range")
        if if_range is not None and if_range not in (self.etag, self.last_modified):
            return None
        with self._lock:
            self.ranged_requests += 1
        return int(first), (int(last) + 1 if last.isdigit() else self.size)

    def _send(
        self, handler: BaseHTTPRequestHandler, status: int, start: int, stop: int, shown: str | None
    ) -> None:
        handler.send_response(status)
        if self.mode != "ignore":
            handler.send_header("Accept-Ranges", "bytes")
        if self.etag:
            handler.send_header("ETag", self.etag)
        if self.last_modified:
            handler.send_header("Last-Modified", self.last_modified)
        if shown:
            handler.send_header("Content-Range", shown)
        handler.send_header("Content-Length", str(stop - start))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        with self.path.open("rb") as f:
            f.seek(start)
            left = stop - start
            while left > 0:
                data = f.read(min(left, 1024 * 1024))
                if not data or not _write_quietly(handler, data):
                    return
                left -= len(data)
                with self._lock:
                    self.served += len(data)
