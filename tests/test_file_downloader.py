"""file_downloader against real servers on loopback: moto (S3, R2), pyftpdlib, HTTP(S).

Nothing here is mocked. Every transfer sends a real DICOM file through a real server
and compares SHA-256. Each download is given its ``DownloadOptions`` and ``UrlPolicy``
as arguments; the policy's rules on their own (URL forms, the address classifier,
allowed hosts) are tested in test_url_policy.py. Live refusals use loopback spellings
that are not allowlisted. No traffic leaves 127.0.0.0/8.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

import file_downloader as fd
from errors import (
    BlockedByPolicy,
    Forbidden,
    InvalidUrl,
    NotFound,
    ServiceError,
    SourceNotConfigured,
    TooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from service_log import redact_url
from settings import load_settings
from tests import servers
from tests.corpus import PROJECT
from url_policy import SourceEndpoints, UrlPolicy, source_type

MIB = 1024 * 1024

# --------------------------------------------------------------------------- helpers

# Loopback allowlisted: the test servers listen on 127.0.0.1.
LOOPBACK = UrlPolicy(allowed_hosts=("127.0.0.1:*",))


def make_options(**overrides: Any) -> fd.DownloadOptions:
    """Options for one test: the service's default limits, with short timeouts."""
    values: dict[str, Any] = {
        "max_bytes": 256 * MIB,
        "min_free_bytes": 64 * MIB,
        "connect_timeout": 3.0,
        "read_timeout": 5.0,
        "deadline_seconds": 20.0,
        "retries": 2,
        "max_redirects": 5,
    }
    values.update(overrides)
    return fd.DownloadOptions(**values)


def fetch(
    url: str,
    dest: Path,
    options: fd.DownloadOptions | None = None,
    policy: UrlPolicy = LOOPBACK,
    storage_type: str = "auto",
) -> Path:
    return fd.fetch(url, dest, options or make_options(), policy, storage_type)


def sha256(data: Path | bytes) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def fetch_and_check(url: str, dest: Path, expected: Path, **kwargs: Any) -> Path:
    """Fetch ``url`` and check the bytes arrived intact, in a file named by us."""
    path = fetch(url, dest, **kwargs)
    assert path.parent == dest
    assert path.name.startswith("download-") and path.suffix == ".dcm"
    assert sha256(path) == sha256(expected), url
    path.unlink()
    return path


def refuse(error: type[ServiceError], url: str, dest: Path, **kwargs: Any) -> ServiceError:
    """Fetch ``url`` expecting ``error``; checks no partial file is left behind."""
    with pytest.raises(error) as caught:
        fetch(url, dest, **kwargs)
    assert list(dest.iterdir()) == [], "a failed download must leave no file"
    return caught.value


