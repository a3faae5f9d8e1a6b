"""The Lambda Function URL on the alias: none, public (auth NONE) or IAM."""

from __future__ import annotations

from deployment.context import AwsContext, get_or_none
from deployment.permissions import SID_URL_INVOKE, SID_URL_PUBLIC, Permissions
from deployment.report import Report

AUTH_TYPES = {"public": "NONE", "iam": "AWS_IAM"}


class FunctionUrlUnit:
    def __init__(self, ctx: AwsContext, report: Report, permissions: Permissions) -> None:
        self.ctx = ctx
        self.report = report
        self.permissions = permissions
        self.target = {"FunctionName": ctx.names.function, "Qualifier": ctx.names.alias}
        self.what = f"Function URL on alias {ctx.names.alias}"

    def _current(self) -> dict[str, str] | None:
        if self.report.dry_run and not self.permissions.function_exists:
            return None
        return get_or_none(self.ctx.lam.get_function_url_config, **self.target)

    def ensure(self, mode: str) -> str:
        """The URL for ``mode`` ("public" or "iam"), or "" after removing it for "none"."""
        if mode == "none":
            self.remove()
            return ""
        lam, auth = self.ctx.lam, AUTH_TYPES[mode]
        current = self._current()
        if current is None:
            current = self.report.apply(
                self.what,
                "created",
                lambda: lam.create_function_url_config(**self.target, AuthType=auth),
                f"auth {auth}",
            )
        elif current.get("AuthType") != auth:
            current = self.report.apply(
                self.what,
                "updated",
                lambda: lam.update_function_url_config(**self.target, AuthType=auth),
                f"auth {auth}",
            )
        else:
            self.report.unchanged(self.what, f"auth {auth}")
        if mode == "public":
            self._ensure_public_permissions()
        else:
            self._remove_public_permissions()
        return (current or {}).get("FunctionUrl", "")

    def _ensure_public_permissions(self) -> None:
        # A public URL needs both: InvokeFunctionUrl for the URL itself, and
        # InvokeFunction limited to calls that arrive through the URL.
        self.permissions.ensure(
            SID_URL_PUBLIC,
            "public permission lambda:InvokeFunctionUrl",
            Action="lambda:InvokeFunctionUrl",
            Principal="*",
            FunctionUrlAuthType="NONE",
        )
        self.permissions.ensure(
            SID_URL_INVOKE,
            "public permission lambda:InvokeFunction via the URL",
            Action="lambda:InvokeFunction",
            Principal="*",
            InvokedViaFunctionUrl=True,
        )

    def _remove_public_permissions(self) -> None:
        self.permissions.remove(SID_URL_PUBLIC, "public permission lambda:InvokeFunctionUrl")
        self.permissions.remove(SID_URL_INVOKE, "public permission lambda:InvokeFunction")

    def remove(self) -> None:
        """No URL, and none of the public permissions a URL needed."""
        current = self._current()
        if current is not None:
            self.report.apply(
                self.what,
                "deleted",
                lambda: self.ctx.lam.delete_function_url_config(**self.target),
            )
        else:
            self.report.unchanged(self.what, "none")
        self._remove_public_permissions()
