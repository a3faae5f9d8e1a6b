"""template.yaml: valid for CloudFormation/SAM, and the same stack deploy.py builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file
from cfnlint.decode import decode

from deployment import iam, options, rest_api
from deployment import package as packaging
from deployment.function import LAMBDA_LOG_LEVEL

PROJECT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    document, problems = decode(str(TEMPLATE))
    assert not problems, problems
    return document


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return json.loads(packaging.CONFIG_PATH.read_text())["function"]


def resource(template: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [r for r in template["Resources"].values() if r["Type"] == kind]
    return found["Properties"]


def test_cfn_lint_finds_nothing() -> None:
    problems = lint_file(TEMPLATE)
    assert problems == [], "\n".join(str(p) for p in problems)


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "template.yaml"
    text = TEMPLATE.read_text().replace("      AutoPublishAlias: live\n", "      Memory: 12\n")
    broken.write_text(text)
    assert lint_file(broken)


def test_function_matches_deploy(template: dict[str, Any], config: dict[str, Any]) -> None:
    function = resource(template, "AWS::Serverless::Function")
    parameters = template["Parameters"]
    assert function["Handler"] == packaging.HANDLER
    assert function["AutoPublishAlias"] == config["alias"]
    assert parameters["Runtime"]["Default"] == config["runtime"]
    assert parameters["Runtime"]["AllowedValues"] == list(packaging.RUNTIMES)
    assert parameters["Architecture"]["Default"] == config["architecture"]
    assert parameters["Architecture"]["AllowedValues"] == list(packaging.ARCHITECTURES)
    assert parameters["MemorySize"]["Default"] == config["memory_mb"]
    assert parameters["Timeout"]["MaxValue"] == options.API_TIMEOUT_LIMIT["rest"]
    assert parameters["LogLevel"]["AllowedValues"] == list(options.LOG_LEVELS)
    assert sorted(function["Environment"]["Variables"]) == sorted(options.MANAGED_ENV)
    assert function["LoggingConfig"]["LogFormat"] == "JSON"
    levels = template["Mappings"]["LambdaLogLevel"]
    assert {k: v["Level"] for k, v in levels.items()} == LAMBDA_LOG_LEVEL


def test_rest_api_matches_deploy(template: dict[str, Any], config: dict[str, Any]) -> None:
    api = resource(template, "AWS::Serverless::Api")
    assert api["StageName"] == config["stage"]
    assert api["BinaryMediaTypes"] == [rest_api.BINARY_MEDIA_TYPE.replace("/", "~1")]
    function = resource(template, "AWS::Serverless::Function")
    routes = sorted(
        f"{e['Properties']['Method'].upper()} {e['Properties']['Path']}"
        for e in function["Events"].values()
        if e["Type"] == "Api"
    )
    expected = sorted(
        f"{m} {path}" for path, methods in rest_api.REST_ROUTES.items() for m in methods
    )
    assert routes == expected


def test_role_is_least_privilege(template: dict[str, Any]) -> None:
    role = resource(template, "AWS::IAM::Role")
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust == iam.LAMBDA_TRUST_POLICY["Statement"]
    assert role["ManagedPolicyArns"] == [
        {"Fn::Sub": f"arn:${{AWS::Partition}}:iam::aws:{iam.BASIC_EXECUTION_POLICY}"}
    ]
    # Policies: only when a bucket is given; each statement only under its own condition.
    condition, policies, otherwise = role["Policies"]["Fn::If"]
    assert condition == "HasS3Access"
    assert otherwise == {"Ref": "AWS::NoValue"}
    (policy,) = policies
    assert policy["PolicyName"] == iam.INLINE_POLICY_NAME
    read, write = (s["Fn::If"] for s in policy["PolicyDocument"]["Statement"])
    assert read[0] == "HasAllowedBuckets"
    assert read[1]["Action"] == "s3:GetObject"
    assert write[0] == "HasOutputBucket"
    assert sorted(write[1]["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert "${OutputBucket}/${OutputPrefix}*" in write[1]["Resource"]["Fn::Sub"]
    conditions = template["Conditions"]
    assert conditions["HasS3Access"] == {
        "Fn::Or": [{"Condition": "HasAllowedBuckets"}, {"Condition": "HasOutputBucket"}]
    }


def test_the_api_stage_is_throttled_like_deploy(template: dict[str, Any]) -> None:
    api = resource(template, "AWS::Serverless::Api")
    parameters = template["Parameters"]
    (setting,) = api["MethodSettings"]
    assert (setting["ResourcePath"], setting["HttpMethod"]) == ("/*", "*")
    assert setting["ThrottlingRateLimit"] == {"Ref": "ThrottleRate"}
    assert setting["ThrottlingBurstLimit"] == {"Ref": "ThrottleBurst"}
    # The same defaults as deploy.py's --throttle-rate and --throttle-burst.
    assert (parameters["ThrottleRate"]["Default"], parameters["ThrottleBurst"]["Default"]) == (
        10,
        20,
    )


def test_reserved_concurrency_is_a_parameter(template: dict[str, Any]) -> None:
    function = resource(template, "AWS::Serverless::Function")
    assert function["ReservedConcurrentExecutions"] == {
        "Fn::If": [
            "HasReservedConcurrency",
            {"Ref": "ReservedConcurrency"},
            {"Ref": "AWS::NoValue"},
        ]
    }
    assert template["Parameters"]["ReservedConcurrency"]["Default"] == 0