def table_resolver(table: dict[str, list[str]]) -> Any:
    """A resolver answering from ``table`` only, so table tests never query DNS."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} is not in the test table")
        return table[host]

    return resolve


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


# --------------------------------------------------------------------------- refused URLs


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_x",
        "dict://127.0.0.1:11211/stat",
        "ldap://127.0.0.1/dc=x",
        "jar:http://example.com/a.jar!/",
        "data:application/dicom;base64,AAAA",
        "javascript:alert(1)",
        "//example.com/a.dcm",
        "example.com/a.dcm",
        "",
        "   ",
    ],
)
def test_unsupported_schemes_are_refused_with_400(url: str, dest: Path) -> None:
    error = refuse(InvalidUrl, url, dest)
    assert error.status == 400


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("s3://scans", "no object key"),
        ("s3://scans/", "no object key"),
        ("s3://user:pw@scans/a.dcm", "name a bucket"),
        ("s3://a/b.dcm", "not a valid bucket name"),
        ("https://s3.amazonaws.com/scans", "no object key"),
        ("s3://scans/a.dcm?versionId=1&versionId=2", "versionId"),
        ("https://bucket.acct.r2.cloudflarestorage.com/a.dcm", "ACCOUNT.r2.cloudflarestorage.com"),
        ("ftp://host.example/folder/", "must name a file"),
        ("ftp://host.example/a%0d%0aDELE%20b", "control characters"),
        ("http://exa mple.com/a.dcm", "not allowed in host names"),
        ("http://example.com/a\r\n.dcm", "control characters"),
        ("http://[::1/a.dcm", "cannot be parsed"),
        ("http://example.com:99999/a.dcm", "cannot be parsed"),
    ],
)
def test_malformed_urls_are_400(url: str, fragment: str, dest: Path) -> None:
    error = refuse(InvalidUrl, url, dest)
    assert fragment in error.message


# --------------------------------------------------------------------------- HTTP


def test_http_corpus_files_arrive_intact(
    http_server: servers.HttpServer, corpus_files: list[Path], dest: Path
) -> None:
    for path in corpus_files:
        url = http_server.put(f"corpus/{path.name}", path)
        fetch_and_check(url, dest, path)


def test_https_uses_the_ca_bundle_from_requests_ca_bundle(
    https_server: servers.HttpServer, tls_ca: servers.TestCA, sample_dicom: Path, dest: Path
) -> None:
    url = https_server.put("secure/CT small.dcm", sample_dicom)
    # REQUESTS_CA_BUNDLE (the standard variable) is what the settings read for ca_bundle.
    env = {"REQUESTS_CA_BUNDLE": str(tls_ca.bundle), "ALLOWED_HOSTS": "127.0.0.1:*"}
    settings = load_settings(environ=env)
    assert settings.requests_ca_bundle == str(tls_ca.bundle)
    options = make_options(ca_bundle=settings.requests_ca_bundle)
    fetch_and_check(url, dest, sample_dicom, options=options)


def test_https_with_an_untrusted_certificate_fails(
    https_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = https_server.put("secure/untrusted.dcm", sample_dicom)
    error = refuse(UpstreamError, url, dest)
    assert "REQUESTS_CA_BUNDLE" in error.message
    assert https_server.hits("secure/untrusted.dcm") == 0


def test_connects_to_the_checked_address_and_verifies_the_url_host_name(
    tmp_path: Path, tls_ca: servers.TestCA, sample_dicom: Path, dest: Path
) -> None:
    # The certificate names only "localhost"; the server listens only on 127.0.0.2,
    # which the system's resolver would never give for "localhost".
    server = servers.HttpServer(
        tmp_path / "pinned", host="127.0.0.2", tls=tls_ca.server_context("localhost")
    )
    try:
        (tmp_path / "pinned").mkdir(exist_ok=True)
        server.put("a.dcm", sample_dicom)
        lookups: list[str] = []

        def resolver(host: str, port: int) -> list[str]:
            lookups.append(host)
            return ["127.0.0.2"] if len(lookups) == 1 else ["127.0.0.1"]

        policy = UrlPolicy(allowed_hosts=("localhost:*", "127.0.0.2:*"), resolver=resolver)
        url = f"https://localhost:{server.port}/a.dcm"
        options = make_options(ca_bundle=str(tls_ca.bundle))
        fetch_and_check(url, dest, sample_dicom, options=options, policy=policy)
        assert lookups == ["localhost"], "the host is resolved once per hop"
        assert server.requests[-1].headers["Host"] == f"localhost:{server.port}"
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, NotFound), (410, NotFound), (401, Forbidden), (403, Forbidden), (418, UpstreamError)],
)
def test_http_error_statuses(
    http_server: servers.HttpServer, status: int, error: type[ServiceError], dest: Path
) -> None:
    url = http_server.route(f"status/{status}", servers.respond(status, b"no"))
    caught = refuse(error, url, dest)
    assert caught.status == {404: 404, 410: 404, 401: 403, 403: 403, 418: 502}[status]
    assert http_server.hits(f"status/{status}") == 1, "4xx answers are not retried"


def test_http_500_then_200_is_retried(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.route("flaky", servers.fail_first(1, 500, servers.serve_bytes(sample_dicom)))
    fetch_and_check(url, dest, sample_dicom)
    assert http_server.hits("flaky") == 2


def test_http_throttling_then_200_is_retried(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.route("busy", servers.fail_first(2, 429, servers.serve_bytes(sample_dicom)))
    fetch_and_check(url, dest, sample_dicom, options=make_options(retries=2))
    assert http_server.hits("busy") == 3


def test_http_retries_are_bounded(http_server: servers.HttpServer, dest: Path) -> None:
    url = http_server.route("down", servers.respond(503, b"down"))
    error = refuse(UpstreamError, url, dest, options=make_options(retries=1))
    assert error.status == 502
    assert http_server.hits("down") == 2


def test_http_redirects_are_followed(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    http_server.put("final/a.dcm", sample_dicom)
    http_server.route("hop1", servers.redirect(http_server.url("hop2"), 301))
    url = http_server.route("start", servers.redirect("/hop1", 302))
    http_server.route("hop2", servers.redirect("final/a.dcm", 307))
    fetch_and_check(url, dest, sample_dicom)
    assert [r.path for r in http_server.requests] == ["/start", "/hop1", "/hop2", "/final/a.dcm"]


@pytest.mark.parametrize(
    ("location", "rule"),
    [
        ("http://127.0.0.2:{port}/a.dcm", "not in ALLOWED_HOSTS"),
        ("http://localhost:{port}/a.dcm", "not in ALLOWED_HOSTS"),
        ("http://2130706433:{port}/a.dcm", "decimal, octal, hex"),
        ("http://[::ffff:127.0.0.1]:{port}/a.dcm", "bracketed IPv6"),
        ("http://169.254.169.254/latest/meta-data/", "not in ALLOWED_HOSTS"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://127.0.0.1:{port}/", "only http and https"),
    ],
)
def test_redirect_to_a_blocked_address_is_refused(
    http_server: servers.HttpServer, location: str, rule: str, dest: Path
) -> None:
    url = http_server.route("evil", servers.redirect(location.format(port=http_server.port)))
    error = refuse(BlockedByPolicy, url, dest)
    assert rule in error.message
    assert [r.path for r in http_server.requests] == ["/evil"]


def test_redirect_to_metadata_is_refused_without_allowlist(
    http_server: servers.HttpServer, dest: Path
) -> None:
    # The first hop is admitted by resolving a name to loopback, the second is refused
    # by the address classifier: nothing connects to 169.254.169.254.
    policy = UrlPolicy(
        allowed_hosts=("metadata.test", "127.0.0.1/32:*"),
        resolver=table_resolver({"metadata.test": ["169.254.169.254"]}),
    )
    url = http_server.route("meta", servers.redirect("http://metadata.test/latest/meta-data/"))
    error = refuse(BlockedByPolicy, url, dest, policy=policy)
    assert "metadata" in error.message
    assert [r.path for r in http_server.requests] == ["/meta"]


def test_redirect_loops_stop_at_max_redirects(http_server: servers.HttpServer, dest: Path) -> None:
    url = http_server.route("loop", servers.redirect("/loop"))
    error = refuse(UpstreamError, url, dest, options=make_options(max_redirects=2))
    assert "MAX_REDIRECTS" in error.message
    assert http_server.hits("loop") == 3


def test_declared_length_over_the_cap_is_refused_before_the_body(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.route("huge", servers.declare_length(sample_dicom, 10 * 1024**3))
    error = refuse(TooLarge, url, dest, options=make_options(max_bytes=1024 * 1024))
    assert error.status == 413 and "MAX_DOWNLOAD_BYTES" in error.message


def test_lying_content_length_short_body_is_an_upstream_error(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    size = sample_dicom.stat().st_size
    url = http_server.route("short", servers.declare_length(sample_dicom, size + 5000))
    error = refuse(UpstreamError, url, dest, options=make_options(retries=1))
    assert "broke after" in error.message
    assert http_server.hits("short") == 2, "a broken transfer is transient and retried"


def test_lying_content_length_with_compressed_body_is_capped_on_decoded_bytes(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    # Declares and sends ~50 kB, which inflate to 64 MB: the cap counts decoded bytes.
    bomb = gzip.compress(sample_dicom.read_bytes() + bytes(64 * 1024 * 1024))
    url = http_server.route("bomb", servers.respond(200, bomb, {"Content-Encoding": "gzip"}))
    started = time.monotonic()
    refuse(TooLarge, url, dest, options=make_options(max_bytes=1024 * 1024))
    assert time.monotonic() - started < 5


def test_gzip_content_encoding_is_decoded(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.route("gz", servers.gzipped(sample_dicom))
    fetch_and_check(url, dest, sample_dicom)
    assert http_server.requests[-1].headers["Accept-Encoding"] == "identity"


def test_unknown_content_encoding_is_refused(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    body = sample_dicom.read_bytes()
    url = http_server.route("br", servers.respond(200, body, {"Content-Encoding": "br"}))
    error = refuse(UpstreamError, url, dest)
    assert "Content-Encoding 'br'" in error.message


def test_chunked_oversize_body_is_cut_at_the_cap(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    data = sample_dicom.read_bytes()
    url = http_server.route("chunked", servers.chunked(lambda: (data for _ in range(200))))
    error = refuse(TooLarge, url, dest, options=make_options(max_bytes=len(data) * 3))
    assert "sent more than" in error.message


def test_chunked_body_within_the_cap_arrives_intact(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    data = sample_dicom.read_bytes()
    pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
    url = http_server.route("chunked-ok", servers.chunked(lambda: iter(pieces)))
    fetch_and_check(url, dest, sample_dicom)


def test_slow_drip_is_cut_off_at_the_deadline(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.route("drip", servers.drip(sample_dicom.read_bytes(), interval=0.05))
    started = time.monotonic()
    error = refuse(UpstreamTimeout, url, dest, options=make_options(deadline_seconds=1))
    elapsed = time.monotonic() - started
    assert error.status == 504 and "DOWNLOAD_DEADLINE_SECONDS" in error.message
    assert 0.9 < elapsed < 2.5


def test_stalled_body_is_cut_off_at_the_deadline_not_the_read_timeout(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    data = sample_dicom.read_bytes()
    url = http_server.route("stall", servers.stall(data[:1000], len(data), seconds=6))
    options = make_options(deadline_seconds=1, read_timeout=30)
    started = time.monotonic()
    error = refuse(UpstreamTimeout, url, dest, options=options)
    assert "DOWNLOAD_DEADLINE_SECONDS" in error.message
    assert time.monotonic() - started < 2.5


def test_read_timeout_applies_between_reads(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    data = sample_dicom.read_bytes()
    url = http_server.route("quiet", servers.stall(data[:1000], len(data), seconds=6))
    options = make_options(read_timeout=0.5, retries=0)
    error = refuse(UpstreamTimeout, url, dest, options=options)
    assert "READ_TIMEOUT_SECONDS" in error.message


def test_low_free_space_stops_the_download(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.put("space.dcm", sample_dicom)
    error = refuse(TooLarge, url, dest, options=make_options(min_free_bytes=2**60))
    assert "MIN_FREE_TMP_BYTES" in error.message


def test_file_name_never_comes_from_the_url_or_the_response(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    headers = {"Content-Disposition": 'attachment; filename="../../evil.sh"'}
    url = http_server.route("a/..%2F..%2Fevil.dcm", servers.serve_bytes(sample_dicom, headers))
    path = fetch(url, dest)
    assert path.parent == dest and path.name.startswith("download-")
    assert sha256(path) == sha256(sample_dicom)
    assert [p.name for p in dest.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.2",
        "2130706433",
        "0x7f.0.0.1",
        "0177.0.0.1",
        "127.1",
        "[::ffff:127.0.0.1]",
        "localhost",
    ],
)
def test_live_refusals_of_loopback_spellings_that_are_not_allowlisted(
    http_server: servers.HttpServer, sample_dicom: Path, host: str, dest: Path
) -> None:
    http_server.put("target.dcm", sample_dicom)
    url = http_server.url("target.dcm", host=host)
    refuse(BlockedByPolicy, url, dest, policy=LOOPBACK)
    assert http_server.requests == []


def test_loopback_is_refused_without_allowed_hosts(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.put("default.dcm", sample_dicom)
    error = refuse(BlockedByPolicy, url, dest, policy=UrlPolicy())
    assert "loopback" in error.message and error.status == 403
    assert http_server.requests == []


def test_basic_auth_from_the_url_is_sent(
    http_server: servers.HttpServer, sample_dicom: Path, dest: Path
) -> None:
    url = http_server.put("auth.dcm", sample_dicom).replace("http://", "http://reader:pw%21@")
    fetch_and_check(url, dest, sample_dicom)
    assert http_server.requests[-1].headers["Authorization"].startswith("Basic ")


def test_an_http_download_does_not_import_boto3(
    http_server: servers.HttpServer, sample_dicom: Path, tmp_path: Path
) -> None:
    url = http_server.put("cold.dcm", sample_dicom)
    script = f"""
