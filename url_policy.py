"""Which URLs the function may read, and what they name.

Callers send URLs; this module is where they are parsed and judged, before any
downloader connects:

* ``source_type`` picks the source (S3, R2, FTP or HTTP) from the URL, or checks
  that an explicit ``storage_type`` agrees with it;
* ``parse_object_url`` turns the S3 and R2 forms into an ``ObjectLocation``;
* ``UrlPolicy`` decides which hosts and buckets may be read, and returns the
  addresses it checked (an ``Endpoint``); the FTP and HTTP downloaders connect to
  exactly those, so a second DNS answer cannot swap the target (DNS rebinding);
* ``blocked_reason`` classifies an address (loopback, private, metadata ...).

The resolver is a field of the policy, so tests hand it a table instead of
patching DNS. The module imports neither requests nor boto3: the handler can
check a URL without paying for them at cold start.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import cached_property
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

from errors import BlockedByPolicy, ConfigurationError, InvalidRequest, InvalidUrl, UpstreamError
from service_log import shown_url

SOURCES = ("s3", "r2", "ftp", "http")
STORAGE_TYPES = ("auto", "s3", "r2", "ftp", "http", "https")
MAX_URL_LENGTH = 8192

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_SCHEMES = ("s3", "r2", "ftp", "ftps", "http", "https")
_HOST_NAME_RE = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
# WHATWG URL: a host whose last label is a number is an IPv4 address in some spelling.
_NUMERIC_LABEL_RE = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)

_AWS_REGION = r"[a-z]{2}(?:-[a-z]+)+-\d+"
# https://bucket.s3.amazonaws.com, bucket.s3.REGION..., bucket.s3-REGION...
_S3_VIRTUAL_HOST_RE = re.compile(
    rf"^(?P<bucket>.+)\.s3(?:[.-](?:dualstack\.)?(?P<region>{_AWS_REGION}))?"
    r"\.amazonaws\.com(?:\.cn)?$"
)
# https://s3.amazonaws.com/bucket/key, s3.REGION..., s3-REGION...
_S3_PATH_HOST_RE = re.compile(
    rf"^s3(?:[.-](?:dualstack\.)?(?P<region>{_AWS_REGION}))?\.amazonaws\.com(?:\.cn)?$"
)
_R2_SUFFIX = ".r2.cloudflarestorage.com"
_R2_HOST_RE = re.compile(r"^(?P<account>[a-z0-9-]+)(?:\.(?P<jurisdiction>eu|fedramp))?$")
# Lenient on purpose: legacy buckets (us-east-1) allow capitals and underscores, and
# a wrong name is best reported by the store itself (NoSuchBucket).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{2,254}$", re.IGNORECASE)
_PRESIGNED_PARAMS = ("x-amz-signature", "signature")


def is_bucket_name(name: str) -> bool:
    """Whether ``name`` can name an S3 or R2 bucket in a URL the function reads."""
    return bool(_BUCKET_RE.match(name))


# --------------------------------------------------------------------------- URL parsing


def split_url(url: str) -> SplitResult:
    """Parse ``url`` once, refusing what no source accepts."""
    if not isinstance(url, str) or not url.strip():
        raise InvalidUrl("field 'url' must be a non-empty string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise InvalidUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if CONTROL_RE.search(url):
        raise InvalidUrl("the URL contains control characters; percent-encode them")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as exc:
        raise InvalidUrl(f"the URL {shown_url(url)} cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise InvalidUrl("the URL has no scheme; use s3://, ftp://, ftps://, http:// or https://")
    if scheme not in _SCHEMES:
        raise InvalidUrl(
            f"the URL scheme '{scheme}://' is not supported; use s3://, ftp://, ftps://, "
            "http:// or https:// (r2:// when R2_ENDPOINT_URL is set)"
        )
    if not parts.netloc:
        raise InvalidUrl(f"the URL {shown_url(url)} names no host or bucket")
    if "\\" in parts.netloc:
        # urllib3 (like WHATWG parsers) ends the host at a backslash, urlsplit does not:
        # the two would disagree about the port, or the host, the request goes to.
        raise InvalidUrl("the URL's host part contains a backslash; percent-encode it")
    return parts


@dataclass(frozen=True)
class SourceEndpoints:
    """Where S3 and R2 URLs are sent (S3_ENDPOINT_URL, R2_ENDPOINT_URL); None: the stores'."""

    s3: str | None = None
    r2: str | None = None

    def for_source(self, source: str) -> str | None:
        return self.s3 if source == "s3" else self.r2


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return (parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or default)


