"""Fetch a file named by URL into a work folder: S3, Cloudflare R2, FTP(S) or HTTP(S).

This module is the function's only door to the outside world. Its parts, in the
manner of requests' transport adapters:

* ``DOWNLOADERS`` maps each source to a ``Downloader`` with one method,
  ``fetch(url, dest, limits) -> Path``; ``url_policy.source_type`` picks the source;
* every downloader is given the ``UrlPolicy`` (an argument, never a global): the FTP
  and HTTP downloaders connect to exactly the addresses it checked, so a second DNS
  answer cannot swap the target (DNS rebinding), and every redirect hop is checked;
* ``DownloadOptions`` carries what the operator configured; ``Limits`` is the size,
  free-space, time and retry budget of one download, with its deadline.

Errors of requests and ftplib are translated into ``errors`` types here, those of
botocore in ``s3_store``. Messages and logs show URLs only through
``service_log.shown_url`` / ``redact_url``. boto3 is imported by the S3 and R2
downloaders alone, so an HTTP download does not pay for it at cold start.
"""

from __future__ import annotations

import errno
import ftplib
import ipaddress
import logging
import secrets
import shutil
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

import s3_store
from errors import (
    BlockedByPolicy,
    ConfigurationError,
    Forbidden,
    InvalidUrl,
    NotFound,
    ServiceError,
    SourceNotConfigured,
    TooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from service_log import redact_url, shown_url
from url_policy import (
    Endpoint,
    FtpTarget,
    IPAddress,
    ObjectLocation,
    SourceEndpoints,
    UrlPolicy,
    ftp_target,
    parse_object_url,
    source_type,
    split_url,
)

logger = logging.getLogger("file_downloader")

CHUNK_BYTES = 64 * 1024
# Free space is measured again after every this many bytes written.
SPACE_CHECK_BYTES = 1024 * 1024
# First pause between attempts; it doubles on each retry.
BACKOFF_SECONDS = 0.2
USER_AGENT = "dicom-to-jpg-converter/1.0"

T = TypeVar("T")


def _safe_cause(exc: BaseException, url: str) -> BaseException | None:
    """``exc`` as the cause to chain, or None when its text could reveal a secret.

    requests and urllib3 put the request path and query into their exception text, so
    for a URL that carries user info or a query the cause is left out of the chain.
    """
    return exc if redact_url(url) == url else None


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class DownloadOptions:
    """Everything a download needs except the URL policy; built once per environment."""

    max_bytes: int
    min_free_bytes: int
    connect_timeout: float
    read_timeout: float
    deadline_seconds: float
    retries: int
    max_redirects: int
    endpoints: SourceEndpoints = field(default_factory=SourceEndpoints)
    r2_access_key_id: str | None = field(default=None, repr=False)
    r2_secret_access_key: str | None = field(default=None, repr=False)
    # CA bundle (file or folder) for HTTPS and FTPS (REQUESTS_CA_BUNDLE).
    ca_bundle: str | None = None

    def s3_config(self) -> s3_store.S3Config:
        """Client settings for reads; retries are ours (``_with_retries``), not botocore's,
        so every source has the same budget (DOWNLOAD_RETRIES) and backoff."""
        return s3_store.S3Config(
            endpoint_url=self.endpoints.s3,
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries=0,
        )


@dataclass(frozen=True)
class Limits:
    """The budget of one download: the options' size, space and attempts, and its deadline."""

    options: DownloadOptions
    # DOWNLOAD_DEADLINE_SECONDS, or less when the caller's own deadline is nearer.
    deadline_seconds: float
    # time.monotonic() value at which the download must have finished.
    deadline: float

    @classmethod
    def from_options(
        cls, options: DownloadOptions, deadline_seconds: float | None = None
    ) -> Limits:
        """The budget of a download starting now; ``deadline_seconds`` may only shorten it."""
        seconds = options.deadline_seconds
        if deadline_seconds is not None:
            seconds = min(seconds, deadline_seconds)
        return cls(options, seconds, time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self, url: str) -> float:
        """Seconds left before the deadline; raises ``UpstreamTimeout`` when none are."""
        left = self.remaining()
        if left <= 0:
            raise self.deadline_error(url)
        return left

    def connect_timeout_now(self, url: str) -> float:
        return min(self.options.connect_timeout, self.check_deadline(url))

    def read_timeout_now(self, url: str) -> float:
        """The socket read timeout for the next read: never past the deadline."""
        return min(self.options.read_timeout, self.check_deadline(url))

    def deadline_error(self, url: str) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"downloading {shown_url(url)} did not finish within DOWNLOAD_DEADLINE_SECONDS "
            f"({self.deadline_seconds:g} s); use a faster source or a smaller file"
        )

    def timeout_error(self, url: str, phase: str) -> UpstreamTimeout:
        """The error for a socket timeout: the deadline's, or the per-phase limit's."""
        if self.remaining() <= 0:
            return self.deadline_error(url)
        if phase == "connect":
            return UpstreamTimeout(
                f"connecting to the host of {shown_url(url)} timed out after "
                f"CONNECT_TIMEOUT_SECONDS ({self.options.connect_timeout:g} s)"
            )
        return UpstreamTimeout(
            f"the source of {shown_url(url)} sent nothing for READ_TIMEOUT_SECONDS "
            f"({self.options.read_timeout:g} s)"
        )


