"""The docs' examples, run: README.md and QUICKSTART.md as a reader would use them.

Every fenced block in a language a reader would run or compare (bash, sh, shell,
console, python, json, html) carries a marker, an HTML comment on the line before
its fence; a block without one fails ``test_every_example_block_is_marked``:

    <!-- docs-test: run -->               run it: shell with bash -euo pipefail, python with
                                          the project's Python, html by fetching its <img src>
    <!-- docs-test: run; not: make test (it is this suite) -->
                                          run it without the lines that start with
                                          "make test"; those are reported as skipped
    <!-- docs-test: serve -->             a command that serves until Ctrl-C (make serve): start
                                          it, read what it prints up to the Ctrl-C line, stop it
    <!-- docs-test: post /convert -->     a JSON request body: POST it to the local API
    <!-- docs-test: output -->            the JSON answer of the run/post block before it:
                                          its keys must be the real answer's, recursively
                                          ("...": "..." in an object stands for more keys)
    <!-- docs-test: log -->               a log line: its keys must be those of the local
                                          API's real line for a successful POST /convert
    <!-- docs-test: skip (reason) -->     not run here; reported as skipped with the reason

What the blocks run against: the local API (``local_api.py``, REST events) and the
file server ``make serve`` runs (pydicom's bundled files), moto's server as AWS
(S3 bucket ``my-scans`` holds CT_small.dcm; ``deploy.py`` talks to it), and a
loopback Lambda Invoke endpoint that runs ``lambda_handler`` for ``aws lambda
invoke`` and boto3. The addresses the docs use are rewritten to those (see
``url_rewrites``); ``python deploy.py`` gets ``--package`` with a small zip, since
building the real package is ``tests/test_deploy.py``'s job. Blocks run in one
scratch copy of the project's top level, in file order, like one terminal session.

A run must exit 0; images it writes must open; a JSON answer it prints must have
``success`` as the block after it shows (true when none is shown). Relative links,
anchors and file paths in the docs must exist, and openapi.yaml's examples are
checked against live answers the same way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from PIL import Image

import demo
from tests import servers

PROJECT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "QUICKSTART.md")
RUNNABLE = {"bash", "sh", "shell", "console", "python", "json", "html"}
SHELLS = {"bash", "sh", "shell", "console"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif"}
# Folders that builds and runs create; paths under them need not exist in a checkout.
GENERATED = {"build", "out", "temp", "samples", "dist", "converted"}
# Programs a block may need; with DOCS_TOOLS_REQUIRED=1 (.ci/run) a missing one fails.
TOOLS = ("curl", "aws", "make", "sam", "docker")
BROWSER_ACCEPT = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"
MARKER = re.compile(
    r"^\s*<!--\s*docs-test:\s*(?P<verb>run|serve|post|output|log|skip)\b(?P<rest>.*?)-->\s*$"
)
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
SAMPLES = ("CT_small.dcm", "MR_small.dcm", "examples_ybr_color.dcm")
BUCKET = "my-scans"
WATCHED_BUCKET = "scans"  # the README's S3 trigger example watches it


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    verb: str  # run | serve | post | output | log | skip | "" (no marker)
    note: str  # skip reason, post route
    not_lines: tuple[tuple[str, str], ...] = ()  # (line prefix, reason) left out of a run

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def parse_marker(text: str) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    match = MARKER.match(text)
    if not match:
        return None
    verb, rest = match["verb"], match["rest"].strip()
    not_lines: list[tuple[str, str]] = []
    if verb == "run" and rest.startswith("; not:"):
        items = re.findall(r"([^();]+?)\s*\(([^()]*)\)", rest.removeprefix("; not:"))
        not_lines = [(prefix.strip(), reason.strip()) for prefix, reason in items]
        rest = ""
    if verb == "skip":
        rest = rest.strip().removeprefix("(").removesuffix(")").strip()
    return verb, rest, tuple(not_lines)


def parse_blocks(doc: str, text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            end += 1
        body = "\n".join(line[indent:] for line in lines[index + 1 : end])
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        verb, note, not_lines = parse_marker(previous) or ("", "", ())
        lang = opening["lang"].lower()
        blocks.append(Block(doc, index + 1, lang, body + "\n", verb, note, not_lines))
        index = end + 1
    return blocks


def doc_blocks() -> list[Block]:
    found: list[Block] = []
    for doc in DOCS:
        path = PROJECT / doc
        if path.exists():
            found += parse_blocks(doc, path.read_text())
    return found


ALL_BLOCKS = doc_blocks()
MARKED = [b for b in ALL_BLOCKS if b.verb]


def block_params() -> list[Any]:
    params: list[Any] = []
    for block in MARKED:
        params.append(pytest.param(block, "", id=block.id))
        for prefix, _reason in block.not_lines:
            params.append(pytest.param(block, prefix, id=f"{block.id} {prefix}"))
    return params


# --------------------------------------------------------------------------- answers


def json_documents(text: str) -> list[Any]:
    """The JSON documents a run printed: the whole output, or each line that is one."""
    text = text.strip()
    if not text:
        return []
    with contextlib.suppress(ValueError):
        return [json.loads(text)]
    found = []
    for line in text.splitlines():
        if line.lstrip().startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def key_differences(shown: Any, real: Any, where: str = "") -> list[str]:
    """Where the docs' JSON and the real answer differ in keys (values may differ)."""
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{where or '.'}: the docs show an object, the answer has {real!r:.60}"]
        keys = set(shown) - {"..."}
        problems = [
            f"{where}.{k}: shown in the docs, not in the answer" for k in sorted(keys - set(real))
        ]
        if "..." not in shown:
            extra = set(real) - keys
            problems += [f"{where}.{k}: in the answer, not in the docs" for k in sorted(extra)]
        for key in sorted(keys & set(real)):
            problems += key_differences(shown[key], real[key], f"{where}.{key}")
        return problems
    if isinstance(shown, list) and isinstance(real, list):
        problems = []
        for position, (item, actual) in enumerate(zip(shown, real, strict=False)):
            problems += key_differences(item, actual, f"{where}[{position}]")
        return problems
    return []