def _on_endpoint(parts: SplitResult, endpoint_url: str | None) -> bool:
    """Whether the URL points at an operator-configured S3/R2 endpoint."""
    if not endpoint_url:
        return False
    return _origin(parts.geturl()) == _origin(endpoint_url)


def _is_presigned(parts: SplitResult) -> bool:
    names = {name.lower() for name in parse_qs(parts.query, keep_blank_values=True)}
    return any(name in names for name in _PRESIGNED_PARAMS)


def _detect(parts: SplitResult, endpoints: SourceEndpoints) -> str:
    """The source that ``storage_type='auto'`` picks for this URL."""
    scheme = parts.scheme.lower()
    if scheme == "s3":
        return "s3"
    if scheme == "r2":
        if not endpoints.r2:
            raise InvalidUrl(
                "r2://bucket/key URLs need R2_ENDPOINT_URL; otherwise use "
                "https://ACCOUNT.r2.cloudflarestorage.com/bucket/key"
            )
        return "r2"
    if scheme in ("ftp", "ftps"):
        return "ftp"
    host = (parts.hostname or "").lower()
    if _is_presigned(parts):
        # A presigned URL carries its own authorisation: reading it with the
        # function's credentials instead would widen what the caller may read.
        return "http"
    if _on_endpoint(parts, endpoints.s3):
        return "s3"
    if _on_endpoint(parts, endpoints.r2):
        return "r2"
    if _S3_PATH_HOST_RE.match(host) or _S3_VIRTUAL_HOST_RE.match(host):
        return "s3"
    if host.endswith(_R2_SUFFIX):
        return "r2"
    return "http"


def _requested_type(storage_type: str | None) -> str:
    requested = "auto" if storage_type is None else str(storage_type).strip().lower()
    if requested not in STORAGE_TYPES:
        raise InvalidRequest(
            f"field 'storage_type' must be one of auto, s3, r2, ftp, http "
            f"(https is accepted as http); got {str(storage_type)[:40]!r}"
        )
    return "http" if requested == "https" else requested


def _contradiction(requested: str, detected: str, parts: SplitResult) -> InvalidUrl:
    scheme = parts.scheme.lower()
    if requested == "s3" and detected == "http" and _is_presigned(parts):
        why = "the URL is presigned (it carries a Signature), so it is fetched over HTTP"
    elif scheme in ("s3", "r2", "ftp", "ftps"):
        why = f"a {scheme}:// URL is read from {detected.upper()}"
    elif requested == "s3":
        why = (
            "the URL does not name an S3 object (use s3://bucket/key or "
            "https://bucket.s3.amazonaws.com/key)"
        )
    elif requested == "r2":
        why = (
            "the URL does not name an R2 object "
            "(use https://ACCOUNT.r2.cloudflarestorage.com/bucket/key)"
        )
    else:
        why = f"an {scheme}:// URL is not read over {requested.upper()}"
    return InvalidUrl(
        f"storage_type '{requested}' contradicts the URL: {why}; "
        f"send storage_type '{detected}' or 'auto'"
    )


def source_type(
    url: str, storage_type: str = "auto", endpoints: SourceEndpoints = SourceEndpoints()
) -> str:
    """The source that will serve ``url``: ``"s3"``, ``"r2"``, ``"ftp"`` or ``"http"``.

    Checks the URL's syntax and that an explicit ``storage_type`` agrees with it;
    raises ``InvalidUrl`` (or ``InvalidRequest`` for an unknown ``storage_type``).
    The URL policy (hosts, addresses, buckets) is applied by ``UrlPolicy``.
    """
    requested = _requested_type(storage_type)
    parts = split_url(url)
    detected = _detect(parts, endpoints)
    source = detected
    if requested != "auto" and requested != detected:
        # Any http(s) URL may be read as plain HTTP, e.g. an object in a public bucket.
        if not (requested == "http" and parts.scheme.lower() in ("http", "https")):
            raise _contradiction(requested, detected, parts)
        source = "http"
    if source in ("s3", "r2"):
        parse_object_url(url, source, endpoints)
    elif source == "ftp":
        ftp_target(parts)
    return source


