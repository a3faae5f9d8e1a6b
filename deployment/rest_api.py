"""The REST API (API Gateway v1): routes to the alias, binary images, a stage, a key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployment.api_key import ApiKeyUnit
from deployment.context import MANAGED_TAG_KEY, AwsContext, get_or_none, is_managed
from deployment.options import Options
from deployment.permissions import SID_REST, Permissions
from deployment.report import Report

REST_ROUTES = {"/": ("GET",), "/convert": ("GET", "POST"), "/health": ("GET",)}
# With --api-key only the renderer needs the key; health checks stay open.
KEYED_PATHS = ("/convert",)
BINARY_MEDIA_TYPE = "image/*"


@dataclass(frozen=True)
class Endpoints:
    """What an API unit tells the summary: the URLs to call, and the API key's id."""

    urls: dict[str, str] = field(default_factory=dict)
    api_key_id: str = ""


def rest_route_names() -> list[str]:
    return [f"{m} {path}" for path, methods in REST_ROUTES.items() for m in methods]


class RestApiUnit:
    def __init__(
        self, ctx: AwsContext, report: Report, options: Options, permissions: Permissions
    ) -> None:
        self.ctx = ctx
        self.report = report
        self.o = options
        self.permissions = permissions
        self.name = ctx.names.rest_api
        self.api_key = ApiKeyUnit(ctx, report, options)
        self.uri = (
            f"arn:{ctx.partition}:apigateway:{ctx.region}:lambda:path/2015-03-31/"
            f"functions/{ctx.alias_arn}/invocations"
        )

    def find(self) -> dict[str, Any] | None:
        pages = self.ctx.apigw.get_paginator("get_rest_apis").paginate()
        matches = [a for page in pages for a in page["items"] if a["name"] == self.name]
        if len(matches) > 1:
            self.report.warn(f"{len(matches)} REST APIs are named {self.name}; using one")
            matches.sort(key=lambda a: (a.get("tags", {}).get(MANAGED_TAG_KEY) is None, a["id"]))
        return matches[0] if matches else None

    def ensure(self) -> Endpoints:
        api = self.find()
        changed = api is None
        if api is None:
            api = self._create()
            if api is None:  # dry run: nothing below exists yet
                self._plan_children()
                return Endpoints()
        else:
            self.report.unchanged(f"REST API {self.name}", api["id"])
        api_id = api["id"]
        changed |= self._ensure_binary_media_types(api_id, just_created=changed)
        resources = self._resources(api_id)
        for path, methods in REST_ROUTES.items():
            resource = resources.get(path) or self._create_resource(api_id, resources, path)
            for method in methods:
                changed |= self._ensure_method(api_id, resource, method)
        self._ensure_deployment(api_id, changed)
        self._ensure_throttling(api_id)
        self.permissions.ensure(
            SID_REST,
            "invoke permission for the REST API",
            Action="lambda:InvokeFunction",
            Principal="apigateway.amazonaws.com",
            SourceArn=self.ctx.execute_api_arn(api_id),
        )
        base = (
            f"https://{api_id}.execute-api.{self.ctx.region}.{self.ctx.url_suffix}/{self.o.stage}"
        )
        urls = {"playground": f"{base}/", "convert": f"{base}/convert", "health": f"{base}/health"}
        return Endpoints(urls, api_key_id=self.api_key.ensure(api_id))

    def _create(self) -> dict[str, Any] | None:
        return self.report.apply(
            f"REST API {self.name}",
            "created",
            lambda: self.ctx.apigw.create_rest_api(
                name=self.name,
                description=f"DICOM renderer in front of Lambda {self.ctx.names.function}",
                binaryMediaTypes=[BINARY_MEDIA_TYPE],
                endpointConfiguration={"types": ["REGIONAL"]},
                tags=dict(self.ctx.tags),
            ),
            f"routes {', '.join(rest_route_names())}, stage {self.o.stage}",
        )

    def _plan_children(self) -> None:
        for route in rest_route_names():
            self.report.changed(f"route {route} -> alias {self.ctx.names.alias}", "created")
        self.report.changed(f"deployment to stage {self.o.stage}", "created")
        self.report.changed(
            f"stage {self.o.stage} throttling",
            "set",
        )
        self.report.changed("invoke permission for the REST API", "added")
        if self.o.api_key:
            self.report.changed(f"API key {self.ctx.names.api_key} and usage plan", "created")

    def _ensure_binary_media_types(self, api_id: str, just_created: bool) -> bool:
        # Read back: an API-compatible endpoint may ignore the types given at creation.
        current = self.ctx.apigw.get_rest_api(restApiId=api_id)
        if BINARY_MEDIA_TYPE in (current.get("binaryMediaTypes") or []):
            if not just_created:
                self.report.unchanged("binary media types", BINARY_MEDIA_TYPE)
            return False
        escaped = BINARY_MEDIA_TYPE.replace("~", "~0").replace("/", "~1")
        # API Gateway reads the media type from the path; "value" repeats it for
        # API-compatible emulators that read it from there instead.
        operation = {
            "op": "add",
            "path": f"/binaryMediaTypes/{escaped}",
            "value": BINARY_MEDIA_TYPE,
        }
        self.report.apply(
            "binary media types",
            "updated",
            lambda: self.ctx.apigw.update_rest_api(restApiId=api_id, patchOperations=[operation]),
            f"+ {BINARY_MEDIA_TYPE}, so image answers are returned as binary",
        )
        return True

    def _resources(self, api_id: str) -> dict[str, dict[str, Any]]:
        pages = self.ctx.apigw.get_paginator("get_resources").paginate(
            restApiId=api_id, embed=["methods"]
        )
        return {r["path"]: r for page in pages for r in page["items"]}

    def _create_resource(
        self, api_id: str, resources: dict[str, dict[str, Any]], path: str
    ) -> dict[str, Any]:
        root = resources["/"]["id"]
        created = self.report.apply(
            f"resource {path}",
            "created",
            lambda: self.ctx.apigw.create_resource(
                restApiId=api_id, parentId=root, pathPart=path.lstrip("/")
            ),
        )
        return created or {"id": "", "path": path, "resourceMethods": {}}

    def _ensure_method(self, api_id: str, resource: dict[str, Any], method: str) -> bool:
        """One AWS_PROXY route to the alias; True when it had to be created or changed."""
        apigw = self.ctx.apigw
        what = f"route {method} {resource['path']} -> alias {self.ctx.names.alias}"
        where = {"restApiId": api_id, "resourceId": resource["id"], "httpMethod": method}
        current = None
        if resource.get("id") and method in (resource.get("resourceMethods") or {}):
            current = apigw.get_method(**where)
        key_required = self.o.api_key and resource["path"] in KEYED_PATHS

        def put_integration() -> None:
            apigw.put_integration(
                **where, type="AWS_PROXY", integrationHttpMethod="POST", uri=self.uri
            )

        def put_method() -> None:
            if current is not None:
                # Recreated rather than patched: a method's apiKeyRequired flag is
                # set at creation in every API Gateway-compatible implementation.
                apigw.delete_method(**where)
            apigw.put_method(**where, authorizationType="NONE", apiKeyRequired=key_required)
            put_integration()

        if current is None or bool(current.get("apiKeyRequired")) != key_required:
            detail = "API key required" if key_required else ""
            verb = "created" if current is None else "updated"
            self.report.apply(what, verb, put_method, detail)
            return True
        integration = current.get("methodIntegration") or {}
        if integration.get("type") != "AWS_PROXY" or integration.get("uri") != self.uri:
            self.report.apply(what, "updated", put_integration, "AWS_PROXY integration")
            return True
        self.report.unchanged(what)
        return False

    def _ensure_deployment(self, api_id: str, changed: bool) -> None:
        stage = get_or_none(self.ctx.apigw.get_stage, restApiId=api_id, stageName=self.o.stage)
        what = f"deployment to stage {self.o.stage}"
        if stage is not None and not changed:
            self.report.unchanged(what)
            return
        self.report.apply(
            what,
            "created",
            lambda: self.ctx.apigw.create_deployment(
                restApiId=api_id, stageName=self.o.stage, description="deploy.py"
            ),
        )

    def _ensure_throttling(self, api_id: str) -> None:
        """Stage-wide throttling (every method, ``*/*``): a public URL cannot be flooded
        beyond it, whoever calls, key or not."""
        rate, burst = self.o.throttle_rate, self.o.throttle_burst
        what = f"stage {self.o.stage} throttling"
        detail = f"{rate:g} requests/s, burst {burst}"
        stage = get_or_none(self.ctx.apigw.get_stage, restApiId=api_id, stageName=self.o.stage)
        current = ((stage or {}).get("methodSettings") or {}).get("*/*") or {}
        if (
            float(current.get("throttlingRateLimit", -1)) == rate
            and int(current.get("throttlingBurstLimit", -1)) == burst
        ):
            self.report.unchanged(what, detail)
            return
        operations = [
            {"op": "replace", "path": "/*/*/throttling/rateLimit", "value": f"{rate:g}"},
            {"op": "replace", "path": "/*/*/throttling/burstLimit", "value": str(burst)},
        ]
        self.report.apply(
            what,
            "set",
            lambda: self.ctx.apigw.update_stage(
                restApiId=api_id, stageName=self.o.stage, patchOperations=operations
            ),
            detail,
        )

    def remove(self, reason: str) -> bool:
        """Delete the API (and its key) if deploy.py created it; True when it goes."""
        api = self.find()
        if api is None:
            return False
        if not is_managed(api.get("tags")):
            self.report.note(f"REST API {self.name}: not created by deploy.py, kept")
            return False
        self.api_key.remove()
        self.report.apply(
            f"REST API {self.name}",
            "deleted",
            lambda: self.ctx.apigw.delete_rest_api(restApiId=api["id"]),
            reason,
        )
        return True