import sys
from pathlib import Path
import file_downloader
from url_policy import UrlPolicy
options = file_downloader.DownloadOptions(
    max_bytes=2**24, min_free_bytes=0, connect_timeout=3, read_timeout=5,
    deadline_seconds=20, retries=0, max_redirects=0,
)
policy = UrlPolicy(allowed_hosts=("127.0.0.1:*",))
path = file_downloader.fetch({url!r}, Path({str(tmp_path)!r}), options, policy)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore")))
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- FTP


def test_ftp_with_user_and_password(
    ftp_server: servers.FtpServer, corpus_files: list[Path], dest: Path
) -> None:
    for path in corpus_files:
        url = ftp_server.put(f"studies/{path.name}", path)
        assert "%40" in url and "%3A" in url  # the password is percent-encoded in the URL
        fetch_and_check(url, dest, path)


def test_ftp_anonymous(ftp_server: servers.FtpServer, sample_dicom: Path, dest: Path) -> None:
    ftp_server.put("public/CT small.dcm", sample_dicom)
    url = ftp_server.url("public/CT small.dcm", anonymous=True)
    fetch_and_check(url, dest, sample_dicom)


def test_ftps_explicit_tls(
    ftps_server: servers.FtpServer, tls_ca: servers.TestCA, sample_dicom: Path, dest: Path
) -> None:
    url = ftps_server.put("secure/a.dcm", sample_dicom)
    assert url.startswith("ftps://")
    fetch_and_check(url, dest, sample_dicom, options=make_options(ca_bundle=str(tls_ca.bundle)))


