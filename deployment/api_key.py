"""With --api-key: an API key and a throttled usage plan on the REST API's stage."""

from __future__ import annotations

from typing import Any

from deployment.context import AwsContext, get_or_none, is_managed
from deployment.options import Options
from deployment.report import Report


class ApiKeyUnit:
    def __init__(self, ctx: AwsContext, report: Report, options: Options) -> None:
        self.ctx = ctx
        self.report = report
        self.o = options
        self.key_name = ctx.names.api_key
        self.plan_name = ctx.names.usage_plan

    def _find_usage_plan(self) -> dict[str, Any] | None:
        pages = self.ctx.apigw.get_paginator("get_usage_plans").paginate()
        plans = [p for page in pages for p in page["items"] if p["name"] == self.plan_name]
        return plans[0] if plans else None

    def _find_api_key(self) -> dict[str, Any] | None:
        pages = self.ctx.apigw.get_paginator("get_api_keys").paginate(nameQuery=self.key_name)
        keys = [k for page in pages for k in page["items"] if k["name"] == self.key_name]
        return keys[0] if keys else None

    def ensure(self, api_id: str) -> str:
        """The key's id ("" in a dry run that creates it, or without --api-key)."""
        if not self.o.api_key:
            self.remove()
            return ""
        apigw = self.ctx.apigw
        key = self._find_api_key()
        if key is None:
            key = self.report.apply(
                f"API key {self.key_name}",
                "created",
                lambda: apigw.create_api_key(
                    name=self.key_name, enabled=True, tags=dict(self.ctx.tags)
                ),
            )
        else:
            self.report.unchanged(f"API key {self.key_name}")
        plan = self._ensure_usage_plan(api_id)
        if plan is None or key is None:
            if self.report.dry_run:
                self.report.changed("API key in usage plan", "added")
            return (key or {}).get("id", "")
        linked = get_or_none(apigw.get_usage_plan_key, usagePlanId=plan["id"], keyId=key["id"])
        if linked is not None:
            self.report.unchanged("API key in usage plan")
        else:
            self.report.apply(
                "API key in usage plan",
                "added",
                lambda: apigw.create_usage_plan_key(
                    usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY"
                ),
            )
        return key["id"]

    def _throttle(self) -> tuple[dict[str, Any], str]:
        throttle = {"rateLimit": self.o.throttle_rate, "burstLimit": self.o.throttle_burst}
        return throttle, f"{self.o.throttle_rate:g} requests/s, burst {self.o.throttle_burst}"

    def _ensure_usage_plan(self, api_id: str) -> dict[str, Any] | None:
        throttle, detail = self._throttle()
        plan = self._find_usage_plan()
        if plan is not None:
            self._update_usage_plan(plan, api_id)
            return plan
        return self.report.apply(
            f"usage plan {self.plan_name}",
            "created",
            lambda: self.ctx.apigw.create_usage_plan(
                name=self.plan_name,
                apiStages=[{"apiId": api_id, "stage": self.o.stage}],
                throttle=throttle,
                tags=dict(self.ctx.tags),
            ),
            detail,
        )

    def _update_usage_plan(self, plan: dict[str, Any], api_id: str) -> None:
        throttle, detail = self._throttle()
        operations = []
        stages = {(s["apiId"], s.get("stage")) for s in plan.get("apiStages", [])}
        if (api_id, self.o.stage) not in stages:
            operations.append(
                {"op": "add", "path": "/apiStages", "value": f"{api_id}:{self.o.stage}"}
            )
        current = plan.get("throttle") or {}
        if float(current.get("rateLimit", -1)) != float(throttle["rateLimit"]):
            operations.append(_replace("/throttle/rateLimit", throttle["rateLimit"]))
        if int(current.get("burstLimit", -1)) != int(throttle["burstLimit"]):
            operations.append(_replace("/throttle/burstLimit", throttle["burstLimit"]))
        what = f"usage plan {self.plan_name}"
        if not operations:
            self.report.unchanged(what, detail)
            return
        self.report.apply(
            what,
            "updated",
            lambda: self.ctx.apigw.update_usage_plan(
                usagePlanId=plan["id"], patchOperations=operations
            ),
            detail,
        )

    def remove(self) -> None:
        """Delete the usage plan and key deploy.py created; keep any others."""
        apigw = self.ctx.apigw
        plan = self._find_usage_plan()
        if plan is not None and is_managed(plan.get("tags")):

            def delete_plan() -> None:
                # A usage plan still attached to a stage cannot be deleted.
                stages = [f"{s['apiId']}:{s['stage']}" for s in plan.get("apiStages", [])]
                if stages:
                    apigw.update_usage_plan(
                        usagePlanId=plan["id"],
                        patchOperations=[
                            {"op": "remove", "path": "/apiStages", "value": s} for s in stages
                        ],
                    )
                apigw.delete_usage_plan(usagePlanId=plan["id"])

            self.report.apply(f"usage plan {self.plan_name}", "deleted", delete_plan)
        key = self._find_api_key()
        if key is not None and is_managed(key.get("tags")):
            self.report.apply(
                f"API key {self.key_name}",
                "deleted",
                lambda: apigw.delete_api_key(apiKey=key["id"]),
            )


def _replace(path: str, value: Any) -> dict[str, str]:
    return {"op": "replace", "path": path, "value": str(value)}
