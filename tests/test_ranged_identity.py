"""Source identity: what names one version of a source, by probe and by whole download.

The caching of rendered images builds its ETags on ``SourceIdentity.token()``, so a
probe (HEAD, HeadObject, MDTM + SIZE) must give the same identity as the download it
stands for, and a source that names no version is identified by its bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import file_downloader as fd
from errors import BlockedByPolicy, NotFound
from tests import servers
from tests.test_file_downloader import LOOPBACK, make_options
from url_policy import SourceEndpoints, UrlPolicy

BODY = b"DICM-like bytes " * 1000


def test_http_etag_identity_from_probe_and_download(
    http_server: servers.HttpServer, tmp_path: Path
) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(BODY)
    url = http_server.route("/etag.dcm", servers.RangeFile(path, etag='"abc"'))
    probed = fd.probe(url, make_options(), LOOPBACK)
    fetched = fd.download(url, tmp_path / "out", make_options(), LOOPBACK)
    assert probed == fetched.identity == fd.SourceIdentity("http-etag", '"abc"', len(BODY))
    assert fetched.path.read_bytes() == BODY and fetched.size == len(BODY)
    assert probed.token() == f'http-etag:"abc":{len(BODY)}'


def test_http_last_modified_identity(http_server: servers.HttpServer, tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(BODY)
    url = http_server.route("/modified.dcm", servers.RangeFile(path, etag=None))
    probed = fd.probe(url, make_options(), LOOPBACK)
    assert probed is not None and probed.kind == "http-modified" and probed.size == len(BODY)
    assert fd.download(url, tmp_path / "out", make_options(), LOOPBACK).identity == probed


def test_no_validator_means_content_hash(http_server: servers.HttpServer, tmp_path: Path) -> None:
    url = http_server.route("/bare.dcm", servers.serve_bytes(BODY))
    assert fd.probe(url, make_options(), LOOPBACK) is None
    fetched = fd.download(url, tmp_path / "out", make_options(), LOOPBACK)
    digest = hashlib.sha256(BODY).hexdigest()
    assert fetched.identity == fd.SourceIdentity("sha256", digest, len(BODY))


def test_probe_follows_checked_redirects(http_server: servers.HttpServer, tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    path.write_bytes(BODY)
    http_server.route("/target.dcm", servers.RangeFile(path))
    url = http_server.route("/moved.dcm", servers.redirect("/target.dcm"))
    assert fd.probe(url, make_options(), LOOPBACK) == fd.SourceIdentity(
        "http-etag", '"v1"', len(BODY)
    )
    away = http_server.route("/away.dcm", servers.redirect("http://169.254.169.254/x"))
    with pytest.raises(BlockedByPolicy):
        fd.probe(away, make_options(), LOOPBACK)


def test_probe_missing_http_object(http_server: servers.HttpServer) -> None:
    with pytest.raises(NotFound):
        fd.probe(http_server.url("/nothing.dcm"), make_options(retries=0), LOOPBACK)


def test_s3_identity_is_etag_and_version(moto_s3: servers.MotoServer, tmp_path: Path) -> None:
    moto_s3.create_bucket("ids", versioned=True)
    version = moto_s3.put_object("ids", "a.dcm", BODY)
    options = make_options(endpoints=SourceEndpoints(s3=moto_s3.endpoint_url))
    url = "s3://ids/a.dcm"
    probed = fd.probe(url, options, UrlPolicy())
    fetched = fd.download(url, tmp_path / "out", options, UrlPolicy())
    assert probed == fetched.identity
    assert probed is not None and probed.kind == "s3" and probed.size == len(BODY)
    assert probed.value.endswith(f"/{version}")
    moto_s3.put_object("ids", "a.dcm", BODY + b"x")
    assert fd.probe(url, options, UrlPolicy()) != probed
    with pytest.raises(NotFound):
        fd.probe("s3://ids/missing.dcm", options, UrlPolicy())


def test_r2_identity(moto_r2: servers.MotoServer, tmp_path: Path) -> None:
    moto_r2.put_object("r2ids", "a.dcm", BODY)
    options = make_options(
        endpoints=SourceEndpoints(r2=moto_r2.endpoint_url),
        r2_access_key_id=moto_r2.access_key_id,
        r2_secret_access_key=moto_r2.secret_access_key,
    )
    url = "r2://r2ids/a.dcm"
    probed = fd.probe(url, options, UrlPolicy())
    assert probed is not None and probed.kind == "s3"
    assert fd.download(url, tmp_path / "out", options, UrlPolicy()).identity == probed


def test_ftp_identity_is_mdtm_and_size(ftp_server: servers.FtpServer, tmp_path: Path) -> None:
    url = ftp_server.put("ids/a.dcm", BODY)
    probed = fd.probe(url, make_options(), LOOPBACK)
    assert probed is not None and probed.kind == "ftp" and probed.size == len(BODY)
    assert fd.download(url, tmp_path / "out", make_options(), LOOPBACK).identity == probed
    assert ftp_server.password not in probed.token()
