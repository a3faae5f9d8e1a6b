"""The published version and the alias every trigger and API invokes."""

from __future__ import annotations

from dataclasses import dataclass

from deployment.context import AwsContext, get_or_none
from deployment.function import FunctionState, retry_conflict
from deployment.package import Package
from deployment.report import Report


@dataclass(frozen=True)
class Release:
    version: str  # "(new)" in a dry run before the first deploy
    alias_arn: str


class AliasUnit:
    def __init__(self, ctx: AwsContext, report: Report) -> None:
        self.ctx = ctx
        self.report = report
        self.function = ctx.names.function
        self.alias = ctx.names.alias

    def ensure(self, package: Package, function: FunctionState) -> Release:
        """Publish the current code and configuration and point the alias at it."""
        lam = self.ctx.lam
        alias = get_or_none(lam.get_alias, FunctionName=self.function, Name=self.alias)
        previous = alias["FunctionVersion"] if alias else None
        if self.report.dry_run:
            return self._plan(previous, function.changed)
        # Lambda publishes nothing new when code and configuration match the latest
        # version, so re-running converges on the same version number.
        published = retry_conflict(
            self.ctx,
            lambda: lam.publish_version(
                FunctionName=self.function,
                CodeSha256=package.code_sha256,
                Description=f"deploy.py {package.sha256_hex[:12]}",
            ),
        )
        version = published["Version"]
        if function.changed:
            self.report.changed("version", "published", version)
        else:
            self.report.unchanged("version", version)
        what = f"alias {self.alias}"
        if version == previous:
            self.report.unchanged(what, f"-> {version}")
        elif previous is None:
            self.report.apply(
                what,
                "created",
                lambda: lam.create_alias(
                    FunctionName=self.function, Name=self.alias, FunctionVersion=version
                ),
                f"-> {version}",
            )
        else:
            self.report.apply(
                what,
                "moved",
                lambda: lam.update_alias(
                    FunctionName=self.function, Name=self.alias, FunctionVersion=version
                ),
                f"{previous} -> {version}",
            )
        return Release(version, self.ctx.alias_arn)

    def _plan(self, previous: str | None, changed: bool) -> Release:
        if changed or previous is None:
            self.report.changed("version", "published")
            self.report.changed(f"alias {self.alias}", "moved" if previous else "created")
        else:
            self.report.unchanged("version", previous)
            self.report.unchanged(f"alias {self.alias}", f"-> {previous}")
        return Release(previous or "(new)", self.ctx.alias_arn)

    def remove(self) -> None:
        """Nothing of its own: deleting the function deletes its versions and alias."""
