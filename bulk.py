"""Bulk conversion: S3 uploads converted as they arrive, and batch requests.

Lambda's own fan-out is what scales this: S3 (directly, through SQS or through
EventBridge) invokes the function for new objects, as many times in parallel as
uploads arrive. Within one invocation this module bounds the work:

* ``convert_objects`` takes the objects named by a notification. Each one is
  filtered (WATCH_BUCKET, WATCH_PREFIX, WATCH_SUFFIXES, never the function's own
  outputs), skipped when an output with the same source ETag already exists (a
  redelivered event does no work), downloaded, rendered with the TRIGGER_*
  options, and written under OUTPUT_PREFIX in OUTPUT_BUCKET or the same bucket.
* ``run_all`` runs jobs on at most BATCH_WORKERS threads and stops waiting at the
  invocation's deadline; ``lambda_function`` uses it for ``POST /convert`` with
  ``urls``, and ``render_url`` is one such job's work.

This module knows neither event shapes nor HTTP: ``lambda_function`` turns events
into ``S3Object`` values and outcomes into answers. numpy, pydicom and boto3 are
imported only when an object is actually converted.
"""

from __future__ import annotations

import contextvars
import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import temp_cleaner
from errors import (
    ConfigurationError,
    Forbidden,
    NoPixelData,
    NotDicom,
    NotFound,
    ServiceError,
    UpstreamError,
    UpstreamTimeout,
)
from settings import Settings, output_extension

if TYPE_CHECKING:
    from dicom_converter import RenderOptions, RenderResult

logger = logging.getLogger("dicom_lambda.bulk")

T = TypeVar("T")

# The invocation answers this long before Lambda would stop it.
ANSWER_RESERVE_SECONDS = 1.0
# Downloads end this long before the answer is due, leaving time to render and write.
RENDER_RESERVE_SECONDS = 4.0
# A job that would have less download time than this is not started.
MIN_START_SECONDS = 1.0

# Files that are not images count as skipped, not failed: a study folder holds
# reports and other non-image objects beside its images.
SKIPPED_ERRORS = (NotDicom, NoPixelData)
# Metadata keys on every output object (S3 lower-cases them; x-amz-meta- on the wire).
META_SOURCE_BUCKET = "source-bucket"
META_SOURCE_KEY = "source-key"
META_SOURCE_ETAG = "source-etag"
# An extension is a last suffix with a letter in it; ".113619" of a UID is not one.
_EXTENSION = re.compile(r"\.[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*$")


class NotReached(ServiceError):
    """The invocation's deadline came before this item was done."""

    status = 503
    code = "not_reached"


# --------------------------------------------------------------------------- time


@dataclass(frozen=True)
class Deadline:
    """When the invocation must answer, as a ``time.monotonic()`` value; None: no limit."""

    end: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        """The deadline of an invocation with ``seconds`` left (None outside Lambda)."""
        if seconds is None:
            return cls(None)
        return cls(time.monotonic() + seconds - ANSWER_RESERVE_SECONDS)

    def remaining(self) -> float:
        return math.inf if self.end is None else self.end - time.monotonic()

    def download_settings(self, settings: Settings) -> Settings:
        """``settings`` with a download deadline that leaves time to render and answer.

        Raises ``NotReached`` when too little time is left to start.
        """
        budget = self.remaining() - RENDER_RESERVE_SECONDS
        if budget < MIN_START_SECONDS:
            raise NotReached("not started: too little of the invocation's time was left; try again")
        if budget >= settings.download_deadline_seconds:
            return settings
        return replace(settings, download_deadline_seconds=budget)


def run_all(
    jobs: Sequence[Callable[[], T]], workers: int, deadline: Deadline
) -> list[T | Exception | None]:
    """Run ``jobs`` on at most ``workers`` threads, each result in the jobs' order.

    A job that raised gives its exception; one not finished by the deadline gives
    None. Jobs still running then are left to end on their own (their downloads
    have deadlines of their own); jobs not started are cancelled.
    """
    if not jobs:
        return []
    results: list[T | Exception | None] = [None] * len(jobs)
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs))))
    # Each job runs in a copy of this context, so its log lines keep the request id.
    futures = {
        pool.submit(contextvars.copy_context().run, _capture, job): index
        for index, job in enumerate(jobs)
    }
    timeout = None if deadline.end is None else max(deadline.remaining(), 0.0)
    done, _ = wait(futures, timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)
    for future in done:
        results[futures[future]] = future.result()
    return results


