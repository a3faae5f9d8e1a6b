"""Secrets never leave: settings' values and URLs' user info and query values.

* A settings table: every setting that can carry a secret or an internal name, made
  invalid, through every route (``/health`` included, in each API shape) and the
  start-up log line. The caller and the log see the setting's name, never its value.
* A generated table of URLs: user info and query forms, with common secret names
  (X-Goog-Signature, Azure SAS ``sig``, ``access_token`` ...), unicode,
  percent-encodings, repeated parameters and fragments. Each goes through the
  redactor and through every way a log line carries text (message, arguments,
  fields nested in objects and arrays, exception text); no secret survives.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lambda_function
from service_log import JsonFormatter, redact_text, shown_url
from settings import get_settings
from tests.corpus import env_flag
from tests.handler_support import LambdaContext, load_event
from tests.loopback_guard import GUARD

PROJECT = Path(__file__).resolve().parents[1]

# (environment variable, invalid value, the secret or internal part of the value)
SECRET_SETTINGS = [
    ("S3_ENDPOINT_URL", "http://KEYID0:SECRETKEY0@minio.internal:9000", "SECRETKEY0"),
    ("S3_ENDPOINT_URL", "http://TOKENONLY0@minio.internal:9000", "TOKENONLY0"),
    ("S3_ENDPOINT_URL", "https://minio.internal:9000/?X-Sig=SIGVALUE0", "SIGVALUE0"),
    ("R2_ENDPOINT_URL", "https://ACCT:R2SECRET0@acct.r2.cloudflarestorage.com", "R2SECRET0"),
    ("ALLOWED_HOSTS", "pacs.corp-internal0,bad host name", "corp-internal0"),
    ("ALLOWED_HOSTS", "records.corp-internal1:99999", "corp-internal1"),
    ("REQUESTS_CA_BUNDLE", "/etc/corp-internal-ca0/missing.pem", "corp-internal-ca0"),
    ("WATCH_BUCKET", "Corp_Internal_Bucket0", "Corp_Internal_Bucket0"),
    ("MAX_DOWNLOAD_BYTES", "corp-internal-number0", "corp-internal-number0"),
    ("CACHE_CONTROL", "private\x01corp-internal0", "corp-internal0"),
    ("TRIGGER_WINDOW", "corp-internal-window0", "corp-internal-window0"),
]
ROUTE_EVENTS = [
    "rest_health",
    "http_health_stage",
    "url_health",
    "direct_health",
    "rest_convert_post",
]


@pytest.fixture
def environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    monkeypatch.setenv("TEMP_ROOT", str(tmp_path / "work"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.mark.parametrize("event_name", ROUTE_EVENTS)
@pytest.mark.parametrize(("name", "value", "secret"), SECRET_SETTINGS)
def test_an_invalid_setting_is_named_to_the_caller_never_its_value(
    environment: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    event_name: str,
    name: str,
    value: str,
    secret: str,
) -> None:
    environment.setenv(name, value)
    result = lambda_function.lambda_handler(load_event(event_name), LambdaContext())
    answer = json.dumps(result)
    document = result if "statusCode" not in result else json.loads(result["body"])
    assert document["error"] == {"code": "configuration_error", "status": 500}
    assert name in document["message"]
    assert secret not in answer and value not in answer
    # The operator's log may show the setting, redacted: no user info, no query value.
    logs = capsys.readouterr()
    if secret not in redact_text(value):
        assert secret not in logs.out + logs.err


@pytest.mark.parametrize(("name", "value", "secret"), SECRET_SETTINGS[:4] + SECRET_SETTINGS[6:7])
def test_the_start_up_line_names_the_setting_never_its_value(
    tmp_path: Path, name: str, value: str, secret: str
) -> None:
    env = {"PATH": "/usr/bin:/bin", "TEMP_ROOT": str(tmp_path), name: value}
    started = subprocess.run(
        [sys.executable, "-c", "import lambda_function"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (line,) = [json.loads(text) for text in started.stdout.splitlines() if text.startswith("{")]
    assert line["message"] == "invalid configuration"
    assert name in line["error"]
    assert secret not in started.stdout + started.stderr


# --------------------------------------------------------------------------- the redactor

SECRET = "S3CRET-välue%2F+=="  # unicode, a percent-encoding, '+' and '=' padding
USER_INFO = [
    ("user:{s}@", [SECRET]),
    ("{s}@", [SECRET]),  # a bare token: https://TOKEN@host/
    (":{s}@", [SECRET]),
    ("user:p@ss{s}@", [SECRET, "p@ss"]),  # '@' inside the password
    ("us%40er:{s}%3A@", [SECRET]),
    ("", []),
]
QUERY_NAMES = [
    "X-Goog-Signature",
    "sig",  # Azure SAS
    "access_token",
    "X-Amz-Signature",
    "token",
    "api_key",
    "clé",
    "a%20b",
    "versionId",
]
QUERY_FORMS = [
    "?{n}={s}",
    "?{n}={s}&{n}={s}2",  # repeated
    "?sv=2022-11-02&se=2030-01-01T00%3A00Z&{n}={s}&sp=r",
    "?{n}={s}#frag",
    "?x=1#{n}={s}",  # OAuth implicit flow: tokens in the fragment
    "#{n}={s}&state=abc",
    "?{n}=={s}",
    "?{n}=",
    "",
]
SCHEMES = ["https://", "http://", "ftp://", "ftps://", "s3://"]
HOSTS = ["files.example.org:8443", "[2001:db8::1]:443", "127.0.0.1"]


def url_cases() -> Iterator[tuple[str, list[str]]]:
    for scheme, (user, user_secrets), host, form, name in itertools.product(
        SCHEMES, USER_INFO, HOSTS, QUERY_FORMS, QUERY_NAMES
    ):
        query = form.format(n=name, s=SECRET)
        secrets = list(user_secrets)
        if "{s}" in form:
            secrets.append(SECRET)
        yield f"{scheme}{user.format(s=SECRET)}{host}/folder/a.dcm{query}", secrets


URL_CASES = list(url_cases())
CONTEXTS = [
    "{u}",
    "fetching {u} failed",
    "'{u}'",
    '"{u}"',
    "<{u}>",
    "({u})",
    "{u}, then {u}",
    "url={u}\nnext line",
]


def json_line(message: str, args: tuple[Any, ...], fields: dict[str, Any], error: str) -> str:
    record = logging.LogRecord("dicom_lambda", logging.ERROR, __file__, 1, message, args, None)
    record.fields = fields  # type: ignore[attr-defined]
    try:
        raise RuntimeError(error)
    except RuntimeError:
        record.exc_info = sys.exc_info()
    return JsonFormatter().format(record)


def test_no_secret_survives_the_redactor_in_any_log_field() -> None:
    checked = 0
    # Every URL in one context by default, in every context with ADVERSARIAL_LONG=1.
    if env_flag("ADVERSARIAL_LONG"):
        pairs: Iterable[tuple[tuple[str, list[str]], str]] = itertools.product(URL_CASES, CONTEXTS)
    else:
        pairs = zip(URL_CASES, itertools.cycle(CONTEXTS))
    for (url, secrets), context in pairs:
        text = context.format(u=url)
        shown = [redact_text(text), shown_url(url)]
        shown.append(
            json_line(
                text,
                (),
                {"url": url, "nested": {"list": [url, 7, None], "deep": {"u": text}}},
                text,
            )
        )
        shown.append(json_line("fetching %s", (url,), {}, "x"))
        for output, secret in itertools.product(shown, secrets):
            assert secret not in output, (url, context, output)
            checked += 1
    # Names are kept, so an operator can still read what was sent.
    assert "X-Goog-Signature=***" in redact_text(f"https://h/?X-Goog-Signature={SECRET}")
    assert checked > 20_000, checked


def test_every_generated_url_keeps_its_host() -> None:
    for url, _ in URL_CASES:
        host = next(h for h in HOSTS if h in url)
        assert host in redact_text(url), url


def test_no_secret_reaches_the_caller_or_the_log_through_the_handler(
    environment: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing is read: no host is admitted and no bucket; the guard checks it.
    environment.setenv("ALLOWED_HOSTS", "nothing.invalid:1")
    environment.setenv("ALLOWED_BUCKETS", "no-such-bucket-is-named")
    shown = io.StringIO()
    for url, secrets in URL_CASES[:: max(1, len(URL_CASES) // 400)]:
        with GUARD.watching():
            result = lambda_function.lambda_handler(
                {"url": url, "storage_type": "auto"}, LambdaContext()
            )
        assert GUARD.violations == [] and GUARD.connects == []
        shown.write(json.dumps(result))
        assert result["error"]["status"] < 500, result
        logs = capsys.readouterr()
        for secret in secrets:
            assert secret not in shown.getvalue() + logs.out + logs.err, url
