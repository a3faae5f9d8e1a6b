"""The output cache in OUTPUT_BUCKET, against moto's S3 server.

The moto server here records every request it serves (moto's recorder, written to
a file of the test's own): the second request for the same render must show a
HeadObject of the source and reads of the cache, and no GetObject of the source.
An HTTP source shows the same through its own request log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from settings import Settings, load_settings
from tests import servers
from tests.handler_support import Answer, invoke, load_event, with_url

MakeSettings = Callable[..., Settings]

_CHILD = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""


@dataclass
class RecordedMoto:
    endpoint_url: str
    recording: Path
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def ranges(self) -> list[str]:
        """The Range header of every request since the last ``clear`` ("" when none)."""
        lines = self.recording.read_text().splitlines() if self.recording.exists() else []
        return [json.loads(line)["headers"].get("Range", "") for line in lines if line.strip()]

    def clear(self) -> None:
        self.recording.write_text("")

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request served since the last ``clear``."""
        lines = self.recording.read_text().splitlines() if self.recording.exists() else []
        entries = [json.loads(line) for line in lines if line.strip()]
        return [(e["method"], urlsplit(e["url"]).path) for e in entries]


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecordedMoto]:
    recording = tmp_path_factory.mktemp("moto") / "requests.jsonl"
    env = {
        **__import__("os").environ,
        "MOTO_ENABLE_RECORDING": "true",
        "MOTO_RECORDER_FILEPATH": str(recording),
    }
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    server = RecordedMoto(f"http://127.0.0.1:{port}", recording, process)
    for bucket in ("scans", "rendered"):
        server.client().create_bucket(Bucket=bucket)
    yield server
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def make_settings(temp_root: Path, moto: RecordedMoto) -> MakeSettings:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "temp_root": str(temp_root),
            "allowed_hosts": "127.0.0.1:*",
            "allowed_buckets": "scans",
            "download_retries": 0,
            "s3_endpoint_url": moto.endpoint_url,
            "output_bucket": "rendered",
            "output_prefix": "out/",
        }
        values.update(overrides)
        return load_settings(values, environ={})

    return build


@pytest.fixture
def s3_source(moto: RecordedMoto, sample_dicom: Path) -> str:
    moto.client().put_object(Bucket="scans", Key="ct/one.dcm", Body=sample_dicom.read_bytes())
    return "s3://scans/ct/one.dcm"


def convert(url: str, settings: Settings, name: str = "rest_convert_get", **fields: Any) -> Answer:
    return invoke(with_url(load_event(name), url, **fields), settings)


def source_reads(moto: RecordedMoto, key: str = "ct/one.dcm") -> list[str]:
    return [method for method, path in moto.requests() if path == f"/scans/{key}"]


def cache_keys(moto: RecordedMoto) -> list[str]:
    listed = moto.client().list_objects_v2(Bucket="rendered", Prefix="out/cache/")
    return sorted(item["Key"] for item in listed.get("Contents", []))