def _local_error(exc: OSError, dest: Path) -> ServiceError:
    """A failure of the work folder itself, not of the source."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TooLarge("the work folder ran out of space during the download")
    return ConfigurationError(f"cannot write the download into {dest.parent}: {exc.strerror}")


class _Sink:
    """The destination file of one attempt; enforces size, free space and deadline."""

    def __init__(self, path: Path, limits: Limits, url: str) -> None:
        self.path = path
        self.size = 0
        self._limits = limits
        self._url = url
        self._next_space_check = 0
        try:
            self._file: BinaryIO = path.open("wb")
        except OSError as exc:
            raise _local_error(exc, path) from exc

    def __enter__(self) -> _Sink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._file.close()

    def expect(self, length: int | None) -> None:
        """Refuse before the transfer when the announced length cannot fit."""
        if length is None:
            self._check_space(0)
            return
        if length > self._limits.options.max_bytes:
            raise self._too_large(f"is {length} bytes")
        self._check_space(length)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limits.options.max_bytes:
            raise self._too_large(f"sent more than {self._limits.options.max_bytes} bytes")
        if self.size >= self._next_space_check:
            self._check_space(len(data))
            self._next_space_check = self.size + SPACE_CHECK_BYTES
        try:
            self._file.write(data)
        except OSError as exc:
            raise _local_error(exc, self.path) from exc
        self._limits.check_deadline(self._url)

    def _too_large(self, what: str) -> TooLarge:
        return TooLarge(
            f"the file at {shown_url(self._url)} {what}; the limit is MAX_DOWNLOAD_BYTES "
            f"({self._limits.options.max_bytes} bytes)"
        )

    def _check_space(self, incoming: int) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if free - incoming < self._limits.options.min_free_bytes:
            raise TooLarge(
                f"not enough free space in the work folder to download {shown_url(self._url)}: "
                f"{free} bytes free, and MIN_FREE_TMP_BYTES "
                f"({self._limits.options.min_free_bytes}) "
                "must stay free; raise the function's ephemeral storage or fetch a smaller file"
            )


class _Retry(Exception):
    """A transient failure; ``error`` is raised once no attempt is left."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


def _with_retries(operation: Callable[[], T], limits: Limits, url: str) -> T:
    """Run ``operation``, again after a backoff when it raises ``_Retry``.

    Only transient failures (connection resets, 5xx, throttling) raise ``_Retry``;
    4xx answers are final. Backoff doubles and never sleeps past the deadline.
    """
    attempt = 0
    while True:
        try:
            return operation()
        except _Retry as retry:
            delay = BACKOFF_SECONDS * 2**attempt
            if attempt >= limits.options.retries or limits.remaining() <= delay:
                raise retry.error from retry.__cause__
            attempt += 1
            logger.warning(
                "retrying %s in %.1f s (attempt %d of %d): %s",
                redact_url(url),
                delay,
                attempt + 1,
                limits.options.retries + 1,
                retry.error.message,
            )
            time.sleep(delay)