@dataclass
class Outcome:
    stdout: str
    documents: list[Any] = field(default_factory=list)


# --------------------------------------------------------------------------- servers


class _Invoke(BaseHTTPRequestHandler):
    """Lambda's Invoke API (``POST /2015-03-31/functions/NAME/invocations``) on loopback."""

    settings: Any = None

    def do_POST(self) -> None:
        import lambda_function

        payload = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        context = _Context(self.path.split("/")[3])
        result = lambda_function.handle(json.loads(payload or b"{}"), context, self.settings)
        body = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Amz-Executed-Version", "$LATEST")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


class _Context:
    def __init__(self, name: str) -> None:
        self.function_name = name
        self.aws_request_id = "docs-test-invoke"
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@dataclass
class DocsEnv:
    api: str
    files: str
    moto: servers.MotoServer
    invoke: str
    workspace: Path
    package: Path
    env: dict[str, str]
    log_lines: list[str]
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)

    def url_rewrites(self) -> list[tuple[str, str]]:
        """The docs' addresses → this run's servers (most specific first)."""
        github = (
            "https://raw.githubusercontent.com/pydicom/pydicom/main/src/pydicom/data/test_files"
        )
        return [
            (github, self.files),
            ("http://127.0.0.1:8000", self.files),
            ("https://API_ID.execute-api.us-east-1.amazonaws.com/prod", f"{self.api}/prod"),
            ("http://127.0.0.1:3000", self.api),
            ("http://localhost:3000", self.api),
        ]

    def rewrite(self, text: str) -> str:
        for old, new in self.url_rewrites():
            text = text.replace(old, new)
        # make must not reinstall the environment the suite runs in.
        text = re.sub(r"^(\s*)make (?=\w)", r"\1make -o .venv/.installed ", text, flags=re.M)
        # AWS CLI versions before 2.13 ignore AWS_ENDPOINT_URL*: name the endpoint.
        text = re.sub(
            r"^(\s*)aws lambda invoke ",
            rf"\1aws --endpoint-url {self.invoke} lambda invoke ",
            text,
            flags=re.M,
        )
        text = re.sub(
            r"^(\s*)aws (?!--endpoint-url)",
            rf"\1aws --endpoint-url {self.moto.endpoint_url} ",
            text,
            flags=re.M,
        )
        # A real build is tests/test_deploy.py's work; here deploy.py ships a small zip.
        return re.sub(
            r"^(\s*python deploy\.py)(?![^\n]*--(?:package|delete))",
            rf"\1 --package {self.package}",
            text,
            flags=re.MULTILINE,
        )


