"""Fetch a file named by URL into a work folder: S3, Cloudflare R2, FTP(S) or HTTP(S).

This module is the function's only door to the outside world. Its parts, in the
manner of requests' transport adapters:

* ``DOWNLOADERS`` maps each source to a ``Downloader`` with one method,
  ``fetch(url, dest, limits) -> Path``; ``url_policy.source_type`` picks the source;
* every downloader is given the ``UrlPolicy`` (an argument, never a global): the FTP
  and HTTP downloaders connect to exactly the addresses it checked, so a second DNS
  answer cannot swap the target (DNS rebinding), and every redirect hop is checked;
* ``DownloadOptions`` carries what the operator configured; ``Limits`` is the size,
  free-space, time and retry budget of one download, with its deadline (both in
  ``download_limits``, shared with ``ranged_reads``);
* every download also names the version it got, a ``SourceIdentity`` (S3 ETag and
  VersionId, HTTP ETag or Last-Modified, FTP MDTM and SIZE, else the bytes' sha256);
  ``probe`` asks the source for it without downloading.

Errors of requests and ftplib are translated into ``errors`` types here, those of
botocore in ``s3_store``. Messages and logs show URLs only through
``service_log.shown_url`` / ``redact_url``. boto3 is imported by the S3 and R2
downloaders alone, so an HTTP download does not pay for it at cold start.
"""

from __future__ import annotations

import ftplib
import hashlib
import ipaddress
import logging
import secrets
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

import s3_store
from download_limits import (
    CHUNK_BYTES,
    DownloadOptions,
    Limits,
    Retry,
    Sink,
    Watchdog,
    local_error,
    safe_cause,
    with_retries,
)
from errors import (
    BlockedByPolicy,
    Forbidden,
    InvalidUrl,
    NotFound,
    ServiceError,
    SourceNotConfigured,
    UpstreamError,
)
from service_log import redact_url, shown_url
from url_policy import (
    Endpoint,
    FtpTarget,
    IPAddress,
    ObjectLocation,
    UrlPolicy,
    ftp_target,
    parse_object_url,
    source_type,
    split_url,
)

logger = logging.getLogger("file_downloader")

USER_AGENT = "dicom-to-jpg-converter/1.0"

__all__ = [
    "DOWNLOADERS",
    "Download",
    "DownloadOptions",
    "Limits",
    "SourceIdentity",
    "download",
    "fetch",
    "probe",
]

# --------------------------------------------------------------------------- identity

# Longer validators are hashed: the value travels into ETags and logs.
MAX_VALIDATOR_CHARS = 200


@dataclass(frozen=True)
class SourceIdentity:
    """What names one version of a source object, for caches and ETags.

    ``kind`` says where it comes from: "s3" (ETag + VersionId, S3 and R2), "http-etag",
    "http-modified" (Last-Modified + length), "ftp" (MDTM + SIZE) or "sha256" (the
    content hash of a whole download). ``value`` is the source's validator, never a
    credential or a URL query value.
    """

    kind: str
    value: str
    size: int | None = None

    def token(self) -> str:
        return f"{self.kind}:{self.value}:{'' if self.size is None else self.size}"


def _validator(text: str) -> str:
    text = text.strip()
    if len(text) > MAX_VALIDATOR_CHARS or not text.isprintable():
        return "sha256-" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    return text


def http_identity(headers: Mapping[str, str], size: int | None) -> SourceIdentity | None:
    """The identity an HTTP answer gives: its ETag, else Last-Modified with the size."""
    etag = headers.get("ETag", "").strip()
    if etag:
        return SourceIdentity("http-etag", _validator(etag), size)
    modified = headers.get("Last-Modified", "").strip()
    if modified and size is not None:
        return SourceIdentity("http-modified", _validator(modified), size)
    return None


def s3_identity(answer: Mapping[str, Any]) -> SourceIdentity | None:
    """The identity of an S3 or R2 object from a GetObject/HeadObject answer."""
    etag = str(answer.get("ETag") or "").strip()
    if not etag:
        return None
    version = str(answer.get("VersionId") or "")
    length = answer.get("ContentLength")
    size = length if isinstance(length, int) and "ContentRange" not in answer else None
    return SourceIdentity("s3", _validator(f"{etag}/{version}"), size)


