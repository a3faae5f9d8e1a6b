"""The HTTP API (API Gateway v2): payload 2.0 routes to the alias on an auto-deployed stage."""

from __future__ import annotations

from typing import Any

from deployment.context import AwsContext, is_managed
from deployment.permissions import SID_HTTP, Permissions
from deployment.report import Report
from deployment.rest_api import Endpoints

HTTP_ROUTE_KEYS = ("GET /", "GET /convert", "POST /convert", "GET /health")
HTTP_STAGE = "$default"  # keeps rawPath free of a stage prefix in payload 2.0


class HttpApiUnit:
    def __init__(
        self,
        ctx: AwsContext,
        report: Report,
        permissions: Permissions,
        throttle: tuple[float, int] = (10.0, 20),
    ) -> None:
        self.ctx = ctx
        # (requests per second, burst) of every route: the stage's default route settings.
        self.throttle = throttle
        self.report = report
        self.permissions = permissions
        self.name = ctx.names.http_api
        self.alias = ctx.names.alias

    def find(self) -> dict[str, Any] | None:
        pages = self.ctx.apigw2.get_paginator("get_apis").paginate()
        matches = [a for page in pages for a in page["Items"] if a["Name"] == self.name]
        if len(matches) > 1:
            self.report.warn(f"{len(matches)} HTTP APIs are named {self.name}; using one")
        return matches[0] if matches else None

    def ensure(self) -> Endpoints:
        api = self.find()
        if api is None:
            api = self.report.apply(
                f"HTTP API {self.name}",
                "created",
                lambda: self.ctx.apigw2.create_api(
                    Name=self.name,
                    ProtocolType="HTTP",
                    Description=f"DICOM renderer in front of Lambda {self.ctx.names.function}",
                    Tags=dict(self.ctx.tags),
                ),
                f"routes {', '.join(HTTP_ROUTE_KEYS)}, payload 2.0",
            )
            if api is None:  # dry run: nothing below exists yet
                for key in HTTP_ROUTE_KEYS:
                    self.report.changed(f"route {key} -> alias {self.alias}", "created")
                self.report.changed("invoke permission for the HTTP API", "added")
                return Endpoints()
        else:
            self.report.unchanged(f"HTTP API {self.name}", api["ApiId"])
        api_id = api["ApiId"]
        integration_id = self._ensure_integration(api_id)
        self._ensure_routes(api_id, integration_id)
        self._ensure_stage(api_id)
        self.permissions.ensure(
            SID_HTTP,
            "invoke permission for the HTTP API",
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=self.ctx.execute_api_arn(api_id),
        )
        base = api.get("ApiEndpoint") or (
            f"https://{api_id}.execute-api.{self.ctx.region}.{self.ctx.url_suffix}"
        )
        return Endpoints(
            {"playground": f"{base}/", "convert": f"{base}/convert", "health": f"{base}/health"}
        )

    def _ensure_integration(self, api_id: str) -> str:
        apigw2, alias_arn = self.ctx.apigw2, self.ctx.alias_arn
        pages = apigw2.get_paginator("get_integrations").paginate(ApiId=api_id)
        ours = [i for page in pages for i in page["Items"] if i.get("IntegrationUri") == alias_arn]
        what = f"integration with alias {self.alias} (payload 2.0)"
        if ours and ours[0].get("PayloadFormatVersion") == "2.0":
            self.report.unchanged(what)
            return ours[0]["IntegrationId"]
        if ours:
            integration_id = ours[0]["IntegrationId"]
            self.report.apply(
                what,
                "updated",
                lambda: apigw2.update_integration(
                    ApiId=api_id, IntegrationId=integration_id, PayloadFormatVersion="2.0"
                ),
            )
            return integration_id
        created = self.report.apply(
            what,
            "created",
            lambda: apigw2.create_integration(
                ApiId=api_id,
                IntegrationType="AWS_PROXY",
                IntegrationMethod="POST",
                IntegrationUri=alias_arn,
                PayloadFormatVersion="2.0",
            ),
        )
        return (created or {}).get("IntegrationId", "")

    def _ensure_routes(self, api_id: str, integration_id: str) -> None:
        apigw2 = self.ctx.apigw2
        pages = apigw2.get_paginator("get_routes").paginate(ApiId=api_id)
        routes = {r["RouteKey"]: r for page in pages for r in page["Items"]}
        target = f"integrations/{integration_id}"
        for key in HTTP_ROUTE_KEYS:
            what = f"route {key} -> alias {self.alias}"
            route = routes.get(key)
            if route is None:
                self.report.apply(
                    what,
                    "created",
                    lambda key=key: apigw2.create_route(ApiId=api_id, RouteKey=key, Target=target),
                )
            elif route.get("Target") != target:
                self.report.apply(
                    what,
                    "updated",
                    lambda route=route: apigw2.update_route(
                        ApiId=api_id, RouteId=route["RouteId"], Target=target
                    ),
                )
            else:
                self.report.unchanged(what)

    def _ensure_stage(self, api_id: str) -> None:
        apigw2 = self.ctx.apigw2
        pages = apigw2.get_paginator("get_stages").paginate(ApiId=api_id)
        stage = {s["StageName"]: s for page in pages for s in page["Items"]}.get(HTTP_STAGE)
        rate, burst = self.throttle
        limits = {"ThrottlingRateLimit": rate, "ThrottlingBurstLimit": burst}
        what = f"stage {HTTP_STAGE} (auto-deploy, {rate:g} requests/s, burst {burst})"
        if stage is None:
            self.report.apply(
                what,
                "created",
                lambda: apigw2.create_stage(
                    ApiId=api_id,
                    StageName=HTTP_STAGE,
                    AutoDeploy=True,
                    DefaultRouteSettings=limits,
                    Tags=dict(self.ctx.tags),
                ),
            )
            return
        current = stage.get("DefaultRouteSettings") or {}
        throttled = (
            float(current.get("ThrottlingRateLimit", -1)) == rate
            and int(current.get("ThrottlingBurstLimit", -1)) == burst
        )
        if stage.get("AutoDeploy") and throttled:
            self.report.unchanged(what)
            return
        self.report.apply(
            what,
            "updated",
            lambda: apigw2.update_stage(
                ApiId=api_id, StageName=HTTP_STAGE, AutoDeploy=True, DefaultRouteSettings=limits
            ),
        )

    def remove(self, reason: str) -> bool:
        """Delete the API if deploy.py created it; True when it goes."""
        api = self.find()
        if api is None:
            return False
        if not is_managed(api.get("Tags")):
            self.report.note(f"HTTP API {self.name}: not created by deploy.py, kept")
            return False
        self.report.apply(
            f"HTTP API {self.name}",
            "deleted",
            lambda: self.ctx.apigw2.delete_api(ApiId=api["ApiId"]),
            reason,
        )
        return True
