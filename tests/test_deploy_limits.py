"""deploy.py's limits on abuse, against moto server: stage throttling on REST and HTTP
APIs, reserved concurrency, and the warning about an open fetcher."""

# The fixtures of test_deploy.py are imported by name, and tests take them as
# parameters of the same names: pytest's way, which pyflakes reads as redefinition.
# ruff: noqa: F811

from __future__ import annotations

from typing import Any

import pytest

from tests.test_deploy import (  # noqa: F401 - fixtures
    NAME,
    REGION,
    Aws,
    aws,
    make_zip,
    moto_url,
    rest_apis,
    run_deploy,
)


def rest_stage_throttle(aws: Aws) -> dict[str, Any]:
    (api,) = rest_apis(aws)
    stage = aws.apigw.get_stage(restApiId=api["id"], stageName="prod")
    settings = stage["methodSettings"]["*/*"]
    return {k: settings[k] for k in ("throttlingRateLimit", "throttlingBurstLimit")}


def http_stage_throttle(aws: Aws) -> dict[str, Any]:
    (api,) = aws.apigw2.get_apis()["Items"]
    stages = aws.apigw2.get_stages(ApiId=api["ApiId"])["Items"]
    (stage,) = [s for s in stages if s["StageName"] == "$default"]
    return stage["DefaultRouteSettings"]


def test_the_rest_stage_is_throttled_by_default_and_by_flags(aws: Aws, make_zip: Any) -> None:
    package = str(make_zip())
    first = run_deploy(aws, NAME, REGION, "--package", package, "--yes")
    assert rest_stage_throttle(aws) == {"throttlingRateLimit": 10.0, "throttlingBurstLimit": 20}
    assert "throttling:   10 requests/s, burst 20" in first.stdout
    run_deploy(
        aws, NAME, REGION, "--package", package, "--throttle-rate", "2.5",
        "--throttle-burst", "5", "--yes",
    )  # fmt: skip
    assert rest_stage_throttle(aws) == {"throttlingRateLimit": 2.5, "throttlingBurstLimit": 5}
    again = run_deploy(
        aws, NAME, REGION, "--package", package, "--throttle-rate", "2.5",
        "--throttle-burst", "5", "--yes",
    )  # fmt: skip
    assert "stage prod throttling: unchanged" in again.stdout


def test_the_http_stage_is_throttled_by_default_and_by_flags(aws: Aws, make_zip: Any) -> None:
    package = str(make_zip())
    run_deploy(aws, NAME, REGION, "--package", package, "--api", "http", "--yes")
    throttle = http_stage_throttle(aws)
    assert (throttle["ThrottlingRateLimit"], throttle["ThrottlingBurstLimit"]) == (10.0, 20)
    again = run_deploy(aws, NAME, REGION, "--package", package, "--api", "http", "--yes")
    assert "10 requests/s, burst 20): unchanged" in again.stdout


def test_the_http_stage_takes_the_throttle_flags(aws: Aws, make_zip: Any) -> None:
    # moto has no UpdateStage for HTTP APIs, so the flags are checked on a new stage.
    run_deploy(
        aws, NAME, REGION, "--package", str(make_zip()), "--api", "http",
        "--throttle-rate", "50", "--throttle-burst", "100", "--yes",
    )  # fmt: skip
    throttle = http_stage_throttle(aws)
    assert (throttle["ThrottlingRateLimit"], throttle["ThrottlingBurstLimit"]) == (50.0, 100)


def test_reserved_concurrency_caps_the_function(aws: Aws, make_zip: Any) -> None:
    package = str(make_zip())
    result = run_deploy(
        aws, NAME, REGION, "--package", package, "--reserved-concurrency", "3", "--yes"
    )
    assert aws.lam.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 3
    assert "at most 3 at once" in result.stdout
    # Without the flag the reservation is kept, not removed.
    run_deploy(aws, NAME, REGION, "--package", package, "--yes")
    assert aws.lam.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 3


@pytest.mark.parametrize(
    ("flags", "warned"),
    [
        ((), True),
        (("--api", "http"), True),
        (("--api", "none", "--function-url", "public"), True),
        (("--api-key",), False),
        (("--allowed-hosts", "pacs.example.org"), False),
        (("--api", "none", "--function-url", "iam"), False),
    ],
)
def test_an_open_fetcher_is_warned_about_in_words(
    aws: Aws, make_zip: Any, flags: tuple[str, ...], warned: bool
) -> None:
    result = run_deploy(aws, NAME, REGION, "--package", str(make_zip()), *flags, "--yes")
    text = result.stdout + result.stderr
    assert ("the API is open (no API key, no auth) and ALLOWED_HOSTS is empty" in text) is warned
    if warned:
        # In the summary too, where it is read last.
        assert "ALLOWED_HOSTS is empty" in result.stdout.rsplit("Deployed", 1)[1]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--throttle-rate", "0"),
        ("--throttle-burst", "0"),
        ("--reserved-concurrency", "0"),
        ("--throttle-rate", "-1"),
    ],
)
def test_abuse_limits_are_validated(aws: Aws, flag: str, value: str) -> None:
    result = run_deploy(aws, NAME, REGION, flag, value, "--dry-run", "--yes", expect=2)
    assert flag in result.stderr
