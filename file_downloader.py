"""Fetch a file named by URL into a work folder: S3, Cloudflare R2, FTP(S) or HTTP(S).

This module is the function's only door to the outside world, so it is also the
security boundary for URLs that callers send. Its parts, in the manner of requests'
transport adapters:

* ``source_type`` picks the source from the URL, or checks an explicit ``storage_type``;
* ``DOWNLOADERS`` maps each source to a ``Downloader`` with one method,
  ``fetch(url, dest, limits) -> Path``;
* ``UrlPolicy`` decides which hosts and buckets may be read, and returns the addresses
  it checked; the FTP and HTTP downloaders connect to exactly those addresses, so a
  second DNS answer cannot swap the target (DNS rebinding);
* ``Limits`` carries the size, free-space, time and retry budget of one download.

Errors of botocore, requests and ftplib are translated into ``errors`` types where they
happen. Messages and logs show URLs only through ``redact_url``. boto3 is imported by
the S3 and R2 downloaders alone, so an HTTP download does not pay for it at cold start.
"""

from __future__ import annotations

import errno
import ftplib
import ipaddress
import logging
import re
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
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar
from urllib.parse import SplitResult, parse_qs, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from errors import (
    BlockedByPolicy,
    ConfigurationError,
    Forbidden,
    InvalidRequest,
    InvalidUrl,
    NotFound,
    ServiceError,
    TooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from settings import Settings, get_settings

logger = logging.getLogger("file_downloader")

SOURCES = ("s3", "r2", "ftp", "http")
STORAGE_TYPES = ("auto", "s3", "r2", "ftp", "http", "https")

CHUNK_BYTES = 64 * 1024
# Free space is measured again after every this many bytes written.
SPACE_CHECK_BYTES = 1024 * 1024
# First pause between attempts; it doubles on each retry.
BACKOFF_SECONDS = 0.2
MAX_URL_LENGTH = 8192
USER_AGENT = "dicom-to-jpg-converter/1.0"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")


# --------------------------------------------------------------------------- redaction

# Query parameters that authorise a request by themselves (SigV4 and SigV2 presigned URLs).
_SECRET_PARAM_RE = re.compile(
    r"(?i)(?<![\w-])((?:x-amz-signature|signature|x-amz-credential|x-amz-security-token)=)"
    r"[^&#\s'\"]*"
)
# The same values as botocore prints them at DEBUG: headers, canonical requests, signatures.
_SECRET_HEADER_RE = re.compile(r"(?i)(x-amz-security-token['\"]?\s*:\s*b?['\"]?)[^\s'\",}]+")
_SIGNATURE_LINE_RE = re.compile(r"(?i)(\bsignature:\s*)[0-9a-f]{16,}")
# scheme://user:password@ — the password ends at the last "@" before the path.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/?#@\s:]*:)[^/?#\s]*@")


def redact_text(text: str) -> str:
    """``text`` with URL passwords, signatures and session tokens replaced by ``***``."""
    text = _USERINFO_RE.sub(r"\1***@", text)
    text = _SECRET_PARAM_RE.sub(r"\1***", text)
    text = _SECRET_HEADER_RE.sub(r"\1***", text)
    return _SIGNATURE_LINE_RE.sub(r"\1***", text)


def redact_url(url: str) -> str:
    """The URL as it may appear in messages and logs.

    ``ftp://user:pass@host/f`` becomes ``ftp://user:***@host/f``; the values of
    ``X-Amz-Signature``, ``Signature``, ``X-Amz-Credential`` and ``X-Amz-Security-Token``
    become ``***``. Works on text that does not parse as a URL, too.
    """
    return redact_text(str(url))


def _shown(url: str) -> str:
    """A redacted URL short enough for an error message."""
    text = redact_url(url)
    return text if len(text) <= 300 else text[:297] + "..."


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
_REDACTED_LOGGERS = (
    "file_downloader",
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
for _name in _REDACTED_LOGGERS:
    logging.getLogger(_name).addFilter(_REDACTING_FILTER)


def _safe_cause(exc: BaseException, url: str) -> BaseException | None:
    """``exc`` as the cause to chain, or None when its text could reveal a secret.

    requests and urllib3 put the request path and query into their exception text, so
    for a URL that carries a password or signature the cause is left out of the chain.
    """
    return exc if redact_url(url) == url else None


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class Limits:
    """The budget of one download: size, free space, time and attempts."""

    max_bytes: int
    min_free_bytes: int
    connect_timeout: float
    read_timeout: float
    deadline_seconds: float
    retries: int
    max_redirects: int
    # time.monotonic() value at which the download must have finished.
    deadline: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_bytes=settings.max_download_bytes,
            min_free_bytes=settings.min_free_tmp_bytes,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            deadline_seconds=settings.download_deadline_seconds,
            retries=settings.download_retries,
            max_redirects=settings.max_redirects,
            deadline=time.monotonic() + settings.download_deadline_seconds,
        )

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check_deadline(self, url: str) -> float:
        """Seconds left before the deadline; raises ``UpstreamTimeout`` when none are."""
        left = self.remaining()
        if left <= 0:
            raise self.deadline_error(url)
        return left

    def connect_timeout_now(self, url: str) -> float:
        return min(self.connect_timeout, self.check_deadline(url))

    def read_timeout_now(self, url: str) -> float:
        """The socket read timeout for the next read: never past the deadline."""
        return min(self.read_timeout, self.check_deadline(url))

    def deadline_error(self, url: str) -> UpstreamTimeout:
        return UpstreamTimeout(
            f"downloading {_shown(url)} did not finish within DOWNLOAD_DEADLINE_SECONDS "
            f"({self.deadline_seconds:g} s); use a faster source or a smaller file"
        )

    def timeout_error(self, url: str, phase: str) -> UpstreamTimeout:
        """The error for a socket timeout: the deadline's, or the per-phase limit's."""
        if self.remaining() <= 0:
            return self.deadline_error(url)
        if phase == "connect":
            return UpstreamTimeout(
                f"connecting to the host of {_shown(url)} timed out after "
                f"CONNECT_TIMEOUT_SECONDS ({self.connect_timeout:g} s)"
            )
        return UpstreamTimeout(
            f"the source of {_shown(url)} sent nothing for READ_TIMEOUT_SECONDS "
            f"({self.read_timeout:g} s)"
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
        if length > self._limits.max_bytes:
            raise self._too_large(f"is {length} bytes")
        self._check_space(length)

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._limits.max_bytes:
            raise self._too_large(f"sent more than {self._limits.max_bytes} bytes")
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
            f"the file at {_shown(self._url)} {what}; the limit is MAX_DOWNLOAD_BYTES "
            f"({self._limits.max_bytes} bytes)"
        )

    def _check_space(self, incoming: int) -> None:
        free = shutil.disk_usage(self.path.parent).free
        if free - incoming < self._limits.min_free_bytes:
            raise TooLarge(
                f"not enough free space in the work folder to download {_shown(self._url)}: "
                f"{free} bytes free, and MIN_FREE_TMP_BYTES ({self._limits.min_free_bytes}) "
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
            if attempt >= limits.retries or limits.remaining() <= delay:
                raise retry.error from retry.__cause__
            attempt += 1
            logger.warning(
                "retrying %s in %.1f s (attempt %d of %d): %s",
                redact_url(url),
                delay,
                attempt + 1,
                limits.retries + 1,
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


# --------------------------------------------------------------------------- URL parsing

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SCHEMES = ("s3", "r2", "ftp", "ftps", "http", "https")
_HOST_NAME_RE = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
# WHATWG URL: a host whose last label is a number is an IPv4 address in some spelling.
_NUMERIC_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)

_AWS_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
# https://bucket.s3.amazonaws.com, bucket.s3.REGION..., bucket.s3-REGION...
_S3_VIRTUAL_HOST_RE = re.compile(
    rf"^(?P<bucket>.+)\.s3(?:[.-](?:dualstack\.)?(?P<region>{_AWS_REGION}))?"
    r"\.amazonaws\.com(?:\.cn)?$"
)
# https://s3.amazonaws.com/bucket/key, s3.REGION..., s3-REGION...
_S3_PATH_HOST_RE = re.compile(
    rf"^s3(?:[.-](?:dualstack\.)?(?P<region>{_AWS_REGION}))?\.amazonaws\.com(?:\.cn)?$"
)
_R2_SUFFIX = ".r2.cloudflarestorage.com"
_R2_HOST_RE = re.compile(r"^(?P<account>[a-z0-9-]+)(?:\.(?P<jurisdiction>eu|fedramp))?$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{2,254}$", re.IGNORECASE)
_PRESIGNED_PARAMS = ("x-amz-signature", "signature")


def _split(url: str) -> SplitResult:
    """Parse ``url`` once, refusing what no source accepts."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidUrl("field 'url' must be a non-empty string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if _CONTROL_RE.search(url):
        raise InvalidUrl("the URL contains control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise InvalidUrl(f"the URL {_shown(url)} cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidUrl("the URL has no scheme; use s3://, ftp://, ftps://, http:// or https://")
    if scheme not in _SCHEMES:
        raise InvalidUrl(
            f"the URL scheme '{scheme}://' is not supported; use s3://, ftp://, ftps://, "
            "http:// or https:// (r2:// when R2_ENDPOINT_URL is set)"
        )
    if not parts.netloc:
        raise InvalidUrl(f"the URL {_shown(url)} names no host or bucket")
    if "\\" in parts.netloc:
        # urllib3 (like WHATWG parsers) ends the host at a backslash, urlsplit does not:
        # the two would disagree about the port, or the host, the request goes to.
        raise InvalidUrl("the URL's host part contains a backslash; percent-encode it")
    return parts


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default)


def _on_endpoint(parts: SplitResult, endpoint_url: str | None) -> bool:
    """Whether the URL points at an operator-configured S3/R2 endpoint."""
    if not endpoint_url:
        return False
    return _origin(parts.geturl()) == _origin(endpoint_url)


def _is_presigned(parts: SplitResult) -> bool:
    names = {name.lower() for name in parse_qs(parts.query, keep_blank_values=True)}
    return any(name in names for name in _PRESIGNED_PARAMS)


def _detect(parts: SplitResult, settings: Settings) -> str:
    """The source that ``storage_type='auto'`` picks for this URL."""
    scheme = parts.scheme.lower()
    if scheme == "s3":
        return "s3"
    if scheme == "r2":
        if not settings.r2_endpoint_url:
            raise InvalidUrl(
                "r2://bucket/key URLs need R2_ENDPOINT_URL; otherwise use "
                "https://ACCOUNT.r2.cloudflarestorage.com/bucket/key"
            )
        return "r2"
    if scheme in ("ftp", "ftps"):
        return "ftp"
    host = (parts.hostname or "").lower()
    if _is_presigned(parts):
        # A presigned URL carries its own authorisation: reading it with the
        # function's credentials instead would widen what the caller may read.
        return "http"
    if _on_endpoint(parts, settings.s3_endpoint_url):
        return "s3"
    if _on_endpoint(parts, settings.r2_endpoint_url):
        return "r2"
    if _S3_PATH_HOST_RE.match(host) or _S3_VIRTUAL_HOST_RE.match(host):
        return "s3"
    if host.endswith(_R2_SUFFIX):
        return "r2"
    return "http"


def _requested_type(storage_type: str | None) -> str:
    requested = "auto" if storage_type is None else str(storage_type).strip().lower()
    if requested not in STORAGE_TYPES:
        raise InvalidRequest(
            f"field 'storage_type' must be one of auto, s3, r2, ftp, http "
            f"(https is accepted as http); got {str(storage_type)[:40]!r}"
        )
    return "http" if requested == "https" else requested


def _contradiction(requested: str, detected: str, parts: SplitResult) -> InvalidUrl:
    scheme = parts.scheme.lower()
    if requested == "s3" and detected == "http" and _is_presigned(parts):
        why = "the URL is presigned (it carries a Signature), so it is fetched over HTTP"
    elif scheme in ("s3", "r2", "ftp", "ftps"):
        why = f"a {scheme}:// URL is read from {detected.upper()}"
    elif requested == "s3":
        why = (
            "the URL does not name an S3 object (use s3://bucket/key or "
            "https://bucket.s3.amazonaws.com/key)"
        )
    elif requested == "r2":
        why = "the URL does not name an R2 object (use https://ACCOUNT.r2.cloudflarestorage.com/bucket/key)"
    else:
        why = f"an {scheme}:// URL is not read over {requested.upper()}"
    return InvalidUrl(
        f"storage_type '{requested}' contradicts the URL: {why}; "
        f"send storage_type '{detected}' or 'auto'"
    )


def source_type(url: str, storage_type: str = "auto", settings: Settings | None = None) -> str:
    """The source that will serve ``url``: ``"s3"``, ``"r2"``, ``"ftp"`` or ``"http"``.

    Checks the URL's syntax and that an explicit ``storage_type`` agrees with it;
    raises ``InvalidUrl`` (or ``InvalidRequest`` for an unknown ``storage_type``).
    The URL policy (hosts, addresses, buckets) is applied by ``fetch``.
    """
    settings = settings or get_settings()
    requested = _requested_type(storage_type)
    parts = _split(url)
    detected = _detect(parts, settings)
    source = detected
    if requested != "auto" and requested != detected:
        # Any http(s) URL may be read as plain HTTP, e.g. an object in a public bucket.
        if not (requested == "http" and parts.scheme.lower() in ("http", "https")):
            raise _contradiction(requested, detected, parts)
        source = "http"
    if source in ("s3", "r2"):
        parse_object_url(url, source, settings)
    elif source == "ftp":
        _ftp_request(parts)
    return source


@dataclass(frozen=True)
class ObjectLocation:
    """One S3/R2 object: bucket, key, optional version, and where to read it."""

    source: str
    bucket: str
    key: str
    version_id: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def __str__(self) -> str:
        version = f"?versionId={self.version_id}" if self.version_id else ""
        return f"{self.source}://{self.bucket}/{self.key}{version}"


def _version_id(parts: SplitResult) -> str | None:
    values = parse_qs(parts.query, keep_blank_values=True).get("versionId")
    if not values:
        return None
    if len(values) > 1 or not values[0]:
        raise InvalidUrl("the URL must carry at most one non-empty versionId")
    return values[0]


def _path_style(path: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def _key_from_path(path: str) -> str:
    return unquote(path[1:] if path.startswith("/") else path)


def _r2_endpoint(host: str) -> str:
    match = _R2_HOST_RE.match(host[: -len(_R2_SUFFIX)])
    if not match:
        raise InvalidUrl(
            "R2 URLs must have the form https://ACCOUNT.r2.cloudflarestorage.com/bucket/key"
        )
    return f"https://{host}"


def parse_object_url(url: str, source: str, settings: Settings) -> ObjectLocation:
    """Bucket, key and version of an S3 or R2 URL, in any of the supported forms.

    Keys are percent-decoded (write a literal ``%`` as ``%25``); spaces may appear
    as-is or as ``%20``. With S3_ENDPOINT_URL (R2_ENDPOINT_URL) set, every form is read
    through that endpoint and the URL only names the bucket and key.
    """
    parts = _split(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    configured = settings.s3_endpoint_url if source == "s3" else settings.r2_endpoint_url
    region = endpoint = None
    if scheme in ("s3", "r2"):
        if "@" in parts.netloc or ":" in parts.netloc:
            raise InvalidUrl(f"{_shown(url)}: {scheme}:// URLs name a bucket, not a host")
        bucket, key = parts.netloc, _key_from_path(parts.path)
    elif _on_endpoint(parts, configured):
        bucket, key = _path_style(parts.path)
    elif source == "s3" and (match := _S3_PATH_HOST_RE.match(host)):
        bucket, key = _path_style(parts.path)
        region = match["region"]
    elif source == "s3" and (match := _S3_VIRTUAL_HOST_RE.match(host)):
        bucket, key = match["bucket"], _key_from_path(parts.path)
        region = match["region"]
    elif source == "r2" and host.endswith(_R2_SUFFIX):
        endpoint = _r2_endpoint(host)
        bucket, key = _path_style(parts.path)
    else:
        raise InvalidUrl(f"{_shown(url)} does not name an {source.upper()} object")
    if not _BUCKET_RE.match(bucket):
        raise InvalidUrl(f"{_shown(url)}: {bucket[:70]!r} is not a valid bucket name")
    if not key:
        raise InvalidUrl(f"{_shown(url)} names bucket '{bucket}' but no object key")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidUrl("the object key is longer than 1024 bytes")
    return ObjectLocation(
        source=source,
        bucket=bucket,
        key=key,
        version_id=_version_id(parts),
        region=region,
        endpoint_url=configured or endpoint,
    )


# --------------------------------------------------------------------------- URL policy

_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
# IANA: not globally reachable. Older Pythons (before 3.11.10/3.12.4) call most of it
# global, and 192.0.0.192 is a cloud metadata address (Oracle).
_IETF_PROTOCOL_NETWORK = ipaddress.ip_network("192.0.0.0/24")
_NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("fd00:ec2::254"),
}


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_NETWORK:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why the default policy refuses ``address``, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and (inner := _embedded_ipv4(address)):
        reason = blocked_reason(inner)
        return f"an IPv6 form of {inner}, {reason}" if reason else None
    if address in _METADATA_ADDRESSES:
        return "a link-local address of a cloud metadata service"
    checks: tuple[tuple[str, bool], ...] = (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        # fec0::/10: deprecated (RFC 3879) but still routed inside some networks, and
        # not private to the ipaddress module.
        ("a site-local address", getattr(address, "is_site_local", False)),
        ("a shared (carrier-grade NAT) address", address in _SHARED_NETWORK),
        ("an IETF protocol assignment address", address in _IETF_PROTOCOL_NETWORK),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
        ("a private address", address.is_private),
        ("not a public address", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def _resolve_system(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Endpoint:
    """A host the policy admitted, and the addresses to connect to (IPv4 first)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443, "ftp": 21, "ftps": 21}[self.scheme]
        return host if self.port == default else f"{host}:{self.port}"


def _allowed_entries(
    entries: tuple[str, ...],
) -> tuple[frozenset[str], tuple[str, ...], tuple[IPNetwork, ...]]:
    """ALLOWED_HOSTS split into exact names, ``*.suffix`` suffixes and IP networks."""
    names: set[str] = set()
    suffixes: list[str] = []
    networks: list[IPNetwork] = []
    for entry in (e.strip().lower().rstrip(".") for e in entries):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
        except ValueError:
            if entry.startswith("*."):
                suffixes.append(entry[1:])
            else:
                names.add(entry)
    return frozenset(names), tuple(suffixes), tuple(networks)


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts, addresses and buckets callers' URLs may reach.

    With no ALLOWED_HOSTS every host is allowed whose every address is public. With
    ALLOWED_HOSTS, the host must match a name, a ``*.suffix`` or (for an IP host) an
    IP/CIDR entry, and each address must be public or inside an IP/CIDR entry; that is
    how loopback and VPC addresses are admitted, explicitly. ``resolver`` maps
    ``(host, port)`` to address strings; tests may pass their own.
    """

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    buckets: tuple[str, ...] = ()
    resolver: Callable[[str, int], list[str]] = field(default=_resolve_system, compare=False)

    @classmethod
    def from_settings(
        cls, settings: Settings, resolver: Callable[[str, int], list[str]] | None = None
    ) -> UrlPolicy:
        names, suffixes, networks = _allowed_entries(settings.allowed_hosts)
        return cls(
            names=names,
            suffixes=suffixes,
            networks=networks,
            buckets=tuple(settings.allowed_buckets),
            resolver=resolver or _resolve_system,
        )

    @property
    def restricts_hosts(self) -> bool:
        return bool(self.names or self.suffixes or self.networks)

    def check_bucket(self, bucket: str) -> None:
        if self.buckets and not any(fnmatchcase(bucket, pattern) for pattern in self.buckets):
            raise BlockedByPolicy(
                f"bucket '{bucket}' is not in ALLOWED_BUCKETS; the function reads only "
                "the buckets listed there"
            )

    def check_url(self, url: str) -> Endpoint:
        """Admit the host of an FTP or HTTP URL and return the addresses checked."""
        parts = _split(url)
        scheme = parts.scheme.lower()
        if scheme not in ("ftp", "ftps", "http", "https"):
            raise InvalidUrl(f"{_shown(url)} is not an FTP or HTTP URL")
        bracketed = parts.netloc.rpartition("@")[2].startswith("[")
        host = _normalised_host(parts.hostname or "", bracketed)
        default = {"http": 80, "https": 443}.get(scheme, 21)
        port = parts.port or default
        return Endpoint(scheme, host, port, self.check_host(host, port, bracketed=bracketed))

    def check_host(self, host: str, port: int, bracketed: bool = False) -> tuple[IPAddress, ...]:
        """The addresses of ``host`` after every policy rule; raises ``BlockedByPolicy``."""
        literal = _ip_literal(host, bracketed)
        if literal is not None:
            self._check_literal(host, literal, bracketed)
            addresses: tuple[IPAddress, ...] = (literal,)
        else:
            if self.restricts_hosts and not self._name_allowed(host):
                raise BlockedByPolicy(
                    f"host '{host}' is not in ALLOWED_HOSTS; only the hosts listed there "
                    "may be fetched"
                )
            addresses = self._resolve(host, port)
        for address in addresses:
            self._check_address(host, address)
        # Lambda has IPv4 egress everywhere, IPv6 only in dual-stack VPCs.
        return tuple(sorted(addresses, key=lambda a: a.version))

    def _allowed_network(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)

    def _name_allowed(self, host: str) -> bool:
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def _check_literal(self, host: str, address: IPAddress, bracketed: bool) -> None:
        if self._allowed_network(address):
            return
        if bracketed:
            raise BlockedByPolicy(
                f"bracketed IPv6 host [{host}] is refused unless ALLOWED_HOSTS lists the address"
            )
        if self.restricts_hosts:
            raise BlockedByPolicy(f"host {host} is not in ALLOWED_HOSTS")

    def _check_address(self, host: str, address: IPAddress) -> None:
        if self._allowed_network(address):
            return
        reason = blocked_reason(address)
        if reason is None:
            return
        subject = (
            f"host {host} is" if host == str(address) else f"host '{host}' resolves to {address},"
        )
        raise BlockedByPolicy(
            f"{subject} {reason}; the URL policy refuses it unless ALLOWED_HOSTS lists "
            "the address or its network"
        )

    def _resolve(self, host: str, port: int) -> tuple[IPAddress, ...]:
        try:
            found = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise UpstreamError(f"cannot resolve host '{host}': check the URL's host name") from exc
        addresses = {ipaddress.ip_address(text.split("%", 1)[0]) for text in found}
        if not addresses:
            raise UpstreamError(f"host '{host}' has no address")
        return tuple(sorted(addresses, key=lambda a: (a.version, int(a))))


def _normalised_host(host: str, bracketed: bool) -> str:
    """The host in lower-case ASCII without a trailing dot; refuses odd characters."""
    if bracketed:
        return host.lower()
    host = host.lower()
    host = host[:-1] if host.endswith(".") else host
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidUrl(f"host '{host[:70]}' is not a valid international name") from None
    if not _HOST_NAME_RE.match(host):
        raise InvalidUrl(f"host '{host[:70]}' contains characters not allowed in host names")
    return host


def _ip_literal(host: str, bracketed: bool) -> IPAddress | None:
    """The address a host spells literally; refuses IPv4 spellings other than a.b.c.d."""
    if bracketed:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidUrl(f"[{host[:70]}] is not an IPv6 address") from None
    if not _NUMERIC_LABEL_RE.match(host.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise BlockedByPolicy(
            f"host '{host[:70]}' spells an IPv4 address in decimal, octal, hex or short "
            "form; the URL policy accepts only the dotted form a.b.c.d"
        ) from None


# --------------------------------------------------------------------------- downloaders


class Downloader:
    """One source. ``fetch`` writes the object at ``url`` to ``dest`` within ``limits``."""

    source = ""

    def __init__(self, settings: Settings, policy: UrlPolicy | None = None) -> None:
        self.settings = settings
        self.policy = policy or UrlPolicy.from_settings(settings)

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
            raise UpstreamError(f"the compressed body of {_shown(self._url)} is corrupt") from exc

    def finish(self) -> None:
        if not self._inflater.eof:
            raise UpstreamError(f"the compressed body of {_shown(self._url)} ended early")


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
        f"{_shown(url)} was sent with Content-Encoding '{encoding[:40]}'; only gzip and "
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
        for hop in range(limits.max_redirects + 1):
            try:
                endpoint = self.policy.check_url(current)
            except InvalidUrl as exc:
                if hop == 0:
                    raise
                # The server chose this URL, not the caller: a 400 would blame the request.
                raise UpstreamError(
                    f"{_shown(url)} redirected to an invalid URL: {exc.message}"
                ) from None
            attempt = partial(self._attempt, current, endpoint, dest, limits)
            location = _with_retries(attempt, limits, current)
            if location is None:
                return dest
            current = self._next_hop(current, location)
        raise UpstreamError(
            f"{_shown(url)} redirected more than MAX_REDIRECTS ({limits.max_redirects}) times"
        )

    def _next_hop(self, current: str, location: str) -> str:
        try:
            target = urljoin(current, location.strip())
            scheme = urlsplit(target).scheme.lower()
        except ValueError:
            raise UpstreamError(
                f"{_shown(current)} redirects to a Location that cannot be parsed"
            ) from None
        if scheme not in ("http", "https"):
            raise BlockedByPolicy(
                f"{_shown(current)} redirects to a {scheme}: URL; only http and https "
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
                verify=self.settings.requests_ca_bundle or True,
            )
        except requests.RequestException as exc:
            raise _requests_error(exc, url, endpoint, limits) from _safe_cause(exc, url)
        except ValueError:
            # requests parses a redirect's Location even when it does not follow it.
            raise UpstreamError(
                f"{_shown(url)} answered with a header that cannot be parsed "
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
        return InvalidUrl(f"{_shown(url)} is not a valid HTTP URL")
    return UpstreamError(f"the request to {where} failed ({type(exc).__name__})")


def _check_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status in (200, 203):
        return
    if status in (404, 410):
        raise NotFound(f"{_shown(url)} answered HTTP {status}: there is no file at that URL")
    if status in (401, 403, 407):
        raise Forbidden(
            f"{_shown(url)} answered HTTP {status}: access refused; the URL needs valid "
            "credentials or a fresh signature"
        )
    if status in _RETRY_STATUSES or status >= 500:
        raise _Retry(UpstreamError(f"{_shown(url)} answered HTTP {status}"))
    raise UpstreamError(f"{_shown(url)} answered HTTP {status}; expected 200")


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
                    f"the connection for {_shown(url)} broke after {sink.size} bytes"
                )
                raise _Retry(error) from _safe_cause(exc, url)
            if not data:
                break
            for piece in decoder.decode(data):
                sink.write(piece)
        decoder.finish()


# ---- FTP(S)


@dataclass(frozen=True)
class _FtpRequest:
    tls: bool
    user: str
    password: str
    path: str


def _ftp_request(parts: SplitResult) -> _FtpRequest:
    path = unquote(parts.path)
    # RFC 1738: the path is relative to the login folder; "%2F" makes it absolute.
    path = path[1:] if path.startswith("/") else path
    if not path or path.endswith("/"):
        raise InvalidUrl("the FTP URL must name a file, e.g. ftp://host/folder/file.dcm")
    if _CONTROL_RE.search(path):
        raise InvalidUrl("the FTP path contains control characters")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if _CONTROL_RE.search(user + password):
        raise InvalidUrl("the FTP user name or password contains control characters")
    return _FtpRequest(parts.scheme.lower() == "ftps", user, password, path)


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    bundle = settings.requests_ca_bundle
    if bundle and Path(bundle).is_dir():
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle or None)


def _ftp_error(exc: BaseException, url: str, limits: Limits) -> Exception:
    reply = str(exc).strip()[:120]
    if limits.remaining() <= 0 and not isinstance(exc, (ftplib.error_perm, ftplib.error_temp)):
        # The watchdog cut the connection; whatever broke, the deadline is the cause.
        return limits.deadline_error(url)
    if isinstance(exc, ftplib.error_perm):
        if reply.startswith("550"):
            return NotFound(f"the FTP server has no file at {_shown(url)} ({reply})")
        if reply.startswith(("530", "532")):
            return Forbidden(
                f"the FTP server refused the login for {_shown(url)} ({reply}); check the "
                "user name and password in the URL"
            )
        return UpstreamError(f"the FTP server answered {reply} for {_shown(url)}")
    if isinstance(exc, ftplib.error_temp):
        # 4xx FTP replies are transient by definition (RFC 959).
        return _Retry(UpstreamError(f"the FTP server answered {reply} for {_shown(url)}"))
    if isinstance(exc, TimeoutError):
        return limits.timeout_error(url, "read")
    if isinstance(exc, ssl.SSLError):
        return UpstreamError(
            f"FTPS for {_shown(url)} failed: the server's certificate could not be verified "
            "or TLS failed (for a private CA set REQUESTS_CA_BUNDLE)"
        )
    if isinstance(exc, (ftplib.error_reply, ftplib.error_proto)):
        return UpstreamError(f"the FTP server sent an unexpected reply for {_shown(url)}")
    return _Retry(UpstreamError(f"the FTP connection for {_shown(url)} failed or broke"))


class FtpDownloader(Downloader):
    """FTP in passive mode, anonymous unless the URL has a user; ftps:// is explicit TLS.

    The control connection goes to the checked address. ftplib ignores the address in
    the server's PASV reply and opens data connections to that same peer, so a server
    cannot point them elsewhere.
    """

    source = "ftp"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        parts = _split(url)
        request = _ftp_request(parts)
        endpoint = self.policy.check_url(url)
        attempt = partial(self._attempt, url, request, endpoint, dest, limits)
        _with_retries(attempt, limits, url)
        return dest

    def _attempt(
        self, url: str, request: _FtpRequest, endpoint: Endpoint, dest: Path, limits: Limits
    ) -> None:
        ftp = ftplib.FTP_TLS(context=_ssl_context(self.settings)) if request.tls else ftplib.FTP()
        try:
            with _Watchdog(limits) as watchdog:
                # ftplib creates the control socket and reads the greeting in one call.
                watchdog.watch(lambda: ftp.sock)
                _ftp_connect(ftp, endpoint, limits, url)
                watchdog.watch(ftp.sock)
                _ftp_login(ftp, request, limits, url)
                self._retrieve(ftp, request, dest, limits, url, watchdog)
        except ftplib.all_errors as exc:
            raise _ftp_error(exc, url, limits) from _safe_cause(exc, url)
        finally:
            ftp.close()

    def _retrieve(
        self,
        ftp: ftplib.FTP,
        request: _FtpRequest,
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


def _ftp_login(ftp: ftplib.FTP, request: _FtpRequest, limits: Limits, url: str) -> None:
    ftp.sock.settimeout(limits.read_timeout_now(url))
    if request.user:
        ftp.login(request.user, request.password)
    else:
        ftp.login()
    if isinstance(ftp, ftplib.FTP_TLS):
        ftp.prot_p()
    ftp.set_pasv(True)
    ftp.voidcmd("TYPE I")


def _ftp_size(ftp: ftplib.FTP, path: str) -> int | None:
    """The size the server reports, or None: SIZE is optional (RFC 3659)."""
    try:
        return ftp.size(path)
    except (ftplib.error_perm, ftplib.error_temp, ftplib.error_reply, ValueError):
        # A missing file also fails SIZE with 550; RETR reports it properly.
        return None


# ---- S3 and R2

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccountProblem",
    "403",
}
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
}

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def _boto_client(
    endpoint_url: str | None,
    region: str | None,
    credentials: tuple[str, str] | None,
    settings: Settings,
) -> Any:
    """A cached S3 client; created once per endpoint, region and credentials.

    botocore's own retries are off: ``_with_retries`` gives every source the same
    budget (DOWNLOAD_RETRIES) and backoff.
    """
    key = (
        endpoint_url,
        region,
        credentials,
        settings.connect_timeout_seconds,
        settings.read_timeout_seconds,
    )
    with _clients_lock:
        if key in _clients:
            return _clients[key]
        import boto3
        from botocore.config import Config

        session = (
            boto3.session.Session(
                aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1]
            )
            if credentials
            else boto3.session.Session()
        )
        config = Config(
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            retries={"mode": "standard", "total_max_attempts": 1},
            signature_version="s3v4",
            # Path style keeps dotted bucket names valid under TLS and suits S3-compatible stores.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        client = session.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region or session.region_name or "us-east-1",
            config=config,
        )
        _clients[key] = client
        return client


def _s3_error(exc: Exception, location: ObjectLocation, limits: Limits, url: str) -> Exception:
    from botocore import exceptions as boto_errors

    store = location.source.upper()
    if isinstance(exc, boto_errors.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFound(f"{store} has no object {location} ({code or status})")
        if code in _DENIED_CODES or status in (401, 403):
            return Forbidden(
                f"{store} refused access to {location} ({code or status}); the function's "
                f"{'R2 keys' if location.source == 'r2' else 'role'} may not read it"
            )
        if code in _THROTTLE_CODES or status == 429 or status >= 500:
            return _Retry(UpstreamError(f"{store} failed to serve {location} ({code or status})"))
        if status == 400:
            return InvalidUrl(f"{store} rejected the request for {location} ({code})")
        return UpstreamError(f"{store} failed to serve {location} ({code or status})")
    if isinstance(exc, (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError)):
        return ConfigurationError("no AWS credentials are available to read S3")
    if isinstance(exc, boto_errors.ConnectTimeoutError):
        return limits.timeout_error(url, "connect")
    if isinstance(exc, boto_errors.ReadTimeoutError):
        return limits.timeout_error(url, "read")
    if isinstance(exc, boto_errors.ParamValidationError):
        return InvalidUrl(f"{location} is not a valid {store} object name")
    if isinstance(
        exc,
        (
            boto_errors.EndpointConnectionError,
            boto_errors.ConnectionClosedError,
            boto_errors.IncompleteReadError,
            boto_errors.ResponseStreamingError,
            ProtocolError,
        ),
    ):
        return _Retry(UpstreamError(f"the connection to {store} broke while reading {location}"))
    return UpstreamError(f"reading {location} from {store} failed ({type(exc).__name__})")


def _get_object(
    client: Any, location: ObjectLocation, dest: Path, limits: Limits, url: str
) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    params = {"Bucket": location.bucket, "Key": location.key}
    if location.version_id:
        params["VersionId"] = location.version_id
    limits.check_deadline(url)
    try:
        response = client.get_object(**params)
        with _Sink(dest, limits, url) as sink, closing(response["Body"]) as body:
            length = response.get("ContentLength")
            sink.expect(length)
            while length is None or sink.size < length:
                if length is not None:
                    # No socket read may outlast the deadline. (Only while bytes are due:
                    # http.client drops the socket once the body is complete.)
                    body.set_socket_timeout(limits.read_timeout_now(url))
                data = body.read(CHUNK_BYTES)
                if not data:
                    break
                sink.write(data)
    except (ClientError, BotoCoreError, ProtocolError) as exc:
        raise _s3_error(exc, location, limits, url) from exc


class S3Downloader(Downloader):
    """S3 with the function's own credentials (its role), or S3_ENDPOINT_URL if set."""

    source = "s3"

    def fetch(self, url: str, dest: Path, limits: Limits) -> Path:
        location = parse_object_url(url, self.source, self.settings)
        self.policy.check_bucket(location.bucket)
        client = self._client(location)
        _with_retries(partial(_get_object, client, location, dest, limits, url), limits, url)
        return dest

    def _client(self, location: ObjectLocation) -> Any:
        return _boto_client(self.settings.s3_endpoint_url, location.region, None, self.settings)


class R2Downloader(S3Downloader):
    """Cloudflare R2 through its S3 API, signed (SigV4, region ``auto``) with the R2 keys only."""

    source = "r2"

    def _client(self, location: ObjectLocation) -> Any:
        key_id, secret = self.settings.r2_access_key_id, self.settings.r2_secret_access_key
        if not key_id or not secret:
            raise ConfigurationError(
                "R2 URLs need R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY in the function's "
                "environment"
            )
        return _boto_client(location.endpoint_url, "auto", (key_id, secret), self.settings)


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
    url: str, dest_dir: Path, storage_type: str = "auto", settings: Settings | None = None
) -> Path:
    """Download ``url`` into a new file in ``dest_dir`` and return the file's path.

    The source is chosen by ``source_type``. Raises only ``errors.ServiceError`` types;
    on failure no partial file is left behind.
    """
    settings = settings or get_settings()
    source = source_type(url, storage_type, settings)
    limits = Limits.from_settings(settings)
    dest = _new_download_path(Path(dest_dir))
    started = time.monotonic()
    logger.info("fetching %s from %s", redact_url(url), source)
    try:
        DOWNLOADERS[source](settings).fetch(url, dest, limits)
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
