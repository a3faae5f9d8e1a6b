"""SSRF cases shared by the URL-policy tests and the adversarial network tests.

``SSRF_TABLE`` lists URLs that the default policy (no ALLOWED_HOSTS) must refuse,
each with the error and a fragment of its message; ``ssrf_resolver`` answers the
names in it from ``SSRF_DNS``, so no case asks real DNS.
"""

from __future__ import annotations

from errors import BlockedByPolicy, InvalidUrl, ServiceError

URL_PASSWORD = "hunter2-adversarial"

# Answers of the policy's resolver for the table below: every name maps to at least
# one address the default policy refuses. A name missing here would fail as 502.
SSRF_DNS: dict[str, list[str]] = {
    "metadata.google.internal": ["169.254.169.254"],
    "instance-data.ec2.internal": ["169.254.169.254"],
    "localtest.me": ["127.0.0.1"],
    "localhost": ["127.0.0.1", "::1"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "169.254.169.254.nip.io": ["169.254.169.254"],
    "10.0.0.1.sslip.io": ["10.0.0.1"],
    # DNS rebinding: one public and one internal answer.
    "rebind.attacker.test": ["93.184.216.34", "169.254.169.254"],
    "aaaa-loopback.test": ["::1"],
    "aaaa-mapped.test": ["::ffff:169.254.169.254"],
    "aaaa-nat64.test": ["64:ff9b::a9fe:a9fe"],
    "aaaa-6to4.test": ["2002:a00:1::1"],
    "aaaa-teredo.test": ["2001:0:4136:e378:8000:63bf:3fff:fdd2"],
    "aaaa-compat.test": ["::a9fe:a9fe"],
    "aaaa-sitelocal.test": ["fec0::1"],
    "aaaa-ula.test": ["fd12:3456:789a::1"],
    "zoned.test": ["fe80::1%eth0"],
    "cgnat.test": ["100.64.0.1"],
    "zero.test": ["0.0.0.0"],
    "files.internal.test": ["192.168.10.5"],
    "db.internal.test": ["172.20.0.5"],
}

NUMERIC = "decimal, octal, hex"
BRACKETED = "bracketed IPv6"
SCHEME = "is not supported"

# (url, expected error, fragment of its message). Every entry is refused by default.
SSRF_TABLE: list[tuple[str, type[ServiceError], str]] = [
    # IPv4 in decimal, octal, hex and short forms
    ("http://2852039166/latest/meta-data/", BlockedByPolicy, NUMERIC),
    ("http://0xa9fea9fe/latest/meta-data/", BlockedByPolicy, NUMERIC),
    ("http://0251.0376.0251.0376/", BlockedByPolicy, NUMERIC),
    ("http://0xA9.0xFE.0xA9.0xFE/", BlockedByPolicy, NUMERIC),
    ("http://169.16689662/", BlockedByPolicy, NUMERIC),
    ("http://0x7f.1/", BlockedByPolicy, NUMERIC),
    ("http://0/", BlockedByPolicy, NUMERIC),
    ("http://0x0a000001/", BlockedByPolicy, NUMERIC),
    ("http://3232235777/", BlockedByPolicy, NUMERIC),
    ("http://127.000.000.001/", BlockedByPolicy, NUMERIC),
    ("http://0300.0250.0.1/", BlockedByPolicy, NUMERIC),
    ("https://00000177.0.0.01:8443/", BlockedByPolicy, NUMERIC),
    ("ftp://2130706433/a.dcm", BlockedByPolicy, NUMERIC),
    # dotted private, shared, reserved and metadata addresses
    (
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        BlockedByPolicy,
        "metadata",
    ),
    ("http://169.254.170.2/v2/credentials/", BlockedByPolicy, "metadata"),
    ("http://100.100.100.200/latest/meta-data/", BlockedByPolicy, "shared"),
    ("http://192.0.0.192/latest/", BlockedByPolicy, "IETF protocol assignment"),
    ("http://198.18.0.1/", BlockedByPolicy, "private"),
    ("http://255.255.255.255/", BlockedByPolicy, "reserved"),
    ("http://239.255.255.250:1900/", BlockedByPolicy, "multicast"),
    ("http://0.1.2.3/", BlockedByPolicy, "private"),
    ("http://127.0.0.1./", BlockedByPolicy, "loopback"),
    # IPv6 literals, IPv4-mapped and other IPv6 forms of IPv4
    ("http://[0:0:0:0:0:0:0:1]/", BlockedByPolicy, BRACKETED),
    ("http://[::ffff:169.254.169.254]/", BlockedByPolicy, BRACKETED),
    ("http://[fd00:ec2::254]/latest/meta-data/", BlockedByPolicy, BRACKETED),
    ("http://[fe80::a9fe:a9fe%25eth0]/", BlockedByPolicy, BRACKETED),
    ("http://[64:ff9b::a9fe:a9fe]/", BlockedByPolicy, BRACKETED),
    ("http://[2002:a9fe:a9fe::]/", BlockedByPolicy, BRACKETED),
    ("http://[::]/", BlockedByPolicy, BRACKETED),
    ("https://[::ffff:7f00:1]:8443/", BlockedByPolicy, BRACKETED),
    # names that resolve to internal addresses
    ("http://metadata.google.internal/computeMetadata/v1/", BlockedByPolicy, "metadata"),
    ("http://instance-data.ec2.internal/latest/", BlockedByPolicy, "metadata"),
    ("http://localtest.me/", BlockedByPolicy, "loopback"),
    ("http://127.0.0.1.nip.io/", BlockedByPolicy, "loopback"),
    ("http://169.254.169.254.nip.io/", BlockedByPolicy, "metadata"),
    ("http://10.0.0.1.sslip.io/", BlockedByPolicy, "private"),
    ("http://rebind.attacker.test/", BlockedByPolicy, "metadata"),
    ("http://aaaa-loopback.test/", BlockedByPolicy, "loopback"),
    ("http://aaaa-mapped.test/", BlockedByPolicy, "IPv6 form of 169.254.169.254"),
    ("http://aaaa-nat64.test/", BlockedByPolicy, "IPv6 form of 169.254.169.254"),
    ("http://aaaa-6to4.test/", BlockedByPolicy, "IPv6 form of 10.0.0.1"),
    ("http://aaaa-teredo.test/", BlockedByPolicy, "IPv6 form of 192.0.2.45"),
    ("http://aaaa-compat.test/", BlockedByPolicy, "reserved"),
    ("http://aaaa-sitelocal.test/", BlockedByPolicy, "site-local"),
    ("http://aaaa-ula.test/", BlockedByPolicy, "private"),
    ("http://zoned.test/", BlockedByPolicy, "link-local"),
    ("http://cgnat.test/", BlockedByPolicy, "shared"),
    ("http://zero.test/", BlockedByPolicy, "unspecified"),
    ("http://LocalHost./", BlockedByPolicy, "loopback"),
    ("ftp://files.internal.test/a.dcm", BlockedByPolicy, "private"),
    (f"ftps://user:{URL_PASSWORD}@db.internal.test/a.dcm", BlockedByPolicy, "private"),
    # userinfo and fragment tricks: the host is what follows the last "@"
    ("http://good.example@169.254.169.254/", BlockedByPolicy, "metadata"),
    ("http://good.example:443@169.254.169.254:80/", BlockedByPolicy, "metadata"),
    ("http://169.254.169.254#@good.example/", BlockedByPolicy, "metadata"),
    (f"http://user:{URL_PASSWORD}@good.example@127.0.0.1/", BlockedByPolicy, "loopback"),
    ("http://good.example%40@169.254.169.254/", BlockedByPolicy, "metadata"),
    # unicode hosts that normalise (IDNA, NFKC) to internal addresses
    ("http://①⑥⑨.②⑤④.①⑥⑨.②⑤④/", BlockedByPolicy, "metadata"),
    ("http://１２７.０.０.１/", BlockedByPolicy, "loopback"),
    ("http://169。254。169。254/", BlockedByPolicy, "metadata"),
    ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", BlockedByPolicy, "loopback"),
    ("http://ｍｅｔａｄａｔａ.ｇｏｏｇｌｅ.ｉｎｔｅｒｎａｌ/", BlockedByPolicy, "metadata"),
    ("http://０ｘ７ｆ.１/", BlockedByPolicy, NUMERIC),
    ("http://⒈⒍⒐.254.169.254/", InvalidUrl, "not allowed in host names"),
    # schemes in mixed case
    ("HTTP://169.254.169.254/", BlockedByPolicy, "metadata"),
    ("hTtPs://[::1]/", BlockedByPolicy, BRACKETED),
    ("FtP://10.0.0.1/a.dcm", BlockedByPolicy, "private"),
    # schemes no source reads
    ("file:///proc/self/environ", InvalidUrl, SCHEME),
    ("FILE://localhost/etc/passwd", InvalidUrl, SCHEME),
    ("gopher://127.0.0.1:6379/_FLUSHALL", InvalidUrl, SCHEME),
    ("dict://127.0.0.1:11211/stats", InvalidUrl, SCHEME),
    ("ldap://169.254.169.254/", InvalidUrl, SCHEME),
    ("tftp://127.0.0.1/boot", InvalidUrl, SCHEME),
    ("netdoc:///etc/passwd", InvalidUrl, SCHEME),
    ("jar:http://127.0.0.1!/", InvalidUrl, SCHEME),
    ("sftp://10.0.0.1/a.dcm", InvalidUrl, SCHEME),
    ("r2://scans/a.dcm", InvalidUrl, "R2_ENDPOINT_URL"),
    # malformed and ambiguous forms
    ("http://169.254.169.254\\@good.example/", InvalidUrl, "backslash"),
    ("http:/169.254.169.254/", InvalidUrl, "names no host"),
    ("http:\\\\169.254.169.254/", InvalidUrl, "names no host"),
    ("//169.254.169.254/latest", InvalidUrl, "no scheme"),
    ("http://[169.254.169.254]/", InvalidUrl, "cannot be parsed"),
    ("http://169.254.169.254:80:80/", InvalidUrl, "cannot be parsed"),
    ("http://%31%36%39.254.169.254/", InvalidUrl, "not allowed in host names"),
    ("http://169.254.169.254%00.good.example/", InvalidUrl, "not allowed in host names"),
    ("http://169.254.169.254\t/", InvalidUrl, "control characters"),
    ("http://169.254.169.254/\r\nX-Injected: 1", InvalidUrl, "control characters"),
    # over-long URLs
    ("http://169.254.169.254/" + "a" * 9000, InvalidUrl, "longer than 8192"),
    ("http://" + "a." * 5000 + "test/", InvalidUrl, "longer than 8192"),
]


def ssrf_resolver(host: str, port: int) -> list[str]:
    if host not in SSRF_DNS:
        raise AssertionError(f"{host!r} is not in the test resolver's table")
    return SSRF_DNS[host]


def no_lookup(host: str, port: int) -> list[str]:
    raise AssertionError(f"{host!r} was looked up, but the spelling is an IP address")
