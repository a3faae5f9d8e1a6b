"""Benchmark HTTP-native delivery through the local API: first request, cache, 304.

    .venv/bin/python bench/bench_delivery.py [--rounds 20] [FILE.dcm ...]

The local API server (``local_api``, REST event format) runs in this process with
OUTPUT_BUCKET on moto's S3 server (a child process on 127.0.0.1) and serves each
DICOM file from a loopback HTTP server that sends an ETag. For every file, over
``--rounds`` rounds, medians of the wall time a client sees for:

- first request: a new source version (a new ETag each round), so a download and a
  render, then the render is kept in the output cache;
- repeated request: the same URL again, no If-None-Match: a HEAD of the source and
  the answer read from the output cache (no download, no render);
- revalidation: If-None-Match with the answer's ETag: a HEAD of the source, 304;
- first request and revalidation without OUTPUT_BUCKET, for comparison.

The client asks for the image itself (``Accept: image/jpeg``), as an ``<img>`` does.
Times include the loopback servers and moto, so they are an upper bound.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import lambda_function  # noqa: E402
import local_api  # noqa: E402
from settings import Settings, load_settings  # noqa: E402
from tests import servers  # noqa: E402
from tests.corpus import bundled_file  # noqa: E402

warnings.filterwarnings("ignore")
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
CORPUS = PROJECT.parent / "shared" / "dicom-corpus"
DEFAULT_FILES = ("CT_small.dcm", "CT1_JLSN.dcm", "CR-MONO1-10-chest.dcm")


def default_files() -> list[Path]:
    found = []
    for name in DEFAULT_FILES:
        path = CORPUS / name
        found.append(path if path.exists() else bundled_file(name))
    return [path for path in found if path.exists()]


def start_api(settings: Settings) -> local_api.LocalApiServer:
    handler = functools.partial(lambda_function.handle, settings=settings)
    server = local_api.make_server("127.0.0.1", 0, "rest", handler, timeout=29)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def timed(call: Callable[[], requests.Response], status: int) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    answer = call()
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != status:
        raise SystemExit(f"expected {status}, got {answer.status_code}: {answer.text[:200]}")
    return elapsed, answer


def measure(
    api: str, files: servers.HttpServer, data: bytes, name: str, rounds: int, cached: bool
) -> dict[str, float]:
    session = requests.Session()
    times: dict[str, list[float]] = {"first": [], "repeat": [], "revalidate": []}
    for number in range(rounds):
        # A new version of the source each round: the first request cannot be cached.
        url = files.route(name, servers.serve_bytes(data, {"ETag": f'"{name}-{number}-{cached}"'}))

        def ask(headers: dict[str, str], url: str = url) -> requests.Response:
            return session.get(
                f"{api}/convert",
                params={"url": url},
                headers={"Accept": "image/jpeg", **headers},
                timeout=60,
            )

        elapsed, first = timed(lambda: ask({}), 200)
        times["first"].append(elapsed)
        if cached:
            times["repeat"].append(timed(lambda: ask({}), 200)[0])
        etag = first.headers["ETag"]
        times["revalidate"].append(timed(functools.partial(ask, {"If-None-Match": etag}), 304)[0])
    return {stage: statistics.median(values) for stage, values in times.items() if values}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    os.environ.update(FAKE_AWS_ENV)
    moto = servers.start_moto()
    moto.create_bucket("bench-rendered")
    root = Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    files = servers.HttpServer(root)
    base: dict[str, Any] = {
        "allowed_hosts": "127.0.0.1:*",
        "temp_root": str(root / "work"),
        "s3_endpoint_url": moto.endpoint_url,
    }
    with_cache = load_settings({**base, "output_bucket": "bench-rendered"}, environ={})
    without = load_settings(base, environ={})
    apis = {True: start_api(with_cache), False: start_api(without)}
    print(
        "| file | size | first request | repeated (cache) | revalidation (304) "
        "| first, no cache | 304, no cache |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    try:
        for path in args.files or default_files():
            data = path.read_bytes()
            row = {
                key: measure(api.url, files, data, path.name, args.rounds, key)
                for key, api in apis.items()
            }
            print(
                f"| {path.name} | {len(data) // 1024} KiB | {row[True]['first']:.1f} ms "
                f"| {row[True]['repeat']:.1f} ms | {row[True]['revalidate']:.1f} ms "
                f"| {row[False]['first']:.1f} ms | {row[False]['revalidate']:.1f} ms |",
                flush=True,
            )
    finally:
        for api in apis.values():
            api.shutdown()
            api.server_close()
        files.stop()
        moto.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
