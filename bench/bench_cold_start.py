"""Cold-start figures of the handler: import, first /health, first /convert, warm requests.

    python bench/bench_cold_start.py [--runs 7] [--runtime python3.12|python3.13]

With ``--runtime`` the figures come from the deployment package itself: the x86_64
zip is built (deployment/package.py), unzipped, and run by that Python version with
``-I -S -B`` (no host site-packages, no bytecode writes: /var/task is read-only),
as the Lambda runtime runs it. Without it, from this tree with the current Python.

Each run is a fresh Python process, as a new Lambda execution environment is:
it imports ``lambda_function`` (the init phase), then answers GET /health, then
POST /convert of CT_small.dcm served over HTTP on 127.0.0.1 (the first convert pays
for importing requests, pydicom, numpy and Pillow), then both again warm: 20 warm
/health requests (their median, ``warm_health_median``, and their fastest) and 5
warm converts (the fastest). The figures are medians over the runs, in
milliseconds, on this machine. Speed is measured here, never asserted in a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

CHILD = r"""
import json, statistics, sys, time
if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])  # the unzipped package, as /var/task
started = time.perf_counter()
import lambda_function
imported = time.perf_counter()
heavy = [m for m in ("numpy", "pydicom", "PIL", "boto3", "requests") if m in sys.modules]
url = sys.argv[1]
health = {"resource": "/health", "path": "/health", "httpMethod": "GET", "headers": None,
          "multiValueHeaders": None, "queryStringParameters": None,
          "multiValueQueryStringParameters": None, "pathParameters": None,
          "stageVariables": None, "requestContext": {"stage": "prod", "requestId": "bench"},
          "body": None, "isBase64Encoded": False}
convert = dict(health, resource="/convert", path="/convert", httpMethod="POST",
               headers={"Content-Type": "application/json"}, body=json.dumps({"url": url}))

def timed(event):
    t = time.perf_counter()
    result = lambda_function.lambda_handler(event, None)
    assert result["statusCode"] == 200, result
    return (time.perf_counter() - t) * 1000

first_health = timed(health)
first_convert = timed(convert)
warm_health = [timed(health) for _ in range(20)]
out = {
    "python": "%d.%d.%d" % sys.version_info[:3],
    "import_ms": (imported - started) * 1000,
    "heavy_after_import": heavy,
    "first_health_ms": first_health,
    "first_convert_ms": first_convert,
    "warm_health_median_ms": statistics.median(warm_health),
    "warm_health_ms": min(warm_health),
    "warm_convert_ms": min(timed(convert) for _ in range(5)),
}
print("RESULT " + json.dumps(out))
"""


def run_once(
    url: str, env: dict[str, str], python: list[str], package: Path | None
) -> dict[str, object]:
    extra = [str(package)] if package else []
    result = subprocess.run(
        [*python, "-c", CHILD, url, *extra],
        cwd=package or PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"the cold-start child failed:\n{result.stderr[-3000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def unpacked_package(runtime: str, folder: Path) -> tuple[list[str], Path, str]:
    """Build and unzip the x86_64 package: the Python to run it, its folder, a label."""
    from deployment import package as packaging

    python = packaging.runtime_python(packaging.RUNTIMES[runtime])
    if python is None:
        raise SystemExit(f"no {runtime} interpreter here (PATH, pyenv or uv)")
    built = packaging.build_package(runtime, "x86_64", folder / "package.zip")
    task = folder / "task"
    with zipfile.ZipFile(built.path) as archive:
        archive.extractall(task)
    where = f"the {runtime} x86_64 package ({built.size_text})"
    return [python, "-I", "-S", "-B"], task, where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--runtime", choices=("python3.12", "python3.13"))
    args = parser.parse_args()

    from demo import sample_path, serve_file

    with tempfile.TemporaryDirectory() as temp, serve_file(sample_path()) as url:
        env = {
            **os.environ,
            "ALLOWED_HOSTS": "127.0.0.1:*",
            "TEMP_ROOT": temp,
            "LOG_LEVEL": "WARNING",
        }
        python, package, where = [sys.executable], None, "this tree"
        if args.runtime:
            python, package, where = unpacked_package(args.runtime, Path(temp))
        runs = [run_once(url, env, python, package) for _ in range(args.runs)]

    print(
        f"{where}: python {runs[0]['python']} on {platform.machine()}, "
        f"{os.cpu_count()} cores; {args.runs} fresh processes; median (min-max) ms"
    )
    for key in (
        "import_ms",
        "first_health_ms",
        "first_convert_ms",
        "warm_health_median_ms",
        "warm_health_ms",
        "warm_convert_ms",
    ):
        values = [float(run[key]) for run in runs]  # type: ignore[arg-type]
        print(
            f"  {key.removesuffix('_ms'):21} {statistics.median(values):8.2f}"
            f"   ({min(values):.2f}-{max(values):.2f})"
        )
    heavy = sorted({m for run in runs for m in run["heavy_after_import"]})  # type: ignore[union-attr]
    print(f"  heavy modules loaded by the import: {', '.join(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