# --------------------------------------------------------------------------- FTP targets


@dataclass(frozen=True)
class FtpTarget:
    """What an FTP URL asks for: TLS or not, the login, and the path to RETR."""

    tls: bool
    user: str
    password: str = field(repr=False)
    path: str


def ftp_target(parts: SplitResult) -> FtpTarget:
    path = unquote(parts.path)
    # RFC 1738: the path is relative to the login folder; "%2F" makes it absolute.
    path = path[1:] if path.startswith("/") else path
    if not path or path.endswith("/"):
        raise InvalidUrl("the FTP URL must name a file, e.g. ftp://host/folder/file.dcm")
    if CONTROL_RE.search(path):
        raise InvalidUrl("the FTP path contains control characters")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if CONTROL_RE.search(user + password):
        raise InvalidUrl("the FTP user name or password contains control characters")
    return FtpTarget(parts.scheme.lower() == "ftps", user, password, path)


# --------------------------------------------------------------------------- S3 and R2 objects


@dataclass(frozen=True)
class ObjectLocation:
    """One S3/R2 object: bucket, key, optional version, and where to read it."""

    source: str
    bucket: str
    key: str
    version_id: str | None = None
    region: str | None = None
    endpoint_url: str | None = None

    def __str__(self) -> str:
        version = f"?versionId={self.version_id}" if self.version_id else ""
        return f"{self.source}://{self.bucket}/{self.key}{version}"


def _version_id(parts: SplitResult) -> str | None:
    values = parse_qs(parts.query, keep_blank_values=True).get("versionId")
    if not values:
        return None
    if len(values) > 1 or not values[0]:
        raise InvalidUrl("the URL must carry at most one non-empty versionId")
    return values[0]


def _path_style(path: str) -> tuple[str, str]:
    bucket, _, key = path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def _key_from_path(path: str) -> str:
    return unquote(path[1:] if path.startswith("/") else path)


def _r2_endpoint(host: str) -> str:
    match = _R2_HOST_RE.match(host[: -len(_R2_SUFFIX)])
    if not match:
        raise InvalidUrl(
            "R2 URLs must have the form https://ACCOUNT.r2.cloudflarestorage.com/bucket/key"
        )
    return f"https://{host}"


def _bucket_and_key(
    url: str, parts: SplitResult, source: str, configured: str | None
) -> tuple[str, str, str | None, str | None]:
    """(bucket, key, region, account endpoint) of each URL form a source accepts."""
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme in ("s3", "r2"):
        if "@" in parts.netloc or ":" in parts.netloc:
            raise InvalidUrl(f"{shown_url(url)}: {scheme}:// URLs name a bucket, not a host")
        return parts.netloc, _key_from_path(parts.path), None, None
    if _on_endpoint(parts, configured):
        return (*_path_style(parts.path), None, None)
    if source == "s3" and (match := _S3_PATH_HOST_RE.match(host)):
        return (*_path_style(parts.path), match["region"], None)
    if source == "s3" and (match := _S3_VIRTUAL_HOST_RE.match(host)):
        return match["bucket"], _key_from_path(parts.path), match["region"], None
    if source == "r2" and host.endswith(_R2_SUFFIX):
        endpoint = _r2_endpoint(host)
        return (*_path_style(parts.path), None, endpoint)
    raise InvalidUrl(f"{shown_url(url)} does not name an {source.upper()} object")


def _check_key_segments(key: str) -> None:
    """Refuse keys with ``.``, ``..`` or empty segments.

    S3 reads keys literally, but an S3-compatible store or a proxy in front of one
    may normalise the path, and ``a/../../other-bucket/b`` would then read another
    bucket than the one ALLOWED_BUCKETS approved.
    """
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            shown = "an empty segment ('//', or a leading or trailing '/')"
            if segment:
                shown = f"a '{segment}' segment"
            raise InvalidUrl(
                f"the object key has {shown}; name the object by its plain key, "
                "e.g. s3://bucket/folder/file.dcm"
            )


