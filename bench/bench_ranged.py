"""Benchmark rendering frame N of a large multi-frame file: ranged reads against a whole download.

    .venv/bin/python bench/bench_ranged.py [--size-mb 300] [--runs 3] [--sources http,s3]

Two files of about ``--size-mb`` are built from corpus pixels (tests/ranged_files.py):
native 16-bit frames of about 7 MB, and JPEG Lossless frames of about 130 kB with a
Basic Offset Table. Each is served by a Range-capable loopback HTTP server and by
moto's S3 server (a child process on 127.0.0.1). For each, frame N (the middle
frame) is fetched with ``frame_fetch.fetch_frames`` (ranged) and as a whole download
(``frames=None``), then rendered to JPEG; the table shows the bytes transferred and
the median time of fetch + render. A last table gives the peak RSS of rendering
frame 1 of the local native file, with the frame reading of the previous commit
(``git show HEAD:...``) and with this tree's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import frame_fetch  # noqa: E402
from dicom_converter import render  # noqa: E402
from errors import TooLarge  # noqa: E402
from file_downloader import DownloadOptions  # noqa: E402
from render_options import RenderOptions  # noqa: E402
from tests import servers  # noqa: E402
from tests.ranged_files import build, source_pixels  # noqa: E402
from url_policy import SourceEndpoints, UrlPolicy  # noqa: E402

warnings.filterwarnings("ignore")
MB = 1000 * 1000
MIB = 1024 * 1024
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
BUCKET = "bench-ranged"
# Side of the native frames: 1872 x 1872 x 16 bits is about 7 MB.
NATIVE_SIDE = 1872

# Renders frame 1 of argv[1] and prints the peak RSS in KiB; argv[2] goes first on
# sys.path, so a folder of older modules replaces this tree's.
# VmHWM, not ru_maxrss: the latter keeps the (large) parent's peak across exec.
_RSS_CHILD = """
import sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from dicom_converter import render
from render_options import RenderOptions
render(sys.argv[1], RenderOptions("jpg", frame=1))
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(status.split()[0])
"""


def build_files(folder: Path, size_mb: int) -> dict[str, tuple[Path, int]]:
    """{layout: (path, frame count)} of about ``size_mb`` MB each."""
    wide = source_pixels(NATIVE_SIDE)
    native_frames = -(-size_mb * MB // wide.nbytes)
    small = source_pixels(512)
    bot_frames = -(-size_mb * MB // 130_000)
    return {
        "native": (build(folder, "native", native_frames, wide), native_frames),
        "bot": (build(folder, "bot", bot_frames, small), bot_frames),
    }


def options(max_bytes: int, endpoint: str | None) -> DownloadOptions:
    return DownloadOptions(
        max_bytes=max_bytes,
        min_free_bytes=64 * MIB,
        connect_timeout=5.0,
        read_timeout=30.0,
        deadline_seconds=300.0,
        retries=0,
        max_redirects=2,
        endpoints=SourceEndpoints(s3=endpoint),
    )


def measure(url: str, opts: DownloadOptions, frame: int, ranged: bool, work: Path) -> Any:
    started = time.perf_counter()
    fetched = frame_fetch.fetch_frames(
        url,
        work,
        opts,
        UrlPolicy(allowed_hosts=("127.0.0.1:*",)),
        frames=(frame, frame) if ranged else None,
    )
    fetch_seconds = time.perf_counter() - started
    render(fetched.path, RenderOptions("jpg", frame=frame))
    total = time.perf_counter() - started
    fetched.path.unlink()
    return fetched, fetch_seconds, total


def run(args: argparse.Namespace, work: Path) -> None:
    (work / "files").mkdir()
    (work / "http").mkdir()
    files = build_files(work / "files", args.size_mb)
    http = servers.HttpServer(work / "http")
    moto = servers.start_moto() if "s3" in args.sources else None
    rows = []
    try:
        for layout, (path, count) in files.items():
            urls = {}
            if "http" in args.sources:
                urls["http"] = http.route(f"/{path.name}", servers.RangeFile(path))
            if moto is not None:
                moto.put_object(BUCKET, path.name, path)
                urls["s3"] = f"s3://{BUCKET}/{path.name}"
            frame = count // 2
            for source, url in urls.items():
                opts = options(512 * MIB, moto.endpoint_url if moto else None)
                # Imports and first connections are not what is measured.
                measure(url, opts, frame, True, work / "out")
                for ranged in (True, False):
                    results = [
                        measure(url, opts, frame, ranged, work / "out") for _ in range(args.runs)
                    ]
                    fetched = results[-1][0]
                    rows.append(
                        (
                            layout,
                            path.stat().st_size,
                            f"{frame}/{count}",
                            source,
                            "ranged" if fetched.ranged else "whole",
                            fetched.bytes_transferred,
                            statistics.median(r[1] for r in results),
                            statistics.median(r[2] for r in results),
                        )
                    )
        print_table(rows)
        if "http" in args.sources:
            print_cap(files["native"], http, work)
    finally:
        http.stop()
        if moto is not None:
            moto.stop()
    print_memory([path for path, _ in files.values()], work)


def print_table(rows: list[tuple[Any, ...]]) -> None:
    print(
        "| file | size | frame | source | read | bytes transferred | fetch s (median) "
        "| fetch + render s (median) |"
    )
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    for layout, size, frame, source, mode, moved, fetch_s, total_s in rows:
        print(
            f"| {layout} | {size / MB:.0f} MB | {frame} | {source} | {mode} "
            f"| {moved / MB:.2f} MB | {fetch_s:.3f} | {total_s:.3f} |"
        )


def print_cap(native: tuple[Path, int], http: servers.HttpServer, work: Path) -> None:
    """The native file under a 32 MiB MAX_DOWNLOAD_BYTES: ranged renders, whole is a 413."""
    path, count = native
    url = http.route(f"/cap/{path.name}", servers.RangeFile(path))
    cap = options(32 * MIB, None)
    fetched, _, _ = measure(url, cap, count // 2, True, work / "out")
    print(f"\nMAX_DOWNLOAD_BYTES 32 MiB, {path.stat().st_size / MB:.0f} MB file:")
    print(f"- frame {count // 2} ranged: rendered, {fetched.bytes_transferred / MB:.2f} MB")
    try:
        measure(url, cap, count // 2, False, work / "out")
    except TooLarge as exc:
        print(f"- whole download: HTTP {exc.status} {exc.code}")


def print_memory(paths: list[Path], work: Path) -> None:
    """Peak RSS of rendering frame 1 of each file: HEAD's frame reading against this tree's."""
    old = work / "head-modules"
    old.mkdir(exist_ok=True)
    for name in ("frame_decoders.py", "dicom_dataset.py"):
        source = subprocess.run(
            ["git", "show", f"HEAD:{name}"], cwd=PROJECT, capture_output=True, check=True
        )
        (old / name).write_bytes(source.stdout)
    print("\n| file | frame reading | peak RSS rendering frame 1 (local file) |")
    print("| --- | --- | ---: |")
    for path in paths:
        for label, first in (("previous commit (ds.PixelData)", old), ("this tree", PROJECT)):
            child = subprocess.run(
                [sys.executable, "-c", _RSS_CHILD, str(path), str(first), str(PROJECT)],
                capture_output=True,
                text=True,
                check=True,
            )
            rss = int(child.stdout.split()[-1]) / 1024
            print(f"| {path.name} ({path.stat().st_size / MB:.0f} MB) | {label} | {rss:.0f} MiB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=300)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sources", default="http,s3")
    args = parser.parse_args()
    args.sources = tuple(args.sources.split(","))
    os.environ.update(FAKE_AWS_ENV)
    with tempfile.TemporaryDirectory(prefix="bench-ranged-") as folder:
        run(args, Path(folder))


if __name__ == "__main__":
    main()
