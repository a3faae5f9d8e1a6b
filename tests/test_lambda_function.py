"""The handler end to end: AWS-shaped events in, the seed's documents out.

Sources are real servers on loopback (tests/servers.py): HTTP(S), FTP, and moto's
S3 server mode. Every error status is produced by a real cause: a 404 from the HTTP
server, a 415 from a JPEG XL file, a 504 from a server that stalls, and so on.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import dicom_codecs
import errors
import lambda_function
import service_log
from settings import Settings, get_settings
from tests import servers
from tests.corpus import bundled_file, corpus_file
from tests.handler_support import (
    Answer,
    LambdaContext,
    event_names,
    invoke,
    load_event,
    read_result,
    with_fields,
    with_url,
)

PROJECT = Path(__file__).resolve().parents[1]
HEAVY_MODULES = ("numpy", "pydicom", "PIL", "boto3", "botocore", "requests")

MakeSettings = Callable[..., Settings]


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_success_document(
    document: dict[str, Any], request_id: str, fmt: str = "jpg", size: tuple[int, int] = (128, 128)
) -> Image.Image:
    """The seed's document, with base64 that decodes to a valid image of the stated size."""
    assert document["success"] is True
    assert document["message"] == f"DICOM successfully converted to {fmt.upper()}"
    assert document["request_id"] == request_id
    stamp = datetime.fromisoformat(document["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() is not None and stamp.utcoffset().total_seconds() == 0
    data = document["data"]
    raw = base64.b64decode(data["image_base64"], validate=True)
    assert data["file_size"] == len(raw)
    assert data["format"] == fmt
    image = decode_image(raw)
    assert image.format == {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[fmt]
    assert image.size == size == (data["width"], data["height"])
    assert data["frame"] == 1 and data["frames"] == 1
    assert set(data["window"]) == {"center", "width", "function", "source"}
    assert isinstance(document["metadata"], dict)
    return image


def assert_error(answer: Answer, status: int, code: str) -> dict[str, Any]:
    document = answer.document
    assert document is not None, answer.body[:200]
    assert answer.status == status, document
    assert document["success"] is False
    assert document["error"] == {"code": code, "status": status}
    assert document["message"] and document["request_id"]
    datetime.fromisoformat(document["timestamp"].replace("Z", "+00:00"))
    return document


def log_lines(output: str) -> list[dict[str, Any]]:
    """Every line the service wrote must be one JSON object."""
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def request_line(lines: list[dict[str, Any]]) -> dict[str, Any]:
    found = [line for line in lines if line.get("message") == "request"]
    assert len(found) == 1, lines
    return found[0]


# ---------------------------------------------------------------------------
# Cold start
# ---------------------------------------------------------------------------


def _loaded_after(code: str) -> list[str]:
    script = (
        f"import sys\n{code}\n"
        f"print('loaded:' + ','.join(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("loaded:"), result.stdout
    return [m for m in last.removeprefix("loaded:").split(",") if m]


def test_importing_the_handler_loads_no_heavy_module() -> None:
    assert _loaded_after("import lambda_function") == []


def test_health_loads_no_heavy_module() -> None:
    code = (
        "import json, lambda_function\n"
        "event = json.load(open('tests/events/rest_health.json'))\n"
        "assert lambda_function.lambda_handler(event, None)['statusCode'] == 200"
    )
    assert _loaded_after(code) == []


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["rest_health", "http_health_stage", "url_health", "direct_health", "direct_health_path"],
)
def test_health_through_every_event_shape(name: str, make_settings: MakeSettings) -> None:
    context = LambdaContext()
    answer = invoke(load_event(name), make_settings(), context)
    assert answer.status == 200
    document = answer.document
    assert document is not None
    assert document["status"] == "ok"
    assert document["version"] == lambda_function.__version__
    assert document["request_id"] == context.aws_request_id
    if not name.startswith("direct"):
        assert answer.headers["X-Request-Id"] == context.aws_request_id
        assert answer.media_type == "application/json"


def test_health_reports_what_the_converter_can_decode(make_settings: MakeSettings) -> None:
    import dicom_converter

    document = invoke(load_event("direct_health"), make_settings()).document
    assert document is not None
    names = {s["name"] for s in document["transfer_syntaxes"]}
    assert names == set(dicom_converter.supported_syntax_names())
    assert document["runtime"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert document["runtime"]["architecture"]
    assert document["codecs"]["pydicom"] and document["codecs"] == dicom_codecs.codec_versions()
    assert document["temp"]["free_bytes"] > 0
    assert document["uptime_seconds"] >= 0


def test_health_codec_versions_match_the_installed_distributions() -> None:
    from importlib import metadata

    versions = dicom_codecs.codec_versions()
    assert {"pydicom", "numpy", "pillow", "pylibjpeg"} <= set(versions)
    for distribution, version in versions.items():
        assert version == metadata.version(distribution)


# ---------------------------------------------------------------------------
# Routing and CORS
# ---------------------------------------------------------------------------


def test_unknown_path_is_404(make_settings: MakeSettings) -> None:
    event = load_event("rest_health")
    event["path"] = event["resource"] = "/nothing-here"
    assert_error(invoke(event, make_settings()), 404, "route_not_found")


def test_wrong_method_is_405_with_allow(make_settings: MakeSettings) -> None:
    event = load_event("http_convert_post")
    event["requestContext"]["http"]["method"] = "DELETE"
    answer = invoke(event, make_settings())
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == "GET, POST, OPTIONS"
    event = load_event("rest_health")
    event["httpMethod"] = "POST"
    answer = invoke(event, make_settings())
    assert_error(answer, 405, "method_not_allowed")
    assert answer.headers["Allow"] == "GET, OPTIONS"


@pytest.mark.parametrize(
    ("path", "stage", "route"),
    [
        ("/convert", "prod", "/convert"),
        ("/convert/", "prod", "/convert"),
        ("/prod/convert", "prod", "/convert"),
        ("/prod/health/", "prod", "/health"),
        ("/v1/health", "$default", "/health"),
        ("//health//", None, "/health"),
        ("/a/b/health", None, "/a/b/health"),
        ("/", None, "/"),
    ],
)
def test_route_path_tolerates_stage_prefix_and_trailing_slash(
    path: str, stage: str | None, route: str
) -> None:
    assert lambda_function.route_path(path, stage) == route


def test_preflight_answers_cors(make_settings: MakeSettings) -> None:
    answer = invoke(load_event("rest_preflight"), make_settings())
    assert answer.status == 204
    assert answer.body == b""
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in answer.headers["Access-Control-Allow-Methods"]
    assert answer.headers["Access-Control-Allow-Headers"] == "content-type"


def test_cors_origins_are_configurable(make_settings: MakeSettings) -> None:
    settings = make_settings(cors_origins="https://viewer.example.org,https://other.example")
    answer = invoke(load_event("rest_preflight"), settings)
    assert answer.headers["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    assert answer.headers["Vary"] == "Origin"
    event = load_event("rest_preflight")
    event["headers"]["Origin"] = event["multiValueHeaders"]["Origin"][0] = "https://evil.example"
    answer = invoke(event, settings)
    assert answer.status == 204
    assert "Access-Control-Allow-Origin" not in answer.headers


# ---------------------------------------------------------------------------
# Request validation (400 names the field and the allowed values)
# ---------------------------------------------------------------------------

BAD_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"url": None}, "url is required"),
    ({"url": "   "}, "url is required"),
    ({"url": 42}, "url must be a string"),
    ({"quality": 0}, "quality must be an integer from 1 to 100"),
    ({"quality": 101}, "quality must be an integer from 1 to 100"),
    ({"quality": "high"}, "quality must be an integer from 1 to 100"),
    ({"quality": True}, "quality must be an integer from 1 to 100"),
    ({"quality": 85.5}, "quality must be an integer from 1 to 100"),
    ({"output_format": "tiff"}, "output_format must be one of jpg, jpeg, png, webp, gif"),
    ({"storage_type": "smb"}, "storage_type must be one of auto, s3, r2, ftp, http"),
    ({"frame": 0}, "frame is 1-based"),
    ({"width": 0}, "width must be an integer from 1 to 16384"),
    ({"height": 20000}, "height must be an integer from 1 to 16384"),
    ({"window": {"center": 40}}, "window.center and window.width must be given together"),
    ({"window": 40}, "window must be an object"),
    ({"window": "40"}, "window must be center,width[,linear|linear-exact|sigmoid]"),
    ({"window": {"center": 40, "width": 400, "gamma": 2}}, "unknown"),
    ({"window": {"center": 40, "width": 400, "function": "CUBIC"}}, "window_function must be"),
    ({"window": {"center": 40, "width": 0}}, "window width must be at least 1"),
    ({"window_center": 40}, "window_center and window_width must be given together"),
    ({"window_function": "SIGMOID"}, "window_function needs window_center"),
    ({"window": {"center": 1, "width": 2}, "window_width": 3}, "not both"),
    ({"preset": "kidney"}, "preset must be one of lung"),
    ({"preset": "lung", "window_center": 1, "window_width": 2}, "either a window or a preset"),
    ({"include_metadata": "maybe"}, "include_metadata must be true or false"),
    ({"response": "xml"}, "response must be one of json, binary, url"),
    ({"response": "url"}, "OUTPUT_BUCKET"),
    ({"qualty": 90}, "unknown field(s) 'qualty'"),
]


@pytest.mark.parametrize(("fields", "expected"), BAD_FIELDS)
@pytest.mark.parametrize("name", ["rest_convert_post", "direct_convert"])
def test_invalid_fields_are_400_naming_the_field(
    name: str, fields: dict[str, Any], expected: str, make_settings: MakeSettings
) -> None:
    answer = invoke(with_fields(load_event(name), **fields), make_settings())
    document = assert_error(answer, 400, "invalid_request")
    assert expected in document["message"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("quality=abc&url=https%3A%2F%2Fexample.com%2Fa.dcm", "quality must be an integer"),
        ("url=a&url=b", "'url' is given more than once"),
        ("output_format=tiff&url=https%3A%2F%2Fexample.com%2Fa.dcm", "output_format must be"),
        ("", "url is required"),
    ],
)
def test_invalid_query_parameters_are_400(
    query: str, expected: str, make_settings: MakeSettings
) -> None:
    event = load_event("http_convert_get")
    event["rawQueryString"] = query
    document = assert_error(invoke(event, make_settings()), 400, "invalid_request")
    assert expected in document["message"]


@pytest.mark.parametrize(
    ("body", "is_base64", "expected"),
    [
        ("{not json", False, "not valid JSON"),
        ("[1, 2]", False, "must be a JSON object"),
        ("", False, "request body is empty"),
        ("%%%not-base64", True, "not valid base64"),
        ("[" * 100_000, False, "not valid JSON"),
        ('"just a string"', False, "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400_not_500(
    body: str, is_base64: bool, expected: str, make_settings: MakeSettings
) -> None:
    event = load_event("rest_convert_post")
    event["body"], event["isBase64Encoded"] = body, is_base64
    document = assert_error(invoke(event, make_settings()), 400, "invalid_request")
    assert expected in document["message"]


def test_storage_type_that_contradicts_the_url_is_400(make_settings: MakeSettings) -> None:
    event = with_url(load_event("direct_convert"), "ftp://127.0.0.1/a.dcm", storage_type="s3")
    document = assert_error(invoke(event, make_settings()), 400, "invalid_url")
    assert "storage_type" in document["message"]


@pytest.mark.parametrize("event", ["not an object", ["a", "list"], 42])
def test_events_that_are_not_objects_are_400(event: Any, make_settings: MakeSettings) -> None:
    assert_error(invoke(event, make_settings()), 400, "invalid_request")


@pytest.mark.parametrize(
    ("accept", "image"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/json, image/png", False),
        ("image/jpeg", True),
        ("image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8", True),
        ("application/json;q=0.5, image/*", True),
        ("image/*;q=0.1, */*", False),
        ("image/jpeg;q=abc, application/json;q=0.1", False),
    ],
)
def test_accept_negotiation(accept: str | None, image: bool) -> None:
    assert lambda_function.prefers_image(accept) is image


def test_scrub_removes_query_strings_and_passwords() -> None:
    text = (
        "HTTPSConnectionPool: url: https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&x=1 "
        "and ftp://user:pa55@host/f.dcm"
    )
    scrubbed = service_log.redact_text(text)
    assert "abc" not in scrubbed and "pa55" not in scrubbed and "user" not in scrubbed
    assert "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&x=***" in scrubbed
    assert "ftp://***@host/f.dcm" in scrubbed


def test_every_service_error_maps_to_its_own_status_and_code() -> None:
    def subclasses(cls: type) -> list[type]:
        found = [cls]
        for sub in cls.__subclasses__():
            found.extend(subclasses(sub))
        return found

    for cls in subclasses(errors.ServiceError):
        exc = cls("what to change")
        response = lambda_function.error_response(exc, "rid")
        assert response.status == cls.status
        assert response.document is not None
        assert response.document["error"] == {"code": cls.code, "status": cls.status}
        assert response.document["message"] == "what to change"


# ---------------------------------------------------------------------------
# Convert through every event shape, against a real HTTP server
# ---------------------------------------------------------------------------

CONVERT_EVENTS = {
    # name: (format, size, metadata included)
    "rest_convert_post": ("jpg", (128, 128), True),
    "rest_convert_post_base64": ("jpg", (128, 128), True),
    "rest_convert_get": ("jpg", (64, 64), True),
    "http_convert_post": ("jpg", (128, 128), True),
    "http_convert_get": ("png", (128, 128), False),
    "url_convert_post": ("jpg", (128, 128), True),
    "direct_convert": ("jpg", (128, 128), True),
}


def test_every_json_convert_fixture_is_covered() -> None:
    names = {n for n in event_names() if "convert" in n and "binary" not in n}
    assert names == set(CONVERT_EVENTS)


@pytest.mark.parametrize("name", sorted(CONVERT_EVENTS))
def test_convert_through_every_event_shape(
    name: str, sample_url: str, make_settings: MakeSettings, temp_root: Path
) -> None:
    fmt, size, with_metadata = CONVERT_EVENTS[name]
    context = LambdaContext()
    answer = invoke(with_url(load_event(name), sample_url), make_settings(), context)
    assert answer.status == 200, answer.document
    assert answer.document is not None
    assert_success_document(answer.document, context.aws_request_id, fmt, size)
    data = answer.document["data"]
    assert data["window"]["source"] == "min_max"
    assert data["transfer_syntax"] == "1.2.840.10008.1.2.1"
    if name != "rest_convert_get" and fmt == "jpg":
        assert data["quality"] == 90
    metadata = answer.document["metadata"]
    if with_metadata:
        assert metadata["Modality"] == "CT"
        assert metadata["Rows"] == 128 and metadata["PatientName"]
    else:
        assert metadata == {}
    if name.startswith("direct"):
        assert "statusCode" not in answer.raw  # the document itself, not double-encoded
    else:
        assert answer.raw["isBase64Encoded"] is False
        assert answer.headers["X-Request-Id"] == context.aws_request_id
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert list(temp_root.iterdir()) == []


@pytest.mark.parametrize("name", ["rest_convert_binary", "url_convert_binary"])
def test_binary_answers_are_the_image_itself(
    name: str, sample_url: str, make_settings: MakeSettings
) -> None:
    answer = invoke(with_url(load_event(name), sample_url), make_settings())
    assert answer.status == 200
    assert answer.raw["isBase64Encoded"] is True
    assert answer.media_type == "image/jpeg"
    image = decode_image(answer.body)
    assert image.format == "JPEG" and image.size == (128, 128)


def test_binary_png_and_webp(sample_url: str, make_settings: MakeSettings) -> None:
    for fmt, media in (("png", "image/png"), ("webp", "image/webp")):
        event = with_url(load_event("http_convert_post"), sample_url, output_format=fmt)
        answer = invoke(with_fields(event, response="binary"), make_settings())
        assert answer.media_type == media
        assert decode_image(answer.body).format == fmt.upper()


def test_window_preset_frame_and_resize_are_applied(
    sample_url: str, make_settings: MakeSettings
) -> None:
    event = with_url(load_event("direct_convert"), sample_url, window_center=40, window_width=400)
    data = invoke(event, make_settings()).document["data"]  # type: ignore[index]
    assert data["window"] == {
        "center": 40.0,
        "width": 400.0,
        "function": "LINEAR",
        "source": "request",
    }
    event = with_url(load_event("direct_convert"), sample_url, preset="bone", width=50, frame=1)
    data = invoke(event, make_settings()).document["data"]  # type: ignore[index]
    assert data["window"]["source"] == "preset"
    assert (data["width"], data["height"]) == (50, 50)
    event = with_url(
        load_event("direct_convert"),
        sample_url,
        window={"center": 0, "width": 100, "function": "sigmoid"},
    )
    data = invoke(event, make_settings()).document["data"]  # type: ignore[index]
    assert data["window"]["function"] == "SIGMOID"


def test_frame_beyond_the_image_is_400(sample_url: str, make_settings: MakeSettings) -> None:
    event = with_url(load_event("direct_convert"), sample_url, frame=2)
    document = assert_error(invoke(event, make_settings()), 400, "invalid_request")
    assert "1 frame" in document["message"]


def test_body_variants_are_accepted(sample_url: str, make_settings: MakeSettings) -> None:
    fields = json.dumps({"url": sample_url})
    variants = [
        (json.dumps(fields), False),  # a JSON string holding the document
        (base64.b64encode(fields.encode()).decode(), False),  # base64 without the flag
        (base64.b64encode(fields.encode()).decode(), True),
    ]
    for body, flag in variants:
        event = load_event("rest_convert_post")
        event["body"], event["isBase64Encoded"] = body, flag
        assert invoke(event, make_settings()).status == 200
    direct = {"body": {"url": sample_url}}
    assert invoke(direct, make_settings()).document["success"] is True  # type: ignore[index]
    direct = {"body": fields}
    assert invoke(direct, make_settings()).document["success"] is True  # type: ignore[index]


# ---------------------------------------------------------------------------
# Other sources: S3 (moto), R2 (moto with its own keys), FTP, HTTPS
# ---------------------------------------------------------------------------


def test_convert_from_s3(
    moto_s3: servers.MotoServer, sample_dicom: Path, make_settings: MakeSettings
) -> None:
    moto_s3.put_object("scans", "ct/CT_small.dcm", sample_dicom)
    settings = make_settings(s3_endpoint_url=moto_s3.endpoint_url)
    for storage_type in ("auto", "s3"):
        context = LambdaContext()
        event = with_url(
            load_event("http_convert_post"), "s3://scans/ct/CT_small.dcm", storage_type=storage_type
        )
        answer = invoke(event, settings, context)
        assert answer.status == 200, answer.document
        assert_success_document(answer.document, context.aws_request_id)  # type: ignore[arg-type]
    event = with_url(load_event("http_convert_post"), "s3://scans/missing.dcm")
    assert_error(invoke(event, settings), 404, "not_found")


def test_convert_from_r2(
    moto_r2: servers.MotoServer, sample_dicom: Path, make_settings: MakeSettings
) -> None:
    moto_r2.put_object("r2-scans", "CT_small.dcm", sample_dicom)
    settings = make_settings(
        r2_endpoint_url=moto_r2.endpoint_url,
        r2_access_key_id=moto_r2.access_key_id,
        r2_secret_access_key=moto_r2.secret_access_key,
    )
    event = with_url(
        load_event("url_convert_post"), f"{moto_r2.endpoint_url}/r2-scans/CT_small.dcm"
    )
    answer = invoke(event, settings)
    assert answer.status == 200, answer.document
    assert answer.document["data"]["format"] == "jpg"  # type: ignore[index]


def test_convert_from_ftp_never_logs_the_password(
    ftp_server: servers.FtpServer,
    sample_dicom: Path,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    url = ftp_server.put("scans/CT_small.dcm", sample_dicom)
    context = LambdaContext()
    answer = invoke(with_url(load_event("rest_convert_get"), url), make_settings(), context)
    assert answer.status == 200, answer.document
    assert_success_document(answer.document, context.aws_request_id, size=(64, 64))  # type: ignore[arg-type]
    output = capsys.readouterr().out
    line = request_line(log_lines(output))
    assert line["source_type"] == "ftp"
    assert "fetch" in caplog.text  # the downloader's lines, through the root logger
    for text in (output, caplog.text, json.dumps(answer.document)):
        assert ftp_server.password not in text and "s3cr3t" not in text


def test_convert_from_https(
    https_server: servers.HttpServer,
    tls_ca: servers.TestCA,
    sample_dicom: Path,
    make_settings: MakeSettings,
) -> None:
    url = https_server.put("CT_small.dcm", sample_dicom)
    settings = make_settings(requests_ca_bundle=str(tls_ca.bundle))
    answer = invoke(with_url(load_event("url_convert_post"), url), settings)
    assert answer.status == 200, answer.document


# ---------------------------------------------------------------------------
# Big answers: S3 link through OUTPUT_BUCKET, or 413
# ---------------------------------------------------------------------------


@pytest.fixture
def output_bucket(moto_s3: servers.MotoServer) -> str:
    moto_s3.create_bucket("rendered")
    return "rendered"


def fetch_link(url: str) -> bytes:
    answer = requests.get(url, timeout=10)
    assert answer.status_code == 200
    return answer.content


def test_response_url_stores_the_image_and_answers_with_a_presigned_link(
    moto_s3: servers.MotoServer,
    output_bucket: str,
    sample_url: str,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = make_settings(
        output_bucket=output_bucket,
        s3_endpoint_url=moto_s3.endpoint_url,
        url_expiry_seconds=600,
    )
    context = LambdaContext()
    event = with_url(load_event("rest_convert_post"), sample_url, response="url")
    answer = invoke(event, settings, context)
    assert answer.status == 200, answer.document
    data = answer.document["data"]  # type: ignore[index]
    assert "image_base64" not in data
    assert data["expires_in"] == 600
    assert "X-Amz-Signature=" in data["image_url"]
    image = decode_image(fetch_link(data["image_url"]))
    assert image.format == "JPEG" and image.size == (data["width"], data["height"])
    # Kept in the output cache, under a key derived from the answer's ETag.
    digest = answer.headers["ETag"].strip('"').rpartition("-")[0]
    key = f"converted/cache/{digest}.jpg"
    stored = moto_s3.client().get_object(Bucket=output_bucket, Key=key)
    assert stored["ContentType"] == "image/jpeg"
    assert stored["Body"].read() == fetch_link(data["image_url"])
    output = capsys.readouterr().out
    assert "X-Amz-Signature" not in output
    assert request_line(log_lines(output))["output_key"] == key


def test_an_answer_above_the_limit_becomes_a_link(
    moto_s3: servers.MotoServer, output_bucket: str, sample_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(
        output_bucket=output_bucket, s3_endpoint_url=moto_s3.endpoint_url, max_response_bytes=2000
    )
    answer = invoke(with_url(load_event("http_convert_post"), sample_url), settings)
    assert answer.status == 200
    data = answer.document["data"]  # type: ignore[index]
    assert decode_image(fetch_link(data["image_url"])).format == "JPEG"
    # A caller that wanted the image itself is sent to it.
    answer = invoke(with_url(load_event("url_convert_binary"), sample_url), settings)
    assert answer.status == 303
    assert answer.headers["Location"] == answer.document["data"]["image_url"]  # type: ignore[index]
    assert decode_image(fetch_link(answer.headers["Location"])).format == "JPEG"


def test_an_answer_above_the_limit_without_a_bucket_is_413(
    sample_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(max_response_bytes=2000)
    for name in ("rest_convert_post", "url_convert_binary", "direct_convert"):
        answer = invoke(with_url(load_event(name), sample_url), settings)
        document = assert_error(answer, 413, "too_large")
        for hint in ("width/height", "lower quality", "OUTPUT_BUCKET", "2000"):
            assert hint in document["message"]
    settings = make_settings(max_response_bytes=200_000)
    assert invoke(with_url(load_event("rest_convert_post"), sample_url), settings).status == 200


def test_a_sequence_above_the_limit_without_a_bucket_says_to_ask_for_fewer_frames(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.put("examples_ybr_color.dcm", bundled_file("examples_ybr_color.dcm"))
    settings = make_settings(max_response_bytes=4000)
    event = with_url(load_event("direct_convert"), url, frames="all", output_format="gif")
    document = assert_error(invoke(event, settings), 413, "too_large")
    assert "fewer frames (frames=N-M)" in document["message"]


def test_an_unwritable_output_bucket_is_a_configuration_error(
    moto_s3: servers.MotoServer, sample_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(output_bucket="no-such-bucket", s3_endpoint_url=moto_s3.endpoint_url)
    event = with_url(load_event("direct_convert"), sample_url, response="url")
    document = assert_error(invoke(event, settings), 500, "configuration_error")
    assert "OUTPUT_BUCKET" in document["message"]


# ---------------------------------------------------------------------------
# The error table, each status from a real cause
# ---------------------------------------------------------------------------


def no_pixel_data_file(folder: Path) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    path = folder / "report.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_403_when_the_url_policy_blocks_loopback(
    sample_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(allowed_hosts="")
    document = assert_error(
        invoke(with_url(load_event("rest_convert_post"), sample_url), settings),
        403,
        "blocked_by_policy",
    )
    assert "ALLOWED_HOSTS" in document["message"]


def test_403_when_the_source_refuses(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.route("private.dcm", servers.respond(403, b"no"))
    answer = invoke(with_url(load_event("rest_convert_post"), url), make_settings())
    assert_error(answer, 403, "forbidden")


def test_404_when_the_source_has_no_such_file(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    answer = invoke(
        with_url(load_event("http_convert_post"), http_server.url("gone.dcm")), make_settings()
    )
    assert_error(answer, 404, "not_found")


def test_a_jpeg_xl_file_renders(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.put("will-jxl.dcm", corpus_file("will-jxl.dcm"))
    answer = invoke(with_url(load_event("url_convert_post"), url), make_settings())
    assert answer.status == 200
    assert answer.document is not None
    data = answer.document["data"]
    assert data["transfer_syntax"] == "1.2.840.10008.1.2.4.111"
    assert data["transfer_syntax_name"] == "JPEG XL JPEG Recompression"
    assert (data["width"], data["height"]) == (1016, 708)


def test_422_for_files_that_are_not_renderable_dicom(
    http_server: servers.HttpServer, tmp_path: Path, make_settings: MakeSettings
) -> None:
    url = http_server.put("notes.dcm", b"these are notes, not an image\n" * 20)
    answer = invoke(with_url(load_event("rest_convert_post"), url), make_settings())
    assert_error(answer, 422, "not_dicom")
    url = http_server.put("report.dcm", no_pixel_data_file(tmp_path))
    answer = invoke(with_url(load_event("rest_convert_post"), url), make_settings())
    assert_error(answer, 422, "no_pixel_data")


def test_413_when_the_download_is_above_max_download_bytes(
    sample_url: str, make_settings: MakeSettings
) -> None:
    settings = make_settings(max_download_bytes=10_000)
    document = assert_error(
        invoke(with_url(load_event("rest_convert_post"), sample_url), settings), 413, "too_large"
    )
    assert "MAX_DOWNLOAD_BYTES" in document["message"]


def test_502_when_the_source_always_fails(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.route("flaky.dcm", servers.respond(500, b"boom"))
    settings = make_settings(download_retries=1)
    answer = invoke(with_url(load_event("http_convert_post"), url), settings)
    assert_error(answer, 502, "upstream_error")
    assert http_server.hits("flaky.dcm") == 2


def test_504_when_the_source_stalls(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    url = http_server.route("slow.dcm", servers.stall(b"DICM", 100_000, seconds=3))
    settings = make_settings(read_timeout_seconds=0.5, download_deadline_seconds=1)
    started = time.monotonic()
    answer = invoke(with_url(load_event("rest_convert_post"), url), settings)
    assert_error(answer, 504, "upstream_timeout")
    assert time.monotonic() - started < 2.5


def test_the_download_ends_before_lambda_would_kill_the_invocation(
    http_server: servers.HttpServer, make_settings: MakeSettings
) -> None:
    # 6 s left minus the render reserve leaves a 1 s download budget.
    url = http_server.route("slow.dcm", servers.drip(b"x" * 1000, interval=0.2))
    context = LambdaContext(remaining_seconds=lambda_function.RENDER_RESERVE_SECONDS + 1)
    started = time.monotonic()
    answer = invoke(with_url(load_event("direct_convert"), url), make_settings(), context)
    assert_error(answer, 504, "upstream_timeout")
    assert time.monotonic() - started < 2.5


def test_500_for_an_unexpected_failure_hides_the_details(
    tmp_path: Path,
    sample_url: str,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the temp root cannot be created under a file")
    settings = make_settings(temp_root=str(blocker / "root"))
    context = LambdaContext()
    answer = invoke(with_url(load_event("rest_convert_post"), sample_url), settings, context)
    document = assert_error(answer, 500, "internal_error")
    assert document["request_id"] == context.aws_request_id
    assert document["message"] == errors.GENERIC_MESSAGE and "request_id" in document["message"]
    assert "a-file" not in document["message"] and "Errno" not in document["message"]
    lines = log_lines(capsys.readouterr().out)
    detail = [line for line in lines if line.get("message") == "unexpected error"]
    assert detail and "NotADirectoryError" in detail[0]["exception"]
    assert detail[0]["request_id"] == context.aws_request_id


def test_500_for_invalid_settings_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAX_DOWNLOAD_BYTES", "-5")
    get_settings.cache_clear()
    try:
        answer = read_result(lambda_function.lambda_handler(load_event("rest_health"), None))
    finally:
        monkeypatch.delenv("MAX_DOWNLOAD_BYTES")
        get_settings.cache_clear()
    document = assert_error(answer, 500, "configuration_error")
    assert "MAX_DOWNLOAD_BYTES" in document["message"]


def test_lambda_handler_reads_settings_from_the_environment(
    loopback_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    temp_root: Path,
    sample_url: str,
) -> None:
    monkeypatch.setenv("TEMP_ROOT", str(temp_root))
    get_settings.cache_clear()
    result = lambda_function.lambda_handler(
        with_url(load_event("rest_convert_post"), sample_url), LambdaContext()
    )
    assert read_result(result).status == 200
    assert list(temp_root.iterdir()) == []


def test_readme_lists_every_setting_as_an_environment_variable() -> None:
    from dataclasses import fields

    text = (PROJECT / "README.md").read_text()
    section = text.split("<!-- section:api -->")[1].split("<!-- /section:api -->")[0]
    missing = [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in section]
    assert missing == []


def test_the_seed_test_command_runs_every_sample_event() -> None:
    result = subprocess.run(
        [sys.executable, "test_lambda.py"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(event_names())} passed, 0 failed" in result.stdout


# ---------------------------------------------------------------------------
# Temp hygiene and logs
# ---------------------------------------------------------------------------


def test_temp_root_is_empty_after_mixed_good_and_bad_requests(
    http_server: servers.HttpServer,
    sample_dicom: Path,
    temp_root: Path,
    make_settings: MakeSettings,
) -> None:
    good = http_server.put("good.dcm", sample_dicom)
    cases = [
        (good, make_settings(), 200),
        (http_server.put("bad.dcm", b"not dicom" * 100), make_settings(), 422),
        (http_server.url("missing.dcm"), make_settings(), 404),
        (http_server.route("boom.dcm", servers.respond(500)), make_settings(), 502),
        (good, make_settings(max_response_bytes=1000), 413),
        (good, make_settings(max_download_bytes=1000), 413),
        (good, make_settings(), 200),
    ]
    for url, settings, status in cases:
        for name in ("rest_convert_post", "direct_convert"):
            assert invoke(with_url(load_event(name), url), settings).status == status
    assert temp_root.is_dir()
    assert list(temp_root.iterdir()) == []


def test_stale_leftovers_are_swept_by_the_next_request(
    temp_root: Path, sample_url: str, make_settings: MakeSettings
) -> None:
    stale = temp_root / "killed-by-timeout"
    stale.mkdir(parents=True)
    (stale / "download.dcm").write_bytes(b"x" * 100)
    old = time.time() - 2 * 86_400
    os.utime(stale, (old, old))
    fresh = temp_root / "another-process"
    fresh.mkdir()
    invoke(with_url(load_event("direct_convert"), sample_url), make_settings())
    assert not stale.exists()
    assert fresh.exists()


def test_logs_are_json_lines_with_stages_and_sizes_and_no_patient_data(
    moto_s3: servers.MotoServer,
    sample_dicom: Path,
    make_settings: MakeSettings,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    moto_s3.put_object("scans", "signed/CT_small.dcm", sample_dicom)
    presigned = moto_s3.presign("scans", "signed/CT_small.dcm")
    signature = presigned.split("X-Amz-Signature=")[1].split("&")[0]
    context = LambdaContext()
    answer = invoke(with_url(load_event("rest_convert_post"), presigned), make_settings(), context)
    assert answer.status == 200, answer.document
    patient = answer.document["metadata"]["PatientName"]  # type: ignore[index]
    output = capsys.readouterr().out
    lines = log_lines(output)
    line = request_line(lines)
    assert line["request_id"] == context.aws_request_id
    assert line["route"] == "/convert" and line["method"] == "POST"
    assert line["event_type"] == "rest" and line["status"] == 200
    assert line["source_type"] == "http"
    assert set(line["durations_ms"]) == {
        "download",
        "read",
        "decode",
        "render",
        "encode",
        "decode_render",
        "respond",
        "total",
    }
    # Bytes transferred: this server ignores Range, so at least the whole file.
    assert line["sizes"]["download_bytes"] >= sample_dicom.stat().st_size
    assert line["sizes"]["image_bytes"] == answer.document["data"]["file_size"]  # type: ignore[index]
    assert line["sizes"]["response_bytes"] > line["sizes"]["image_bytes"]
    assert all(entry["request_id"] == context.aws_request_id for entry in lines)
    for text in (output, caplog.text):
        assert patient not in text
        assert signature not in text


LAMBDA_RUNTIME = """
import json, logging, sys
# What the Lambda runtime does before importing the handler: a root handler in its format.
logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="[%(levelname)s] %(message)s")
import lambda_function
event = json.loads(sys.argv[1])
result = lambda_function.lambda_handler(event, None)
assert result["statusCode"] == 200, result
"""


def test_in_lambda_every_module_logs_json_lines_with_the_request_id(
    sample_url: str, temp_root: Path
) -> None:
    env = {
        **os.environ,
        "AWS_LAMBDA_FUNCTION_NAME": "dicom-to-jpg-converter",
        "ALLOWED_HOSTS": "127.0.0.1:*",
        "TEMP_ROOT": str(temp_root),
    }
    event = with_url(load_event("rest_convert_post"), sample_url)
    result = subprocess.run(
        [sys.executable, "-c", LAMBDA_RUNTIME, json.dumps(event)],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = log_lines(result.stdout)
    loggers = {line["logger"] for line in lines}
    assert {"dicom_lambda", "file_downloader"} <= loggers
    request_id = request_line(lines)["request_id"]
    assert all(line["request_id"] == request_id for line in lines)


def test_include_metadata_false_returns_no_metadata(
    sample_url: str, make_settings: MakeSettings
) -> None:
    event = with_url(load_event("direct_convert"), sample_url, include_metadata=False)
    assert invoke(event, make_settings()).document["metadata"] == {}  # type: ignore[index]


def test_health_says_what_max_download_bytes_counts(make_settings: MakeSettings) -> None:
    import ranged_reads

    answer = invoke(load_event("direct_health"), make_settings(max_download_bytes=1234))
    downloads = answer.document["downloads"]  # type: ignore[index]
    assert downloads["max_download_bytes"] == 1234
    assert "bytes transferred" in downloads["max_download_bytes_counts"]
    assert sorted(downloads["ranged_sources"]) == sorted(ranged_reads.RANGED_SOURCES)