class _Watchdog:
    """Shuts down the sockets of one attempt once the download's deadline has passed.

    Socket timeouts bound each read, not their sum: a server that sends one byte of
    its status line, headers, TLS handshake or FTP reply just before every timeout
    would otherwise hold the download far past DOWNLOAD_DEADLINE_SECONDS. A shutdown
    wakes the blocked read in the downloading thread, which then reports the deadline.
    """

    def __init__(self, limits: Limits) -> None:
        self.fired = False
        self._lock = threading.Lock()
        # Duplicates of watched sockets: they stay valid when TLS wraps (and detaches)
        # the original, and their descriptors cannot be reused while we hold them.
        self._sockets: list[socket.socket] = []
        self._getters: list[Callable[[], socket.socket | None]] = []
        self._limits = limits
        self._timer = threading.Timer(max(limits.remaining(), 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets, self._getters = self._sockets, [], []
        for sock in sockets:
            sock.close()

    def watch(self, target: socket.socket | Callable[[], socket.socket | None]) -> None:
        """Watch a socket, or a getter read when the deadline passes (for sockets that
        are created inside a library call that may itself stall)."""
        with self._lock:
            if isinstance(target, socket.socket):
                try:
                    # fromfd, not dup(): a TLS socket cannot be duplicated as such.
                    self._sockets.append(socket.fromfd(target.fileno(), target.family, target.type))
                except OSError:
                    return
            else:
                self._getters.append(target)
            fired = self.fired
        if fired:
            self._fire()

    def _expire(self) -> None:
        # A timer may wake a hair early; the error paths test remaining() <= 0.
        time.sleep(max(self._limits.remaining(), 0.0))
        self._fire()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            found = [*self._sockets, *(getter() for getter in self._getters)]
        for sock in found:
            if sock is None:
                continue
            # The plain socket method: on a TLS socket it cuts the connection without
            # the TLS close exchange, which a stalled peer would not answer.
            with suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


# --------------------------------------------------------------------------- downloaders


class Downloader:
    """One source. ``fetch`` writes the object at ``url`` to ``dest`` within ``limits``."""

    source = ""

    def __init__(self, options: DownloadOptions, policy: UrlPolicy) -> None:
        self.options = options
        self.policy = policy

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        raise NotImplementedError


# ---- HTTP(S)


class PinnedAddressAdapter(HTTPAdapter):
    """An HTTPAdapter that connects to an address the URL policy already checked.

    The pool is keyed by that IP, so urllib3 never resolves the host name again,
    while TLS keeps the URL's host name for SNI and certificate verification.
    """

    def __init__(self, address: IPAddress, watchdog: _Watchdog | None = None) -> None:
        super().__init__(pool_connections=1, pool_maxsize=1, max_retries=0)
        self.address = address
        self.watchdog = watchdog

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Any = None,
        cert: Any = None,
    ) -> Any:
        pool = super().get_connection_with_tls_context(request, verify, proxies, cert)
        if self.watchdog is not None and not getattr(pool.ConnectionCls, "watchdog", None):
            pool.ConnectionCls = _watched_connection(pool.ConnectionCls, self.watchdog)
        return pool

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert
        )
        hostname = host_params["host"]
        host_params["host"] = str(self.address)
        if host_params["scheme"] == "https":
            pool_kwargs["server_hostname"] = hostname
            pool_kwargs["assert_hostname"] = hostname
        return host_params, pool_kwargs


def _watched_connection(base: type, watchdog: _Watchdog) -> type:
    """``base`` (a urllib3 connection class) with its socket handed to ``watchdog``.

    The socket is taken as soon as it is connected, so the deadline also covers the
    TLS handshake, the status line and the headers.
    """

    class WatchedConnection(base):  # type: ignore[valid-type, misc]
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            watchdog.watch(sock)
            return sock

    WatchedConnection.watchdog = watchdog  # type: ignore[attr-defined]
    return WatchedConnection


class _Inflater:
    """Undoes gzip/deflate Content-Encoding piece by piece, so the cap counts decoded bytes."""

    def __init__(self, url: str) -> None:
        # 32 + MAX_WBITS: accept a gzip or a zlib header.
        self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
        self._url = url

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                if self._inflater.eof:
                    # RFC 1952 2.2: a gzip body may be several members in a row; zero
                    # padding after the last one is tolerated, as gzip(1) does.
                    data = data.lstrip(b"\0")
                    if not data:
                        return
                    self._inflater = zlib.decompressobj(32 + zlib.MAX_WBITS)
                piece = self._inflater.decompress(data, CHUNK_BYTES)
                if piece:
                    yield piece
                inflater = self._inflater
                data = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
        except zlib.error as exc:
            raise UpstreamError(
                f"the compressed body of {shown_url(self._url)} is corrupt"
            ) from exc

    def finish(self) -> None:
        if not self._inflater.eof:
            raise UpstreamError(f"the compressed body of {shown_url(self._url)} ended early")


