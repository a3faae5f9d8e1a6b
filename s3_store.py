"""The one S3 boundary of the service: clients, reads, writes, links and their errors.

Every call to S3 (or to an S3-compatible store such as Cloudflare R2) goes through
here, so that:

* boto3 clients are built once per endpoint, region, credentials and timeouts, under
  one lock (creating clients is not thread-safe, and batch work runs on threads);
* botocore's errors become ``errors`` types in one place, ``translate``. The same
  answer means the same thing everywhere: AccessDenied on a *source* is the caller's
  problem (403 Forbidden); on the function's *own output* it is the operator's
  (500 ConfigurationError naming OUTPUT_BUCKET).

boto3 and botocore are imported on first use, never at import, so a request that
does not touch S3 does not pay for them at cold start.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from errors import (
    ConfigurationError,
    Forbidden,
    InvalidUrl,
    NotFound,
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
)

T = TypeVar("T")

CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class S3Config:
    """How to reach S3: the endpoint (S3_ENDPOINT_URL), timeouts and botocore's retries."""

    endpoint_url: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    # Attempts after the first that botocore makes itself; 0 leaves retries to the caller.
    retries: int = 2


# --------------------------------------------------------------------------- clients

_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def client(
    config: S3Config,
    region: str | None = None,
    endpoint_url: str | None = None,
    credentials: tuple[str, str] | None = None,
) -> Any:
    """A cached S3 client; built once per endpoint, region, credentials and config.

    ``endpoint_url`` overrides ``config.endpoint_url`` (an R2 account endpoint);
    ``credentials`` (key id, secret) replace the function's own (its role).
    """
    key = (endpoint_url or config.endpoint_url, region, credentials, config)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client(*key)
        return _clients[key]


def _new_client(
    endpoint_url: str | None,
    region: str | None,
    credentials: tuple[str, str] | None,
    config: S3Config,
) -> Any:
    import boto3
    from botocore.config import Config

    if credentials:
        session = boto3.session.Session(
            aws_access_key_id=credentials[0], aws_secret_access_key=credentials[1]
        )
    else:
        session = boto3.session.Session()
    options = Config(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"mode": "standard", "total_max_attempts": config.retries + 1},
        signature_version="s3v4",
        # Path style keeps dotted bucket names valid under TLS and suits S3-compatible
        # stores (MinIO, moto, LocalStack), which rarely resolve bucket subdomains.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
    )
    return session.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=region or session.region_name or "us-east-1",
        config=options,
    )


# --------------------------------------------------------------------------- errors

_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"}
_DENIED_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "AccountProblem",
    "403",
}
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
}
# The output bucket itself is wrong: only the operator can fix these.
_OUTPUT_SETUP_CODES = {"NoSuchBucket", "InvalidBucketName"}

# What went wrong, independent of who asked (see ``failure_kind``).
NOT_FOUND = "not_found"
DENIED = "denied"
THROTTLED = "throttled"
BAD_REQUEST = "bad_request"
NO_CREDENTIALS = "no_credentials"
CONNECT_TIMEOUT = "connect_timeout"
READ_TIMEOUT = "read_timeout"
INVALID_NAME = "invalid_name"
BROKEN = "broken"
FAILED = "failed"
# Failures that another attempt may not meet.
TRANSIENT = frozenset({THROTTLED, BROKEN})


_ERROR_CODE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9.]{0,63}$")


def error_types() -> tuple[type[Exception], ...]:
    """The exception types of botocore (and urllib3 below it) that ``translate`` knows."""
    from botocore.exceptions import BotoCoreError, ClientError
    from urllib3.exceptions import ProtocolError

    return (ClientError, BotoCoreError, ProtocolError)


