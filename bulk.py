"""Bulk conversion: S3 uploads converted as they arrive, and batch requests.

Lambda's own fan-out is what scales this: S3 (directly, through SQS or through
EventBridge) invokes the function for new objects, as many times in parallel as
uploads arrive. Within one invocation this module bounds the work:

* ``convert_objects`` takes the objects named by a notification (``notifications``
  reads the events). Each one is filtered (WATCH_BUCKET, WATCH_PREFIX,
  WATCH_SUFFIXES, never the function's own outputs), skipped when an output with
  the same source ETag already exists (a redelivered event does no work), fetched
  and rendered with the TRIGGER_* options, and written under OUTPUT_PREFIX in
  OUTPUT_BUCKET or the same bucket.
* ``batch_items`` converts the URLs of ``POST /convert`` with ``urls``, and
  ``fit_batch`` keeps that answer within MAX_RESPONSE_BYTES.
* ``run_all`` runs jobs on at most BATCH_WORKERS threads and stops waiting at the
  invocation's deadline.
* ``check_settings`` refuses trigger settings that cannot work (a TRIGGER_WINDOW
  the converter cannot read, outputs that would trigger the function again); the
  handler runs it once per settings object, before any work.

Every conversion goes through ``pipeline.fetch_and_render``. This module knows
neither event shapes nor HTTP; numpy, pydicom and boto3 are imported only when an
object is actually converted.
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
from functools import lru_cache, partial
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

import pipeline
import s3_store
from convert_api import ConvertRequest, batch_document, error_document, success_document, url_field
from errors import (
    ConfigurationError,
    NoPixelData,
    NotDicom,
    NotReached,
    ServiceError,
    TooLarge,
    UpstreamTimeout,
)
from pipeline import RenderFrame, Rooms, Source
from service_log import redact_url
from settings import Settings

if TYPE_CHECKING:
    from dicom_converter import RenderOptions, RenderResult

logger = logging.getLogger("dicom_lambda.bulk")
# Unexpected errors of batch items are the handler's, as errors of single requests are.
handler_logger = logging.getLogger("dicom_lambda")

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


# --------------------------------------------------------------------------- settings


@lru_cache(maxsize=32)
def check_settings(settings: Settings) -> None:
    """Refuse trigger settings that cannot work; raises ``ConfigurationError``.

    Run once per settings object (a failure is not remembered, so it is raised again).
    """
    if settings.trigger_window is not None or settings.trigger_preset is not None:
        _check_trigger_view(settings)
    if settings.watch_bucket is not None and outputs_match_trigger(settings):
        s = settings
        raise ConfigurationError(
            "the function's outputs would trigger it again: images go to "
            f"{s.output_bucket or s.watch_bucket!r} under OUTPUT_PREFIX {s.output_prefix!r}, "
            f"and WATCH_BUCKET {s.watch_bucket!r} with WATCH_PREFIX {s.watch_prefix!r} and "
            f"WATCH_SUFFIXES {','.join(s.watch_suffixes)!r} would count them. "
            "Set WATCH_PREFIX to a folder that OUTPUT_PREFIX does not start with (e.g. "
            "'incoming/'), WATCH_SUFFIXES to the source files' suffixes (e.g. '.dcm'), "
            "or OUTPUT_BUCKET to another bucket"
        )


def _check_trigger_view(settings: Settings) -> None:
    """TRIGGER_WINDOW and TRIGGER_PRESET, checked by the converter's own rules."""
    # Imported here: only setups with a trigger view pay for the converter's import.
    from dicom_converter import PRESETS, parse_window

    if settings.trigger_preset is not None and settings.trigger_preset not in PRESETS:
        raise ConfigurationError(f"setting TRIGGER_PRESET must be one of {', '.join(PRESETS)}")
    if settings.trigger_window is not None:
        if settings.trigger_preset is not None:
            raise ConfigurationError(
                "setting TRIGGER_WINDOW cannot be combined with TRIGGER_PRESET"
            )
        try:
            parse_window(settings.trigger_window)
        except ServiceError as exc:
            raise ConfigurationError(
                f"setting TRIGGER_WINDOW must be CENTER,WIDTH[,FUNCTION] ({exc.message})"
            ) from None


def output_extension(settings: Settings) -> str:
    """The file extension of the images triggered runs write."""
    fmt = settings.default_output_format.lower()
    return ".jpg" if fmt == "jpeg" else f".{fmt}"


