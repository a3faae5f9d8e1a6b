"""Answering one conversion: validators, 304s, the output cache and the size limits.

The path of a single ``/convert`` once its request is parsed:

    If-None-Match given, or an output cache (OUTPUT_BUCKET):
        pipeline.probe (a HEAD) → the source's identity → the answer's ETag
        → matches If-None-Match: 304, no download, no render
        → in the output cache: answered from it, no download, no render
    pipeline.fetch_identify_render: the frames the render reads, and the identity
        (a content hash when the source gave no validator: "X-Source-Validator: none")
        → the same two checks, before rendering
        → render, kept in the output cache
    answer inline when it fits the payload limit, else a link (303 for an image),
    else 413

The ETag is ``render_cache``'s: source version, effective options, renderer version.
This module knows HTTP answers but no event shape: the handler brings the request's
headers and a ``measure`` of the answer as its event shape carries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import pipeline
import render_cache
import temp_cleaner
from convert_api import ConvertRequest, format_label, info_document
from errors import TooLarge
from pipeline import Rooms, Source
from render_options import MEDIA_TYPES
from service_log import RequestLog

if TYPE_CHECKING:
    from dicom_converter import RenderResult
    from file_downloader import SourceIdentity

# Media types an Accept header may name, and the output format each asks for.
ACCEPTED_IMAGES = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
}
WILDCARDS = ("image/*", "*/*")


@dataclass
class Response:
    status: int
    document: dict[str, Any] | None = None
    image: bytes | None = None
    media_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # the playground page


@dataclass(frozen=True)
class DeliveryPolicy:
    """What the settings say about answers: CACHE_CONTROL and MAX_RESPONSE_BYTES."""

    cache_control: str
    max_response_bytes: int


@dataclass(frozen=True)
class Asked:
    """What the handler knows of the HTTP request and its event shape."""

    kind: str  # rest | http | url | direct
    request_id: str
    if_none_match: str | None
    # Bytes of a response as this event shape carries it (what the payload limit counts).
    measure: Callable[[Response], int]


@dataclass(frozen=True)
class Rendition:
    """One render to answer with: what ``RenderResult.describe()`` says of it, the
    image when it is at hand, and where a link to it comes from."""

    info: dict[str, Any]  # at least format, media_type and file_size
    image: bytes | None
    link: Callable[[], tuple[str, str]]  # (presigned URL, key)
    # The whole description, when ``info`` holds only the above (read on demand).
    full_info: Callable[[], dict[str, Any]] | None = None

    def described(self) -> dict[str, Any]:
        return self.full_info() if self.full_info is not None else self.info


def accept_ranks(accept: str | None) -> list[tuple[str, float]]:
    """Each media range of an Accept header, lower-cased, with its weight (RFC 9110
    12.4.2, 12.5.1), in the header's order; a weight that is not a number counts 0."""
    ranks = []
    for part in (accept or "").split(","):
        media, _, params = part.partition(";")
        ranks.append((media.strip().lower(), _weight(params)))
    return ranks


def negotiated_format(accept: str | None, default: str) -> str | None:
    """The output format an Accept header asks for among the image types.

    The deployment's default wins whenever it is acceptable at the best quality
    (a browser's ``<img>`` sends ``image/webp,...,image/*``); otherwise the first
    image type of the best quality. None when no image type is acceptable.
    """
    ranked = [
        (weight, media)
        for media, weight in accept_ranks(accept)
        if weight > 0 and (media in ACCEPTED_IMAGES or media in WILDCARDS)
    ]
    if not ranked:
        return None
    best = max(weight for weight, _ in ranked)
    top = [media for weight, media in ranked if weight == best]
    default = {"jpeg": "jpg"}.get(default, default)
    if any(media in WILDCARDS or ACCEPTED_IMAGES[media] == default for media in top):
        return default
    return ACCEPTED_IMAGES[top[0]]


