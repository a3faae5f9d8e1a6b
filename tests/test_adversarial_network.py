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
import socket
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
from settings import Settings, load_settings
from tests import servers
from tests.corpus import env_flag
from tests.dicom_files import write_image
from tests.loopback_guard import GUARD

LONG = env_flag("ADVERSARIAL_LONG")
# Generated cases per property test: (default run, ADVERSARIAL_LONG=1).
EXAMPLES = 10_000 if LONG else 300
NETWORK_EXAMPLES = 400 if LONG else 25

MIB = 1024 * 1024
# The deadline of downloads that are expected to hit it, and the slack allowed past it
# (thread wake-ups and a loaded CI machine; far below any stall the servers attempt).
DEADLINE = 1.5
SLACK = 1.5

PATIENT_MARKER = "ADVERSARIAL^PATIENT^Q7X3"
URL_PASSWORD = "hunter2-adversarial"
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
        settings: Settings,
        within: float | None = None,
        **kwargs: Any,
    ) -> ServiceError:
        """Fetch ``url`` expecting ``error``; checks time, leftovers and records texts."""
        started = time.monotonic()
        with pytest.raises(ServiceError) as caught:
            fd.fetch(url, dest, settings=settings, **kwargs)
        elapsed = time.monotonic() - started
        exc = caught.value
        self.texts.append(exc.message)
        self.texts.append("".join(traceback.format_exception(exc)))
        assert isinstance(exc, error), f"{type(exc).__name__} ({exc.status}): {exc.message}"
        assert 400 <= exc.status < 600 and exc.message
        assert list(dest.iterdir()) == [], "a failed download must leave no file"
        limit = within if within is not None else settings.download_deadline_seconds + SLACK
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
    for name in ("urllib3", "botocore", "boto3", "requests", "file_downloader"):
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


def loopback_settings(**overrides: Any) -> Settings:
    """127.0.0.1 allowlisted, short timeouts, a small cap; no environment."""
    values: dict[str, Any] = {
        "allowed_hosts": "127.0.0.1",
        "connect_timeout_seconds": 1,
        "read_timeout_seconds": 1,
        "download_deadline_seconds": DEADLINE,
        "download_retries": 1,
        "max_download_bytes": 8 * MIB,
    }
    values.update(overrides)
    return load_settings(overrides=values, environ={})


def default_settings() -> Settings:
    """The default URL policy: no ALLOWED_HOSTS."""
    return load_settings(overrides={"allowed_hosts": ""}, environ={})


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

