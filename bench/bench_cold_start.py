"""Cold-start figures of the handler: import, first /health, first /convert, warm requests.

    python bench/bench_cold_start.py [--runs 7]

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
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

CHILD = r"""
import json, statistics, sys, time
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


def run_once(url: str, env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, url],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    from demo import sample_path, serve_file

    with tempfile.TemporaryDirectory() as temp, serve_file(sample_path()) as url:
        env = {
            **os.environ,
            "ALLOWED_HOSTS": "127.0.0.1",
            "TEMP_ROOT": temp,
            "LOG_LEVEL": "WARNING",
        }
        runs = [run_once(url, env) for _ in range(args.runs)]

    print(
        f"python {platform.python_version()} on {platform.machine()}, "
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
