"""The run's options: command-line flags merged over lambda_config.json, validated up front."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from deployment.errors import UsageError
from deployment.package import ARCHITECTURES, CONFIG_PATH, RUNTIMES
from errors import ConfigurationError
from settings import config_section, load_settings

APIS = ("rest", "http", "none")
FUNCTION_URL_MODES = ("none", "public", "iam")
MEMORY_RANGE = (128, 10_240)
TIMEOUT_RANGE = (1, 900)
EPHEMERAL_RANGE = (512, 10_240)
# API Gateway stops waiting for the integration after this many seconds.
API_TIMEOUT_LIMIT = {"rest": 29, "http": 30}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Environment variables deploy.py owns; any other variable on the function is kept.
MANAGED_ENV = (
    "LOG_LEVEL",
    "ALLOWED_HOSTS",
    "ALLOWED_BUCKETS",
    "OUTPUT_BUCKET",
    "OUTPUT_PREFIX",
    "WATCH_BUCKET",
    "WATCH_PREFIX",
    "WATCH_SUFFIXES",
)

_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$")
# S3 bucket naming rules (no dots at the edges, no "..", 3-63 characters).
_BUCKET = re.compile(r"^(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# ALLOWED_BUCKETS may hold glob patterns; IAM resource ARNs understand * and ? alike.
_BUCKET_PATTERN = re.compile(r"^[a-z0-9.*?-]{1,63}$")


@dataclass(frozen=True)
class Options:
    function_name: str
    region: str | None
    arch: str
    runtime: str
    memory: int
    timeout: int
    ephemeral_storage: int
    api: str
    function_url: str
    allowed_buckets: tuple[str, ...]
    allowed_hosts: tuple[str, ...]
    output_bucket: str | None
    output_prefix: str
    watch_bucket: str | None
    watch_prefix: str
    watch_suffixes: tuple[str, ...]
    api_key: bool
    log_level: str
    profile: str | None
    endpoint_url: str | None
    code_bucket: str | None
    package: Path | None
    output: Path | None
    package_only: bool
    dry_run: bool
    yes: bool
    delete: bool
    stage: str
    alias: str
    throttle_rate: float
    throttle_burst: int
    reserved_concurrency: int | None = None
    warnings: tuple[str, ...] = ()

    @property
    def environment(self) -> dict[str, str]:
        """The function's managed environment; empty values are left out."""
        values = {
            "LOG_LEVEL": self.log_level,
            "ALLOWED_HOSTS": ",".join(self.allowed_hosts),
            "ALLOWED_BUCKETS": ",".join(self.allowed_buckets),
            "OUTPUT_BUCKET": self.output_bucket or "",
            "OUTPUT_PREFIX": self.output_prefix,
            "WATCH_BUCKET": self.watch_bucket or "",
            "WATCH_PREFIX": self.watch_prefix if self.watch_bucket else "",
            "WATCH_SUFFIXES": ",".join(self.watch_suffixes) if self.watch_bucket else "",
        }
        return {name: value for name, value in values.items() if value}


def load_config(path: Path = CONFIG_PATH) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``function`` and ``settings`` sections of lambda_config.json."""
    if not path.is_file():
        raise UsageError(f"cannot read {path.name}: no such file in {path.parent}")
    try:
        return dict(config_section("function", path)), dict(config_section("settings", path))
    except ConfigurationError as exc:
        raise UsageError(f"cannot read {path.name}: {exc.message}") from exc


def defaults_text() -> str:
    """The help text's line about where the defaults come from."""
    try:
        fn, _ = load_config()
    except UsageError:
        return ""
    shown = ", ".join(f"{key}={value}" for key, value in fn.items())
    return f"Defaults from {CONFIG_PATH.name}: {shown}."


def _split_list(value: str | None, fallback: Iterable[str]) -> tuple[str, ...]:
    items = list(fallback) if value is None else value.split(",")
    return tuple(item.strip() for item in items if str(item).strip())


def _pick(flag: Any, fallback: Any) -> Any:
    """A flag given on the command line wins, even when it is 0 or empty."""
    return flag if flag is not None else fallback


def build_options(args: argparse.Namespace) -> Options:
    """Merge flags over lambda_config.json and validate everything up front."""
    fn, settings = load_config()
    options = Options(
        **_function_values(args, fn),
        **_settings_values(args, settings),
        api_key=args.api_key,
        profile=args.profile,
        endpoint_url=args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        code_bucket=args.code_bucket,
        package=args.package,
        output=args.output,
        package_only=args.package_only,
        dry_run=args.dry_run,
        yes=args.yes,
        delete=args.delete,
    )
    return validate(options)


