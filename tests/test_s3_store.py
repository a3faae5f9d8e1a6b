"""s3_store, the one S3 boundary: against moto on loopback (S3, and R2 with its own keys).

What must hold: one client per endpoint, region, credentials and config, however
many threads ask at once; and one translation of botocore's errors, in which a
refusal means the caller's 403 when the function reads a source, and the
operator's 500 (naming OUTPUT_BUCKET) when it writes its own output.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

import s3_store
from errors import (
    ConfigurationError,
    Forbidden,
    InvalidUrl,
    NotFound,
    ServiceError,
    TooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from tests import servers
from tests.corpus import PROJECT

BUCKET = "store-tests"


def client_error(code: str, status: int, operation: str = "GetObject") -> ClientError:
    """The exception botocore raises for an S3 error answer (a value, nothing is sent)."""
    answer: Any = {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {}}
    answer["ResponseMetadata"]["HTTPStatusCode"] = status
    return ClientError(answer, operation)


@pytest.fixture
def config(moto_s3: servers.MotoServer) -> s3_store.S3Config:
    return s3_store.S3Config(endpoint_url=moto_s3.endpoint_url, retries=0)


@pytest.fixture
def refusing(moto_r2: servers.MotoServer) -> s3_store.S3Config:
    """A store that refuses the function's own (role) credentials: every call is 403."""
    return s3_store.S3Config(endpoint_url=moto_r2.endpoint_url, retries=0)


# --------------------------------------------------------------------------- translation

# (code, HTTP status): (source error, output error)
TABLE: list[tuple[str, int, type[ServiceError], type[ServiceError]]] = [
    ("AccessDenied", 403, Forbidden, ConfigurationError),
    ("AllAccessDisabled", 403, Forbidden, ConfigurationError),
    ("InvalidAccessKeyId", 403, Forbidden, ConfigurationError),
    ("SignatureDoesNotMatch", 403, Forbidden, ConfigurationError),
    ("ExpiredToken", 400, Forbidden, ConfigurationError),
    ("403", 403, Forbidden, ConfigurationError),
    ("NoSuchBucket", 404, NotFound, ConfigurationError),
    ("InvalidBucketName", 400, InvalidUrl, ConfigurationError),
    ("NoSuchKey", 404, NotFound, NotFound),
    ("NoSuchVersion", 404, NotFound, NotFound),
    ("SlowDown", 503, UpstreamError, UpstreamError),
    ("InternalError", 500, UpstreamError, UpstreamError),
    ("TooManyRequests", 429, UpstreamError, UpstreamError),
    ("InvalidArgument", 400, InvalidUrl, UpstreamError),
    ("PreconditionFailed", 412, UpstreamError, UpstreamError),
]


@pytest.mark.parametrize(("code", "status", "source", "output"), TABLE)
def test_one_translation_for_every_caller(
    code: str, status: int, source: type[ServiceError], output: type[ServiceError]
) -> None:
    exc = client_error(code, status)
    read = s3_store.translate(exc, "s3://scans/a.dcm")
    written = s3_store.translate(exc, "s3://out/a.jpg", output=True)
    assert type(read) is source and type(written) is output
    assert code in read.message and code in written.message
    if output is ConfigurationError:
        assert written.status == 500 and "OUTPUT_BUCKET" in written.message
    if source is Forbidden:
        assert read.status == 403 and "role may not read it" in read.message


def test_access_denied_means_the_same_everywhere() -> None:
    denied = client_error("AccessDenied", 403)
    reads = {type(s3_store.translate(denied, f"s3://b/{n}")) for n in ("a", "b")}
    writes = {type(s3_store.translate(denied, "s3://o/x", output=True)) for _ in range(2)}
    assert reads == {Forbidden} and writes == {ConfigurationError}
    r2 = s3_store.translate(denied, "r2://b/a", store="R2")
    assert r2.message.startswith("R2 refused access") and "R2 keys" in r2.message


@pytest.mark.parametrize(
    ("exc", "kind", "error"),
    [
        (NoCredentialsError(), s3_store.NO_CREDENTIALS, ConfigurationError),
        (ConnectTimeoutError(endpoint_url="http://x"), s3_store.CONNECT_TIMEOUT, UpstreamTimeout),
        (ReadTimeoutError(endpoint_url="http://x"), s3_store.READ_TIMEOUT, UpstreamTimeout),
        (ParamValidationError(report="bad"), s3_store.INVALID_NAME, InvalidUrl),
        (EndpointConnectionError(endpoint_url="http://x"), s3_store.BROKEN, UpstreamError),
    ],
)
def test_library_failures(exc: Exception, kind: str, error: type[ServiceError]) -> None:
    assert s3_store.failure_kind(exc) == kind
    assert type(s3_store.translate(exc, "s3://b/k")) is error
    assert (kind in s3_store.TRANSIENT) is (kind == s3_store.BROKEN)


def test_failure_kind_of_other_exceptions_is_none() -> None:
    assert s3_store.failure_kind(None) is None
    assert s3_store.failure_kind(OSError("disk")) is None
    assert s3_store.failure_kind(client_error("SlowDown", 503)) == s3_store.THROTTLED


# --------------------------------------------------------------------------- clients


