"""ETags, Cache-Control and 304s: a revalidation costs a HEAD of the source, not a render.

Real loopback servers: one that sends validators (ETag, or Last-Modified) and one
that sends none. The servers record every request, so the tests count HEADs and
GETs to prove that a revalidation does not download when the source has a
validator, and does not render when it has none. 304s are checked through the
local API (real HTTP) and through every API Gateway and Function URL event fixture.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import lambda_function
import local_api
import render_cache
from settings import Settings
from tests import servers
from tests.handler_support import Answer, event_names, invoke, load_event, with_url

MakeSettings = Callable[..., Settings]
VERSION_ETAG = '"source-v1"'


@pytest.fixture
def with_etag(http_server: servers.HttpServer, sample_dicom: Path) -> str:
    """A source that names its version with an ETag (on GET and HEAD alike)."""
    data = sample_dicom.read_bytes()
    return http_server.route("tagged.dcm", servers.serve_bytes(data, {"ETag": VERSION_ETAG}))


@pytest.fixture
def without_validator(http_server: servers.HttpServer, sample_dicom: Path) -> str:
    """A source that sends neither ETag nor Last-Modified."""
    return http_server.route("plain.dcm", servers.serve_bytes(sample_dicom.read_bytes()))


def methods(server: servers.HttpServer, path: str) -> list[str]:
    return [r.method for r in server.requests if r.path == f"/{path}"]


def downloaded_after_head(seen: list[str]) -> bool:
    """One HEAD, then the download's GETs (a ranged read may take more than one)."""
    return seen[0] == "HEAD" and len(seen) > 1 and set(seen[1:]) == {"GET"}