def outputs_match_trigger(settings: Settings) -> bool:
    """Whether images written for triggered runs could themselves count as new uploads.

    An output key is OUTPUT_PREFIX + the source key (which starts with WATCH_PREFIX)
    with the image extension, in OUTPUT_BUCKET or else the watched bucket itself.
    """
    s = settings
    if s.output_bucket is not None and s.output_bucket != s.watch_bucket:
        return False
    if not (s.output_prefix + s.watch_prefix).startswith(s.watch_prefix):
        return False
    extension = output_extension(s)
    if not s.watch_suffixes:
        return True
    # frame-0001.jpg and name.jpg both end in the extension; a suffix that is part
    # of it, or ends with it, can match some output key. Case is ignored, to be safe.
    suffixes = [x.lower() for x in s.watch_suffixes]
    return any(extension.endswith(x) or x.endswith(extension) for x in suffixes)


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

    def download_seconds(self) -> float | None:
        """A download deadline that leaves time to render and answer (None: no limit).

        Raises ``NotReached`` when too little time is left to start.
        """
        budget = self.remaining() - RENDER_RESERVE_SECONDS
        if budget < MIN_START_SECONDS:
            raise NotReached("not started: too little of the invocation's time was left; try again")
        return None if math.isinf(budget) else budget


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


# --------------------------------------------------------------------------- batch requests


def batch_items(
    urls: Sequence[Any],
    template: ConvertRequest,
    rooms: Rooms,
    workers: int,
    deadline: Deadline,
    request_id: str,
) -> list[dict[str, Any]]:
    """One result per URL, in order, each with its own success or error.

    Every URL is fetched and rendered on its own with ``template``'s options, at most
    ``workers`` at a time. With OUTPUT_BUCKET the images are stored there and the
    results hold links.
    """
    jobs = [
        partial(_batch_item, index, value, template, rooms, deadline, request_id)
        for index, value in enumerate(urls)
    ]
    items = []
    for index, (value, result) in enumerate(
        zip(urls, run_all(jobs, workers, deadline), strict=True)
    ):
        if isinstance(result, dict):
            items.append(result)
            continue
        error = result or NotReached(
            "not done before the invocation's deadline; send this URL again"
        )
        shown = redact_url(value) if isinstance(value, str) else None
        items.append(batch_error(index, shown, error, request_id))
    return items


def _batch_item(
    index: int,
    value: Any,
    template: ConvertRequest,
    rooms: Rooms,
    deadline: Deadline,
    request_id: str,
) -> dict[str, Any]:
    request = replace(template, url=url_field(value))
    work_id = f"{request_id}-{index + 1}"
    source = Source(request.url, request.storage_type, deadline.download_seconds())
    result = pipeline.fetch_and_render(source, request.options, rooms, work_id)
    link = None
    if rooms.output.bucket is not None:
        stored, _ = pipeline.store_image(result, work_id, rooms)
        link = (stored, rooms.output.expiry_seconds)
    document = success_document(result, request_id, link)
    return {
        "index": index,
        "url": redact_url(request.url),
        "success": True,
        "data": document["data"],
        "metadata": document["metadata"],
    }


def batch_error(index: int, url: str | None, exc: BaseException, request_id: str) -> dict[str, Any]:
    """One failed item, with the status and code of the one error table."""
    if not isinstance(exc, ServiceError):
        handler_logger.error(
            "unexpected error",
            exc_info=exc,
            extra={"fields": {"request_id": request_id, "index": index}},
        )
    document = error_document(exc, request_id)
    return {
        "index": index,
        "url": url,
        "success": False,
        "message": document["message"],
        "error": document["error"],
    }


def fit_batch(
    items: list[dict[str, Any]],
    budget: int,
    measure: Callable[[dict[str, Any]], int],
    request_id: str,
) -> list[dict[str, Any]]:
    """Keep the answer within ``budget`` bytes (MAX_RESPONSE_BYTES).

    ``measure`` gives the bytes a document takes in the invocation's result (the
    handler knows how the event shape wraps it). Inline images are kept in request
    order while they fit; each one that does not becomes a 413 for its item, so
    earlier results keep their images.
    """

    def size(candidate: list[dict[str, Any]]) -> int:
        return measure(batch_document(candidate, request_id))

    if size(items) <= budget:
        return items
    placeholders = [_too_large_item(item, budget, request_id) for item in items]
    spare = budget - size(placeholders)
    if spare < 0:
        raise TooLarge(
            f"the batch answer is above MAX_RESPONSE_BYTES ({budget} bytes) even without "
            "images; send fewer URLs"
        )
    fitted = []
    for item, placeholder in zip(items, placeholders, strict=True):
        # Measured inside a document of their own: the wrapping costs cancel out.
        extra = measure({"item": item}) - measure({"item": placeholder})
        keep = extra <= spare
        fitted.append(item if keep else placeholder)
        spare -= extra if keep else 0
    # The counts in the message change a few bytes; drop images from the end if needed.
    for index in reversed(range(len(fitted))):
        if size(fitted) <= budget:
            break
        fitted[index] = placeholders[index]
    return fitted


