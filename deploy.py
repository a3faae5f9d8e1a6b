"""Package the function for the Lambda platform and create or update every AWS resource.

    python deploy.py FUNCTION_NAME REGION [options]      create or update everything
    python deploy.py FUNCTION_NAME REGION --dry-run      print the plan, change nothing
    python deploy.py --delete FUNCTION_NAME REGION       remove what deploy.py created
    python deploy.py --package-only [--arch A]           only build the zip

Defaults come from the ``function`` section of ``lambda_config.json``; the runtime
settings the function reads (LOG_LEVEL, ALLOWED_HOSTS, ...) become environment
variables of the function. Every run converges on the requested state: what
already matches is reported as "unchanged" and left alone.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

PROJECT_DIR = Path(__file__).resolve().parent
CONFIG_PATH = PROJECT_DIR / "lambda_config.json"
REQUIREMENTS = PROJECT_DIR / "requirements.txt"
BUILD_DIR = PROJECT_DIR / "build"
WHEEL_CACHE = BUILD_DIR / "wheel-cache"

HANDLER = "lambda_function.lambda_handler"
HANDLER_MODULE = "lambda_function.py"
# Top-level files that are tools or tests, not part of the function.
NOT_SHIPPED = {"deploy.py", "demo.py", "conftest.py", "setup.py", "noxfile.py"}

# Runtime name -> Python version; python3.9 cannot run pydicom 3 and is deprecated.
RUNTIMES = {"python3.12": "3.12", "python3.13": "3.13"}
ARCHITECTURES = ("x86_64", "arm64")
# Lambda's arm64 is the manylinux "aarch64" platform.
PLATFORM_MACHINE = {"x86_64": "x86_64", "arm64": "aarch64"}
# ELF e_machine values, used to prove a package's binaries fit the architecture.
ELF_MACHINE = {"x86_64": 62, "arm64": 183}
APIS = ("rest", "http", "none")
FUNCTION_URL_MODES = ("none", "public", "iam")

# The Lambda Python runtime ships these; nothing else in requirements.txt needs them.
RUNTIME_PROVIDED = {"boto3", "botocore", "s3transfer"}

MEMORY_RANGE = (128, 10_240)
TIMEOUT_RANGE = (1, 900)
EPHEMERAL_RANGE = (512, 10_240)
# API Gateway stops waiting for the integration after this many seconds.
API_TIMEOUT_LIMIT = {"rest": 29, "http": 30}
MAX_UNZIPPED_BYTES = 262_144_000  # Lambda's 250 MB limit for a function's unzipped code
DIRECT_UPLOAD_LIMIT = 50 * 1024 * 1024  # larger zips must go through S3

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Python logging level -> Lambda LoggingConfig ApplicationLogLevel.
LAMBDA_LOG_LEVEL = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARN",
    "ERROR": "ERROR",
    "CRITICAL": "FATAL",
}
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

MANAGED_TAG_KEY = "managed-by"
MANAGED_TAG_VALUE = "dicom-lambda-deploy"
TAGS = {MANAGED_TAG_KEY: MANAGED_TAG_VALUE}

BASIC_EXECUTION_POLICY = "policy/service-role/AWSLambdaBasicExecutionRole"
INLINE_POLICY_NAME = "s3-least-privilege"
# Only with --watch-bucket: read the watched prefix (and write outputs beside it).
WATCH_POLICY_NAME = "s3-bulk-trigger"
LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}

REST_ROUTES = {"/convert": ("GET", "POST"), "/health": ("GET",)}
# With --api-key only the renderer needs the key; health checks stay open.
KEYED_PATHS = ("/convert",)
HTTP_ROUTE_KEYS = ("GET /convert", "POST /convert", "GET /health")
BINARY_MEDIA_TYPE = "image/*"
HTTP_STAGE = "$default"  # keeps rawPath free of a stage prefix in payload 2.0

SID_REST = "apigateway-rest-invoke"
SID_HTTP = "apigateway-http-invoke"
SID_URL_PUBLIC = "function-url-public"
SID_URL_INVOKE = "function-url-invoke"
SID_S3_TRIGGER = "s3-bucket-notification"
NOTIFICATION_KEYS = (
    "TopicConfigurations",
    "QueueConfigurations",
    "LambdaFunctionConfigurations",
    "EventBridgeConfiguration",
)

CODE_KEY_PREFIX = "deploy-py"
# A fresh role can take several seconds before Lambda may assume it.
ROLE_READY_SECONDS = 90.0
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

T = TypeVar("T")


class UsageError(Exception):
    """An invalid flag or combination; nothing has been touched."""


class DeployError(Exception):
    """A step failed; the message says what to change."""


# --------------------------------------------------------------------------- options


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
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path.name}: {exc}") from exc
    return dict(document.get("function", {})), dict(document.get("settings", {}))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Package the DICOM renderer and deploy it to AWS Lambda.",
        epilog=_defaults_text(),
    )
    parser.add_argument("function_name", nargs="?", help="Lambda function name")
    parser.add_argument("region", nargs="?", help="AWS region, e.g. us-east-1")
    parser.add_argument("--arch", choices=ARCHITECTURES)
    parser.add_argument("--runtime", help=f"one of {', '.join(RUNTIMES)}")
    parser.add_argument("--memory", type=int, metavar="MB")
    parser.add_argument("--timeout", type=int, metavar="S")
    parser.add_argument("--ephemeral-storage", type=int, metavar="MB")
    parser.add_argument("--api", choices=APIS, help="API Gateway in front of the function")
    parser.add_argument("--function-url", choices=FUNCTION_URL_MODES)
    parser.add_argument("--allowed-buckets", metavar="B1,B2", help="buckets the role may read")
    parser.add_argument("--allowed-hosts", metavar="H1,H2", help="hosts the function may fetch")
    parser.add_argument("--output-bucket", metavar="B", help="bucket for images too big to return")
    parser.add_argument("--output-prefix", metavar="P", help="key prefix in the output bucket")
    parser.add_argument(
        "--watch-bucket", metavar="B", help="convert new objects in this bucket as they arrive"
    )
    parser.add_argument("--watch-prefix", metavar="P", help="only keys under this prefix count")
    parser.add_argument(
        "--watch-suffixes", metavar="S1,S2", help="only keys ending so count, e.g. .dcm"
    )
    parser.add_argument("--api-key", action="store_true", help="REST API: require an API key")
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    parser.add_argument("--profile", help="AWS named profile")
    parser.add_argument("--endpoint-url", help="send every AWS call to this endpoint")
    parser.add_argument("--code-bucket", metavar="B", help="upload the zip through this bucket")
    parser.add_argument("--package", type=Path, metavar="ZIP", help="deploy this zip, no build")
    parser.add_argument("--package-only", action="store_true", help="build the zip and stop")
    parser.add_argument(
        "--output", type=Path, metavar="ZIP", help="where to write the built zip (default build/)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--delete", action="store_true", help="remove what deploy.py created")
    return parser.parse_args(argv)


def _defaults_text() -> str:
    try:
        fn, _ = load_config()
    except UsageError:
        return ""
    shown = ", ".join(f"{key}={value}" for key, value in fn.items())
    return f"Defaults from {CONFIG_PATH.name}: {shown}."


def _split_list(value: str | None, fallback: Iterable[str]) -> tuple[str, ...]:
    items = list(fallback) if value is None else value.split(",")
    return tuple(item.strip() for item in items if str(item).strip())


def build_options(args: argparse.Namespace) -> Options:
    """Merge flags over lambda_config.json and validate everything up front."""
    fn, settings = load_config()
    api = args.api or fn.get("api", "rest")
    timeout = args.timeout if args.timeout is not None else int(fn.get("timeout_seconds", 29))
    if args.timeout is None and api in API_TIMEOUT_LIMIT:
        timeout = min(timeout, API_TIMEOUT_LIMIT[api])
    options = Options(
        function_name=args.function_name or fn.get("name", "dicom-to-jpg-converter"),
        region=args.region or _default_region(args.profile),
        arch=args.arch or fn.get("architecture", "x86_64"),
        runtime=args.runtime or fn.get("runtime", "python3.12"),
        memory=args.memory if args.memory is not None else int(fn.get("memory_mb", 1024)),
        timeout=timeout,
        ephemeral_storage=(
            args.ephemeral_storage
            if args.ephemeral_storage is not None
            else int(fn.get("ephemeral_storage_mb", 512))
        ),
        api=api,
        function_url=args.function_url or fn.get("function_url", "none"),
        allowed_buckets=_split_list(args.allowed_buckets, settings.get("allowed_buckets", [])),
        allowed_hosts=_split_list(args.allowed_hosts, settings.get("allowed_hosts", [])),
        output_bucket=(args.output_bucket or settings.get("output_bucket") or None),
        output_prefix=(
            args.output_prefix
            if args.output_prefix is not None
            else settings.get("output_prefix", "converted/")
        ),
        watch_bucket=args.watch_bucket or settings.get("watch_bucket") or None,
        watch_prefix=(
            args.watch_prefix
            if args.watch_prefix is not None
            else settings.get("watch_prefix") or ""
        ),
        watch_suffixes=_split_list(args.watch_suffixes, settings.get("watch_suffixes") or []),
        api_key=args.api_key,
        log_level=(args.log_level or settings.get("log_level", "INFO")).upper(),
        profile=args.profile,
        endpoint_url=args.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        code_bucket=args.code_bucket,
        package=args.package,
        output=args.output,
        package_only=args.package_only,
        dry_run=args.dry_run,
        yes=args.yes,
        delete=args.delete,
        stage=fn.get("stage", "prod"),
        alias=fn.get("alias", "live"),
        throttle_rate=float(fn.get("api_key_rate_limit", 10)),
        throttle_burst=int(fn.get("api_key_burst_limit", 20)),
    )
    return validate(options)


def _default_region(profile: str | None) -> str | None:
    if os.environ.get("AWS_REGION"):
        return os.environ["AWS_REGION"]
    try:
        import boto3

        return boto3.Session(profile_name=profile).region_name
    except Exception:
        # No boto3 or an unknown profile: the region check below reports it.
        return None


_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d+$")
# S3 bucket naming rules (no dots at the edges, no "..", 3-63 characters).
_BUCKET = re.compile(r"^(?!.*\.\.)[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# ALLOWED_BUCKETS may hold glob patterns; IAM resource ARNs understand * and ? alike.
_BUCKET_PATTERN = re.compile(r"^[a-z0-9.*?-]{1,63}$")


def validate(o: Options) -> Options:
    """Reject bad values before anything is built or created; collect warnings."""
    errors = [*_choice_errors(o), *_range_errors(o), *_name_errors(o), *_combination_errors(o)]
    if not errors and not o.package_only and not o.delete:
        errors.extend(_runtime_settings_errors(o))
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
    return [
        f"{name} must be between {low} and {high}, got {value}"
        for name, value, (low, high) in ranges
        if not low <= value <= high
    ]


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
    return warnings


def _runtime_settings_errors(o: Options) -> list[str]:
    """Validate the settings the function will start with, as the function will."""
    sys.path.insert(0, str(PROJECT_DIR))
    try:
        from errors import ConfigurationError
        from settings import load_settings
    except ImportError:
        return []
    finally:
        sys.path.remove(str(PROJECT_DIR))
    try:
        load_settings(environ=o.environment, config_path=CONFIG_PATH)
    except ConfigurationError as exc:
        return [f"runtime settings: {exc.message}"]
    return []


# --------------------------------------------------------------------------- progress


class Report:
    """Step-by-step progress; in a dry run every change reads "would be ..."."""

    def __init__(self, total_steps: int, dry_run: bool) -> None:
        self.total = total_steps
        self.current = 0
        self.dry_run = dry_run
        self.changes = 0

    def step(self, title: str) -> None:
        self.current += 1
        print(f"[{self.current}/{self.total}] {title}", flush=True)

    def note(self, text: str) -> None:
        print(f"      {text}", flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def unchanged(self, what: str, detail: str = "") -> None:
        self.note(f"{what}: unchanged{_paren(detail)}")

    def changed(self, what: str, verb: str, detail: str = "") -> None:
        self.changes += 1
        status = f"would be {verb}" if self.dry_run else verb
        self.note(f"{what}: {status}{_paren(detail)}")


def _paren(detail: str) -> str:
    return f" ({detail})" if detail else ""


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB"


# --------------------------------------------------------------------------- package


@dataclass(frozen=True)
class Package:
    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    files: int
    sha256_hex: str

    @property
    def code_sha256(self) -> str:
        """The digest in the form Lambda reports as CodeSha256."""
        return base64.b64encode(bytes.fromhex(self.sha256_hex)).decode("ascii")

    @property
    def size_text(self) -> str:
        return (
            f"{_megabytes(self.zipped_bytes)} zipped, {_megabytes(self.unzipped_bytes)} "
            f"unzipped, {self.files} files"
        )


def package_path(runtime: str, arch: str) -> Path:
    return BUILD_DIR / f"dicom-lambda-{runtime}-{arch}.zip"


def lambda_requirements(source: Path = REQUIREMENTS) -> list[str]:
    """requirements.txt without what the Lambda runtime already provides."""
    kept = []
    for line in source.read_text(encoding="utf-8").splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", text)
        name = match.group(1).lower().replace("_", "-") if match else ""
        if name not in RUNTIME_PROVIDED:
            kept.append(text)
    return kept


def pip_platform_args(runtime: str, arch: str) -> list[str]:
    """Target the Lambda platform whatever the host: manylinux wheels only.

    manylinux_2_28 comes first because manylinux2014 alone silently resolves to
    old numpy/Pillow releases that still published manylinux2014 wheels.
    """
    machine = PLATFORM_MACHINE[arch]
    return [
        "--platform", f"manylinux_2_28_{machine}",
        "--platform", f"manylinux2014_{machine}",
        "--only-binary=:all:",
        "--python-version", RUNTIMES[runtime],
        "--implementation", "cp",
    ]  # fmt: skip


def _pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=False,
    )


def install_dependencies(requirements: Path, target: Path, runtime: str, arch: str) -> None:
    """Install into ``target`` from the wheel cache, downloading only what is missing."""
    platform = pip_platform_args(runtime, arch)
    install = ["install", "--quiet", "--no-compile", "--target", str(target), *platform]
    offline = [*install, "--no-index", "--find-links", str(WHEEL_CACHE), "-r", str(requirements)]
    if WHEEL_CACHE.is_dir() and _pip(*offline).returncode == 0:
        return
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    print(f"      downloading wheels into {_rel(WHEEL_CACHE)}", flush=True)
    download = _pip("download", "--quiet", "--dest", str(WHEEL_CACHE), *platform,
                    "-r", str(requirements))  # fmt: skip
    if download.returncode != 0:
        raise DeployError(f"pip download failed:\n{download.stderr.strip()}")
    shutil.rmtree(target, ignore_errors=True)
    result = _pip(*offline)
    if result.returncode != 0:
        raise DeployError(f"pip install failed:\n{result.stderr.strip()}")


def prune(root: Path) -> None:
    """Drop what the function never loads: scripts, tests, caches, install records."""
    shutil.rmtree(root / "bin", ignore_errors=True)
    for name in RUNTIME_PROVIDED:
        shutil.rmtree(root / name, ignore_errors=True)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and path.name in ("__pycache__", "tests"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.suffix in (".pyc", ".pyo"):
            path.unlink(missing_ok=True)
        elif path.parent.name.endswith(".dist-info") and path.name in (
            "RECORD",
            "INSTALLER",
            "REQUESTED",
            "direct_url.json",
        ):
            # RECORD lists every file with its hash; METADATA and entry_points.txt
            # stay because pylibjpeg finds its decoders through entry points.
            path.unlink(missing_ok=True)
    for dist_info in root.glob("*.dist-info"):
        name = dist_info.name.split("-", 1)[0].lower().replace("_", "-")
        if name in RUNTIME_PROVIDED:
            shutil.rmtree(dist_info)


def project_files() -> list[Path]:
    """The function's own modules and its config: top-level *.py except tools and tests."""
    files = [
        path
        for path in sorted(PROJECT_DIR.glob("*.py"))
        if path.name not in NOT_SHIPPED
        and not path.name.startswith("test_")
        and not path.name.endswith("_test.py")
    ]
    return [*files, CONFIG_PATH]