# Answers of the policy's resolver for the table below: every name maps to at least
# one address the default policy refuses. A name missing here would fail as 502.
SSRF_DNS: dict[str, list[str]] = {
    "metadata.google.internal": ["169.254.169.254"],
    "instance-data.ec2.internal": ["169.254.169.254"],
    "localtest.me": ["127.0.0.1"],
    "localhost": ["127.0.0.1", "::1"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "169.254.169.254.nip.io": ["169.254.169.254"],
    "10.0.0.1.sslip.io": ["10.0.0.1"],
    # DNS rebinding: one public and one internal answer.
    "rebind.attacker.test": ["93.184.216.34", "169.254.169.254"],
    "aaaa-loopback.test": ["::1"],
    "aaaa-mapped.test": ["::ffff:169.254.169.254"],
    "aaaa-nat64.test": ["64:ff9b::a9fe:a9fe"],
    "aaaa-6to4.test": ["2002:a00:1::1"],
    "aaaa-teredo.test": ["2001:0:4136:e378:8000:63bf:3fff:fdd2"],
    "aaaa-compat.test": ["::a9fe:a9fe"],
    "aaaa-sitelocal.test": ["fec0::1"],
    "aaaa-ula.test": ["fd12:3456:789a::1"],
    "zoned.test": ["fe80::1%eth0"],
    "cgnat.test": ["100.64.0.1"],
    "zero.test": ["0.0.0.0"],
    "files.internal.test": ["192.168.10.5"],
    "db.internal.test": ["172.20.0.5"],
}

NUMERIC = "decimal, octal, hex"
BRACKETED = "bracketed IPv6"
SCHEME = "is not supported"

# (url, expected error, fragment of its message). Every entry is refused by default.
SSRF_TABLE: list[tuple[str, type[ServiceError], str]] = [
    # IPv4 in decimal, octal, hex and short forms
    ("http://2852039166/latest/meta-data/", BlockedByPolicy, NUMERIC),
    ("http://0xa9fea9fe/latest/meta-data/", BlockedByPolicy, NUMERIC),
    ("http://0251.0376.0251.0376/", BlockedByPolicy, NUMERIC),
    ("http://0xA9.0xFE.0xA9.0xFE/", BlockedByPolicy, NUMERIC),
    ("http://169.16689662/", BlockedByPolicy, NUMERIC),
    ("http://0x7f.1/", BlockedByPolicy, NUMERIC),
    ("http://0/", BlockedByPolicy, NUMERIC),
    ("http://0x0a000001/", BlockedByPolicy, NUMERIC),
    ("http://3232235777/", BlockedByPolicy, NUMERIC),
    ("http://127.000.000.001/", BlockedByPolicy, NUMERIC),
    ("http://0300.0250.0.1/", BlockedByPolicy, NUMERIC),
    ("https://00000177.0.0.01:8443/", BlockedByPolicy, NUMERIC),
    ("ftp://2130706433/a.dcm", BlockedByPolicy, NUMERIC),
    # dotted private, shared, reserved and metadata addresses
    (
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        BlockedByPolicy,
        "metadata",
    ),
    ("http://169.254.170.2/v2/credentials/", BlockedByPolicy, "metadata"),
    ("http://100.100.100.200/latest/meta-data/", BlockedByPolicy, "shared"),
    ("http://192.0.0.192/latest/", BlockedByPolicy, "IETF protocol assignment"),
    ("http://198.18.0.1/", BlockedByPolicy, "private"),
    ("http://255.255.255.255/", BlockedByPolicy, "reserved"),
    ("http://239.255.255.250:1900/", BlockedByPolicy, "multicast"),
    ("http://0.1.2.3/", BlockedByPolicy, "private"),
    ("http://127.0.0.1./", BlockedByPolicy, "loopback"),
    # IPv6 literals, IPv4-mapped and other IPv6 forms of IPv4
    ("http://[0:0:0:0:0:0:0:1]/", BlockedByPolicy, BRACKETED),
    ("http://[::ffff:169.254.169.254]/", BlockedByPolicy, BRACKETED),
    ("http://[fd00:ec2::254]/latest/meta-data/", BlockedByPolicy, BRACKETED),
    ("http://[fe80::a9fe:a9fe%25eth0]/", BlockedByPolicy, BRACKETED),
    ("http://[64:ff9b::a9fe:a9fe]/", BlockedByPolicy, BRACKETED),
    ("http://[2002:a9fe:a9fe::]/", BlockedByPolicy, BRACKETED),
    ("http://[::]/", BlockedByPolicy, BRACKETED),
    ("https://[::ffff:7f00:1]:8443/", BlockedByPolicy, BRACKETED),
    # names that resolve to internal addresses
    ("http://metadata.google.internal/computeMetadata/v1/", BlockedByPolicy, "metadata"),
    ("http://instance-data.ec2.internal/latest/", BlockedByPolicy, "metadata"),
    ("http://localtest.me/", BlockedByPolicy, "loopback"),
    ("http://127.0.0.1.nip.io/", BlockedByPolicy, "loopback"),
    ("http://169.254.169.254.nip.io/", BlockedByPolicy, "metadata"),
    ("http://10.0.0.1.sslip.io/", BlockedByPolicy, "private"),
    ("http://rebind.attacker.test/", BlockedByPolicy, "metadata"),
    ("http://aaaa-loopback.test/", BlockedByPolicy, "loopback"),
    ("http://aaaa-mapped.test/", BlockedByPolicy, "IPv6 form of 169.254.169.254"),
    ("http://aaaa-nat64.test/", BlockedByPolicy, "IPv6 form of 169.254.169.254"),
    ("http://aaaa-6to4.test/", BlockedByPolicy, "IPv6 form of 10.0.0.1"),
    ("http://aaaa-teredo.test/", BlockedByPolicy, "IPv6 form of 192.0.2.45"),
    ("http://aaaa-compat.test/", BlockedByPolicy, "reserved"),
    ("http://aaaa-sitelocal.test/", BlockedByPolicy, "site-local"),
    ("http://aaaa-ula.test/", BlockedByPolicy, "private"),
    ("http://zoned.test/", BlockedByPolicy, "link-local"),
    ("http://cgnat.test/", BlockedByPolicy, "shared"),
    ("http://zero.test/", BlockedByPolicy, "unspecified"),
    ("http://LocalHost./", BlockedByPolicy, "loopback"),
    ("ftp://files.internal.test/a.dcm", BlockedByPolicy, "private"),
    (f"ftps://user:{URL_PASSWORD}@db.internal.test/a.dcm", BlockedByPolicy, "private"),
    # userinfo and fragment tricks: the host is what follows the last "@"
    ("http://good.example@169.254.169.254/", BlockedByPolicy, "metadata"),
    ("http://good.example:443@169.254.169.254:80/", BlockedByPolicy, "metadata"),
    ("http://169.254.169.254#@good.example/", BlockedByPolicy, "metadata"),
    (f"http://user:{URL_PASSWORD}@good.example@127.0.0.1/", BlockedByPolicy, "loopback"),
    ("http://good.example%40@169.254.169.254/", BlockedByPolicy, "metadata"),
    # unicode hosts that normalise (IDNA, NFKC) to internal addresses
    ("http://①⑥⑨.②⑤④.①⑥⑨.②⑤④/", BlockedByPolicy, "metadata"),
    ("http://１２７.０.０.１/", BlockedByPolicy, "loopback"),
    ("http://169。254。169。254/", BlockedByPolicy, "metadata"),
    ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", BlockedByPolicy, "loopback"),
    ("http://ｍｅｔａｄａｔａ.ｇｏｏｇｌｅ.ｉｎｔｅｒｎａｌ/", BlockedByPolicy, "metadata"),
    ("http://０ｘ７ｆ.１/", BlockedByPolicy, NUMERIC),
    ("http://⒈⒍⒐.254.169.254/", InvalidUrl, "not allowed in host names"),
    # schemes in mixed case
    ("HTTP://169.254.169.254/", BlockedByPolicy, "metadata"),
    ("hTtPs://[::1]/", BlockedByPolicy, BRACKETED),
    ("FtP://10.0.0.1/a.dcm", BlockedByPolicy, "private"),
    # schemes no source reads
    ("file:///proc/self/environ", InvalidUrl, SCHEME),
    ("FILE://localhost/etc/passwd", InvalidUrl, SCHEME),
    ("gopher://127.0.0.1:6379/_FLUSHALL", InvalidUrl, SCHEME),
    ("dict://127.0.0.1:11211/stats", InvalidUrl, SCHEME),
    ("ldap://169.254.169.254/", InvalidUrl, SCHEME),
    ("tftp://127.0.0.1/boot", InvalidUrl, SCHEME),
    ("netdoc:///etc/passwd", InvalidUrl, SCHEME),
    ("jar:http://127.0.0.1!/", InvalidUrl, SCHEME),
    ("sftp://10.0.0.1/a.dcm", InvalidUrl, SCHEME),
    ("r2://scans/a.dcm", InvalidUrl, "R2_ENDPOINT_URL"),
    # malformed and ambiguous forms
    ("http://169.254.169.254\\@good.example/", InvalidUrl, "backslash"),
    ("http:/169.254.169.254/", InvalidUrl, "names no host"),
    ("http:\\\\169.254.169.254/", InvalidUrl, "names no host"),
    ("//169.254.169.254/latest", InvalidUrl, "no scheme"),
    ("http://[169.254.169.254]/", InvalidUrl, "cannot be parsed"),
    ("http://169.254.169.254:80:80/", InvalidUrl, "cannot be parsed"),
    ("http://%31%36%39.254.169.254/", InvalidUrl, "not allowed in host names"),
    ("http://169.254.169.254%00.good.example/", InvalidUrl, "not allowed in host names"),
    ("http://169.254.169.254\t/", InvalidUrl, "control characters"),
    ("http://169.254.169.254/\r\nX-Injected: 1", InvalidUrl, "control characters"),
    # over-long URLs
    ("http://169.254.169.254/" + "a" * 9000, InvalidUrl, "longer than 8192"),
    ("http://" + "a." * 5000 + "test/", InvalidUrl, "longer than 8192"),
]


def ssrf_resolver(host: str, port: int) -> list[str]:
    if host not in SSRF_DNS:
        raise AssertionError(f"{host!r} is not in the test resolver's table")
    return SSRF_DNS[host]


def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host!r} was looked up, but the spelling is an IP address")


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
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The whole entry point runs, with the policy's resolver answering from the table.
    monkeypatch.setattr(fd, "_resolve_system", ssrf_resolver)
    caught = audit.refuse(error, url, dest, default_settings(), within=1.0)
    assert caught.status in (400, 403)
    assert fragment in caught.message
    assert GUARD.connects == [], "nothing may connect for a refused URL"


