"""Where the zip travels to Lambda: inline when small, through an S3 bucket when large."""

from __future__ import annotations

from typing import Any

from deployment.context import AwsContext, get_or_none, is_managed
from deployment.package import DIRECT_UPLOAD_LIMIT, Package
from deployment.report import Report

CODE_KEY_PREFIX = "deploy-py"
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


class CodeStoreUnit:
    """The code object of each package, in --code-bucket or a bucket deploy.py creates."""

    def __init__(self, ctx: AwsContext, report: Report, code_bucket: str | None) -> None:
        self.ctx = ctx
        self.report = report
        self.code_bucket = code_bucket
        self.default_bucket = f"dicom-lambda-code-{ctx.account}-{ctx.region}"
        self.prefix = f"{CODE_KEY_PREFIX}/{ctx.names.function}/"

    def ensure(self, package: Package) -> dict[str, Any]:
        """The Code argument for Lambda: ZipFile when small, else an uploaded S3 object."""
        if package.zipped_bytes <= DIRECT_UPLOAD_LIMIT and not self.code_bucket:
            return {"ZipFile": package.path.read_bytes()}
        bucket = self.code_bucket or self.default_bucket
        key = f"{self.prefix}{package.sha256_hex}.zip"
        if not self.code_bucket:
            self._ensure_default_bucket()
        s3 = self.ctx.s3
        what = f"code object s3://{bucket}/{key}"
        if get_or_none(s3.head_object, Bucket=bucket, Key=key) is not None:
            self.report.unchanged(what)
        else:
            self.report.apply(
                what, "uploaded", lambda: s3.upload_file(str(package.path), bucket, key)
            )
        return {"S3Bucket": bucket, "S3Key": key}

    def _ensure_default_bucket(self) -> None:
        s3, bucket = self.ctx.s3, self.default_bucket
        if get_or_none(s3.head_bucket, Bucket=bucket) is not None:
            return

        def create() -> None:
            extra = {}
            if self.ctx.region != "us-east-1":
                extra["CreateBucketConfiguration"] = {"LocationConstraint": self.ctx.region}
            s3.create_bucket(Bucket=bucket, **extra)
            s3.put_public_access_block(
                Bucket=bucket, PublicAccessBlockConfiguration=PUBLIC_ACCESS_BLOCK
            )
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": self.ctx.tag_list()})

        self.report.apply(
            f"code bucket {bucket}", "created", create, "package is over 50 MB zipped"
        )

    def remove(self) -> None:
        """Delete this function's code objects, and the default bucket once it is empty."""
        s3 = self.ctx.s3
        buckets = [self.code_bucket] if self.code_bucket else []
        if get_or_none(s3.head_bucket, Bucket=self.default_bucket) is not None:
            buckets.append(self.default_bucket)
        if not buckets:
            self.report.note("no code bucket in use")
            return
        for bucket in buckets:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self.prefix)
            keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
            for key in keys:
                self.report.apply(
                    f"s3://{bucket}/{key}",
                    "deleted",
                    lambda key=key, bucket=bucket: s3.delete_object(Bucket=bucket, Key=key),
                )
            if bucket == self.default_bucket:
                self._remove_default_bucket_if_empty(len(keys))

    def _remove_default_bucket_if_empty(self, deleted: int) -> None:
        s3, bucket = self.ctx.s3, self.default_bucket
        tagging = get_or_none(s3.get_bucket_tagging, Bucket=bucket) or {}
        if not is_managed({t["Key"]: t["Value"] for t in tagging.get("TagSet", [])}):
            self.report.note(f"code bucket {bucket}: not created by deploy.py, kept")
            return
        remaining = s3.list_objects_v2(Bucket=bucket, MaxKeys=deleted + 1).get("KeyCount", 0)
        if remaining > (deleted if self.report.dry_run else 0):
            self.report.note(f"code bucket {bucket}: kept, other functions' code is in it")
            return
        self.report.apply(
            f"code bucket {bucket}", "deleted", lambda: s3.delete_bucket(Bucket=bucket)
        )
