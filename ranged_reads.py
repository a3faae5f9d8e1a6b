"""Reading byte ranges of one version of a source object: HTTP(S), S3, R2 and FTP(S).

A ``RangedReader`` is opened with a first ranged request, which also tells whether
the source can serve ranges at all; then ``read(start, stop)`` fetches further
ranges. Every answer is checked before its bytes are used:

* the status is 206 and the Content-Range names exactly the bytes asked for
  (RFC 9110 14.4), the body is that long and not content-encoded;
* every answer is of the same version: HTTP requests carry ``If-Range`` with the
  first answer's strong ETag (or Last-Modified), so a changed file answers 200;
  S3 and R2 requests carry ``IfMatch`` and the first answer's VersionId; FTP asks
  MDTM and SIZE again after each range (RETR after REST);
* the bytes of all requests together stay within MAX_DOWNLOAD_BYTES.

A source that cannot serve ranges, or that answers a ranged request wrongly, raises
``RangeUnsupported``: the caller then downloads the whole file, so wrong bytes are
never used. Other failures are the same ``errors`` types, retries and deadline as
``file_downloader``'s whole downloads. Nothing here knows DICOM.
"""

from __future__ import annotations

import ftplib
import logging
import re
import socket
from collections.abc import Mapping
from contextlib import ExitStack, closing, suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import requests
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError

import file_downloader as fd
import s3_store
from download_limits import (
    CHUNK_BYTES,
    DownloadOptions,
    Limits,
    Retry,
    Watchdog,
    safe_cause,
    too_large,
)
from download_limits import with_retries as _with_retries
from errors import ServiceError, UpstreamError
from service_log import redact_url, shown_url
from url_policy import Endpoint, ObjectLocation, UrlPolicy, ftp_target, source_type, split_url

logger = logging.getLogger("file_downloader")

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
# Sources that can be read in ranges.
RANGED_SOURCES = ("http", "s3", "r2", "ftp")