def test_ftps_with_an_untrusted_certificate_fails(
    ftps_server: servers.FtpServer, sample_dicom: Path, dest: Path
) -> None:
    url = ftps_server.put("secure/b.dcm", sample_dicom)
    error = refuse(UpstreamError, url, dest)
    assert "REQUESTS_CA_BUNDLE" in error.message


def test_ftp_missing_file_is_not_found(ftp_server: servers.FtpServer, dest: Path) -> None:
    error = refuse(NotFound, ftp_server.url("nowhere/none.dcm"), dest)
    assert "550" in error.message and error.status == 404


def test_ftp_wrong_password_is_forbidden(ftp_server: servers.FtpServer, dest: Path) -> None:
    url = ftp_server.url("studies/x.dcm", password="wrong")
    error = refuse(Forbidden, url, dest)
    assert "530" in error.message and error.status == 403
    assert "wrong" not in error.message


def test_ftp_size_over_the_cap_is_refused(
    ftp_server: servers.FtpServer, sample_dicom: Path, dest: Path
) -> None:
    url = ftp_server.put("big.dcm", sample_dicom)
    error = refuse(TooLarge, url, dest, options=make_options(max_bytes=1000))
    assert "MAX_DOWNLOAD_BYTES" in error.message


def test_ftp_host_must_be_allowlisted(
    ftp_server: servers.FtpServer, sample_dicom: Path, dest: Path
) -> None:
    ftp_server.put("policy.dcm", sample_dicom)
    url = f"ftp://127.0.0.2:{ftp_server.port}/policy.dcm"
    refuse(BlockedByPolicy, url, dest)