class _Identity:
    def decode(self, data: bytes) -> Iterator[bytes]:
        yield data

    def finish(self) -> None:
        return None


def _decoder(response: requests.Response, url: str) -> _Inflater | _Identity:
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return _Identity()
    if encoding in ("gzip", "x-gzip", "deflate"):
        return _Inflater(url)
    raise UpstreamError(
        f"{shown_url(url)} was sent with Content-Encoding '{encoding[:40]}'; only gzip and "
        "deflate are decoded"
    )


def _content_length(response: requests.Response) -> int | None:
    value = response.headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def _set_read_timeout(response: requests.Response, seconds: float) -> None:
    """Bound the next socket read by ``seconds``, so a stalled body cannot pass the deadline."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class HttpDownloader(Downloader):
    """Plain HTTP(S), presigned S3/R2 URLs included.

    Redirects are followed here, not by requests, so that every hop passes the URL
    policy again and connects to the address that was checked.
    """

    source = "http"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        current = url
        for hop in range(limits.options.max_redirects + 1):
            try:
                endpoint = self.policy.check_url(current)
            except InvalidUrl as exc:
                if hop == 0:
                    raise
                # The server chose this URL, not the caller: a 400 would blame the request.
                raise UpstreamError(
                    f"{shown_url(url)} redirected to an invalid URL: {exc.message}"
                ) from None
            attempt = partial(self._attempt, current, endpoint, dest, limits)
            location = _with_retries(attempt, limits, current)
            if location is None:
                return dest
            current = self._next_hop(current, location)
        raise UpstreamError(
            f"{shown_url(url)} redirected more than MAX_REDIRECTS "
            f"({limits.options.max_redirects}) times"
        )

    def _next_hop(self, current: str, location: str) -> str:
        try:
            target = urljoin(current, location.strip())
            scheme = urlsplit(target).scheme.lower()
        except ValueError:
            raise UpstreamError(
                f"{shown_url(current)} redirects to a Location that cannot be parsed"
            ) from None
        if scheme not in ("http", "https"):
            raise BlockedByPolicy(
                f"{shown_url(current)} redirects to a {scheme}: URL; only http and https "
                "redirects are followed"
            )
        logger.info("following redirect from %s to %s", redact_url(current), redact_url(target))
        return target

    def _attempt(self, url: str, endpoint: Endpoint, dest: Path, limits: Limits) -> str | None:
        """One request; the redirect target, or None once the body is on disk."""
        with requests.Session() as session, _Watchdog(limits) as watchdog:
            session.trust_env = False  # no proxies or netrc: connect to the checked address
            adapter = PinnedAddressAdapter(endpoint.addresses[0], watchdog)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            response = self._send(session, url, endpoint, limits)
            with response:
                if response.status_code in _REDIRECT_STATUSES and "Location" in response.headers:
                    return response.headers["Location"]
                _check_status(response, url)
                _copy_body(response, dest, limits, url)
                if watchdog.fired:
                    # The shutdown may have ended a body without a declared length early.
                    raise limits.deadline_error(url)
                return None

    def _send(
        self, session: requests.Session, url: str, endpoint: Endpoint, limits: Limits
    ) -> requests.Response:
        headers = {
            "Host": endpoint.host_header,
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
            # Ask for the bytes as stored; a server that compresses anyway is decoded.
            "Accept-Encoding": "identity",
        }
        timeout = (limits.connect_timeout_now(url), limits.read_timeout_now(url))
        try:
            return session.get(
                url,
                headers=headers,
                stream=True,
                allow_redirects=False,
                timeout=timeout,
                verify=self.options.ca_bundle or True,
            )
        except requests.RequestException as exc:
            raise _requests_error(exc, url, endpoint, limits) from _safe_cause(exc, url)
        except ValueError:
            # requests parses a redirect's Location even when it does not follow it.
            raise UpstreamError(
                f"{shown_url(url)} answered with a header that cannot be parsed "
                "(e.g. an invalid Location)"
            ) from None


def _requests_error(
    exc: requests.RequestException, url: str, endpoint: Endpoint, limits: Limits
) -> Exception:
    where = f"{endpoint.host}:{endpoint.port}"
    if limits.remaining() <= 0:
        # The watchdog cut the connection; whatever broke, the deadline is the cause.
        return limits.deadline_error(url)
    if isinstance(exc, requests.exceptions.SSLError):
        detail = "its certificate could not be verified" if "verif" in str(exc) else "TLS failed"
        return UpstreamError(
            f"HTTPS connection to {where} failed: {detail} (for a private CA set "
            "REQUESTS_CA_BUNDLE)"
        )
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return limits.timeout_error(url, "connect")
    if isinstance(exc, requests.exceptions.Timeout):
        return limits.timeout_error(url, "read")
    if isinstance(exc, requests.exceptions.ConnectionError):
        return _Retry(UpstreamError(f"could not connect to {where} or the connection broke"))
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return InvalidUrl(f"{shown_url(url)} is not a valid HTTP URL")
    return UpstreamError(f"the request to {where} failed ({type(exc).__name__})")


def _check_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status in (200, 203):
        return
    if status in (404, 410):
        raise NotFound(f"{shown_url(url)} answered HTTP {status}: there is no file at that URL")
    if status in (401, 403, 407):
        raise Forbidden(
            f"{shown_url(url)} answered HTTP {status}: access refused; the URL needs valid "
            "credentials or a fresh signature"
        )
    if status in _RETRY_STATUSES or status >= 500:
        raise _Retry(UpstreamError(f"{shown_url(url)} answered HTTP {status}"))
    raise UpstreamError(f"{shown_url(url)} answered HTTP {status}; expected 200")


def _copy_body(response: requests.Response, dest: Path, limits: Limits, url: str) -> None:
    decoder = _decoder(response, url)
    with _Sink(dest, limits, url) as sink:
        # A declared length only tells the file size when nothing is encoded.
        sink.expect(_content_length(response) if isinstance(decoder, _Identity) else None)
        while True:
            _set_read_timeout(response, limits.read_timeout_now(url))
            try:
                # read1 returns after one socket read, so the deadline is checked often.
                data = response.raw.read1(CHUNK_BYTES, decode_content=False)
            except ReadTimeoutError as exc:
                raise limits.timeout_error(url, "read") from _safe_cause(exc, url)
            except (Urllib3Error, OSError) as exc:
                if limits.remaining() <= 0:
                    raise limits.deadline_error(url) from _safe_cause(exc, url)
                error = UpstreamError(
                    f"the connection for {shown_url(url)} broke after {sink.size} bytes"
                )
                raise _Retry(error) from _safe_cause(exc, url)
            if not data:
                break
            for piece in decoder.decode(data):
                sink.write(piece)
        decoder.finish()


# ---- FTP(S)


def _ssl_context(bundle: str | None) -> ssl.SSLContext:
    if bundle and Path(bundle).is_dir():
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle or None)


def _reply_code(exc: BaseException) -> str:
    """The three-digit code of an FTP reply; its text is the server's, never repeated."""
    code = str(exc).strip()[:3]
    return code if len(code) == 3 and code.isdigit() else "an unreadable reply"