def _start_local_api(env: dict[str, str], log_lines: list[str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "local_api.py"), "--port", "0"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    first = process.stdout.readline()
    if "Serving on" not in first:
        process.kill()
        pytest.fail(f"local_api.py did not start: {first}{process.stdout.read()}")
    log_lines.append(first)
    stream = process.stdout
    threading.Thread(target=lambda: log_lines.extend(stream), daemon=True).start()
    return process


def _workspace(root: Path) -> Path:
    """The project's top level as a reader's checkout: files copied, folders linked."""
    workspace = root / "checkout"
    workspace.mkdir()
    for entry in PROJECT.iterdir():
        if entry.name in GENERATED or entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_dir():
            (workspace / entry.name).symlink_to(entry)
        else:
            shutil.copy2(entry, workspace / entry.name)
    (workspace / ".venv").symlink_to(Path(sys.executable).parents[1])
    (workspace / "samples").mkdir()
    for name in SAMPLES:
        shutil.copy(demo.sample_path(name), workspace / "samples" / name)
    return workspace


def _small_package(root: Path) -> Path:
    from deployment import package as packaging

    source = root / "package-source"
    source.mkdir()
    (source / "lambda_function.py").write_text(
        "def lambda_handler(event, context):\n    return {'statusCode': 200, 'body': '{}'}\n"
    )
    shutil.copy(packaging.CONFIG_PATH, source / "lambda_config.json")
    packaging.write_zip(source, root / "package.zip")
    return root / "package.zip"


def _python_shims(root: Path) -> Path:
    """`python` and `python3` as this suite's interpreter (a venv's, found by its path)."""
    shims = root / "bin"
    shims.mkdir()
    programs = {"python": Path(sys.executable), "python3": Path(sys.executable)}
    aws = aws_cli_v2()
    if aws is not None:
        programs["aws"] = aws
    for name, program in programs.items():
        (shims / name).write_text(f'#!/bin/sh\nexec "{program}" "$@"\n')
        (shims / name).chmod(0o755)
    return shims


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsEnv]:
    from settings import load_settings

    root = tmp_path_factory.mktemp("docs")
    with contextlib.ExitStack() as stack, pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        moto = servers.start_moto()
        stack.callback(moto.stop)
        moto.put_object(BUCKET, "CT_small.dcm", demo.sample_path())
        moto.create_bucket(WATCHED_BUCKET)
        files = stack.enter_context(demo.serve_file(demo.sample_path())).rsplit("/", 1)[0]
        aws = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        aws.update(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        service = {
            "ALLOWED_HOSTS": "127.0.0.1:*",
            "S3_ENDPOINT_URL": moto.endpoint_url,
            "TEMP_ROOT": str(root / "work"),
            "LOG_LEVEL": "INFO",
        }
        log_lines: list[str] = []
        process = _start_local_api({**aws, **service}, log_lines)
        stack.callback(process.wait, 10)
        stack.callback(process.terminate)
        api = re.search(r"Serving on (\S+)", log_lines[0]).group(1)  # type: ignore[union-attr]
        demo.wait_for_health(api)
        handler = type("Invoke", (_Invoke,), {"settings": load_settings(
            {k.lower(): v for k, v in service.items()}, environ={}
        )})  # fmt: skip
        invoke_server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=invoke_server.serve_forever, daemon=True).start()
        stack.callback(invoke_server.server_close)
        stack.callback(invoke_server.shutdown)
        invoke = f"http://127.0.0.1:{invoke_server.server_address[1]}"
        shims = _python_shims(root)
        env = {
            **aws,
            "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '')}",
            "AWS_ENDPOINT_URL": moto.endpoint_url,
            "AWS_ENDPOINT_URL_LAMBDA": invoke,
            "AWS_PAGER": "",
        }
        yield DocsEnv(
            api=api,
            files=files,
            moto=moto,
            invoke=invoke,
            workspace=_workspace(root),
            package=_small_package(root),
            env=env,
            log_lines=log_lines,
        )