# --------------------------------------------------------------------------- S3

S3_BUCKET = "dicom.scans.test"
S3_KEY = "studies/2024 scan (1)/café+1.dcm"
S3_KEY_IN_URL = quote(S3_KEY)


def s3_options(moto_s3: servers.MotoServer, **overrides: Any) -> fd.DownloadOptions:
    """Options that send S3 URLs to the moto server (S3_ENDPOINT_URL)."""
    return make_options(endpoints=SourceEndpoints(s3=moto_s3.endpoint_url), **overrides)


@pytest.fixture(scope="module")
def s3_object(moto_s3: servers.MotoServer, sample_dicom: Path) -> Path:
    moto_s3.put_object(S3_BUCKET, S3_KEY, sample_dicom)
    return sample_dicom


@pytest.mark.parametrize(
    "url",
    [
        f"s3://{S3_BUCKET}/{S3_KEY_IN_URL}",
        f"s3://{S3_BUCKET}/{S3_KEY}",
        f"https://{S3_BUCKET}.s3.amazonaws.com/{S3_KEY_IN_URL}",
        f"https://{S3_BUCKET}.s3.us-east-1.amazonaws.com/{S3_KEY_IN_URL}",
        f"https://{S3_BUCKET}.s3-eu-west-1.amazonaws.com/{S3_KEY_IN_URL}",
        f"https://s3.us-west-2.amazonaws.com/{S3_BUCKET}/{S3_KEY_IN_URL}",
        f"https://s3.amazonaws.com/{S3_BUCKET}/{S3_KEY_IN_URL}",
    ],
)
def test_s3_url_forms_read_through_the_endpoint(
    moto_s3: servers.MotoServer, s3_object: Path, url: str, dest: Path
) -> None:
    options = s3_options(moto_s3)
    assert source_type(url, endpoints=options.endpoints) == "s3"
    fetch_and_check(url, dest, s3_object, options=options)
    fetch_and_check(url, dest, s3_object, storage_type="s3", options=options)


