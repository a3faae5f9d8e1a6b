"""The function's execution role: trust, CloudWatch Logs, and least-privilege S3 access."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deployment.context import AwsContext, canonical, get_or_none, is_managed, policy_document
from deployment.options import Options
from deployment.report import Report

BASIC_EXECUTION_POLICY = "policy/service-role/AWSLambdaBasicExecutionRole"
INLINE_POLICY_NAME = "s3-least-privilege"
# Only with --watch-bucket: read the watched prefix (and write outputs beside it).
WATCH_POLICY_NAME = "s3-bulk-trigger"
LAMBDA_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "lambda.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


@dataclass(frozen=True)
class Role:
    arn: str
    created: bool


def s3_policy(o: Options, partition: str) -> dict[str, Any] | None:
    """Least privilege: read only the allowed buckets, write only the output prefix."""
    statements = []
    if o.allowed_buckets:
        statements.append(
            {
                "Sid": "ReadAllowedBuckets",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": [f"arn:{partition}:s3:::{b}/*" for b in o.allowed_buckets],
            }
        )
    if o.output_bucket:
        # GetObject on the function's own output is what a presigned link,
        # signed by this role, needs to be readable by the caller.
        statements.append(
            {
                "Sid": "WriteOutputPrefix",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject"],
                "Resource": f"arn:{partition}:s3:::{o.output_bucket}/{o.output_prefix}*",
            }
        )
    if not statements:
        return None
    return {"Version": "2012-10-17", "Statement": statements}


def watch_policy(o: Options, partition: str) -> dict[str, Any] | None:
    """With --watch-bucket: read the watched prefix; write outputs there when they
    stay in that bucket (OUTPUT_BUCKET's own statement covers another bucket).

    GetObjectVersion reads the exact version a notification names in a versioned
    bucket; GetObject on the outputs is what HeadObject, the redelivery check, needs.
    """
    bucket = o.watch_bucket
    if not bucket:
        return None
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ReadWatchedPrefix",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"arn:{partition}:s3:::{bucket}/{o.watch_prefix}*",
        }
    ]
    if not o.output_bucket or o.output_bucket == bucket:
        statements.append(
            {
                "Sid": "WriteOutputsInWatchedBucket",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject"],
                "Resource": f"arn:{partition}:s3:::{bucket}/{o.output_prefix}*",
            }
        )
    return {"Version": "2012-10-17", "Statement": statements}


def _s3_detail(o: Options) -> str:
    parts = []
    if o.allowed_buckets:
        parts.append(f"s3:GetObject on {', '.join(o.allowed_buckets)}")
    if o.output_bucket:
        parts.append(f"s3:PutObject on {o.output_bucket}/{o.output_prefix}*")
    return "; ".join(parts)


class RoleUnit:
    """The execution role named ``<function>-role`` and the policies deploy.py gives it."""

    def __init__(self, ctx: AwsContext, report: Report, options: Options) -> None:
        self.ctx = ctx
        self.report = report
        self.options = options
        self.name = ctx.names.role
        self.basic_arn = f"arn:{ctx.partition}:iam::aws:{BASIC_EXECUTION_POLICY}"

    def ensure(self) -> Role:
        found = get_or_none(self.ctx.iam.get_role, RoleName=self.name)
        if found is None:
            self.report.apply(
                f"role {self.name}",
                "created",
                lambda: self.ctx.iam.create_role(
                    RoleName=self.name,
                    AssumeRolePolicyDocument=json.dumps(LAMBDA_TRUST_POLICY),
                    Description=f"Execution role of Lambda function {self.ctx.names.function}",
                    Tags=self.ctx.tag_list(),
                ),
            )
            role = Role(self.ctx.arn("iam", f"role/{self.name}"), created=True)
        else:
            role = Role(found["Role"]["Arn"], created=False)
            self._ensure_trust(policy_document(found["Role"].get("AssumeRolePolicyDocument")))
        self._ensure_basic_execution(role.created)
        self._ensure_s3_policy(role.created)
        desired_watch = watch_policy(self.options, self.ctx.partition)
        self._converge_policy(WATCH_POLICY_NAME, desired_watch, role.created)
        if role.created and not self.report.dry_run:
            self.ctx.iam.get_waiter("role_exists").wait(
                RoleName=self.name, WaiterConfig={"Delay": 1, "MaxAttempts": 30}
            )
        return role

    def _ensure_trust(self, trust: Any) -> None:
        if canonical(trust) == canonical(LAMBDA_TRUST_POLICY):
            self.report.unchanged(f"role {self.name}")
            return
        self.report.apply(
            f"role {self.name} trust policy",
            "updated",
            lambda: self.ctx.iam.update_assume_role_policy(
                RoleName=self.name, PolicyDocument=json.dumps(LAMBDA_TRUST_POLICY)
            ),
        )

    def _attached(self) -> set[str]:
        pages = self.ctx.iam.get_paginator("list_attached_role_policies").paginate(
            RoleName=self.name
        )
        return {p["PolicyArn"] for page in pages for p in page["AttachedPolicies"]}

    def _ensure_basic_execution(self, role_is_new: bool) -> None:
        what = "managed policy AWSLambdaBasicExecutionRole (CloudWatch Logs)"
        if not role_is_new and self.basic_arn in self._attached():
            self.report.unchanged(what)
            return
        self.report.apply(
            what,
            "attached",
            lambda: self.ctx.iam.attach_role_policy(RoleName=self.name, PolicyArn=self.basic_arn),
        )

    def _current_policy(self, name: str, role_is_new: bool) -> Any:
        if role_is_new:
            return None
        found = get_or_none(self.ctx.iam.get_role_policy, RoleName=self.name, PolicyName=name)
        return None if found is None else policy_document(found["PolicyDocument"])

    def _ensure_s3_policy(self, role_is_new: bool) -> None:
        desired = s3_policy(self.options, self.ctx.partition)
        current = self._current_policy(INLINE_POLICY_NAME, role_is_new)
        if not self.options.allowed_buckets:
            self.report.note(
                "no --allowed-buckets: the role gets no S3 read access, so s3:// URLs are "
                "refused by S3 (403)"
            )
        if desired is None and current is None:
            self.report.unchanged(
                f"inline policy {INLINE_POLICY_NAME}", "none needed: no S3 access"
            )
            return
        detail = "no S3 access" if desired is None else _s3_detail(self.options)
        self._put_policy(INLINE_POLICY_NAME, current, desired, detail)

    def _converge_policy(
        self, name: str, desired: dict[str, Any] | None, role_is_new: bool
    ) -> None:
        """Create, update or delete one inline policy of the role so it matches ``desired``."""
        current = self._current_policy(name, role_is_new)
        if desired is None and current is None:
            return
        detail = (
            "" if desired is None else "; ".join(str(s["Resource"]) for s in desired["Statement"])
        )
        self._put_policy(name, current, desired, detail)

    def _put_policy(
        self, name: str, current: Any, desired: dict[str, Any] | None, detail: str
    ) -> None:
        what = f"inline policy {name}"
        if desired is None:
            self.report.apply(
                what,
                "deleted",
                lambda: self.ctx.iam.delete_role_policy(RoleName=self.name, PolicyName=name),
                detail,
            )
            return
        if current is not None and canonical(current) == canonical(desired):
            self.report.unchanged(what, detail)
            return
        self.report.apply(
            what,
            "created" if current is None else "updated",
            lambda: self.ctx.iam.put_role_policy(
                RoleName=self.name, PolicyName=name, PolicyDocument=json.dumps(desired)
            ),
            detail,
        )

    def remove(self) -> None:
        """Delete the role with the policies deploy.py gave it, unless it holds others."""
        what = f"role {self.name}"
        found = get_or_none(self.ctx.iam.get_role, RoleName=self.name)
        if found is None:
            self.report.note(f"{what}: not found")
            return
        if not is_managed(self._tags(found["Role"])):
            self.report.note(f"{what}: not created by deploy.py, kept")
            return
        attached = self._attached()
        inline = set(self.ctx.iam.list_role_policies(RoleName=self.name)["PolicyNames"])
        if self.basic_arn in attached:
            self.report.apply(
                "managed policy AWSLambdaBasicExecutionRole",
                "detached",
                lambda: self.ctx.iam.detach_role_policy(
                    RoleName=self.name, PolicyArn=self.basic_arn
                ),
            )
        own = {INLINE_POLICY_NAME, WATCH_POLICY_NAME}
        for name in sorted(own & inline):
            self.report.apply(
                f"inline policy {name}",
                "deleted",
                lambda name=name: self.ctx.iam.delete_role_policy(
                    RoleName=self.name, PolicyName=name
                ),
            )
        if (attached - {self.basic_arn}) | (inline - own):
            self.report.note(f"{what}: kept, it also holds policies deploy.py did not add")
            return
        self.report.apply(what, "deleted", lambda: self.ctx.iam.delete_role(RoleName=self.name))

    def _tags(self, role: dict[str, Any]) -> dict[str, str]:
        tags = {t["Key"]: t["Value"] for t in role.get("Tags", [])}
        if not tags:
            listed = self.ctx.iam.list_role_tags(RoleName=self.name).get("Tags", [])
            tags = {t["Key"]: t["Value"] for t in listed}
        return tags
