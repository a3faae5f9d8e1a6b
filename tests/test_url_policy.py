"""url_policy: URL forms, source detection, the address classifier and the policy.

None of these tests connects anywhere or asks DNS: every policy is given a resolver
that answers from a table (or fails the test when it is asked at all). The live
refusals, through real servers on loopback, are in test_file_downloader.py and
test_adversarial_network.py.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import url_policy
from errors import BlockedByPolicy, InvalidRequest, InvalidUrl, UpstreamError
from tests.corpus import env_flag
from tests.ssrf_cases import SSRF_DNS, SSRF_TABLE, URL_PASSWORD, no_lookup, ssrf_resolver
from url_policy import (
    SourceEndpoints,
    UrlPolicy,
    blocked_reason,
    ftp_target,
    is_bucket_name,
    parse_object_url,
    source_type,
    split_url,
)


def no_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolved {host} although no DNS lookup was expected")


def table_resolver(table: dict[str, list[str]]) -> Any:
    """A resolver answering from ``table`` only, so table tests never query DNS."""

    def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} is not in the test table")
        return table[host]

    return resolve


# --------------------------------------------------------------------------- URL forms


ENDPOINTS = SourceEndpoints(s3="http://127.0.0.1:9", r2="http://127.0.0.1:8")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://scans/a.dcm", "s3"),
        ("S3://scans/a.dcm", "s3"),
        ("https://scans.s3.amazonaws.com/a.dcm", "s3"),
        ("https://my.dotted.bucket.s3.us-east-1.amazonaws.com/a.dcm", "s3"),
        ("https://scans.s3-eu-west-1.amazonaws.com/a.dcm", "s3"),
        ("https://s3.eu-west-1.amazonaws.com/scans/a.dcm", "s3"),
        ("https://s3.amazonaws.com/scans/a.dcm", "s3"),
        ("https://0123abcd.r2.cloudflarestorage.com/scans/a.dcm", "r2"),
        ("https://0123abcd.eu.r2.cloudflarestorage.com/scans/a.dcm", "r2"),
        ("ftp://host.example/a.dcm", "ftp"),
        ("ftps://user:pw@host.example/a.dcm", "ftp"),
        ("https://example.com/a.dcm", "http"),
        ("http://example.com:8080/a.dcm?x=1", "http"),
        # A presigned URL carries its own authorisation: fetched as plain HTTPS.
        ("https://scans.s3.amazonaws.com/a.dcm?X-Amz-Signature=abc&X-Amz-Credential=k", "http"),
        ("https://s3.amazonaws.com/scans/a.dcm?AWSAccessKeyId=k&Signature=abc", "http"),
        ("https://0123abcd.r2.cloudflarestorage.com/scans/a.dcm?X-Amz-Signature=abc", "http"),
        # S3 website endpoints are plain web servers.
        ("http://scans.s3-website-us-east-1.amazonaws.com/a.dcm", "http"),
    ],
)
def test_source_type_auto(url: str, expected: str) -> None:
    assert source_type(url, "auto") == expected


def test_source_type_with_endpoints_configured() -> None:
    assert source_type("r2://scans/a.dcm", endpoints=ENDPOINTS) == "r2"
    # URLs on the configured endpoints are read through them, with credentials.
    assert source_type("http://127.0.0.1:9/scans/a.dcm", endpoints=ENDPOINTS) == "s3"
    assert source_type("http://127.0.0.1:8/scans/a.dcm", endpoints=ENDPOINTS) == "r2"
    with pytest.raises(InvalidUrl, match="R2_ENDPOINT_URL"):
        source_type("r2://scans/a.dcm")


@pytest.mark.parametrize(
    ("url", "storage_type", "expected"),
    [
        ("s3://scans/a.dcm", "s3", "s3"),
        ("s3://scans/a.dcm", "S3", "s3"),
        ("https://scans.s3.amazonaws.com/a.dcm", "s3", "s3"),
        # Any http(s) URL may be read as plain HTTP, e.g. from a public bucket.
        ("https://scans.s3.amazonaws.com/a.dcm", "http", "http"),
        ("https://0123abcd.r2.cloudflarestorage.com/scans/a.dcm", "r2", "r2"),
        ("https://example.com/a.dcm", "https", "http"),
        ("ftp://host.example/a.dcm", "ftp", "ftp"),
        ("https://example.com/a.dcm", None, "http"),
    ],
)
def test_explicit_storage_type_that_agrees(url: str, storage_type: Any, expected: str) -> None:
    assert source_type(url, storage_type) == expected


@pytest.mark.parametrize(
    ("url", "storage_type", "reason"),
    [
        ("s3://scans/a.dcm", "http", "s3:// URL is read from S3"),
        ("s3://scans/a.dcm", "r2", "s3:// URL is read from S3"),
        ("s3://scans/a.dcm", "ftp", "s3:// URL is read from S3"),
        ("https://example.com/a.dcm", "s3", "does not name an S3 object"),
        ("https://example.com/a.dcm", "r2", "does not name an R2 object"),
        ("https://example.com/a.dcm", "ftp", "not read over FTP"),
        ("https://0123abcd.r2.cloudflarestorage.com/scans/a.dcm", "s3", "S3 object"),
        ("https://scans.s3.amazonaws.com/a.dcm", "r2", "R2 object"),
        ("ftp://host.example/a.dcm", "http", "ftp:// URL is read from FTP"),
        ("https://scans.s3.amazonaws.com/a.dcm?X-Amz-Signature=abc", "s3", "presigned"),
    ],
)
def test_storage_type_contradicting_the_url_is_a_400(
    url: str, storage_type: str, reason: str
) -> None:
    with pytest.raises(InvalidUrl) as caught:
        source_type(url, storage_type)
    assert caught.value.status == 400
    assert f"storage_type '{storage_type}' contradicts the URL" in caught.value.message
    assert reason in caught.value.message
    assert "abc" not in caught.value.message


def test_unknown_storage_type_names_the_field() -> None:
    with pytest.raises(InvalidRequest, match="storage_type") as caught:
        source_type("s3://scans/a.dcm", "gcs")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("url", "bucket", "key", "version", "region"),
    [
        ("s3://scans/a.dcm", "scans", "a.dcm", None, None),
        ("s3://my.bucket/dir/my scan (1).dcm", "my.bucket", "dir/my scan (1).dcm", None, None),
        (
            "s3://my.bucket/dir/my%20scan%20%281%29.dcm",
            "my.bucket",
            "dir/my scan (1).dcm",
            None,
            None,
        ),
        ("s3://scans/caf%C3%A9%2B%25.dcm?versionId=v1", "scans", "café+%.dcm", "v1", None),
        ("https://scans.s3.amazonaws.com/a%20b.dcm", "scans", "a b.dcm", None, None),
        (
            "https://my.bucket.s3.us-west-2.amazonaws.com/k.dcm",
            "my.bucket",
            "k.dcm",
            None,
            "us-west-2",
        ),
        ("https://scans.s3-eu-west-1.amazonaws.com/k.dcm", "scans", "k.dcm", None, "eu-west-1"),
        (
            "https://s3.ap-south-1.amazonaws.com/my.bucket/a/b.dcm",
            "my.bucket",
            "a/b.dcm",
            None,
            "ap-south-1",
        ),
        ("https://s3.amazonaws.com/scans/k.dcm?versionId=3HL4k", "scans", "k.dcm", "3HL4k", None),
    ],
)
def test_s3_url_forms_name_bucket_key_and_version(
    url: str, bucket: str, key: str, version: str | None, region: str | None
) -> None:
    location = parse_object_url(url, "s3")
    assert (location.bucket, location.key, location.version_id, location.region) == (
        bucket,
        key,
        version,
        region,
    )


def test_r2_url_forms_name_the_account_endpoint() -> None:
    location = parse_object_url(
        "https://0123abcd.eu.r2.cloudflarestorage.com/scans/a%20b.dcm", "r2"
    )
    assert (location.bucket, location.key) == ("scans", "a b.dcm")
    assert location.endpoint_url == "https://0123abcd.eu.r2.cloudflarestorage.com"
    # With R2_ENDPOINT_URL every form goes there; the URL only names bucket and key.
    location = parse_object_url(
        "https://0123abcd.r2.cloudflarestorage.com/scans/a.dcm", "r2", ENDPOINTS
    )
    assert location.endpoint_url == "http://127.0.0.1:8"


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.255.254", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "shared"),
        ("100.127.255.254", "shared"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("192.0.2.10", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::7f00:1", "loopback"),
        ("2002:a00:1::", "private"),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_classifier(address: str, reason: str | None) -> None:
    verdict = blocked_reason(ipaddress.ip_address(address))
    if reason is None:
        assert verdict is None
    else:
        assert verdict is not None and reason in verdict


SSRF_RESOLVER = table_resolver(
    {
        "localhost": ["127.0.0.1", "::1"],
        "metadata.test": ["169.254.169.254"],
        "intranet.test": ["10.1.2.3"],
        "shared.test": ["100.64.1.1"],
        "mapped.test": ["::ffff:127.0.0.1"],
        "rebind.test": ["93.184.216.34", "127.0.0.1"],
        "v6local.test": ["fe80::1%1"],
        "public.test": ["93.184.216.34"],
    }
)


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.0.0.2:8080/a.dcm", "loopback"),
        ("http://localhost/", "resolves to 127.0.0.1"),
        ("http://10.0.0.1/", "private"),
        ("http://172.31.255.255/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://100.64.0.1/", "shared"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://2130706433/", "decimal, octal, hex"),
        ("http://0x7f000001/", "decimal, octal, hex"),
        ("http://0x7f.0.0.1/", "decimal, octal, hex"),
        ("http://0177.0.0.1/", "decimal, octal, hex"),
        ("http://017700000001/", "decimal, octal, hex"),
        ("http://127.1/", "decimal, octal, hex"),
        ("http://169.254.43518/", "decimal, octal, hex"),
        ("http://[::1]/", "bracketed IPv6"),
        ("http://[::ffff:127.0.0.1]/", "bracketed IPv6"),
        ("http://[::ffff:a9fe:a9fe]/", "bracketed IPv6"),
        ("http://[fe80::1]/", "bracketed IPv6"),
        ("http://[2606:4700:4700::1111]/", "bracketed IPv6"),
        ("https://metadata.test/latest/", "metadata"),
        ("https://intranet.test/a.dcm", "private"),
        ("https://shared.test/a.dcm", "shared"),
        ("https://mapped.test/a.dcm", "loopback"),
        ("https://rebind.test/a.dcm", "loopback"),
        ("https://v6local.test/a.dcm", "link-local"),
        ("ftp://10.0.0.1/a.dcm", "private"),
        ("ftp://user:pw@169.254.169.254/a.dcm", "metadata"),
    ],
)
def test_ssrf_table_default_policy_refuses(url: str, rule: str) -> None:
    policy = UrlPolicy(resolver=SSRF_RESOLVER)
    with pytest.raises(BlockedByPolicy) as caught:
        policy.check_url(url)
    assert caught.value.status == 403
    assert rule in caught.value.message


def test_default_policy_accepts_public_hosts() -> None:
    policy = UrlPolicy(resolver=SSRF_RESOLVER)
    endpoint = policy.check_url("https://public.test/a.dcm")
    assert endpoint.addresses == (ipaddress.ip_address("93.184.216.34"),)
    assert endpoint.host_header == "public.test"
    assert policy.check_url("http://8.8.8.8:8080/a").host_header == "8.8.8.8:8080"


@pytest.mark.parametrize(
    ("allowed", "url", "admitted"),
    [
        ("127.0.0.1:8080", "http://127.0.0.1:8080/a", True),
        ("127.0.0.1:*", "http://127.0.0.2:8080/a", False),
        ("127.0.0.1:*", "http://localhost:8080/a", False),
        ("127.0.0.1:*", "http://2130706433:8080/a", False),
        ("127.0.0.1:*", "http://[::ffff:127.0.0.1]:8080/a", False),
        ("127.0.0.0/8:8080", "http://127.0.0.2:8080/a", True),
        ("[::1]:8080", "http://[::1]:8080/a", True),
        # A listed name is not enough for a private address: list the address too.
        ("localhost:8080", "http://localhost:8080/a", False),
        ("localhost:8080,127.0.0.1:8080", "http://localhost:8080/a", True),
        ("intranet.test", "http://intranet.test/a", False),
        ("intranet.test,10.0.0.0/8", "http://intranet.test/a", True),
        ("*.test", "http://public.test/a", True),
        ("*.test", "http://metadata.test/a", False),
        ("*.example.org", "http://public.test/a", False),
        ("public.test", "http://public.test/a", True),
        ("public.test", "http://8.8.8.8/a", False),
        ("127.0.0.1:2121", "ftp://127.0.0.1:2121/a.dcm", True),
    ],
)
def test_allowed_hosts_is_the_only_allowed_set(allowed: str, url: str, admitted: bool) -> None:
    resolver = table_resolver(
        {
            "localhost": ["127.0.0.1"],
            "public.test": ["93.184.216.34"],
            "intranet.test": ["10.1.2.3"],
            "metadata.test": ["169.254.169.254"],
        }
    )
    policy = UrlPolicy(allowed_hosts=tuple(allowed.split(",")), resolver=resolver)
    if admitted:
        assert policy.check_url(url).addresses
    else:
        with pytest.raises(BlockedByPolicy):
            policy.check_url(url)


def test_ip_hosts_are_checked_without_a_lookup() -> None:
    policy = UrlPolicy(resolver=no_resolver)
    with pytest.raises(BlockedByPolicy, match="metadata"):
        policy.check_url("http://169.254.169.254/")


def test_resolved_addresses_are_checked_and_ipv4_comes_first() -> None:
    resolver = table_resolver({"dual.test": ["2606:4700:4700::1111", "1.1.1.1"]})
    policy = UrlPolicy(resolver=resolver)
    addresses = policy.check_url("https://dual.test/").addresses
    assert [a.version for a in addresses] == [4, 6]


def test_allowed_buckets() -> None:
    policy = UrlPolicy(allowed_buckets=("scans", "study-*"))
    policy.check_bucket("scans")
    policy.check_bucket("study-42")
    with pytest.raises(BlockedByPolicy, match="ALLOWED_BUCKETS"):
        policy.check_bucket("payroll")


# --------------------------------------------------------------------------- the policy object


def test_the_policy_is_a_frozen_value_and_its_resolver_is_injected() -> None:
    calls: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> list[str]:
        calls.append((host, port))
        return ["93.184.216.34"]

    policy = UrlPolicy(allowed_hosts=("*.test:*",), resolver=resolver)
    assert policy.check_url("https://public.test:8443/a").port == 8443
    assert calls == [("public.test", 8443)]
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allowed_hosts = ()  # type: ignore[misc]
    # The resolver is how a policy is used, not what it allows.
    assert policy == UrlPolicy(allowed_hosts=("*.test:*",))
    assert UrlPolicy().resolver is url_policy.resolve_system


def test_narrowing_the_buckets_keeps_the_hosts_and_the_resolver() -> None:
    policy = UrlPolicy(allowed_hosts=("127.0.0.1:*",), resolver=no_resolver)
    narrowed = dataclasses.replace(policy, allowed_buckets=("uploads",))
    narrowed.check_bucket("uploads")
    with pytest.raises(BlockedByPolicy, match="ALLOWED_BUCKETS"):
        narrowed.check_bucket("uploads-other")
    assert narrowed.resolver is no_resolver and narrowed.restricts_hosts
    policy.check_bucket("anything")


def test_a_name_the_resolver_cannot_answer_is_a_502() -> None:
    policy = UrlPolicy(resolver=table_resolver({"empty.test": []}))
    with pytest.raises(UpstreamError, match=r"cannot resolve host 'nowhere\.test'"):
        policy.check_url("http://nowhere.test/a")
    with pytest.raises(UpstreamError, match="has no address"):
        policy.check_url("http://empty.test/a")


def test_only_ftp_and_http_urls_have_hosts_to_check() -> None:
    with pytest.raises(InvalidUrl, match="is not an FTP or HTTP URL"):
        UrlPolicy(resolver=no_resolver).check_url("s3://scans/a.dcm")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("scans", True),
        ("my.dotted.bucket", True),
        ("Legacy_Bucket", True),
        ("a" * 255, True),
        ("ab", False),
        ("-scans", False),
        (".scans", False),
        ("scans/key", False),
        ("sc ans", False),
        ("", False),
        ("a" * 256, False),
    ],
)
def test_is_bucket_name(name: str, valid: bool) -> None:
    assert is_bucket_name(name) is valid


def test_ftp_target_hides_the_password_and_reads_the_login() -> None:
    target = ftp_target(split_url("ftps://reader:pa%40ss@host.example/%2Fabs/a.dcm"))
    assert (target.tls, target.user, target.password, target.path) == (
        True,
        "reader",
        "pa@ss",
        "/abs/a.dcm",
    )
    assert "pa@ss" not in repr(target)


def test_source_endpoints_do_not_leak_into_other_sources() -> None:
    endpoints = SourceEndpoints(s3="http://127.0.0.1:9")
    assert endpoints.for_source("s3") == "http://127.0.0.1:9"
    assert endpoints.for_source("r2") is None
    # Without R2_ENDPOINT_URL, an R2 URL keeps its own account endpoint.
    location = parse_object_url("https://acct.r2.cloudflarestorage.com/bk1/k.dcm", "r2", endpoints)
    assert location.endpoint_url == "https://acct.r2.cloudflarestorage.com"


# --------------------------------------------------------------------------- generated spellings

# Generated cases per property test: (default run, ADVERSARIAL_LONG=1).
EXAMPLES = 10_000 if env_flag("ADVERSARIAL_LONG") else 300


BLOCKED_NETWORKS = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "0.0.0.0/8",
        "198.18.0.0/15",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
METADATA = ipaddress.IPv4Address("169.254.169.254")


@st.composite
def blocked_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    if draw(st.booleans()):
        return METADATA
    network = draw(st.sampled_from(BLOCKED_NETWORKS))
    return network[draw(st.integers(0, network.num_addresses - 1))]


def _spell_number(draw: st.DrawFn, value: int) -> str:
    radix = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
    zeros = "0" * draw(st.integers(0, 3))
    if radix == "oct":
        return "0" + zeros + format(value, "o")
    if radix in ("hex", "HEX"):
        digits = zeros + format(value, "x")
        return ("0x" + digits) if radix == "hex" else ("0X" + digits.upper())
    # A leading zero would make it octal.
    return str(value)


_FULLWIDTH = {c: chr(0xFF10 + int(c)) for c in "0123456789"} | {
    c: chr(0xFF41 + ord(c) - ord("a")) for c in "abcdefx"
}


@st.composite
def ipv4_spelling(draw: st.DrawFn, address: ipaddress.IPv4Address) -> str:
    """``address`` in one of the forms inet_aton accepts: 1 to 4 parts, any radix."""
    n = int(address)
    parts = draw(st.integers(1, 4))
    if parts == 4:
        values = [n >> 24, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF]
    elif parts == 3:
        values = [n >> 24, (n >> 16) & 0xFF, n & 0xFFFF]
    elif parts == 2:
        values = [n >> 24, n & 0xFFFFFF]
    else:
        values = [n]
    text = ".".join(_spell_number(draw, v) for v in values)
    # inet_aton parses offline: the spelling really names this address.
    assert socket.inet_aton(text) == address.packed, text
    if draw(st.booleans()):
        text += "."
    if draw(st.integers(0, 4)) == 0:
        # Fullwidth digits and ideographic full stops normalise back under IDNA.
        text = "".join(_FULLWIDTH.get(c.lower(), c) for c in text).replace(".", "。")
    return text


@st.composite
def spelled_url(draw: st.DrawFn) -> tuple[str, ipaddress.IPv4Address]:
    address = draw(blocked_ipv4())
    host = draw(ipv4_spelling(address))
    scheme = draw(st.sampled_from(["http", "https", "ftp", "ftps"]))
    scheme = "".join(c.upper() if draw(st.booleans()) else c for c in scheme)
    userinfo = draw(st.sampled_from(["", "good.example@", f"u:{URL_PASSWORD}@", "a@b@"]))
    port = draw(st.sampled_from(["", ":80", ":21", ":65535"]))
    return f"{scheme}://{userinfo}{host}{port}/a.dcm", address


@hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=spelled_url())
def test_any_spelling_of_an_internal_ipv4_address_is_refused(
    case: tuple[str, ipaddress.IPv4Address],
) -> None:
    url, _address = case
    policy = UrlPolicy(resolver=no_lookup)
    # 403 from the address rules, or 400 when the spelling is not a valid host at all
    # (e.g. an ideographic full stop at the end, which IDNA keeps as an empty label).
    with pytest.raises((BlockedByPolicy, InvalidUrl)) as caught:
        policy.check_url(url)
    assert caught.value.status in (400, 403)
    assert URL_PASSWORD not in caught.value.message


@st.composite
def ipv6_form(draw: st.DrawFn) -> str:
    """An IPv6 address that stands for a refused IPv4 address, in various spellings."""
    v4 = draw(blocked_ipv4())
    n = int(v4)
    kind = draw(st.sampled_from(["mapped", "mapped_hex", "nat64", "6to4", "compat"]))
    if kind == "mapped":
        text = f"::ffff:{v4}"
    elif kind == "mapped_hex":
        text = f"0:0:0:0:0:ffff:{n >> 16:x}:{n & 0xFFFF:x}"
    elif kind == "nat64":
        text = f"64:ff9b::{n >> 16:x}:{n & 0xFFFF:x}"
    elif kind == "6to4":
        text = f"2002:{n >> 16:x}:{n & 0xFFFF:x}:{draw(st.integers(0, 0xFFFF)):x}::1"
    else:
        text = f"::{v4}"
    if draw(st.booleans()):
        text = text.upper()
    return text + draw(st.sampled_from(["", "%eth0", "%1"]))


@hypothesis_settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(answer=ipv6_form(), literal=st.booleans())
def test_ipv6_forms_of_internal_addresses_are_refused(answer: str, literal: bool) -> None:
    policy = UrlPolicy(resolver=lambda host, port: [answer])
    address = answer.split("%")[0]
    url = f"http://[{address}]/a.dcm" if literal else "http://aaaa.test/a.dcm"
    with pytest.raises(BlockedByPolicy):
        policy.check_url(url)
    assert blocked_reason(ipaddress.ip_address(address)) is not None


# --------------------------------------------------------------------------- the SSRF table


@pytest.mark.parametrize(
    ("url", "error", "fragment"), SSRF_TABLE, ids=[f"{i:02d}" for i in range(len(SSRF_TABLE))]
)
def test_ssrf_table_is_refused_by_the_policy_or_the_parser(
    url: str, error: type[Exception], fragment: str
) -> None:
    # The parser (source_type) first, then the policy, as a download applies them.
    with pytest.raises(error) as caught:
        if source_type(url) in ("ftp", "http"):
            UrlPolicy(resolver=ssrf_resolver).check_url(url)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("host", sorted(SSRF_DNS))
def test_every_ssrf_table_name_resolves_to_a_refused_address(host: str) -> None:
    policy = UrlPolicy(resolver=ssrf_resolver)
    with pytest.raises(BlockedByPolicy):
        policy.check_url(f"http://{host}/a.dcm")