class RangeUnsupported(Exception):
    """The source cannot serve this read in ranges, or answered a ranged request
    wrongly: download the whole file instead. ``reason`` is safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WholeAnswer(RangeUnsupported):
    """The server ignored the range and sent the whole file, which is now on disk."""

    def __init__(self, download: fd.Download) -> None:
        super().__init__("the server answered 200 to a range; its whole answer was kept")
        self.download = download


def _checked_range(shown: str | None, start: int, stop: int) -> tuple[int, int, int]:
    """(first, end, total) of a Content-Range that answers bytes ``start``..``stop``-1.

    The end may be short of ``stop`` only where the object ends (RFC 9110 14.1.1).
    """
    match = _CONTENT_RANGE_RE.match((shown or "").strip())
    if match is None:
        raise RangeUnsupported("a partial answer without a valid Content-Range")
    first, last, total = (int(group) for group in match.groups())
    if first != start or last >= total or last + 1 != min(stop, total):
        raise RangeUnsupported("a Content-Range that does not match the request")
    return first, last + 1, total


class RangedReader:
    """Byte ranges of one object version. ``size`` is the object's size, ``identity``
    its version, ``transferred`` the body bytes of every request so far."""

    def __init__(self, url: str, limits: Limits) -> None:
        self.url = url
        self.limits = limits
        self.size = 0
        self.identity: fd.SourceIdentity | None = None
        self.transferred = 0
        self.requests = 0
        self._stack = ExitStack()

    def __enter__(self) -> RangedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()

    def read(self, start: int, stop: int) -> bytes:
        """The bytes ``start``..``stop``-1 (clipped to the object's end)."""
        stop = min(stop, self.size)
        if start >= stop:
            return b""
        self._charge(stop - start)
        return _with_retries(partial(self._read, start, stop), self.limits, self.url)

    def _charge(self, length: int) -> None:
        self.requests += 1
        limit = self.limits.options.max_bytes
        if self.transferred + length > limit:
            raise too_large(self.url, f"needs more than {limit} bytes transferred", limit)

    def _count(self, length: int) -> None:
        self.transferred += length
        limit = self.limits.options.max_bytes
        if self.transferred > limit:
            raise too_large(self.url, f"sent more than {limit} bytes", limit)
        self.limits.check_deadline(self.url)

    def _read(self, start: int, stop: int) -> bytes:
        raise NotImplementedError


# --------------------------------------------------------------------------- HTTP


class HttpRangedReader(RangedReader):
    def __init__(
        self,
        url: str,
        limits: Limits,
        options: DownloadOptions,
        policy: UrlPolicy,
        whole_dest: Path | None = None,
    ) -> None:
        super().__init__(url, limits)
        self.options = options
        self.policy = policy
        # Where a whole (200) answer to the first range goes, instead of asking again.
        self.whole_dest = whole_dest
        self._whole: fd.Download | None = None
        self._session: requests.Session | None = None
        self._endpoint: Endpoint | None = None
        self._precondition: dict[str, str] = {}
        self._validators: tuple[str, str] = ("", "")

    def open(self, length: int) -> bytes:
        """The first ``length`` bytes; also follows redirects and learns the version."""
        downloader = fd.HttpDownloader(self.options, self.policy)
        first: list[bytes] = []

        def attempt(current: str, endpoint: Endpoint) -> str | None:
            return self._first(current, endpoint, length, first)

        self._charge(length)
        self.url = downloader.follow(self.url, self.limits, attempt)
        if self._whole is not None:
            raise WholeAnswer(self._whole)
        return first[0]

    def _first(self, url: str, endpoint: Endpoint, length: int, out: list[bytes]) -> str | None:
        if self._session is not None:
            self._stack.close()
            self._stack = ExitStack()
        session, watchdog = self._stack.enter_context(fd.pinned_session(endpoint, self.limits))
        self._session, self._endpoint = session, endpoint
        extra = {"Range": f"bytes=0-{length - 1}"}
        response = fd.send_request(session, "GET", url, endpoint, self.limits, self.options, extra)
        with response:
            if response.status_code in fd.REDIRECT_STATUSES and "Location" in response.headers:
                return response.headers["Location"]
            if response.status_code == 200 and self.whole_dest is not None:
                self._whole = fd.save_whole_answer(
                    response, self.whole_dest, self.limits, url, watchdog
                )
                return None
            if response.status_code != 206:
                if response.status_code != 416:
                    fd.check_status(response, url)
                raise RangeUnsupported(f"the server answered {response.status_code} to a range")
            self._learn_version(response.headers)
            out.append(self._body(response, url, 0, length))
        return None

    def _learn_version(self, headers: Mapping[str, str]) -> None:
        etag = headers.get("ETag", "").strip()
        modified = headers.get("Last-Modified", "").strip()
        if etag and not etag.startswith("W/"):
            self._precondition = {"If-Range": etag}
        elif modified:
            self._precondition = {"If-Range": modified}
        else:
            # Without a strong validator, ranges could mix two versions of the file.
            raise RangeUnsupported("no strong ETag or Last-Modified to keep ranges consistent")
        self._validators = (etag, modified)

    def _read(self, start: int, stop: int) -> bytes:
        assert self._session is not None and self._endpoint is not None
        extra = {"Range": f"bytes={start}-{stop - 1}", **self._precondition}
        url, endpoint = self.url, self._endpoint
        response = fd.send_request(
            self._session, "GET", url, endpoint, self.limits, self.options, extra
        )
        with response:
            if response.status_code != 206:
                if response.status_code in (200, 412, 416) or response.is_redirect:
                    raise RangeUnsupported(f"the server answered {response.status_code}")
                fd.check_status(response, url)
                raise RangeUnsupported(f"the server answered {response.status_code}")
            seen = (
                response.headers.get("ETag", "").strip(),
                response.headers.get("Last-Modified", "").strip(),
            )
            if any(
                now and now != before for now, before in zip(seen, self._validators, strict=True)
            ):
                raise RangeUnsupported("the file changed between requests")
            return self._body(response, url, start, stop)

    def _body(self, response: requests.Response, url: str, start: int, stop: int) -> bytes:
        first, end, total = _checked_range(response.headers.get("Content-Range"), start, stop)
        if self.size and total != self.size:
            raise RangeUnsupported("the file changed size between requests")
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in ("", "identity"):
            raise RangeUnsupported("a content-encoded partial answer")
        declared = fd._content_length(response)
        if declared is not None and declared != end - first:
            raise RangeUnsupported("a Content-Length that does not match the Content-Range")
        if not self.size:
            self.size = total
            self.identity = fd.http_identity(response.headers, total)
        return self._receive(response, url, end - first)

    def _receive(self, response: requests.Response, url: str, length: int) -> bytes:
        parts: list[bytes] = []
        received = 0
        while received < length:
            fd.set_read_timeout(response, self.limits.read_timeout_now(url))
            try:
                data = response.raw.read1(min(CHUNK_BYTES, length - received), decode_content=False)
            except ReadTimeoutError as exc:
                raise self.limits.timeout_error(url, "read") from safe_cause(exc, url)
            except (Urllib3Error, OSError) as exc:
                if self.limits.remaining() <= 0:
                    raise self.limits.deadline_error(url) from safe_cause(exc, url)
                raise Retry(_broke(url, received)) from safe_cause(exc, url)
            if not data:
                raise Retry(_broke(url, received))
            parts.append(data)
            received += len(data)
            self._count(len(data))
        return b"".join(parts)


def _broke(url: str, received: int) -> UpstreamError:
    return UpstreamError(f"the connection for {shown_url(url)} broke after {received} bytes")


# --------------------------------------------------------------------------- S3 and R2


class S3RangedReader(RangedReader):
    """GetObject with Range (S3 and R2); the first answer's VersionId and ETag pin
    every later request to the same version."""

    def __init__(
        self, url: str, limits: Limits, downloader: fd.S3Downloader, location: ObjectLocation
    ) -> None:
        super().__init__(url, limits)
        self._location = location
        self._client = downloader.client(location)
        self._pins: dict[str, str] = {}

    def open(self, length: int) -> bytes:
        self._charge(length)
        return _with_retries(partial(self._read, 0, length), self.limits, self.url)

    def _read(self, start: int, stop: int) -> bytes:
        ref = fd.object_ref(self._location)
        params = {**ref.params(), "Range": f"bytes={start}-{stop - 1}", **self._pins}
        self.limits.check_deadline(self.url)
        try:
            answer = self._client.get_object(**params)
            with closing(answer["Body"]) as body:
                first, end, total = _checked_range(answer.get("ContentRange"), start, stop)
                self._learn_version(answer, total)
                return self._receive(body, end - first)
        except s3_store.error_types() as exc:
            if s3_store.failure_kind(exc) == s3_store.BAD_REQUEST or _precondition_failed(exc):
                raise RangeUnsupported("the store refused the range or the version") from None
            error = s3_store.translate(exc, str(ref), store=ref.store)
            raise fd.s3_failure(error, self.limits, self.url, exc) from exc

    def _learn_version(self, answer: Mapping[str, Any], total: int) -> None:
        if self.size:
            if total != self.size:
                raise RangeUnsupported("the object changed size between requests")
            return
        identity = fd.s3_identity(answer)
        if identity is None:
            raise RangeUnsupported("the store sent no ETag to keep ranges consistent")
        self.size, self.identity = total, replace(identity, size=total)
        self._pins = {"IfMatch": str(answer["ETag"])}
        if answer.get("VersionId") and answer["VersionId"] != "null":
            self._pins["VersionId"] = str(answer["VersionId"])

    def _receive(self, body: Any, length: int) -> bytes:
        parts: list[bytes] = []
        received = 0
        while received < length:
            body.set_socket_timeout(self.limits.read_timeout_now(self.url))
            data = body.read(min(CHUNK_BYTES, length - received))
            if not data:
                raise Retry(_broke(self.url, received))
            parts.append(data)
            received += len(data)
            self._count(len(data))
        return b"".join(parts)


def _precondition_failed(exc: BaseException) -> bool:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "InvalidRange", "412", "416") or status in (412, 416)


