"""service_log's redactor: what of a URL may reach a log line or an error message.

The rule is by construction: user info becomes ``***@`` and every query value
becomes ``***``, whatever the names. Each case below lists the secrets it carries,
and none of them may survive.
"""

from __future__ import annotations

import json
import logging

import pytest

from service_log import SHOWN_URL_CHARS, JsonFormatter, redact_text, redact_url, shown_url

PRESIGNED_V4 = (
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIA%2F20240101&X-Amz-Signature=f00d&X-Amz-Expires=60"
)


@pytest.mark.parametrize(
    ("url", "expected", "secrets"),
    [
        ("ftp://user:pa%40ss@host/path/a.dcm", "ftp://***@host/path/a.dcm", ["pa%40ss"]),
        ("ftp://user:p@ss@host/a.dcm", "ftp://***@host/a.dcm", ["p@ss", "ss@"]),
        # A user name alone may be a token (GitHub-style https://TOKEN@host/).
        ("ftp://anonymous@host/a.dcm", "ftp://***@host/a.dcm", ["anonymous"]),
        ("http://ghp_0123456789TOKEN@host/", "http://***@host/", ["ghp_0123456789TOKEN"]),
        (
            PRESIGNED_V4,
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=***"
            "&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=***",
            ["AKIA", "f00d"],
        ),
        (
            "https://s3.amazonaws.com/b/k?AWSAccessKeyId=AKIA&Expires=1&Signature=ab%2Bc%3D",
            "https://s3.amazonaws.com/b/k?AWSAccessKeyId=***&Expires=***&Signature=***",
            ["AKIA", "ab%2Bc"],
        ),
        (
            "https://h/k?x-amz-security-token=FQoG&a=1",
            "https://h/k?x-amz-security-token=***&a=***",
            ["FQoG"],
        ),
        (
            "https://storage.googleapis.com/b/o.dcm?X-Goog-Algorithm=GOOG4-RSA-SHA256"
            "&X-Goog-Credential=svc%40proj&X-Goog-Signature=5ec2e75",
            "https://storage.googleapis.com/b/o.dcm?X-Goog-Algorithm=***"
            "&X-Goog-Credential=***&X-Goog-Signature=***",
            ["svc%40proj", "5ec2e75"],
        ),
        (
            "https://acct.blob.core.windows.net/c/a.dcm?sv=2022-11-02&se=2030-01-01"
            "&sr=b&sp=r&sig=AzUr3%2BSig%3D",
            "https://acct.blob.core.windows.net/c/a.dcm?sv=***&se=***&sr=***&sp=***&sig=***",
            ["AzUr3", "2030-01-01"],
        ),
        (
            "https://api.example/file.dcm?access_token=ya29.SECRET&alt=media",
            "https://api.example/file.dcm?access_token=***&alt=***",
            ["ya29.SECRET"],
        ),
        ("https://example.com/a.dcm?version=2", "https://example.com/a.dcm?version=***", []),
        ("https://example.com/a.dcm", "https://example.com/a.dcm", []),
        ("not a url at all", "not a url at all", []),
    ],
)
def test_redact_url(url: str, expected: str, secrets: list[str]) -> None:
    assert redact_url(url) == expected
    for secret in secrets:
        assert secret not in redact_url(url)


def test_urls_inside_text_are_redacted_and_the_text_kept() -> None:
    text = f"fetching {PRESIGNED_V4} failed; then ftp://u:hunter2@h/a.dcm too"
    redacted = redact_text(text)
    assert redacted.startswith("fetching https://b.s3.amazonaws.com/k?X-Amz-Algorithm=***")
    assert "failed; then ftp://***@h/a.dcm too" in redacted
    for secret in ("f00d", "AKIA", "hunter2"):
        assert secret not in redacted


def test_request_lines_without_a_host_are_redacted() -> None:
    # urllib3 logs the request line apart from the scheme and host.
    line = 'http://127.0.0.1:9000 "GET /b/k.dcm?X-Amz-Signature=f00dcafe&v=1 HTTP/1.1" 200 39'
    redacted = redact_text(line)
    assert "f00dcafe" not in redacted
    assert '"GET /b/k.dcm?X-Amz-Signature=***&v=*** HTTP/1.1" 200 39' in redacted
    assert redact_text("a ratio of 1/2? yes") == "a ratio of 1/2? yes"


def test_botocore_debug_secrets_are_redacted() -> None:
    text = (
        "headers: {'X-Amz-Security-Token': b'FQoGZXIvYXdzEBYaDnotreal'}\n"
        "Signature:\n5ec2e7519a7c0ffee0123456789abcdef0123456789abcdef0123456789abcd"
    )
    redacted = redact_text(text)
    assert "FQoGZXIvYXdzEBYaDnotreal" not in redacted
    assert "5ec2e7519a7c0ffee" not in redacted


def test_shown_url_is_redacted_and_short() -> None:
    long_url = "https://u:hunter2@example.com/" + "a" * 1000 + "?sig=secret"
    shown = shown_url(long_url)
    assert len(shown) == SHOWN_URL_CHARS and shown.endswith("...")
    assert "hunter2" not in shown and "secret" not in shown
    assert shown_url("https://example.com/a?x=1") == "https://example.com/a?x=***"


def test_json_lines_redact_the_message_and_every_field() -> None:
    record = logging.LogRecord("file_downloader", logging.INFO, __file__, 1, "got %s", None, None)
    record.args = ("ftp://u:hunter2@h/a.dcm",)
    record.fields = {"url": PRESIGNED_V4, "nested": [{"link": "http://TOKEN@h/"}], "n": 3}
    line = JsonFormatter().format(record)
    for secret in ("hunter2", "f00d", "AKIA", "TOKEN"):
        assert secret not in line
    document = json.loads(line)
    assert document["message"] == "got ftp://***@h/a.dcm" and document["n"] == 3


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/a#access_token=SECRET&state=x", "https://h/a#access_token=***&state=***"),
        ("https://h/a?x=1#id_token=SECRET", "https://h/a?x=***#id_token=***"),
        ("https://h/a.html#section-2", "https://h/a.html#section-2"),
    ],
)
def test_fragment_values_are_redacted(url: str, expected: str) -> None:
    assert redact_url(url) == expected