def _capture(job: Callable[[], T]) -> T | Exception:
    try:
        return job()
    except Exception as exc:  # each job answers for itself; the caller maps the error
        return exc


def render_url(
    url: str, storage_type: str, options: RenderOptions, settings: Settings, work_id: str
) -> RenderResult:
    """Fetch ``url`` into a work folder of its own and render it."""
    import dicom_converter
    import file_downloader

    with temp_cleaner.workdir(work_id, settings) as folder:
        path = file_downloader.fetch(url, folder, storage_type, settings)
        return dicom_converter.render(path, options, settings)


# --------------------------------------------------------------------------- S3 triggers


@dataclass(frozen=True)
class S3Object:
    """One object named by an S3 notification; ``key`` is decoded, ``etag`` unquoted."""

    bucket: str
    key: str
    etag: str | None = None
    version_id: str | None = None
    created: bool = True  # an ObjectCreated event; other events are skipped


@dataclass(frozen=True)
class Outcome:
    """What became of one object: converted, skipped (and why) or failed (and how)."""

    object: S3Object
    status: str  # "converted" | "skipped" | "failed"
    reason: str = ""  # why it was skipped, or the error code of a failure
    message: str = ""
    outputs: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status == "failed"

    def describe(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "bucket": self.object.bucket,
            "key": self.object.key,
            "status": self.status,
        }
        if self.reason:
            document["reason"] = self.reason
        if self.message:
            document["message"] = self.message
        if self.outputs:
            document["outputs"] = list(self.outputs)
        return document


def convert_objects(
    objects: Sequence[S3Object],
    settings: Settings,
    deadline: Deadline,
    client: Callable[[], Any],
) -> list[Outcome]:
    """Convert each object that counts, on at most BATCH_WORKERS threads.

    ``client`` builds the S3 client for reading ETags and writing outputs; it is
    called once, here, because building boto3 clients is not thread-safe.
    """
    skips = [skip_reason(o, settings) for o in objects]
    todo = [i for i, skip in enumerate(skips) if skip is None]
    s3 = client() if todo else None
    jobs = [partial(convert_object, objects[i], settings, deadline, s3) for i in todo]
    results = dict(zip(todo, run_all(jobs, settings.batch_workers, deadline), strict=True))
    outcomes = []
    for index, (obj, skip) in enumerate(zip(objects, skips, strict=True)):
        if skip is not None:
            outcome = Outcome(obj, "skipped", *skip)
        else:
            outcome = _as_outcome(obj, results[index])
        _log(outcome)
        outcomes.append(outcome)
    return outcomes


def skip_reason(obj: S3Object, settings: Settings) -> tuple[str, str] | None:
    """Why the object does not count (a stable reason and a sentence), or None."""
    if not obj.created:
        return "not_object_created", "not an ObjectCreated event"
    if settings.watch_bucket is None:
        return "bucket_not_watched", "WATCH_BUCKET is not set, so no bucket is watched"
    if obj.bucket != settings.watch_bucket:
        return "bucket_not_watched", f"the bucket is not WATCH_BUCKET ({settings.watch_bucket})"
    if is_own_output(obj, settings):
        return "own_output", "the key is under OUTPUT_PREFIX: one of the function's own images"
    if not obj.key.startswith(settings.watch_prefix) or (
        settings.watch_suffixes and not any(obj.key.endswith(s) for s in settings.watch_suffixes)
    ):
        return "filtered", "the key does not match WATCH_PREFIX and WATCH_SUFFIXES"
    return None


def is_own_output(obj: S3Object, settings: Settings) -> bool:
    """Whether the object lies where this function writes its images.

    Settings validation already refuses filters that outputs could match; this is
    the second guard, and the outputs (images, never DICOM) the third.
    """
    same_bucket = (settings.output_bucket or obj.bucket) == obj.bucket
    prefix = settings.output_prefix
    return same_bucket and bool(prefix) and obj.key.startswith(prefix)