def hashed_identity(sink: Sink) -> SourceIdentity | None:
    if sink.digest is None:
        return None
    return SourceIdentity("sha256", sink.digest.hexdigest(), sink.size)


@dataclass(frozen=True)
class Download:
    """A whole download: the file, the source's identity, and the bytes transferred."""

    path: Path
    identity: SourceIdentity
    size: int


# --------------------------------------------------------------------------- downloaders


class Downloader:
    """One source. ``fetch`` writes the object at ``url`` to ``dest`` within ``limits``
    and leaves the source's identity in ``identity``; ``probe`` asks for it alone."""

    source = ""

    def __init__(self, options: DownloadOptions, policy: UrlPolicy) -> None:
        self.options = options
        self.policy = policy
        self.identity: SourceIdentity | None = None

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        raise NotImplementedError

    def probe(self, url: str, limits: Limits) -> SourceIdentity | None:
        raise NotImplementedError


# ---- HTTP(S)


class PinnedAddressAdapter(HTTPAdapter):
    """An HTTPAdapter that connects to an address the URL policy already checked.

    The pool is keyed by that IP, so urllib3 never resolves the host name again,
    while TLS keeps the URL's host name for SNI and certificate verification.
    """

    def __init__(self, address: IPAddress, watchdog: Watchdog | None = None) -> None:
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


def _watched_connection(base: type, watchdog: Watchdog) -> type:
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


def set_read_timeout(response: requests.Response, seconds: float) -> None:
    """Bound the next socket read by ``seconds``, so a stalled body cannot pass the deadline."""
    connection = getattr(response.raw, "connection", None)
    sock = getattr(connection, "sock", None)
    if sock is not None:
        sock.settimeout(seconds)


REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class HttpDownloader(Downloader):
    """Plain HTTP(S), presigned S3/R2 URLs included.

    Redirects are followed here, not by requests, so that every hop passes the URL
    policy again and connects to the address that was checked.
    """

    source = "http"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        self.follow(url, limits, partial(self._attempt, dest=dest, limits=limits))
        return dest

    def probe(self, url: str, limits: Limits) -> SourceIdentity | None:
        self.follow(url, limits, partial(self._head, limits=limits))
        return self.identity

    def follow(
        self, url: str, limits: Limits, attempt: Callable[[str, Endpoint], str | None]
    ) -> str:
        """Run ``attempt`` on ``url`` and on each redirect target it returns, every hop
        checked by the policy; returns the URL that answered."""
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
            location = with_retries(partial(attempt, current, endpoint), limits, current)
            if location is None:
                return current
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
        with pinned_session(endpoint, limits) as (session, watchdog):
            response = send_request(session, "GET", url, endpoint, limits, self.options)
            with response:
                if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                    return response.headers["Location"]
                check_status(response, url)
                self.identity = save_whole_answer(response, dest, limits, url, watchdog).identity
                return None

    def _head(self, url: str, endpoint: Endpoint, limits: Limits) -> str | None:
        """One HEAD request; the redirect target, or None once the validators are read."""
        with pinned_session(endpoint, limits) as (session, _watchdog):
            response = send_request(session, "HEAD", url, endpoint, limits, self.options)
            with response:
                if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                    return response.headers["Location"]
                if response.status_code in (405, 501):
                    # HEAD is optional for a server (RFC 9110 9.3.2): no validator known.
                    return None
                check_status(response, url)
                self.identity = http_identity(response.headers, _whole_length(response))
                return None


@contextmanager
def pinned_session(
    endpoint: Endpoint, limits: Limits
) -> Iterator[tuple[requests.Session, Watchdog]]:
    """A session that connects only to ``endpoint``'s checked address, under a watchdog."""
    with requests.Session() as session, Watchdog(limits) as watchdog:
        session.trust_env = False  # no proxies or netrc: connect to the checked address
        adapter = PinnedAddressAdapter(endpoint.addresses[0], watchdog)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        yield session, watchdog