@pytest.mark.parametrize("host", sorted(SSRF_DNS))
def test_every_table_answer_holds_an_address_the_classifier_refuses(host: str) -> None:
    reasons = [fd.blocked_reason(ipaddress.ip_address(a.split("%")[0])) for a in SSRF_DNS[host]]
    assert any(reasons), host


# --------------------------------------------------------------------------- generated spellings

BLOCKED_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
METADATA = ipaddress.IPv4Address("169.254.169.254")


@st.composite
def blocked_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    if draw(st.booleans()):
        return METADATA
    network = draw(st.sampled_from(BLOCKED_NETWORKS))
    return network[draw(st.integers(0, network.num_addresses - 1))]


def _spell_number(draw: st.DrawFn, value: int) -> str:
    radix = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
    zeros = "0" * draw(st.integers(0, 3))
    if radix == "oct":
        return "0" + zeros + format(value, "o")
    if radix in ("hex", "HEX"):
        digits = zeros + format(value, "x")
        return ("0x" + digits) if radix == "hex" else ("0X" + digits.upper())
    # A leading zero would make it octal.
    return str(value)


_FULLWIDTH = {c: chr(0xFF10 + int(c)) for c in "0123456789"} | {
    c: chr(0xFF41 + ord(c) - ord("a")) for c in "abcdefx"
}