def _function_values(args: argparse.Namespace, fn: dict[str, Any]) -> dict[str, Any]:
    """Options of the function itself: flags, then the ``function`` section."""
    api = args.api or fn.get("api", "rest")
    timeout = _pick(args.timeout, int(fn.get("timeout_seconds", 29)))
    if args.timeout is None and api in API_TIMEOUT_LIMIT:
        timeout = min(timeout, API_TIMEOUT_LIMIT[api])
    return {
        "function_name": args.function_name or fn.get("name", "dicom-to-jpg-converter"),
        "region": args.region or _default_region(args.profile),
        "arch": args.arch or fn.get("architecture", "x86_64"),
        "runtime": args.runtime or fn.get("runtime", "python3.12"),
        "memory": _pick(args.memory, int(fn.get("memory_mb", 1024))),
        "timeout": timeout,
        "ephemeral_storage": _pick(
            args.ephemeral_storage, int(fn.get("ephemeral_storage_mb", 512))
        ),
        "api": api,
        "function_url": args.function_url or fn.get("function_url", "none"),
        "stage": fn.get("stage", "prod"),
        "alias": fn.get("alias", "live"),
        # Stage throttling (REST and HTTP APIs) and the API key's usage plan alike.
        "throttle_rate": float(
            _pick(args.throttle_rate, fn.get("throttle_rate", fn.get("api_key_rate_limit", 10)))
        ),
        "throttle_burst": int(
            _pick(args.throttle_burst, fn.get("throttle_burst", fn.get("api_key_burst_limit", 20)))
        ),
        "reserved_concurrency": _pick(args.reserved_concurrency, fn.get("reserved_concurrency")),
    }


