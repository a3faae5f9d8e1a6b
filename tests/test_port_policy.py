"""The port dimension of the URL policy, against real listeners on loopback.

A file server listens on one loopback port; canary listeners wait on others. Each
case sends a URL, directly or as a redirect from the file server, under a policy
that admits the file server's port but not the canary's. The download must be
refused before any connection: no canary is ever contacted, which the canaries
count themselves and the loopback guard confirms. The Lambda Runtime API's address
is a canary that no policy can admit, not even ``127.0.0.1:*``, including as an FTP
server's PASV data port.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import file_downloader as fd
from errors import BlockedByPolicy, ServiceError
from tests import servers
from tests.loopback_guard import GUARD
from tests.test_file_downloader import make_options, table_resolver
from url_policy import UrlPolicy, parse_host_entry

CANARY_HOSTS = ("127.0.0.1", "127.0.0.2")


@pytest.fixture(scope="module")
def canaries() -> Iterator[dict[str, servers.RawTcpServer]]:
    """Listeners that must never see a connection: (host) → server."""
    started = {host: servers.RawTcpServer(lambda c: None, host=host) for host in CANARY_HOSTS}
    yield started
    for canary in started.values():
        canary.stop()


@pytest.fixture(autouse=True)
def _no_canary_contacted(canaries: dict[str, servers.RawTcpServer]) -> Iterator[None]:
    before = {host: c.accepted for host, c in canaries.items()}
    with GUARD.watching():
        yield
    assert GUARD.violations == []
    assert {host: c.accepted for host, c in canaries.items()} == before, "a canary was contacted"
    canary_ports = {f"{host}:{c.port}" for host, c in canaries.items()}
    assert not canary_ports & set(GUARD.connects)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


def fetch(url: str, dest: Path, policy: UrlPolicy) -> Path:
    return fd.fetch(url, dest, make_options(retries=0), policy)


def policies(file_port: int, canary_port: int) -> dict[str, UrlPolicy]:
    """Policies that admit the file server and not the canary (runtime API not set)."""
    resolver = table_resolver({"localhost": ["127.0.0.1"], "files.test": ["127.0.0.1"]})
    entries = {
        "host:port": ("127.0.0.1:{p}",),
        "no port (default only)": ("127.0.0.1", "127.0.0.1:{p}"),
        "CIDR:port": ("127.0.0.0/8:{p}",),
        "name:port + address:port": ("files.test:{p}", "127.0.0.1:{p}"),
        "name:* + address:port": ("files.test:*", "127.0.0.1:{p}"),
        "two ports": (
            "127.0.0.1:{p}",
            f"127.0.0.1:{canary_port + 1 if canary_port < 65535 else 1}",
        ),
    }
    return {
        name: UrlPolicy(
            allowed_hosts=tuple(e.format(p=file_port) for e in listed),
            resolver=resolver,
            runtime_api=None,
        )
        for name, listed in entries.items()
    }


TARGETS = [
    "http://127.0.0.1:{canary}/a.dcm",
    "http://127.0.0.2:{canary2}/a.dcm",
    "http://files.test:{canary}/a.dcm",
    "http://localhost:{canary}/a.dcm",
    "https://127.0.0.1:{canary}/a.dcm",
    "ftp://127.0.0.1:{canary}/a.dcm",
    "http://[::ffff:127.0.0.1]:{canary}/a.dcm",
]
POLICY_NAMES = list(policies(1000, 2000))


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("how", ["direct", "redirect"])
def test_no_canary_is_contacted(
    http_server: servers.HttpServer,
    canaries: dict[str, servers.RawTcpServer],
    sample_dicom: Path,
    dest: Path,
    policy_name: str,
    target: str,
    how: str,
) -> None:
    canary = canaries["127.0.0.1"].port
    policy = policies(http_server.port, canary)[policy_name]
    url = target.format(canary=canary, canary2=canaries["127.0.0.2"].port)
    if how == "redirect":
        if not url.startswith("http"):
            pytest.skip("only http(s) redirects are followed at all")
        url = http_server.route("to-canary", servers.redirect(url))
    with pytest.raises(BlockedByPolicy) as caught:
        fetch(url, dest, policy)
    assert list(dest.iterdir()) == []
    # The file server itself is admitted by every policy here.
    http_server.put("ok.dcm", sample_dicom)
    fetch(http_server.url("ok.dcm"), dest, policy).unlink()
    assert caught.value.status == 403


def test_an_entry_without_a_port_admits_only_the_default_port(
    http_server: servers.HttpServer, dest: Path
) -> None:
    policy = UrlPolicy(allowed_hosts=("127.0.0.1",), runtime_api=None)
    with pytest.raises(BlockedByPolicy, match=rf"not with port {http_server.port}.*only port 80"):
        fetch(http_server.url("a.dcm"), dest, policy)
    assert http_server.requests == []


# --------------------------------------------------------------------------- the Runtime API

RUNTIME_SPELLINGS = [
    "http://127.0.0.1:{port}/2018-06-01/runtime/invocation/next",
    "http://127.0.0.2:{port}/2018-06-01/runtime/invocation/next",
    "http://0.0.0.0:{port}/",
    "http://localhost:{port}/",
    "http://[::1]:{port}/",
    "http://[::ffff:7f00:1]:{port}/",
]


@pytest.mark.parametrize("spelling", RUNTIME_SPELLINGS)
@pytest.mark.parametrize("how", ["direct", "redirect"])
def test_the_runtime_api_is_never_reachable(
    http_server: servers.HttpServer,
    canaries: dict[str, servers.RawTcpServer],
    dest: Path,
    spelling: str,
    how: str,
) -> None:
    runtime = canaries["127.0.0.1"].port
    # Everything local is listed, on every port: the Runtime API still is not reachable.
    policy = UrlPolicy(
        allowed_hosts=(
            "127.0.0.0/8:*",
            "0.0.0.0/32:*",
            "[::1]:*",
            "[::ffff:0:0/96]:*",
            "localhost:*",
        ),
        resolver=table_resolver({"localhost": ["127.0.0.1", "::1"]}),
        runtime_api=f"127.0.0.1:{runtime}",
    )
    url = spelling.format(port=runtime)
    if how == "redirect":
        url = http_server.route("to-runtime", servers.redirect(url))
    with pytest.raises(BlockedByPolicy, match="Lambda Runtime API"):
        fetch(url, dest, policy)


def test_the_runtime_api_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001")
    policy = UrlPolicy(allowed_hosts=("127.0.0.1:*",), resolver=table_resolver({}))
    with pytest.raises(BlockedByPolicy, match="Lambda Runtime API"):
        policy.check_url("http://127.0.0.1:9001/2018-06-01/runtime/invocation/next")
    assert policy.check_url("http://127.0.0.1:9002/").port == 9002


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_ftp_pasv_reply_cannot_name_the_runtime_api_port(
    tmp_path: Path, sample_dicom: Path, dest: Path
) -> None:
    runtime = _free_port()
    (tmp_path / "ftp-root").mkdir()
    ftp = servers.FtpServer(tmp_path / "ftp-root")
    try:
        ftp._server.handler.passive_ports = [runtime]
        url = ftp.put("a.dcm", sample_dicom)
        policy = UrlPolicy(allowed_hosts=("127.0.0.1:*",), runtime_api=f"127.0.0.1:{runtime}")
        with pytest.raises(BlockedByPolicy, match="Lambda Runtime API"):
            fetch(url, dest, policy)
        assert f"127.0.0.1:{runtime}" not in GUARD.connects
        # The same server with another data port is read normally.
        ftp._server.handler.passive_ports = None
        fetch(url, dest, policy).unlink()
    finally:
        ftp.stop()


# --------------------------------------------------------------------------- entry grammar

ENTRIES: list[tuple[str, dict[str, Any] | None]] = [
    ("files.internal", {"name": "files.internal", "port": None, "any_port": False}),
    ("files.internal:8443", {"name": "files.internal", "port": 8443}),
    ("FILES.internal.:*", {"name": "files.internal", "any_port": True}),
    ("*.example.org:443", {"suffix": ".example.org", "port": 443}),
    ("127.0.0.1:*", {"any_port": True}),
    ("10.0.0.0/8:9000", {"port": 9000}),
    ("fd00::/8:443", {"port": 443}),
    ("[fd00::/8]:443", {"port": 443}),
    ("[::1]:8080", {"port": 8080}),
    ("::1", {"port": None}),
    ("[::1]", {"port": None}),
    ("host:0", None),
    ("host:65536", None),
    ("host:", None),
    ("host:80:81", None),
    ("host:http", None),
    ("[127.0.0.1]:80", None),
    ("[::1]x", None),
    ("[::1", None),
    ("internal.corp/path", None),
    ("*", None),
    ("*.:80", None),
    ("user@host", None),
    ("host/8:80", None),
]


@pytest.mark.parametrize(("entry", "expected"), ENTRIES)
def test_settings_and_the_policy_read_entries_alike(
    entry: str, expected: dict[str, Any] | None
) -> None:
    from settings import _is_host_entry

    try:
        parsed = parse_host_entry(entry)
    except ValueError:
        parsed = None
    assert (parsed is not None) == (expected is not None) == _is_host_entry(entry), entry
    for name, value in (expected or {}).items():
        assert getattr(parsed, name) == value, (entry, name)


def test_an_invalid_entry_is_a_configuration_error_naming_only_the_setting() -> None:
    policy = UrlPolicy(allowed_hosts=("secret-internal.corp:99999",))
    with pytest.raises(ServiceError) as caught:
        policy.check_url("http://8.8.8.8/")
    assert caught.value.code == "configuration_error"
    assert "ALLOWED_HOSTS" in caught.value.message
    assert "secret-internal" not in caught.value.message
