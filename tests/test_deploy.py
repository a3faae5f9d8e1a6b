"""deploy.py, run as a user runs it, against a real AWS API endpoint emulator.

moto runs in server mode on a free loopback port and answers IAM, STS, Lambda,
API Gateway (REST and HTTP) and S3 over HTTP. deploy.py runs as a subprocess
with ``--endpoint-url`` (or ``AWS_ENDPOINT_URL``); what it created is then read
back through boto3. moto cannot run the function; the handler's own tests do.

Packaging tests build the real zip for both architectures (the wheels are cached
in build/wheel-cache) and import it with a Python of the runtime's version.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from deployment import context, errors, iam, permissions
from deployment import package as packaging

PROJECT = Path(__file__).resolve().parents[1]
DEPLOY = PROJECT / "deploy.py"
REGION = "us-east-1"
NAME = "dicom-test"
BASIC_POLICY = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
HANDLER_MISSING = not (PROJECT / packaging.HANDLER_MODULE).is_file()
SKIP_NO_HANDLER = pytest.mark.skipif(
    HANDLER_MISSING, reason="lambda_function.py is not in the project yet; nothing to package"
)


# --------------------------------------------------------------------------- moto server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_ready(url: str, process: subprocess.Popen[bytes], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            if requests.get(f"{url}/moto-api/data.json", timeout=1).ok:
                return True
        except requests.RequestException:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    with log_path.open("wb") as log:
        for _ in range(3):  # the free port can be taken between probe and bind
            port = _free_port()
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
            url = f"http://127.0.0.1:{port}"
            if _wait_until_ready(url, process, 30):
                break
            process.terminate()
            process.wait(timeout=10)
        else:
            pytest.fail(f"moto server did not start:\n{log_path.read_text(errors='replace')}")
        try:
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _client_env() -> dict[str, str]:
    """A clean AWS environment: fake keys, no profiles, no real endpoint."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
    )
    return env


@dataclass
class Aws:
    url: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def iam(self) -> Any:
        return self.client("iam")

    @property
    def lam(self) -> Any:
        return self.client("lambda")

    @property
    def apigw(self) -> Any:
        return self.client("apigateway")

    @property
    def apigw2(self) -> Any:
        return self.client("apigatewayv2")

    @property
    def s3(self) -> Any:
        return self.client("s3")


@pytest.fixture
def aws(moto_url: str) -> Aws:
    """A fresh, empty account for every test."""
    requests.post(f"{moto_url}/moto-api/reset", timeout=30).raise_for_status()
    return Aws(moto_url)