def _too_large_item(item: dict[str, Any], budget: int, request_id: str) -> dict[str, Any]:
    if "image_base64" not in item.get("data", {}):
        return item
    error = TooLarge(
        f"the image ({item['data']['file_size']} bytes) does not fit in this batch's answer "
        f"under MAX_RESPONSE_BYTES ({budget} bytes); convert this URL alone, ask for a "
        "smaller width/height, or set OUTPUT_BUCKET so that images are returned as links"
    )
    return batch_error(item["index"], item["url"], error, request_id)


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
    objects: Sequence[S3Object], settings: Settings, deadline: Deadline
) -> list[Outcome]:
    """Convert each object that counts, on at most BATCH_WORKERS threads."""
    skips = [skip_reason(o, settings) for o in objects]
    todo = [i for i, skip in enumerate(skips) if skip is None]
    rooms = pipeline.rooms(settings) if todo else None
    jobs = [partial(convert_object, objects[i], settings, rooms, deadline) for i in todo]
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

    ``check_settings`` already refuses filters that outputs could match; this is
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


@dataclass(frozen=True)
class _Target:
    """Where the images of one source object go, and what they record of it."""

    obj: S3Object
    etag: str
    bucket: str
    base: str
    all_frames: bool
    deadline: Deadline


def convert_object(
    obj: S3Object, settings: Settings, rooms: Rooms | None, deadline: Deadline
) -> Outcome:
    """Convert one object that counts; raises ``ServiceError`` when it cannot."""
    rooms = rooms or pipeline.rooms(settings)
    etag = obj.etag or _source_etag(rooms, obj)
    bucket = settings.output_bucket or obj.bucket
    base = output_base(obj.key, settings.output_prefix)
    extension = output_extension(settings)
    candidates = [f"{base}{extension}"]
    all_frames = settings.trigger_frames == "all"
    if all_frames:
        candidates.append(frame_key(base, 1, extension))
    done = _existing_output(rooms, bucket, candidates, etag)
    if done is not None:
        return Outcome(obj, "skipped", "already_converted", f"{done} holds this ETag", (done,))
    # A triggered run reads exactly the object S3 named, whatever ALLOWED_BUCKETS says
    # about callers' URLs; the version pins it when the bucket keeps versions.
    source = Source(
        object_url(obj),
        "s3",
        deadline.download_seconds(),
        policy=replace(rooms.policy, allowed_buckets=(obj.bucket,)),
    )
    target = _Target(obj, etag, bucket, base, all_frames, deadline)
    outputs = pipeline.fetch_and_render(
        source,
        trigger_options(settings),
        rooms,
        f"bulk-{uuid.uuid4().hex}",
        then=partial(_store_outputs, target, rooms),
    )
    return Outcome(obj, "converted", outputs=outputs)


def object_url(obj: S3Object) -> str:
    """The ``s3://`` URL of the object; the downloader percent-decodes the key."""
    url = f"s3://{obj.bucket}/{quote(obj.key, safe='/')}"
    return f"{url}?versionId={quote(obj.version_id, safe='')}" if obj.version_id else url


def output_base(key: str, prefix: str) -> str:
    """OUTPUT_PREFIX + the source key without its extension (``a/b.dcm`` → ``converted/a/b``)."""
    folder, _, name = key.rpartition("/")
    stem = _EXTENSION.sub("", name) or name
    return f"{prefix}{folder}/{stem}" if folder else prefix + stem


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


def _store_outputs(
    target: _Target, rooms: Rooms, first: RenderResult, render_frame: RenderFrame
) -> tuple[str, ...]:
    """Write the first image, or every frame of a multi-frame file (TRIGGER_FRAMES=all)."""
    extension = f".{first.format}"
    if first.frames == 1 or not target.all_frames:
        key = f"{target.base}{extension}"
        _put(rooms, target, key, first)
        return (key,)
    keys = []
    for frame in range(2, first.frames + 1):
        if target.deadline.remaining() <= 0:
            raise UpstreamTimeout(
                f"the invocation's time ran out after {frame - 1} of {first.frames} frames; "
                "give the function a longer timeout, or set TRIGGER_FRAMES=first"
            )
        result = render_frame(frame)
        keys.append(frame_key(target.base, frame, extension))
        _put(rooms, target, keys[-1], result)
    # Frame 1 is written last: finding it with this ETag means every frame is there.
    _put(rooms, target, frame_key(target.base, 1, extension), first)
    return (frame_key(target.base, 1, extension), *keys)


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


def _put(rooms: Rooms, target: _Target, key: str, result: RenderResult) -> None:
    metadata = output_metadata(target.obj, target.etag, result)
    s3_store.put_image(rooms.s3, target.bucket, key, result.image, result.media_type, metadata)


def _existing_output(rooms: Rooms, bucket: str, keys: list[str], etag: str) -> str | None:
    """The first of ``keys`` that exists and was made from the source with ``etag``."""
    for key in keys:
        found = s3_store.head(rooms.s3, bucket, key)
        if found is not None and found.get("Metadata", {}).get(META_SOURCE_ETAG) == etag:
            return key
    return None


def _source_etag(rooms: Rooms, obj: S3Object) -> str:
    """The ETag of the source, for events that do not carry it."""
    found = s3_store.head_source(rooms.s3, obj.bucket, obj.key, obj.version_id)
    return str(found.get("ETag", "")).strip('"')