def test_one_client_per_endpoint_region_credentials_and_config(
    config: s3_store.S3Config,
) -> None:
    first = s3_store.client(config)
    assert s3_store.client(config) is first
    assert s3_store.client(s3_store.S3Config(endpoint_url=config.endpoint_url, retries=0)) is first
    assert s3_store.client(config, region="eu-west-1") is not first
    assert s3_store.client(config, credentials=("id", "secret")) is not first
    assert s3_store.client(s3_store.S3Config(config.endpoint_url, read_timeout=1)) is not first
    other = s3_store.client(config, endpoint_url="http://127.0.0.1:9")
    assert other.meta.endpoint_url == "http://127.0.0.1:9"


def test_concurrent_callers_share_one_client() -> None:
    config = s3_store.S3Config(endpoint_url="http://127.0.0.1:7", read_timeout=7.5)
    barrier = threading.Barrier(8)
    found: list[Any] = []

    def ask() -> None:
        barrier.wait()
        found.append(s3_store.client(config, region="ap-south-1"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len({id(c) for c in found}) == 1


def test_importing_the_store_does_not_import_boto3() -> None:
    script = "import sys, s3_store; print(sorted(m for m in sys.modules if 'boto' in m))"
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- output


def test_put_image_head_and_presign(moto_s3: servers.MotoServer, config: s3_store.S3Config) -> None:
    moto_s3.create_bucket(BUCKET)
    meta = {"source-etag": "abc", "frame": "1"}
    s3_store.put_image(config, BUCKET, "out/a.jpg", b"\xff\xd8jpeg", "image/jpeg", meta)
    head = s3_store.head(config, BUCKET, "out/a.jpg")
    assert head is not None
    assert head["Metadata"] == meta and head["ContentType"] == "image/jpeg"
    link = s3_store.presign_get(config, BUCKET, "out/a.jpg", 60)
    assert "X-Amz-Signature=" in link and "Expires=60" in link
    answer = requests.get(link, timeout=10)
    assert answer.status_code == 200 and answer.content == b"\xff\xd8jpeg"


def test_head_of_a_missing_output_is_none(
    moto_s3: servers.MotoServer, config: s3_store.S3Config, refusing: s3_store.S3Config
) -> None:
    moto_s3.create_bucket(BUCKET)
    assert s3_store.head(config, BUCKET, "out/none.jpg") is None
    assert s3_store.head(config, "no-such-bucket-here", "a.jpg") is None
    # Without s3:ListBucket S3 answers 403 for a missing key: also "not there".
    assert s3_store.head(refusing, BUCKET, "out/a.jpg") is None


def test_writing_to_a_missing_or_refusing_output_bucket_is_a_configuration_error(
    config: s3_store.S3Config, refusing: s3_store.S3Config
) -> None:
    for target in (config, refusing):
        with pytest.raises(ConfigurationError) as caught:
            s3_store.put_image(target, "no-such-output", "a.jpg", b"x", "image/jpeg")
        assert caught.value.status == 500 and "OUTPUT_BUCKET" in caught.value.message
        assert isinstance(caught.value.__cause__, ClientError)


def test_head_of_a_source_raises(
    moto_s3: servers.MotoServer, config: s3_store.S3Config, refusing: s3_store.S3Config
) -> None:
    version = moto_s3.put_object(BUCKET, "in/a.dcm", b"DICM")
    head = s3_store.head_source(config, BUCKET, "in/a.dcm", version)
    assert head["ContentLength"] == 4 and head["ETag"]
    with pytest.raises(NotFound):
        s3_store.head_source(config, BUCKET, "in/none.dcm")
    with pytest.raises(Forbidden) as caught:
        s3_store.head_source(refusing, BUCKET, "in/a.dcm")
    assert caught.value.status == 403


# --------------------------------------------------------------------------- reads


class ListSink:
    """A sink with a cap, as the downloader's is."""

    def __init__(self, cap: int = 1 << 20) -> None:
        self.size = 0
        self.pieces: list[bytes] = []
        self.cap = cap

    def expect(self, length: int | None) -> None:
        if length is not None and length > self.cap:
            raise TooLarge(f"{length} bytes")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        self.pieces.append(data)


def test_get_object_streams_the_whole_object(
    moto_s3: servers.MotoServer, config: s3_store.S3Config, sample_dicom: Path
) -> None:
    moto_s3.put_object(BUCKET, "in/ct.dcm", sample_dicom)
    sink = ListSink()
    timeouts: list[float] = []

    def read_timeout() -> float:
        timeouts.append(5.0)
        return 5.0

    ref = s3_store.ObjectRef(BUCKET, "in/ct.dcm")
    s3_store.get_object(s3_store.client(config), ref, sink, read_timeout)
    assert b"".join(sink.pieces) == sample_dicom.read_bytes()
    assert timeouts, "every read is bounded by the caller's timeout"
    with pytest.raises(TooLarge):
        s3_store.get_object(s3_store.client(config), ref, ListSink(cap=100))


def test_get_object_errors_keep_their_cause(
    config: s3_store.S3Config, refusing: s3_store.S3Config
) -> None:
    ref = s3_store.ObjectRef(BUCKET, "in/none.dcm", "v1", store="S3")
    with pytest.raises(NotFound) as caught:
        s3_store.get_object(s3_store.client(config), ref, ListSink())
    assert str(ref) == "s3://store-tests/in/none.dcm?versionId=v1"
    assert s3_store.failure_kind(caught.value.__cause__) == s3_store.NOT_FOUND
    with pytest.raises(Forbidden) as denied:
        s3_store.get_object(s3_store.client(refusing), ref, ListSink())
    assert s3_store.failure_kind(denied.value.__cause__) == s3_store.DENIED