def _as_outcome(obj: S3Object, result: Outcome | Exception | None) -> Outcome:
    if isinstance(result, Outcome):
        return result
    if result is None:
        error: Exception = NotReached("not done before the invocation's deadline")
    else:
        error = result
    if isinstance(error, SKIPPED_ERRORS):
        return Outcome(obj, "skipped", error.code, error.message)
    if isinstance(error, ServiceError):
        return Outcome(obj, "failed", error.code, error.message)
    logger.error("unexpected error", exc_info=error, extra={"fields": {"key": obj.key}})
    return Outcome(obj, "failed", "internal_error", "unexpected error; see the log")


def _log(outcome: Outcome) -> None:
    level = logging.WARNING if outcome.failed else logging.INFO
    fields = outcome.describe()
    # "message" is the log line's own field: the status.
    fields["detail"] = fields.pop("message", "")
    logger.log(level, outcome.status, extra={"fields": fields})


def convert_object(obj: S3Object, settings: Settings, deadline: Deadline, s3: Any) -> Outcome:
    """Convert one object that counts; raises ``ServiceError`` when it cannot."""
    etag = obj.etag or _source_etag(s3, obj)
    bucket = settings.output_bucket or obj.bucket
    base = output_base(obj.key, settings)
    extension = output_extension(settings)
    candidates = [f"{base}{extension}"]
    if settings.trigger_frames == "all":
        candidates.append(frame_key(base, 1, extension))
    done = _existing_output(s3, bucket, candidates, etag)
    if done is not None:
        return Outcome(obj, "skipped", "already_converted", f"{done} holds this ETag", (done,))
    # A triggered run reads exactly the object S3 named, whatever ALLOWED_BUCKETS says
    # about callers' URLs; the version pins it when the bucket keeps versions.
    fetch_settings = replace(deadline.download_settings(settings), allowed_buckets=(obj.bucket,))
    import file_downloader

    with temp_cleaner.workdir(f"bulk-{uuid.uuid4().hex}", settings) as folder:
        path = file_downloader.fetch(object_url(obj), folder, "s3", fetch_settings)
        outputs = _render_and_store(path, obj, etag, bucket, base, settings, deadline, s3)
    return Outcome(obj, "converted", outputs=outputs)


def object_url(obj: S3Object) -> str:
    """The ``s3://`` URL of the object; the downloader percent-decodes the key."""
    url = f"s3://{obj.bucket}/{quote(obj.key, safe='/')}"
    return f"{url}?versionId={quote(obj.version_id, safe='')}" if obj.version_id else url


def output_base(key: str, settings: Settings) -> str:
    """OUTPUT_PREFIX + the source key without its extension (``a/b.dcm`` → ``converted/a/b``)."""
    folder, _, name = key.rpartition("/")
    stem = _EXTENSION.sub("", name) or name
    return f"{settings.output_prefix}{folder}/{stem}" if folder else settings.output_prefix + stem


def frame_key(base: str, frame: int, extension: str) -> str:
    return f"{base}/frame-{frame:04d}{extension}"


def trigger_options(settings: Settings) -> RenderOptions:
    """Rendering options of triggered runs: DEFAULT_* format and quality, TRIGGER_* view."""
    from dicom_converter import RenderOptions, parse_window

    window = parse_window(settings.trigger_window) if settings.trigger_window else None
    return RenderOptions(
        output_format=settings.default_output_format,
        window=window,
        preset=settings.trigger_preset,
        width=settings.trigger_max_width,
        height=settings.trigger_max_height,
        # Patient data stays out of the object metadata.
        include_metadata=False,
    )


