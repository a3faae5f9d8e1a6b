"""Bulk conversion end to end: S3 notifications and batch requests through the handler.

Sources and outputs live in moto's S3 server mode; the events are the ones in
tests/events/ (shaped as S3, SQS and EventBridge send them) pointed at the objects
a test uploaded. Batch requests fetch from a real HTTP server on loopback.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import requests
from PIL import Image

import bulk
import dicom_converter
import lambda_function
import pipeline
from errors import ConfigurationError, NoPixelData, NotDicom, NotificationFailed, ServiceError
from settings import Settings, load_settings
from tests import servers
from tests.corpus import bundled_file, corpus_dir
from tests.handler_support import LambdaContext, invoke, load_event, with_fields

MakeSettings = Callable[..., Settings]
SKIPPED = (NotDicom, NoPixelData)


@pytest.fixture
def bucket(moto_s3: servers.MotoServer) -> str:
    """A fresh bucket for the uploads of one test."""
    name = f"uploads-{uuid.uuid4().hex[:12]}"
    moto_s3.create_bucket(name)
    return name


@pytest.fixture
def make_settings(temp_root: Path, moto_s3: servers.MotoServer, bucket: str) -> MakeSettings:
    """Settings for one watched bucket in moto, independent of the environment."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "temp_root": str(temp_root),
            "allowed_hosts": "127.0.0.1:*",
            "s3_endpoint_url": moto_s3.endpoint_url,
            "download_retries": 0,
            "connect_timeout_seconds": 2,
            "read_timeout_seconds": 5,
            "download_deadline_seconds": 10,
            "watch_bucket": bucket,
            "watch_prefix": "incoming/",
        }
        values.update(overrides)
        return load_settings(values, environ={})

    return build


def upload(moto_s3: servers.MotoServer, bucket: str, key: str, body: bytes | Path) -> str:
    """Store an object; returns its ETag as S3 notifications carry it (no quotes)."""
    data = body.read_bytes() if isinstance(body, Path) else body
    answer = moto_s3.client().put_object(Bucket=bucket, Key=key, Body=data)
    return str(answer["ETag"]).strip('"')


def s3_record(bucket: str, key: str, etag: str, event_name: str = "ObjectCreated:Put") -> Any:
    """The record S3 sends: the key URL-encoded with '+' for a space, '/' kept."""
    record = copy.deepcopy(load_event("s3_object_created")["Records"][0])
    record["eventName"] = event_name
    record["s3"]["bucket"]["name"] = bucket
    record["s3"]["bucket"]["arn"] = f"arn:aws:s3:::{bucket}"
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), eTag=etag)
    return record


def s3_event(*records: Any) -> dict[str, Any]:
    return {"Records": list(records)}


def sqs_event(*bodies: str) -> dict[str, Any]:
    template = load_event("sqs_s3_notification")["Records"][0]
    records = []
    for body in bodies:
        record = copy.deepcopy(template)
        record.update(messageId=str(uuid.uuid4()), body=body)
        records.append(record)
    return {"Records": records}


def eventbridge_event(bucket: str, key: str, etag: str) -> dict[str, Any]:
    event = load_event("eventbridge_object_created")
    event["resources"] = [f"arn:aws:s3:::{bucket}"]
    event["detail"]["bucket"]["name"] = bucket
    event["detail"]["object"].update(key=key, etag=etag)
    return event


def handle(event: Any, settings: Settings, context: Any = None) -> dict[str, Any]:
    return lambda_function.handle(event, context or LambdaContext(), settings)


def head(moto_s3: servers.MotoServer, bucket: str, key: str) -> dict[str, Any]:
    return moto_s3.client().head_object(Bucket=bucket, Key=key)


def read_image(moto_s3: servers.MotoServer, bucket: str, key: str) -> Image.Image:
    body = moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    image = Image.open(io.BytesIO(body))
    image.load()
    return image


def keys(moto_s3: servers.MotoServer, bucket: str, prefix: str = "") -> list[str]:
    listing = moto_s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def log_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def expected_outcome(path: Path, settings: Settings) -> str:
    """What the converter itself makes of the file: converted, skipped or failed."""
    try:
        dicom_converter.render(
            path, bulk.trigger_options(settings), pipeline.rooms(settings).render
        )
    except SKIPPED:
        return "skipped"
    except ServiceError:
        return "failed"
    return "converted"


# --------------------------------------------------------------------------- S3 events