# --------------------------------------------------------------------------- FTP

# Replies to REST from a server that does not restart transfers (RFC 959 4.2).
_NO_RESTART = ("500", "501", "502", "504")


class FtpRangedReader(RangedReader):
    """RETR after REST (RFC 3659 5) on one control connection: each range is a transfer
    from its offset, cut once its bytes are in. MDTM and SIZE are asked again after
    every range, so a file replaced between ranges is noticed."""

    def __init__(self, url: str, limits: Limits, downloader: fd.FtpDownloader) -> None:
        super().__init__(url, limits)
        self._downloader = downloader
        self._request = ftp_target(split_url(url))
        self._endpoint = downloader.policy.check_url(url)
        self._ftp: ftplib.FTP | None = None
        self._watchdog = self._stack.enter_context(Watchdog(limits))
        self._stack.callback(self._drop)

    def open(self, length: int) -> bytes:
        self._charge(length)
        return _with_retries(partial(self._read, 0, length), self.limits, self.url)

    def _drop(self) -> None:
        if self._ftp is not None:
            self._ftp.close()
            self._ftp = None

    def _read(self, start: int, stop: int) -> bytes:
        try:
            ftp = self._connected()
            stop = min(stop, self.size)
            data = self._transfer(ftp, start, stop)
            if self._version(ftp) != self.identity:
                raise RangeUnsupported("the file changed between requests")
            return data
        except ftplib.all_errors as exc:
            self._drop()
            if isinstance(exc, ftplib.error_perm) and str(exc)[:3] in _NO_RESTART:
                raise RangeUnsupported("the server does not restart transfers (REST)") from None
            raise fd.ftp_error(exc, self.url, self.limits) from safe_cause(exc, self.url)

    def _connected(self) -> ftplib.FTP:
        if self._ftp is not None:
            return self._ftp
        ftp = self._downloader.new_ftp(self._request)
        self._ftp = ftp
        args = (self.url, self._request, self._endpoint, self.limits, self._watchdog)
        self._downloader.login(ftp, *args)
        identity = self._version(ftp)
        if identity is None or identity.size is None:
            raise RangeUnsupported("no MDTM and SIZE to keep ranges consistent")
        if self.identity is not None and identity != self.identity:
            raise RangeUnsupported("the file changed between requests")
        self.identity, self.size = identity, identity.size
        return ftp

    def _version(self, ftp: ftplib.FTP) -> fd.SourceIdentity | None:
        ftp.sock.settimeout(self.limits.read_timeout_now(self.url))
        path = self._request.path
        return fd.ftp_identity(ftp, path, fd.ftp_size(ftp, path))

    def _transfer(self, ftp: ftplib.FTP, start: int, stop: int) -> bytes:
        parts: list[bytes] = []
        received = 0
        with closing(ftp.transfercmd(f"RETR {self._request.path}", rest=start)) as data:
            self._watchdog.watch(data)
            while received < stop - start:
                data.settimeout(self.limits.read_timeout_now(self.url))
                piece = data.recv(min(CHUNK_BYTES, stop - start - received))
                if not piece:
                    raise Retry(_broke(self.url, received))
                parts.append(piece)
                received += len(piece)
                self._count(len(piece))
            # Shut down, not only closed: the watchdog holds a duplicate of the socket,
            # and the server reports the end of the transfer only once the peer is gone.
            with suppress(OSError):
                data.shutdown(socket.SHUT_RDWR)
        ftp.sock.settimeout(self.limits.read_timeout_now(self.url))
        # A transfer cut short is reported as aborted (426), one that reached the
        # file's end as complete (226): either ends it.
        with suppress(ftplib.error_temp, ftplib.error_perm):
            ftp.getresp()
        return b"".join(parts)