# --------------------------------------------------------------------------- running


def missing_tool(block: Block, code: str) -> str | None:
    """The first program the block needs that is not installed here, if any."""
    for line in code.splitlines():
        words = line.strip().split()
        if words and words[0] in TOOLS and shutil.which(words[0]) is None:
            return words[0]
        if words[:1] == ["aws"] and aws_cli_v2() is None:
            return "aws (version 2; version 1 lacks --cli-binary-format)"
    return None


@functools.cache
def aws_cli_v2() -> Path | None:
    """The first AWS CLI version 2 on PATH (a version 1 may come first, e.g. from pip)."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "aws"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            done = subprocess.run(
                [str(candidate), "--version"], capture_output=True, text=True, check=False
            )
            if (done.stdout + done.stderr).startswith("aws-cli/2"):
                return candidate
    return None


def shell_script(block: Block) -> str:
    lines = block.code.splitlines()
    if block.lang == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    prefixes = tuple(prefix for prefix, _ in block.not_lines)
    kept = [line for line in lines if not (prefixes and line.strip().startswith(prefixes))]
    return "\n".join(kept) + "\n"


def _images(workspace: Path) -> dict[Path, int]:
    """Image files a block may write (the workspace, out/, temp/), with their mtimes."""
    found: dict[Path, int] = {}
    for folder in (workspace, workspace / "out", workspace / "temp"):
        if folder.is_dir() and not folder.is_symlink():
            for path in folder.iterdir():
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    found[path] = path.stat().st_mtime_ns
    return found


def run_block(block: Block, docs_env: DocsEnv) -> Outcome:
    if block.id in docs_env.outcomes:
        return docs_env.outcomes[block.id]
    if block.verb == "post":
        answer = requests.post(
            f"{docs_env.api}{block.note or '/convert'}",
            data=docs_env.rewrite(block.code).encode(),
            headers={"Content-Type": "application/json"},
            timeout=60,
        )
        outcome = Outcome(answer.text, json_documents(answer.text))
    elif block.verb == "serve":
        outcome = _serve_until(block, docs_env)
    elif block.lang == "html":
        outcome = _fetch_images(block, docs_env)
    else:
        outcome = _run_program(block, docs_env)
    docs_env.outcomes[block.id] = outcome
    return outcome


def _serve_until(block: Block, docs_env: DocsEnv) -> Outcome:
    """Start a command that serves until Ctrl-C, read what it prints up to the line
    naming Ctrl-C, then press Ctrl-C (SIGINT to its process group)."""
    code = docs_env.rewrite(shell_script(block))
    process = subprocess.Popen(
        ["bash", "-c", code],
        cwd=docs_env.workspace,
        env=docs_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    printed: list[str] = []
    timer = threading.Timer(60, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in process.stdout:
            printed.append(line)
            if "Ctrl-C" in line:
                break
    finally:
        timer.cancel()
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = "".join(printed)
    assert any("Ctrl-C" in line for line in printed), f"{block.id} printed:\n{text}"
    return Outcome(text, json_documents(text))


def _run_program(block: Block, docs_env: DocsEnv) -> Outcome:
    code = docs_env.rewrite(shell_script(block) if block.lang in SHELLS else block.code)
    tool = missing_tool(block, code)
    if tool:
        if os.environ.get("DOCS_TOOLS_REQUIRED") == "1":
            pytest.fail(f"{block.id} needs `{tool}` (DOCS_TOOLS_REQUIRED=1)")
        pytest.skip(f"{block.id}: needs `{tool}`, not installed here (.ci/run installs it)")
    command = ["bash", "-euo", "pipefail", "-c", code]
    if block.lang == "python":
        command = [sys.executable, "-c", code]
    before = _images(docs_env.workspace)
    done = subprocess.run(
        command,
        cwd=docs_env.workspace,
        env=docs_env.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"{block.id} exited {done.returncode}\n--- ran\n{code}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )
    written = [p for p, mtime in _images(docs_env.workspace).items() if before.get(p) != mtime]
    for image in written:
        try:
            Image.open(image).verify()
        except Exception as exc:
            start = image.read_bytes()[:600]
            pytest.fail(f"{block.id} wrote {image.name}, which is not an image ({exc}): {start!r}")
    return Outcome(done.stdout, json_documents(done.stdout))


def _fetch_images(block: Block, docs_env: DocsEnv) -> Outcome:
    sources = re.findall(r'<img[^>]*\ssrc="([^"]+)"', docs_env.rewrite(block.code))
    assert sources, f"{block.id}: an html block marked run needs an <img src>"
    for source in sources:
        answer = requests.get(source.replace("&amp;", "&"), headers={"Accept": BROWSER_ACCEPT})
        assert answer.status_code == 200, f"{block.id}: {source} → {answer.status_code}"
        assert answer.headers["Content-Type"].startswith("image/"), answer.headers
        Image.open(__import__("io").BytesIO(answer.content)).verify()
    return Outcome("")


def following_output(block: Block) -> Block | None:
    position = ALL_BLOCKS.index(block)
    for later in ALL_BLOCKS[position + 1 :]:
        if later.doc != block.doc or later.verb in {"run", "serve", "post", "skip", "log"}:
            return None
        if later.verb == "output":
            return later
    return None


def preceding_run(block: Block) -> Block:
    position = ALL_BLOCKS.index(block)
    for earlier in reversed(ALL_BLOCKS[:position]):
        if earlier.doc == block.doc and earlier.verb in {"run", "serve", "post"}:
            return earlier
    raise AssertionError(f"{block.id}: an output block needs a run or post block before it")


def check_success(block: Block, outcome: Outcome) -> None:
    shown = following_output(block)
    expected = True
    if shown is not None and shown.lang == "json":
        expected = json.loads(shown.code).get("success", True)
    for document in outcome.documents:
        if isinstance(document, dict) and "success" in document:
            assert document["success"] is expected, (
                f"{block.id}: the answer has success={document['success']}, the docs expect "
                f"{expected}: {json.dumps(document)[:1500]}"
            )


# --------------------------------------------------------------------------- tests


def test_every_example_block_is_marked() -> None:
    unmarked = [b.id for b in ALL_BLOCKS if b.lang in RUNNABLE and not b.verb]
    assert unmarked == [], (
        "mark each of these blocks with <!-- docs-test: run | post | output | skip (why) --> "
        f"on the line before its fence: {unmarked}"
    )
    assert (PROJECT / "QUICKSTART.md").exists(), "QUICKSTART.md is missing"


@pytest.mark.parametrize(("block", "left_out"), block_params())
def test_example(block: Block, left_out: str, docs_env: DocsEnv) -> None:
    if left_out:
        pytest.skip(f"{block.id} `{left_out}`: {dict(block.not_lines)[left_out]}")
    if block.verb == "skip":
        pytest.skip(f"{block.id}: {block.note or 'marked skip without a reason'}")
    if block.verb == "output":
        source = preceding_run(block)
        outcome = run_block(source, docs_env)
        if block.lang != "json":
            check_labels(block, source, outcome)
            return
        shown = json.loads(block.code)
        assert outcome.documents, f"{block.id}: {source.id} printed no JSON:\n{outcome.stdout}"
        problems = key_differences(shown, outcome.documents[-1])
        assert problems == [], (
            f"{block.id} shows the answer of {source.id} with other keys than the real one:\n"
            + "\n".join(problems)
            + f"\nreal answer: {json.dumps(outcome.documents[-1])[:3000]}"
        )
        return
    if block.verb == "log":
        check_log_line(block, docs_env)
        return
    outcome = run_block(block, docs_env)
    check_success(block, outcome)


def check_labels(block: Block, source: Block, outcome: Outcome) -> None:
    """A text answer: each "Label:" shown starts a line of the real output (any case);
    without labels, each line shown is a line of the real output."""
    label = re.compile(r"^\s*([A-Za-z][\w-]*(?: [\w-]+){0,3}):(?:\s|$)", re.MULTILINE)
    shown = [m.lower() for m in label.findall(block.code)]
    real = {m.lower() for m in label.findall(outcome.stdout)}
    if shown:
        missing = [name for name in shown if name not in real]
    else:
        lines = {line.strip() for line in outcome.stdout.splitlines()}
        missing = [line.strip() for line in block.code.splitlines() if line.strip() not in lines]
    assert missing == [], f"{block.id} shows what {source.id} does not print: {missing}\n" + (
        outcome.stdout
    )


def check_log_line(block: Block, docs_env: DocsEnv) -> None:
    shown = json.loads(block.code)
    answer = requests.post(
        f"{docs_env.api}/convert", json={"url": f"{docs_env.files}/CT_small.dcm"}
    )
    request_id = answer.json()["request_id"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(x) for x in list(docs_env.log_lines) if x.startswith("{")]
        real = [
            x
            for x in lines
            if x.get("request_id") == request_id and x.get("message") == shown.get("message")
        ]
        if real:
            break
        time.sleep(0.05)
    assert real, f"{block.id}: no {shown.get('message')!r} log line for request {request_id}"
    problems = key_differences(shown, real[-1])
    assert problems == [], f"{block.id}: " + "\n".join(problems) + f"\nreal: {json.dumps(real[-1])}"


# --------------------------------------------------------------------------- links and paths


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    outside = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", outside, flags=re.MULTILINE)}


def project_names() -> set[str]:
    names = set()
    for path in PROJECT.rglob("*"):
        parts = path.relative_to(PROJECT).parts
        if parts[0] in GENERATED or parts[0].startswith(".") or "__pycache__" in parts:
            continue
        names.add(path.name)
    return names


def referenced_paths(text: str) -> Iterator[str]:
    prose = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.MULTILINE | re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", prose) + re.findall(r'src="([^"]+)"', prose):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):
            yield target
    for token in re.findall(r"`([^`\s]+)`", prose):
        if re.fullmatch(r"[\w.-]+(/[\w.*-]+)+/?", token) and token.split("/")[0] not in GENERATED:
            if (PROJECT / token.split("/")[0]).exists():
                yield token
        elif re.fullmatch(r"[\w-]+\.(py|md|yaml|yml|toml|txt|html)", token):
            yield token
    yield from re.findall(r"python3? ((?:[\w-]+/)*[\w-]+\.py)\b", text)


def target_exists(target: str, doc: str, names: set[str]) -> bool:
    path, _, anchor = target.partition("#")
    if path and "/" not in path and "*" not in path and not (PROJECT / path).exists():
        return path in names  # a bare file name: somewhere in the project
    if path and not list(PROJECT.glob(path.rstrip("/"))):
        return False
    return not anchor or anchor in anchors((PROJECT / (path or doc)).read_text())


@pytest.mark.parametrize("doc", DOCS)
def test_links_and_paths_exist(doc: str) -> None:
    text = (PROJECT / doc).read_text()
    names = project_names()
    targets = sorted(set(referenced_paths(text)))
    missing = [target for target in targets if not target_exists(target, doc, names)]
    assert missing == [], f"{doc} names paths or anchors that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS)
def test_make_targets_exist(doc: str) -> None:
    makefile = (PROJECT / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, flags=re.MULTILINE))
    # `make x` in prose, or a command line starting with make
    pattern = r"(?:`|^\s*)make ([a-z][\w-]*)"
    named = set(re.findall(pattern, (PROJECT / doc).read_text(), flags=re.MULTILINE))
    assert named - targets == set(), f"{doc} names make targets the Makefile lacks"


# --------------------------------------------------------------------------- openapi.yaml


def _examples(node: Any, where: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "example":
                yield where, value
            elif key == "examples" and isinstance(value, dict):
                for item in value.values():
                    yield where, item.get("value") if isinstance(item, dict) else item
            else:
                yield from _examples(value, (*where, str(key)))
    elif isinstance(node, list):
        for position, value in enumerate(node):
            yield from _examples(value, (*where, str(position)))


def live_answers(docs_env: DocsEnv) -> dict[str, Any]:
    """A live object for each schema of openapi.yaml that an example may show (once)."""
    if docs_env.live:
        return docs_env.live
    sample = f"{docs_env.files}/CT_small.dcm"

    def post(body: dict[str, Any]) -> Any:
        return requests.post(f"{docs_env.api}/convert", json=body, timeout=60).json()

    converted = post({"url": sample})
    failed = post({"url": f"{docs_env.files}/gone.dcm"})
    batch = post({"urls": [sample, f"s3://{BUCKET}/CT_small.dcm", f"s3://{BUCKET}/gone.dcm"]})
    health = requests.get(f"{docs_env.api}/health", timeout=30).json()
    docs_env.live.update(
        ConvertResponse=converted,
        ImageData=converted["data"],
        AppliedWindow=converted["data"]["window"],
        Metadata=converted["metadata"],
        Error=failed,
        ErrorCode=failed["error"],
        BatchResponse=batch,
        BatchResult=batch["data"]["results"][0],
        BatchFailure=batch["data"]["results"][2],
        Health=health,
        # components/responses, by name
        Converted=converted,
        SeeImage=converted,
    )
    return docs_env.live


REQUEST_SCHEMAS = {"ConvertRequest", "BatchConvertRequest", "Window"}


def openapi_example_cases() -> list[Any]:
    spec = yaml.safe_load((PROJECT / "openapi.yaml").read_text())
    return [pytest.param(where, value, id="/".join(where)) for where, value in _examples(spec)]


def _rewrite_example_urls(value: Any, sample: str) -> Any:
    text = json.dumps(value)
    text = re.sub(r"https?://(?:[\w-]+\.)*example\.(?:com|org)/[^\"]*", sample, text)
    return json.loads(text)


def _live_response(where: tuple[str, ...], live: dict[str, Any]) -> Any:
    """The live answer an example under `responses` shows: by component name or status."""
    key = where[where.index("responses") + 1]
    if key in live:
        return live[key]
    if key.isdigit() and int(key) < 400:
        return live["Health"] if "/health" in where else live["ConvertResponse"]
    return live["Error"]


@pytest.mark.parametrize(("where", "example"), openapi_example_cases())
def test_openapi_example_matches_a_live_answer(
    where: tuple[str, ...], example: Any, docs_env: DocsEnv
) -> None:
    sample = f"{docs_env.files}/CT_small.dcm"
    example = _rewrite_example_urls(example, sample)
    named = "/".join(where)
    if "requestBody" in where or (
        where[:2] == ("components", "schemas") and where[2] in REQUEST_SCHEMAS
    ):
        rest = [w for w in where[3:] if w != "properties"] if where[0] == "components" else []
        body = _request_with(where[2], rest, example, sample) if rest else example
        answer = requests.post(f"{docs_env.api}/convert", json=body, timeout=60)
        assert answer.status_code == 200, f"{named}: {answer.text[:1500]}"
    elif "parameters" in where:
        _check_parameter_example(where, example, sample, docs_env)
    elif "responses" in where:
        real = _live_response(where, live_answers(docs_env))
        problems = key_differences(example, real)
        assert problems == [], f"{named}: {problems}"
    elif where[:2] == ("components", "schemas"):
        schema, rest = where[2], [w for w in where[3:] if w != "properties"]
        live = live_answers(docs_env)
        assert schema in live, f"no live answer known for schema {schema}: add it to live_answers"
        real = live[schema]
        for key in rest:
            assert isinstance(real, dict) and key in real, f"{schema}.{key} is not in {real!r:.300}"
            real = real[key]
        assert key_differences(example, real) == [], named
        assert type(example) is type(real) or {type(example), type(real)} <= {int, float}, named
    else:
        pytest.fail(f"{named}: no live request known for this example; teach test_docs.py")


def _request_with(schema: str, rest: list[str], example: Any, sample: str) -> dict[str, Any]:
    body: dict[str, Any] = (
        {"urls": [sample]} if schema == "BatchConvertRequest" else {"url": sample}
    )
    if schema == "Window":
        return {**body, "window": {"center": 40, "width": 400, rest[0]: example}}
    return {**body, rest[0]: example}


def _check_parameter_example(
    where: tuple[str, ...], example: Any, sample: str, docs_env: DocsEnv
) -> None:
    spec = yaml.safe_load((PROJECT / "openapi.yaml").read_text())
    node: Any = spec
    for key in where:
        node = node[int(key)] if isinstance(node, list) else node[key]
    name, place = node["name"], node["in"]
    query: dict[str, Any] = {"url": sample}
    headers = {"Accept": "application/json"}
    if place == "query":
        query[name] = example
    elif place == "header":
        headers[name] = str(example)
    answer = requests.get(f"{docs_env.api}/convert", params=query, headers=headers, timeout=60)
    assert answer.status_code < 400, f"{'/'.join(where)}: {answer.status_code} {answer.text[:800]}"


# --------------------------------------------------------------------------- the harness itself


def test_markers_are_read_as_documented() -> None:
    text = (
        "<!-- docs-test: run; not: make test (the suite; itself) -->\n"
        "```bash\nmake demo\nmake test\n```\n\n```json\n{}\n```\n"
        "<!-- docs-test: skip (needs AWS) -->\n  ```python\n  print(1)\n  ```\n"
    )
    run, unmarked, skipped = parse_blocks("x.md", text)
    assert (run.verb, run.not_lines, run.line) == ("run", (("make test", "the suite; itself"),), 2)
    assert shell_script(run) == "make demo\n"
    assert (unmarked.verb, unmarked.lang) == ("", "json")
    assert (skipped.verb, skipped.note, skipped.code) == ("skip", "needs AWS", "print(1)\n")


def test_key_differences_ignore_values_and_honour_elisions() -> None:
    assert key_differences({"a": 1, "b": {"c": 2}}, {"a": 5, "b": {"c": None}}) == []
    assert key_differences({"a": 1, "...": "..."}, {"a": 1, "z": 2}) == []
    assert key_differences({"a": 1}, {"a": 1, "z": 2}) == [".z: in the answer, not in the docs"]
    assert key_differences({"b": [{"x": 1}]}, {"b": [{}]}) == [
        ".b[0].x: shown in the docs, not in the answer"
    ]