def parse_object_url(
    url: str, source: str, endpoints: SourceEndpoints = SourceEndpoints()
) -> ObjectLocation:
    """Bucket, key and version of an S3 or R2 URL, in any of the supported forms.

    Keys are percent-decoded (write a literal ``%`` as ``%25``); spaces may appear
    as-is or as ``%20``. With an endpoint configured for the source (S3_ENDPOINT_URL,
    R2_ENDPOINT_URL), every form is read through it and the URL only names the
    bucket and key.
    """
    parts = split_url(url)
    configured = endpoints.for_source(source)
    bucket, key, region, endpoint = _bucket_and_key(url, parts, source, configured)
    if not is_bucket_name(bucket):
        raise InvalidUrl(f"{shown_url(url)}: {bucket[:70]!r} is not a valid bucket name")
    if not key:
        raise InvalidUrl(f"{shown_url(url)} names bucket '{bucket}' but no object key")
    if len(key.encode("utf-8")) > 1024:
        raise InvalidUrl("the object key is longer than 1024 bytes")
    _check_key_segments(key)
    return ObjectLocation(
        source=source,
        bucket=bucket,
        key=key,
        version_id=_version_id(parts),
        region=region,
        endpoint_url=configured or endpoint,
    )


# --------------------------------------------------------------------------- addresses

