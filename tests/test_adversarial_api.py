"""Adversarial tests through the handler and the local API server.

* Concurrency: 50 requests at once through the real local API server (threads, over
  loopback), mixing good sources with a 404, non-DICOM bytes, blocked hosts and files
  over the size cap. Each answer must be the one for its own request (its own width,
  its own file's SOPInstanceUID, its own URL in the error), work folders never mix
  downloads, and the temp root is empty afterwards.
* Secrets: requests whose URLs carry passwords, presigned signatures and session
  tokens, and a DICOM whose PatientName is a marker, through ``lambda_handler`` and
  through the local API; no marker may appear in any log line (the handler's JSON
  lines on stdout, the local server's lines on stderr, every logger at DEBUG) or in
  an error answer.
* Schemathesis against ``openapi.yaml`` for ``/convert`` and ``/health``, negative
  generation only (invalid bodies, queries, types, unexpected methods).
  ``tests/test_local_api.py`` already sends both kinds of data and checks that the
  answers conform; this file adds the checks that judge invalid input: no 5xx,
  invalid data refused with a 4xx, unexpected methods refused with 405 and
  ``Allow``, and answers that match the schema, statuses, headers and content
  types. The schema declares no links, so there are no stateful sequences to
  generate; a check after the fuzzing shows that no call left state behind (temp
  root empty, conversions still work).

All traffic stays on loopback (``tests/loopback_guard.py`` enforces it).
``ADVERSARIAL_LONG=1`` raises the request count and the generated examples.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import re
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    allow_header_conformance,
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

import lambda_function
import local_api
import settings as settings_module
import temp_cleaner
from settings import Settings, load_settings
from tests import servers
from tests.corpus import env_flag
from tests.dicom_files import write_image
from tests.handler_support import LambdaContext, load_event, with_fields, with_url
from tests.loopback_guard import GUARD

LONG = env_flag("ADVERSARIAL_LONG")
CONCURRENT = 200 if LONG else 50
NEGATIVE_EXAMPLES = 300 if LONG else 30

PROJECT = Path(__file__).resolve().parents[1]
PATIENT_MARKER = "ADVERSARIAL^PATIENT^K4W9"
URL_PASSWORD = "hunter2-api-adversarial"
FAKE_SIGNATURE = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9"
FAKE_TOKEN = "IQoJb3JpZ2luX2VjEApiAdversarialToken"
R2_KEY_ID = "R2APIADVERSARIALKEY0"
R2_SECRET = "r2-api-adversarial-secret-fedcba9876543210"
FTP_PASSWORD = "s3cr3t:p@ss/word%"  # servers.FtpServer's default password
MIB = 1024 * 1024

SECRETS = {
    URL_PASSWORD,
    FAKE_SIGNATURE,
    FAKE_TOKEN,
    R2_SECRET,
    FTP_PASSWORD,
    quote(FTP_PASSWORD, safe=""),
    "testing-aws-secret-key",
    "testing-aws-session-token",
}


@pytest.fixture(autouse=True)
def _loopback_only() -> Iterator[None]:
    with GUARD.watching():
        yield
    assert GUARD.violations == [], "traffic tried to leave loopback"


# --------------------------------------------------------------------------- servers and files


@dataclass(frozen=True)
class GoodFile:
    name: str
    sop_instance_uid: str


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    server = servers.widen_backlog(
        servers.HttpServer(tmp_path_factory.mktemp("adversarial-api-files"))
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def good_files(
    files: servers.HttpServer, tmp_path_factory: pytest.TempPathFactory
) -> list[GoodFile]:
    """Distinct small DICOM files (own pixels, own SOPInstanceUID), served over HTTP."""
    folder = tmp_path_factory.mktemp("adversarial-api-dicom")
    made = []
    for index in range(CONCURRENT):
        # Wider than any width asked for below: the renderer never enlarges.
        pixels = (np.arange(64 * 256, dtype=np.uint16).reshape(64, 256) + index * 7) % 4096
        path = write_image(
            folder,
            pixels,
            f"good-{index}.dcm",
            PatientName=PATIENT_MARKER,
            SeriesDescription=f"series-{index}",
        )
        files.put(path.name, path)
        made.append(GoodFile(path.name, str(_sop_instance_uid(path))))
    return made


def _sop_instance_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


@pytest.fixture(scope="module")
def marked_dicom(good_files: list[GoodFile], files: servers.HttpServer) -> Path:
    return files.root / good_files[0].name


@pytest.fixture(scope="module")
def temp_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adversarial-api-temp") / "work"


@pytest.fixture(scope="module")
def api_settings(temp_root: Path) -> Settings:
    return load_settings(
        {
            "temp_root": str(temp_root),
            "allowed_hosts": "127.0.0.1:*",
            "log_level": "DEBUG",
            "download_retries": 0,
            "connect_timeout_seconds": 3,
            "read_timeout_seconds": 5,
            "download_deadline_seconds": 10,
            "max_download_bytes": MIB,
            # S3 and R2 URLs stay on loopback: a closed port, never AWS.
            "s3_endpoint_url": "http://127.0.0.1:9",
            "r2_endpoint_url": "http://127.0.0.1:9",
        },
        environ={},
    )


def start_api(handler: Any, event_format: str = "rest") -> local_api.LocalApiServer:
    server = local_api.make_server("127.0.0.1", 0, event_format, handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def api(api_settings: Settings) -> Iterator[str]:
    server = start_api(functools.partial(lambda_function.handle, settings=api_settings))
    yield server.url
    server.shutdown()
    server.server_close()


# --------------------------------------------------------------------------- concurrency


@dataclass(frozen=True)
class Job:
    """One request of the concurrent run, and what its answer must be."""

    index: int
    kind: str
    url: str
    width: int
    status: int
    good: GoodFile | None = None


@dataclass
class FolderWatch:
    """Samples the temp root while requests run: which files each work folder held."""

    root: Path
    seen: dict[str, set[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            for folder in list(self.root.glob("*")):
                try:
                    names = {p.name for p in folder.iterdir()}
                except OSError:
                    continue  # removed between the listing and the look
                self.seen.setdefault(folder.name, set()).update(names)
            time.sleep(0.002)

    def stop(self) -> None:
        self._stop.set()


def make_jobs(files: servers.HttpServer, good_files: list[GoodFile]) -> list[Job]:
    """Good sources and every kind of failure, interleaved."""
    kinds = ["good", "good", "missing", "good", "not_dicom", "good", "blocked", "oversize"]
    jobs = []
    for index in range(CONCURRENT):
        kind = kinds[index % len(kinds)]
        width = 16 + index  # a width no other request asks for (at most 215)
        if kind == "good":
            good = good_files[index]
            jobs.append(Job(index, kind, files.url(good.name), width, 200, good))
        elif kind == "missing":
            jobs.append(Job(index, kind, files.url(f"missing-{index}.dcm"), width, 404))
        elif kind == "not_dicom":
            jobs.append(Job(index, kind, files.url(f"page-{index}.html"), width, 422))
        elif kind == "blocked":
            # Two spellings: a loopback address that is not allowlisted (refused before
            # connecting), and the metadata address (refused by the classifier).
            host = "127.0.0.2" if index % 2 else "169.254.169.254"
            jobs.append(Job(index, kind, f"http://{host}:{files.port}/b-{index}.dcm", width, 403))
        else:
            jobs.append(Job(index, kind, files.url(f"big-{index}.dcm"), width, 413))
    return jobs


def call(api: str, job: Job) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = {"url": job.url, "width": job.width, "output_format": "png", "include_metadata": True}
    answer = requests.post(f"{api}/convert", json=body, timeout=60)
    return answer.status_code, answer.json(), dict(answer.headers)


def check_answer(job: Job, status: int, document: dict[str, Any], headers: dict[str, str]) -> None:
    assert status == job.status, (job, document.get("message"))
    assert document["request_id"] == headers["X-Request-Id"]
    if job.good is not None:
        image = Image.open(io.BytesIO(base64.b64decode(document["data"]["image_base64"])))
        assert image.size[0] == job.width == document["data"]["width"]
        assert document["metadata"]["SOPInstanceUID"] == job.good.sop_instance_uid
        assert document["metadata"]["SeriesDescription"] == f"series-{job.index}"
        return
    assert document["success"] is False and document["error"]["status"] == job.status
    if job.kind in ("missing", "oversize"):
        # The error names this request's own URL, not a neighbour's.
        assert f"-{job.index}.dcm" in document["message"], document["message"]


def test_concurrent_requests_through_the_local_api(
    api: str,
    files: servers.HttpServer,
    good_files: list[GoodFile],
    temp_root: Path,
) -> None:
    page = b"<!doctype html><title>Sign in</title>" + b"<p>not an image</p>" * 200
    for index in range(CONCURRENT):
        files.put(f"page-{index}.html", page)
        files.route(f"big-{index}.dcm", servers.declare_length(page, 64 * MIB))
    jobs = make_jobs(files, good_files)
    temp_root.mkdir(parents=True, exist_ok=True)
    watch = FolderWatch(temp_root)
    watcher = threading.Thread(target=watch.run, daemon=True)
    watcher.start()
    barrier = threading.Barrier(len(jobs))

    def run(job: Job) -> tuple[int, dict[str, Any], dict[str, str]]:
        barrier.wait(timeout=30)  # all requests leave together
        return call(api, job)

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            answers = list(pool.map(run, jobs))
    finally:
        watch.stop()
        watcher.join(timeout=5)
    elapsed = time.monotonic() - started

    for job, (status, document, headers) in zip(jobs, answers, strict=True):
        check_answer(job, status, document, headers)
    request_ids = {document["request_id"] for _, document, _ in answers}
    assert len(request_ids) == len(jobs), "every request has its own id"
    # Each work folder belonged to one request and never held more than its download.
    assert set(watch.seen) <= {temp_cleaner.folder_name(r) for r in request_ids}
    for names in watch.seen.values():
        assert len(names) <= 1 and all(n.startswith("download-") for n in names), names
    assert list(temp_root.iterdir()) == [], "the temp root must be empty afterwards"
    assert elapsed < 60


# The issue's figure: a page of thumbnails or a small load test opens this many at once.
SIMULTANEOUS_CONNECTIONS = 50


def test_local_api_accepts_50_connections_at_once(api: str) -> None:
    # Each connection must be answered, not reset because the listen backlog is full.
    barrier = threading.Barrier(SIMULTANEOUS_CONNECTIONS)

    def convert(_: int) -> int | str:
        barrier.wait(timeout=30)
        try:
            answer = requests.post(f"{api}/convert", json={"url": "no-scheme"}, timeout=30)
        except requests.RequestException as exc:
            return type(exc).__name__
        return answer.status_code

    for _round in range(3):
        with ThreadPoolExecutor(max_workers=SIMULTANEOUS_CONNECTIONS) as pool:
            outcomes = list(pool.map(convert, range(SIMULTANEOUS_CONNECTIONS)))
        assert outcomes == [400] * SIMULTANEOUS_CONNECTIONS, sorted(set(map(str, outcomes)))


def test_concurrent_requests_see_the_blocked_hosts_without_connecting(
    api: str, files: servers.HttpServer
) -> None:
    # The blocked jobs of the run above are refused before any connection; the guard
    # records every connection, so none may target 127.0.0.2 or the metadata address.
    urls = [f"http://127.0.0.2:{files.port}/x.dcm", "http://169.254.169.254/latest/meta-data/"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(
            pool.map(lambda u: requests.post(f"{api}/convert", json={"url": u}), urls * 4)
        )
    assert {a.status_code for a in answers} == {403}
    assert not [c for c in GUARD.connects if c.startswith(("127.0.0.2", "169.254"))]


# --------------------------------------------------------------------------- secrets in logs


@pytest.fixture(scope="module")
def r2_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.HttpServer]:
    """An S3-compatible endpoint on loopback standing in for R2 (signed with SigV4)."""
    server = servers.HttpServer(tmp_path_factory.mktemp("r2-stub"))
    yield server
    server.stop()


@pytest.fixture
def handler_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, r2_stub: servers.HttpServer
) -> Iterator[Path]:
    """Settings from the environment, as in Lambda, pointing at loopback servers."""
    root = tmp_path / "handler-temp"
    env = {
        "ALLOWED_HOSTS": "127.0.0.1:*",
        "TEMP_ROOT": str(root),
        "LOG_LEVEL": "DEBUG",
        "DOWNLOAD_RETRIES": "1",
        "CONNECT_TIMEOUT_SECONDS": "1",
        "READ_TIMEOUT_SECONDS": "2",
        "DOWNLOAD_DEADLINE_SECONDS": "3",
        "R2_ENDPOINT_URL": r2_stub.base_url,
        "R2_ACCESS_KEY_ID": R2_KEY_ID,
        "R2_SECRET_ACCESS_KEY": R2_SECRET,
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings_module.get_settings.cache_clear()
    yield root
    settings_module.get_settings.cache_clear()


def with_password(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://reader:{URL_PASSWORD}@{rest}"


def with_signature(url: str) -> str:
    return (
        f"{url}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101"
        f"&X-Amz-Signature={FAKE_SIGNATURE}&X-Amz-Security-Token={FAKE_TOKEN}"
    )


def secret_cases(
    files: servers.HttpServer, ftp_server: servers.FtpServer, marked_dicom: Path
) -> list[tuple[str, int]]:
    """URLs full of secrets, and the status each must get."""
    data = marked_dicom.read_bytes()
    files.put("secret/marked.dcm", marked_dicom)
    truncated = data[: len(data) - 3000]
    files.put("secret/truncated.dcm", truncated)
    files.route("secret/reset", servers.reset_after(data[:500], len(data)))
    files.route("secret/redirect", servers.redirect(with_signature("http://169.254.169.254/x")))
    ftp_url = ftp_server.put("secret/marked.dcm", marked_dicom)
    return [
        (with_password(files.url("secret/marked.dcm")), 200),
        (with_signature(files.url("secret/marked.dcm")), 200),
        (ftp_url, 200),
        (f"r2://r2-scans/{quote('studies/a b.dcm')}", 200),
        (ftp_server.url("secret/marked.dcm", password=URL_PASSWORD), 403),
        (with_password(files.url("secret/none.dcm")), 404),
        (with_signature(files.url("secret/none.dcm")), 404),
        (with_password(files.url("secret/truncated.dcm")), 422),
        (with_signature(files.url("secret/reset")), 502),
        (with_password(files.url("secret/redirect")), 403),
        (with_password("http://169.254.169.254/latest/meta-data/"), 403),
        (f"ftp://u:{URL_PASSWORD}@0x7f000001/a.dcm", 403),
        (f"gopher://u:{URL_PASSWORD}@127.0.0.1/", 400),
    ]


def collected_logs(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    records = []
    main_thread = threading.main_thread().ident
    for record in caplog.records:
        if record.name.startswith("pyftpdlib"):
            continue  # the test FTP server's own log
        if record.name.startswith("urllib3") and record.thread == main_thread:
            continue  # the test's own HTTP client, calling the local API with the secrets
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        records.append(text)
    return "\n".join([captured.out, captured.err, *records])


def assert_no_secret(text: str, secrets: set[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret[:6]}... appears in {where}"


def _r2_route(r2_stub: servers.HttpServer, marked_dicom: Path) -> None:
    r2_stub.route(
        "r2-scans/studies/a b.dcm",
        servers.sequence(servers.s3_error(503, "SlowDown"), servers.s3_object(marked_dicom)),
    )


def _signatures(r2_stub: servers.HttpServer) -> set[str]:
    return {
        match
        for request in r2_stub.requests
        for match in re.findall(
            r"Signature=([0-9a-f]{64})", request.headers.get("Authorization", "")
        )
    }


def test_no_secret_or_patient_name_in_handler_logs(
    handler_env: Path,
    files: servers.HttpServer,
    ftp_server: servers.FtpServer,
    r2_stub: servers.HttpServer,
    marked_dicom: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "botocore", "boto3", "file_downloader", "dicom_converter", "pydicom"):
        caplog.set_level(logging.DEBUG, logger=name)
    _r2_route(r2_stub, marked_dicom)
    answers: list[str] = []
    for url, status in secret_cases(files, ftp_server, marked_dicom):
        for name in ("rest_convert_post", "http_convert_get", "direct_convert"):
            event = with_fields(with_url(load_event(name), url), output_format="png")
            result = lambda_function.lambda_handler(event, LambdaContext())
            got = result["statusCode"] if "statusCode" in result else _direct_status(result)
            assert got == status, (url[:40], name, result.get("body", result))
            answers.append(json.dumps(result))
        if url.startswith("r2://"):
            _r2_route(r2_stub, marked_dicom)
    logged = collected_logs(caplog, capsys)
    assert '"message":"request"' in logged, "the handler's request lines were captured"
    secrets = SECRETS | _signatures(r2_stub) | {PATIENT_MARKER}
    assert_no_secret(logged, secrets, "the logs")
    for answer in answers:
        # A successful answer returns the file's own metadata (PatientName included);
        # credentials and signatures never come back.
        is_error = '"success": false' in answer or 'success\\": false' in answer
        assert_no_secret(answer, secrets if is_error else SECRETS, "an answer")
    assert not list(handler_env.glob("*/*")), "no work folder is left behind"


def _direct_status(result: dict[str, Any]) -> int:
    if result.get("success"):
        return 200
    return int(result["error"]["status"])


def test_no_secret_or_patient_name_in_local_api_logs(
    api_settings: Settings,
    files: servers.HttpServer,
    ftp_server: servers.FtpServer,
    r2_stub: servers.HttpServer,
    marked_dicom: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "botocore", "boto3", "file_downloader", "dicom_converter", "pydicom"):
        caplog.set_level(logging.DEBUG, logger=name)
    settings = load_settings(
        {
            "temp_root": api_settings.temp_root,
            "allowed_hosts": "127.0.0.1:*",
            "log_level": "DEBUG",
            "download_retries": 1,
            "download_deadline_seconds": 3,
            "r2_endpoint_url": r2_stub.base_url,
            "r2_access_key_id": R2_KEY_ID,
            "r2_secret_access_key": R2_SECRET,
        },
        environ={},
    )
    _r2_route(r2_stub, marked_dicom)
    server = start_api(functools.partial(lambda_function.handle, settings=settings), "http")
    answers = []
    try:
        for url, status in secret_cases(files, ftp_server, marked_dicom):
            post = requests.post(f"{server.url}/convert", json={"url": url}, timeout=30)
            get = requests.get(f"{server.url}/convert", params={"url": url}, timeout=30)
            assert post.status_code == get.status_code == status, (url[:40], post.text[:200])
            answers += [post, get]
            if url.startswith("r2://"):
                _r2_route(r2_stub, marked_dicom)
    finally:
        server.shutdown()
        server.server_close()
    logged = collected_logs(caplog, capsys)
    assert "POST /convert" in logged and '"message":"request"' in logged
    secrets = SECRETS | _signatures(r2_stub) | {PATIENT_MARKER}
    assert_no_secret(logged, secrets, "the logs")
    for answer in answers:
        assert_no_secret(
            answer.text, secrets if answer.status_code >= 400 else SECRETS, "an answer"
        )


# --------------------------------------------------------------------------- schemathesis

schema = schemathesis.openapi.from_path(PROJECT / "openapi.yaml")
schema.config.generation.update(modes=[GenerationMode.NEGATIVE])
# GET /health and the OPTIONS operations take no input: there is nothing to make
# invalid, so they are covered by test_health_refuses_other_methods_and_ignores_junk.
OPERATIONS = schema.include(path_regex=r"^/convert$", method=["GET", "POST"])
# Schemathesis' checks for invalid input. positive_data_acceptance is left out: the
# schema cannot say that a LINEAR window needs a width of at least 1, or that
# response=url needs OUTPUT_BUCKET, so some schema-valid requests rightly get a 400.
NEGATIVE_CHECKS = [
    not_a_server_error,
    negative_data_rejection,
    unsupported_method,
    allow_header_conformance,
    missing_required_header,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def _could_name_a_host(value: Any) -> bool:
    # Only a URL that is itself valid (a string of allowed length) is replaced, so a
    # case whose invalid part is the URL stays invalid.
    return isinstance(value, str) and 1 <= len(value) <= 8192 and (":" in value or "\\" in value)


def keep_on_loopback(case: Any, sample_url: str) -> None:
    """Generated URLs that could name a host become the loopback sample."""
    for fields in (case.body, case.query):
        if not isinstance(fields, dict):
            continue
        if _could_name_a_host(fields.get("url")):
            fields["url"] = sample_url
        if isinstance(fields.get("urls"), list):
            fields["urls"] = [sample_url if _could_name_a_host(u) else u for u in fields["urls"]]


@pytest.fixture(scope="module")
def sample_url(files: servers.HttpServer, good_files: list[GoodFile]) -> str:
    return files.url(good_files[0].name)


@OPERATIONS.parametrize()
@hypothesis_settings(
    max_examples=NEGATIVE_EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=list(HealthCheck),
)
def test_negative_requests_are_refused_cleanly(case: Any, api: str, sample_url: str) -> None:
    keep_on_loopback(case, sample_url)
    case.call_and_validate(base_url=api, timeout=30, checks=NEGATIVE_CHECKS)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE", "PROPFIND"])
def test_health_refuses_other_methods_and_ignores_junk(api: str, method: str) -> None:
    # GET /health takes no input, so schemathesis has no negative case to make for it.
    answer = requests.request(
        method, f"{api}/health?x=%00%ff&url=file:///etc/passwd", data=b"\x00{[", timeout=30
    )
    assert answer.status_code == 405 and "GET" in answer.headers["Allow"]
    assert answer.json()["error"]["code"] == "method_not_allowed"
    junk = requests.get(f"{api}/health?x=%00%ff", headers={"Accept": "text/html"}, timeout=30)
    assert junk.status_code == 200


def test_state_after_fuzzing_is_clean(api: str, sample_url: str, temp_root: Path) -> None:
    # openapi.yaml declares no links, so schemathesis has no stateful sequences to run;
    # what sequences would show, that no call leaves state that breaks the next one,
    # is checked after all the calls above instead.
    assert requests.get(f"{api}/health", timeout=30).status_code == 200
    answer = requests.post(f"{api}/convert", json={"url": sample_url, "width": 33}, timeout=30)
    assert answer.status_code == 200 and answer.json()["data"]["width"] == 33
    assert not temp_root.exists() or list(temp_root.iterdir()) == []