def test_s3_url_on_the_endpoint_itself(
    moto_s3: servers.MotoServer, s3_object: Path, dest: Path
) -> None:
    # Read through the endpoint as S3, not as an HTTP host the policy would refuse.
    url = f"{moto_s3.endpoint_url}/{S3_BUCKET}/{S3_KEY_IN_URL}"
    fetch_and_check(url, dest, s3_object, options=s3_options(moto_s3), policy=UrlPolicy())


def test_s3_corpus_files_arrive_intact(
    moto_s3: servers.MotoServer, corpus_files: list[Path], dest: Path
) -> None:
    options = s3_options(moto_s3)
    for path in corpus_files:
        moto_s3.put_object("corpus", f"dicom/{path.name}", path)
        fetch_and_check(f"s3://corpus/dicom/{path.name}", dest, path, options=options)


def test_s3_version_id(
    moto_s3: servers.MotoServer, sample_dicom: Path, corpus_files: list[Path], dest: Path
) -> None:
    other = corpus_files[-1] if len(corpus_files) > 1 else None
    newer = other.read_bytes() if other else sample_dicom.read_bytes()[::-1]
    moto_s3.create_bucket("versioned.scans", versioned=True)
    first = moto_s3.put_object("versioned.scans", "a.dcm", sample_dicom)
    moto_s3.put_object("versioned.scans", "a.dcm", newer)
    options = s3_options(moto_s3)
    fetch_and_check(
        f"s3://versioned.scans/a.dcm?versionId={first}", dest, sample_dicom, options=options
    )
    latest = fetch("s3://versioned.scans/a.dcm", dest, options)
    assert sha256(latest) == sha256(newer)
    latest.unlink()
    url = f"https://versioned.scans.s3.amazonaws.com/a.dcm?versionId={first}"
    fetch_and_check(url, dest, sample_dicom, options=options)


@pytest.mark.parametrize(
    "url",
    [
        f"s3://{S3_BUCKET}/no/such/key.dcm",
        "s3://no-such-bucket-here/a.dcm",
        f"s3://{S3_BUCKET}/{S3_KEY_IN_URL}?versionId=no-such-version",
    ],
)
def test_s3_missing_object_is_not_found(
    moto_s3: servers.MotoServer, s3_object: Path, url: str, dest: Path
) -> None:
    error = refuse(NotFound, url, dest, options=s3_options(moto_s3))
    assert error.status == 404


def test_s3_bucket_outside_allowed_buckets_is_refused(
    moto_s3: servers.MotoServer, s3_object: Path, dest: Path
) -> None:
    policy = UrlPolicy(allowed_hosts=("127.0.0.1:*",), allowed_buckets=("other-*",))
    url = f"s3://{S3_BUCKET}/{S3_KEY_IN_URL}"
    error = refuse(BlockedByPolicy, url, dest, options=s3_options(moto_s3), policy=policy)
    assert S3_BUCKET in error.message and "ALLOWED_BUCKETS" in error.message


