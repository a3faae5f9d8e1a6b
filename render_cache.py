"""Validators and the output cache: what makes a rendered answer reusable.

An answer is fully determined by three things: the source object's version (its
``SourceIdentity`` token: S3 ETag and VersionId, HTTP ETag or Last-Modified plus
length, FTP modification time plus size, or a hash of the bytes), the effective
rendering options (the output format after ``Accept``, the quality default, the
window, size, frames ...), and the renderer itself (``RENDERER_VERSION``). Their
hash is the *render digest*; the answer's strong ETag is that digest plus the form
of the answer (``"<digest>-json"``, ``"<digest>-jpg"``, ...), since the JSON
document and the image itself are different representations of one render.

The output cache (OUTPUT_BUCKET) keeps a render under keys derived from the digest,
``{OUTPUT_PREFIX}cache/<digest>.<format>`` for the image and ``.../<digest>.json``
for what the JSON answer says about it. That document holds the file's selected
DICOM attributes (patient data): it is written only to the function's own output
bucket, and nothing of it is logged.

This module knows no HTTP, no event shape and no settings: it gets narrow values.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import closing
from dataclasses import asdict, dataclass, is_dataclass
from typing import TYPE_CHECKING, Any

import s3_store
from s3_store import S3Config

if TYPE_CHECKING:
    from dicom_converter import RenderOptions, RenderResult

# Part of every ETag and cache key: raise it whenever a change to the renderer can
# change the pixels or the document of an answer, so that no cached copy outlives it.
RENDERER_VERSION = "2026.12.1"

# The largest cached object read back (images above the response limit are answered
# by a link to the object, so the image is read only when it can be answered inline).
MAX_CACHED_DOCUMENT_BYTES = 1024 * 1024
DIGEST_CHARS = 40
# What ``OutputCache.get_image`` answers for an image too long to answer inline
# (never a real image: an encoded image is never empty).
TOO_LONG = b""


def render_digest(identity_token: str, options: RenderOptions, default_quality: int) -> str:
    """The hash of (source version, effective options, renderer version)."""
    canonical = json.dumps(
        {
            "source": identity_token,
            "options": _plain(options),
            "default_quality": default_quality,
            "renderer": RENDERER_VERSION,
        },
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:DIGEST_CHARS]


def _plain(value: Any) -> Any:
    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value


def entity_tag(digest: str, form: str) -> str:
    """The strong ETag of one answer form (``json``, ``url`` or an image format)."""
    return f'"{digest}-{form}"'


def answer_form(response: str, output_format: str) -> str:
    """The form an ETag names: the image format for images, else the document kind."""
    return output_format if response == "binary" else response


def if_none_match(header: str | None, etag: str) -> bool:
    """RFC 9110 13.1.2: does If-None-Match name ``etag`` (weak comparison, or ``*``)?"""
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


# --------------------------------------------------------------------------- the output cache


@dataclass(frozen=True)
class CachedRender:
    """A render read back from the cache: its description, and the image when read."""

    info: dict[str, Any]
    image_key: str
    image: bytes | None = None

    @property
    def media_type(self) -> str:
        return str(self.info["media_type"])

    @property
    def format(self) -> str:
        return str(self.info["format"])


class CacheMiss(LookupError):
    """A cached image whose description is gone (torn write, lifecycle rule): render again."""


@dataclass(frozen=True)
class OutputCache:
    """Renders kept in OUTPUT_BUCKET under OUTPUT_PREFIX + ``cache/``."""

    s3: S3Config
    bucket: str
    prefix: str

    def image_key(self, digest: str, fmt: str) -> str:
        return f"{self.prefix}cache/{digest}.{fmt}"

    def info_key(self, digest: str) -> str:
        return f"{self.prefix}cache/{digest}.json"

    def get(self, digest: str, fmt: str, max_image_bytes: int | None) -> CachedRender | None:
        """The cached render, or None. The image is read only when it is at most
        ``max_image_bytes`` long (None: never; the caller answers with a link)."""
        info = _loads(self._read(self.info_key(digest), MAX_CACHED_DOCUMENT_BYTES))
        if info is None or info.get("format") != fmt:
            return None
        key = self.image_key(digest, fmt)
        image = None
        if max_image_bytes is not None and int(info.get("file_size", 0)) <= max_image_bytes:
            image = self._read(key, max_image_bytes)
            if image is None or len(image) != info.get("file_size"):
                return None
        elif s3_store.head(self.s3, self.bucket, key) is None:
            return None
        return CachedRender(info, key, image)

    def get_image(self, digest: str, fmt: str, max_bytes: int) -> bytes | None:
        """The cached image alone (what a binary answer needs), when it is at most
        ``max_bytes`` long; None when absent; ``TOO_LONG`` when longer."""
        return self._read(self.image_key(digest, fmt), max_bytes, too_long=TOO_LONG)

    def describe(self, digest: str) -> dict[str, Any]:
        """The description kept with a render (``RenderResult.describe()``)."""
        raw = self._read(self.info_key(digest), MAX_CACHED_DOCUMENT_BYTES)
        info = _loads(raw)
        if info is None:
            raise CacheMiss(digest)
        return info

    def put(self, digest: str, result: RenderResult) -> str:
        """Store a render (image first, so a description never names a missing image)."""
        key = self.image_key(digest, result.format)
        s3_store.put_image(self.s3, self.bucket, key, result.image, result.media_type)
        document = json.dumps(result.describe(), separators=(",", ":"), default=str)
        s3_store.put_image(
            self.s3, self.bucket, self.info_key(digest), document.encode(), "application/json"
        )
        return key

    def link(self, key: str, expires_in: int) -> str:
        return s3_store.presign_get(self.s3, self.bucket, key, expires_in)

    def _read(self, key: str, limit: int, too_long: bytes | None = None) -> bytes | None:
        """One cached object; None when it is absent (or not readable as one), and
        ``too_long`` when it is longer than ``limit``."""
        s3 = s3_store.client(self.s3)
        where = f"s3://{self.bucket}/{key}"
        try:
            answer = s3.get_object(Bucket=self.bucket, Key=key)
            with closing(answer["Body"]) as body:
                if int(answer.get("ContentLength") or 0) > limit:
                    return too_long
                data = body.read(limit + 1)
        except s3_store.error_types() as exc:
            if s3_store.failure_kind(exc) in (s3_store.NOT_FOUND, s3_store.DENIED):
                return None
            raise s3_store.translate(exc, where, output=True) from exc
        return data if len(data) <= limit else too_long


def _loads(raw: bytes | None) -> dict[str, Any] | None:
    """A stored description; None when absent, torn or foreign (render again)."""
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    return info if isinstance(info, dict) else None
