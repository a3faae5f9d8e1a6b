"""The one fetch → render sequence, and the configuration of each room it drives.

``POST /convert``, the batch form (``urls: [...]``) and S3 triggers all convert a
file the same way, through ``fetch_and_render``:

    temp_cleaner.workdir   a private folder, removed however the work ends
    frame_fetch.fetch_frames the source, under the URL policy and the download limits:
                           only the bytes of the frames the render reads when the
                           source allows ranged reads, else the whole file; with the
                           source's identity (its validator, or a hash of the bytes)
    dicom_converter.render the first image, then any other frames the caller asks for
                           from the same fetched file

``probe`` asks the source for its identity alone (a HEAD), which is what a
revalidation or an output-cache lookup needs; ``fetch_identify_render`` lets the
caller stop between the download and the render once the identity is known.

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
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar, overload

import s3_store
import temp_cleaner
from render_cache import OutputCache
from s3_store import S3Config
from service_log import RequestLog
from settings import Settings
from temp_cleaner import TempPolicy
from url_policy import SourceEndpoints, UrlPolicy

if TYPE_CHECKING:
    from dicom_converter import RenderLimits, RenderOptions, RenderResult
    from file_downloader import DownloadOptions, SourceIdentity
    from frame_fetch import Fetched

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
            max_pixel_bytes=settings.max_pixel_bytes,
            default_quality=settings.default_quality,
            max_frames=settings.max_frames,
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


def frame_span(options: RenderOptions) -> tuple[int, int | None]:
    """The frames a render with ``options`` reads, 1-based inclusive (None: to the last)."""
    if options.frames is not None:
        return options.frames.first, options.frames.last
    return options.frame, options.frame


def probe(source: Source, rooms: Rooms, log: RequestLog | None = None) -> SourceIdentity | None:
    """The source's identity from a HEAD (or HeadObject, MDTM+SIZE), without a download.

    None when the source gives no validator; then only a download can tell.
    """
    import file_downloader

    started = time.perf_counter()
    identity = file_downloader.probe(
        source.url,
        rooms.download,
        source.policy or rooms.policy,
        storage_type=source.storage_type,
        deadline_seconds=source.deadline_seconds,
    )
    if log is not None:
        log.stage("probe", started)
        log.fields["source_validator"] = identity.kind if identity is not None else "none"
    return identity


@dataclass(frozen=True)
class Rendered(Generic[T]):
    """What ``fetch_identify_render`` did: the source's identity, then either the
    render or what ``before_render`` answered instead of rendering."""

    identity: SourceIdentity
    result: RenderResult | None = None
    instead: T | None = None


def fetch_identify_render(
    source: Source,
    options: RenderOptions,
    rooms: Rooms,
    work_id: str,
    log: RequestLog | None,
    before_render: Callable[[SourceIdentity], T | None],
) -> Rendered[T]:
    """Fetch the frames ``options`` reads; ``before_render(identity)`` may then answer
    instead of the render (a 304, a cached render), else the render is the answer."""
    import dicom_converter

    with temp_cleaner.workdir(work_id, rooms.temp) as folder:
        fetched = _fetch(source, folder, rooms, frame_span(options), log)
        instead = before_render(fetched.identity)
        if instead is not None:
            return Rendered(fetched.identity, instead=instead)
        started = time.perf_counter()
        result = dicom_converter.render(fetched.path, options, rooms.render)
        _log_render(log, started, result)
        return Rendered(fetched.identity, result)


def _fetch(
    source: Source,
    folder: Path,
    rooms: Rooms,
    frames: tuple[int, int | None] | None,
    log: RequestLog | None,
) -> Fetched:
    import frame_fetch

    started = time.perf_counter()
    fetched = frame_fetch.fetch_frames(
        source.url,
        folder,
        rooms.download,
        source.policy or rooms.policy,
        storage_type=source.storage_type,
        deadline_seconds=source.deadline_seconds,
        frames=frames,
    )
    if log is not None:
        log.stage("download", started)
        log.sizes["download_bytes"] = fetched.bytes_transferred
        log.fields["ranged"] = fetched.ranged
    return fetched


def _log_render(log: RequestLog | None, started: float, result: RenderResult) -> None:
    if log is not None:
        log.stage("decode_render", started)
        # The converter's own split of that time: read, decode, render, encode.
        log.durations.update(result.timings_ms)


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

    Without ``then``, the rendered image is the answer, and only the frames it
    reads are fetched when the source allows. With ``then``, the whole file is
    fetched and the answer is ``then(first, render_frame)``, called while the file is
    still there: ``render_frame(n)`` renders frame ``n`` of it with the same options
    (an S3 trigger renders every frame of a multi-frame file from one download).
    ``log`` receives the download and render stages, timings and sizes.
    """
    import dicom_converter

    with temp_cleaner.workdir(work_id, rooms.temp) as folder:
        span = frame_span(options) if then is None else None
        path = _fetch(source, folder, rooms, span, log).path
        started = time.perf_counter()
        first = dicom_converter.render(path, options, rooms.render)
        _log_render(log, started, first)
        if then is None:
            return first

        def render_frame(frame: int) -> RenderResult:
            return dicom_converter.render(path, replace(options, frame=frame), rooms.render)

        return then(first, render_frame)


def output_cache(rooms: Rooms) -> OutputCache | None:
    """The output cache in OUTPUT_BUCKET, or None without one."""
    if rooms.output.bucket is None:
        return None
    return OutputCache(rooms.s3, rooms.output.bucket, rooms.output.prefix)


def store_image(result: RenderResult, name: str, rooms: Rooms) -> tuple[str, str]:
    """Store an image in OUTPUT_BUCKET as OUTPUT_PREFIX + ``name``; (presigned link, key)."""
    output = rooms.output
    if output.bucket is None:
        raise ValueError("store_image needs OUTPUT_BUCKET")
    key = f"{output.prefix}{temp_cleaner.folder_name(name)}.{result.format}"
    s3_store.put_image(rooms.s3, output.bucket, key, result.image, result.media_type)
    url = s3_store.presign_get(rooms.s3, output.bucket, key, output.expiry_seconds)
    return url, key
