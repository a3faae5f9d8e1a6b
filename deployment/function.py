"""The Lambda function: its code, configuration and environment."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from deployment.code_store import CodeStoreUnit
from deployment.context import AwsContext, canonical, error_code, get_or_none, is_managed
from deployment.options import MANAGED_ENV, Options
from deployment.package import HANDLER, Package
from deployment.report import Report

T = TypeVar("T")

# Python logging level -> Lambda LoggingConfig ApplicationLogLevel.
LAMBDA_LOG_LEVEL = {
    "DEBUG": "DEBUG",
    "INFO": "INFO",
    "WARNING": "WARN",
    "ERROR": "ERROR",
    "CRITICAL": "FATAL",
}
# A fresh role can take several seconds before Lambda may assume it.
ROLE_READY_SECONDS = 90.0
WAIT = {"Delay": 2, "MaxAttempts": 150}


@dataclass(frozen=True)
class FunctionState:
    """What ``FunctionUnit.ensure`` found and did, for the units that follow."""

    existed: bool
    changed: bool
    # WATCH_BUCKET of the function as found, so a trigger left behind can be removed.
    previous_watch_bucket: str | None = None


def wait_updated(ctx: AwsContext) -> None:
    # An update while another is in progress fails with ResourceConflictException.
    ctx.lam.get_waiter("function_updated_v2").wait(
        FunctionName=ctx.names.function, WaiterConfig=WAIT
    )


def retry_conflict(ctx: AwsContext, action: Callable[[], T]) -> T:
    """Run ``action``, waiting out updates still in progress on the function."""
    from botocore.exceptions import ClientError

    for _ in range(5):
        try:
            return action()
        except ClientError as exc:
            if error_code(exc) != "ResourceConflictException":
                raise
            wait_updated(ctx)
    return action()


def with_role_retry(report: Report, action: Callable[[], T]) -> T:
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
            report.note(f"role not assumable by Lambda yet; retrying in {delay:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


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


def environment_of(function: dict[str, Any] | None) -> dict[str, str]:
    """The environment variables of a get_function answer."""
    configuration = (function or {}).get("Configuration", {})
    return (configuration.get("Environment") or {}).get("Variables") or {}


class FunctionUnit:
    def __init__(
        self, ctx: AwsContext, report: Report, options: Options, code: CodeStoreUnit
    ) -> None:
        self.ctx = ctx
        self.report = report
        self.o = options
        self.code = code
        self.name = ctx.names.function

    def current(self) -> dict[str, Any] | None:
        return get_or_none(self.ctx.lam.get_function, FunctionName=self.name)

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

    def ensure(self, role_arn: str, package: Package) -> FunctionState:
        found = self.current()
        if found is None:
            self._create(role_arn, package)
            self._ensure_concurrency(None)
            return FunctionState(existed=False, changed=True)
        config = found["Configuration"]
        wait_updated(self.ctx)
        code_changed = self._ensure_code(config, package)
        current_env = environment_of(found)
        config_changed = self._ensure_configuration(config, role_arn, current_env)
        self._ensure_concurrency(found)
        return FunctionState(
            existed=True,
            changed=code_changed or config_changed,
            previous_watch_bucket=current_env.get("WATCH_BUCKET") or None,
        )

    def _ensure_concurrency(self, found: dict[str, Any] | None) -> None:
        """--reserved-concurrency: the most copies that run at once, which caps what a
        flood of requests can cost. Without the flag an existing reservation is kept."""
        wanted = self.o.reserved_concurrency
        if wanted is None:
            return
        what = "reserved concurrency"
        current = ((found or {}).get("Concurrency") or {}).get("ReservedConcurrentExecutions")
        if current == wanted:
            self.report.unchanged(what, str(wanted))
            return
        self.report.apply(
            what,
            "set",
            lambda: self.ctx.lam.put_function_concurrency(
                FunctionName=self.name, ReservedConcurrentExecutions=wanted
            ),
            f"{wanted} at once",
        )

    def _after_change(self) -> None:
        if not self.report.dry_run:
            wait_updated(self.ctx)

    def _ensure_code(self, config: dict[str, Any], package: Package) -> bool:
        detail = f"{package.sha256_hex[:12]}, {self.o.arch}"
        code_differs = config.get("CodeSha256") != package.code_sha256
        arch_differs = config.get("Architectures", ["x86_64"]) != [self.o.arch]
        if not (code_differs or arch_differs):
            self.report.unchanged("function code", detail)
            return False
        location = self.code.ensure(package)
        self.report.apply(
            "function code",
            "updated",
            lambda: retry_conflict(
                self.ctx,
                lambda: self.ctx.lam.update_function_code(
                    FunctionName=self.name, Architectures=[self.o.arch], **location
                ),
            ),
            detail,
        )
        self._after_change()
        return True

    def _ensure_configuration(
        self, config: dict[str, Any], role_arn: str, current_env: dict[str, str]
    ) -> bool:
        desired = self.desired_configuration(role_arn, current_env)
        differences = configuration_differences(config, desired)
        if not differences:
            self.report.unchanged("function configuration")
            return False

        def update() -> Any:
            return self.ctx.lam.update_function_configuration(FunctionName=self.name, **desired)

        self.report.apply(
            "function configuration",
            "updated",
            lambda: with_role_retry(self.report, lambda: retry_conflict(self.ctx, update)),
            ", ".join(differences),
        )
        self._after_change()
        return True

    def _create(self, role_arn: str, package: Package) -> None:
        location = self.code.ensure(package)
        desired = self.desired_configuration(role_arn, {})

        def create() -> Any:
            return self.ctx.lam.create_function(
                FunctionName=self.name,
                Code=location,
                Architectures=[self.o.arch],
                PackageType="Zip",
                Publish=False,
                Tags=dict(self.ctx.tags),
                **desired,
            )

        self.report.apply(
            f"function {self.name}",
            "created",
            lambda: with_role_retry(self.report, create),
            f"{self.o.runtime}, {self.o.arch}, {self.o.memory} MB, {self.o.timeout} s",
        )
        if not self.report.dry_run:
            self.ctx.lam.get_waiter("function_active_v2").wait(
                FunctionName=self.name, WaiterConfig=WAIT
            )

    def remove(self, found: dict[str, Any] | None) -> None:
        """Delete the function (with versions, alias, URL and permissions) if ours."""
        what = f"function {self.name}"
        if found is None:
            self.report.note(f"{what}: not found")
            return
        if not is_managed(found.get("Tags")):
            self.report.note(f"{what}: not created by deploy.py, kept")
            return
        self.report.apply(
            what,
            "deleted",
            lambda: self.ctx.lam.delete_function(FunctionName=self.name),
            "with its versions, alias, Function URL and permissions",
        )
