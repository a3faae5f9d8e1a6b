"""What every AWS unit shares: clients, region, account, resource names and tags."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

T = TypeVar("T")

MANAGED_TAG_KEY = "managed-by"
MANAGED_TAG_VALUE = "dicom-lambda-deploy"
TAGS = {MANAGED_TAG_KEY: MANAGED_TAG_VALUE}

SERVICES = ("iam", "lambda", "apigateway", "apigatewayv2", "s3")
NOT_FOUND_CODES = (
    "NoSuchEntity",
    "ResourceNotFoundException",
    "NotFoundException",
    "NoSuchKey",
    "404",
    "NoSuchBucket",
    "NoSuchTagSet",
)


@dataclass(frozen=True)
class Names:
    """The names deploy.py gives the resources of one function."""

    function: str
    alias: str
    stage: str

    @property
    def role(self) -> str:
        return f"{self.function[:59]}-role"

    @property
    def rest_api(self) -> str:
        return f"{self.function}-api"

    @property
    def http_api(self) -> str:
        return f"{self.function}-http-api"

    @property
    def api_key(self) -> str:
        return f"{self.function}-key"

    @property
    def usage_plan(self) -> str:
        return f"{self.function}-plan"


@dataclass(frozen=True)
class AwsContext:
    region: str
    account: str
    partition: str
    caller_arn: str
    names: Names
    clients: Mapping[str, Any]
    tags: Mapping[str, str] = field(default_factory=lambda: MappingProxyType(TAGS))

    @property
    def iam(self) -> Any:
        return self.clients["iam"]

    @property
    def lam(self) -> Any:
        return self.clients["lambda"]

    @property
    def apigw(self) -> Any:
        return self.clients["apigateway"]

    @property
    def apigw2(self) -> Any:
        return self.clients["apigatewayv2"]

    @property
    def s3(self) -> Any:
        return self.clients["s3"]

    @property
    def url_suffix(self) -> str:
        return "amazonaws.com.cn" if self.region.startswith("cn-") else "amazonaws.com"

    def arn(self, service: str, resource: str) -> str:
        region = "" if service == "iam" else self.region
        account = "" if service == "s3" else self.account
        return f"arn:{self.partition}:{service}:{region}:{account}:{resource}"

    @property
    def function_arn(self) -> str:
        return self.arn("lambda", f"function:{self.names.function}")

    @property
    def alias_arn(self) -> str:
        return f"{self.function_arn}:{self.names.alias}"

    def execute_api_arn(self, api_id: str) -> str:
        return self.arn("execute-api", f"{api_id}/*")

    def tag_list(self) -> list[dict[str, str]]:
        """The tags in the Key/Value list form IAM and S3 take."""
        return [{"Key": key, "Value": value} for key, value in self.tags.items()]


def connect(region: str, profile: str | None, endpoint_url: str | None, names: Names) -> AwsContext:
    """Open clients for one region, profile and (optional) endpoint; ask who we are."""
    import boto3
    from botocore.config import Config

    session = boto3.Session(profile_name=profile, region_name=region)
    config = Config(retries={"max_attempts": 8, "mode": "standard"})

    def client(service: str) -> Any:
        return session.client(service, endpoint_url=endpoint_url, config=config)

    identity = client("sts").get_caller_identity()
    return AwsContext(
        region=region,
        account=identity["Account"],
        partition=identity["Arn"].split(":")[1],
        caller_arn=identity["Arn"],
        names=names,
        clients=MappingProxyType({service: client(service) for service in SERVICES}),
    )


def is_managed(tags: Mapping[str, str] | None) -> bool:
    """Whether deploy.py created the resource carrying these tags."""
    return (tags or {}).get(MANAGED_TAG_KEY) == MANAGED_TAG_VALUE


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def is_not_found(exc: Exception) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def get_or_none(call: Callable[..., T], **kwargs: Any) -> T | None:
    """The call's answer, or None when what it asks for does not exist."""
    from botocore.exceptions import ClientError

    try:
        return call(**kwargs)
    except ClientError as exc:
        if is_not_found(exc):
            return None
        raise


def canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def policy_document(document: Any) -> Any:
    """IAM returns policy documents either parsed or as JSON text."""
    return json.loads(document) if isinstance(document, str) else document