def _settings_values(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """Runtime settings the function gets as environment: flags, then ``settings``."""
    return {
        "allowed_buckets": _split_list(args.allowed_buckets, settings.get("allowed_buckets", [])),
        "allowed_hosts": _split_list(args.allowed_hosts, settings.get("allowed_hosts", [])),
        "output_bucket": args.output_bucket or settings.get("output_bucket") or None,
        "output_prefix": _pick(args.output_prefix, settings.get("output_prefix", "converted/")),
        "watch_bucket": args.watch_bucket or settings.get("watch_bucket") or None,
        "watch_prefix": _pick(args.watch_prefix, settings.get("watch_prefix") or ""),
        "watch_suffixes": _split_list(args.watch_suffixes, settings.get("watch_suffixes") or []),
        "log_level": (args.log_level or settings.get("log_level", "INFO")).upper(),
    }


def _default_region(profile: str | None) -> str | None:
    if os.environ.get("AWS_REGION"):
        return os.environ["AWS_REGION"]
    try:
        import boto3

        return boto3.Session(profile_name=profile).region_name
    except Exception:
        # No boto3 or an unknown profile: the region check reports it.
        return None


def validate(o: Options) -> Options:
    """Reject bad values before anything is built or created; collect warnings."""
    errors = [*_choice_errors(o), *_range_errors(o), *_name_errors(o), *_combination_errors(o)]
    if not errors and not o.package_only and not o.delete:
        errors.extend(runtime_settings_errors(o))
    if errors:
        raise UsageError("\n".join(errors))
    return replace(o, warnings=tuple(_warnings(o)))


def _choice_errors(o: Options) -> list[str]:
    choices = (
        ("--runtime", o.runtime, tuple(RUNTIMES)),
        ("--arch", o.arch, ARCHITECTURES),
        ("--api", o.api, APIS),
        ("--function-url", o.function_url, FUNCTION_URL_MODES),
        ("--log-level", o.log_level, LOG_LEVELS),
    )
    return [
        f"{flag} must be one of {', '.join(allowed)}, got {value!r}"
        for flag, value, allowed in choices
        if value not in allowed
    ]


def _range_errors(o: Options) -> list[str]:
    ranges = (
        ("--memory (MB)", o.memory, MEMORY_RANGE),
        ("--timeout (seconds)", o.timeout, TIMEOUT_RANGE),
        ("--ephemeral-storage (MB)", o.ephemeral_storage, EPHEMERAL_RANGE),
    )
    errors = [
        f"{name} must be between {low} and {high}, got {value}"
        for name, value, (low, high) in ranges
        if not low <= value <= high
    ]
    if not 0 < o.throttle_rate <= 10_000:
        errors.append(f"--throttle-rate must be above 0 and at most 10000, got {o.throttle_rate:g}")
    if not 0 < o.throttle_burst <= 5_000:
        errors.append(f"--throttle-burst must be between 1 and 5000, got {o.throttle_burst}")
    if o.reserved_concurrency is not None and not 1 <= o.reserved_concurrency <= 10_000:
        errors.append(
            f"--reserved-concurrency must be between 1 and 10000, got {o.reserved_concurrency}"
        )
    return errors


def _name_errors(o: Options) -> list[str]:
    errors = []
    if not _FUNCTION_NAME.match(o.function_name):
        errors.append(
            "FUNCTION_NAME may hold only letters, digits, '-' and '_' (1-64), "
            f"got {o.function_name!r}"
        )
    if not o.package_only:
        if not o.region:
            errors.append("REGION is required (or set AWS_REGION / a profile region)")
        elif not _REGION.match(o.region):
            errors.append(f"REGION does not look like an AWS region: {o.region!r}")
    errors.extend(
        f"--allowed-buckets: {name!r} is not a bucket name or a pattern with * or ?"
        for name in o.allowed_buckets
        if not _BUCKET_PATTERN.match(name)
    )
    buckets = (
        ("--output-bucket", o.output_bucket),
        ("--code-bucket", o.code_bucket),
        ("--watch-bucket", o.watch_bucket),
    )
    for flag, name in buckets:
        if name and not _BUCKET.match(name):
            errors.append(f"{flag}: {name!r} is not a valid S3 bucket name")
    return errors


def _combination_errors(o: Options) -> list[str]:
    errors = []
    if o.api_key and o.api != "rest":
        errors.append("--api-key needs --api rest (usage plans belong to REST APIs)")
    if o.package is not None and not o.package.is_file():
        errors.append(f"--package: no such file: {o.package}")
    if o.package is not None and o.output is not None:
        errors.append("--output names where a build goes; --package deploys a zip as it is")
    if o.package_only and (o.delete or o.dry_run):
        errors.append("--package-only cannot be combined with --delete or --dry-run")
    if o.watch_bucket and o.watch_bucket == o.code_bucket:
        errors.append("--watch-bucket and --code-bucket must be different buckets")
    return errors


def _warnings(o: Options) -> list[str]:
    warnings = []
    limit = API_TIMEOUT_LIMIT.get(o.api)
    if limit is not None and o.timeout > limit:
        warnings.append(
            f"--timeout {o.timeout} s is longer than the {o.api.upper()} API waits "
            f"(about {limit} s); callers get 504 while the function still runs"
        )
    if "*" in o.allowed_buckets:
        warnings.append("--allowed-buckets '*' lets the function read every bucket it can see")
    if o.api == "none" and o.function_url == "none" and not o.delete and not o.package_only:
        warnings.append("no API and no Function URL: invoke with `aws lambda invoke` only")
    if open_fetcher(o) and not o.delete and not o.package_only:
        warnings.append(OPEN_FETCHER_WARNING)
    return warnings


OPEN_FETCHER_WARNING = (
    "the API is open (no API key, no auth) and ALLOWED_HOSTS is empty: anyone who finds "
    "the URL can make the function download any public file, up to MAX_DOWNLOAD_BYTES "
    "per request, at your cost. Set --allowed-hosts to the hosts that hold your files, "
    "add --api-key, or keep the URL private; throttling and --reserved-concurrency only "
    "cap the rate"
)


def open_fetcher(o: Options) -> bool:
    """Whether anyone may call the function through a URL and have it fetch any host."""
    open_api = (o.api == "rest" and not o.api_key) or o.api == "http"
    return (open_api or o.function_url == "public") and not o.allowed_hosts


def runtime_settings_errors(o: Options) -> list[str]:
    """Validate the settings the function will start with, as the function will.

    ``bulk.check_settings`` is the check the handler runs at start (outputs that
    would trigger the function again, a trigger view the converter cannot read).
    """
    # Imported here: only a deploy validates runtime settings, not --package-only
    # or --delete, and bulk brings the handler's modules with it.
    from bulk import check_settings

    try:
        check_settings(load_settings(environ=o.environment, config_path=CONFIG_PATH))
    except ConfigurationError as exc:
        return [f"runtime settings: {exc.message}"]
    return []