def send_request(
    session: requests.Session,
    method: str,
    url: str,
    endpoint: Endpoint,
    limits: Limits,
    options: DownloadOptions,
    extra: Mapping[str, str] | None = None,
) -> requests.Response:
    """One request of ours (no redirects followed); failures become ``errors`` types."""
    headers = {
        "Host": endpoint.host_header,
        "User-Agent": USER_AGENT,
        "Accept": "*/*",
        # Ask for the bytes as stored; a server that compresses anyway is decoded.
        "Accept-Encoding": "identity",
        **(extra or {}),
    }
    timeout = (limits.connect_timeout_now(url), limits.read_timeout_now(url))
    try:
        return session.request(
            method,
            url,
            headers=headers,
            stream=True,
            allow_redirects=False,
            timeout=timeout,
            verify=options.ca_bundle or True,
        )
    except requests.RequestException as exc:
        raise _requests_error(exc, url, endpoint, limits) from safe_cause(exc, url)
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
        return Retry(UpstreamError(f"could not connect to {where} or the connection broke"))
    if isinstance(exc, (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema)):
        return InvalidUrl(f"{shown_url(url)} is not a valid HTTP URL")
    return UpstreamError(f"the request to {where} failed ({type(exc).__name__})")


def check_status(response: requests.Response, url: str) -> None:
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
        raise Retry(UpstreamError(f"{shown_url(url)} answered HTTP {status}"))
    raise UpstreamError(f"{shown_url(url)} answered HTTP {status}; expected 200")


def _whole_length(response: requests.Response) -> int | None:
    """The object's size by a whole answer's Content-Length (unknown when encoded)."""
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    return _content_length(response) if encoding in ("", "identity") else None


def save_whole_answer(
    response: requests.Response, dest: Path, limits: Limits, url: str, watchdog: Watchdog
) -> Download:
    """The body of a whole (200) answer in ``dest``, with the source's identity: its
    validator, else the sha256 of the bytes."""
    identity = http_identity(response.headers, _whole_length(response))
    sink = _copy_body(response, dest, limits, url, digest=identity is None)
    if watchdog.fired:
        # The shutdown may have ended a body without a declared length early.
        raise limits.deadline_error(url)
    if identity is None and sink.digest is not None:
        identity = SourceIdentity("sha256", sink.digest.hexdigest(), sink.size)
    if identity is None:
        raise AssertionError("a body without a validator is always hashed")
    return Download(dest, identity, sink.size)


def _copy_body(
    response: requests.Response, dest: Path, limits: Limits, url: str, digest: bool = False
) -> Sink:
    decoder = _decoder(response, url)
    with Sink(dest, limits, url, digest) as sink:
        # A declared length only tells the file size when nothing is encoded.
        sink.expect(_content_length(response) if isinstance(decoder, _Identity) else None)
        while True:
            set_read_timeout(response, limits.read_timeout_now(url))
            try:
                # read1 returns after one socket read, so the deadline is checked often.
                data = response.raw.read1(CHUNK_BYTES, decode_content=False)
            except ReadTimeoutError as exc:
                raise limits.timeout_error(url, "read") from safe_cause(exc, url)
            except (Urllib3Error, OSError) as exc:
                if limits.remaining() <= 0:
                    raise limits.deadline_error(url) from safe_cause(exc, url)
                error = UpstreamError(
                    f"the connection for {shown_url(url)} broke after {sink.size} bytes"
                )
                raise Retry(error) from safe_cause(exc, url)
            if not data:
                break
            for piece in decoder.decode(data):
                sink.write(piece)
        decoder.finish()
    return sink


# ---- FTP(S)


def _ssl_context(bundle: str | None) -> ssl.SSLContext:
    if bundle and Path(bundle).is_dir():
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle or None)


def _reply_code(exc: BaseException) -> str:
    """The three-digit code of an FTP reply; its text is the server's, never repeated."""
    code = str(exc).strip()[:3]
    return code if len(code) == 3 and code.isdigit() else "an unreadable reply"