def write_zip(source: Path, dest: Path) -> None:
    """A reproducible zip: sorted entries, fixed timestamps and Unix permissions."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    entries = sorted(
        (p for p in source.rglob("*") if p.is_file()),
        key=lambda p: p.relative_to(source).as_posix(),
    )
    # A private temporary name, so concurrent builds never write into one file.
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in entries:
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # Unix, so permissions mean the same on every host
            mode = 0o755 if ".so" in path.suffixes else 0o644
            info.external_attr = (0o100000 | mode) << 16
            archive.writestr(info, path.read_bytes(), compresslevel=6)
    partial.replace(dest)


def describe_zip(path: Path) -> Package:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    with zipfile.ZipFile(path) as archive:
        infos = [info for info in archive.infolist() if not info.is_dir()]
    return Package(
        path=path,
        zipped_bytes=path.stat().st_size,
        unzipped_bytes=sum(info.file_size for info in infos),
        files=len(infos),
        sha256_hex=digest.hexdigest(),
    )


def elf_machine(head: bytes) -> int | None:
    """The e_machine field of an ELF header, or None for other files."""
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    byteorder = "little" if head[5] == 1 else "big"
    return int.from_bytes(head[18:20], byteorder)


def check_package(package: Package, runtime: str, arch: str) -> None:
    """Refuse a zip Lambda would reject or could not run on this runtime/arch."""
    if package.unzipped_bytes > MAX_UNZIPPED_BYTES:
        raise DeployError(
            f"package is {_megabytes(package.unzipped_bytes)} unzipped; Lambda allows "
            f"{_megabytes(MAX_UNZIPPED_BYTES)}. Trim requirements.txt or use a container image."
        )
    wanted_abi = f".cpython-{RUNTIMES[runtime].replace('.', '')}-"
    with zipfile.ZipFile(package.path) as archive:
        names = set(archive.namelist())
        if HANDLER_MODULE not in names:
            raise DeployError(f"{package.path.name} has no {HANDLER_MODULE} at its root")
        for name in sorted(names):
            if ".so" not in Path(name).suffixes:
                continue
            with archive.open(name) as member:
                machine = elf_machine(member.read(20))
            if machine is not None and machine != ELF_MACHINE[arch]:
                raise DeployError(f"{name} is not built for {arch}; rebuild with --arch {arch}")
            if ".cpython-3" in name and wanted_abi not in name:
                raise DeployError(f"{name} is not built for {runtime}")


def build_package(runtime: str, arch: str, dest: Path | None = None) -> Package:
    """Build the deployment zip for the Lambda platform in a clean folder."""
    if not (PROJECT_DIR / HANDLER_MODULE).is_file():
        raise DeployError(f"{HANDLER_MODULE} is missing; the handler is {HANDLER}")
    with tempfile.TemporaryDirectory(prefix="dicom-lambda-build-") as tmp:
        staging = Path(tmp) / "package"
        requirements = Path(tmp) / "requirements.lambda.txt"
        requirements.write_text("\n".join(lambda_requirements()) + "\n", encoding="utf-8")
        install_dependencies(requirements, staging, runtime, arch)
        prune(staging)
        for path in project_files():
            shutil.copy2(path, staging / path.name)
        dest = dest or package_path(runtime, arch)
        write_zip(staging, dest)
    return describe_zip(dest)


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- AWS


class Aws:
    """boto3 clients for one region, profile and (optional) endpoint."""

    def __init__(self, options: Options) -> None:
        import boto3
        from botocore.config import Config

        self.region = options.region or ""
        self.session = boto3.Session(profile_name=options.profile, region_name=self.region)
        self._endpoint = options.endpoint_url
        self._config = Config(retries={"max_attempts": 8, "mode": "standard"})
        self._clients: dict[str, Any] = {}
        self._identity: dict[str, str] | None = None

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(
                service, endpoint_url=self._endpoint, config=self._config
            )
        return self._clients[service]

    @property
    def identity(self) -> dict[str, str]:
        if self._identity is None:
            self._identity = self.client("sts").get_caller_identity()
        return self._identity

    @property
    def account(self) -> str:
        return self.identity["Account"]

    @property
    def partition(self) -> str:
        return self.identity["Arn"].split(":")[1]

    @property
    def url_suffix(self) -> str:
        return "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    return error_code(exc) in (
        "NoSuchEntity",
        "ResourceNotFoundException",
        "NotFoundException",
        "NoSuchKey",
        "404",
        "NoSuchBucket",
        "NoSuchTagSet",
    )


def get_or_none(call: Callable[..., T], **kwargs: Any) -> T | None:
    from botocore.exceptions import ClientError

    try:
        return call(**kwargs)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


# --------------------------------------------------------------------------- deployer


@dataclass
class Outcome:
    """What the summary prints."""

    function_arn: str = ""
    version: str = ""
    alias_arn: str = ""
    endpoints: dict[str, str] = field(default_factory=dict)
    function_url: str = ""
    api_key_id: str = ""


class Deployer:
    def __init__(self, options: Options, aws: Aws, report: Report) -> None:
        self.o = options
        self.aws = aws
        self.report = report
        self.dry = options.dry_run
        self.outcome = Outcome()
        name = options.function_name
        self.role_name = f"{name[:59]}-role"
        self.rest_api_name = f"{name}-api"
        self.http_api_name = f"{name}-http-api"
        self.api_key_name = f"{name}-key"
        self.usage_plan_name = f"{name}-plan"
        self.function_exists = False
        self.function_changed = False
        self.deleting = False
        # WATCH_BUCKET of the function as found, so a trigger left behind can be removed.
        self.previous_watch_bucket: str | None = None

    # ----------------------------------------------------------------- helpers

    @property
    def iam(self) -> Any:
        return self.aws.client("iam")

    @property
    def lam(self) -> Any:
        return self.aws.client("lambda")

    @property
    def apigw(self) -> Any:
        return self.aws.client("apigateway")

    @property
    def apigw2(self) -> Any:
        return self.aws.client("apigatewayv2")

    @property
    def s3(self) -> Any:
        return self.aws.client("s3")

    def arn(self, service: str, resource: str, region: str | None = None) -> str:
        region = self.aws.region if region is None else region
        account = "" if service in ("s3",) else self.aws.account
        if service == "iam":
            region = ""
        return f"arn:{self.aws.partition}:{service}:{region}:{account}:{resource}"

    @property
    def function_arn(self) -> str:
        return self.arn("lambda", f"function:{self.o.function_name}")

    @property
    def alias_arn(self) -> str:
        return f"{self.function_arn}:{self.o.alias}"

    def execute_api_arn(self, api_id: str) -> str:
        return self.arn("execute-api", f"{api_id}/*")

    def apply(self, what: str, verb: str, action: Callable[[], T], detail: str = "") -> T | None:
        """Run a change, or in a dry run only say what it would be."""
        if self.dry:
            self.report.changed(what, verb, detail)
            return None
        result = action()
        self.report.changed(what, verb, detail)
        return result

    # ----------------------------------------------------------------- IAM

    def ensure_role(self) -> str:
        role_arn = self.arn("iam", f"role/{self.role_name}")
        role = get_or_none(self.iam.get_role, RoleName=self.role_name)
        created = False
        if role is None:
            self.apply(
                f"role {self.role_name}",
                "created",
                lambda: self.iam.create_role(
                    RoleName=self.role_name,
                    AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY),
                    Description=f"Execution role of Lambda function {self.o.function_name}",
                    Tags=[{"Key": k, "Value": v} for k, v in TAGS.items()],
                ),
            )
            created = True
        else:
            role_arn = role["Role"]["Arn"]
            trust = role["Role"].get("AssumeRolePolicyDocument")
            if isinstance(trust, str):
                trust = json.loads(trust)
            if canonical(trust) != canonical(LAMBDA_TRUST_POLICY):
                self.apply(
                    f"role {self.role_name} trust policy",
                    "updated",
                    lambda: self.iam.update_assume_role_policy(
                        RoleName=self.role_name, PolicyDocument=json.dumps(LAMBDA_TRUST_POLICY)
                    ),
                )
            else:
                self.report.unchanged(f"role {self.role_name}")
        self._ensure_basic_execution(created)
        self._ensure_inline_policy(created)
        self._converge_role_policy(WATCH_POLICY_NAME, self.watch_policy(), created)
        if created and not self.dry:
            self.iam.get_waiter("role_exists").wait(
                RoleName=self.role_name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
            )
        return role_arn

    def _ensure_basic_execution(self, role_is_new: bool) -> None:
        policy_arn = f"arn:{self.aws.partition}:iam::aws:{BASIC_EXECUTION_POLICY}"
        attached: set[str] = set()
        if not role_is_new:
            pages = self.iam.get_paginator("list_attached_role_policies").paginate(
                RoleName=self.role_name
            )
            attached = {p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]}
        what = "managed policy AWSLambdaBasicExecutionRole (CloudWatch Logs)"
        if policy_arn in attached:
            self.report.unchanged(what)
            return
        self.apply(
            what,
            "attached",
            lambda: self.iam.attach_role_policy(RoleName=self.role_name, PolicyArn=policy_arn),
        )

    def s3_policy(self) -> dict[str, Any] | None:
        """Least privilege: read only the allowed buckets, write only the output prefix."""
        p = self.aws.partition
        statements = []
        if self.o.allowed_buckets:
            statements.append(
                {
                    "Sid": "ReadAllowedBuckets",
                    "Effect": "Allow",
                    "Action": "s3:GetObject",
                    "Resource": [f"arn:{p}:s3:::{b}/*" for b in self.o.allowed_buckets],
                }
            )
        if self.o.output_bucket:
            # GetObject on the function's own output is what a presigned link,
            # signed by this role, needs to be readable by the caller.
            statements.append(
                {
                    "Sid": "WriteOutputPrefix",
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:GetObject"],
                    "Resource": f"arn:{p}:s3:::{self.o.output_bucket}/{self.o.output_prefix}*",
                }
            )
        if not statements:
            return None
        return {"Version": "2012-10-17", "Statement": statements}

    def _ensure_inline_policy(self, role_is_new: bool) -> None:
        desired = self.s3_policy()
        what = f"inline policy {INLINE_POLICY_NAME}"
        current = None
        if not role_is_new:
            found = get_or_none(
                self.iam.get_role_policy, RoleName=self.role_name, PolicyName=INLINE_POLICY_NAME
            )
            if found is not None:
                document = found["PolicyDocument"]
                current = json.loads(document) if isinstance(document, str) else document
        if not self.o.allowed_buckets:
            self.report.note(
                "no --allowed-buckets: the role gets no S3 read access, so s3:// URLs are "
                "refused by S3 (403)"
            )
        if desired is None:
            if current is None:
                self.report.unchanged(what, "none needed: no S3 access")
            else:
                self.apply(
                    what,
                    "deleted",
                    lambda: self.iam.delete_role_policy(
                        RoleName=self.role_name, PolicyName=INLINE_POLICY_NAME
                    ),
                    "no S3 access",
                )
            return
        detail = self._policy_detail()
        if current is not None and canonical(current) == canonical(desired):
            self.report.unchanged(what, detail)
            return
        self.apply(
            what,
            "created" if current is None else "updated",
            lambda: self.iam.put_role_policy(
                RoleName=self.role_name,
                PolicyName=INLINE_POLICY_NAME,
                PolicyDocument=json.dumps(desired),
            ),
            detail,
        )

    def watch_policy(self) -> dict[str, Any] | None:
        """With --watch-bucket: read the watched prefix; write outputs there when they
        stay in that bucket (OUTPUT_BUCKET's own statement covers another bucket).

        GetObjectVersion reads the exact version a notification names in a versioned
        bucket; GetObject on the outputs is what HeadObject, the redelivery check, needs.
        """
        bucket = self.o.watch_bucket
        if not bucket:
            return None
        p = self.aws.partition
        statements: list[dict[str, Any]] = [
            {
                "Sid": "ReadWatchedPrefix",
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": f"arn:{p}:s3:::{bucket}/{self.o.watch_prefix}*",
            }
        ]
        if not self.o.output_bucket or self.o.output_bucket == bucket:
            statements.append(
                {
                    "Sid": "WriteOutputsInWatchedBucket",
                    "Effect": "Allow",
                    "Action": ["s3:PutObject", "s3:GetObject"],
                    "Resource": f"arn:{p}:s3:::{bucket}/{self.o.output_prefix}*",
                }
            )
        return {"Version": "2012-10-17", "Statement": statements}

    def _converge_role_policy(
        self, name: str, desired: dict[str, Any] | None, role_is_new: bool
    ) -> None:
        """Create, update or delete one inline policy of the role so it matches ``desired``."""
        what = f"inline policy {name}"
        current = None
        if not role_is_new:
            found = get_or_none(self.iam.get_role_policy, RoleName=self.role_name, PolicyName=name)
            if found is not None:
                document = found["PolicyDocument"]
                current = json.loads(document) if isinstance(document, str) else document
        if desired is None:
            if current is not None:
                self.apply(
                    what,
                    "deleted",
                    lambda: self.iam.delete_role_policy(RoleName=self.role_name, PolicyName=name),
                )
            return
        resources = "; ".join(str(statement["Resource"]) for statement in desired["Statement"])
        if current is not None and canonical(current) == canonical(desired):
            self.report.unchanged(what, resources)
            return
        self.apply(
            what,
            "created" if current is None else "updated",
            lambda: self.iam.put_role_policy(
                RoleName=self.role_name, PolicyName=name, PolicyDocument=json.dumps(desired)
            ),
            resources,
        )

    def _policy_detail(self) -> str:
        parts = []
        if self.o.allowed_buckets:
            parts.append(f"s3:GetObject on {', '.join(self.o.allowed_buckets)}")
        if self.o.output_bucket:
            parts.append(f"s3:PutObject on {self.o.output_bucket}/{self.o.output_prefix}*")
        return "; ".join(parts)

    # ----------------------------------------------------------------- code upload

    def code_location(self, package: Package) -> dict[str, Any]:
        """ZipFile for small packages; S3 when too big or when a code bucket is named."""
        if package.zipped_bytes <= DIRECT_UPLOAD_LIMIT and not self.o.code_bucket:
            return {"ZipFile": package.path.read_bytes()}
        bucket = self.o.code_bucket or self.default_code_bucket
        key = f"{CODE_KEY_PREFIX}/{self.o.function_name}/{package.sha256_hex}.zip"
        if not self.o.code_bucket:
            self._ensure_code_bucket(bucket)
        exists = get_or_none(self.s3.head_object, Bucket=bucket, Key=key) is not None
        what = f"code object s3://{bucket}/{key}"
        if exists:
            self.report.unchanged(what)
        else:
            self.apply(
                what, "uploaded", lambda: self.s3.upload_file(str(package.path), bucket, key)
            )
        return {"S3Bucket": bucket, "S3Key": key}

    @property
    def default_code_bucket(self) -> str:
        return f"dicom-lambda-code-{self.aws.account}-{self.aws.region}"

    def _ensure_code_bucket(self, bucket: str) -> None:
        if get_or_none(self.s3.head_bucket, Bucket=bucket) is not None:
            return

        def create() -> None:
            extra = {}
            if self.aws.region != "us-east-1":
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self.aws.region}
            self.s3.create_bucket(Bucket=bucket, **extra)
            self.s3.put_public_access_block(
                Bucket=bucket,
                PublicAccessBlockConfiguration={
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                    "BlockPublicPolicy": True,
                    "RestrictPublicBuckets": True,
                },
            )
            self.s3.put_bucket_tagging(
                Bucket=bucket,
                Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in TAGS.items()]},
            )

        self.apply(f"code bucket {bucket}", "created", create, "package is over 50 MB zipped")

    # ----------------------------------------------------------------- function

    def desired_configuration(self, role_arn: str, current_env: dict[str, str]) -> dict[str, Any]:
        kept = {k: v for k, v in current_env.items() if k not in MANAGED_ENV}
        return {
            "Role": role_arn,
            "Handler": HANDLER,
            "Runtime": self.o.runtime,
            "Timeout": self.o.timeout,
            "MemorySize": self.o.memory,
            "Description": "Renders DICOM files to JPG/PNG/WebP (deployed by deploy.py)",
            "Environment": {"Variables": {**kept, **self.o.environment}},
            "EphemeralStorage": {"Size": self.o.ephemeral_storage},
            "LoggingConfig": {
                "LogFormat": "JSON",
                "ApplicationLogLevel": LAMBDA_LOG_LEVEL[self.o.log_level],
                "SystemLogLevel": "INFO",
            },
        }

    def ensure_function(self, role_arn: str, package: Package) -> None:
        current = get_or_none(self.lam.get_function, FunctionName=self.o.function_name)
        if current is None:
            self._create_function(role_arn, package)
            return
        self.function_exists = True
        config = current["Configuration"]
        self._wait_updated()
        code_differs = config.get("CodeSha256") != package.code_sha256
        arch_differs = config.get("Architectures", ["x86_64"]) != [self.o.arch]
        if code_differs or arch_differs:
            location = self.code_location(package)
            self.apply(
                "function code",
                "updated",
                lambda: self._retry_conflict(
                    lambda: self.lam.update_function_code(
                        FunctionName=self.o.function_name,
                        Architectures=[self.o.arch],
                        **location,
                    )
                ),
                f"{package.sha256_hex[:12]}, {self.o.arch}",
            )
            self.function_changed = True
            if not self.dry:
                self._wait_updated()
        else:
            self.report.unchanged("function code", f"{package.sha256_hex[:12]}, {self.o.arch}")
        current_env = (config.get("Environment") or {}).get("Variables") or {}
        self.previous_watch_bucket = current_env.get("WATCH_BUCKET") or None
        desired = self.desired_configuration(role_arn, current_env)
        differences = configuration_differences(config, desired)
        if not differences:
            self.report.unchanged("function configuration")
            return
        self.apply(
            "function configuration",
            "updated",
            lambda: self._with_role_retry(
                lambda: self._retry_conflict(
                    lambda: self.lam.update_function_configuration(
                        FunctionName=self.o.function_name, **desired
                    )
                )
            ),
            ", ".join(differences),
        )
        self.function_changed = True
        if not self.dry:
            self._wait_updated()

    def _create_function(self, role_arn: str, package: Package) -> None:
        location = self.code_location(package)
        desired = self.desired_configuration(role_arn, {})
        self.apply(
            f"function {self.o.function_name}",
            "created",
            lambda: self._with_role_retry(
                lambda: self.lam.create_function(
                    FunctionName=self.o.function_name,
                    Code=location,
                    Architectures=[self.o.arch],
                    PackageType="Zip",
                    Publish=False,
                    Tags=TAGS,
                    **desired,
                )
            ),
            f"{self.o.runtime}, {self.o.arch}, {self.o.memory} MB, {self.o.timeout} s",
        )
        self.function_changed = True
        if not self.dry:
            self.lam.get_waiter("function_active_v2").wait(
                FunctionName=self.o.function_name, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
            )

    def _wait_updated(self) -> None:
        # An update while another is in progress fails with ResourceConflictException.
        self.lam.get_waiter("function_updated_v2").wait(
            FunctionName=self.o.function_name, WaiterConfig={"Delay": 2, "MaxAttempts": 150}
        )

    def _retry_conflict(self, action: Callable[[], T]) -> T:
        from botocore.exceptions import ClientError

        for _ in range(5):
            try:
                return action()
            except ClientError as exc:
                if error_code(exc) != "ResourceConflictException":
                    raise
                self._wait_updated()
        return action()

    def _with_role_retry(self, action: Callable[[], T]) -> T:
        """Retry while IAM has not yet propagated a new role to Lambda."""
        from botocore.exceptions import ClientError

        deadline = time.monotonic() + ROLE_READY_SECONDS
        delay = 1.0
        while True:
            try:
                return action()
            except ClientError as exc:
                message = str(exc).lower()
                retryable = error_code(exc) == "InvalidParameterValueException" and (
                    "cannot be assumed" in message or ("role" in message and "assume" in message)
                )
                if not retryable or time.monotonic() + delay > deadline:
                    raise
                self.report.note(f"role not assumable by Lambda yet; retrying in {delay:.0f} s")
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def publish(self, package: Package) -> None:
        alias = get_or_none(
            self.lam.get_alias, FunctionName=self.o.function_name, Name=self.o.alias
        )
        previous = alias["FunctionVersion"] if alias else None
        if self.dry:
            if self.function_changed or previous is None:
                self.report.changed("version", "published")
                self.report.changed(f"alias {self.o.alias}", "moved" if previous else "created")
            else:
                self.report.unchanged("version", previous)
                self.report.unchanged(f"alias {self.o.alias}", f"-> {previous}")
            self.outcome.version = previous or "(new)"
            return
        # Lambda publishes nothing new when code and configuration match the latest
        # version, so re-running converges on the same version number.
        published = self._retry_conflict(
            lambda: self.lam.publish_version(
                FunctionName=self.o.function_name,
                CodeSha256=package.code_sha256,
                Description=f"deploy.py {package.sha256_hex[:12]}",
            )
        )
        version = published["Version"]
        self.outcome.version = version
        if self.function_changed:
            self.report.changed("version", "published", version)
        else:
            self.report.unchanged("version", version)
        if version == previous:
            self.report.unchanged(f"alias {self.o.alias}", f"-> {version}")
            return
        if alias is None:
            self.apply(
                f"alias {self.o.alias}",
                "created",
                lambda: self.lam.create_alias(
                    FunctionName=self.o.function_name, Name=self.o.alias, FunctionVersion=version
                ),
                f"-> {version}",
            )
        else:
            self.apply(
                f"alias {self.o.alias}",
                "moved",
                lambda: self.lam.update_alias(
                    FunctionName=self.o.function_name, Name=self.o.alias, FunctionVersion=version
                ),
                f"{previous} -> {version}",
            )

    # ----------------------------------------------------------------- permissions

    def statements(self) -> dict[str, dict[str, Any]]:
        if self.dry and not self.function_exists:
            return {}
        found = get_or_none(
            self.lam.get_policy, FunctionName=self.o.function_name, Qualifier=self.o.alias
        )
        if found is None:
            return {}
        policy = json.loads(found["Policy"])
        return {s.get("Sid", ""): s for s in policy.get("Statement", [])}

    def ensure_permission(self, sid: str, what: str, **permission: Any) -> None:
        existing = self.statements().get(sid)
        if existing is not None and statement_matches(existing, permission):
            self.report.unchanged(what)
            return

        def replace() -> None:
            if existing is not None:
                self.lam.remove_permission(
                    FunctionName=self.o.function_name, StatementId=sid, Qualifier=self.o.alias
                )
            self.lam.add_permission(
                FunctionName=self.o.function_name,
                StatementId=sid,
                Qualifier=self.o.alias,
                **permission,
            )

        detail = permission.get("SourceArn", "")
        self.apply(what, "added" if existing is None else "updated", replace, detail)

    def remove_permission(self, sid: str, what: str) -> None:
        if self.deleting or sid not in self.statements():
            return
        self.apply(
            what,
            "removed",
            lambda: self.lam.remove_permission(
                FunctionName=self.o.function_name, StatementId=sid, Qualifier=self.o.alias
            ),
        )

    # ----------------------------------------------------------------- REST API

    def find_rest_api(self) -> dict[str, Any] | None:
        pages = self.apigw.get_paginator("get_rest_apis").paginate()
        matches = [a for page in pages for a in page["items"] if a["name"] == self.rest_api_name]
        if len(matches) > 1:
            self.report.warn(f"{len(matches)} REST APIs are named {self.rest_api_name}; using one")
            matches.sort(key=lambda a: (a.get("tags", {}).get(MANAGED_TAG_KEY) is None, a["id"]))
        return matches[0] if matches else None

    def ensure_rest_api(self) -> None:
        api = self.find_rest_api()
        changed = False
        if api is None:
            api = self.apply(
                f"REST API {self.rest_api_name}",
                "created",
                lambda: self.apigw.create_rest_api(
                    name=self.rest_api_name,
                    description=f"DICOM renderer in front of Lambda {self.o.function_name}",
                    binaryMediaTypes=[BINARY_MEDIA_TYPE],
                    endpointConfiguration={"types": ["REGIONAL"]},
                    tags=TAGS,
                ),
                f"routes {', '.join(_rest_route_names())}, stage {self.o.stage}",
            )
            if api is None:  # dry run: nothing below exists yet
                self._plan_rest_children()
                return
            changed = True
        else:
            self.report.unchanged(f"REST API {self.rest_api_name}", api["id"])
        api_id = api["id"]
        changed |= self._ensure_binary_media_types(api_id, just_created=changed)
        resources = self._rest_resources(api_id)
        for path, methods in REST_ROUTES.items():
            resource = resources.get(path) or self._create_rest_resource(api_id, resources, path)
            for method in methods:
                changed |= self._ensure_rest_method(api_id, resource, method)
        self._ensure_rest_deployment(api_id, changed)
        self.ensure_permission(
            SID_REST,
            "invoke permission for the REST API",
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=self.execute_api_arn(api_id),
        )
        base = (
            f"https://{api_id}.execute-api.{self.aws.region}.{self.aws.url_suffix}/{self.o.stage}"
        )
        self.outcome.endpoints = {"convert": f"{base}/convert", "health": f"{base}/health"}
        self.ensure_api_key(api_id)

    def _plan_rest_children(self) -> None:
        for route in _rest_route_names():
            self.report.changed(f"route {route} -> alias {self.o.alias}", "created")
        self.report.changed(f"deployment to stage {self.o.stage}", "created")
        self.report.changed("invoke permission for the REST API", "added")
        if self.o.api_key:
            self.report.changed(f"API key {self.api_key_name} and usage plan", "created")

    def _ensure_binary_media_types(self, api_id: str, just_created: bool) -> bool:
        # Read back: an API-compatible endpoint may ignore the types given at creation.
        current = self.apigw.get_rest_api(restApiId=api_id)
        if BINARY_MEDIA_TYPE in (current.get("binaryMediaTypes") or []):
            if not just_created:
                self.report.unchanged("binary media types", BINARY_MEDIA_TYPE)
            return False
        escaped = BINARY_MEDIA_TYPE.replace("~", "~0").replace("/", "~1")
        # API Gateway reads the media type from the path; "value" repeats it for
        # API-compatible emulators that read it from there instead.
        operation = {
            "op": "add",
            "path": f"/binaryMediaTypes/{escaped}",
            "value": BINARY_MEDIA_TYPE,
        }
        self.apply(
            "binary media types",
            "updated",
            lambda: self.apigw.update_rest_api(restApiId=api_id, patchOperations=[operation]),
            f"+ {BINARY_MEDIA_TYPE}, so image answers are returned as binary",
        )
        return True

    def _rest_resources(self, api_id: str) -> dict[str, dict[str, Any]]:
        pages = self.apigw.get_paginator("get_resources").paginate(
            restApiId=api_id, embed=["methods"]
        )
        return {r["path"]: r for page in pages for r in page["items"]}

    def _create_rest_resource(
        self, api_id: str, resources: dict[str, dict[str, Any]], path: str
    ) -> dict[str, Any]:
        root = resources["/"]["id"]
        created = self.apply(
            f"resource {path}",
            "created",
            lambda: self.apigw.create_resource(
                restApiId=api_id, parentId=root, pathPart=path.lstrip("/")
            ),
        )
        return created or {"id": "", "path": path, "resourceMethods": {}}

    def _ensure_rest_method(self, api_id: str, resource: dict[str, Any], method: str) -> bool:
        what = f"route {method} {resource['path']} -> alias {self.o.alias}"
        uri = (
            f"arn:{self.aws.partition}:apigateway:{self.aws.region}:lambda:path/2015-03-31/"
            f"functions/{self.alias_arn}/invocations"
        )
        current = None
        if resource.get("id") and method in (resource.get("resourceMethods") or {}):
            current = self.apigw.get_method(
                restApiId=api_id, resourceId=resource["id"], httpMethod=method
            )
        key_required = self.o.api_key and resource["path"] in KEYED_PATHS

        def put_method() -> None:
            if current is not None:
                # Recreated rather than patched: a method's apiKeyRequired flag is
                # set at creation in every API Gateway-compatible implementation.
                self.apigw.delete_method(
                    restApiId=api_id, resourceId=resource["id"], httpMethod=method
                )
            self.apigw.put_method(
                restApiId=api_id,
                resourceId=resource["id"],
                httpMethod=method,
                authorizationType="NONE",
                apiKeyRequired=key_required,
            )
            put_integration()

        def put_integration() -> None:
            self.apigw.put_integration(
                restApiId=api_id,
                resourceId=resource["id"],
                httpMethod=method,
                type="AWS_PROXY",
                integrationHttpMethod="POST",
                uri=uri,
            )

        if current is None or bool(current.get("apiKeyRequired")) != key_required:
            detail = "API key required" if key_required else ""
            self.apply(what, "created" if current is None else "updated", put_method, detail)
            return True
        integration = current.get("methodIntegration") or {}
        if integration.get("type") != "AWS_PROXY" or integration.get("uri") != uri:
            self.apply(what, "updated", put_integration, "AWS_PROXY integration")
            return True
        self.report.unchanged(what)
        return False

    def _ensure_rest_deployment(self, api_id: str, changed: bool) -> None:
        stage = get_or_none(self.apigw.get_stage, restApiId=api_id, stageName=self.o.stage)
        what = f"deployment to stage {self.o.stage}"
        if stage is not None and not changed:
            self.report.unchanged(what)
            return
        self.apply(
            what,
            "created",
            lambda: self.apigw.create_deployment(
                restApiId=api_id,
                stageName=self.o.stage,
                description="deploy.py",
            ),
        )

    def remove_rest_api(self, reason: str) -> None:
        api = self.find_rest_api()
        if api is None:
            return
        if api.get("tags", {}).get(MANAGED_TAG_KEY) != MANAGED_TAG_VALUE:
            self.report.note(f"REST API {self.rest_api_name}: not created by deploy.py, kept")
            return
        self.remove_api_key()
        self.apply(
            f"REST API {self.rest_api_name}",
            "deleted",
            lambda: self.apigw.delete_rest_api(restApiId=api["id"]),
            reason,
        )
        self.remove_permission(SID_REST, "invoke permission for the REST API")

    # ----------------------------------------------------------------- API key

    def _find_usage_plan(self) -> dict[str, Any] | None:
        pages = self.apigw.get_paginator("get_usage_plans").paginate()
        plans = [p for page in pages for p in page["items"] if p["name"] == self.usage_plan_name]
        return plans[0] if plans else None

    def _find_api_key(self) -> dict[str, Any] | None:
        pages = self.apigw.get_paginator("get_api_keys").paginate(nameQuery=self.api_key_name)
        keys = [k for page in pages for k in page["items"] if k["name"] == self.api_key_name]
        return keys[0] if keys else None

    def ensure_api_key(self, api_id: str) -> None:
        if not self.o.api_key:
            self.remove_api_key()
            return
        key = self._find_api_key()
        if key is None:
            key = self.apply(
                f"API key {self.api_key_name}",
                "created",
                lambda: self.apigw.create_api_key(name=self.api_key_name, enabled=True, tags=TAGS),
            )
        else:
            self.report.unchanged(f"API key {self.api_key_name}")
        self.outcome.api_key_id = (key or {}).get("id", "")
        throttle = {"rateLimit": self.o.throttle_rate, "burstLimit": self.o.throttle_burst}
        detail = f"{self.o.throttle_rate:g} requests/s, burst {self.o.throttle_burst}"
        plan = self._find_usage_plan()
        if plan is None:
            plan = self.apply(
                f"usage plan {self.usage_plan_name}",
                "created",
                lambda: self.apigw.create_usage_plan(
                    name=self.usage_plan_name,
                    apiStages=[{"apiId": api_id, "stage": self.o.stage}],
                    throttle=throttle,
                    tags=TAGS,
                ),
                detail,
            )
        else:
            self._update_usage_plan(plan, api_id, throttle, detail)
        if plan is None or key is None:
            if self.dry:
                self.report.changed("API key in usage plan", "added")
            return
        linked = get_or_none(self.apigw.get_usage_plan_key, usagePlanId=plan["id"], keyId=key["id"])
        if linked is not None:
            self.report.unchanged("API key in usage plan")
            return
        self.apply(
            "API key in usage plan",
            "added",
            lambda: self.apigw.create_usage_plan_key(
                usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY"
            ),
        )

    def _update_usage_plan(
        self, plan: dict[str, Any], api_id: str, throttle: dict[str, Any], detail: str
    ) -> None:
        operations = []
        stages = {(s["apiId"], s.get("stage")) for s in plan.get("apiStages", [])}
        if (api_id, self.o.stage) not in stages:
            operations.append(
                {"op": "add", "path": "/apiStages", "value": f"{api_id}:{self.o.stage}"}
            )
        current = plan.get("throttle") or {}
        if float(current.get("rateLimit", -1)) != float(throttle["rateLimit"]):
            operations.append(
                {
                    "op": "replace",
                    "path": "/throttle/rateLimit",
                    "value": str(throttle["rateLimit"]),
                }
            )
        if int(current.get("burstLimit", -1)) != int(throttle["burstLimit"]):
            operations.append(
                {
                    "op": "replace",
                    "path": "/throttle/burstLimit",
                    "value": str(throttle["burstLimit"]),
                }
            )
        what = f"usage plan {self.usage_plan_name}"
        if not operations:
            self.report.unchanged(what, detail)
            return
        self.apply(
            what,
            "updated",
            lambda: self.apigw.update_usage_plan(
                usagePlanId=plan["id"], patchOperations=operations
            ),
            detail,
        )

    def remove_api_key(self) -> None:
        plan = self._find_usage_plan()
        if plan is not None and plan.get("tags", {}).get(MANAGED_TAG_KEY) == MANAGED_TAG_VALUE:

            def delete_plan() -> None:
                # A usage plan still attached to a stage cannot be deleted.
                stages = [f"{s['apiId']}:{s['stage']}" for s in plan.get("apiStages", [])]
                if stages:
                    self.apigw.update_usage_plan(
                        usagePlanId=plan["id"],
                        patchOperations=[
                            {"op": "remove", "path": "/apiStages", "value": s} for s in stages
                        ],
                    )
                self.apigw.delete_usage_plan(usagePlanId=plan["id"])

            self.apply(f"usage plan {self.usage_plan_name}", "deleted", delete_plan)
        key = self._find_api_key()
        if key is not None and key.get("tags", {}).get(MANAGED_TAG_KEY) == MANAGED_TAG_VALUE:
            self.apply(
                f"API key {self.api_key_name}",
                "deleted",
                lambda: self.apigw.delete_api_key(apiKey=key["id"]),
            )

    # ----------------------------------------------------------------- HTTP API

    def find_http_api(self) -> dict[str, Any] | None:
        pages = self.apigw2.get_paginator("get_apis").paginate()
        matches = [a for page in pages for a in page["Items"] if a["Name"] == self.http_api_name]
        if len(matches) > 1:
            self.report.warn(f"{len(matches)} HTTP APIs are named {self.http_api_name}; using one")
        return matches[0] if matches else None

    def ensure_http_api(self) -> None:
        api = self.find_http_api()
        if api is None:
            api = self.apply(
                f"HTTP API {self.http_api_name}",
                "created",
                lambda: self.apigw2.create_api(
                    Name=self.http_api_name,
                    ProtocolType="HTTP",
                    Description=f"DICOM renderer in front of Lambda {self.o.function_name}",
                    Tags=TAGS,
                ),
                f"routes {', '.join(HTTP_ROUTE_KEYS)}, payload 2.0",
            )
            if api is None:
                for key in HTTP_ROUTE_KEYS:
                    self.report.changed(f"route {key} -> alias {self.o.alias}", "created")
                self.report.changed("invoke permission for the HTTP API", "added")
                return
        else:
            self.report.unchanged(f"HTTP API {self.http_api_name}", api["ApiId"])
        api_id = api["ApiId"]
        integration_id = self._ensure_http_integration(api_id)
        self._ensure_http_routes(api_id, integration_id)
        self._ensure_http_stage(api_id)
        self.ensure_permission(
            SID_HTTP,
            "invoke permission for the HTTP API",
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=self.execute_api_arn(api_id),
        )
        base = api.get("ApiEndpoint") or (
            f"https://{api_id}.execute-api.{self.aws.region}.{self.aws.url_suffix}"
        )
        self.outcome.endpoints = {"convert": f"{base}/convert", "health": f"{base}/health"}

    def _ensure_http_integration(self, api_id: str) -> str:
        pages = self.apigw2.get_paginator("get_integrations").paginate(ApiId=api_id)
        integrations = [i for page in pages for i in page["Items"]]
        ours = [i for i in integrations if i.get("IntegrationUri") == self.alias_arn]
        what = f"integration with alias {self.o.alias} (payload 2.0)"
        if ours and ours[0].get("PayloadFormatVersion") == "2.0":
            self.report.unchanged(what)
            return ours[0]["IntegrationId"]
        if ours:
            self.apply(
                what,
                "updated",
                lambda: self.apigw2.update_integration(
                    ApiId=api_id, IntegrationId=ours[0]["IntegrationId"], PayloadFormatVersion="2.0"
                ),
            )
            return ours[0]["IntegrationId"]
        created = self.apply(
            what,
            "created",
            lambda: self.apigw2.create_integration(
                ApiId=api_id,
                IntegrationType="AWS_PROXY",
                IntegrationMethod="POST",
                IntegrationUri=self.alias_arn,
                PayloadFormatVersion="2.0",
            ),
        )
        return (created or {}).get("IntegrationId", "")

    def _ensure_http_routes(self, api_id: str, integration_id: str) -> None:
        pages = self.apigw2.get_paginator("get_routes").paginate(ApiId=api_id)
        routes = {r["RouteKey"]: r for page in pages for r in page["Items"]}
        target = f"integrations/{integration_id}"
        for key in HTTP_ROUTE_KEYS:
            what = f"route {key} -> alias {self.o.alias}"
            route = routes.get(key)
            if route is None:
                self.apply(
                    what,
                    "created",
                    lambda key=key: self.apigw2.create_route(
                        ApiId=api_id, RouteKey=key, Target=target
                    ),
                )
            elif route.get("Target") != target:
                self.apply(
                    what,
                    "updated",
                    lambda route=route: self.apigw2.update_route(
                        ApiId=api_id, RouteId=route["RouteId"], Target=target
                    ),
                )
            else:
                self.report.unchanged(what)

    def _ensure_http_stage(self, api_id: str) -> None:
        pages = self.apigw2.get_paginator("get_stages").paginate(ApiId=api_id)
        stages = {s["StageName"]: s for page in pages for s in page["Items"]}
        stage = stages.get(HTTP_STAGE)
        what = f"stage {HTTP_STAGE} (auto-deploy)"
        if stage is None:
            self.apply(
                what,
                "created",
                lambda: self.apigw2.create_stage(
                    ApiId=api_id, StageName=HTTP_STAGE, AutoDeploy=True, Tags=TAGS
                ),
            )
        elif not stage.get("AutoDeploy"):
            self.apply(
                what,
                "updated",
                lambda: self.apigw2.update_stage(
                    ApiId=api_id, StageName=HTTP_STAGE, AutoDeploy=True
                ),
            )
        else:
            self.report.unchanged(what)

    def remove_http_api(self, reason: str) -> None:
        api = self.find_http_api()
        if api is None:
            return
        if (api.get("Tags") or {}).get(MANAGED_TAG_KEY) != MANAGED_TAG_VALUE:
            self.report.note(f"HTTP API {self.http_api_name}: not created by deploy.py, kept")
            return
        self.apply(
            f"HTTP API {self.http_api_name}",
            "deleted",
            lambda: self.apigw2.delete_api(ApiId=api["ApiId"]),
            reason,
        )
        self.remove_permission(SID_HTTP, "invoke permission for the HTTP API")

    # ----------------------------------------------------------------- Function URL

    def ensure_function_url(self) -> None:
        mode = self.o.function_url
        current = None
        if self.function_exists or not self.dry:
            current = get_or_none(
                self.lam.get_function_url_config,
                FunctionName=self.o.function_name,
                Qualifier=self.o.alias,
            )
        what = f"Function URL on alias {self.o.alias}"
        if mode == "none":
            if current is not None:
                self.apply(
                    what,
                    "deleted",
                    lambda: self.lam.delete_function_url_config(
                        FunctionName=self.o.function_name, Qualifier=self.o.alias
                    ),
                )
            else:
                self.report.unchanged(what, "none")
            self._remove_public_url_permissions()
            return
        auth = "NONE" if mode == "public" else "AWS_IAM"
        if current is None:
            current = self.apply(
                what,
                "created",
                lambda: self.lam.create_function_url_config(
                    FunctionName=self.o.function_name, Qualifier=self.o.alias, AuthType=auth
                ),
                f"auth {auth}",
            )
        elif current.get("AuthType") != auth:
            current = self.apply(
                what,
                "updated",
                lambda: self.lam.update_function_url_config(
                    FunctionName=self.o.function_name, Qualifier=self.o.alias, AuthType=auth
                ),
                f"auth {auth}",
            )
        else:
            self.report.unchanged(what, f"auth {auth}")
        self.outcome.function_url = (current or {}).get("FunctionUrl", "")
        if mode == "public":
            self._ensure_public_url_permissions()
        else:
            self._remove_public_url_permissions()

    def _ensure_public_url_permissions(self) -> None:
        # A public URL needs both: InvokeFunctionUrl for the URL itself, and
        # InvokeFunction limited to calls that arrive through the URL.
        self.ensure_permission(
            SID_URL_PUBLIC,
            "public permission lambda:InvokeFunctionUrl",
            Action="lambda:InvokeFunctionUrl",
            Principal="*",
            FunctionUrlAuthType="NONE",
        )
        self.ensure_permission(
            SID_URL_INVOKE,
            "public permission lambda:InvokeFunction via the URL",
            Action="lambda:InvokeFunction",
            Principal="*",
            InvokedViaFunctionUrl=True,
        )

    def _remove_public_url_permissions(self) -> None:
        self.remove_permission(SID_URL_PUBLIC, "public permission lambda:InvokeFunctionUrl")
        self.remove_permission(SID_URL_INVOKE, "public permission lambda:InvokeFunction")

    # ----------------------------------------------------------------- S3 trigger

    def check_watch_bucket(self) -> None:
        """Refuse a watched bucket that does not exist before anything is changed."""
        bucket = self.o.watch_bucket
        if bucket and get_or_none(self.s3.head_bucket, Bucket=bucket) is None:
            raise DeployError(f"--watch-bucket {bucket}: no such bucket; create it first")

    def ensure_s3_trigger(self) -> None:
        """The bucket notification and the invoke permission scoped to that bucket.

        Notification configurations of other consumers on the bucket are kept; the
        ones that invoke this function are made to match the watched prefix/suffixes.
        """
        bucket = self.o.watch_bucket
        previous = self.previous_watch_bucket
        if previous and previous != bucket:
            self.remove_notification(previous)
        if not bucket:
            self.remove_permission(SID_S3_TRIGGER, "invoke permission for S3 notifications")
            if not previous:
                self.report.unchanged("S3 trigger", "none (no --watch-bucket)")
            return
        self.ensure_permission(
            SID_S3_TRIGGER,
            f"invoke permission for notifications of s3://{bucket}",
            Action="lambda:InvokeFunction",
            Principal="s3.amazonaws.com",
            SourceArn=f"arn:{self.aws.partition}:s3:::{bucket}",
            SourceAccount=self.aws.account,
        )
        current = self.s3.get_bucket_notification_configuration(Bucket=bucket)
        kept = self._others_notifications(current)
        mine = [c for c in current.get("LambdaFunctionConfigurations", []) if self._is_mine(c)]
        desired = self.notification_configurations()
        what = f"notification s3://{bucket} -> alias {self.o.alias}"
        detail = ", ".join(self._filter_text(c) for c in desired)
        if sorted(map(_notification_key, mine)) == sorted(map(_notification_key, desired)):
            self.report.unchanged(what, detail)
            return
        configuration = {
            **kept,
            "LambdaFunctionConfigurations": [*kept["LambdaFunctionConfigurations"], *desired],
        }
        self.apply(
            what,
            "added" if not mine else "updated",
            lambda: self.s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=configuration
            ),
            detail,
        )

    def notification_configurations(self) -> list[dict[str, Any]]:
        """One configuration per suffix: an S3 filter holds one prefix and one suffix."""
        configurations = []
        for index, suffix in enumerate(self.o.watch_suffixes or ("",)):
            rules = []
            if self.o.watch_prefix:
                rules.append({"Name": "prefix", "Value": self.o.watch_prefix})
            if suffix:
                rules.append({"Name": "suffix", "Value": suffix})
            configuration: dict[str, Any] = {
                "Id": f"{self.o.function_name}-dicom-{index}",
                "LambdaFunctionArn": self.alias_arn,
                "Events": ["s3:ObjectCreated:*"],
            }
            if rules:
                configuration["Filter"] = {"Key": {"FilterRules": rules}}
            configurations.append(configuration)
        return configurations

    def remove_notification(self, bucket: str) -> None:
        """Take this function's configurations off the bucket; keep everyone else's."""
        current = get_or_none(self.s3.get_bucket_notification_configuration, Bucket=bucket)
        if current is None:
            self.report.note(f"watched bucket {bucket}: not found")
            return
        mine = [c for c in current.get("LambdaFunctionConfigurations", []) if self._is_mine(c)]
        if not mine:
            return
        kept = self._others_notifications(current)
        self.apply(
            f"notification s3://{bucket} -> alias {self.o.alias}",
            "removed",
            lambda: self.s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=kept
            ),
        )

    def _is_mine(self, configuration: dict[str, Any]) -> bool:
        arn = str(configuration.get("LambdaFunctionArn", ""))
        return arn == self.function_arn or arn.startswith(f"{self.function_arn}:")

    def _others_notifications(self, current: dict[str, Any]) -> dict[str, Any]:
        kept = {key: current[key] for key in NOTIFICATION_KEYS if key in current}
        kept["LambdaFunctionConfigurations"] = [
            c for c in current.get("LambdaFunctionConfigurations", []) if not self._is_mine(c)
        ]
        return kept

    @staticmethod
    def _filter_text(configuration: dict[str, Any]) -> str:
        rules = {
            rule["Name"].lower(): rule["Value"]
            for rule in configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
        }
        return f"{rules.get('prefix', '')}*{rules.get('suffix', '')}"

    # ----------------------------------------------------------------- delete

    def delete_all(self) -> None:
        self.deleting = True
        self.report.step("APIs")
        changes = self.report.changes
        self.remove_rest_api("requested by --delete")
        self.remove_http_api("requested by --delete")
        if self.report.changes == changes:
            self.report.note("no API created by deploy.py found")
        self.report.step("S3 trigger")
        self._delete_notification()
        self.report.step("Function")
        self._delete_function()
        self.report.step("IAM role")
        self._delete_role()
        self.report.step("Code objects")
        self._delete_code_objects()
        self.report.note(
            f"log group /aws/lambda/{self.o.function_name} is kept (Lambda created it); "
            "remove it with `aws logs delete-log-group` if the logs are not needed"
        )

    def _delete_notification(self) -> None:
        """The notification this function's WATCH_BUCKET (or --watch-bucket) names."""
        current = get_or_none(self.lam.get_function, FunctionName=self.o.function_name)
        if current is not None and (current.get("Tags") or {}).get(MANAGED_TAG_KEY) != (
            MANAGED_TAG_VALUE
        ):
            self.report.note("function not created by deploy.py: its notifications are kept")
            return
        variables = ((current or {}).get("Configuration", {}).get("Environment") or {}).get(
            "Variables"
        ) or {}
        buckets = {b for b in (self.o.watch_bucket, variables.get("WATCH_BUCKET")) if b}
        for bucket in sorted(buckets):
            self.remove_notification(bucket)
        if not buckets:
            self.report.note("no watched bucket")

    def _delete_function(self) -> None:
        current = get_or_none(self.lam.get_function, FunctionName=self.o.function_name)
        what = f"function {self.o.function_name}"
        if current is None:
            self.report.note(f"{what}: not found")
            return
        tags = current.get("Tags") or {}
        if tags.get(MANAGED_TAG_KEY) != MANAGED_TAG_VALUE:
            self.report.note(f"{what}: not created by deploy.py, kept")
            return
        self.apply(
            what,
            "deleted",
            lambda: self.lam.delete_function(FunctionName=self.o.function_name),
            "with its versions, alias, Function URL and permissions",
        )

    def _delete_role(self) -> None:
        role = get_or_none(self.iam.get_role, RoleName=self.role_name)
        what = f"role {self.role_name}"
        if role is None:
            self.report.note(f"{what}: not found")
            return
        tags = {t["Key"]: t["Value"] for t in role["Role"].get("Tags", [])}
        if not tags:
            listed = self.iam.list_role_tags(RoleName=self.role_name).get("Tags", [])
            tags = {t["Key"]: t["Value"] for t in listed}
        if tags.get(MANAGED_TAG_KEY) != MANAGED_TAG_VALUE:
            self.report.note(f"{what}: not created by deploy.py, kept")
            return
        basic = f"arn:{self.aws.partition}:iam::aws:{BASIC_EXECUTION_POLICY}"
        pages = self.iam.get_paginator("list_attached_role_policies").paginate(
            RoleName=self.role_name
        )
        attached = {p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]}
        inline = set(self.iam.list_role_policies(RoleName=self.role_name)["PolicyNames"])
        if basic in attached:
            self.apply(
                "managed policy AWSLambdaBasicExecutionRole",
                "detached",
                lambda: self.iam.detach_role_policy(RoleName=self.role_name, PolicyArn=basic),
            )
        own = {INLINE_POLICY_NAME, WATCH_POLICY_NAME}
        for name in sorted(own & inline):
            self.apply(
                f"inline policy {name}",
                "deleted",
                lambda name=name: self.iam.delete_role_policy(
                    RoleName=self.role_name, PolicyName=name
                ),
            )
        others = sorted((attached - {basic}) | (inline - own))
        if others:
            self.report.note(f"{what}: kept, it also holds policies deploy.py did not add")
            return
        self.apply(what, "deleted", lambda: self.iam.delete_role(RoleName=self.role_name))

    def _delete_code_objects(self) -> None:
        buckets = [self.o.code_bucket] if self.o.code_bucket else []
        if get_or_none(self.s3.head_bucket, Bucket=self.default_code_bucket) is not None:
            buckets.append(self.default_code_bucket)
        if not buckets:
            self.report.note("no code bucket in use")
            return
        prefix = f"{CODE_KEY_PREFIX}/{self.o.function_name}/"
        for bucket in buckets:
            pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            for key in keys:
                self.apply(
                    f"s3://{bucket}/{key}",
                    "deleted",
                    lambda key=key, bucket=bucket: self.s3.delete_object(Bucket=bucket, Key=key),
                )
            if bucket == self.default_code_bucket:
                self._delete_default_bucket_if_empty(bucket, len(keys))

    def _delete_default_bucket_if_empty(self, bucket: str, deleted: int) -> None:
        tagging = get_or_none(self.s3.get_bucket_tagging, Bucket=bucket) or {}
        tags = {t["Key"]: t["Value"] for t in tagging.get("TagSet", [])}
        if tags.get(MANAGED_TAG_KEY) != MANAGED_TAG_VALUE:
            self.report.note(f"code bucket {bucket}: not created by deploy.py, kept")
            return
        remaining = self.s3.list_objects_v2(Bucket=bucket, MaxKeys=deleted + 1).get("KeyCount", 0)
        if remaining > (deleted if self.dry else 0):
            self.report.note(f"code bucket {bucket}: kept, other functions' code is in it")
            return
        self.apply(f"code bucket {bucket}", "deleted", lambda: self.s3.delete_bucket(Bucket=bucket))


