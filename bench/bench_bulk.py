"""Benchmark S3-triggered conversion through the handler, against moto's S3 server.

    .venv/bin/python bench/bench_bulk.py [--copies 4] [--workers 4] [--corpus DIR]

Every DICOM file of the shared corpus (else pydicom's bundled reference files) is
uploaded ``--copies`` times to a bucket in a local moto server (a child process on
127.0.0.1). Then, through ``lambda_function.handle`` and the events S3 would send:

- one S3 event per object, one after another, as separate invocations get them:
  per-image latency (p50/p90/p99 of converted objects) and images per second;
- the same objects again: every event is a redelivery, answered from HeadObject;
- SQS batches of 10 messages, converted BATCH_WORKERS at a time in one invocation.

Times include moto's S3 (uploads of outputs, HeadObject, GetObject over loopback
HTTP), so they are an upper bound for the conversion itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import lambda_function  # noqa: E402
from errors import NotificationFailed  # noqa: E402
from settings import Settings, load_settings  # noqa: E402
from tests import servers  # noqa: E402
from tests.corpus import bundled_file  # noqa: E402
from tests.handler_support import load_event  # noqa: E402

warnings.filterwarnings("ignore")
BUCKET = "bench-uploads"
# moto accepts any keys; fake ones keep botocore from looking for real credentials.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def default_files(corpus: Path) -> list[Path]:
    if (corpus / "MANIFEST.tsv").exists():
        return sorted(corpus.glob("*.dcm"))
    manifest = PROJECT / "tests" / "references" / "MANIFEST.tsv"
    names = [line.split("\t")[0] for line in manifest.read_text().splitlines()[1:]]
    return [bundled_file(name) for name in names]


def s3_event(key: str, etag: str) -> dict[str, Any]:
    event = load_event("s3_object_created")
    record = event["Records"][0]
    record["s3"]["bucket"].update(name=BUCKET, arn=f"arn:aws:s3:::{BUCKET}")
    record["s3"]["object"].update(key=quote_plus(key, safe="/"), eTag=etag)
    return event


def sqs_event(events: list[dict[str, Any]]) -> dict[str, Any]:
    template = load_event("sqs_s3_notification")["Records"][0]
    records = []
    for number, event in enumerate(events):
        records.append({**template, "messageId": f"message-{number}", "body": json.dumps(event)})
    return {"Records": records}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def one_by_one(events: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    """Each event in its own invocation; latency of each, by outcome (and skip reason)."""
    latencies: dict[str, list[float]] = {}
    started = time.perf_counter()
    for event in events:
        begin = time.perf_counter()
        try:
            record = lambda_function.handle(event, None, settings)["records"][0]
            outcome = record["status"]
            if outcome == "skipped":
                outcome = f"skipped:{record['reason']}"
        except NotificationFailed:
            outcome = "failed"
        latencies.setdefault(outcome, []).append((time.perf_counter() - begin) * 1000)
    return {"seconds": time.perf_counter() - started, "latencies": latencies}


def in_sqs_batches(events: list[dict[str, Any]], settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    failed = 0
    for first in range(0, len(events), 10):
        result = lambda_function.handle(sqs_event(events[first : first + 10]), None, settings)
        failed += len(result["batchItemFailures"])
    return {"seconds": time.perf_counter() - started, "failed_messages": failed}


def row(name: str, run: dict[str, Any], kind: str) -> str:
    """Latency percentiles of one outcome; images/s over the whole run."""
    values = run["latencies"].get(kind, [])
    if not values:
        return f"| {name} | 0 | | | | |"
    rate = len(values) / run["seconds"]
    return (
        f"| {name} | {len(values)} | {rate:.1f} | {statistics.median(values):.0f} | "
        f"{percentile(values, 0.9):.0f} | {percentile(values, 0.99):.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=4, help="uploads of each file")
    parser.add_argument("--workers", type=int, default=4, help="BATCH_WORKERS for SQS batches")
    parser.add_argument("--corpus", type=Path, default=PROJECT.parent / "shared" / "dicom-corpus")
    args = parser.parse_args()
    files = default_files(args.corpus)
    os.environ.update(FAKE_AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)

    moto = servers.start_moto()
    try:
        moto.create_bucket(BUCKET)
        client = moto.client()
        events = []
        for copy in range(args.copies):
            for path in files:
                key = f"incoming/copy {copy}/{path.name}"
                answer = client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
                events.append(s3_event(key, answer["ETag"].strip('"')))
        with tempfile.TemporaryDirectory() as temp:
            base = {
                "temp_root": temp,
                "s3_endpoint_url": moto.endpoint_url,
                "watch_bucket": BUCKET,
                "watch_prefix": "incoming/",
                "log_level": "CRITICAL",
                "download_retries": 0,
            }
            settings = load_settings(base, environ={})
            first = one_by_one(events, settings)
            again = one_by_one(events, settings)
            batch_settings = load_settings(
                {**base, "output_prefix": "batched/", "batch_workers": args.workers}, environ={}
            )
            batched = in_sqs_batches(events, batch_settings)
    finally:
        moto.stop()

    converted = len(first["latencies"].get("converted", []))
    counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(first["latencies"].items()))
    print(f"{len(files)} files x {args.copies} copies = {len(events)} S3 events: {counts}\n")
    print("| run | images | images/s | p50 ms | p90 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(row("one S3 event per invocation", first, "converted"))
    print(row("redelivered (HeadObject, no work)", again, "skipped:already_converted"))
    rate = converted / batched["seconds"]
    print(f"| SQS batches of 10, BATCH_WORKERS={args.workers} | {converted} | {rate:.1f} | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
