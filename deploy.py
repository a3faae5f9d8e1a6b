"""Package the function for the Lambda platform and create or update every AWS resource.

    python deploy.py FUNCTION_NAME REGION [options]      create or update everything
    python deploy.py FUNCTION_NAME REGION --dry-run      print the plan, change nothing
    python deploy.py --delete FUNCTION_NAME REGION       remove what deploy.py created
    python deploy.py --package-only [--arch A]           only build the zip

Defaults come from the ``function`` section of ``lambda_config.json``; the runtime
settings the function reads (LOG_LEVEL, ALLOWED_HOSTS, ...) become environment
variables of the function. Every run converges on the requested state: what
already matches is reported as "unchanged" and left alone.

This module is the command line and the order of the steps; each AWS resource is
one unit in the ``deployment`` package.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deployment.alias import AliasUnit, Release
from deployment.code_store import CodeStoreUnit
from deployment.context import AwsContext, Names, connect
from deployment.errors import DeployError, UsageError
from deployment.function import FunctionUnit
from deployment.function_url import FunctionUrlUnit
from deployment.http_api import HttpApiUnit
from deployment.iam import RoleUnit
from deployment.options import (
    APIS,
    FUNCTION_URL_MODES,
    LOG_LEVELS,
    OPEN_FETCHER_WARNING,
    Options,
    build_options,
    defaults_text,
    open_fetcher,
)
from deployment.package import ARCHITECTURES, RUNTIMES, Package, obtain_package
from deployment.permissions import SID_HTTP, SID_REST, Permissions
from deployment.report import Report
from deployment.rest_api import Endpoints, RestApiUnit
from deployment.s3_trigger import S3TriggerUnit, check_watch_bucket

REST_PERMISSION = "invoke permission for the REST API"
HTTP_PERMISSION = "invoke permission for the HTTP API"


@dataclass(frozen=True)
class Deployment:
    """What the summary prints."""

    release: Release
    endpoints: Endpoints = field(default_factory=Endpoints)
    function_url: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="deploy.py",
        description="Package the DICOM renderer and deploy it to AWS Lambda.",
        epilog=defaults_text(),
    )
    parser.add_argument("function_name", nargs="?", help="Lambda function name")
    parser.add_argument("region", nargs="?", help="AWS region, e.g. us-east-1")
    parser.add_argument("--arch", choices=ARCHITECTURES)
    parser.add_argument("--runtime", help=f"one of {', '.join(RUNTIMES)}")
    parser.add_argument("--memory", type=int, metavar="MB")
    parser.add_argument("--timeout", type=int, metavar="S")
    parser.add_argument("--ephemeral-storage", type=int, metavar="MB")
    parser.add_argument("--api", choices=APIS, help="API Gateway in front of the function")
    parser.add_argument("--function-url", choices=FUNCTION_URL_MODES)
    parser.add_argument("--allowed-buckets", metavar="B1,B2", help="buckets the role may read")
    parser.add_argument("--allowed-hosts", metavar="H1,H2", help="hosts the function may fetch")
    parser.add_argument("--output-bucket", metavar="B", help="bucket for images too big to return")
    parser.add_argument("--output-prefix", metavar="P", help="key prefix in the output bucket")
    parser.add_argument(
        "--watch-bucket", metavar="B", help="convert new objects in this bucket as they arrive"
    )
    parser.add_argument("--watch-prefix", metavar="P", help="only keys under this prefix count")
    parser.add_argument(
        "--watch-suffixes", metavar="S1,S2", help="only keys ending so count, e.g. .dcm"
    )
    parser.add_argument("--api-key", action="store_true", help="REST API: require an API key")
    parser.add_argument(
        "--throttle-rate",
        type=float,
        metavar="N",
        help="requests per second the API stage admits (default 10)",
    )
    parser.add_argument(
        "--throttle-burst", type=int, metavar="N", help="burst the API stage admits (default 20)"
    )
    parser.add_argument(
        "--reserved-concurrency",
        type=int,
        metavar="N",
        help="most copies of the function that run at once (caps what a flood costs)",
    )
    parser.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS)
    parser.add_argument("--profile", help="AWS named profile")
    parser.add_argument("--endpoint-url", help="send every AWS call to this endpoint")
    parser.add_argument("--code-bucket", metavar="B", help="upload the zip through this bucket")
    parser.add_argument("--package", type=Path, metavar="ZIP", help="deploy this zip, no build")
    parser.add_argument("--package-only", action="store_true", help="build the zip and stop")
    parser.add_argument(
        "--output", type=Path, metavar="ZIP", help="where to write the built zip (default build/)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--delete", action="store_true", help="remove what deploy.py created")
    return parser.parse_args(argv)


def confirm(question: str, options: Options, destructive: bool) -> None:
    if options.yes or options.dry_run:
        return
    if not sys.stdin.isatty():
        if destructive:
            raise UsageError(f"{question} Refusing without --yes when not run interactively.")
        return
    answer = input(f"{question} [{'y/N' if destructive else 'Y/n'}] ").strip().lower()
    if answer in ("y", "yes") or (not answer and not destructive):
        return
    raise UsageError("cancelled")


def connect_for(options: Options) -> AwsContext:
    names = Names(options.function_name, alias=options.alias, stage=options.stage)
    return connect(options.region or "", options.profile, options.endpoint_url, names)


def package_for(options: Options, report: Report) -> Package:
    return obtain_package(options.runtime, options.arch, options.package, options.output, report)


def run_package_only(options: Options) -> int:
    report = Report(1, dry_run=False)
    report.step("Package")
    package_for(options, report)
    return 0


def run_deploy(options: Options) -> int:
    report = Report(8, options.dry_run)
    mode = "Dry run: nothing will be changed. " if options.dry_run else ""
    print(
        f"{mode}Deploying {options.function_name} to {options.region} "
        f"({options.runtime}, {options.arch}, {options.memory} MB, {options.timeout} s, "
        f"API {options.api}, Function URL {options.function_url})",
        flush=True,
    )
    report.step("Package")
    package = package_for(options, report)
    confirm(f"Deploy {options.function_name} to {options.region}?", options, destructive=False)
    report.step("Account")
    ctx = connect_for(options)
    report.note(f"account {ctx.account} ({ctx.caller_arn})")
    check_watch_bucket(ctx, options.watch_bucket)
    deployment = deploy_units(ctx, report, options, package)
    print_summary(ctx, report, options, package, deployment)
    return 0


def deploy_units(ctx: AwsContext, report: Report, options: Options, package: Package) -> Deployment:
    """Steps 3 to 8: each unit gets what the ones before it returned."""
    report.step("IAM role and policies")
    role = RoleUnit(ctx, report, options).ensure()
    report.step("Function code and configuration")
    code = CodeStoreUnit(ctx, report, options.code_bucket)
    function = FunctionUnit(ctx, report, options, code).ensure(role.arn, package)
    report.step("Version and alias")
    release = AliasUnit(ctx, report).ensure(package, function)
    permissions = Permissions(ctx, report, function_exists=function.existed)
    report.step("API")
    endpoints = ensure_api(ctx, report, options, permissions)
    report.step("Function URL")
    url = FunctionUrlUnit(ctx, report, permissions).ensure(options.function_url)
    report.step("S3 trigger")
    S3TriggerUnit(ctx, report, options, permissions).ensure(function.previous_watch_bucket)
    return Deployment(release, endpoints, url)


def ensure_api(
    ctx: AwsContext, report: Report, options: Options, permissions: Permissions
) -> Endpoints:
    """The chosen API; an API of the other kind that deploy.py made is removed."""
    rest = RestApiUnit(ctx, report, options, permissions)
    http = HttpApiUnit(ctx, report, permissions, (options.throttle_rate, options.throttle_burst))
    reason = f"--api {options.api} was chosen"
    if options.api != "rest" and rest.remove(reason):
        permissions.remove(SID_REST, REST_PERMISSION)
    if options.api != "http" and http.remove(reason):
        permissions.remove(SID_HTTP, HTTP_PERMISSION)
    if options.api == "rest":
        return rest.ensure()
    if options.api == "http":
        return http.ensure()
    report.note("no API Gateway (--api none)")
    return Endpoints()


def print_summary(
    ctx: AwsContext, report: Report, o: Options, package: Package, deployment: Deployment
) -> None:
    print(flush=True)
    if o.dry_run:
        print(f"Dry run finished: {report.changes} change(s) planned, nothing was changed.")
        return
    verdict = f"{report.changes} change(s)" if report.changes else "everything unchanged"
    print(f"Deployed {o.function_name} to {o.region}: {verdict}.")
    print(f"  function:     {ctx.function_arn}")
    print(f"  version:      {deployment.release.version} (alias {o.alias}: {ctx.alias_arn})")
    for name, url in deployment.endpoints.urls.items():
        print(f"  {name + ':':<13} {url}")
    if deployment.function_url:
        print(f"  Function URL: {deployment.function_url} ({o.function_url})")
    if o.watch_bucket:
        suffixes = ",".join(o.watch_suffixes) or "any suffix"
        print(
            f"  S3 trigger:   s3://{o.watch_bucket}/{o.watch_prefix}* ({suffixes}) -> "
            f"s3://{o.output_bucket or o.watch_bucket}/{o.output_prefix}"
        )
    print(f"  package:      {package.size_text}")
    if o.api != "none":
        print(f"  throttling:   {o.throttle_rate:g} requests/s, burst {o.throttle_burst}")
    if o.reserved_concurrency is not None:
        print(f"  concurrency:  at most {o.reserved_concurrency} at once (reserved)")
    print_try_it(o, deployment)
    if open_fetcher(o):
        print(f"warning: {OPEN_FETCHER_WARNING}")


def print_try_it(o: Options, deployment: Deployment) -> None:
    target = deployment.endpoints.urls.get("convert") or deployment.function_url
    if not target:
        print(
            f"  try it:       aws lambda invoke --function-name {o.function_name}:{o.alias} "
            "--cli-binary-format raw-in-base64-out "
            '--payload \'{"url": "https://example.com/sample.dcm"}\' response.json'
        )
        return
    key_header = ' -H "x-api-key: $API_KEY"' if o.api_key else ""
    print("  try it:")
    print(
        f"    curl -sS -X POST '{target}' -H 'Content-Type: application/json'{key_header} "
        '-d \'{"url": "https://example.com/sample.dcm"}\''
    )
    if o.api_key:
        key_id = deployment.endpoints.api_key_id
        print(
            f"    (API_KEY=$(aws apigateway get-api-key --api-key {key_id} "
            "--include-value --query value --output text))"
        )


def run_delete(options: Options) -> int:
    mode = "Dry run: nothing will be changed. " if options.dry_run else ""
    print(f"{mode}Deleting what deploy.py created for {options.function_name} in {options.region}")
    confirm(
        f"Delete function {options.function_name}, its APIs and role in {options.region}?",
        options,
        destructive=True,
    )
    report = Report(5, options.dry_run)
    delete_units(connect_for(options), report, options)
    print()
    if options.dry_run:
        print(f"Dry run finished: {report.changes} deletion(s) planned, nothing was changed.")
    else:
        print(f"Deleted: {report.changes} change(s).")
    return 0


def delete_units(ctx: AwsContext, report: Report, options: Options) -> None:
    """Remove, in dependency order, what deploy.py created; keep everything else.

    The permissions on the alias go with the function, so none is removed one by one.
    """
    permissions = Permissions(ctx, report, function_exists=True)
    report.step("APIs")
    changes = report.changes
    RestApiUnit(ctx, report, options, permissions).remove("requested by --delete")
    HttpApiUnit(ctx, report, permissions).remove("requested by --delete")
    if report.changes == changes:
        report.note("no API created by deploy.py found")
    report.step("S3 trigger")
    code = CodeStoreUnit(ctx, report, options.code_bucket)
    function = FunctionUnit(ctx, report, options, code)
    found = function.current()
    S3TriggerUnit(ctx, report, options, permissions).remove_all(found)
    report.step("Function")
    function.remove(found)
    report.step("IAM role")
    RoleUnit(ctx, report, options).remove()
    report.step("Code objects")
    code.remove()
    report.note(
        f"log group /aws/lambda/{options.function_name} is kept (Lambda created it); "
        "remove it with `aws logs delete-log-group` if the logs are not needed"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = build_options(args)
        for warning in options.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if options.package_only:
            return run_package_only(options)
        if options.delete:
            return run_delete(options)
        return run_deploy(options)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore's errors, without a traceback for the user
        if type(exc).__module__.startswith(("botocore", "boto3")):
            print(f"error: AWS call failed: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
