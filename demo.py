"""The main job end to end, on this machine: ``make demo``.

1. serve a bundled sample DICOM (CT_small.dcm from pydicom's wheel) over HTTP on loopback;
2. start the local API (``local_api.py``), which speaks API Gateway events to the handler;
3. POST /convert with the sample's URL, as a client of the deployed API would;
4. write the JPG to ``out/`` and print its path and the response metadata.

The URL policy refuses loopback addresses unless ALLOWED_HOSTS lists them, so the
demo allows 127.0.0.1 for the local API explicitly.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent
OUT = PROJECT / "out"
SAMPLE = "CT_small.dcm"
API_PORT = 3000
SAMPLE_PORT = 8000


def sample_path(name: str = SAMPLE) -> Path:
    """A DICOM file shipped inside pydicom's wheel (never downloaded)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        raise SystemExit(f"{name} is not among pydicom's bundled test files")
    return Path(path)


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


def port_or_any(port: int) -> int:
    """`port` when it is free on 127.0.0.1, else 0 (the OS picks one)."""
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return 0
    return port


@contextmanager
def serve_file(path: Path, port: int = 0) -> Iterator[str]:
    """Serve the folder of `path` on 127.0.0.1; yields the file's URL."""
    handler = functools.partial(_QuietFiles, directory=str(path.parent))
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def local_api(env: dict[str, str], port: int = 0) -> Iterator[str]:
    """Run ``local_api.py --port PORT`` and yield its base URL once it answers /health."""
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "local_api.py"), "--port", str(port)],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"Serving on (http://\S+)", line)
        if not match:
            raise SystemExit(f"local API did not start: {line!r}")
        base = match.group(1)
        # The handler's JSON log lines go to the server's stdout; drain them quietly.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        wait_for_health(base)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def wait_for_health(base: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def post_json(url: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(document).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def main() -> int:
    sample = sample_path()
    env = {**os.environ, "ALLOWED_HOSTS": "127.0.0.1:*"}
    with serve_file(sample) as dicom_url, local_api(env) as api:
        print(f"sample:    {sample} served at {dicom_url}")
        print(f"local API: {api} (REST API events)")
        status, document = post_json(f"{api}/convert", {"url": dicom_url, "quality": 90})
    if status != 200 or not document.get("success"):
        print(f"conversion failed: HTTP {status}: {json.dumps(document, indent=2)}")
        return 1
    data = document["data"]
    OUT.mkdir(exist_ok=True)
    target = OUT / f"{Path(SAMPLE).stem}.{data['format']}"
    target.write_bytes(base64.b64decode(data.pop("image_base64")))
    print(f"image:     {target}")
    print("response metadata:")
    summary = {k: v for k, v in document.items() if k != "data"}
    print(json.dumps({**summary, "data": data}, indent=2))
    print("playground: run `make serve` and open the address it prints")
    return 0


def serve() -> int:
    """``make serve``: the local API with the playground page, until Ctrl-C.

    Fixed ports (API 3000, files 8000, as the README's curl examples use) when they
    are free; any free port otherwise.
    """
    sample = sample_path()
    env = {**os.environ, "ALLOWED_HOSTS": "127.0.0.1:*"}
    files_port, api_port = port_or_any(SAMPLE_PORT), port_or_any(API_PORT)
    with serve_file(sample, files_port) as dicom_url, local_api(env, api_port) as api:
        print(f"playground: {api}/")
        print(f"sample URL to paste: {dicom_url}")
        base = dicom_url.rsplit("/", 1)[0]
        print(f"more samples: {base}/examples_ybr_color.dcm (30 frames), {base}/MR_small.dcm")
        print(f"or open:    {api}/?url={urllib.parse.quote(dicom_url, safe='')}")
        print("Ctrl-C stops both servers.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print()
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["--serve"] else main())
