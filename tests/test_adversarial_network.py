"""Adversarial network tests: SSRF spellings, hostile HTTP/FTP/S3 peers, secrets in logs.

What must hold for every case: the download fails with a ``ServiceError`` of the
right status (400/403 for refused URLs, 413 for size, 504 for the deadline, 502 for a
broken upstream), it ends within its deadline, it leaves no file behind, and neither
the logs (captured at DEBUG for every logger, urllib3 and botocore included) nor the
error messages and tracebacks carry a password, secret key, signature, session token
or patient name.

No traffic leaves loopback. An audit hook (``tests/loopback_guard.py``) watches every
``socket.connect`` and name lookup made while these tests run and fails the test on
any target outside 127.0.0.0/8 and ::1. URLs aimed at private, link-local and
metadata addresses are refused by the classifier and the test resolver of the URL
policy without connecting at all; the hook proves that no connection was even tried.
Live refusals use loopback spellings only, with real servers listening behind them.

The hostile peers are real servers on loopback (``tests/servers.py``): scripted HTTP
routes, a raw TCP server for TLS, pyftpdlib sessions that stall or drip, and an S3
endpoint that answers with S3's own XML errors.

``ADVERSARIAL_LONG=1`` raises the number of generated cases (see ``EXAMPLES``).
"""

from __future__ import annotations

