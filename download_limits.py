"""The budget of one download: options, size and space limits, retries, the deadline.

Shared by the whole-file downloaders (``file_downloader``) and the ranged reads
(``ranged_reads``), so both count bytes, retry and stop at the deadline the same way.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import shutil
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, TypeVar

import s3_store
from errors import ConfigurationError, ServiceError, TooLarge, UpstreamTimeout
from service_log import redact_url, shown_url
from url_policy import SourceEndpoints

logger = logging.getLogger("file_downloader")

CHUNK_BYTES = 64 * 1024
# Free space is measured again after every this many bytes written.
SPACE_CHECK_BYTES = 1024 * 1024
# First pause between attempts; it doubles on each retry.
BACKOFF_SECONDS = 0.2

T = TypeVar("T")


def safe_cause(exc: BaseException, url: str) -> BaseException | None:
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
        """Client settings for reads; retries are ours (``with_retries``), not botocore's,
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


def local_error(exc: OSError, dest: Path) -> ServiceError:
    """A failure of the work folder itself, not of the source."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TooLarge("the work folder ran out of space during the download")
    return ConfigurationError(f"cannot write the download into {dest.parent}: {exc.strerror}")


def too_large(url: str, what: str, max_bytes: int) -> TooLarge:
    """The refusal of a transfer over MAX_DOWNLOAD_BYTES, saying what would change it."""
    return TooLarge(
        f"the file at {shown_url(url)} {what}; the limit is MAX_DOWNLOAD_BYTES "
        f"({max_bytes} bytes), which counts the bytes transferred: raise it, or serve the "
        "file from S3, R2 or an HTTP server that answers Range requests and sends an ETag "
        "or Last-Modified, so that only the bytes of the requested frames are fetched"
    )


class Sink:
    """The destination file of one attempt; enforces size, free space and deadline."""

    def __init__(self, path: Path, limits: Limits, url: str, digest: bool = False) -> None:
        self.path = path
        self.size = 0
        # A content hash, computed while the bytes pass, for sources that name no version.
        self.digest = hashlib.sha256() if digest else None
        self._limits = limits
        self._url = url
        self._next_space_check = 0
        try:
            self._file: BinaryIO = path.open("wb")
        except OSError as exc:
            raise local_error(exc, path) from exc

    def __enter__(self) -> Sink:
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
        if self.digest is not None:
            self.digest.update(data)
        try:
            self._file.write(data)
        except OSError as exc:
            raise local_error(exc, self.path) from exc
        self._limits.check_deadline(self._url)

    def _too_large(self, what: str) -> TooLarge:
        return too_large(self._url, what, self._limits.options.max_bytes)

    def _check_space(self, incoming: int) -> None:
        check_free_space(
            self.path.parent,
            incoming,
            self._limits.options.min_free_bytes,
            f"to download {shown_url(self._url)}",
        )


def check_free_space(folder: Path, incoming: int, min_free_bytes: int, purpose: str) -> None:
    """Refuse to write ``incoming`` bytes into ``folder`` when MIN_FREE_TMP_BYTES would
    not stay free; ``purpose`` completes "not enough free space in the work folder"."""
    free = shutil.disk_usage(folder).free
    if free - incoming < min_free_bytes:
        raise TooLarge(
            f"not enough free space in the work folder {purpose}: {free} bytes free, and "
            f"MIN_FREE_TMP_BYTES ({min_free_bytes}) must stay free; raise the function's "
            "ephemeral storage or fetch a smaller file"
        )


class Retry(Exception):
    """A transient failure; ``error`` is raised once no attempt is left."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


def with_retries(operation: Callable[[], T], limits: Limits, url: str) -> T:
    """Run ``operation``, again after a backoff when it raises ``Retry``.

    Only transient failures (connection resets, 5xx, throttling) raise ``Retry``;
    4xx answers are final. Backoff doubles and never sleeps past the deadline.
    """
    attempt = 0
    while True:
        try:
            return operation()
        except Retry as retry:
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


class Watchdog:
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

    def __enter__(self) -> Watchdog:
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