def test_s3_object_over_the_cap_is_refused(
    moto_s3: servers.MotoServer, s3_object: Path, dest: Path
) -> None:
    options = s3_options(moto_s3, max_bytes=1000)
    error = refuse(TooLarge, f"s3://{S3_BUCKET}/{S3_KEY_IN_URL}", dest, options=options)
    assert "MAX_DOWNLOAD_BYTES" in error.message


def test_presigned_s3_url_is_fetched_as_http(
    moto_s3: servers.MotoServer, s3_object: Path, dest: Path
) -> None:
    url = moto_s3.presign(S3_BUCKET, S3_KEY)
    assert "X-Amz-Signature=" in url
    options = s3_options(moto_s3)
    assert source_type(url, endpoints=options.endpoints) == "http"
    fetch_and_check(url, dest, s3_object, options=options)
    assert "X-Amz-Signature=***" in redact_url(url)


# --------------------------------------------------------------------------- R2

R2_BUCKET = "r2-scans"


def r2_options(
    moto_r2: servers.MotoServer, s3_endpoint: str | None = None, **overrides: Any
) -> fd.DownloadOptions:
    """Options that send R2 URLs to the second moto server, signed with its keys."""
    values: dict[str, Any] = {
        "endpoints": SourceEndpoints(s3=s3_endpoint, r2=moto_r2.endpoint_url),
        "r2_access_key_id": moto_r2.access_key_id,
        "r2_secret_access_key": moto_r2.secret_access_key,
    }
    values.update(overrides)
    return make_options(**values)


@pytest.fixture(scope="module")
def r2_object(moto_r2: servers.MotoServer, sample_dicom: Path) -> Path:
    moto_r2.put_object(R2_BUCKET, "studies/a b.dcm", sample_dicom)
    return sample_dicom


@pytest.mark.parametrize(
    "url",
    [
        f"https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com/{R2_BUCKET}/studies/a%20b.dcm",
        f"r2://{R2_BUCKET}/studies/a%20b.dcm",
        f"r2://{R2_BUCKET}/studies/a b.dcm",
    ],
)
def test_r2_is_read_with_the_r2_keys(
    moto_r2: servers.MotoServer, r2_object: Path, url: str, dest: Path
) -> None:
    # moto_r2 accepts only its own keys; the process's AWS keys would be refused.
    options = r2_options(moto_r2)
    assert source_type(url, endpoints=options.endpoints) == "r2"
    fetch_and_check(url, dest, r2_object, options=options)


def test_r2_corpus_files_arrive_intact(
    moto_r2: servers.MotoServer, corpus_files: list[Path], dest: Path
) -> None:
    options = r2_options(moto_r2)
    for path in corpus_files[:6]:
        moto_r2.put_object(R2_BUCKET, f"corpus/{path.name}", path)
        fetch_and_check(f"r2://{R2_BUCKET}/corpus/{path.name}", dest, path, options=options)


def test_r2_without_credentials_is_a_4xx_that_says_so(
    moto_r2: servers.MotoServer, dest: Path
) -> None:
    # The caller can send another URL: a 500 would blame the deployment for a request.
    options = r2_options(moto_r2, r2_access_key_id="", r2_secret_access_key="")
    error = refuse(SourceNotConfigured, f"r2://{R2_BUCKET}/studies/a.dcm", dest, options=options)
    assert "does not read R2" in error.message and "R2_ACCESS_KEY_ID" in error.message
    assert (error.status, error.code) == (400, "source_not_configured")


def test_r2_refuses_other_keys(
    moto_r2: servers.MotoServer,
    r2_object: Path,
    fake_aws_credentials: dict[str, str],
    dest: Path,
) -> None:
    options = r2_options(
        moto_r2,
        r2_access_key_id=fake_aws_credentials["AWS_ACCESS_KEY_ID"],
        r2_secret_access_key=fake_aws_credentials["AWS_SECRET_ACCESS_KEY"],
    )
    error = refuse(Forbidden, f"r2://{R2_BUCKET}/studies/a%20b.dcm", dest, options=options)
    assert "InvalidAccessKeyId" in error.message