@st.composite
def ipv4_spelling(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """``address`` in one of the forms inet_aton accepts: 1 to 4 parts, any radix."""
    n = int(address)
    parts = draw(st.integers(1, 4))
    if parts == 4:
        values = [n >> 24, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF]
    elif parts == 3:
        values = [n >> 24, (n >> 16) & 0xFF, n & 0xFFFF]
    elif parts == 2:
        values = [n >> 24, n & 0xFFFFFF]
    else:
        values = [n]
    text = ".".join(_spell_number(draw, v) for v in values)
    # inet_aton parses offline: the spelling really names this address.
    assert socket.inet_aton(text) == address.packed, text
    if draw(st.booleans()):
        text += "."
    if draw(st.integers(0, 4)) == 0:
        # Fullwidth digits and ideographic full stops normalise back under IDNA.
        text = "".join(_FULLWIDTH.get(c.lower(), c) for c in text).replace(".", "。")
    return text


@st.composite
def spelled_url(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Address]:
    address = draw(blocked_ipv4())
    host = draw(ipv4_spelling(address))
    scheme = draw(st.sampled_from(["http", "https", "ftp", "ftps"]))
    scheme = "".join(c.upper() if draw(st.booleans()) else c for c in scheme)
    userinfo = draw(st.sampled_from(["", "good.example@", f"u:{URL_PASSWORD}@", "a@b@"]))
    port = draw(st.sampled_from(["", ":80", ":21", ":65535"]))
    return f"{scheme}://{userinfo}{host}{port}/a.dcm", address


@hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=spelled_url())
def test_any_spelling_of_an_internal_ipv4_address_is_refused(
    case: tuple[str, ipaddress.IPv4Address],
) -> None:
    url, _address = case
    policy = fd.UrlPolicy.from_settings(default_settings(), resolver=no_lookup)
    # 403 from the address rules, or 400 when the spelling is not a valid host at all
    # (e.g. an ideographic full stop at the end, which IDNA keeps as an empty label).
    with pytest.raises((BlockedByPolicy, InvalidUrl)) as caught:
        policy.check_url(url)
    assert caught.value.status in (400, 403)
    assert URL_PASSWORD not in caught.value.message