def run_deploy(
    aws: Aws, *args: str, endpoint: str = "flag", expect: int = 0, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(DEPLOY), *args]
    env = _client_env()
    if endpoint == "flag":
        command += ["--endpoint-url", aws.url]
    else:
        env["AWS_ENDPOINT_URL"] = aws.url
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        cwd=PROJECT.parent,
        timeout=300,
        check=False,
    )
    if result.returncode != expect:
        pytest.fail(
            f"deploy.py exited {result.returncode}, expected {expect}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


# --------------------------------------------------------------------------- packages


@pytest.fixture
def make_zip(tmp_path: Path) -> Any:
    """A small deployment zip with a stand-in handler, for tests about AWS resources."""

    def make(marker: str = "v1") -> Path:
        source = tmp_path / f"src-{marker}"
        source.mkdir()
        (source / "lambda_function.py").write_text(
            f"MARKER = {marker!r}\n\n\ndef lambda_handler(event, context):\n"
            "    return {'statusCode': 200, 'body': MARKER}\n"
        )
        shutil.copy(packaging.CONFIG_PATH, source / "lambda_config.json")
        dest = tmp_path / f"package-{marker}.zip"
        packaging.write_zip(source, dest)
        return dest

    return make


def package_only(runtime: str, arch: str, output: Path) -> Path:
    """Build the real package the way a user does, into ``output``."""
    result = subprocess.run(
        [sys.executable, str(DEPLOY), "--package-only", "--runtime", runtime, "--arch", arch,
         "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"--package-only failed:\n{result.stdout}\n{result.stderr}"
    assert f"package: {packaging.describe_zip(output).size_text}" in result.stdout
    return output


@pytest.fixture(scope="session")
def built_package(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Each runtime/arch package is built once per session (wheels cached in build/)."""
    folder = tmp_path_factory.mktemp("packages")
    built: dict[tuple[str, str], Path] = {}

    def build(runtime: str, arch: str) -> Path:
        if (runtime, arch) not in built:
            built[runtime, arch] = package_only(runtime, arch, folder / f"{runtime}-{arch}.zip")
        return built[runtime, arch]

    return build


def wheel_tags(archive: zipfile.ZipFile, distribution: str) -> list[str]:
    names = [
        n
        for n in archive.namelist()
        if n.lower().startswith(distribution.lower() + "-") and n.endswith(".dist-info/WHEEL")
    ]
    assert names, f"{distribution} is not in the package"
    text = archive.read(names[0]).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Tag:")]


BINARY_DISTRIBUTIONS = (
    "numpy",
    "pillow",
    "imagecodecs",
    "pylibjpeg_rle",
)


@SKIP_NO_HANDLER
@pytest.mark.parametrize("arch", packaging.ARCHITECTURES)
def test_package_binaries_carry_the_target_platform(
    arch: str, built_package: Callable[[str, str], Path]
) -> None:
    path = built_package("python3.12", arch)
    machine = packaging.PLATFORM_MACHINE[arch]
    with zipfile.ZipFile(path) as archive:
        for distribution in BINARY_DISTRIBUTIONS:
            tags = wheel_tags(archive, distribution)
            assert tags, distribution
            for tag in tags:
                python, _, platform = tag.split("-")
                assert python == "cp312", (distribution, tag)
                assert platform.startswith("manylinux"), (distribution, tag)
                assert platform.endswith(machine), (distribution, tag)
        shared = [n for n in archive.namelist() if ".so" in Path(n).suffixes]
        assert len(shared) > 10
        for name in shared:
            with archive.open(name) as member:
                assert packaging.elf_machine(member.read(20)) == packaging.ELF_MACHINE[arch], name


@SKIP_NO_HANDLER
def test_package_holds_the_function_and_leaves_out_what_lambda_provides(
    built_package: Callable[[str, str], Path],
) -> None:
    path = built_package("python3.12", "x86_64")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    top = {name.split("/", 1)[0] for name in names}
    for module in ("lambda_function.py", "settings.py", "errors.py", "lambda_config.json"):
        assert module in top
    assert "deploy.py" not in top
    shipped = {name.removesuffix(".py") for name in top if name.endswith(".py")}
    assert shipped == set(packaging.RUNTIME_MODULES)  # so no local_api.py, demo.py, ...
    assert "tests" not in top
    for provided in ("boto3", "botocore", "s3transfer"):
        assert provided not in top
    assert "requests" in top and "urllib3" in top  # requests' own dependencies stay
    assert not [n for n in names if "/tests/" in n]
    assert not [n for n in names if n.endswith(".dist-info/RECORD")]
    # pylibjpeg discovers its codecs through entry points, which must survive pruning.
    assert [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert names == sorted(names)
    assert {info.date_time for info in infos} == {packaging.ZIP_EPOCH}
    package = packaging.describe_zip(path)
    assert package.unzipped_bytes < packaging.MAX_UNZIPPED_BYTES
    assert package.zipped_bytes < packaging.DIRECT_UPLOAD_LIMIT


@SKIP_NO_HANDLER
def test_package_build_is_reproducible(
    built_package: Callable[[str, str], Path], tmp_path: Path
) -> None:
    built_package("python3.12", "x86_64")  # the wheels are cached from here on
    # Two builds back to back, so that edits to the project in between cannot differ.
    first = package_only("python3.12", "x86_64", tmp_path / "first.zip")
    second = package_only("python3.12", "x86_64", tmp_path / "second.zip")
    with zipfile.ZipFile(first) as one, zipfile.ZipFile(second) as two:
        assert one.namelist() == two.namelist()
        differing = [n for n in one.namelist() if one.read(n) != two.read(n)]
    assert differing == []
    assert first.read_bytes() == second.read_bytes()


def find_python(version: str) -> str | None:
    """An interpreter of exactly this version: on PATH, or installed by pyenv."""
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which(f"python{version}") or ""]
    candidates += [str(p) for p in sorted(pyenv_root.glob(f"versions/{version}.*/bin/python3"))]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def runtime_modules(dest: Path) -> Path:
    """What the Lambda runtime adds after the package on sys.path (/var/runtime)."""
    dest.mkdir()
    for name in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six"):
        spec = find_spec(name)
        assert spec is not None and spec.origin, name
        origin = Path(spec.origin)
        source = origin.parent if origin.name == "__init__.py" else origin
        (dest / source.name).symlink_to(source, target_is_directory=source.is_dir())
    return dest


IMPORT_CHECK = """
import importlib, json, sys
sys.path[:0] = [{package!r}, {runtime!r}]
modules = {modules!r}
for name in modules:
    importlib.import_module(name)
import lambda_function
assert callable(lambda_function.lambda_handler)
import numpy, PIL.Image, pydicom, imagecodecs, dicom_codecs
print(json.dumps({{
    "python": "%d.%d" % sys.version_info[:2],
    "numpy": numpy.__file__,
    "imagecodecs": imagecodecs.__file__,
    "codecs": {{row["name"]: row["codec"] for row in dicom_codecs.decodable_syntaxes()}},
}}))
"""


@SKIP_NO_HANDLER
@pytest.mark.parametrize("runtime", list(packaging.RUNTIMES))
def test_package_imports_on_the_runtime_python(
    runtime: str, tmp_path: Path, built_package: Callable[[str, str], Path]
) -> None:
    version = packaging.RUNTIMES[runtime]
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version} interpreter on this machine (PATH or pyenv)")
    package_dir = tmp_path / "task"
    with zipfile.ZipFile(built_package(runtime, "x86_64")) as archive:
        archive.extractall(package_dir)
    modules = sorted(p.stem for p in package_dir.glob("*.py"))
    script = IMPORT_CHECK.format(
        package=str(package_dir),
        runtime=str(runtime_modules(tmp_path / "runtime")),
        modules=modules,
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "LAMBDA_TASK_ROOT": str(package_dir),
    }
    # -I -S: no site-packages of the host interpreter, like the Lambda runtime.
    result = subprocess.run(
        [python, "-I", "-S", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["python"] == version
    assert report["numpy"].startswith(str(package_dir))
    assert report["imagecodecs"].startswith(str(package_dir))
    codecs = report["codecs"]
    assert codecs["JPEG 2000 Image Compression"] == "OpenJPEG", codecs
    assert codecs["JPEG-LS Lossless Image Compression"] == "CharLS", codecs
    assert codecs["High-Throughput JPEG 2000 Image Compression"] == "OpenJPH", codecs
    assert codecs["RLE Lossless"] == "pylibjpeg-rle", codecs


def test_oversized_package_is_refused(make_zip: Any) -> None:
    package = packaging.describe_zip(make_zip())
    too_big = packaging.Package(
        path=package.path,
        zipped_bytes=package.zipped_bytes,
        unzipped_bytes=packaging.MAX_UNZIPPED_BYTES + 1,
        files=package.files,
        sha256_hex=package.sha256_hex,
    )
    with pytest.raises(errors.DeployError, match="Lambda allows"):
        packaging.check_package(too_big, "python3.12", "x86_64")


def test_zip_for_another_architecture_is_refused(aws: Aws, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "lambda_function.py").write_text("def lambda_handler(e, c):\n    return 1\n")
    # A minimal ELF header for aarch64 (e_machine 183, little-endian).
    header = b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + (183).to_bytes(2, "little")
    (source / "_codec.cpython-312-aarch64-linux-gnu.so").write_bytes(header + b"\x00" * 44)
    zip_path = tmp_path / "arm.zip"
    packaging.write_zip(source, zip_path)
    result = run_deploy(aws, NAME, REGION, "--package", str(zip_path), "--yes", expect=1)
    assert "not built for x86_64" in result.stderr
    assert aws.lam.list_functions()["Functions"] == []


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--memory", "64"], "--memory (MB) must be between 128 and 10240"),
        (["--timeout", "901"], "--timeout (seconds) must be between 1 and 900"),
        (["--ephemeral-storage", "100"], "--ephemeral-storage (MB) must be between"),
        (["--runtime", "python3.9"], "--runtime must be one of python3.12, python3.13"),
        (["--allowed-buckets", "Bad_Bucket"], "is not a bucket name or a pattern"),
        (["--output-bucket", "x"], "not a valid S3 bucket name"),
        (["--api", "http", "--api-key"], "--api-key needs --api rest"),
    ],
)
def test_invalid_flags_are_rejected_before_anything_is_created(
    aws: Aws, make_zip: Any, flags: list[str], message: str
) -> None:
    result = run_deploy(aws, NAME, REGION, "--package", str(make_zip()), "--yes", *flags, expect=2)
    assert message in result.stderr
    assert aws.iam.list_roles()["Roles"] == []
    assert aws.lam.list_functions()["Functions"] == []


def test_timeout_longer_than_the_api_waits_is_a_warning(aws: Aws, make_zip: Any) -> None:
    result = run_deploy(
        aws, NAME, REGION, "--package", str(make_zip()), "--timeout", "60", "--dry-run"
    )
    assert "--timeout 60 s is longer than the REST API waits" in result.stderr


# --------------------------------------------------------------------------- deploys


def policy_statements(aws: Aws) -> dict[str, dict[str, Any]]:
    policy = aws.lam.get_policy(FunctionName=NAME, Qualifier="live")["Policy"]
    return {s["Sid"]: s for s in json.loads(policy)["Statement"]}


def rest_apis(aws: Aws) -> list[dict[str, Any]]:
    return aws.apigw.get_rest_apis()["items"]


def rest_routes(aws: Aws, api_id: str) -> dict[str, dict[str, Any]]:
    """'METHOD /path' -> the method with its integration."""
    routes = {}
    for resource in aws.apigw.get_resources(restApiId=api_id)["items"]:
        for method in resource.get("resourceMethods") or {}:
            routes[f"{method} {resource['path']}"] = aws.apigw.get_method(
                restApiId=api_id, resourceId=resource["id"], httpMethod=method
            )
    return routes


def alias_uri(aws: Aws) -> str:
    alias_arn = f"arn:aws:lambda:{REGION}:123456789012:function:{NAME}:live"
    return f"arn:aws:apigateway:{REGION}:lambda:path/2015-03-31/functions/{alias_arn}/invocations"


def test_first_deploy_creates_every_resource(aws: Aws, make_zip: Any) -> None:
    package = make_zip()
    result = run_deploy(
        aws,
        NAME,
        REGION,
        "--package", str(package),
        "--allowed-buckets", "scans-a,archive-*",
        "--allowed-hosts", "pacs.example.org",
        "--output-bucket", "renders",
        "--memory", "2048",
        "--ephemeral-storage", "2048",
        "--log-level", "warning",
        "--yes",
    )  # fmt: skip

    # IAM: trust, managed logging policy, least-privilege inline policy.
    role = aws.iam.get_role(RoleName=f"{NAME}-role")["Role"]
    trust = role["AssumeRolePolicyDocument"]
    assert trust["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    attached = aws.iam.list_attached_role_policies(RoleName=f"{NAME}-role")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [BASIC_POLICY]
    inline = aws.iam.get_role_policy(RoleName=f"{NAME}-role", PolicyName="s3-least-privilege")
    statements = {s["Sid"]: s for s in inline["PolicyDocument"]["Statement"]}
    assert statements["ReadAllowedBuckets"]["Action"] == "s3:GetObject"
    assert statements["ReadAllowedBuckets"]["Resource"] == [
        "arn:aws:s3:::scans-a/*",
        "arn:aws:s3:::archive-*/*",
    ]
    assert "s3:PutObject" in statements["WriteOutputPrefix"]["Action"]
    assert statements["WriteOutputPrefix"]["Resource"] == "arn:aws:s3:::renders/converted/*"

    # Function configuration, environment and code.
    config = aws.lam.get_function_configuration(FunctionName=NAME)
    assert config["Handler"] == "lambda_function.lambda_handler"
    assert config["Runtime"] == "python3.12"
    assert config["Architectures"] == ["x86_64"]
    assert config["MemorySize"] == 2048
    assert config["Timeout"] == 29
    assert config["EphemeralStorage"] == {"Size": 2048}
    assert config["Role"] == role["Arn"]
    assert config["CodeSha256"] == packaging.describe_zip(package).code_sha256
    assert config["Environment"]["Variables"] == {
        "LOG_LEVEL": "WARNING",
        "ALLOWED_HOSTS": "pacs.example.org",
        "ALLOWED_BUCKETS": "scans-a,archive-*",
        "OUTPUT_BUCKET": "renders",
        "OUTPUT_PREFIX": "converted/",
    }
    assert aws.lam.list_tags(Resource=config["FunctionArn"])["Tags"] == context.TAGS

    # Version 1 behind alias "live".
    assert aws.lam.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"] == "1"

    # REST API: binary media types, routes as AWS_PROXY to the alias, stage prod.
    (api,) = rest_apis(aws)
    assert api["name"] == f"{NAME}-api"
    assert "image/*" in aws.apigw.get_rest_api(restApiId=api["id"])["binaryMediaTypes"]
    routes = rest_routes(aws, api["id"])
    assert sorted(routes) == ["GET /", "GET /convert", "GET /health", "POST /convert"]
    for method in routes.values():
        assert method["methodIntegration"]["type"] == "AWS_PROXY"
        assert method["methodIntegration"]["uri"] == alias_uri(aws)
        assert method["apiKeyRequired"] is False
    assert aws.apigw.get_stage(restApiId=api["id"], stageName="prod")

    # Invoke permission on the alias, scoped to this API in this account.
    statement = policy_statements(aws)[permissions.SID_REST]
    assert statement["Principal"] == {"Service": "apigateway.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == (
        f"arn:aws:execute-api:{REGION}:123456789012:{api['id']}/*"
    )
    assert statement["Resource"].endswith(f"function:{NAME}:live")

    # The summary a user reads.
    invoke = f"https://{api['id']}.execute-api.{REGION}.amazonaws.com/prod"
    assert f"{invoke}/convert" in result.stdout
    assert f"{invoke}/health" in result.stdout
    assert f"curl -sS -X POST '{invoke}/convert'" in result.stdout
    assert "version:      1" in result.stdout
    assert "zipped" in result.stdout and "unzipped" in result.stdout


def test_second_deploy_publishes_a_new_version_and_duplicates_nothing(
    aws: Aws, make_zip: Any
) -> None:
    first, second = make_zip("v1"), make_zip("v2")
    run_deploy(aws, NAME, REGION, "--package", str(first), "--yes")
    result = run_deploy(aws, NAME, REGION, "--package", str(second), "--yes")

    assert "function code: updated" in result.stdout
    assert "alias live: moved (1 -> 2)" in result.stdout
    config = aws.lam.get_function_configuration(FunctionName=NAME)
    assert config["CodeSha256"] == packaging.describe_zip(second).code_sha256
    assert aws.lam.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"] == "2"
    versions = aws.lam.list_versions_by_function(FunctionName=NAME)["Versions"]
    assert sorted(v["Version"] for v in versions) == ["$LATEST", "1", "2"]

    # Same arguments again: nothing changes, nothing is duplicated.
    again = run_deploy(aws, NAME, REGION, "--package", str(second), "--yes")
    assert "everything unchanged" in again.stdout
    for line in ("function code: unchanged", "version: unchanged (2)", "REST API"):
        assert line in again.stdout
    assert len(rest_apis(aws)) == 1
    (api,) = rest_apis(aws)
    assert sorted(rest_routes(aws, api["id"])) == [
        "GET /",
        "GET /convert",
        "GET /health",
        "POST /convert",
    ]
    paths = [r["path"] for r in aws.apigw.get_resources(restApiId=api["id"])["items"]]
    assert sorted(paths) == ["/", "/convert", "/health"]
    assert list(policy_statements(aws)) == [permissions.SID_REST]
    assert len(aws.lam.list_versions_by_function(FunctionName=NAME)["Versions"]) == 3
    assert [r["RoleName"] for r in aws.iam.list_roles()["Roles"]] == [f"{NAME}-role"]


def test_http_api_and_public_function_url(aws: Aws, make_zip: Any) -> None:
    package = str(make_zip())
    run_deploy(aws, NAME, REGION, "--package", package, "--yes")
    result = run_deploy(
        aws, NAME, REGION, "--package", package, "--api", "http", "--function-url", "public",
        "--yes",
    )  # fmt: skip

    # The REST API deploy.py made before is gone; one HTTP API took its place.
    assert rest_apis(aws) == []
    (api,) = aws.apigw2.get_apis()["Items"]
    assert api["ProtocolType"] == "HTTP"
    (integration,) = aws.apigw2.get_integrations(ApiId=api["ApiId"])["Items"]
    assert integration["IntegrationType"] == "AWS_PROXY"
    assert integration["PayloadFormatVersion"] == "2.0"
    assert integration["IntegrationUri"].endswith(f"function:{NAME}:live")
    routes = {r["RouteKey"]: r for r in aws.apigw2.get_routes(ApiId=api["ApiId"])["Items"]}
    assert sorted(routes) == ["GET /", "GET /convert", "GET /health", "POST /convert"]
    assert {r["Target"] for r in routes.values()} == {
        f"integrations/{integration['IntegrationId']}"
    }
    stages = aws.apigw2.get_stages(ApiId=api["ApiId"])["Items"]
    assert [(s["StageName"], s["AutoDeploy"]) for s in stages] == [("$default", True)]

    # Public Function URL: both permissions, and the HTTP API's scoped permission.
    url = aws.lam.get_function_url_config(FunctionName=NAME, Qualifier="live")
    assert url["AuthType"] == "NONE"
    statements = policy_statements(aws)
    assert set(statements) == {
        permissions.SID_HTTP,
        permissions.SID_URL_PUBLIC,
        permissions.SID_URL_INVOKE,
    }
    assert statements[permissions.SID_URL_PUBLIC]["Action"] == "lambda:InvokeFunctionUrl"
    assert "NONE" in json.dumps(statements[permissions.SID_URL_PUBLIC])
    assert statements[permissions.SID_URL_INVOKE]["Action"] == "lambda:InvokeFunction"
    assert "InvokedViaFunctionUrl" in json.dumps(statements[permissions.SID_URL_INVOKE])
    assert statements[permissions.SID_HTTP]["Condition"]["ArnLike"]["AWS:SourceArn"] == (
        f"arn:aws:execute-api:{REGION}:123456789012:{api['ApiId']}/*"
    )
    assert url["FunctionUrl"] in result.stdout
    assert f"{api['ApiEndpoint']}/convert" in result.stdout

    # Switching the URL to IAM auth withdraws the public permissions.
    run_deploy(
        aws, NAME, REGION, "--package", package, "--api", "http", "--function-url", "iam", "--yes"
    )
    url = aws.lam.get_function_url_config(FunctionName=NAME, Qualifier="live")
    assert url["AuthType"] == "AWS_IAM"
    assert set(policy_statements(aws)) == {permissions.SID_HTTP}


def test_no_allowed_buckets_means_no_s3_read(aws: Aws, make_zip: Any) -> None:
    result = run_deploy(aws, NAME, REGION, "--package", str(make_zip()), "--yes")
    assert "no S3 read access" in result.stdout
    assert aws.iam.list_role_policies(RoleName=f"{NAME}-role")["PolicyNames"] == []
    variables = aws.lam.get_function_configuration(FunctionName=NAME)["Environment"]["Variables"]
    assert "ALLOWED_BUCKETS" not in variables


def test_api_key_adds_a_throttled_usage_plan(aws: Aws, make_zip: Any) -> None:
    package = str(make_zip())
    run_deploy(aws, NAME, REGION, "--package", package, "--yes")
    run_deploy(aws, NAME, REGION, "--package", package, "--api-key", "--yes")

    (api,) = rest_apis(aws)
    routes = rest_routes(aws, api["id"])
    assert routes["POST /convert"]["apiKeyRequired"] is True
    assert routes["GET /convert"]["apiKeyRequired"] is True
    assert routes["GET /health"]["apiKeyRequired"] is False
    for method in routes.values():
        assert method["methodIntegration"]["uri"] == alias_uri(aws)
    (key,) = aws.apigw.get_api_keys()["items"]
    (plan,) = aws.apigw.get_usage_plans()["items"]
    assert plan["apiStages"] == [{"apiId": api["id"], "stage": "prod"}]
    assert plan["throttle"] == {"rateLimit": 10.0, "burstLimit": 20}
    keys = aws.apigw.get_usage_plan_keys(usagePlanId=plan["id"])["items"]
    assert [k["id"] for k in keys] == [key["id"]]

    # Without --api-key again: key and plan go, the routes open up.
    run_deploy(aws, NAME, REGION, "--package", package, "--yes")
    assert aws.apigw.get_api_keys()["items"] == []
    assert aws.apigw.get_usage_plans()["items"] == []
    routes = rest_routes(aws, api["id"])
    assert not any(m["apiKeyRequired"] for m in routes.values())


def test_code_bucket_carries_the_code(aws: Aws, make_zip: Any) -> None:
    package = make_zip()
    aws.s3.create_bucket(Bucket="deploy-artifacts")
    result = run_deploy(
        aws, NAME, REGION, "--package", str(package), "--code-bucket", "deploy-artifacts", "--yes"
    )
    digest = packaging.describe_zip(package)
    key = f"deploy-py/{NAME}/{digest.sha256_hex}.zip"
    assert f"s3://deploy-artifacts/{key}: uploaded" in result.stdout
    assert aws.s3.head_object(Bucket="deploy-artifacts", Key=key)["ContentLength"] == (
        digest.zipped_bytes
    )
    config = aws.lam.get_function_configuration(FunctionName=NAME)
    assert config["CodeSha256"] == digest.code_sha256


def account_state(aws: Aws) -> dict[str, Any]:
    """Everything deploy.py can touch, in a comparable form."""
    functions = aws.lam.list_functions()["Functions"]
    state: dict[str, Any] = {
        "roles": sorted(r["RoleName"] for r in aws.iam.list_roles()["Roles"]),
        "functions": sorted(
            json.dumps(
                {k: f.get(k) for k in ("FunctionName", "CodeSha256", "MemorySize", "Environment")},
                sort_keys=True,
            )
            for f in functions
        ),
        "rest": sorted(a["id"] for a in rest_apis(aws)),
        "http": sorted(a["ApiId"] for a in aws.apigw2.get_apis()["Items"]),
        "keys": sorted(k["id"] for k in aws.apigw.get_api_keys()["items"]),
    }
    for function in functions:
        name = function["FunctionName"]
        versions = aws.lam.list_versions_by_function(FunctionName=name)["Versions"]
        state[f"{name}:versions"] = sorted(v["Version"] for v in versions)
        state[f"{name}:aliases"] = sorted(
            (a["Name"], a["FunctionVersion"])
            for a in aws.lam.list_aliases(FunctionName=name)["Aliases"]
        )
    for role in state["roles"]:
        state[f"{role}:inline"] = aws.iam.list_role_policies(RoleName=role)["PolicyNames"]
    for api_id in state["rest"]:
        state[f"{api_id}:resources"] = sorted(
            r["path"] for r in aws.apigw.get_resources(restApiId=api_id)["items"]
        )
    return state


def test_dry_run_changes_nothing(aws: Aws, make_zip: Any) -> None:
    first, second = str(make_zip("v1")), str(make_zip("v2"))
    empty = account_state(aws)
    result = run_deploy(aws, NAME, REGION, "--package", first, "--dry-run")
    assert account_state(aws) == empty
    assert f"function {NAME}: would be created" in result.stdout
    assert "REST API dicom-test-api: would be created" in result.stdout
    assert "nothing was changed" in result.stdout

    run_deploy(aws, NAME, REGION, "--package", first, "--allowed-buckets", "scans", "--yes")
    deployed = account_state(aws)
    result = run_deploy(
        aws, NAME, REGION, "--package", second, "--api", "http", "--function-url", "public",
        "--memory", "4096", "--dry-run",
    )  # fmt: skip
    assert account_state(aws) == deployed
    for planned in (
        "function code: would be updated",
        "function configuration: would be updated (MemorySize, Environment)",
        "inline policy s3-least-privilege: would be deleted",
        "REST API dicom-test-api: would be deleted",
        "HTTP API dicom-test-http-api: would be created",
        "Function URL on alias live: would be created",
    ):
        assert planned in result.stdout


def test_delete_removes_what_deploy_created_and_nothing_else(aws: Aws, make_zip: Any) -> None:
    package = str(make_zip())
    # Someone else's resources in the same account.
    trust = json.dumps(iam.LAMBDA_TRUST_POLICY)
    other_role = aws.iam.create_role(RoleName="someone-elses-role", AssumeRolePolicyDocument=trust)
    aws.lam.create_function(
        FunctionName="someone-elses-function",
        Runtime="python3.12",
        Role=other_role["Role"]["Arn"],
        Handler="lambda_function.lambda_handler",
        Code={"ZipFile": Path(package).read_bytes()},
    )
    aws.apigw.create_rest_api(name="someone-elses-api")
    run_deploy(
        aws, NAME, REGION, "--package", package, "--api-key", "--allowed-buckets", "scans",
        "--function-url", "public", "--yes",
    )  # fmt: skip
    aws.apigw2.create_api(Name="someone-elses-http-api", ProtocolType="HTTP")

    refused = run_deploy(aws, "--delete", NAME, REGION, endpoint="env", expect=2)
    assert "--yes" in refused.stderr
    result = run_deploy(aws, "--delete", NAME, REGION, "--yes", endpoint="env")

    assert [f["FunctionName"] for f in aws.lam.list_functions()["Functions"]] == [
        "someone-elses-function"
    ]
    assert [r["RoleName"] for r in aws.iam.list_roles()["Roles"]] == ["someone-elses-role"]
    assert [a["name"] for a in rest_apis(aws)] == ["someone-elses-api"]
    assert [a["Name"] for a in aws.apigw2.get_apis()["Items"]] == ["someone-elses-http-api"]
    assert aws.apigw.get_api_keys()["items"] == []
    assert aws.apigw.get_usage_plans()["items"] == []
    assert "Deleted:" in result.stdout

    # A second delete finds nothing of its own and touches nothing else.
    again = run_deploy(aws, "--delete", NAME, REGION, "--yes")
    assert "Deleted: 0 change(s)." in again.stdout
    assert len(aws.lam.list_functions()["Functions"]) == 1


@SKIP_NO_HANDLER
def test_deploy_builds_and_ships_the_real_package(
    aws: Aws, built_package: Callable[[str, str], Path], tmp_path: Path
) -> None:
    built_package("python3.12", "x86_64")  # warms the wheel cache
    output = tmp_path / "deployed.zip"
    result = run_deploy(aws, NAME, REGION, "--output", str(output), "--yes")
    assert "building for python3.12 on manylinux x86_64" in result.stdout
    config = aws.lam.get_function_configuration(FunctionName=NAME)
    assert config["CodeSha256"] == packaging.describe_zip(output).code_sha256
    assert config["CodeSize"] == output.stat().st_size


def test_package_over_50_mb_goes_through_a_bucket_deploy_creates(aws: Aws, tmp_path: Path) -> None:
    source = tmp_path / "big"
    source.mkdir()
    (source / "lambda_function.py").write_text("def lambda_handler(e, c):\n    return 1\n")
    # Random bytes do not compress, so the zip stays above the direct-upload limit.
    (source / "blob.bin").write_bytes(os.urandom(packaging.DIRECT_UPLOAD_LIMIT + 4096))
    package = tmp_path / "big.zip"
    packaging.write_zip(source, package)
    digest = packaging.describe_zip(package)
    assert digest.zipped_bytes > packaging.DIRECT_UPLOAD_LIMIT

    result = run_deploy(aws, NAME, REGION, "--package", str(package), "--api", "none", "--yes")
    bucket = f"dicom-lambda-code-123456789012-{REGION}"
    key = f"deploy-py/{NAME}/{digest.sha256_hex}.zip"
    assert "over 50 MB zipped: the code goes to Lambda through S3" in result.stdout
    assert f"code bucket {bucket}: created" in result.stdout
    assert aws.s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == digest.zipped_bytes
    block = aws.s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values())
    config = aws.lam.get_function_configuration(FunctionName=NAME)
    assert config["CodeSha256"] == digest.code_sha256

    run_deploy(aws, "--delete", NAME, REGION, "--yes")
    assert aws.s3.list_buckets()["Buckets"] == []


# --------------------------------------------------------------------------- S3 trigger


def notification(aws: Aws, bucket: str) -> dict[str, Any]:
    """The bucket's notification configuration, without empty lists."""
    found = aws.s3.get_bucket_notification_configuration(Bucket=bucket)
    return {k: v for k, v in found.items() if k != "ResponseMetadata" and v}


def filter_rules(configuration: dict[str, Any]) -> list[tuple[str, str]]:
    rules = configuration["Filter"]["Key"]["FilterRules"]
    return sorted((rule["Name"].lower(), rule["Value"]) for rule in rules)


def test_watch_bucket_adds_the_notification_permission_and_policy(aws: Aws, make_zip: Any) -> None:
    for bucket in ("scans-in", "renders"):
        aws.s3.create_bucket(Bucket=bucket)
    # Someone else's notification on the watched bucket stays as it is.
    audit = {
        "Id": "audit",
        "QueueArn": f"arn:aws:sqs:{REGION}:123456789012:audit",
        "Events": ["s3:ObjectRemoved:*"],
    }
    aws.s3.put_bucket_notification_configuration(
        Bucket="scans-in", NotificationConfiguration={"QueueConfigurations": [audit]}
    )
    package = str(make_zip())
    flags = [
        "--watch-bucket", "scans-in", "--watch-prefix", "incoming/",
        "--watch-suffixes", ".dcm,.DCM", "--output-bucket", "renders", "--output-prefix", "jpg/",
    ]  # fmt: skip
    result = run_deploy(aws, NAME, REGION, "--package", package, *flags, "--yes")

    config = notification(aws, "scans-in")
    assert config["QueueConfigurations"] == [audit]
    mine = sorted(config["LambdaFunctionConfigurations"], key=lambda c: c["Id"])
    alias = f"arn:aws:lambda:{REGION}:123456789012:function:{NAME}:live"
    assert [(c["Id"], c["LambdaFunctionArn"], c["Events"]) for c in mine] == [
        (f"{NAME}-dicom-0", alias, ["s3:ObjectCreated:*"]),
        (f"{NAME}-dicom-1", alias, ["s3:ObjectCreated:*"]),
    ]
    assert [filter_rules(c) for c in mine] == [
        [("prefix", "incoming/"), ("suffix", ".dcm")],
        [("prefix", "incoming/"), ("suffix", ".DCM")],
    ]

    # S3 may invoke the alias only for this bucket, in this account.
    statement = policy_statements(aws)[permissions.SID_S3_TRIGGER]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "lambda:InvokeFunction"
    assert statement["Condition"]["ArnLike"]["AWS:SourceArn"] == "arn:aws:s3:::scans-in"
    assert statement["Condition"]["StringEquals"]["AWS:SourceAccount"] == "123456789012"
    assert statement["Resource"].endswith(f"function:{NAME}:live")

    # The role reads the watched prefix and writes only under the output prefix.
    role = f"{NAME}-role"
    watch = aws.iam.get_role_policy(RoleName=role, PolicyName=iam.WATCH_POLICY_NAME)
    (read,) = watch["PolicyDocument"]["Statement"]
    assert read["Resource"] == "arn:aws:s3:::scans-in/incoming/*"
    assert sorted(read["Action"]) == ["s3:GetObject", "s3:GetObjectVersion"]
    inline = aws.iam.get_role_policy(RoleName=role, PolicyName=iam.INLINE_POLICY_NAME)
    (write,) = inline["PolicyDocument"]["Statement"]
    assert write["Resource"] == "arn:aws:s3:::renders/jpg/*"
    assert sorted(write["Action"]) == ["s3:GetObject", "s3:PutObject"]
    variables = aws.lam.get_function_configuration(FunctionName=NAME)["Environment"]["Variables"]
    assert {k: v for k, v in variables.items() if k.startswith(("WATCH_", "OUTPUT_"))} == {
        "WATCH_BUCKET": "scans-in",
        "WATCH_PREFIX": "incoming/",
        "WATCH_SUFFIXES": ".dcm,.DCM",
        "OUTPUT_BUCKET": "renders",
        "OUTPUT_PREFIX": "jpg/",
    }
    assert "S3 trigger:   s3://scans-in/incoming/* (.dcm,.DCM) -> s3://renders/jpg/" in (
        result.stdout
    )

    # The same flags again: nothing changes and nothing is duplicated.
    again = run_deploy(aws, NAME, REGION, "--package", package, *flags, "--yes")
    assert "everything unchanged" in again.stdout
    assert notification(aws, "scans-in") == config
    assert sorted(policy_statements(aws)) == sorted(
        [permissions.SID_REST, permissions.SID_S3_TRIGGER]
    )

    # Without --watch-bucket the trigger, its permission and its policy go.
    result = run_deploy(aws, NAME, REGION, "--package", package, "--yes")
    assert "notification s3://scans-in -> alias live: removed" in result.stdout
    assert notification(aws, "scans-in") == {"QueueConfigurations": [audit]}
    assert list(policy_statements(aws)) == [permissions.SID_REST]
    assert iam.WATCH_POLICY_NAME not in aws.iam.list_role_policies(RoleName=role)["PolicyNames"]
    variables = aws.lam.get_function_configuration(FunctionName=NAME)["Environment"]["Variables"]
    assert not any(name.startswith("WATCH_") for name in variables)


def test_delete_removes_the_notification_it_added(aws: Aws, make_zip: Any) -> None:
    aws.s3.create_bucket(Bucket="scans-in")
    thumbnails = {
        "Id": "thumbnails",
        "LambdaFunctionArn": f"arn:aws:lambda:{REGION}:123456789012:function:thumbnails",
        "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "photos/"}]}},
    }
    aws.s3.put_bucket_notification_configuration(
        Bucket="scans-in", NotificationConfiguration={"LambdaFunctionConfigurations": [thumbnails]}
    )
    package = str(make_zip())
    flags = ["--watch-bucket", "scans-in", "--watch-prefix", "incoming/"]
    planned = run_deploy(aws, NAME, REGION, "--package", package, *flags, "--dry-run")
    assert "notification s3://scans-in -> alias live: would be added (incoming/*)" in planned.stdout
    assert notification(aws, "scans-in") == {"LambdaFunctionConfigurations": [thumbnails]}

    run_deploy(aws, NAME, REGION, "--package", package, *flags, "--yes")
    # Outputs stay in the watched bucket (converted/), so the role may write there too.
    watch = aws.iam.get_role_policy(RoleName=f"{NAME}-role", PolicyName=iam.WATCH_POLICY_NAME)
    resources = [s["Resource"] for s in watch["PolicyDocument"]["Statement"]]
    assert resources == ["arn:aws:s3:::scans-in/incoming/*", "arn:aws:s3:::scans-in/converted/*"]
    assert len(notification(aws, "scans-in")["LambdaFunctionConfigurations"]) == 2

    result = run_deploy(aws, "--delete", NAME, REGION, "--yes")
    assert "notification s3://scans-in -> alias live: removed" in result.stdout
    assert notification(aws, "scans-in") == {"LambdaFunctionConfigurations": [thumbnails]}
    assert aws.iam.list_roles()["Roles"] == []


@pytest.mark.parametrize(
    "flags",
    [
        ["--watch-bucket", "scans-in"],  # every key counts, the outputs' too
        ["--watch-bucket", "scans-in", "--watch-prefix", "conv"],  # "converted/" starts so
        ["--watch-bucket", "scans-in", "--output-bucket", "scans-in", "--watch-suffixes", ".jpg"],
    ],
)
def test_watch_setups_whose_outputs_would_trigger_again_are_refused(
    aws: Aws, make_zip: Any, flags: list[str]
) -> None:
    aws.s3.create_bucket(Bucket="scans-in")
    result = run_deploy(aws, NAME, REGION, "--package", str(make_zip()), *flags, "--yes", expect=2)
    assert "would trigger it again" in result.stderr
    assert aws.iam.list_roles()["Roles"] == []
    assert notification(aws, "scans-in") == {}


def test_a_missing_watched_bucket_is_refused_before_anything_is_created(
    aws: Aws, make_zip: Any
) -> None:
    flags = ["--watch-bucket", "no-such-bucket", "--watch-prefix", "incoming/"]
    result = run_deploy(aws, NAME, REGION, "--package", str(make_zip()), *flags, "--yes", expect=1)
    assert "--watch-bucket no-such-bucket: no such bucket" in result.stderr
    assert aws.iam.list_roles()["Roles"] == []