def _render_and_store(
    path: Path,
    obj: S3Object,
    etag: str,
    bucket: str,
    base: str,
    settings: Settings,
    deadline: Deadline,
    s3: Any,
) -> tuple[str, ...]:
    import dicom_converter

    options = trigger_options(settings)
    first = dicom_converter.render(path, options, settings)
    extension = f".{first.format}"
    if first.frames == 1 or settings.trigger_frames == "first":
        key = f"{base}{extension}"
        _put(s3, bucket, key, first, obj, etag)
        return (key,)
    keys = []
    for frame in range(2, first.frames + 1):
        if deadline.remaining() <= 0:
            raise UpstreamTimeout(
                f"the invocation's time ran out after {frame - 1} of {first.frames} frames; "
                "give the function a longer timeout, or set TRIGGER_FRAMES=first"
            )
        result = dicom_converter.render(path, replace(options, frame=frame), settings)
        keys.append(frame_key(base, frame, extension))
        _put(s3, bucket, keys[-1], result, obj, etag)
    # Frame 1 is written last: finding it with this ETag means every frame is there.
    _put(s3, bucket, frame_key(base, 1, extension), first, obj, etag)
    return (frame_key(base, 1, extension), *keys)


def output_metadata(obj: S3Object, etag: str, result: RenderResult) -> dict[str, str]:
    """The user metadata of an output: where it came from and how it was rendered."""
    window = result.window
    parts = []
    if window.center is not None and window.width is not None:
        parts += [f"center={window.center:g}", f"width={window.width:g}"]
    parts += [f"function={window.function}", f"source={window.source}"]
    return {
        META_SOURCE_BUCKET: obj.bucket,
        # S3 metadata travels as HTTP headers, so the key is percent-encoded.
        META_SOURCE_KEY: quote(obj.key, safe="/"),
        META_SOURCE_ETAG: etag,
        "window": ";".join(parts),
        "frame": str(result.frame),
        "frames": str(result.frames),
    }


# --------------------------------------------------------------------------- S3 calls


def _put(s3: Any, bucket: str, key: str, result: RenderResult, obj: S3Object, etag: str) -> None:
    _call(
        lambda: s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=result.image,
            ContentType=result.media_type,
            Metadata=output_metadata(obj, etag, result),
        ),
        f"writing s3://{bucket}/{key}",
        output=True,
    )


def _existing_output(s3: Any, bucket: str, keys: list[str], etag: str) -> str | None:
    """The first of ``keys`` that exists and was made from the source with ``etag``."""
    from botocore.exceptions import BotoCoreError, ClientError

    for key in keys:
        try:
            head = s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            # Without s3:ListBucket, S3 answers 403 rather than 404 for a missing key.
            if _status(exc) in (403, 404):
                continue
            raise _translate(exc, f"checking s3://{bucket}/{key}", output=True) from exc
        except BotoCoreError as exc:
            raise UpstreamError(f"S3 could not be reached ({type(exc).__name__})") from exc
        if head.get("Metadata", {}).get(META_SOURCE_ETAG) == etag:
            return key
    return None


def _source_etag(s3: Any, obj: S3Object) -> str:
    """The ETag of the source, for events that do not carry it."""
    params = {"Bucket": obj.bucket, "Key": obj.key}
    if obj.version_id:
        params["VersionId"] = obj.version_id
    head = _call(lambda: s3.head_object(**params), f"reading s3://{obj.bucket}/{obj.key}")
    return str(head.get("ETag", "")).strip('"')


def _call(action: Callable[[], T], what: str, output: bool = False) -> T:
    """Run one S3 call; its errors become ``ServiceError`` types."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return action()
    except ClientError as exc:
        raise _translate(exc, what, output) from exc
    except BotoCoreError as exc:
        reason = type(exc).__name__
        raise UpstreamError(f"{what} failed: S3 could not be reached ({reason})") from exc


def _status(exc: Any) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _translate(exc: Any, what: str, output: bool) -> ServiceError:
    code = str(exc.response.get("Error", {}).get("Code", "error"))
    status = _status(exc)
    if output and (code in ("NoSuchBucket", "AccessDenied") or status == 403):
        return ConfigurationError(
            f"{what} was refused ({code}): the function's role must be allowed to write "
            "OUTPUT_BUCKET (or the watched bucket) under OUTPUT_PREFIX"
        )
    if status == 404:
        return NotFound(f"{what}: S3 has no such object ({code})")
    if status == 403:
        return Forbidden(f"{what} was refused ({code})")
    return UpstreamError(f"{what} failed ({code}, HTTP {status})")