def ftp_error(exc: BaseException, url: str, limits: Limits) -> Exception:
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
        return Retry(
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
    return Retry(UpstreamError(f"the FTP connection for {shown_url(url)} failed or broke"))


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
        with_retries(attempt, limits, url)
        return dest

    def _attempt(
        self, url: str, request: FtpTarget, endpoint: Endpoint, dest: Path, limits: Limits
    ) -> None:
        ftp = self.new_ftp(request)
        try:
            with Watchdog(limits) as watchdog:
                self.login(ftp, url, request, endpoint, limits, watchdog)
                self._retrieve(ftp, request, dest, limits, url, watchdog)
        except ftplib.all_errors as exc:
            raise ftp_error(exc, url, limits) from safe_cause(exc, url)
        finally:
            ftp.close()

    def login(
        self,
        ftp: ftplib.FTP,
        url: str,
        request: FtpTarget,
        endpoint: Endpoint,
        limits: Limits,
        watchdog: Watchdog,
    ) -> None:
        """Connect ``ftp`` to the checked address, log in, and guard its data ports."""
        # ftplib creates the control socket and reads the greeting in one call.
        watchdog.watch(lambda: ftp.sock)
        _ftp_connect(ftp, endpoint, limits, url)
        watchdog.watch(ftp.sock)
        _ftp_login(ftp, request, limits, url)
        _guard_data_port(ftp, self.policy)

    def _retrieve(
        self,
        ftp: ftplib.FTP,
        request: FtpTarget,
        dest: Path,
        limits: Limits,
        url: str,
        watchdog: Watchdog,
    ) -> None:
        size = ftp_size(ftp, request.path)
        self.identity = ftp_identity(ftp, request.path, size)
        with Sink(dest, limits, url, digest=self.identity is None) as sink:
            sink.expect(size)
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
        self.identity = self.identity or hashed_identity(sink)

    def probe(self, url: str, limits: Limits) -> SourceIdentity | None:
        request = ftp_target(split_url(url))
        endpoint = self.policy.check_url(url)
        return with_retries(partial(self._probe, url, request, endpoint, limits), limits, url)

    def _probe(
        self, url: str, request: FtpTarget, endpoint: Endpoint, limits: Limits
    ) -> SourceIdentity | None:
        ftp = self.new_ftp(request)
        try:
            with Watchdog(limits) as watchdog:
                self.login(ftp, url, request, endpoint, limits, watchdog)
                return ftp_identity(ftp, request.path, ftp_size(ftp, request.path))
        except ftplib.all_errors as exc:
            raise ftp_error(exc, url, limits) from safe_cause(exc, url)
        finally:
            ftp.close()

    def new_ftp(self, request: FtpTarget) -> ftplib.FTP:
        if request.tls:
            return ftplib.FTP_TLS(context=_ssl_context(self.options.ca_bundle))
        return ftplib.FTP()


def _ftp_connect(ftp: ftplib.FTP, endpoint: Endpoint, limits: Limits, url: str) -> None:
    try:
        ftp.connect(str(endpoint.addresses[0]), endpoint.port, limits.connect_timeout_now(url))
    except TimeoutError as exc:
        raise limits.timeout_error(url, "connect") from exc
    except OSError as exc:
        error = UpstreamError(f"could not connect to the FTP server {endpoint.host_header}")
        raise Retry(error) from exc
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


def ftp_identity(ftp: ftplib.FTP, path: str, size: int | None) -> SourceIdentity | None:
    """MDTM and SIZE (RFC 3659) name a version; both are optional for a server."""
    if size is None:
        return None
    try:
        reply = ftp.sendcmd(f"MDTM {path}")
    except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply):
        return None
    stamp = reply[4:].strip()
    if not reply.startswith("213") or not stamp[:14].isdigit():
        return None
    return SourceIdentity("ftp", stamp[:32], size)


def ftp_size(ftp: ftplib.FTP, path: str) -> int | None:
    """The size the server reports, or None: SIZE is optional (RFC 3659)."""
    try:
        return ftp.size(path)
    except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply, ValueError):
        # A missing file also fails SIZE with 550; RETR reports it properly.
        return None


# ---- S3 and R2


def s3_failure(
    error: ServiceError, limits: Limits, url: str, cause: BaseException | None = None
) -> Exception:
    """``error`` of ``s3_store`` as this download sees it: a timeout of its budget,
    a transient failure to retry, or final. ``cause``: the botocore exception, when
    ``error`` was translated here and not yet raised from it."""
    kind = s3_store.failure_kind(cause or error.__cause__)
    if kind == s3_store.CONNECT_TIMEOUT:
        return limits.timeout_error(url, "connect")
    if kind == s3_store.READ_TIMEOUT:
        return limits.timeout_error(url, "read")
    if kind in s3_store.TRANSIENT:
        return Retry(error)
    return error


def object_ref(location: ObjectLocation) -> s3_store.ObjectRef:
    return s3_store.ObjectRef(
        location.bucket, location.key, location.version_id, store=location.source.upper()
    )