@st.composite
def ipv6_form(draw: st.DrawFn) -> str:
    """An IPv6 address that stands for a refused IPv4 address, in various spellings."""
    v4 = draw(blocked_ipv4())
    n = int(v4)
    kind = draw(st.sampled_from(["mapped", "mapped_hex", "nat64", "6to4", "compat"]))
    if kind == "mapped":
        text = f"::ffff:{v4}"
    elif kind == "mapped_hex":
        text = f"0:0:0:0:0:ffff:{n >> 16:x}:{n & 0xFFFF:x}"
    elif kind == "nat64":
        text = f"64:ff9b::{n >> 16:x}:{n & 0xFFFF:x}"
    elif kind == "6to4":
        text = f"2002:{n >> 16:x}:{n & 0xFFFF:x}:{draw(st.integers(0, 0xFFFF)):x}::1"
    else:
        text = f"::{v4}"
    if draw(st.booleans()):
        text = text.upper()
    return text + draw(st.sampled_from(["", "%eth0", "%1"]))


@hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(answer=ipv6_form(), literal=st.booleans())
def test_ipv6_forms_of_internal_addresses_are_refused(answer: str, literal: bool) -> None:
    policy = fd.UrlPolicy.from_settings(default_settings(), resolver=lambda host, port: [answer])
    address = answer.split("%")[0]
    url = f"http://[{address}]/a.dcm" if literal else "http://aaaa.test/a.dcm"
    with pytest.raises(BlockedByPolicy):
        policy.check_url(url)
    assert fd.blocked_reason(ipaddress.ip_address(address)) is not None


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
        caught = audit.refuse(BlockedByPolicy, url, dest, default_settings(), within=2.0)
        assert caught.status == 403
    assert http_server.requests == []
    assert GUARD.connects == []


