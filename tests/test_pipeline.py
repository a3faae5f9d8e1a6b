"""The one fetch → render sequence, and the room configuration derived from settings.

Sources are real servers on loopback (tests/servers.py); the URL policy, deadlines
and frames are passed as arguments, as the handler, batches and triggers pass them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

import pipeline
from dicom_converter import RenderLimits, RenderOptions, RenderResult
from errors import BlockedByPolicy, UpstreamTimeout
from s3_store import S3Config
from service_log import RequestLog
from settings import Settings
from temp_cleaner import TempPolicy
from tests import servers
from tests.corpus import bundled_file
from url_policy import UrlPolicy

MakeSettings = Callable[..., Settings]


def test_rooms_are_derived_once_per_settings_object(make_settings: MakeSettings) -> None:
    settings = make_settings()
    assert pipeline.rooms(settings) is pipeline.rooms(settings)
    twin = make_settings()
    assert twin == settings and twin is not settings
    assert pipeline.rooms(twin) is not pipeline.rooms(settings)
    assert pipeline.rooms(twin) == pipeline.rooms(settings)


def test_each_room_receives_its_own_settings(temp_root: Path, make_settings: MakeSettings) -> None:
    settings = make_settings(
        max_download_bytes=1234,
        min_free_tmp_bytes=99,
        max_redirects=3,
        allowed_buckets="scans-*",
        s3_endpoint_url="http://127.0.0.1:9",
        max_pixel_bytes=4096,
        default_quality=70,
        stale_after_seconds=600,
        sweep_interval_seconds=60,
        output_bucket="out-bucket",
        output_prefix="png/",
        url_expiry_seconds=120,
    )
    rooms = pipeline.rooms(settings)
    download = rooms.download
    assert (download.max_bytes, download.min_free_bytes, download.max_redirects) == (1234, 99, 3)
    assert (download.connect_timeout, download.read_timeout, download.deadline_seconds) == (
        2,
        5,
        10,
    )
    assert download.retries == 0 and download.endpoints.s3 == "http://127.0.0.1:9"
    assert rooms.policy.allowed_hosts == ("127.0.0.1:*",)
    assert rooms.policy.allowed_buckets == ("scans-*",)
    assert rooms.render == RenderLimits(max_pixel_bytes=4096, default_quality=70)
    assert rooms.temp == TempPolicy(str(temp_root), 60, 600, 99)
    assert rooms.s3 == S3Config("http://127.0.0.1:9", 2, 5, 0)
    assert rooms.output == pipeline.OutputTarget("out-bucket", "png/", 120)


def test_room_defaults_agree_with_the_settings_defaults() -> None:
    rooms = pipeline.rooms(Settings())
    assert rooms.temp == TempPolicy()
    assert rooms.render == RenderLimits()
    assert rooms.s3 == S3Config()
    assert rooms.policy == UrlPolicy()


def test_every_frame_comes_from_one_download(
    http_server: servers.HttpServer, temp_root: Path, make_settings: MakeSettings
) -> None:
    url = http_server.put("cine.dcm", bundled_file("SC_rgb_rle_2frame.dcm"))
    rooms = pipeline.rooms(make_settings())
    seen: list[RenderResult] = []

    def every_frame(first: RenderResult, render_frame: pipeline.RenderFrame) -> list[int]:
        seen.append(first)
        seen.extend(render_frame(n) for n in range(2, first.frames + 1))
        return [result.frame for result in seen]

    log = RequestLog("rid")
    frames = pipeline.fetch_and_render(
        pipeline.Source(url), RenderOptions(width=50), rooms, "cine", log, then=every_frame
    )
    assert frames == [1, 2]
    assert [(r.width, r.frames) for r in seen] == [(50, 2), (50, 2)]
    assert http_server.hits("cine.dcm") == 1
    assert {"download", "decode_render"} <= set(log.durations)
    assert log.sizes["download_bytes"] == bundled_file("SC_rgb_rle_2frame.dcm").stat().st_size
    assert list(temp_root.iterdir()) == []


def test_the_work_folder_is_removed_when_the_caller_fails(
    http_server: servers.HttpServer,
    sample_dicom: Path,
    temp_root: Path,
    make_settings: MakeSettings,
) -> None:
    url = http_server.put("CT_small.dcm", sample_dicom)
    rooms = pipeline.rooms(make_settings())

    def fail(first: RenderResult, render_frame: pipeline.RenderFrame) -> None:
        assert any(temp_root.iterdir())
        raise RuntimeError("storing failed")

    with pytest.raises(RuntimeError, match="storing failed"):
        pipeline.fetch_and_render(pipeline.Source(url), RenderOptions(), rooms, "x", then=fail)
    assert list(temp_root.iterdir()) == []


def test_a_policy_argument_replaces_the_rooms_policy_for_one_call(
    http_server: servers.HttpServer,
    sample_dicom: Path,
    make_settings: MakeSettings,
) -> None:
    url = http_server.put("CT_small.dcm", sample_dicom)
    rooms = pipeline.rooms(make_settings())
    result = pipeline.fetch_and_render(pipeline.Source(url), RenderOptions(), rooms, "a")
    assert result.width == 128
    hits = http_server.hits("CT_small.dcm")
    # The same rooms, with a policy that admits no loopback address for this call only.
    strict = replace(rooms.policy, allowed_hosts=())
    with pytest.raises(BlockedByPolicy):
        pipeline.fetch_and_render(pipeline.Source(url, policy=strict), RenderOptions(), rooms, "b")
    assert http_server.hits("CT_small.dcm") == hits


def test_a_deadline_argument_shortens_the_download(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.route("slow.dcm", servers.drip(b"x" * 1000, interval=0.2))
    rooms = pipeline.rooms(make_settings())
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        source = pipeline.Source(url, deadline_seconds=0.5)
        pipeline.fetch_and_render(source, RenderOptions(), rooms, "slow")
    assert time.monotonic() - started < 2.5
    assert rooms.download.deadline_seconds == 10