def _get_object(
    s3: Any, location: ObjectLocation, dest: Path, limits: Limits, url: str
) -> SourceIdentity | None:
    ref = object_ref(location)
    limits.check_deadline(url)
    with Sink(dest, limits, url) as sink:
        try:
            answer = s3_store.get_object(s3, ref, sink, partial(limits.read_timeout_now, url))
        except ServiceError as error:
            raise s3_failure(error, limits, url) from error.__cause__
    return s3_identity(answer)


def _head_object(s3: Any, location: ObjectLocation, limits: Limits, url: str) -> dict[str, Any]:
    ref = object_ref(location)
    limits.check_deadline(url)
    try:
        return dict(s3.head_object(**ref.params()))
    except s3_store.error_types() as exc:
        error = s3_store.translate(exc, str(ref), store=ref.store)
        raise s3_failure(error, limits, url, exc) from exc


class S3Downloader(Downloader):
    """S3 with the function's own credentials (its role), or S3_ENDPOINT_URL if set."""

    source = "s3"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        location = self.locate(url)
        s3 = self.client(location)
        get = partial(_get_object, s3, location, dest, limits, url)
        self.identity = with_retries(get, limits, url)
        return dest

    def probe(self, url: str, limits: Limits) -> SourceIdentity | None:
        location = self.locate(url)
        head = partial(_head_object, self.client(location), location, limits, url)
        return s3_identity(with_retries(head, limits, url))

    def locate(self, url: str) -> ObjectLocation:
        """The bucket, key and version the URL names, once the policy admits the bucket."""
        location = parse_object_url(url, self.source, self.options.endpoints)
        self.policy.check_bucket(location.bucket)
        return location

    def client(self, location: ObjectLocation) -> Any:
        return s3_store.client(self.options.s3_config(), location.region)


class R2Downloader(S3Downloader):
    """Cloudflare R2 through its S3 API, signed (SigV4, region ``auto``) with the R2 keys only."""

    source = "r2"

    def client(self, location: ObjectLocation) -> Any:
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


def new_download_path(dest_dir: Path) -> Path:
    """A fresh file name of ours; nothing in the URL or the response chooses it."""
    dest = dest_dir / f"download-{secrets.token_hex(8)}.dcm"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise local_error(exc, dest) from exc
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
    return download(url, dest_dir, options, policy, storage_type, deadline_seconds).path


def download(
    url: str,
    dest_dir: Path,
    options: DownloadOptions,
    policy: UrlPolicy,
    storage_type: str = "auto",
    deadline_seconds: float | None = None,
) -> Download:
    """``fetch``, also returning the source's identity: its validator, or the sha256 of
    the bytes when it gives none."""
    source = source_type(url, storage_type, options.endpoints)
    limits = Limits.from_options(options, deadline_seconds)
    dest = new_download_path(Path(dest_dir))
    started = time.monotonic()
    logger.info("fetching %s from %s", redact_url(url), source)
    downloader = DOWNLOADERS[source](options, policy)
    try:
        downloader.fetch(url, dest, limits)
        size = dest.stat().st_size
        identity = downloader.identity or _file_identity(dest)
    except BaseException as exc:
        dest.unlink(missing_ok=True)
        if isinstance(exc, ServiceError):
            logger.warning("fetching %s failed: %s: %s", redact_url(url), exc.code, exc.message)
        raise
    logger.info("fetched %s: %d bytes in %.2f s", redact_url(url), size, time.monotonic() - started)
    return Download(dest, identity, size)


def _file_identity(path: Path) -> SourceIdentity:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES * 16):
            digest.update(chunk)
    return SourceIdentity("sha256", digest.hexdigest(), path.stat().st_size)


def probe(
    url: str,
    options: DownloadOptions,
    policy: UrlPolicy,
    *,
    storage_type: str = "auto",
    deadline_seconds: float | None = None,
) -> SourceIdentity | None:
    """The source's validator without downloading: HEAD, HeadObject, or FTP MDTM + SIZE.

    None when the source gives none. The same URL policy (every redirect hop), errors,
    retries and deadline apply as for ``fetch``.
    """
    source = source_type(url, storage_type, options.endpoints)
    limits = Limits.from_options(options, deadline_seconds)
    try:
        return DOWNLOADERS[source](options, policy).probe(url, limits)
    except ServiceError as exc:
        logger.warning("probing %s failed: %s: %s", redact_url(url), exc.code, exc.message)
        raise
