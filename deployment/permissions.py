"""Resource-policy statements on the alias: who may invoke it."""

from __future__ import annotations

import json
from typing import Any

from deployment.context import AwsContext, get_or_none
from deployment.report import Report

SID_REST = "apigateway-rest-invoke"
SID_HTTP = "apigateway-http-invoke"
SID_URL_PUBLIC = "function-url-public"
SID_URL_INVOKE = "function-url-invoke"
SID_S3_TRIGGER = "s3-bucket-notification"


def statement_matches(statement: dict[str, Any], permission: dict[str, Any]) -> bool:
    """Whether an existing policy statement grants what ``permission`` asks for."""
    if statement.get("Action") != permission["Action"]:
        return False
    text = json.dumps(statement)
    principal = permission["Principal"]
    if principal not in text:
        return False
    expected = [
        permission.get("SourceArn"),
        permission.get("FunctionUrlAuthType"),
        permission.get("SourceAccount"),
    ]
    if not all(value in text for value in expected if value):
        return False
    return not permission.get("InvokedViaFunctionUrl") or "InvokedViaFunctionUrl" in text


class Permissions:
    """Adds, updates and removes statements; ``function_exists`` is False only when a
    dry run plans the function's creation, so there is nothing to read yet."""

    def __init__(self, ctx: AwsContext, report: Report, function_exists: bool) -> None:
        self.ctx = ctx
        self.report = report
        self.function_exists = function_exists
        self.target = {"FunctionName": ctx.names.function, "Qualifier": ctx.names.alias}

    def statements(self) -> dict[str, dict[str, Any]]:
        if self.report.dry_run and not self.function_exists:
            return {}
        found = get_or_none(self.ctx.lam.get_policy, **self.target)
        if found is None:
            return {}
        policy = json.loads(found["Policy"])
        return {s.get("Sid", ""): s for s in policy.get("Statement", [])}

    def ensure(self, sid: str, what: str, **permission: Any) -> None:
        existing = self.statements().get(sid)
        if existing is not None and statement_matches(existing, permission):
            self.report.unchanged(what)
            return
        lam = self.ctx.lam

        def replace() -> None:
            if existing is not None:
                lam.remove_permission(StatementId=sid, **self.target)
            lam.add_permission(StatementId=sid, **self.target, **permission)

        detail = permission.get("SourceArn", "")
        self.report.apply(what, "added" if existing is None else "updated", replace, detail)

    def remove(self, sid: str, what: str) -> None:
        if sid not in self.statements():
            return
        self.report.apply(
            what,
            "removed",
            lambda: self.ctx.lam.remove_permission(StatementId=sid, **self.target),
        )