def test_r2_missing_object_is_not_found(
    moto_r2: servers.MotoServer, r2_object: Path, dest: Path
) -> None:
    options = r2_options(moto_r2)
    error = refuse(NotFound, f"r2://{R2_BUCKET}/studies/none.dcm", dest, options=options)
    assert "NoSuchKey" in error.message


# --------------------------------------------------------------------------- secrets


def test_no_secret_in_logs_or_error_messages(
    caplog: pytest.LogCaptureFixture,
    http_server: servers.HttpServer,
    ftp_server: servers.FtpServer,
    moto_s3: servers.MotoServer,
    moto_r2: servers.MotoServer,
    fake_aws_credentials: dict[str, str],
    s3_object: Path,
    r2_object: Path,
    dest: Path,
) -> None:
    presigned = moto_s3.presign(S3_BUCKET, S3_KEY)
    signature = parse_qs(urlsplit(presigned).query)["X-Amz-Signature"][0]
    fake_signature = "5ec2e7519a7c0ffee0123456789abcdef0123456789abcdef0123456789abcd"
    ftp_url = ftp_server.put("secret/a.dcm", s3_object)
    http_server.route("flaky-secret", servers.respond(500, b"no"))
    secrets = [
        ftp_server.password,
        quote(ftp_server.password, safe=""),
        "hunter2-basic",
        signature,
        fake_signature,
        "FQoGZXIvYXdzEBYaDnotreal",
        moto_r2.secret_access_key,
        fake_aws_credentials["AWS_SECRET_ACCESS_KEY"],
        fake_aws_credentials["AWS_SESSION_TOKEN"],
    ]
    options = r2_options(moto_r2, s3_endpoint=moto_s3.endpoint_url, retries=1)
    signed_failure = (
        http_server.url("flaky-secret")
        + f"?X-Amz-Signature={fake_signature}&X-Amz-Security-Token=FQoGZXIvYXdzEBYaDnotreal"
    )
    caplog.clear()
    caplog.set_level(logging.DEBUG)

    fetch(ftp_url, dest, options).unlink()
    fetch(presigned, dest, options).unlink()
    fetch(f"r2://{R2_BUCKET}/studies/a%20b.dcm", dest, options).unlink()
    fetch(f"s3://{S3_BUCKET}/{S3_KEY_IN_URL}", dest, options).unlink()
    failures = [
        ftp_server.url("secret/a.dcm", password="hunter2-basic"),
        ftp_server.url("secret/none.dcm"),
        signed_failure,
        http_server.url("missing.dcm").replace("http://", "http://reader:hunter2-basic@"),
        http_server.url("x.dcm", host="10.0.0.1").replace("http://", "http://u:hunter2-basic@"),
        presigned.replace("127.0.0.1", "127.0.0.2"),
        f"r2://{R2_BUCKET}/studies/none.dcm",
        "ftp://u:hunter2-basic@0x7f000001/a.dcm",
        "gopher://u:hunter2-basic@127.0.0.1/",
        # Connection refused: requests' exception text would carry the signed query.
        f"http://127.0.0.1:{closed_port()}/x.dcm?X-Amz-Signature={fake_signature}",
    ]
    texts = []
    for url in failures:
        with pytest.raises(ServiceError) as caught:
            fetch(url, dest, options)
        texts.append(caught.value.message)
        texts.append("".join(traceback.format_exception(caught.value)))

    logged = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("pyftpdlib")
    )
    assert "fetching" in logged and "retrying" in logged
    for secret in secrets:
        assert secret not in logged, f"a secret was logged: {secret[:6]}..."
        for text in texts:
            assert secret not in text, f"a secret is in an error: {secret[:6]}..."
    assert list(dest.iterdir()) == []


def test_options_repr_hides_the_r2_keys(moto_r2: servers.MotoServer) -> None:
    shown = repr(r2_options(moto_r2))
    assert moto_r2.secret_access_key not in shown and moto_r2.access_key_id not in shown