def test_a_repeated_request_is_answered_from_the_cache(
    moto: RecordedMoto, s3_source: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    moto.clear()
    first = convert(s3_source, settings)
    assert first.status == 200, first.body[:300]
    assert "GET" in source_reads(moto)
    digest = first.headers["ETag"].strip('"').rpartition("-")[0]
    assert {f"out/cache/{digest}.jpg", f"out/cache/{digest}.json"} <= set(cache_keys(moto))
    moto.clear()
    second = convert(s3_source, settings)
    assert second.status == 200
    # The source was asked for its version (HeadObject), and not read.
    assert source_reads(moto) == ["HEAD"]
    assert ("GET", f"/rendered/out/cache/{digest}.json") in moto.requests()
    assert second.headers["ETag"] == first.headers["ETag"]
    one, two = (answer.document for answer in (first, second))
    assert one is not None and two is not None
    assert two["data"] == one["data"] and two["metadata"] == one["metadata"]
    assert two["request_id"] != one["request_id"]


def test_the_image_itself_from_the_cache(
    moto: RecordedMoto, s3_source: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    first = convert(s3_source, settings, response="binary", output_format="png")
    moto.clear()
    second = convert(s3_source, settings, response="binary", output_format="png")
    assert second.status == 200 and second.media_type == "image/png"
    assert second.body == first.body
    assert source_reads(moto) == ["HEAD"]


def test_a_large_image_is_a_link_to_the_cached_object(
    moto: RecordedMoto, s3_source: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(max_response_bytes=2000)
    first = convert(s3_source, settings, "url_convert_binary")
    assert first.status == 303
    moto.clear()
    second = convert(s3_source, settings, "url_convert_binary")
    assert second.status == 303
    assert source_reads(moto) == ["HEAD"]
    location = second.headers["Location"]
    assert "/out/cache/" in location
    image = requests.get(location, timeout=10)
    assert image.status_code == 200 and image.content[:2] == b"\xff\xd8"


def test_an_http_source_is_not_downloaded_again(
    http_server: servers.HttpServer, sample_dicom: Path, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    url = http_server.route(
        "tagged.dcm", servers.serve_bytes(sample_dicom.read_bytes(), {"ETag": '"v7"'})
    )
    first = convert(url, settings, width=40)
    assert first.status == 200
    http_server.requests.clear()
    second = convert(url, settings, width=40)
    assert second.status == 200 and second.document == {
        **first.document,  # type: ignore[dict-item]
        "timestamp": second.document["timestamp"],  # type: ignore[index]
        "request_id": second.document["request_id"],  # type: ignore[index]
    }
    assert [r.method for r in http_server.requests] == ["HEAD"]


def test_the_cache_obeys_allowed_buckets(
    moto: RecordedMoto, s3_source: str, make_settings: MakeSettings
) -> None:
    assert convert(s3_source, make_settings()).status == 200
    moto.clear()
    refused = convert(s3_source, make_settings(allowed_buckets="other"))
    assert refused.status == 403 and refused.document is not None
    assert refused.document["error"]["code"] == "blocked_by_policy"
    assert moto.requests() == []


def test_a_revalidation_comes_before_the_cache(
    moto: RecordedMoto, s3_source: str, make_settings: MakeSettings
) -> None:
    settings = make_settings()
    event = with_url(load_event("http_convert_get"), s3_source)
    tag = invoke(event, settings).headers["ETag"]
    event["headers"] = {**event["headers"], "if-none-match": tag}
    moto.clear()
    again = invoke(event, settings)
    assert again.status == 304
    assert moto.requests() == [("HEAD", "/scans/ct/one.dcm")]


def test_patient_data_of_cached_answers_is_not_logged(
    moto: RecordedMoto,
    s3_source: str,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    first = convert(s3_source, settings)
    name = first.document["metadata"]["PatientName"]  # type: ignore[index]
    assert name
    convert(s3_source, settings)
    output = capsys.readouterr()
    assert str(name) not in output.out and str(name) not in output.err


def test_a_ranged_s3_read_and_a_head_object_name_the_same_version(
    moto: RecordedMoto, make_settings: MakeSettings, tmp_path: Path
) -> None:
    import numpy as np

    from tests.dicom_files import image_dataset

    frames = np.stack([np.full((128, 128), 100 * k, dtype=np.uint16) for k in range(10)])
    ds = image_dataset(frames[0], NumberOfFrames=10)
    ds.PixelData = frames.tobytes()
    path = tmp_path / "cine.dcm"
    ds.save_as(path, enforce_file_format=True)
    moto.client().put_object(Bucket="scans", Key="ct/cine.dcm", Body=path.read_bytes())
    settings = make_settings()
    moto.clear()
    first = convert("s3://scans/ct/cine.dcm", settings, frame=7, response="binary")
    assert first.status == 200
    assert any(moto.ranges()), "the frame was read by ranges"
    moto.clear()
    again = convert("s3://scans/ct/cine.dcm", settings, frame=7, response="binary")
    assert again.status == 200 and again.body == first.body
    assert source_reads(moto, "ct/cine.dcm") == ["HEAD"]
    moto.clear()
    event = with_url(
        load_event("rest_convert_get"), "s3://scans/ct/cine.dcm", frame=7, response="binary"
    )
    event["headers"] = {**event["headers"], "If-None-Match": first.headers["ETag"]}
    event["multiValueHeaders"] = {
        **event["multiValueHeaders"],
        "If-None-Match": [first.headers["ETag"]],
    }
    assert invoke(event, settings).status == 304
    assert source_reads(moto, "ct/cine.dcm") == ["HEAD"]