def _ftp_error(exc: BaseException, url: str, limits: Limits) -> Exception:
    code = _reply_code(exc)
    if limits.remaining() <= 0 and not isinstance(exc, (ftplib.error_perm, ftplib.error_temp)):
        # The watchdog cut the connection; whatever broke, the deadline is the cause.
        return limits.deadline_error(url)
    if isinstance(exc, ftplib.error_perm):
        if code == "550":
            return NotFound(
                f"the FTP server has no file at {shown_url(url)} (reply 550); check the path"
            )
        if code in ("530", "532"):
            return Forbidden(
                f"the FTP server refused the login for {shown_url(url)} (reply {code}); check "
                "the user name and password in the URL"
            )
        return UpstreamError(
            f"the FTP server refused the transfer of {shown_url(url)} (reply {code})"
        )
    if isinstance(exc, ftplib.error_temp):
        # 4xx FTP replies are transient by definition (RFC 959).
        return _Retry(
            UpstreamError(
                f"the FTP server could not serve {shown_url(url)} for now (reply {code}); "
                "try again later"
            )
        )
    if isinstance(exc, TimeoutError):
        return limits.timeout_error(url, "read")
    if isinstance(exc, ssl.SSLError):
        return UpstreamError(
            f"FTPS for {shown_url(url)} failed: the server's certificate could not be verified "
            "or TLS failed (for a private CA set REQUESTS_CA_BUNDLE)"
        )
    if isinstance(exc, (ftplib.error_reply, ftplib.error_proto)):
        return UpstreamError(f"the FTP server sent an unexpected reply for {shown_url(url)}")
    return _Retry(UpstreamError(f"the FTP connection for {shown_url(url)} failed or broke"))