def _code_and_status(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    try:
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    except (TypeError, ValueError):
        status = 0
    # The code is the store's word; an S3-compatible store could put any text there,
    # so only a code shaped like S3's (NoSuchKey, SlowDown) is repeated in a message.
    return (code if _ERROR_CODE_RE.match(code) else ""), status


def failure_kind(exc: BaseException | None) -> str | None:
    """The kind of an S3 failure (``NOT_FOUND``, ``THROTTLED`` ...), None if not one."""
    if exc is None:
        return None
    from botocore import exceptions as boto
    from urllib3.exceptions import ProtocolError

    if isinstance(exc, boto.ClientError):
        code, status = _code_and_status(exc)
        if code in _NOT_FOUND_CODES or status == 404:
            return NOT_FOUND
        if code in _DENIED_CODES or status in (401, 403):
            return DENIED
        if code in _THROTTLE_CODES or status == 429 or status >= 500:
            return THROTTLED
        return BAD_REQUEST if status == 400 else FAILED
    simple: tuple[tuple[Any, str], ...] = (
        ((boto.NoCredentialsError, boto.PartialCredentialsError), NO_CREDENTIALS),
        (boto.ConnectTimeoutError, CONNECT_TIMEOUT),
        (boto.ReadTimeoutError, READ_TIMEOUT),
        (boto.ParamValidationError, INVALID_NAME),
        (
            (
                boto.EndpointConnectionError,
                boto.ConnectionClosedError,
                boto.IncompleteReadError,
                boto.ResponseStreamingError,
                ProtocolError,
            ),
            BROKEN,
        ),
        ((boto.BotoCoreError,), FAILED),
    )
    return next((kind for types, kind in simple if isinstance(exc, types)), None)


def translate(exc: Exception, what: str, output: bool = False, store: str = "S3") -> ServiceError:
    """The service error for a failed S3 call on ``what`` (an object, ``s3://bucket/key``).

    ``output`` says the object is the function's own output: a refusal there is a
    deployment problem (ConfigurationError naming OUTPUT_BUCKET), not the caller's.
    ``store`` names the store in messages ("S3" or "R2").
    """
    kind = failure_kind(exc) or FAILED
    code, status = _code_and_status(exc)
    answer = code or str(status)
    if output and (kind == DENIED or code in _OUTPUT_SETUP_CODES):
        return ConfigurationError(
            f"the output bucket (OUTPUT_BUCKET) refused access to {what} ({answer}): it must "
            "exist, and the function's role must be allowed to write OUTPUT_BUCKET (or the "
            "watched bucket) under OUTPUT_PREFIX"
        )
    if kind == NOT_FOUND:
        return NotFound(f"{store} has no object {what} ({answer})")
    if kind == DENIED:
        who = "R2 keys" if store == "R2" else "role"
        return Forbidden(
            f"{store} refused access to {what} ({answer}); the function's {who} may not read it"
        )
    if kind == BAD_REQUEST and not output:
        return InvalidUrl(f"{store} rejected the request for {what} ({code})")
    if kind in (THROTTLED, BAD_REQUEST) or (kind == FAILED and (code or status)):
        if output:
            return UpstreamError(
                f"{store} could not store {what} ({answer}, HTTP {status}); try again"
            )
        return UpstreamError(f"{store} failed to serve {what} ({answer})")
    return _library_error(exc, kind, what, output, store)


def _library_error(exc: Exception, kind: str, what: str, output: bool, store: str) -> ServiceError:
    """Failures botocore raises before, or instead of, an answer from the store."""
    verb = "writing" if output else "reading"
    if kind == NO_CREDENTIALS:
        access = "write" if output else "read"
        return ConfigurationError(f"no AWS credentials are available to {access} {store}")
    if kind in (CONNECT_TIMEOUT, READ_TIMEOUT):
        return UpstreamTimeout(f"{store} did not answer in time while {verb} {what}")
    if kind == INVALID_NAME:
        return InvalidUrl(f"{what} is not a valid {store} object name")
    if kind == BROKEN:
        again = "; try again" if output else ""
        return UpstreamError(f"the connection to {store} broke while {verb} {what}{again}")
    return UpstreamError(f"{verb} {what} from {store} failed ({type(exc).__name__})")


def _call(action: Callable[[], T], what: str, output: bool) -> T:
    """Run one S3 call; what it raises becomes a ``ServiceError`` (cause kept)."""
    try:
        return action()
    except error_types() as exc:
        raise translate(exc, what, output) from exc


# --------------------------------------------------------------------------- operations


class Sink(Protocol):
    """Where ``get_object`` streams a body: counts bytes and enforces limits."""

    size: int

    def expect(self, length: int | None) -> None: ...

    def write(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class ObjectRef:
    """An object to read: bucket, key and optional version."""

    bucket: str
    key: str
    version_id: str | None = None
    # How messages name the store ("S3" or "R2").
    store: str = "S3"

    def params(self) -> dict[str, str]:
        params = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id:
            params["VersionId"] = self.version_id
        return params

    def __str__(self) -> str:
        version = f"?versionId={self.version_id}" if self.version_id else ""
        return f"{self.store.lower()}://{self.bucket}/{self.key}{version}"


def get_object(
    s3: Any, ref: ObjectRef, sink: Sink, read_timeout: Callable[[], float] | None = None
) -> dict[str, Any]:
    """Stream one object (a whole-object GetObject) into ``sink``; returns the answer's
    other fields (ETag, VersionId, ContentLength ...).

    ``read_timeout`` gives the socket timeout for the next read, so no read outlasts
    the caller's deadline. Raises ``ServiceError`` types; the botocore exception, when
    there is one, is the ``__cause__`` (see ``failure_kind``).
    """
    try:
        response = s3.get_object(**ref.params())
        with closing(response["Body"]) as body:
            length = response.get("ContentLength")
            sink.expect(length)
            while length is None or sink.size < length:
                if length is not None and read_timeout is not None:
                    # Only while bytes are due: http.client drops the socket once the
                    # body is complete.
                    body.set_socket_timeout(read_timeout())
                data = body.read(CHUNK_BYTES)
                if not data:
                    break
                sink.write(data)
    except error_types() as exc:
        raise translate(exc, str(ref), store=ref.store) from exc
    return {name: value for name, value in response.items() if name != "Body"}


def put_image(
    config: S3Config,
    bucket: str,
    key: str,
    body: bytes,
    content_type: str,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write one rendered image to the function's own output (OUTPUT_BUCKET or the
    watched bucket); a refusal is a ConfigurationError."""
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "Body": body}
    params["ContentType"] = content_type
    if metadata:
        params["Metadata"] = metadata
    s3 = client(config)
    _call(lambda: s3.put_object(**params), f"s3://{bucket}/{key}", output=True)


def head(
    config: S3Config, bucket: str, key: str, version_id: str | None = None
) -> dict[str, Any] | None:
    """The HEAD answer of one of the function's outputs, or None when it is not there.

    Without s3:ListBucket, S3 answers 403 rather than 404 for a missing key, so both
    mean "not there". Other failures are translated as output errors.
    """
    ref = ObjectRef(bucket, key, version_id)
    s3 = client(config)
    try:
        return dict(_call(lambda: s3.head_object(**ref.params()), str(ref), output=True))
    except (NotFound, ConfigurationError) as exc:
        if failure_kind(exc.__cause__) in (NOT_FOUND, DENIED):
            return None
        raise


def head_source(
    config: S3Config, bucket: str, key: str, version_id: str | None = None
) -> dict[str, Any]:
    """The HEAD answer of a source object; 403 and 404 raise Forbidden and NotFound."""
    ref = ObjectRef(bucket, key, version_id)
    s3 = client(config)
    return dict(_call(lambda: s3.head_object(**ref.params()), str(ref), output=False))


def presign_get(config: S3Config, bucket: str, key: str, expires_in: int) -> str:
    """A presigned GET link to one of the function's outputs, valid ``expires_in`` seconds."""
    s3 = client(config)
    params = {"Bucket": bucket, "Key": key}
    return str(
        _call(
            lambda: s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in),
            f"s3://{bucket}/{key}",
            output=True,
        )
    )