def corpus_uploads() -> list[Path]:
    """pydicom's bundled files, and the shared corpus's DICOM files when it is present."""
    files = [bundled_file(n) for n in ("CT_small.dcm", "MR_small.dcm", "SC_rgb_rle_2frame.dcm")]
    return files + sorted(corpus_dir().glob("*.dcm"))


def test_upload_events_convert_the_corpus(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, temp_root: Path
) -> None:
    settings = make_settings()
    for path in corpus_uploads():
        key = f"incoming/study 1+2/{path.name}"
        etag = upload(moto_s3, bucket, key, path)
        expected = expected_outcome(path, settings)
        event = s3_event(s3_record(bucket, key, etag))
        if expected == "failed":
            # An error makes Lambda retry the asynchronous event and then dead-letter it.
            with pytest.raises(NotificationFailed, match=path.name):
                handle(event, settings)
            continue
        report = handle(event, settings)
        (record,) = report["records"]
        assert record["status"] == expected, record
        output = f"converted/incoming/study 1+2/{path.stem}.jpg"
        if expected == "skipped":
            assert keys(moto_s3, bucket, "converted/") == []
            continue
        assert record["outputs"] == [output]
        stored = head(moto_s3, bucket, output)
        assert stored["ContentType"] == "image/jpeg"
        metadata = stored["Metadata"]
        assert metadata["source-bucket"] == bucket
        assert metadata["source-key"] == quote(key, safe="/")
        assert metadata["source-etag"] == etag
        assert metadata["frame"] == "1"
        assert int(metadata["frames"]) >= 1
        assert "source=" in metadata["window"] and "function=" in metadata["window"]
        assert read_image(moto_s3, bucket, output).format == "JPEG"
        moto_s3.client().delete_object(Bucket=bucket, Key=output)
    assert list(temp_root.iterdir()) == []


def test_non_dicom_uploads_are_skipped_and_logged(
    moto_s3: servers.MotoServer,
    bucket: str,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, "PNG")
    uploads = {"incoming/notes.txt": b"hi", "incoming/logo.png": png.getvalue()}
    records = [s3_record(bucket, k, upload(moto_s3, bucket, k, v)) for k, v in uploads.items()]
    report = handle(s3_event(*records), make_settings())
    assert [(r["status"], r["reason"]) for r in report["records"]] == [
        ("skipped", "not_dicom"),
        ("skipped", "not_dicom"),
    ]
    assert report["success"] is True
    assert keys(moto_s3, bucket, "converted/") == []
    lines = log_lines(capsys.readouterr().out)
    skipped = [line for line in lines if line["message"] == "skipped"]
    assert {line["key"] for line in skipped} == {"incoming/notes.txt", "incoming/logo.png"}
    assert all(line["reason"] == "not_dicom" and line["request_id"] for line in skipped)