_SHARED_NETWORK = ipaddress.ip_network("100.64.0.0/10")
# IANA: not globally reachable. Older Pythons (before 3.11.10/3.12.4) call most of it
# global, and 192.0.0.192 is a cloud metadata address (Oracle).
_IETF_PROTOCOL_NETWORK = ipaddress.ip_network("192.0.0.0/24")
_NAT64_NETWORK = ipaddress.ip_network("64:ff9b::/96")
_METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),
    ipaddress.ip_address("169.254.170.2"),
    ipaddress.ip_address("fd00:ec2::254"),
}


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64_NETWORK:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why the default policy refuses ``address``, or None for a public address."""
    if isinstance(address, ipaddress.IPv6Address) and (inner := _embedded_ipv4(address)):
        reason = blocked_reason(inner)
        return f"an IPv6 form of {inner}, {reason}" if reason else None
    if address in _METADATA_ADDRESSES:
        return "a link-local address of a cloud metadata service"
    checks: tuple[tuple[str, bool], ...] = (
        ("an unspecified address", address.is_unspecified),
        ("a loopback address", address.is_loopback),
        ("a link-local address", address.is_link_local),
        # fec0::/10: deprecated (RFC 3879) but still routed inside some networks, and
        # not private to the ipaddress module.
        ("a site-local address", getattr(address, "is_site_local", False)),
        ("a shared (carrier-grade NAT) address", address in _SHARED_NETWORK),
        ("an IETF protocol assignment address", address in _IETF_PROTOCOL_NETWORK),
        ("a multicast address", address.is_multicast),
        ("a reserved address", address.is_reserved),
        ("a private address", address.is_private),
        ("not a public address", not address.is_global),
    )
    return next((reason for reason, hit in checks if hit), None)


def resolve_system(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for ``host`` (the policy's default)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Endpoint:
    """A host the policy admitted, and the addresses to connect to (IPv4 first)."""

    scheme: str
    host: str
    port: int
    addresses: tuple[IPAddress, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = {"http": 80, "https": 443, "ftp": 21, "ftps": 21}[self.scheme]
        return host if self.port == default else f"{host}:{self.port}"


# --------------------------------------------------------------------------- ALLOWED_HOSTS

# The default port of each scheme: an ALLOWED_HOSTS entry without a port admits only it.
DEFAULT_PORTS = {"http": 80, "https": 443, "ftp": 21, "ftps": 21}
_ENTRY_NAME_RE = re.compile(r"^(?P<wild>\*\.)?(?P<name>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)\.?$")


@dataclass(frozen=True)
class HostEntry:
    """One ALLOWED_HOSTS entry: a name, a ``*.suffix`` or an IP network, and its ports.

    ``port`` None with ``any_port`` False admits only the scheme's default port.
    """

    name: str | None = None
    suffix: str | None = None  # ".example.org" for "*.example.org"
    network: IPNetwork | None = None
    port: int | None = None
    any_port: bool = False

    def admits_port(self, port: int, default: int) -> bool:
        return self.any_port or port == (default if self.port is None else self.port)

    def admits_name(self, host: str) -> bool:
        if self.name is not None:
            return host == self.name
        return self.suffix is not None and host.endswith(self.suffix)


def _split_entry(text: str) -> tuple[str, str | None, bool]:
    """(host, port text or None, bracketed) of an entry; ValueError if malformed."""
    if text.startswith("["):
        host, close, rest = text[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ValueError("an IPv6 entry is written [address] or [address]:port")
        return host, (rest[1:] if rest else None), True
    if "/" in text:
        # CIDR:port; the prefix length holds no colon, so IPv6 networks need no brackets.
        network, _, tail = text.partition("/")
        length, colon, port = tail.partition(":")
        return f"{network}/{length}", (port if colon else None), False
    if text.count(":") >= 2:
        return text, None, False  # a bare IPv6 address: write [address]:port for a port
    host, colon, port = text.partition(":")
    return host, (port if colon else None), False


def _entry_port(text: str | None) -> tuple[int | None, bool]:
    if text is None:
        return None, False
    if text == "*":
        return None, True
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError("a port is a number from 1 to 65535, or *")
    return int(text), False


def parse_host_entry(entry: str) -> HostEntry:
    """An ALLOWED_HOSTS entry: ``host``, ``*.suffix``, ``IP``, ``CIDR`` or ``[IPv6]``,
    each optionally followed by ``:port`` or ``:*``. Raises ``ValueError``."""
    host, port_text, bracketed = _split_entry(entry.strip().lower())
    port, any_port = _entry_port(port_text)
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        network = None
    if network is not None:
        if bracketed and network.version != 6:
            raise ValueError("brackets hold an IPv6 address or network")
        return HostEntry(network=network, port=port, any_port=any_port)
    match = None if bracketed else _ENTRY_NAME_RE.match(host)
    if match is None:
        raise ValueError("not a host name, *.suffix, IP address or CIDR")
    if match["wild"]:
        return HostEntry(suffix="." + match["name"], port=port, any_port=any_port)
    return HostEntry(name=match["name"], port=port, any_port=any_port)


def runtime_api_endpoint(value: str | None) -> tuple[str, int | None] | None:
    """(host, port) of the Lambda Runtime API (AWS_LAMBDA_RUNTIME_API, e.g. 127.0.0.1:9001)."""
    if not value or not value.strip():
        return None
    try:
        parts = urlsplit("//" + value.strip())
        return (parts.hostname or "").lower(), parts.port
    except ValueError:
        # Unparsable: keep the host, and refuse every port of it.
        return value.strip().lower(), None


def _local(address: IPAddress) -> bool:
    """Whether a connection to ``address`` stays on this machine."""
    inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
    return any(a.is_loopback or a.is_unspecified for a in (address, inner) if a is not None)


# --------------------------------------------------------------------------- the policy


def _runtime_api_from_environment() -> str | None:
    return os.environ.get("AWS_LAMBDA_RUNTIME_API") or None


@dataclass(frozen=True)
class UrlPolicy:
    """Which hosts, ports, addresses and buckets callers' URLs may reach.

    With no ``allowed_hosts`` (ALLOWED_HOSTS) every host is allowed, on any port,
    whose every address is public. With them, the host must match a name, a
    ``*.suffix`` or (for an IP host) an IP/CIDR entry, and each address must be
    public or inside an IP/CIDR entry; that is how loopback and VPC addresses are
    admitted, explicitly. Each entry admits the port it names (``host:8443``,
    ``[::1]:8080``, ``10.0.0.0/8:9000``), every port (``host:*``), or without a
    port only the scheme's default one (80, 443, 21).

    ``runtime_api`` (AWS_LAMBDA_RUNTIME_API) is never reachable, listed or not:
    through it a caller could read or answer the function's own invocations.
    ``allowed_buckets`` (ALLOWED_BUCKETS) are fnmatch patterns; empty allows every
    bucket. ``resolver`` maps ``(host, port)`` to address strings; tests pass their own.
    """

    allowed_hosts: tuple[str, ...] = ()
    allowed_buckets: tuple[str, ...] = ()
    resolver: Resolver = field(default=resolve_system, compare=False, repr=False)
    runtime_api: str | None = field(default_factory=_runtime_api_from_environment, repr=False)

    @cached_property
    def _entries(self) -> tuple[HostEntry, ...]:
        entries = []
        for text in self.allowed_hosts:
            if not text.strip():
                continue
            try:
                entries.append(parse_host_entry(text))
            except ValueError:
                # The entry is left out: the list names internal hosts.
                raise ConfigurationError(
                    "setting ALLOWED_HOSTS must list host names, *.suffix, IPs, CIDRs or "
                    "[IPv6], each optionally followed by :port or :*"
                ) from None
        return tuple(entries)

    @property
    def restricts_hosts(self) -> bool:
        return bool(self._entries)

    def check_bucket(self, bucket: str) -> None:
        patterns = self.allowed_buckets
        if patterns and not any(fnmatchcase(bucket, pattern) for pattern in patterns):
            raise BlockedByPolicy(
                f"bucket '{bucket}' is not in ALLOWED_BUCKETS; the function reads only "
                "the buckets listed there"
            )

    def check_url(self, url: str) -> Endpoint:
        """Admit the host and port of an FTP or HTTP URL; return the addresses checked."""
        parts = split_url(url)
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise InvalidUrl(f"{shown_url(url)} is not an FTP or HTTP URL")
        bracketed = parts.netloc.rpartition("@")[2].startswith("[")
        host = _normalised_host(parts.hostname or "", bracketed)
        default = DEFAULT_PORTS[scheme]
        if parts.port == 0:
            raise InvalidUrl(f"{shown_url(url)} names port 0; use a port from 1 to 65535")
        port = parts.port or default
        addresses = self.check_host(host, port, default, bracketed=bracketed)
        return Endpoint(scheme, host, port, addresses)

    def check_host(
        self, host: str, port: int, default_port: int, bracketed: bool = False
    ) -> tuple[IPAddress, ...]:
        """The addresses of ``host`` after every policy rule; raises ``BlockedByPolicy``.

        ``default_port`` is the scheme's: the only one an entry without a port admits.
        """
        literal = _ip_literal(host, bracketed)
        if literal is not None:
            self._check_literal(host, literal, port, default_port, bracketed)
            addresses: tuple[IPAddress, ...] = (literal,)
        else:
            self._check_name(host, port, default_port)
            addresses = self._resolve(host, port)
        for address in addresses:
            self.check_data_port(address, port, host)
            self._check_address(host, address, port, default_port)
        # Lambda has IPv4 egress everywhere, IPv6 only in dual-stack VPCs.
        return tuple(sorted(addresses, key=lambda a: a.version))

    def check_data_port(self, address: IPAddress, port: int, host: str = "") -> None:
        """Refuse the Lambda Runtime API; also for an FTP data port the server chose."""
        runtime = runtime_api_endpoint(self.runtime_api)
        if runtime is None:
            return
        runtime_host, runtime_port = runtime
        if runtime_port is not None and port != runtime_port:
            return
        try:
            runtime_address: IPAddress | None = ipaddress.ip_address(runtime_host.strip("[]"))
        except ValueError:
            runtime_address = None
        if runtime_address is None:
            hit = host == runtime_host or (runtime_host == "localhost" and _local(address))
        elif _local(runtime_address):
            # A server bound to 127.0.0.1 may also answer on 0.0.0.0 or another
            # loopback spelling: every local address counts.
            hit = _local(address)
        else:
            inner = _embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else None
            hit = runtime_address in (address, inner)
        if hit:
            raise BlockedByPolicy(
                f"port {port} of {address} is the Lambda Runtime API; the URL policy never "
                "lets a URL reach it, whatever ALLOWED_HOSTS lists"
            )

    def _allowed_network(self, address: IPAddress, port: int, default_port: int) -> bool:
        return any(
            entry.network is not None
            and address in entry.network
            and entry.admits_port(port, default_port)
            for entry in self._entries
        )

    def _check_name(self, host: str, port: int, default_port: int) -> None:
        if not self.restricts_hosts:
            return
        named = [entry for entry in self._entries if entry.admits_name(host)]
        if any(entry.admits_port(port, default_port) for entry in named):
            return
        if named:
            raise BlockedByPolicy(_port_not_listed(f"host '{host}'", host, port, default_port))
        raise BlockedByPolicy(
            f"host '{host}' is not in ALLOWED_HOSTS; only the hosts listed there may be fetched"
        )

    def _listed_on_other_port(self, address: IPAddress) -> bool:
        return any(e.network is not None and address in e.network for e in self._entries)

    def _check_literal(
        self, host: str, address: IPAddress, port: int, default_port: int, bracketed: bool
    ) -> None:
        if self._allowed_network(address, port, default_port):
            return
        shown = f"[{host}]" if bracketed else host
        if self._listed_on_other_port(address):
            raise BlockedByPolicy(_port_not_listed(f"host {shown}", shown, port, default_port))
        if bracketed:
            raise BlockedByPolicy(
                f"bracketed IPv6 host [{host}] is refused unless ALLOWED_HOSTS lists the address"
            )
        if self.restricts_hosts:
            raise BlockedByPolicy(f"host {host} is not in ALLOWED_HOSTS")

    def _check_address(self, host: str, address: IPAddress, port: int, default_port: int) -> None:
        if self._allowed_network(address, port, default_port):
            return
        reason = blocked_reason(address)
        if reason is None:
            return
        subject = (
            f"host {host} is" if host == str(address) else f"host '{host}' resolves to {address},"
        )
        if self._listed_on_other_port(address):
            raise BlockedByPolicy(
                f"{subject} {reason}, listed in ALLOWED_HOSTS but not with port {port}; "
                f"add {_entry_form(str(address))}:{port} (an entry without a port admits "
                f"only port {default_port})"
            )
        raise BlockedByPolicy(
            f"{subject} {reason}; the URL policy refuses it unless ALLOWED_HOSTS lists "
            "the address or its network (with the port, e.g. 10.0.0.0/8:8080)"
        )

    def _resolve(self, host: str, port: int) -> tuple[IPAddress, ...]:
        try:
            found = self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise UpstreamError(f"cannot resolve host '{host}': check the URL's host name") from exc
        addresses = {ipaddress.ip_address(text.split("%", 1)[0]) for text in found}
        if not addresses:
            raise UpstreamError(f"host '{host}' has no address")
        return tuple(sorted(addresses, key=lambda a: (a.version, int(a))))


def _entry_form(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _port_not_listed(subject: str, host: str, port: int, default_port: int) -> str:
    return (
        f"{subject} is in ALLOWED_HOSTS, but not with port {port}; add "
        f"{_entry_form(host)}:{port} or {_entry_form(host)}:* (an entry without a port "
        f"admits only port {default_port})"
    )


def _normalised_host(host: str, bracketed: bool) -> str:
    """The host in lower-case ASCII without a trailing dot; refuses odd characters."""
    if bracketed:
        return host.lower()
    host = host.lower()
    host = host[:-1] if host.endswith(".") else host
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise InvalidUrl(f"host '{host[:70]}' is not a valid international name") from None
    if not _HOST_NAME_RE.match(host):
        raise InvalidUrl(f"host '{host[:70]}' contains characters not allowed in host names")
    return host


def _ip_literal(host: str, bracketed: bool) -> IPAddress | None:
    """The address a host spells literally; refuses IPv4 spellings other than a.b.c.d."""
    if bracketed:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidUrl(f"[{host[:70]}] is not an IPv6 address") from None
    if not _NUMERIC_LABEL_RE.match(host.rsplit(".", 1)[-1]):
        return None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        raise BlockedByPolicy(
            f"host '{host[:70]}' spells an IPv4 address in decimal, octal, hex or short "
            "form; the URL policy accepts only the dotted form a.b.c.d"
        ) from None
