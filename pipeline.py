"""The one fetch → render sequence, and the configuration of each room it drives.

``POST /convert``, the batch form (``urls: [...]``) and S3 triggers all convert a
file the same way, through ``fetch_and_render``:

    temp_cleaner.workdir  a private folder, removed however the work ends
    file_downloader.fetch the source, under the URL policy and the download limits
    dicom_converter.render the first image, then any other frames the caller asks for
                          from the same fetched file

``Rooms`` holds what each room receives: download limits and the URL policy, render
limits, the temp policy, the S3 configuration and where outputs go. ``rooms(settings)``
derives them from the ``Settings`` once per settings object; this is the only place
that turns settings into room configuration. Deadlines and the per-request policy
(an S3 trigger may read only the bucket it names) are arguments, never copies of
the settings.

file_downloader and dicom_converter (requests, boto3, pydicom, numpy) are imported
on first use, so importing this module keeps the handler's cold start light.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeVar, overload

import s3_store
import temp_cleaner
from s3_store import S3Config
from service_log import RequestLog
from settings import Settings
from temp_cleaner import TempPolicy
from url_policy import SourceEndpoints, UrlPolicy

if TYPE_CHECKING:
    from dicom_converter import RenderLimits, RenderOptions, RenderResult
    from file_downloader import DownloadOptions

T = TypeVar("T")
# Renders another frame of the file already fetched: frame number → image.
RenderFrame = Callable[[int], "RenderResult"]
Then = Callable[["RenderResult", RenderFrame], T]


@dataclass(frozen=True)
class OutputTarget:
    """Where stored images go: OUTPUT_BUCKET (None: no bucket), OUTPUT_PREFIX, link expiry."""

    bucket: str | None
    prefix: str
    expiry_seconds: int


@dataclass(frozen=True)
class Rooms:
    """What each room receives from the settings, and nothing more."""

    download: DownloadOptions
    policy: UrlPolicy
    render: RenderLimits
    temp: TempPolicy
    s3: S3Config
    output: OutputTarget
    endpoints: SourceEndpoints


def temp_policy(settings: Settings) -> TempPolicy:
    return TempPolicy(
        root=settings.temp_root,
        sweep_interval_seconds=settings.sweep_interval_seconds,
        stale_after_seconds=settings.stale_after_seconds,
        min_free_bytes=settings.min_free_tmp_bytes,
    )


def source_endpoints(settings: Settings) -> SourceEndpoints:
    return SourceEndpoints(s3=settings.s3_endpoint_url, r2=settings.r2_endpoint_url)


def _build(settings: Settings) -> Rooms:
    from dicom_converter import RenderLimits
    from file_downloader import DownloadOptions

    endpoints = source_endpoints(settings)
    download = DownloadOptions(
        max_bytes=settings.max_download_bytes,
        min_free_bytes=settings.min_free_tmp_bytes,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        deadline_seconds=settings.download_deadline_seconds,
        retries=settings.download_retries,
        max_redirects=settings.max_redirects,
        endpoints=endpoints,
        r2_access_key_id=settings.r2_access_key_id,
        r2_secret_access_key=settings.r2_secret_access_key,
        ca_bundle=settings.requests_ca_bundle,
    )
    return Rooms(
        download=download,
        policy=UrlPolicy(
            allowed_hosts=settings.allowed_hosts, allowed_buckets=settings.allowed_buckets
        ),
        render=RenderLimits(
            max_pixel_bytes=settings.max_pixel_bytes, default_quality=settings.default_quality
        ),
        temp=temp_policy(settings),
        s3=S3Config(
            endpoint_url=settings.s3_endpoint_url,
            connect_timeout=settings.connect_timeout_seconds,
            read_timeout=settings.read_timeout_seconds,
            retries=settings.download_retries,
        ),
        output=OutputTarget(
            bucket=settings.output_bucket,
            prefix=settings.output_prefix,
            expiry_seconds=settings.url_expiry_seconds,
        ),
        endpoints=endpoints,
    )


# Keyed by identity: a Lambda environment has one settings object; tests make many.
_ROOMS_KEPT = 16
_rooms: OrderedDict[int, tuple[Settings, Rooms]] = OrderedDict()
_rooms_lock = threading.Lock()


def rooms(settings: Settings) -> Rooms:
    """The rooms' configuration for ``settings``, derived once per settings object."""
    with _rooms_lock:
        found = _rooms.get(id(settings))
        if found is not None and found[0] is settings:
            _rooms.move_to_end(id(settings))
            return found[1]
    built = _build(settings)
    with _rooms_lock:
        # The settings object is kept with its rooms, so its id cannot be reused.
        _rooms[id(settings)] = (settings, built)
        while len(_rooms) > _ROOMS_KEPT:
            _rooms.popitem(last=False)
    return built