def _rest_route_names() -> list[str]:
    return [f"{m} {path}" for path, methods in REST_ROUTES.items() for m in methods]


def configuration_differences(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """Names of settings that differ; settings an endpoint does not report are skipped."""
    differences = []
    for key, want in desired.items():
        if key not in current:
            if key == "LoggingConfig":
                continue  # not every Lambda-compatible endpoint reports it
            if key == "Environment" and not want["Variables"]:
                continue
            differences.append(key)
            continue
        have = current[key]
        if isinstance(want, dict) and isinstance(have, dict):
            # Compare only what we set: AWS adds fields such as LogGroup.
            have = {k: have.get(k) for k in want}
        if canonical(have) != canonical(want):
            differences.append(key)
    return differences


def _notification_key(configuration: dict[str, Any]) -> str:
    """A notification configuration in a comparable form (S3 may capitalise rule names)."""
    rules = configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return canonical(
        {
            "Id": configuration.get("Id"),
            "LambdaFunctionArn": configuration.get("LambdaFunctionArn"),
            "Events": sorted(configuration.get("Events", [])),
            "Rules": sorted((rule["Name"].lower(), rule["Value"]) for rule in rules),
        }
    )


def statement_matches(statement: dict[str, Any], permission: dict[str, Any]) -> bool:
    """Whether an existing policy statement grants what ``permission`` asks for."""
    if statement.get("Action") != permission["Action"]:
        return False
    text = json.dumps(statement)
    principal = permission["Principal"]
    if principal not in text:
        return False
    expected = [
        permission.get("SourceArn"),
        permission.get("FunctionUrlAuthType"),
        permission.get("SourceAccount"),
    ]
    if not all(value in text for value in expected if value):
        return False
    return not permission.get("InvokedViaFunctionUrl") or "InvokedViaFunctionUrl" in text


# --------------------------------------------------------------------------- commands


def confirm(question: str, options: Options, destructive: bool) -> None:
    if options.yes or options.dry_run:
        return
    if not sys.stdin.isatty():
        if destructive:
            raise UsageError(f"{question} Refusing without --yes when not run interactively.")
        return
    answer = input(f"{question} [{'y/N' if destructive else 'Y/n'}] ").strip().lower()
    if answer in ("y", "yes") or (not answer and not destructive):
        return
    raise UsageError("cancelled")


def obtain_package(options: Options, report: Report) -> Package:
    if options.package is not None:
        report.note(f"using {_rel(options.package)}")
        package = describe_zip(options.package)
    else:
        machine = PLATFORM_MACHINE[options.arch]
        report.note(
            f"building for {options.runtime} on manylinux {machine} "
            f"from {REQUIREMENTS.name} (wheel cache: {_rel(WHEEL_CACHE)})"
        )
        package = build_package(options.runtime, options.arch, options.output)
        report.note(f"wrote {_rel(package.path)}")
    check_package(package, options.runtime, options.arch)
    report.note(f"package: {package.size_text}, sha256 {package.sha256_hex[:12]}")
    if package.zipped_bytes > DIRECT_UPLOAD_LIMIT:
        report.note("over 50 MB zipped: the code goes to Lambda through S3")
    return package


def run_package_only(options: Options) -> int:
    report = Report(1, dry_run=False)
    report.step("Package")
    obtain_package(options, report)
    return 0


def run_deploy(options: Options) -> int:
    report = Report(8, options.dry_run)
    mode = "Dry run: nothing will be changed. " if options.dry_run else ""
    print(
        f"{mode}Deploying {options.function_name} to {options.region} "
        f"({options.runtime}, {options.arch}, {options.memory} MB, {options.timeout} s, "
        f"API {options.api}, Function URL {options.function_url})",
        flush=True,
    )
    report.step("Package")
    package = obtain_package(options, report)
    confirm(f"Deploy {options.function_name} to {options.region}?", options, destructive=False)
    aws = Aws(options)
    deployer = Deployer(options, aws, report)
    report.step("Account")
    report.note(f"account {aws.account} ({aws.identity['Arn']})")
    deployer.check_watch_bucket()
    report.step("IAM role and policies")
    role_arn = deployer.ensure_role()
    report.step("Function code and configuration")
    deployer.ensure_function(role_arn, package)
    report.step("Version and alias")
    deployer.publish(package)
    report.step("API")
    deploy_api(deployer)
    report.step("Function URL")
    deployer.ensure_function_url()
    report.step("S3 trigger")
    deployer.ensure_s3_trigger()
    print_summary(deployer, package)
    return 0


def deploy_api(deployer: Deployer) -> None:
    api = deployer.o.api
    if api == "rest":
        deployer.remove_http_api("--api rest was chosen")
        deployer.ensure_rest_api()
    elif api == "http":
        deployer.remove_rest_api("--api http was chosen")
        deployer.ensure_http_api()
    else:
        deployer.remove_rest_api("--api none was chosen")
        deployer.remove_http_api("--api none was chosen")
        deployer.report.note("no API Gateway (--api none)")


def print_summary(deployer: Deployer, package: Package) -> None:
    o, out, report = deployer.o, deployer.outcome, deployer.report
    print(flush=True)
    if o.dry_run:
        print(f"Dry run finished: {report.changes} change(s) planned, nothing was changed.")
        return
    verdict = f"{report.changes} change(s)" if report.changes else "everything unchanged"
    print(f"Deployed {o.function_name} to {o.region}: {verdict}.")
    print(f"  function:     {deployer.function_arn}")
    print(f"  version:      {out.version} (alias {o.alias}: {deployer.alias_arn})")
    for name, url in out.endpoints.items():
        print(f"  {name + ':':<13} {url}")
    if out.function_url:
        print(f"  Function URL: {out.function_url} ({o.function_url})")
    if o.watch_bucket:
        suffixes = ",".join(o.watch_suffixes) or "any suffix"
        print(
            f"  S3 trigger:   s3://{o.watch_bucket}/{o.watch_prefix}* ({suffixes}) -> "
            f"s3://{o.output_bucket or o.watch_bucket}/{o.output_prefix}"
        )
    print(f"  package:      {package.size_text}")
    target = out.endpoints.get("convert") or out.function_url
    if target:
        key_header = ' -H "x-api-key: $API_KEY"' if o.api_key else ""
        print("  try it:")
        print(
            f"    curl -sS -X POST '{target}' -H 'Content-Type: application/json'{key_header} "
            '-d \'{"url": "https://example.com/sample.dcm"}\''
        )
        if o.api_key:
            print(
                f"    (API_KEY=$(aws apigateway get-api-key --api-key {out.api_key_id} "
                "--include-value --query value --output text))"
            )
    else:
        print(
            f"  try it:       aws lambda invoke --function-name {o.function_name}:{o.alias} "
            "--cli-binary-format raw-in-base64-out "
            '--payload \'{"url": "https://example.com/sample.dcm"}\' response.json'
        )


def run_delete(options: Options) -> int:
    mode = "Dry run: nothing will be changed. " if options.dry_run else ""
    print(f"{mode}Deleting what deploy.py created for {options.function_name} in {options.region}")
    confirm(
        f"Delete function {options.function_name}, its APIs and role in {options.region}?",
        options,
        destructive=True,
    )
    report = Report(5, options.dry_run)
    deployer = Deployer(options, Aws(options), report)
    deployer.delete_all()
    print()
    if options.dry_run:
        print(f"Dry run finished: {report.changes} deletion(s) planned, nothing was changed.")
    else:
        print(f"Deleted: {report.changes} change(s).")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = build_options(args)
        for warning in options.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if options.package_only:
            return run_package_only(options)
        if options.delete:
            return run_delete(options)
        return run_deploy(options)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore's errors, without a traceback for the user
        if type(exc).__module__.startswith(("botocore", "boto3")):
            print(f"error: AWS call failed: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
