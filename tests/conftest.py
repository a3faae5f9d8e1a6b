"""Shared fixtures: real servers on loopback and the DICOM files to send through them.

Servers (see ``tests/servers.py``):

- ``moto_s3`` / ``moto_r2`` (session): moto S3 APIs, each in its own process. R2 accepts
  only requests signed with its own generated keys (``moto_r2.access_key_id``...).
- ``http_server`` / ``https_server``: threaded servers serving files put with
  ``.put(name, body)`` plus scripted routes (``.route(path, servers.drip(...))``);
  routes and the request log are cleared after each test.
- ``ftp_server`` / ``ftps_server`` (session): pyftpdlib with a user and anonymous access.
- ``tls_ca`` (session): the throwaway CA that signed the HTTPS/FTPS certificates;
  ``tls_ca.bundle`` is the CA file to trust (REQUESTS_CA_BUNDLE).
- ``loopback_env``: environment variables that point the service's settings at all of
  the above (allowlisting 127.0.0.1), for tests that go through ``get_settings()``.

Files: ``sample_dicom`` (CT_small.dcm from pydicom's wheel) and ``corpus_files``
(that file plus the shared corpus's ``*.dcm`` when the corpus is present).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import temp_cleaner
from settings import Settings, load_settings
from tests import servers
from tests.corpus import bundled_file, corpus_dir, corpus_required

# Credentials every test process uses for "AWS": fake, so that nothing can reach a real
# account and botocore never asks the instance metadata service for credentials.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing-aws-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-aws-secret-key",
    "AWS_SESSION_TOKEN": "testing-aws-session-token",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def pytest_configure(config: pytest.Config) -> None:
    # pyftpdlib still imports asyncore/asynchat, deprecated in Python 3.11.
    for module in ("asyncore", "asynchat"):
        config.addinivalue_line(
            "filterwarnings", f"ignore:The {module} module is deprecated:DeprecationWarning"
        )


@pytest.fixture(scope="session", autouse=True)
def fake_aws_credentials() -> Iterator[dict[str, str]]:
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            patch.delenv(name, raising=False)
        patch.setenv("AWS_CONFIG_FILE", "/dev/null")
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        for name, value in FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        yield dict(FAKE_AWS_ENV)


@pytest.fixture(scope="session")
def sample_dicom() -> Path:
    return bundled_file("CT_small.dcm")


@pytest.fixture(scope="session")
def corpus_files(sample_dicom: Path) -> list[Path]:
    """CT_small.dcm, plus every ``*.dcm`` of the shared corpus when it is present."""
    folder = corpus_dir()
    if not (folder / "MANIFEST.tsv").exists():
        if corpus_required():
            pytest.fail(f"shared DICOM corpus not found at {folder} (DICOM_CORPUS_REQUIRED)")
        return [sample_dicom]
    return [sample_dicom, *sorted(folder.glob("*.dcm"))]


@pytest.fixture(scope="session")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> servers.TestCA:
    return servers.make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[servers.MotoServer]:
    server = servers.start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_r2() -> Iterator[servers.MotoServer]:
    server = servers.start_moto("r2-bootstrap", "r2-bootstrap", enforce_auth=True)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    server = servers.HttpServer(tmp_path_factory.mktemp("http-root"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _https_server(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: servers.TestCA
) -> Iterator[servers.HttpServer]:
    context = tls_ca.server_context("localhost", "127.0.0.1")
    server = servers.HttpServer(tmp_path_factory.mktemp("https-root"), tls=context)
    yield server
    server.stop()


@pytest.fixture
def http_server(_http_server: servers.HttpServer) -> Iterator[servers.HttpServer]:
    yield _http_server
    _http_server.reset()


@pytest.fixture
def https_server(_https_server: servers.HttpServer) -> Iterator[servers.HttpServer]:
    yield _https_server
    _https_server.reset()


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.FtpServer]:
    server = servers.FtpServer(tmp_path_factory.mktemp("ftp-root"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ftps_server(
    tmp_path_factory: pytest.TempPathFactory, tls_ca: servers.TestCA
) -> Iterator[servers.FtpServer]:
    folder = tmp_path_factory.mktemp("ftps-root")
    certfile = tls_ca.issue("localhost", "127.0.0.1", folder=tmp_path_factory.mktemp("ftps-cert"))
    server = servers.FtpServer(folder, certfile=certfile)
    yield server
    server.stop()


@pytest.fixture
def loopback_env(
    monkeypatch: pytest.MonkeyPatch,
    moto_s3: servers.MotoServer,
    moto_r2: servers.MotoServer,
    tls_ca: servers.TestCA,
) -> Iterator[dict[str, str]]:
    """Point ``get_settings()`` at the loopback servers through environment variables."""
    import settings

    env = {
        "ALLOWED_HOSTS": "127.0.0.1:*",
        "S3_ENDPOINT_URL": moto_s3.endpoint_url,
        "R2_ENDPOINT_URL": moto_r2.endpoint_url,
        "R2_ACCESS_KEY_ID": moto_r2.access_key_id,
        "R2_SECRET_ACCESS_KEY": moto_r2.secret_access_key,
        "REQUESTS_CA_BUNDLE": str(tls_ca.bundle),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings.get_settings.cache_clear()
    yield env
    settings.get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _sweep_clock() -> None:
    """Each test starts with the stale sweep due, whatever earlier tests did."""
    temp_cleaner.reset_sweep_clock()


@pytest.fixture
def temp_root(tmp_path: Path) -> Path:
    """A work-folder root of the test's own (the handler's TEMP_ROOT)."""
    return tmp_path / "work"


@pytest.fixture
def make_settings(temp_root: Path) -> Callable[..., Settings]:
    """Settings for loopback handler tests, independent of the developer's environment."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "temp_root": str(temp_root),
            "allowed_hosts": "127.0.0.1:*",
            "download_retries": 0,
            "connect_timeout_seconds": 2,
            "read_timeout_seconds": 5,
            "download_deadline_seconds": 10,
        }
        values.update(overrides)
        return load_settings(values, environ={})

    return build


@pytest.fixture
def sample_url(http_server: servers.HttpServer, sample_dicom: Path) -> str:
    """CT_small.dcm on the loopback HTTP server."""
    return http_server.put("CT_small.dcm", sample_dicom)
