"""Explicit, validated settings for every part of the service.

One frozen ``Settings`` object is built once per execution environment.
Precedence for each field: explicit argument, then the environment variable of
the same name in upper case (``MAX_DOWNLOAD_BYTES``), then the ``settings``
section of ``lambda_config.json``, then the default written here.

Secrets (the R2 keys) come from the environment or arguments only, never from
the config file, and never appear in ``repr``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

from errors import ConfigurationError

CONFIG_PATH = Path(__file__).resolve().with_name("lambda_config.json")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
OUTPUT_FORMATS = ("jpg", "jpeg", "png", "webp", "gif")
TRIGGER_FRAMES = ("first", "all")
_HOST_ENTRY_NAME = re.compile(r"^(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")

# Lambda's synchronous response payload limit (6 MB, counted in bytes).
LAMBDA_RESPONSE_LIMIT = 6 * 1024 * 1024


# MAX_PIXEL_BYTES when unset. A render peaks at about 60 MB of interpreter and
# libraries (100 counted) plus a multiple of the decoded frame: 2 for native, 3.6
# for RLE and 16-bit JPEG 2000, 5.5 for 8-bit JPEG 2000 (OpenJPEG holds every
# sample as 32 bits while decoding). Outside Lambda the fixed default applies.
DEFAULT_MAX_PIXEL_BYTES = 256 * 1024 * 1024
RENDER_BASE_MB = 100
RENDER_PEAK_FRAMES = 6


def memory_pixel_budget(environ: Mapping[str, str]) -> int:
    """The largest decoded frame that renders inside AWS_LAMBDA_FUNCTION_MEMORY_SIZE (MB)."""
    memory = environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "").strip()
    if not memory.isdigit():
        return DEFAULT_MAX_PIXEL_BYTES
    spare_mb = max(int(memory) - RENDER_BASE_MB, 16)
    return spare_mb * 1024 * 1024 // RENDER_PEAK_FRAMES


def _secret() -> Any:
    return field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class Settings:
    log_level: str = "INFO"

    # Work folders under /tmp (temp_cleaner).
    temp_root: str = "/tmp/dicom-lambda"
    sweep_interval_seconds: int = 300
    stale_after_seconds: int = 86_400
    min_free_tmp_bytes: int = 64 * 1024 * 1024

    # Downloads and the URL policy (file_downloader).
    max_download_bytes: int = 256 * 1024 * 1024
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 15.0
    download_deadline_seconds: float = 25.0
    download_retries: int = 2
    max_redirects: int = 5
    allowed_hosts: tuple[str, ...] = ()
    allowed_buckets: tuple[str, ...] = ()
    s3_endpoint_url: str | None = None
    r2_endpoint_url: str | None = None
    r2_access_key_id: str | None = _secret()
    r2_secret_access_key: str | None = _secret()
    # CA bundle (file or folder) for HTTPS and FTPS downloads; the standard variable name.
    requests_ca_bundle: str | None = None

    # Rendering (dicom_converter). Unset, the pixel budget follows the function's
    # memory (memory_pixel_budget).
    max_pixel_bytes: int = field(default_factory=lambda: memory_pixel_budget(os.environ))
    default_quality: int = 85
    default_output_format: str = "jpg"
    # Most frames one request may render (frames=all or N-M: animations, contact sheets).
    max_frames: int = 300

    # Responses (lambda_function).
    output_bucket: str | None = None
    output_prefix: str = "converted/"
    url_expiry_seconds: int = 3600
    max_response_bytes: int = LAMBDA_RESPONSE_LIMIT
    cors_origins: tuple[str, ...] = ("*",)
    # Cache-Control of a rendered image: a patient's image must not sit in a shared
    # cache (CDN, proxy); the caller's own browser may keep it and revalidate it with
    # its ETag (If-None-Match), which costs a HEAD of the source, not a render.
    cache_control: str = "private, max-age=3600"

    # Bulk conversion (bulk): S3 upload triggers and batch requests.
    # Events from any other bucket than WATCH_BUCKET are skipped; unset, none count.
    watch_bucket: str | None = None
    watch_prefix: str = ""
    watch_suffixes: tuple[str, ...] = ()
    trigger_frames: str = "first"  # "first" or "all" frames of a multi-frame file
    trigger_window: str | None = None  # "CENTER,WIDTH[,FUNCTION]"
    trigger_preset: str | None = None
    trigger_max_width: int | None = None
    trigger_max_height: int | None = None
    max_batch_urls: int = 20
    batch_workers: int = 4

    def __post_init__(self) -> None:
        _validate(self)


def _parse_tuple(value: Any) -> tuple[str, ...]:
    items = [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(item.strip() for item in items if item.strip())


def _parse_optional_str(value: Any) -> str | None:
    text = str(value).strip()
    return text or None


def _parse_optional_int(value: Any) -> int | None:
    text = str(value).strip()
    return int(text) if text else None


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "tuple[str, ...]": _parse_tuple,
    "str | None": _parse_optional_str,
    "int | None": _parse_optional_int,
}


def _coerce(name: str, type_name: str, value: Any, origin: str) -> Any:
    if value is None:
        return None
    try:
        return _PARSERS[type_name](value)
    except (TypeError, ValueError):
        # The value is left out: a setting may carry a secret or an internal name.
        raise ConfigurationError(
            f"setting {name.upper()} from {origin} must be of type {type_name}"
        ) from None


def _validate(s: Settings) -> None:
    def fail(name: str, rule: str) -> None:
        raise ConfigurationError(f"setting {name.upper()} {rule}")

    if s.log_level.upper() not in LOG_LEVELS:
        fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}")
    if s.default_output_format.lower() not in OUTPUT_FORMATS:
        fail("default_output_format", f"must be one of {', '.join(OUTPUT_FORMATS)}")
    if not 1 <= s.default_quality <= 100:
        fail("default_quality", "must be between 1 and 100")
    for name in (
        "max_download_bytes",
        "max_pixel_bytes",
        "max_response_bytes",
        "url_expiry_seconds",
        "sweep_interval_seconds",
        "stale_after_seconds",
        "connect_timeout_seconds",
        "read_timeout_seconds",
        "download_deadline_seconds",
        "max_frames",
    ):
        if getattr(s, name) <= 0:
            fail(name, "must be greater than 0")
    for name in ("download_retries", "max_redirects", "min_free_tmp_bytes"):
        if getattr(s, name) < 0:
            fail(name, "must not be negative")
    if not s.temp_root:
        fail("temp_root", "must name a folder")
    if not re.match(r"^[\x20-\x7e]{1,200}$", s.cache_control):
        fail("cache_control", "must be a Cache-Control header value of printable ASCII")
    for entry in s.allowed_hosts:
        if not _is_host_entry(entry):
            fail(
                "allowed_hosts",
                "must list host names, *.suffix, IPs, CIDRs or [IPv6], each optionally "
                "followed by :port or :* (e.g. files.internal:8443, 127.0.0.1:*)",
            )
    for name in ("s3_endpoint_url", "r2_endpoint_url"):
        url = getattr(s, name)
        if url is not None and not re.match(r"^https?://[^/?#@\s]+(/[^?#\s]*)?$", url):
            fail(name, "must be an http:// or https:// URL without query or credentials")
    if s.requests_ca_bundle is not None and not Path(s.requests_ca_bundle).exists():
        fail("requests_ca_bundle", "must name an existing CA bundle file or folder")
    _validate_bulk(s, fail)


def _validate_bulk(s: Settings, fail: Callable[[str, str], None]) -> None:
    for name in ("max_batch_urls", "batch_workers"):
        if getattr(s, name) <= 0:
            fail(name, "must be greater than 0")
    if s.trigger_frames not in TRIGGER_FRAMES:
        fail("trigger_frames", f"must be one of {', '.join(TRIGGER_FRAMES)}")
    for name in ("trigger_max_width", "trigger_max_height"):
        value = getattr(s, name)
        if value is not None and not 1 <= value <= 16384:
            fail(name, "must be between 1 and 16384, or empty for no limit")
    if s.watch_bucket is not None and not _BUCKET_NAME.match(s.watch_bucket):
        fail("watch_bucket", "must be an S3 bucket name")


def _is_host_entry(entry: str) -> bool:
    """An ALLOWED_HOSTS entry: a host name, ``*.suffix``, an IP, a CIDR or ``[IPv6]``,
    optionally followed by ``:port`` or ``:*``. ``url_policy.parse_host_entry`` reads
    the same grammar (settings imports nothing of ours but errors; a test checks
    that the two agree)."""
    text = entry.strip().lower()
    bracketed = text.startswith("[")
    if bracketed:
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return False
        port = rest[1:] if rest else None
    elif "/" in text:
        network, _, tail = text.partition("/")
        length, colon, port_text = tail.partition(":")
        host, port = f"{network}/{length}", (port_text if colon else None)
    elif text.count(":") >= 2:
        host, port = text, None
    else:
        host, colon, port_text = text.partition(":")
        port = port_text if colon else None
    if port is not None and port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        return False
    try:
        version = ipaddress.ip_network(host, strict=False).version
        return version == 6 or not bracketed
    except ValueError:
        return not bracketed and bool(_HOST_ENTRY_NAME.match(host))


def read_config_document(path: Path | None = None) -> dict[str, Any]:
    """``lambda_config.json`` as a JSON object ({} when the file does not exist).

    The one reader of that file: the ``settings`` section feeds ``load_settings``,
    the ``function`` section feeds deploy.py and local_api.py.
    """
    path = path or CONFIG_PATH
    if not path.exists():
        return {}
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        # The parser's position is enough to find the fault; its text could quote a value.
        where = f" (line {exc.lineno}, column {exc.colno})" if hasattr(exc, "lineno") else ""
        raise ConfigurationError(f"{path.name} is not valid JSON{where}") from None
    if not isinstance(document, dict):
        raise ConfigurationError(f"{path.name} must hold a JSON object")
    return document


def config_section(name: str, path: Path | None = None) -> dict[str, Any]:
    """One section of ``lambda_config.json``; an error names the section, never a value."""
    values = read_config_document(path).get(name, {})
    if not isinstance(values, dict):
        raise ConfigurationError(f"lambda_config.json: {name!r} must be an object")
    return values


def _config_file_values(path: Path) -> Mapping[str, Any]:
    return config_section("settings", path)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Build settings with the precedence argument > environment > config file > default."""
    overrides = dict(overrides or {})
    environ = os.environ if environ is None else environ
    file_values = _config_file_values(config_path or CONFIG_PATH)
    known = {f.name: f for f in fields(Settings)}
    unknown = sorted(set(overrides) - set(known)) + sorted(set(file_values) - set(known))
    if unknown:
        raise ConfigurationError(f"unknown setting(s): {', '.join(unknown)}")

    values: dict[str, Any] = {}
    for name, spec in known.items():
        type_name = str(spec.type)
        env_name = name.upper()
        if name in overrides:
            values[name] = _coerce(name, type_name, overrides[name], "arguments")
        elif env_name in environ:
            values[name] = _coerce(name, type_name, environ[env_name], "the environment")
        elif name in file_values:
            if spec.metadata.get("secret"):
                raise ConfigurationError(
                    f"{name} must not be stored in lambda_config.json; set {env_name} instead"
                )
            values[name] = _coerce(name, type_name, file_values[name], "lambda_config.json")
    if values.get("max_pixel_bytes") is None:  # unset or null: follow the memory
        values["max_pixel_bytes"] = memory_pixel_budget(environ)
    return Settings(**values)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this execution environment, built and validated once."""
    return load_settings()