def test_a_redelivered_event_does_no_work(
    moto_s3: servers.MotoServer,
    bucket: str,
    make_settings: MakeSettings,
    sample_dicom: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings()
    key, output = "incoming/a/scan.dcm", "converted/incoming/a/scan.jpg"
    event = s3_event(s3_record(bucket, key, upload(moto_s3, bucket, key, sample_dicom)))
    assert handle(event, settings)["records"][0]["status"] == "converted"
    first = head(moto_s3, bucket, output)
    # Mark the output: work done again would overwrite the mark.
    marker = b"not rewritten"
    moto_s3.client().put_object(Bucket=bucket, Key=output, Body=marker, Metadata=first["Metadata"])
    marked = head(moto_s3, bucket, output)
    capsys.readouterr()

    (record,) = handle(event, settings)["records"]
    assert (record["status"], record["reason"]) == ("skipped", "already_converted")
    again = head(moto_s3, bucket, output)
    assert (again["ETag"], again["LastModified"]) == (marked["ETag"], marked["LastModified"])
    body = moto_s3.client().get_object(Bucket=bucket, Key=output)["Body"].read()
    assert body == marker
    lines = log_lines(capsys.readouterr().out)
    assert [line["reason"] for line in lines if line["message"] == "skipped"] == [
        "already_converted"
    ]

    # New content under the same key has a new ETag: it is converted again.
    etag = upload(moto_s3, bucket, key, bundled_file("MR_small.dcm"))
    (record,) = handle(s3_event(s3_record(bucket, key, etag)), settings)["records"]
    assert record["status"] == "converted"
    assert head(moto_s3, bucket, output)["Metadata"]["source-etag"] == etag
    assert read_image(moto_s3, bucket, output).size == (64, 64)


def test_the_functions_own_outputs_are_never_converted(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    # Outputs next to the sources: only the suffix filter and the prefix check keep
    # the function from converting what it wrote.
    settings = make_settings(watch_prefix="", watch_suffixes=".dcm")
    own = "converted/incoming/x.dcm"  # even a DICOM file under OUTPUT_PREFIX
    records = [
        s3_record(bucket, own, upload(moto_s3, bucket, own, sample_dicom)),
        s3_record(bucket, "converted/incoming/y.jpg", "0" * 32),
        s3_record(bucket, "elsewhere/z.txt", "0" * 32),
    ]
    report = handle(s3_event(*records), settings)
    assert [(r["status"], r["reason"]) for r in report["records"]] == [
        ("skipped", "own_output"),
        ("skipped", "own_output"),
        ("skipped", "filtered"),
    ]
    assert keys(moto_s3, bucket) == [own]


@pytest.mark.parametrize(
    "overrides",
    [
        {"watch_prefix": ""},  # every key counts, the outputs' too
        {"watch_prefix": "", "watch_suffixes": ".jpg"},
        {"watch_prefix": "", "watch_suffixes": ".dcm,.JPG"},
        {"watch_prefix": "conv"},  # "converted/..." starts with it
        {"watch_prefix": "", "output_prefix": ""},
        {"watch_prefix": "", "output_bucket": "BUCKET"},  # the same bucket, named
    ],
)
def test_settings_refuse_outputs_that_would_trigger_the_function_again(
    overrides: dict[str, Any], make_settings: MakeSettings, bucket: str
) -> None:
    overrides = {k: bucket if v == "BUCKET" else v for k, v in overrides.items()}
    settings = make_settings(**overrides)
    with pytest.raises(ConfigurationError, match="would trigger it again"):
        bulk.check_settings(settings)
    # The handler checks before any work: the event fails, and nothing is converted.
    with pytest.raises(ConfigurationError, match="would trigger it again"):
        handle(s3_event(s3_record(bucket, "incoming/a.dcm", "0" * 32)), settings)


def test_safe_trigger_setups_are_accepted(make_settings: MakeSettings) -> None:
    bulk.check_settings(make_settings(watch_prefix="incoming/"))
    bulk.check_settings(make_settings(watch_prefix="", watch_suffixes=".dcm,.DCM"))
    bulk.check_settings(make_settings(watch_prefix="", output_bucket="rendered-images"))
    bulk.check_settings(make_settings(watch_prefix="", output_prefix="", watch_suffixes=".dcm"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trigger_preset": "sunset"}, "setting TRIGGER_PRESET must be one of"),
        ({"trigger_window": "40,400", "trigger_preset": "lung"}, "cannot be combined"),
        ({"trigger_window": "forty"}, "setting TRIGGER_WINDOW must be CENTER,WIDTH"),
    ],
)
def test_settings_refuse_a_trigger_view_the_converter_cannot_use(
    overrides: dict[str, Any], message: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(**overrides)
    with pytest.raises(ConfigurationError, match=message):
        bulk.check_settings(settings)
    # Every route refuses to work with them, as with any invalid setting; the caller
    # is told which settings, never their values (the log has the details).
    answer = invoke(load_event("rest_health"), settings)
    document = answer.document
    assert answer.status == 500 and document is not None
    assert document["error"]["code"] == "configuration_error"
    assert "TRIGGER_WINDOW or TRIGGER_PRESET" in document["message"]
    for value in overrides.values():
        assert value not in document["message"]


def test_events_from_other_buckets_and_other_event_types_are_skipped(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    key = "incoming/a.dcm"
    etag = upload(moto_s3, bucket, key, sample_dicom)
    records = [
        s3_record("some-other-bucket", key, etag),
        s3_record(bucket, key, etag, event_name="ObjectRemoved:Delete"),
    ]
    report = handle(s3_event(*records), make_settings())
    assert [r["reason"] for r in report["records"]] == ["bucket_not_watched", "not_object_created"]
    unwatched = handle(s3_event(records[0]), make_settings(watch_bucket=None))
    assert "WATCH_BUCKET is not set" in unwatched["records"][0]["message"]


def test_trigger_options_come_from_the_settings(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    settings = make_settings(
        default_output_format="png", trigger_window="40,400", trigger_max_width=64
    )
    key = "incoming/IM-0001.1.2.840.113619"  # no extension: a UID-like suffix is kept
    etag = upload(moto_s3, bucket, key, sample_dicom)
    handle(s3_event(s3_record(bucket, key, etag)), settings)
    output = f"converted/{key}.png"
    image = read_image(moto_s3, bucket, output)
    assert (image.format, image.size) == ("PNG", (64, 64))
    metadata = head(moto_s3, bucket, output)["Metadata"]
    assert metadata["window"] == "center=40;width=400;function=LINEAR;source=request"


def test_every_frame_of_a_multi_frame_file(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(trigger_frames="all")
    path = bundled_file("SC_rgb_rle_2frame.dcm")
    key = "incoming/cine.dcm"
    event = s3_event(s3_record(bucket, key, upload(moto_s3, bucket, key, path)))
    (record,) = handle(event, settings)["records"]
    outputs = ["converted/incoming/cine/frame-0001.jpg", "converted/incoming/cine/frame-0002.jpg"]
    assert sorted(record["outputs"]) == outputs
    assert keys(moto_s3, bucket, "converted/") == outputs
    for frame, output in enumerate(outputs, start=1):
        metadata = head(moto_s3, bucket, output)["Metadata"]
        assert (metadata["frame"], metadata["frames"]) == (str(frame), "2")
        assert read_image(moto_s3, bucket, output).size == (100, 100)
    (again,) = handle(event, settings)["records"]
    assert again["reason"] == "already_converted"

    # A single-frame file keeps the plain name in the same mode.
    single = "incoming/single.dcm"
    etag = upload(moto_s3, bucket, single, bundled_file("CT_small.dcm"))
    (record,) = handle(s3_event(s3_record(bucket, single, etag)), settings)["records"]
    assert record["outputs"] == ["converted/incoming/single.jpg"]


def test_outputs_go_to_the_output_bucket_when_set(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    moto_s3.create_bucket("rendered-images")
    settings = make_settings(output_bucket="rendered-images", output_prefix="jpg/", watch_prefix="")
    key = "scan.DCM"
    event = s3_event(s3_record(bucket, key, upload(moto_s3, bucket, key, sample_dicom)))
    handle(event, settings)
    assert read_image(moto_s3, "rendered-images", "jpg/scan.jpg").format == "JPEG"
    assert head(moto_s3, "rendered-images", "jpg/scan.jpg")["Metadata"]["source-bucket"] == bucket


def test_sqs_batch_reports_only_the_failed_message(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    def body(key: str, data: bytes | Path) -> str:
        return json.dumps(s3_event(s3_record(bucket, key, upload(moto_s3, bucket, key, data))))

    bodies = [body(f"incoming/good-{n}.dcm", sample_dicom) for n in range(3)]
    bodies.insert(1, body("incoming/truncated.dcm", sample_dicom.read_bytes()[:20_000]))
    # S3 sends this once when the notification is configured; it names no object.
    bodies.append(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}))
    event = sqs_event(*bodies)

    result = handle(event, make_settings())
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}
    assert keys(moto_s3, bucket, "converted/") == sorted(
        f"converted/incoming/good-{n}.jpg" for n in range(3)
    )


def test_sqs_messages_in_every_wrapping_and_unreadable_ones(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    key = "incoming/a.dcm"
    good = json.dumps(s3_event(s3_record(bucket, key, upload(moto_s3, bucket, key, sample_dicom))))
    # An S3 event forwarded through SNS arrives wrapped in its envelope; an EventBridge
    # rule with an SQS target sends the EventBridge event itself.
    wrapped = json.dumps({"Type": "Notification", "MessageId": "1", "Message": good})
    other = "incoming/b.dcm"
    ruled = eventbridge_event(bucket, other, upload(moto_s3, bucket, other, sample_dicom))
    event = sqs_event(wrapped, "{not json", json.dumps({"hello": "world"}), json.dumps(ruled))
    result = handle(event, make_settings())
    failed = [item["itemIdentifier"] for item in result["batchItemFailures"]]
    assert failed == [event["Records"][1]["messageId"], event["Records"][2]["messageId"]]
    assert keys(moto_s3, bucket, "converted/") == [
        "converted/incoming/a.jpg",
        "converted/incoming/b.jpg",
    ]


def test_eventbridge_object_created(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    key = "incoming/with space+plus.dcm"  # EventBridge sends the key as it is
    etag = upload(moto_s3, bucket, key, sample_dicom)
    report = handle(eventbridge_event(bucket, key, etag), make_settings())
    (record,) = report["records"]
    assert record["status"] == "converted"
    assert read_image(moto_s3, bucket, "converted/incoming/with space+plus.jpg").size == (128, 128)


def test_an_event_without_etag_reads_it_from_s3(
    moto_s3: servers.MotoServer, bucket: str, make_settings: MakeSettings, sample_dicom: Path
) -> None:
    key = "incoming/no-etag.dcm"
    etag = upload(moto_s3, bucket, key, sample_dicom)
    record = s3_record(bucket, key, etag)
    del record["s3"]["object"]["eTag"]
    handle(s3_event(record), make_settings())
    assert (
        head(moto_s3, bucket, "converted/incoming/no-etag.jpg")["Metadata"]["source-etag"] == etag
    )


def test_the_fixtures_are_recognised_and_skipped_without_a_watched_bucket(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(watch_bucket=None)
    for name in ("s3_object_created", "eventbridge_object_created"):
        report = handle(load_event(name), settings)
        assert [r["reason"] for r in report["records"]] == ["bucket_not_watched"]
        assert report["records"][0]["key"] == "incoming/study 1/CT_small.dcm"
    assert handle(load_event("sqs_s3_notification"), settings) == {"batchItemFailures": []}


# --------------------------------------------------------------------------- batch requests


@pytest.fixture
def files(http_server: servers.HttpServer, sample_dicom: Path) -> dict[str, str]:
    return {
        "good": http_server.put("CT_small.dcm", sample_dicom),
        "mr": http_server.put("MR_small.dcm", bundled_file("MR_small.dcm")),
        "text": http_server.put("notes.txt", b"not a DICOM file"),
        "missing": http_server.url("missing.dcm"),
    }


def batch(settings: Settings, urls: list[Any], context: Any = None, **fields: Any) -> Any:
    event = with_fields(load_event("rest_convert_post"), url=None, urls=urls, **fields)
    return invoke(event, settings, context or LambdaContext())


def test_batch_answers_each_url_in_order(
    files: dict[str, str], make_settings: MakeSettings, temp_root: Path
) -> None:
    urls = [files["good"], files["missing"], files["text"], "nope://x", 42, files["mr"]]
    answer = batch(make_settings(), urls, quality=70)
    assert answer.status == 200
    document = answer.document
    assert document is not None and document["success"] is False
    results = document["data"]["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["success"] for r in results] == [True, False, False, False, False, True]
    assert [r.get("error") for r in results] == [
        None,
        {"code": "not_found", "status": 404},
        {"code": "not_dicom", "status": 422},
        {"code": "invalid_url", "status": 400},
        {"code": "invalid_request", "status": 400},
        None,
    ]
    assert results[0]["url"] == files["good"] and results[4]["url"] is None
    sizes = []
    for result in (results[0], results[5]):
        data = result["data"]
        image = Image.open(io.BytesIO(base64.b64decode(data["image_base64"])))
        assert image.format == "JPEG" and data["quality"] == 70
        sizes.append(image.size)
    assert sizes == [(128, 128), (64, 64)]
    assert (document["data"]["converted"], document["data"]["failed"]) == (2, 4)
    assert list(temp_root.iterdir()) == []


def test_batch_through_a_direct_invoke(files: dict[str, str], make_settings: MakeSettings) -> None:
    result = handle({"urls": [files["good"], files["missing"]]}, make_settings())
    assert "statusCode" not in result
    assert [r["success"] for r in result["data"]["results"]] == [True, False]


def test_batch_with_an_output_bucket_answers_links(
    moto_s3: servers.MotoServer, files: dict[str, str], make_settings: MakeSettings
) -> None:
    moto_s3.create_bucket("batch-out")
    settings = make_settings(output_bucket="batch-out", url_expiry_seconds=300)
    context = LambdaContext()
    answer = batch(settings, [files["good"], files["missing"], files["mr"]], context)
    results = answer.document["data"]["results"]  # type: ignore[index]
    assert [r["success"] for r in results] == [True, False, True]
    for index in (0, 2):
        data = results[index]["data"]
        assert "image_base64" not in data and data["expires_in"] == 300
        image = Image.open(io.BytesIO(requests.get(data["image_url"], timeout=10).content))
        assert image.size == (data["width"], data["height"])
    assert keys(moto_s3, "batch-out", "converted/") == [
        f"converted/{context.aws_request_id}-1.jpg",
        f"converted/{context.aws_request_id}-3.jpg",
    ]


def test_batch_answer_stays_within_the_response_limit(
    files: dict[str, str], make_settings: MakeSettings
) -> None:
    settings = make_settings(max_response_bytes=12_000)
    answer = batch(settings, [files["good"]] * 4, quality=90)
    assert lambda_function.result_size(answer.raw) <= 12_000
    results = answer.document["data"]["results"]  # type: ignore[index]
    kept = [r["success"] for r in results]
    assert kept[0] is True and kept == sorted(kept, reverse=True) and not kept[-1]
    for result in results:
        if not result["success"]:
            assert result["error"] == {"code": "too_large", "status": 413}
            assert "OUTPUT_BUCKET" in result["message"]


def concurrency_probe(delay: float) -> tuple[Callable[[BaseHTTPRequestHandler], None], list[int]]:
    """A route that serves CT_small.dcm slowly and records the most requests at once."""
    body = bundled_file("CT_small.dcm").read_bytes()
    state = {"now": 0}
    peak = [0]
    lock = threading.Lock()

    def route(handler: BaseHTTPRequestHandler) -> None:
        with lock:
            state["now"] += 1
            peak[0] = max(peak[0], state["now"])
        time.sleep(delay)
        with lock:
            state["now"] -= 1
        servers.send(handler, 200, body, {"Content-Type": "application/dicom"})

    return route, peak


def test_batch_downloads_run_concurrently_up_to_the_worker_count(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    route, peak = concurrency_probe(0.4)
    url = http_server.route("slow.dcm", route)
    started = time.monotonic()
    answer = batch(make_settings(batch_workers=3), [f"{url}?n={n}" for n in range(6)])
    elapsed = time.monotonic() - started
    assert answer.document["data"]["converted"] == 6  # type: ignore[index]
    assert peak[0] == 3
    assert elapsed < 6 * 0.4  # not one after another


def test_batch_reports_what_the_deadline_did_not_reach(
    http_server: servers.HttpServer, files: dict[str, str], make_settings: MakeSettings
) -> None:
    stalled = http_server.route("stalled.dcm", servers.stall(b"DICM", 100_000, seconds=4))
    # 6.5 s left: the answer is due in 5.5 s and downloads must end 4 s before it,
    # so the first (stalled) download gets 1.5 s and nothing else can start.
    context = LambdaContext(remaining_seconds=6.5)
    started = time.monotonic()
    answer = batch(make_settings(batch_workers=1), [stalled, files["good"], files["mr"]], context)
    assert time.monotonic() - started < 5.5
    document = answer.document
    assert document is not None
    results = document["data"]["results"]
    assert [r["error"]["code"] for r in results] == [
        "upstream_timeout",
        "not_reached",
        "not_reached",
    ]
    assert results[1]["error"]["status"] == 503 and "again" in results[1]["message"]
    assert document["data"]["not_reached"] == 2
    assert "2 not reached" in document["message"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"urls": []}, "non-empty JSON array"),
        ({"urls": "http://127.0.0.1/a.dcm"}, "non-empty JSON array"),
        ({"urls": ["a"] * 4}, "at most 3"),
        ({"urls": ["a"], "url": "a"}, "either url or urls"),
        ({"urls": ["a"], "response": "binary"}, "a batch answers JSON"),
        ({"urls": ["a"], "quality": 0}, "quality must be"),
    ],
)
def test_invalid_batches_are_400(
    fields: dict[str, Any], message: str, make_settings: MakeSettings
) -> None:
    event = with_fields(load_event("rest_convert_post"), **{"url": None, **fields})
    answer = invoke(event, make_settings(max_batch_urls=3))
    assert answer.status == 400
    assert message in answer.document["message"]  # type: ignore[index]


def test_run_all_keeps_order_and_gives_up_at_the_deadline() -> None:
    def job(n: int) -> Callable[[], int]:
        def run() -> int:
            if n == 2:
                raise ValueError("two")
            time.sleep(0.01 if n < 4 else 1.0)
            return n

        return run

    deadline = bulk.Deadline(time.monotonic() + 0.5)
    results = bulk.run_all([job(n) for n in range(5)], 4, deadline)
    assert results[:2] == [0, 1] and isinstance(results[2], ValueError)
    assert results[3] == 3 and results[4] is None


@pytest.fixture(scope="module", autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    yield
    # Jobs left running at a deadline end on their own; give them the time to.
    for thread in threading.enumerate():
        if thread.name.startswith("ThreadPoolExecutor"):
            thread.join(timeout=10)