class FtpDownloader(Downloader):
    """FTP in passive mode, anonymous unless the URL has a user; ftps:// is explicit TLS.

    The control connection goes to the checked address. ftplib ignores the address in
    the server's PASV reply and opens data connections to that same peer, so a server
    cannot point them elsewhere.
    """

    source = "ftp"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        parts = split_url(url)
        request = ftp_target(parts)
        endpoint = self.policy.check_url(url)
        attempt = partial(self._attempt, url, request, endpoint, dest, limits)
        _with_retries(attempt, limits, url)
        return dest

    def _attempt(
        self, url: str, request: FtpTarget, endpoint: Endpoint, dest: Path, limits: Limits
    ) -> None:
        ftp = (
            ftplib.FTP_TLS(context=_ssl_context(self.options.ca_bundle))
            if request.tls
            else ftplib.FTP()
        )
        try:
            with _Watchdog(limits) as watchdog:
                # ftplib creates the control socket and reads the greeting in one call.
                watchdog.watch(lambda: ftp.sock)
                _ftp_connect(ftp, endpoint, limits, url)
                watchdog.watch(ftp.sock)
                _ftp_login(ftp, request, limits, url)
                _guard_data_port(ftp, self.policy)
                self._retrieve(ftp, request, dest, limits, url, watchdog)
        except ftplib.all_errors as exc:
            raise _ftp_error(exc, url, limits) from _safe_cause(exc, url)
        finally:
            ftp.close()

    def _retrieve(
        self,
        ftp: ftplib.FTP,
        request: FtpTarget,
        dest: Path,
        limits: Limits,
        url: str,
        watchdog: _Watchdog,
    ) -> None:
        with _Sink(dest, limits, url) as sink:
            sink.expect(_ftp_size(ftp, request.path))
            with closing(ftp.transfercmd(f"RETR {request.path}")) as data_connection:
                watchdog.watch(data_connection)
                while True:
                    data_connection.settimeout(limits.read_timeout_now(url))
                    data = data_connection.recv(CHUNK_BYTES)
                    if not data:
                        break
                    sink.write(data)
            ftp.sock.settimeout(limits.read_timeout_now(url))
            ftp.voidresp()


def _ftp_connect(ftp: ftplib.FTP, endpoint: Endpoint, limits: Limits, url: str) -> None:
    try:
        ftp.connect(str(endpoint.addresses[0]), endpoint.port, limits.connect_timeout_now(url))
    except TimeoutError as exc:
        raise limits.timeout_error(url, "connect") from exc
    except OSError as exc:
        error = UpstreamError(f"could not connect to the FTP server {endpoint.host_header}")
        raise _Retry(error) from exc
    # TLS verifies the name in the URL; data connections still go to the peer address.
    ftp.host = endpoint.host


def _ftp_login(ftp: ftplib.FTP, request: FtpTarget, limits: Limits, url: str) -> None:
    ftp.sock.settimeout(limits.read_timeout_now(url))
    if request.user:
        ftp.login(request.user, request.password)
    else:
        ftp.login()
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()
    ftp.set_pasv(True)
    ftp.voidcmd("TYPE I")


def _guard_data_port(ftp: ftplib.FTP, policy: UrlPolicy) -> None:
    """Refuse a PASV reply whose port is the Lambda Runtime API's.

    ftplib keeps the control connection's peer as the data address, but the port is
    the server's choice: a hostile server on an admitted loopback address could name
    the Runtime API's port.
    """
    chosen = ftp.makepasv

    def makepasv() -> tuple[str, int]:
        host, port = chosen()
        policy.check_data_port(ipaddress.ip_address(host.split("%", 1)[0]), port)
        return host, port

    ftp.makepasv = makepasv  # type: ignore[method-assign]