# --------------------------------------------------------------------------- entry point


def open_reader(
    url: str,
    options: DownloadOptions,
    policy: UrlPolicy,
    first_bytes: int,
    *,
    storage_type: str = "auto",
    limits: Limits,
    whole_dest: Path | None = None,
) -> tuple[RangedReader, bytes]:
    """A reader of ``url`` and its first ``first_bytes`` bytes (fewer if the object is
    shorter). Raises ``RangeUnsupported`` when the source cannot serve ranges, and
    its ``WholeAnswer`` when an HTTP server answered the range with the whole file,
    saved in ``whole_dest``; the caller closes the reader."""
    source = source_type(url, storage_type, options.endpoints)
    if source not in RANGED_SOURCES:
        raise RangeUnsupported(f"{source} sources are read whole")
    reader: HttpRangedReader | S3RangedReader | FtpRangedReader
    if source == "http":
        reader = HttpRangedReader(url, limits, options, policy, whole_dest)
    elif source == "ftp":
        ftp = fd.DOWNLOADERS[source](options, policy)
        assert isinstance(ftp, fd.FtpDownloader)
        reader = FtpRangedReader(url, limits, ftp)
    else:
        downloader = fd.DOWNLOADERS[source](options, policy)
        assert isinstance(downloader, fd.S3Downloader)
        reader = S3RangedReader(url, limits, downloader, downloader.locate(url))
    try:
        first = reader.open(first_bytes)
    except BaseException as exc:
        reader.close()
        if isinstance(exc, RangeUnsupported):
            logger.info("reading %s whole: %s", redact_url(url), exc.reason)
        elif isinstance(exc, ServiceError):
            logger.warning("ranged read of %s failed: %s", redact_url(url), exc.code)
        raise
    return reader, first