@dataclass(frozen=True)
class Source:
    """What to fetch, with the limits of this one call.

    ``deadline_seconds`` can only shorten the download deadline of the settings;
    ``policy``, when given, replaces the rooms' URL policy for this call.
    """

    url: str
    storage_type: str = "auto"
    deadline_seconds: float | None = None
    policy: UrlPolicy | None = None


def first_only(first: RenderResult, render_frame: RenderFrame) -> RenderResult:
    return first


@overload
def fetch_and_render(
    source: Source, options: RenderOptions, rooms: Rooms, work_id: str, log: RequestLog | None = ...
) -> RenderResult: ...


@overload
def fetch_and_render(
    source: Source,
    options: RenderOptions,
    rooms: Rooms,
    work_id: str,
    log: RequestLog | None = ...,
    *,
    then: Then[T],
) -> T: ...


def fetch_and_render(
    source: Source,
    options: RenderOptions,
    rooms: Rooms,
    work_id: str,
    log: RequestLog | None = None,
    *,
    then: Then[T] | None = None,
) -> T | RenderResult:
    """Fetch ``source`` into a work folder of its own and render it with ``options``.

    Without ``then``, the rendered image is the answer. With it, the answer is
    ``then(first, render_frame)``, called while the fetched file is still there:
    ``render_frame(n)`` renders frame ``n`` of it with the same options (an S3
    trigger renders every frame of a multi-frame file from one download). ``log``
    receives the download and render stages, timings and sizes.
    """
    import dicom_converter
    import file_downloader

    with temp_cleaner.workdir(work_id, rooms.temp) as folder:
        started = time.perf_counter()
        path = file_downloader.fetch(
            source.url,
            folder,
            rooms.download,
            source.policy or rooms.policy,
            storage_type=source.storage_type,
            deadline_seconds=source.deadline_seconds,
        )
        if log is not None:
            log.stage("download", started)
            log.sizes["download_bytes"] = path.stat().st_size
        started = time.perf_counter()
        first = dicom_converter.render(path, options, rooms.render)
        if log is not None:
            log.stage("decode_render", started)
            # The converter's own split of that time: read, decode, render, encode.
            log.durations.update(first.timings_ms)
        if then is None:
            return first

        def render_frame(frame: int) -> RenderResult:
            return dicom_converter.render(path, replace(options, frame=frame), rooms.render)

        return then(first, render_frame)


def store_image(result: RenderResult, name: str, rooms: Rooms) -> tuple[str, str]:
    """Store an image in OUTPUT_BUCKET as OUTPUT_PREFIX + ``name``; (presigned link, key)."""
    output = rooms.output
    if output.bucket is None:
        raise ValueError("store_image needs OUTPUT_BUCKET")
    key = f"{output.prefix}{temp_cleaner.folder_name(name)}.{result.format}"
    s3_store.put_image(rooms.s3, output.bucket, key, result.image, result.media_type)
    url = s3_store.presign_get(rooms.s3, output.bucket, key, output.expiry_seconds)
    return url, key