import contextlib
import gzip
import ipaddress
import logging
import re
import time
import traceback
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import file_downloader as fd
from dicom_converter import RenderOptions, render
from errors import (
    BlockedByPolicy,
    Forbidden,
    InvalidUrl,
    NotDicom,
    ServiceError,
    TooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from tests import servers
from tests.corpus import env_flag
from tests.dicom_files import write_image
from tests.loopback_guard import GUARD
from tests.ssrf_cases import SSRF_DNS, SSRF_TABLE, URL_PASSWORD, ssrf_resolver
from url_policy import SourceEndpoints, UrlPolicy, blocked_reason

LONG = env_flag("ADVERSARIAL_LONG")
# Generated cases of the network property test: (default run, ADVERSARIAL_LONG=1).
NETWORK_EXAMPLES = 400 if LONG else 25

MIB = 1024 * 1024
# The deadline of downloads that are expected to hit it, and the slack allowed past it
# (thread wake-ups and a loaded CI machine; far below any stall the servers attempt).
DEADLINE = 1.5
SLACK = 1.5

PATIENT_MARKER = "ADVERSARIAL^PATIENT^Q7X3"
FAKE_SIGNATURE = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0"
FAKE_TOKEN = "IQoJb3JpZ2luX2VjEAdversarialSessionToken"
R2_KEY_ID = "R2ADVERSARIALKEYID00"
R2_SECRET = "r2-adversarial-secret-0123456789abcdef"
FTP_PASSWORD = "s3cr3t:p@ss/word%"  # servers.FtpServer's default password

# Test servers log on their own account (pyftpdlib prints commands); only the
# service's records are checked for secrets.
SERVER_LOGGERS = ("pyftpdlib",)


# --------------------------------------------------------------------------- audit of one test


@dataclass
class Audit:
    """What one test exposed: error texts to check, and the secrets to look for."""

    secrets: set[str]
    texts: list[str] = field(default_factory=list)

    def refuse(
        self,
        error: type[ServiceError],
        url: str,
        dest: Path,
        options: fd.DownloadOptions,
        policy: UrlPolicy | None = None,
        within: float | None = None,
    ) -> ServiceError:
        """Fetch ``url`` expecting ``error``; checks time, leftovers and records texts."""
        started = time.monotonic()
        with pytest.raises(ServiceError) as caught:
            fetch(url, dest, options, policy or LOOPBACK)
        elapsed = time.monotonic() - started
        exc = caught.value
        self.texts.append(exc.message)
        self.texts.append("".join(traceback.format_exception(exc)))
        assert isinstance(exc, error), f"{type(exc).__name__} ({exc.status}): {exc.message}"
        assert 400 <= exc.status < 600 and exc.message
        assert list(dest.iterdir()) == [], "a failed download must leave no file"
        limit = within if within is not None else options.deadline_seconds + SLACK
        assert elapsed < limit, f"took {elapsed:.2f} s, limit {limit:.2f} s"
        return exc


BASE_SECRETS = {
    PATIENT_MARKER,
    URL_PASSWORD,
    FAKE_SIGNATURE,
    FAKE_TOKEN,
    R2_SECRET,
    FTP_PASSWORD,
    quote(FTP_PASSWORD, safe=""),
    "testing-aws-secret-key",  # conftest's fake AWS_SECRET_ACCESS_KEY
    "testing-aws-session-token",  # and AWS_SESSION_TOKEN
}


def _record_text(record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.exc_info:
        text += "\n" + "".join(traceback.format_exception(*record.exc_info))
    return text


@pytest.fixture(autouse=True)
def audit(caplog: pytest.LogCaptureFixture) -> Iterator[Audit]:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "botocore", "boto3", "requests", "file_downloader", "s3_store"):
        caplog.set_level(logging.DEBUG, logger=name)
    record = Audit(secrets=set(BASE_SECRETS))
    with GUARD.watching():
        yield record
    assert GUARD.violations == [], "traffic tried to leave loopback"
    logged = "\n".join(
        _record_text(r) for r in caplog.records if not r.name.startswith(SERVER_LOGGERS)
    )
    for secret in record.secrets:
        assert secret not in logged, f"a secret was logged: {secret[:6]}..."
        for text in record.texts:
            assert secret not in text, f"a secret is in an error: {secret[:6]}..."


# --------------------------------------------------------------------------- helpers


# The policies under test, given to every download as an argument: loopback (where
# the hostile servers listen) allowlisted, and the default (no ALLOWED_HOSTS).
LOOPBACK = UrlPolicy(allowed_hosts=("127.0.0.1:*",))
DEFAULT_POLICY = UrlPolicy()


def loopback_options(**overrides: Any) -> fd.DownloadOptions:
    """Short timeouts, a short deadline and a small cap."""
    values: dict[str, Any] = {
        "max_bytes": 8 * MIB,
        "min_free_bytes": 64 * MIB,
        "connect_timeout": 1.0,
        "read_timeout": 1.0,
        "deadline_seconds": DEADLINE,
        "retries": 1,
        "max_redirects": 5,
    }
    values.update(overrides)
    return fd.DownloadOptions(**values)


def default_options() -> fd.DownloadOptions:
    """The service's default limits (Settings' defaults)."""
    return fd.DownloadOptions(
        max_bytes=256 * MIB,
        min_free_bytes=64 * MIB,
        connect_timeout=5.0,
        read_timeout=15.0,
        deadline_seconds=25.0,
        retries=2,
        max_redirects=5,
    )


def fetch(url: str, dest: Path, options: fd.DownloadOptions, policy: UrlPolicy = LOOPBACK) -> Path:
    return fd.fetch(url, dest, options, policy)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.fixture(scope="module")
def marked_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DICOM file whose PatientName is the marker searched for in logs."""
    folder = tmp_path_factory.mktemp("marked")
    pixels = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    return write_image(folder, pixels, "marked.dcm", PatientName=PATIENT_MARKER)


@contextlib.contextmanager
def peak_memory() -> Iterator[list[int]]:
    """The peak of Python allocations (all threads) inside the block, in bytes."""
    tracemalloc.start()
    result = [0]
    try:
        yield result
    finally:
        result[0] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def with_password(url: str, user: str = "reader") -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{URL_PASSWORD}@{rest}"


def with_signature(url: str) -> str:
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101"
        f"&X-Amz-Signature={FAKE_SIGNATURE}&X-Amz-Security-Token={FAKE_TOKEN}"
    )


# --------------------------------------------------------------------------- SSRF table

# The table and its resolver's answers are in tests/ssrf_cases.py; generated spellings
# of internal addresses are checked on the policy alone, in test_url_policy.py.


def test_ssrf_table_size() -> None:
    assert len(SSRF_TABLE) >= 40
    assert len({url for url, _, _ in SSRF_TABLE}) == len(SSRF_TABLE)


@pytest.mark.parametrize(
    ("url", "error", "fragment"), SSRF_TABLE, ids=[f"{i:02d}" for i in range(len(SSRF_TABLE))]
)
def test_ssrf_table_is_refused_without_connecting(
    url: str,
    error: type[ServiceError],
    fragment: str,
    dest: Path,
    audit: Audit,
) -> None:
    # The whole entry point runs, with the policy's resolver answering from the table.
    policy = UrlPolicy(resolver=ssrf_resolver)
    caught = audit.refuse(error, url, dest, default_options(), policy, within=1.0)
    assert caught.status in (400, 403)
    assert fragment in caught.message
    assert GUARD.connects == [], "nothing may connect for a refused URL"


@pytest.mark.parametrize("host", sorted(SSRF_DNS))
def test_every_table_answer_holds_an_address_the_classifier_refuses(host: str) -> None:
    reasons = [blocked_reason(ipaddress.ip_address(a.split("%")[0])) for a in SSRF_DNS[host]]
    assert any(reasons), host


# --------------------------------------------------------------------------- live refusals

LIVE_SPELLINGS = [
    "127.0.0.1",
    "127.0.0.1.",
    "LOCALHOST",
    "localhost.",
    "１２７.０.０.１",
    "127。0。0。1",
    "①②⑦.⓪.⓪.①",
    "good.example@127.0.0.1",
    "0x7f.1",
    "[::ffff:127.0.0.1]",
]


@pytest.mark.parametrize("host", LIVE_SPELLINGS)
def test_loopback_spellings_are_refused_by_default_with_a_server_listening(
    http_server: servers.HttpServer, marked_dicom: Path, host: str, dest: Path, audit: Audit
) -> None:
    http_server.put("live.dcm", marked_dicom)
    for scheme in ("http", "HTTP"):
        url = f"{scheme}://{host}:{http_server.port}/live.dcm"
        caught = audit.refuse(
            BlockedByPolicy, url, dest, default_options(), DEFAULT_POLICY, within=2.0
        )
        assert caught.status == 403
    assert http_server.requests == []
    assert GUARD.connects == []


def test_ftp_to_loopback_is_refused_by_default(
    ftp_server: servers.FtpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    url = ftp_server.put("live/a.dcm", marked_dicom)
    audit.refuse(BlockedByPolicy, url, dest, default_options(), DEFAULT_POLICY, within=2.0)
    localhost = url.replace("127.0.0.1", "LOCALHOST")
    audit.refuse(BlockedByPolicy, localhost, dest, default_options(), DEFAULT_POLICY)
    assert GUARD.connects == []


@pytest.fixture(scope="module")
def _decoy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    server = servers.HttpServer(tmp_path_factory.mktemp("decoy-root"), host="127.0.0.2")
    yield server
    server.stop()


@pytest.fixture
def decoy(_decoy: servers.HttpServer) -> Iterator[servers.HttpServer]:
    """A server on 127.0.0.2, which is never allowlisted: any hit on it is an escape."""
    _decoy.route("a.dcm", servers.respond(200, b"DECOY"))
    yield _decoy
    _decoy.reset()


def test_parser_confusion_cannot_reach_another_address(
    http_server: servers.HttpServer,
    decoy: servers.HttpServer,
    marked_dicom: Path,
    dest: Path,
    audit: Audit,
) -> None:
    http_server.put("a.dcm", marked_dicom)
    good, bad = f"127.0.0.1:{http_server.port}", f"127.0.0.2:{decoy.port}"
    options = loopback_options()
    # A backslash ends the host for urllib3 and WHATWG parsers, not for urlsplit.
    for url in (f"http://{bad}\\@{good}/a.dcm", f"http://{good}\\@{bad}/a.dcm"):
        caught = audit.refuse(InvalidUrl, url, dest, options)
        assert "backslash" in caught.message
    for url in (f"http://{bad}#@{good}/a.dcm", f"http://{good};@{bad}/a.dcm"):
        audit.refuse(BlockedByPolicy, url, dest, options)
    # Where the parsers agree, the request goes to the checked address only.
    for url in (f"http://u@{bad}@{good}/a.dcm", f"http://{good}/a.dcm?@{bad}/"):
        path = fetch(url, dest, options)
        assert path.read_bytes() == marked_dicom.read_bytes()
        path.unlink()
    assert decoy.requests == []


@pytest.mark.parametrize(
    "location",
    [
        "http://127.0.0.2:{decoy}/a.dcm",
        "http://127.0.0.1@127.0.0.2:{decoy}/a.dcm",
        "http://127.0.0.2.:{decoy}/a.dcm",
        "http://[::1]:{decoy}/a.dcm",
        "HTTP://0x7f.0.0.2:{decoy}/a.dcm",
        "//127.0.0.2:{decoy}/a.dcm",
    ],
)
def test_redirect_to_a_loopback_address_that_is_not_allowlisted(
    http_server: servers.HttpServer,
    decoy: servers.HttpServer,
    location: str,
    dest: Path,
    audit: Audit,
) -> None:
    url = http_server.route("hop", servers.redirect(location.format(decoy=decoy.port)))
    caught = audit.refuse(BlockedByPolicy, with_signature(url), dest, loopback_options())
    assert caught.status == 403
    assert decoy.requests == []


def test_redirect_to_a_unicode_spelling_of_a_loopback_address(
    http_server: servers.HttpServer, decoy: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    # Sent as raw UTF-8 on the wire, as a server would; http.server only writes latin-1.
    location = f"http://１２７.０.０.２:{decoy.port}/a.dcm".encode().decode("latin-1")
    url = http_server.route("hop-unicode", servers.redirect(location))
    caught = audit.refuse(ServiceError, url, dest, loopback_options())
    assert caught.status in (403, 502)
    assert decoy.requests == []


# --------------------------------------------------------------------------- hostile HTTP servers


def test_endless_body_is_cut_at_the_cap_with_bounded_memory(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("endless", servers.endless(bytes(64 * 1024)))
    with peak_memory() as peak:
        caught = audit.refuse(TooLarge, url, dest, loopback_options(max_bytes=4 * MIB))
    assert caught.status == 413 and "MAX_DOWNLOAD_BYTES" in caught.message
    assert peak[0] < 4 * MIB, f"peak {peak[0]} bytes"


def test_endless_chunked_body_is_cut_at_the_cap(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    piece = bytes(range(256)) * 256

    def forever() -> Iterator[bytes]:
        while True:
            yield piece

    url = http_server.route("endless-chunked", servers.chunked(forever))
    caught = audit.refuse(TooLarge, url, dest, loopback_options(max_bytes=2 * MIB))
    assert caught.status == 413


def test_endless_slow_body_under_a_large_cap_hits_the_deadline(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("trickle", servers.endless(b"x" * 512, interval=0.05))
    options = loopback_options(max_bytes=1024 * MIB, read_timeout=5)
    caught = audit.refuse(UpstreamTimeout, url, dest, options)
    assert caught.status == 504 and "DOWNLOAD_DEADLINE_SECONDS" in caught.message


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_headers_that_never_end_are_cut_at_the_deadline(
    http_server: servers.HttpServer,
    https_server: servers.HttpServer,
    tls_ca: servers.TestCA,
    scheme: str,
    dest: Path,
    audit: Audit,
) -> None:
    # One header byte every 0.2 s: no single read times out, so only the download's
    # own deadline can stop it.
    server = https_server if scheme == "https" else http_server
    url = server.route("drip-headers", servers.drip_headers(0.2))
    options = loopback_options(read_timeout=5, ca_bundle=str(tls_ca.bundle))
    caught = audit.refuse(UpstreamTimeout, url, dest, options)
    assert caught.status == 504 and "DOWNLOAD_DEADLINE_SECONDS" in caught.message


def test_endless_interim_responses_are_cut_at_the_deadline(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("continue", servers.endless_continue(0.1))
    caught = audit.refuse(UpstreamTimeout, url, dest, loopback_options(read_timeout=5))
    assert caught.status == 504


def test_tls_handshake_that_never_ends_is_cut_at_the_deadline(
    tls_ca: servers.TestCA, dest: Path, audit: Audit
) -> None:
    server = servers.RawTcpServer(servers.tls_handshake_drip(0.2))
    try:
        url = f"https://127.0.0.1:{server.port}/a.dcm"
        options = loopback_options(read_timeout=5, ca_bundle=str(tls_ca.bundle))
        caught = audit.refuse(UpstreamTimeout, url, dest, options)
        assert caught.status == 504
    finally:
        server.stop()


def test_server_that_never_answers_is_cut_at_the_deadline(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("silent", servers.silent(10))
    caught = audit.refuse(UpstreamTimeout, url, dest, loopback_options(read_timeout=30))
    assert caught.status == 504


def test_connection_reset_mid_body_is_retried_then_502(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    data = marked_dicom.read_bytes()
    url = http_server.route("reset", servers.reset_after(data[: len(data) // 2], len(data)))
    caught = audit.refuse(UpstreamError, with_password(url), dest, loopback_options())
    assert caught.status == 502 and "broke after" in caught.message
    assert http_server.hits("reset") == 2, "one retry, then the error"


def test_connection_reset_before_any_answer_is_502(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("reset-now", servers.reset_at_once())
    caught = audit.refuse(UpstreamError, with_signature(url), dest, loopback_options())
    assert caught.status == 502
    assert http_server.hits("reset-now") == 2


def test_reset_then_recovery_succeeds(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    data = marked_dicom.read_bytes()
    flaky = servers.sequence(servers.reset_after(data[:100], len(data)), servers.serve_bytes(data))
    url = http_server.route("reset-once", flaky)
    path = fetch(url, dest, loopback_options())
    assert path.read_bytes() == data


@hypothesis_settings(
    max_examples=NETWORK_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(cut=st.floats(0, 1), declared_extra=st.integers(0, 1 << 40), reset=st.booleans())
def test_a_body_cut_anywhere_is_a_clean_502(
    http_server: servers.HttpServer,
    marked_dicom: Path,
    tmp_path: Path,
    cut: float,
    declared_extra: int,
    reset: bool,
) -> None:
    data = marked_dicom.read_bytes()
    prefix = data[: int(len(data) * cut)]
    declared = len(prefix) + 1 + declared_extra % (len(data) + 1)
    behaviour = servers.reset_after if reset else servers.declare_length
    url = http_server.route("cut", behaviour(prefix, declared))
    dest = tmp_path / "cut"
    dest.mkdir(exist_ok=True)
    options = loopback_options(retries=0, max_bytes=len(data) * 2)
    with pytest.raises(ServiceError) as caught:
        fetch(url, dest, options)
    # A declared length over the cap is refused before the body; anything else broke.
    expected = TooLarge if declared > options.max_bytes else UpstreamError
    assert isinstance(caught.value, expected), caught.value.message
    assert list(dest.iterdir()) == []


def test_redirect_loop_between_two_paths_stops(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    http_server.route("ping", servers.redirect(http_server.url("pong"), 307))
    url = http_server.route("pong", servers.redirect("/ping", 308))
    caught = audit.refuse(UpstreamError, url, dest, loopback_options(max_redirects=4))
    assert caught.status == 502 and "MAX_REDIRECTS" in caught.message
    assert http_server.hits("ping") + http_server.hits("pong") == 5


@pytest.mark.parametrize(
    "location",
    [
        "http://[::1/a.dcm",
        "http://exa mple.test/a.dcm",
        "http://127.0.0.1:99999/a.dcm",
        "http://127.0.0.1\\@127.0.0.2/a.dcm",
        "http://127.0.0.1/" + "a" * 9000,
    ],
    ids=["bracket", "space", "port", "backslash", "long"],
)
def test_redirect_to_an_invalid_url_is_an_upstream_error(
    http_server: servers.HttpServer, location: str, dest: Path, audit: Audit
) -> None:
    # The server chose the URL, so the answer is 502, not a 400 about the request.
    url = http_server.route("bad-location", servers.redirect(location))
    caught = audit.refuse(UpstreamError, with_password(url), dest, loopback_options())
    assert caught.status == 502


def test_wrong_content_type_is_ignored_and_the_bytes_decide(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    # A DICOM file labelled as HTML still renders: the type header is never trusted.
    labelled = {"Content-Type": "text/html; charset=utf-8"}
    url = http_server.route("as-html", servers.serve_bytes(marked_dicom, labelled))
    path = fetch(url, dest, loopback_options())
    assert render(path, RenderOptions(output_format="png")).width == 64
    path.unlink()
    # An HTML page labelled as DICOM downloads, and is then refused as not DICOM (422).
    page = b"<!doctype html><html><body>login required</body></html>" * 20
    url = http_server.route(
        "html", servers.serve_bytes(page, {"Content-Type": "application/dicom"})
    )
    path = fetch(url, dest, loopback_options())
    with pytest.raises(NotDicom) as caught:
        render(path, RenderOptions())
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("encoding", "members"),
    [("gzip", False), ("deflate", False), ("gzip", True)],
    ids=["gzip", "deflate", "gzip-members"],
)
def test_compression_bomb_is_cut_at_the_cap_with_bounded_memory(
    http_server: servers.HttpServer, encoding: str, members: bool, dest: Path, audit: Audit
) -> None:
    # 4 GiB of zeros behind a few MB of compressed data, without any declared length.
    route = servers.compression_bomb(4096 * MIB, encoding=encoding, members=members)
    url = http_server.route(f"bomb-{encoding}-{members}", route)
    with peak_memory() as peak:
        caught = audit.refuse(TooLarge, url, dest, loopback_options(max_bytes=8 * MIB))
    assert caught.status == 413 and "MAX_DOWNLOAD_BYTES" in caught.message
    assert peak[0] < 8 * MIB, f"peak {peak[0]} bytes"


def test_gzip_with_several_members_arrives_whole(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    # RFC 1952 2.2: a gzip body may be several members; each must be decoded.
    data = marked_dicom.read_bytes()
    half = len(data) // 2
    body = gzip.compress(data[:half]) + gzip.compress(data[half:]) + bytes(8)
    url = http_server.route("members", servers.respond(200, body, {"Content-Encoding": "gzip"}))
    path = fetch(url, dest, loopback_options())
    assert path.read_bytes() == data


def test_garbage_after_a_gzip_member_is_an_upstream_error(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    body = gzip.compress(marked_dicom.read_bytes()) + b"<html>trailing</html>"
    url = http_server.route("gz-garbage", servers.respond(200, body, {"Content-Encoding": "gzip"}))
    caught = audit.refuse(UpstreamError, url, dest, loopback_options())
    assert "corrupt" in caught.message


def test_chunk_size_lie_does_not_allocate_the_claimed_size(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("chunk-lie", servers.lying_chunk(0x7FFFFFFFFFFF, b"x" * 1000))
    with peak_memory() as peak:
        caught = audit.refuse(UpstreamError, url, dest, loopback_options())
    assert caught.status == 502
    assert peak[0] < 4 * MIB


@pytest.mark.parametrize("declared", ["-1", "1e9", "12, 99999999999", "0x10", "4294967296000"])
def test_malformed_content_length_does_not_lift_the_cap(
    http_server: servers.HttpServer, declared: str, dest: Path, audit: Audit
) -> None:
    # Whatever the header says, an endless body is cut at the cap (or refused at once).
    url = http_server.route("bad-length", _endless_with_length(declared))
    caught = audit.refuse(ServiceError, url, dest, loopback_options(max_bytes=MIB))
    assert caught.status in (413, 502), caught.message


def _endless_with_length(declared: str) -> servers.Route:
    def route(handler: Any) -> None:
        handler.close_connection = True
        handler.send_response(200)
        handler.send_header("Content-Length", declared)
        handler.send_header("Connection", "close")
        handler.end_headers()
        stop = time.monotonic() + 10
        with contextlib.suppress(OSError):
            while time.monotonic() < stop:
                handler.wfile.write(bytes(65536))

    return route


# --------------------------------------------------------------------------- hostile FTP servers


@pytest.fixture
def hostile_ftp(tmp_path: Path, marked_dicom: Path) -> Iterator[Callable[[str], servers.FtpServer]]:
    started: list[servers.FtpServer] = []

    def start(behaviour: str) -> servers.FtpServer:
        root = tmp_path / f"ftp-{behaviour}"
        root.mkdir()
        server = servers.hostile_ftp(root, behaviour)
        server.put("scans/a.dcm", marked_dicom)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    ("behaviour", "option_overrides"),
    [
        # No greeting at all: the connect phase times out (CONNECT_TIMEOUT_SECONDS).
        ("silent", {"connect_timeout": 1}),
        # Greeting lines that never end: only the deadline stops them.
        ("drip_greeting", {"connect_timeout": 5, "read_timeout": 5}),
        # RETR accepted, no data.
        ("stall_retr", {"read_timeout": 5}),
        # Data at 1 kB/s: every read succeeds, the deadline stops it.
        ("slow_data", {"read_timeout": 5}),
    ],
)
def test_stalling_ftp_server_gives_504_within_the_deadline(
    hostile_ftp: Callable[[str], servers.FtpServer],
    behaviour: str,
    option_overrides: dict[str, Any],
    dest: Path,
    audit: Audit,
) -> None:
    server = hostile_ftp(behaviour)
    options = loopback_options(**option_overrides)
    caught = audit.refuse(UpstreamTimeout, server.url("scans/a.dcm"), dest, options)
    assert caught.status == 504
    assert server.sessions[0] == 1, "a timeout is not retried"  # type: ignore[attr-defined]


def test_busy_ftp_server_is_retried_then_502(
    hostile_ftp: Callable[[str], servers.FtpServer], dest: Path, audit: Audit
) -> None:
    server = hostile_ftp("busy")
    options = loopback_options(retries=2, deadline_seconds=5)
    caught = audit.refuse(UpstreamError, server.url("scans/a.dcm"), dest, options)
    assert caught.status == 502 and "421" in caught.message
    assert server.sessions[0] == 3  # type: ignore[attr-defined]


def test_ftp_file_over_the_cap_without_size_is_cut_during_the_transfer(
    hostile_ftp: Callable[[str], servers.FtpServer], tmp_path: Path, dest: Path, audit: Audit
) -> None:
    # SIZE is optional (RFC 3659); without it only the bytes received count.
    server = hostile_ftp("no_size")
    big = tmp_path / "big.dcm"
    big.write_bytes(bytes(3 * MIB))
    url = server.put("scans/big.dcm", big)
    caught = audit.refuse(TooLarge, url, dest, loopback_options(max_bytes=MIB))
    assert "sent more than" in caught.message


# --------------------------------------------------------------------------- hostile S3 endpoint

S3_BUCKET = "adversarial-scans"
S3_KEY = "studies/a.dcm"


@pytest.fixture(scope="module")
def _s3_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    server = servers.HttpServer(tmp_path_factory.mktemp("s3-root"))
    yield server
    server.stop()


@pytest.fixture
def s3_stub(_s3_stub: servers.HttpServer) -> Iterator[servers.HttpServer]:
    """A real HTTP server on loopback that answers GetObject the way S3 does, errors too."""
    yield _s3_stub
    _s3_stub.reset()


def s3_options(stub: servers.HttpServer, **overrides: Any) -> fd.DownloadOptions:
    """S3 and R2 both sent to the stub (R2 under another spelling of its address)."""
    r2_endpoint = stub.base_url.replace("127.0.0.1", "localhost")
    values: dict[str, Any] = {
        "endpoints": SourceEndpoints(s3=stub.base_url, r2=r2_endpoint),
        "r2_access_key_id": R2_KEY_ID,
        "r2_secret_access_key": R2_SECRET,
        "retries": 2,
        "deadline_seconds": 5,
    }
    values.update(overrides)
    return loopback_options(**values)


def test_s3_throttling_then_recovery_succeeds(
    s3_stub: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    route = servers.sequence(
        servers.s3_error(503, "SlowDown", "Please reduce your request rate."),
        servers.s3_error(500, "InternalError", "We encountered an internal error."),
        servers.s3_object(marked_dicom),
    )
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", route)
    path = fetch(f"s3://{S3_BUCKET}/{S3_KEY}", dest, s3_options(s3_stub))
    assert path.read_bytes() == marked_dicom.read_bytes()
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == 3


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (503, "SlowDown"),
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
        (429, "TooManyRequests"),
    ],
)
def test_s3_errors_are_retried_a_bounded_number_of_times(
    s3_stub: servers.HttpServer, status: int, code: str, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.s3_error(status, code))
    options = s3_options(s3_stub)
    caught = audit.refuse(UpstreamError, f"s3://{S3_BUCKET}/{S3_KEY}", dest, options)
    assert caught.status == 502 and code in caught.message
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == options.retries + 1


def test_s3_throttling_stops_retrying_before_the_deadline(
    s3_stub: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.s3_error(503, "SlowDown"))
    # Ten retries allowed, but the backoff (0.2, 0.4, 0.8 s ...) outgrows a 1 s deadline.
    options = s3_options(s3_stub, retries=10, deadline_seconds=1)
    caught = audit.refuse(UpstreamError, f"s3://{S3_BUCKET}/{S3_KEY}", dest, options)
    assert caught.status in (502, 504)
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") < 5


def test_s3_endpoint_that_never_answers_is_504(
    s3_stub: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.silent(10))
    options = s3_options(s3_stub, read_timeout=1)
    caught = audit.refuse(UpstreamTimeout, f"s3://{S3_BUCKET}/{S3_KEY}", dest, options)
    assert caught.status == 504


def test_s3_body_reset_midway_is_retried_then_502(
    s3_stub: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    data = marked_dicom.read_bytes()
    route = servers.reset_after(data[:1000], len(data))
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", route)
    caught = audit.refuse(UpstreamError, f"s3://{S3_BUCKET}/{S3_KEY}", dest, s3_options(s3_stub))
    assert caught.status == 502
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == 3


def test_s3_declared_size_over_the_cap_is_413(
    s3_stub: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.declare_length(b"x" * 100, 10 * 1024**3))
    caught = audit.refuse(TooLarge, f"s3://{S3_BUCKET}/{S3_KEY}", dest, s3_options(s3_stub))
    assert caught.status == 413
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == 1


def test_r2_signed_requests_never_log_the_signature_or_secret(
    s3_stub: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    route = servers.sequence(
        servers.s3_error(503, "SlowDown"),
        servers.s3_error(403, "SignatureDoesNotMatch", "The signature does not match."),
    )
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", route)
    caught = audit.refuse(Forbidden, f"r2://{S3_BUCKET}/{S3_KEY}", dest, s3_options(s3_stub))
    assert caught.status == 403
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == 2, "403 is final, not retried"
    signatures = {
        match
        for request in s3_stub.requests
        for match in re.findall(r"Signature=([0-9a-f]{64})", request.headers["Authorization"])
    }
    # Requests signed within the same second carry the same signature.
    assert signatures and all(R2_KEY_ID in r.headers["Authorization"] for r in s3_stub.requests)
    audit.secrets |= signatures
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.s3_object(marked_dicom))
    path = fetch(f"r2://{S3_BUCKET}/{S3_KEY}", dest, s3_options(s3_stub))
    assert path.read_bytes() == marked_dicom.read_bytes()
    audit.secrets |= {
        match
        for request in s3_stub.requests
        for match in re.findall(r"Signature=([0-9a-f]{64})", request.headers["Authorization"])
    }


# --------------------------------------------------------------------------- secrets under failure


def test_secret_bearing_urls_against_every_hostile_peer(
    http_server: servers.HttpServer,
    hostile_ftp: Callable[[str], servers.FtpServer],
    marked_dicom: Path,
    dest: Path,
    audit: Audit,
) -> None:
    """The URLs that carry the most secrets, each meeting a peer that fails in a new way."""
    data = marked_dicom.read_bytes()
    routes = {
        "s-reset": servers.reset_after(data[:500], len(data)),
        "s-drip": servers.drip_headers(0.2),
        "s-500": servers.respond(500, PATIENT_MARKER.encode()),
        "s-redirect": servers.redirect(with_signature("http://169.254.169.254/latest")),
        "s-bad-location": servers.redirect(with_signature("http://[::1/x")),
        "s-short": servers.declare_length(data[:100], len(data)),
    }
    options = loopback_options(retries=1)
    urls = [with_password(http_server.route(name, route)) for name, route in routes.items()]
    urls += [with_signature(http_server.url(name)) for name in routes]
    urls.append(hostile_ftp("drip_greeting").url("scans/a.dcm", password=URL_PASSWORD))
    urls.append(hostile_ftp("busy").url("scans/a.dcm"))
    for url in urls:
        audit.refuse(ServiceError, url, dest, options)
    assert len(audit.texts) == 2 * len(urls)