def test_ftp_to_loopback_is_refused_by_default(
    ftp_server: servers.FtpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    url = ftp_server.put("live/a.dcm", marked_dicom)
    audit.refuse(BlockedByPolicy, url, dest, default_settings(), within=2.0)
    audit.refuse(BlockedByPolicy, url.replace("127.0.0.1", "LOCALHOST"), dest, default_settings())
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
    settings = loopback_settings()
    # A backslash ends the host for urllib3 and WHATWG parsers, not for urlsplit.
    for url in (f"http://{bad}\\@{good}/a.dcm", f"http://{good}\\@{bad}/a.dcm"):
        caught = audit.refuse(InvalidUrl, url, dest, settings)
        assert "backslash" in caught.message
    for url in (f"http://{bad}#@{good}/a.dcm", f"http://{good};@{bad}/a.dcm"):
        audit.refuse(BlockedByPolicy, url, dest, settings)
    # Where the parsers agree, the request goes to the checked address only.
    for url in (f"http://u@{bad}@{good}/a.dcm", f"http://{good}/a.dcm?@{bad}/"):
        path = fd.fetch(url, dest, settings=settings)
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
    caught = audit.refuse(BlockedByPolicy, with_signature(url), dest, loopback_settings())
    assert caught.status == 403
    assert decoy.requests == []


def test_redirect_to_a_unicode_spelling_of_a_loopback_address(
    http_server: servers.HttpServer, decoy: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    # Sent as raw UTF-8 on the wire, as a server would; http.server only writes latin-1.
    location = f"http://１２７.０.０.２:{decoy.port}/a.dcm".encode().decode("latin-1")
    url = http_server.route("hop-unicode", servers.redirect(location))
    caught = audit.refuse(ServiceError, url, dest, loopback_settings())
    assert caught.status in (403, 502)
    assert decoy.requests == []


# --------------------------------------------------------------------------- hostile HTTP servers


def test_endless_body_is_cut_at_the_cap_with_bounded_memory(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("endless", servers.endless(bytes(64 * 1024)))
    with peak_memory() as peak:
        caught = audit.refuse(TooLarge, url, dest, loopback_settings(max_download_bytes=4 * MIB))
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
    caught = audit.refuse(TooLarge, url, dest, loopback_settings(max_download_bytes=2 * MIB))
    assert caught.status == 413


def test_endless_slow_body_under_a_large_cap_hits_the_deadline(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("trickle", servers.endless(b"x" * 512, interval=0.05))
    settings = loopback_settings(max_download_bytes=1024 * MIB, read_timeout_seconds=5)
    caught = audit.refuse(UpstreamTimeout, url, dest, settings)
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
    settings = loopback_settings(read_timeout_seconds=5, requests_ca_bundle=str(tls_ca.bundle))
    caught = audit.refuse(UpstreamTimeout, url, dest, settings)
    assert caught.status == 504 and "DOWNLOAD_DEADLINE_SECONDS" in caught.message


def test_endless_interim_responses_are_cut_at_the_deadline(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("continue", servers.endless_continue(0.1))
    caught = audit.refuse(UpstreamTimeout, url, dest, loopback_settings(read_timeout_seconds=5))
    assert caught.status == 504


def test_tls_handshake_that_never_ends_is_cut_at_the_deadline(
    tls_ca: servers.TestCA, dest: Path, audit: Audit
) -> None:
    server = servers.RawTcpServer(servers.tls_handshake_drip(0.2))
    try:
        url = f"https://127.0.0.1:{server.port}/a.dcm"
        settings = loopback_settings(read_timeout_seconds=5, requests_ca_bundle=str(tls_ca.bundle))
        caught = audit.refuse(UpstreamTimeout, url, dest, settings)
        assert caught.status == 504
    finally:
        server.stop()


def test_server_that_never_answers_is_cut_at_the_deadline(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("silent", servers.silent(10))
    caught = audit.refuse(UpstreamTimeout, url, dest, loopback_settings(read_timeout_seconds=30))
    assert caught.status == 504


def test_connection_reset_mid_body_is_retried_then_502(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    data = marked_dicom.read_bytes()
    url = http_server.route("reset", servers.reset_after(data[: len(data) // 2], len(data)))
    caught = audit.refuse(UpstreamError, with_password(url), dest, loopback_settings())
    assert caught.status == 502 and "broke after" in caught.message
    assert http_server.hits("reset") == 2, "one retry, then the error"


def test_connection_reset_before_any_answer_is_502(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("reset-now", servers.reset_at_once())
    caught = audit.refuse(UpstreamError, with_signature(url), dest, loopback_settings())
    assert caught.status == 502
    assert http_server.hits("reset-now") == 2


def test_reset_then_recovery_succeeds(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    data = marked_dicom.read_bytes()
    flaky = servers.sequence(servers.reset_after(data[:100], len(data)), servers.serve_bytes(data))
    url = http_server.route("reset-once", flaky)
    path = fd.fetch(url, dest, settings=loopback_settings())
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
    settings = loopback_settings(download_retries=0, max_download_bytes=len(data) * 2)
    with pytest.raises(ServiceError) as caught:
        fd.fetch(url, dest, settings=settings)
    # A declared length over the cap is refused before the body; anything else broke.
    expected = TooLarge if declared > settings.max_download_bytes else UpstreamError
    assert isinstance(caught.value, expected), caught.value.message
    assert list(dest.iterdir()) == []


def test_redirect_loop_between_two_paths_stops(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    http_server.route("ping", servers.redirect(http_server.url("pong"), 307))
    url = http_server.route("pong", servers.redirect("/ping", 308))
    caught = audit.refuse(UpstreamError, url, dest, loopback_settings(max_redirects=4))
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
    caught = audit.refuse(UpstreamError, with_password(url), dest, loopback_settings())
    assert caught.status == 502


def test_wrong_content_type_is_ignored_and_the_bytes_decide(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    # A DICOM file labelled as HTML still renders: the type header is never trusted.
    labelled = {"Content-Type": "text/html; charset=utf-8"}
    url = http_server.route("as-html", servers.serve_bytes(marked_dicom, labelled))
    path = fd.fetch(url, dest, settings=loopback_settings())
    assert render(path, RenderOptions(output_format="png")).width == 64
    path.unlink()
    # An HTML page labelled as DICOM downloads, and is then refused as not DICOM (422).
    page = b"<!doctype html><html><body>login required</body></html>" * 20
    url = http_server.route(
        "html", servers.serve_bytes(page, {"Content-Type": "application/dicom"})
    )
    path = fd.fetch(url, dest, settings=loopback_settings())
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
        caught = audit.refuse(TooLarge, url, dest, loopback_settings(max_download_bytes=8 * MIB))
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
    path = fd.fetch(url, dest, settings=loopback_settings())
    assert path.read_bytes() == data


def test_garbage_after_a_gzip_member_is_an_upstream_error(
    http_server: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    body = gzip.compress(marked_dicom.read_bytes()) + b"<html>trailing</html>"
    url = http_server.route("gz-garbage", servers.respond(200, body, {"Content-Encoding": "gzip"}))
    caught = audit.refuse(UpstreamError, url, dest, loopback_settings())
    assert "corrupt" in caught.message


def test_chunk_size_lie_does_not_allocate_the_claimed_size(
    http_server: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    url = http_server.route("chunk-lie", servers.lying_chunk(0x7FFFFFFFFFFF, b"x" * 1000))
    with peak_memory() as peak:
        caught = audit.refuse(UpstreamError, url, dest, loopback_settings())
    assert caught.status == 502
    assert peak[0] < 4 * MIB


@pytest.mark.parametrize("declared", ["-1", "1e9", "12, 99999999999", "0x10", "4294967296000"])
def test_malformed_content_length_does_not_lift_the_cap(
    http_server: servers.HttpServer, declared: str, dest: Path, audit: Audit
) -> None:
    # Whatever the header says, an endless body is cut at the cap (or refused at once).
    url = http_server.route("bad-length", _endless_with_length(declared))
    caught = audit.refuse(ServiceError, url, dest, loopback_settings(max_download_bytes=MIB))
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
    ("behaviour", "settings_overrides"),
    [
        # No greeting at all: the connect phase times out (CONNECT_TIMEOUT_SECONDS).
        ("silent", {"connect_timeout_seconds": 1}),
        # Greeting lines that never end: only the deadline stops them.
        ("drip_greeting", {"connect_timeout_seconds": 5, "read_timeout_seconds": 5}),
        # RETR accepted, no data.
        ("stall_retr", {"read_timeout_seconds": 5}),
        # Data at 1 kB/s: every read succeeds, the deadline stops it.
        ("slow_data", {"read_timeout_seconds": 5}),
    ],
)
def test_stalling_ftp_server_gives_504_within_the_deadline(
    hostile_ftp: Callable[[str], servers.FtpServer],
    behaviour: str,
    settings_overrides: dict[str, Any],
    dest: Path,
    audit: Audit,
) -> None:
    server = hostile_ftp(behaviour)
    settings = loopback_settings(**settings_overrides)
    caught = audit.refuse(UpstreamTimeout, server.url("scans/a.dcm"), dest, settings)
    assert caught.status == 504
    assert server.sessions[0] == 1, "a timeout is not retried"  # type: ignore[attr-defined]


def test_busy_ftp_server_is_retried_then_502(
    hostile_ftp: Callable[[str], servers.FtpServer], dest: Path, audit: Audit
) -> None:
    server = hostile_ftp("busy")
    settings = loopback_settings(download_retries=2, download_deadline_seconds=5)
    caught = audit.refuse(UpstreamError, server.url("scans/a.dcm"), dest, settings)
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
    caught = audit.refuse(TooLarge, url, dest, loopback_settings(max_download_bytes=MIB))
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


def s3_settings(stub: servers.HttpServer, **overrides: Any) -> Settings:
    values = {
        "s3_endpoint_url": stub.base_url,
        "r2_endpoint_url": stub.base_url.replace("127.0.0.1", "localhost"),
        "r2_access_key_id": R2_KEY_ID,
        "r2_secret_access_key": R2_SECRET,
        "download_retries": 2,
        "download_deadline_seconds": 5,
    }
    values.update(overrides)
    return loopback_settings(**values)


def test_s3_throttling_then_recovery_succeeds(
    s3_stub: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    route = servers.sequence(
        servers.s3_error(503, "SlowDown", "Please reduce your request rate."),
        servers.s3_error(500, "InternalError", "We encountered an internal error."),
        servers.s3_object(marked_dicom),
    )
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", route)
    path = fd.fetch(f"s3://{S3_BUCKET}/{S3_KEY}", dest, settings=s3_settings(s3_stub))
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
    settings = s3_settings(s3_stub)
    caught = audit.refuse(UpstreamError, f"s3://{S3_BUCKET}/{S3_KEY}", dest, settings)
    assert caught.status == 502 and code in caught.message
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == settings.download_retries + 1


def test_s3_throttling_stops_retrying_before_the_deadline(
    s3_stub: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.s3_error(503, "SlowDown"))
    # Ten retries allowed, but the backoff (0.2, 0.4, 0.8 s ...) outgrows a 1 s deadline.
    settings = s3_settings(s3_stub, download_retries=10, download_deadline_seconds=1)
    caught = audit.refuse(UpstreamError, f"s3://{S3_BUCKET}/{S3_KEY}", dest, settings)
    assert caught.status in (502, 504)
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") < 5


def test_s3_endpoint_that_never_answers_is_504(
    s3_stub: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.silent(10))
    settings = s3_settings(s3_stub, read_timeout_seconds=1)
    caught = audit.refuse(UpstreamTimeout, f"s3://{S3_BUCKET}/{S3_KEY}", dest, settings)
    assert caught.status == 504


def test_s3_body_reset_midway_is_retried_then_502(
    s3_stub: servers.HttpServer, marked_dicom: Path, dest: Path, audit: Audit
) -> None:
    data = marked_dicom.read_bytes()
    route = servers.reset_after(data[:1000], len(data))
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", route)
    caught = audit.refuse(UpstreamError, f"s3://{S3_BUCKET}/{S3_KEY}", dest, s3_settings(s3_stub))
    assert caught.status == 502
    assert s3_stub.hits(f"{S3_BUCKET}/{S3_KEY}") == 3


def test_s3_declared_size_over_the_cap_is_413(
    s3_stub: servers.HttpServer, dest: Path, audit: Audit
) -> None:
    s3_stub.route(f"{S3_BUCKET}/{S3_KEY}", servers.declare_length(b"x" * 100, 10 * 1024**3))
    caught = audit.refuse(TooLarge, f"s3://{S3_BUCKET}/{S3_KEY}", dest, s3_settings(s3_stub))
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
    caught = audit.refuse(Forbidden, f"r2://{S3_BUCKET}/{S3_KEY}", dest, s3_settings(s3_stub))
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
    path = fd.fetch(f"r2://{S3_BUCKET}/{S3_KEY}", dest, settings=s3_settings(s3_stub))
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
    settings = loopback_settings(download_retries=1)
    urls = [with_password(http_server.route(name, route)) for name, route in routes.items()]
    urls += [with_signature(http_server.url(name)) for name in routes]
    urls.append(hostile_ftp("drip_greeting").url("scans/a.dcm", password=URL_PASSWORD))
    urls.append(hostile_ftp("busy").url("scans/a.dcm"))
    for url in urls:
        audit.refuse(ServiceError, url, dest, settings)
    assert len(audit.texts) == 2 * len(urls)
