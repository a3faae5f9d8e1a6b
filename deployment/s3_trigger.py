"""With --watch-bucket: the bucket notification that invokes the alias, and its permission."""

from __future__ import annotations

from typing import Any

from deployment.context import AwsContext, canonical, get_or_none, is_managed
from deployment.errors import DeployError
from deployment.function import environment_of
from deployment.options import Options
from deployment.permissions import SID_S3_TRIGGER, Permissions
from deployment.report import Report

NOTIFICATION_KEYS = (
    "TopicConfigurations",
    "QueueConfigurations",
    "LambdaFunctionConfigurations",
    "EventBridgeConfiguration",
)
PERMISSION = "invoke permission for S3 notifications"


def notification_key(configuration: dict[str, Any]) -> str:
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


def filter_text(configuration: dict[str, Any]) -> str:
    rules = {
        rule["Name"].lower(): rule["Value"]
        for rule in configuration.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    }
    return f"{rules.get('prefix', '')}*{rules.get('suffix', '')}"


def check_watch_bucket(ctx: AwsContext, bucket: str | None) -> None:
    """Refuse a watched bucket that does not exist before anything is changed."""
    if bucket and get_or_none(ctx.s3.head_bucket, Bucket=bucket) is None:
        raise DeployError(f"--watch-bucket {bucket}: no such bucket; create it first")


class S3TriggerUnit:
    def __init__(
        self, ctx: AwsContext, report: Report, options: Options, permissions: Permissions
    ) -> None:
        self.ctx = ctx
        self.report = report
        self.o = options
        self.permissions = permissions
        self.what = f"-> alias {ctx.names.alias}"

    def configurations(self) -> list[dict[str, Any]]:
        """One configuration per suffix: an S3 filter holds one prefix and one suffix."""
        configurations = []
        for index, suffix in enumerate(self.o.watch_suffixes or ("",)):
            rules = []
            if self.o.watch_prefix:
                rules.append({"Name": "prefix", "Value": self.o.watch_prefix})
            if suffix:
                rules.append({"Name": "suffix", "Value": suffix})
            configuration: dict[str, Any] = {
                "Id": f"{self.ctx.names.function}-dicom-{index}",
                "LambdaFunctionArn": self.ctx.alias_arn,
                "Events": ["s3:ObjectCreated:*"],
            }
            if rules:
                configuration["Filter"] = {"Key": {"FilterRules": rules}}
            configurations.append(configuration)
        return configurations

    def ensure(self, previous_bucket: str | None) -> None:
        """The notification and the invoke permission scoped to the watched bucket.

        Notification configurations of other consumers on the bucket are kept; the
        ones that invoke this function are made to match the watched prefix/suffixes.
        ``previous_bucket`` is the one the function watched before this run.
        """
        bucket = self.o.watch_bucket
        if previous_bucket and previous_bucket != bucket:
            self.remove(previous_bucket)
        if not bucket:
            self.permissions.remove(SID_S3_TRIGGER, PERMISSION)
            if not previous_bucket:
                self.report.unchanged("S3 trigger", "none (no --watch-bucket)")
            return
        self.permissions.ensure(
            SID_S3_TRIGGER,
            f"invoke permission for notifications of s3://{bucket}",
            Action="lambda:InvokeFunction",
            Principal="s3.amazonaws.com",
            SourceArn=f"arn:{self.ctx.partition}:s3:::{bucket}",
            SourceAccount=self.ctx.account,
        )
        self._ensure_notification(bucket)

    def _ensure_notification(self, bucket: str) -> None:
        current = self.ctx.s3.get_bucket_notification_configuration(Bucket=bucket)
        kept = self._others(current)
        mine = self._mine(current)
        desired = self.configurations()
        what = f"notification s3://{bucket} {self.what}"
        detail = ", ".join(filter_text(c) for c in desired)
        if sorted(map(notification_key, mine)) == sorted(map(notification_key, desired)):
            self.report.unchanged(what, detail)
            return
        configuration = {
            **kept,
            "LambdaFunctionConfigurations": [*kept["LambdaFunctionConfigurations"], *desired],
        }
        self.report.apply(
            what,
            "added" if not mine else "updated",
            lambda: self.ctx.s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=configuration
            ),
            detail,
        )

    def remove(self, bucket: str) -> None:
        """Take this function's configurations off the bucket; keep everyone else's."""
        s3 = self.ctx.s3
        current = get_or_none(s3.get_bucket_notification_configuration, Bucket=bucket)
        if current is None:
            self.report.note(f"watched bucket {bucket}: not found")
            return
        if not self._mine(current):
            return
        kept = self._others(current)
        self.report.apply(
            f"notification s3://{bucket} {self.what}",
            "removed",
            lambda: s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=kept
            ),
        )

    def remove_all(self, function: dict[str, Any] | None) -> None:
        """On --delete: the notifications its WATCH_BUCKET (or --watch-bucket) names."""
        if function is not None and not is_managed(function.get("Tags")):
            self.report.note("function not created by deploy.py: its notifications are kept")
            return
        found = environment_of(function).get("WATCH_BUCKET")
        buckets = {b for b in (self.o.watch_bucket, found) if b}
        for bucket in sorted(buckets):
            self.remove(bucket)
        if not buckets:
            self.report.note("no watched bucket")

    def _is_mine(self, configuration: dict[str, Any]) -> bool:
        arn = str(configuration.get("LambdaFunctionArn", ""))
        return arn == self.ctx.function_arn or arn.startswith(f"{self.ctx.function_arn}:")

    def _mine(self, current: dict[str, Any]) -> list[dict[str, Any]]:
        return [c for c in current.get("LambdaFunctionConfigurations", []) if self._is_mine(c)]

    def _others(self, current: dict[str, Any]) -> dict[str, Any]:
        kept = {key: current[key] for key in NOTIFICATION_KEYS if key in current}
        kept["LambdaFunctionConfigurations"] = [
            c for c in current.get("LambdaFunctionConfigurations", []) if not self._is_mine(c)
        ]
        return kept