def _weight(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                return float(value)
            except ValueError:
                return 0.0
    return 1.0


def convert(
    request: ConvertRequest,
    source: Source,
    rooms: Rooms,
    policy: DeliveryPolicy,
    asked: Asked,
    log: RequestLog,
) -> Response:
    """The answer to one conversion, from a 304 to a render (module docstring)."""
    ask = _Conversion(request, rooms, policy, asked, log)
    probed = None
    if asked.if_none_match or ask.cache is not None:
        probed = pipeline.probe(source, rooms, log)
        if probed is None:
            ask.no_validator()
        else:
            known = ask.known(probed)
            if known is not None:
                return known

    def before_render(identity: SourceIdentity) -> Response | None:
        return None if identity == probed else ask.known(identity)

    rendered = pipeline.fetch_identify_render(
        source, request.options, rooms, asked.request_id, log, before_render
    )
    if rendered.instead is not None:
        return rendered.instead
    assert rendered.result is not None
    return ask.rendered(rendered.identity, rendered.result)


class _Conversion:
    """One conversion's state: its digest and ETag once the identity is known."""

    def __init__(
        self,
        request: ConvertRequest,
        rooms: Rooms,
        policy: DeliveryPolicy,
        asked: Asked,
        log: RequestLog,
    ) -> None:
        self.request, self.rooms = request, rooms
        self.policy, self.asked, self.log = policy, asked, log
        self.cache = pipeline.output_cache(rooms)
        self.form = render_cache.answer_form(request.response, request.options.output_format)
        self.headers: dict[str, str] = {}
        self.digest = ""

    def no_validator(self) -> None:
        # Said, so that a caller wondering why revalidation downloads can see why.
        self.headers["X-Source-Validator"] = "none"
        self.log.fields["source_validator"] = "none"

    def _tag(self, identity: SourceIdentity) -> str:
        digest = render_cache.render_digest(
            identity.token(), self.request.options, self.rooms.render.default_quality
        )
        self.digest = digest
        self.headers["ETag"] = render_cache.entity_tag(digest, self.form)
        return self.headers["ETag"]

    def known(self, identity: SourceIdentity) -> Response | None:
        """A 304, or the answer from the output cache; None: render."""
        etag = self._tag(identity)
        if render_cache.if_none_match(self.asked.if_none_match, etag):
            self.log.fields["cache"] = "not_modified"
            return self._finish(Response(304))
        if self.cache is None:
            return None
        started = time.perf_counter()
        rendition = self._cached()
        self.log.stage("cache_read", started)
        self.log.fields["cache"] = "hit" if rendition is not None else "miss"
        if rendition is None:
            return None
        try:
            return self._finish(self._deliver(rendition))
        except render_cache.CacheMiss:
            self.log.fields["cache"] = "miss"
            return None

    def _cached(self) -> Rendition | None:
        cache, digest = self.cache, self.digest
        assert cache is not None
        fmt = self.request.options.output_format
        if self.request.response == "binary" and self.asked.kind != "direct":
            # The image alone answers; its description only if it must become a link.
            image = cache.get_image(digest, fmt, self.policy.max_response_bytes)
            if image is None:
                return None
            if image != render_cache.TOO_LONG:
                key = cache.image_key(digest, fmt)
                self.log.fields["output_key"] = key
                info = {"format": fmt, "media_type": MEDIA_TYPES[fmt], "file_size": len(image)}
                return Rendition(
                    info, image, self._cache_link(key), partial(cache.describe, digest)
                )
        cached = cache.get(digest, fmt, self.policy.max_response_bytes)
        if cached is None:
            return None
        self.log.fields["output_key"] = cached.image_key
        return Rendition(cached.info, cached.image, self._cache_link(cached.image_key))

    def _cache_link(self, key: str) -> Callable[[], tuple[str, str]]:
        cache, expiry = self.cache, self.rooms.output.expiry_seconds
        assert cache is not None
        return lambda: (cache.link(key, expiry), key)

    def rendered(self, identity: SourceIdentity, result: RenderResult) -> Response:
        self._tag(identity)
        self.log.sizes["image_bytes"] = result.file_size
        self.log.fields["output"] = {
            "format": result.format,
            "width": result.width,
            "height": result.height,
        }
        if self.cache is not None:
            started = time.perf_counter()
            link = self._cache_link(self.cache.put(self.digest, result))
            self.log.stage("cache_write", started)
        else:
            # Without OUTPUT_BUCKET there is no link to give: deliver answers 413 instead.
            link = partial(pipeline.store_image, result, self.asked.request_id, self.rooms)
        return self._finish(self._deliver(Rendition(result.describe(), result.image, link)))

    def _finish(self, response: Response) -> Response:
        if response.status in (200, 304):
            response.headers.update(self.headers)
            response.headers["Cache-Control"] = self.policy.cache_control
        elif "X-Source-Validator" in self.headers:
            response.headers["X-Source-Validator"] = self.headers["X-Source-Validator"]
        return response

    def _deliver(self, rendition: Rendition) -> Response:
        started = time.perf_counter()
        try:
            return self._answer(rendition)
        finally:
            self.log.stage("respond", started)

    def _answer(self, rendition: Rendition) -> Response:
        return deliver(
            rendition,
            self.request,
            self.asked,
            self.policy,
            self.rooms.output.bucket is not None,
            self.rooms.output.expiry_seconds,
            self.log,
        )


def deliver(
    rendition: Rendition,
    request: ConvertRequest,
    asked: Asked,
    policy: DeliveryPolicy,
    can_link: bool,
    expiry_seconds: int,
    log: RequestLog,
) -> Response:
    """Answer inline when it fits the payload limit, else with a link, else 413."""
    binary = request.response == "binary" and asked.kind != "direct"
    if request.response == "url" or rendition.image is None:
        return link_response(rendition, asked.request_id, expiry_seconds, log, redirect=binary)
    if binary:
        info = rendition.info
        inline = Response(200, image=rendition.image, media_type=info["media_type"])
        inline.headers["Content-Disposition"] = (
            f'inline; filename="{_file_stem(asked.request_id)}.{info["format"]}"'
        )
    else:
        info = rendition.described()
        inline = Response(200, info_document(info, rendition.image, asked.request_id))
    inline.headers["Cache-Control"] = policy.cache_control
    size = asked.measure(inline)
    log.sizes["response_bytes"] = size
    if size <= policy.max_response_bytes:
        return inline
    if can_link:
        return link_response(rendition, asked.request_id, expiry_seconds, log, redirect=binary)
    info = rendition.described()
    fewer = " or fewer frames (frames=N-M)," if info.get("frame_range") else ""
    raise TooLarge(
        f"the {format_label(info['format'])} image is {info['file_size']} bytes "
        f"({info['width']}x{info['height']}); the response would be {size} bytes, above the "
        f"{policy.max_response_bytes}-byte limit (MAX_RESPONSE_BYTES). Ask for a smaller "
        f"width/height,{fewer} or a lower quality, or set OUTPUT_BUCKET so that large "
        "images are returned as a link"
    )


def link_response(
    rendition: Rendition, request_id: str, expiry_seconds: int, log: RequestLog, redirect: bool
) -> Response:
    """Answer with a presigned GET link to the image in OUTPUT_BUCKET."""
    url, key = rendition.link()
    log.fields["output_key"] = key
    document = info_document(rendition.described(), None, request_id, link=(url, expiry_seconds))
    if redirect:
        # The caller wanted the image itself (an <img> tag, Accept: image/*): send it there.
        return Response(303, document, headers={"Location": url})
    return Response(200, document)


def _file_stem(request_id: str) -> str:
    return temp_cleaner.folder_name(request_id)