def _ftp_size(ftp: ftplib.FTP, path: str) -> int | None:
    """The size the server reports, or None: SIZE is optional (RFC 3659)."""
    try:
        return ftp.size(path)
    except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply, ValueError):
        # A missing file also fails SIZE with 550; RETR reports it properly.
        return None


# ---- S3 and R2


def _s3_failure(error: ServiceError, limits: Limits, url: str) -> Exception:
    """``error`` of ``s3_store`` as this download sees it: a timeout of its budget,
    a transient failure to retry, or final."""
    kind = s3_store.failure_kind(error.__cause__)
    if kind == s3_store.CONNECT_TIMEOUT:
        return limits.timeout_error(url, "connect")
    if kind == s3_store.READ_TIMEOUT:
        return limits.timeout_error(url, "read")
    if kind in s3_store.TRANSIENT:
        return _Retry(error)
    return error


def _get_object(s3: Any, location: ObjectLocation, dest: Path, limits: Limits, url: str) -> None:
    ref = s3_store.ObjectRef(
        location.bucket, location.key, location.version_id, store=location.source.upper()
    )
    limits.check_deadline(url)
    with _Sink(dest, limits, url) as sink:
        try:
            s3_store.get_object(s3, ref, sink, partial(limits.read_timeout_now, url))
        except ServiceError as error:
            raise _s3_failure(error, limits, url) from error.__cause__


class S3Downloader(Downloader):
    """S3 with the function's own credentials (its role), or S3_ENDPOINT_URL if set."""

    source = "s3"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        location = parse_object_url(url, self.source, self.options.endpoints)
        self.policy.check_bucket(location.bucket)
        s3 = self._client(location)
        _with_retries(partial(_get_object, s3, location, dest, limits, url), limits, url)
        return dest

    def _client(self, location: ObjectLocation) -> Any:
        return s3_store.client(self.options.s3_config(), location.region)


class R2Downloader(S3Downloader):
    """Cloudflare R2 through its S3 API, signed (SigV4, region ``auto``) with the R2 keys only."""

    source = "r2"

    def _client(self, location: ObjectLocation) -> Any:
        key_id, secret = self.options.r2_access_key_id, self.options.r2_secret_access_key
        if not key_id or not secret:
            raise SourceNotConfigured(
                "this deployment does not read R2: it has no R2 keys (R2_ACCESS_KEY_ID, "
                "R2_SECRET_ACCESS_KEY); send an S3, FTP or HTTP(S) URL, or a presigned R2 URL"
            )
        config = self.options.s3_config()
        return s3_store.client(config, "auto", location.endpoint_url, (key_id, secret))


DOWNLOADERS: dict[str, type[Downloader]] = {
    "s3": S3Downloader,
    "r2": R2Downloader,
    "ftp": FtpDownloader,
    "http": HttpDownloader,
}


# --------------------------------------------------------------------------- entry point


def _new_download_path(dest_dir: Path) -> Path:
    """A fresh file name of ours; nothing in the URL or the response chooses it."""
    dest = dest_dir / f"download-{secrets.token_hex(8)}.dcm"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _local_error(exc, dest) from exc
    return dest


def fetch(
    url: str,
    dest_dir: Path,
    options: DownloadOptions,
    policy: UrlPolicy,
    storage_type: str = "auto",
    deadline_seconds: float | None = None,
) -> Path:
    """Download ``url`` into a new file in ``dest_dir`` and return the file's path.

    The source is chosen by ``url_policy.source_type``; ``policy`` decides which hosts
    and buckets may be read. ``deadline_seconds`` can only shorten
    ``options.deadline_seconds`` (e.g. to end before the invocation would be stopped).
    Raises only ``errors.ServiceError`` types; on failure no partial file is left behind.
    """
    source = source_type(url, storage_type, options.endpoints)
    limits = Limits.from_options(options, deadline_seconds)
    dest = _new_download_path(Path(dest_dir))
    started = time.monotonic()
    logger.info("fetching %s from %s", redact_url(url), source)
    try:
        DOWNLOADERS[source](options, policy).fetch(url, dest, limits)
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, ServiceError):
            logger.warning("fetching %s failed: %s: %s", redact_url(url), exc.code, exc.message)
        raise
    logger.info(
        "fetched %s: %d bytes in %.2f s",
        redact_url(url),
        dest.stat().st_size,
        time.monotonic() - started,
    )
    return dest