def with_header(event: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    event = copy.deepcopy(event)
    if "httpMethod" not in event and "requestContext" not in event:
        raise ValueError("a direct invocation has no headers")
    event.setdefault("headers", {})
    event["headers"] = {**(event["headers"] or {}), name: value}
    if "multiValueHeaders" in event:
        event["multiValueHeaders"] = {**(event["multiValueHeaders"] or {}), name: [value]}
    return event


def get(url: str, settings: Settings, if_none_match: str | None = None, **query: Any) -> Answer:
    event = with_url(load_event("rest_convert_get"), url, **query)
    if if_none_match is not None:
        event = with_header(event, "If-None-Match", if_none_match)
    return invoke(event, settings)


# --------------------------------------------------------------------------- the validators


def test_answers_carry_a_strong_etag_and_cache_control(
    with_etag: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    answer = get(with_etag, settings)
    assert answer.status == 200
    etag = answer.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert answer.headers["Cache-Control"] == "private, max-age=3600"
    assert "Accept" in answer.headers["Vary"]
    # The same request, the same tag; other options or another form, another tag.
    assert get(with_etag, settings).headers["ETag"] == etag
    assert get(with_etag, settings, width=32).headers["ETag"] != etag
    binary = get(with_etag, settings, response="binary")
    assert binary.media_type == "image/jpeg" and binary.headers["ETag"] != etag
    configured = make_settings(cache_control="private, max-age=60")
    assert get(with_etag, configured).headers["Cache-Control"] == "private, max-age=60"


def test_a_revalidation_is_a_head_not_a_download(
    http_server: servers.HttpServer, with_etag: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    first = get(with_etag, settings, response="binary")
    assert first.status == 200 and "HEAD" not in methods(http_server, "tagged.dcm")
    http_server.requests.clear()
    again = get(with_etag, settings, if_none_match=first.headers["ETag"], response="binary")
    assert again.status == 304
    assert again.body == b"" and "Content-Type" not in again.headers
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Cache-Control"] == "private, max-age=3600"
    assert methods(http_server, "tagged.dcm") == ["HEAD"]
    # A tag of something else: rendered again (after the HEAD, one GET).
    http_server.requests.clear()
    other = get(with_etag, settings, if_none_match='"other", W/"more"', response="binary")
    assert other.status == 200 and other.body == first.body
    assert downloaded_after_head(methods(http_server, "tagged.dcm"))


def test_a_new_version_of_the_source_is_a_new_etag(
    http_server: servers.HttpServer, sample_dicom: Path, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    data = sample_dicom.read_bytes()
    url = http_server.route("moving.dcm", servers.serve_bytes(data, {"ETag": '"a"'}))
    first = get(url, settings)
    http_server.route("moving.dcm", servers.serve_bytes(data, {"ETag": '"b"'}))
    again = get(url, settings, if_none_match=first.headers["ETag"])
    assert again.status == 200 and again.headers["ETag"] != first.headers["ETag"]


def test_last_modified_and_length_are_a_validator(
    http_server: servers.HttpServer, sample_dicom: Path, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    headers = {"Last-Modified": "Tue, 01 Dec 2026 00:00:00 GMT"}
    url = http_server.route("dated.dcm", servers.serve_bytes(sample_dicom.read_bytes(), headers))
    first = get(url, settings)
    http_server.requests.clear()
    assert get(url, settings, if_none_match=first.headers["ETag"]).status == 304
    assert methods(http_server, "dated.dcm") == ["HEAD"]


def test_without_a_validator_it_says_so_and_downloads_but_does_not_render(
    http_server: servers.HttpServer,
    without_validator: str,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    first = get(without_validator, settings)
    assert first.status == 200
    capsys.readouterr()
    http_server.requests.clear()
    again = get(without_validator, settings, if_none_match=first.headers["ETag"])
    assert again.status == 304 and again.body == b""
    assert again.headers["X-Source-Validator"] == "none"
    assert again.headers["ETag"] == first.headers["ETag"]
    assert downloaded_after_head(methods(http_server, "plain.dcm"))
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"request"' in x]
    assert line["source_validator"] == "none" and line["status"] == 304
    assert "download" in line["durations_ms"] and "decode_render" not in line["durations_ms"]


def test_etags_ignore_which_dialect_named_the_options(
    with_etag: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    native = get(with_etag, settings, window_center=40, window_width=400, response="binary")
    dicomweb = get(with_etag, settings, window="40,400", response="binary")
    wado = get(with_etag, settings, contentType="image/jpeg", windowCenter=40, windowWidth=400)
    assert native.headers["ETag"] == dicomweb.headers["ETag"] == wado.headers["ETag"]


def test_if_none_match_forms() -> None:
    tag = '"abc-jpg"'
    assert render_cache.if_none_match(tag, tag)
    assert render_cache.if_none_match(f'"x", W/{tag}', tag)
    assert render_cache.if_none_match("*", tag)
    assert not render_cache.if_none_match('"abc"', tag)
    assert not render_cache.if_none_match(None, tag)


def test_errors_are_not_cacheable(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.route("gone.dcm", servers.respond(404))
    answer = get(url, make_settings(), if_none_match='"x"')
    assert answer.status == 404
    assert answer.headers["Cache-Control"] == "no-store" and "ETag" not in answer.headers


# --------------------------------------------------------------------------- every event shape

HTTP_EVENTS = [
    name
    for name in event_names()
    if name.split("_")[0] in ("rest", "http", "url") and "convert" in name
]


@pytest.mark.parametrize("name", HTTP_EVENTS)
def test_304_through_every_event_shape(
    name: str, http_server: servers.HttpServer, with_etag: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    event = with_url(load_event(name), with_etag)
    first = invoke(event, settings)
    assert first.status == 200, first.body[:300]
    http_server.requests.clear()
    again = invoke(with_header(event, "If-None-Match", first.headers["ETag"]), settings)
    assert again.status == 304
    assert again.raw["body"] == "" and again.raw["isBase64Encoded"] is False
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Cache-Control"] == settings.cache_control
    assert methods(http_server, "tagged.dcm") == ["HEAD"]


# --------------------------------------------------------------------------- the local API


@pytest.fixture
def local_api_url(make_settings: MakeSettings) -> Iterator[str]:
    handler = functools.partial(lambda_function.handle, settings=make_settings())
    server = local_api.make_server("127.0.0.1", 0, "rest", handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.url
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("source", ["with_etag", "without_validator"])
def test_304_over_http_through_the_local_api(
    source: str,
    request: pytest.FixtureRequest,
    http_server: servers.HttpServer,
    local_api_url: str,
) -> None:
    url = request.getfixturevalue(source)
    path = url.rsplit("/", 1)[1]
    first = requests.get(
        f"{local_api_url}/convert",
        params={"url": url, "width": 48},
        headers={"Accept": "image/png"},
        timeout=20,
    )
    assert first.status_code == 200 and first.headers["Content-Type"] == "image/png"
    etag = first.headers["ETag"]
    http_server.requests.clear()
    again = requests.get(
        f"{local_api_url}/convert",
        params={"url": url, "width": 48},
        headers={"Accept": "image/png", "If-None-Match": etag},
        timeout=20,
    )
    assert again.status_code == 304 and again.content == b""
    assert again.headers["ETag"] == etag
    seen = methods(http_server, path)
    assert seen == ["HEAD"] if source == "with_etag" else downloaded_after_head(seen)


# --------------------------------------------------------------------------- ranged reads


@pytest.fixture
def cine_file(tmp_path: Path) -> Path:
    """Ten 128x128 frames, large enough that one frame is read by ranges."""
    import numpy as np

    from tests.dicom_files import image_dataset

    frames = np.stack([np.full((128, 128), 100 * k, dtype=np.uint16) for k in range(10)])
    ds = image_dataset(frames[0], NumberOfFrames=10)
    ds.PixelData = frames.tobytes()
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_a_ranged_read_and_a_head_name_the_same_version(
    validator: str, http_server: servers.HttpServer, cine_file: Path, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    source = (
        servers.RangeFile(cine_file, etag=None)
        if validator == "last_modified"
        else (servers.RangeFile(cine_file))
    )
    url = http_server.route("cine.dcm", source)
    first = get(url, settings, frame=7, response="binary")
    assert first.status == 200 and source.ranged_requests > 0
    assert source.served < cine_file.stat().st_size
    http_server.requests.clear()
    again = get(url, settings, frame=7, response="binary", if_none_match=first.headers["ETag"])
    assert again.status == 304
    assert methods(http_server, "cine.dcm") == ["HEAD"]
