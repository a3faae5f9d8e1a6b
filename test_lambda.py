"""Invoke the Lambda handler locally, as the seed's ``python test_lambda.py [URL]`` does.

    python test_lambda.py          every sample event in tests/events/ (REST, HTTP API,
                                   Function URL, direct invoke), pointed at a bundled
                                   DICOM served over HTTP on 127.0.0.1
    python test_lambda.py URL      a direct invocation ({"url": URL}), as
                                   ``aws lambda invoke`` sends it

Images are written to out/. Exits non-zero when any invocation fails.
"""

from __future__ import annotations

import base64
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent
OUT = PROJECT / "out"


def summary(answer: Any) -> str:
    document = answer.document
    if document is None:
        return f"{answer.media_type}, {len(answer.body)} bytes" if answer.body else "no body"
    if not document.get("success", True) or "error" in document:
        return f"{document['error']['code']}: {document['message']}"
    if "data" in document:
        data = document["data"]
        size = f"{data['width']}x{data['height']}"
        where = "link" if "image_url" in data else f"{data['file_size']} bytes"
        return f"{data['format']} {size}, {where}, window {data['window']['source']}"
    return str(document.get("status", "ok"))


def save(name: str, answer: Any) -> Path | None:
    document = answer.document
    if document is None and answer.body and answer.media_type.startswith("image/"):
        data = answer.body
        suffix = answer.media_type.split("/")[1].replace("jpeg", "jpg")
    elif document and "image_base64" in document.get("data", {}):
        data = base64.b64decode(document["data"]["image_base64"])
        suffix = document["data"]["format"]
    else:
        return None
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.{suffix}"
    path.write_bytes(data)
    return path


def run(events: list[tuple[str, dict[str, Any]]]) -> int:
    import lambda_function
    from tests.handler_support import LambdaContext, read_result

    failures = 0
    for name, event in events:
        answer = read_result(lambda_function.lambda_handler(event, LambdaContext()))
        ok = 200 <= answer.status < 300
        failures += not ok
        saved = save(name, answer)
        where = f" -> {saved.relative_to(PROJECT)}" if saved else ""
        print(f"{'ok  ' if ok else 'FAIL'} {answer.status} {name:28} {summary(answer)}{where}")
    print(f"{len(events) - failures} passed, {failures} failed")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(PROJECT))
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if len(argv) > 1:
        if argv[1] in ("-h", "--help"):
            print(__doc__)
            return 0
        return run([("direct_invoke", {"url": argv[1]})])

    import settings
    from demo import sample_path, serve_file
    from tests.handler_support import event_names, load_event, with_url

    with ExitStack() as stack:
        url = stack.enter_context(serve_file(sample_path()))
        # The URL policy refuses loopback unless ALLOWED_HOSTS lists it.
        os.environ["ALLOWED_HOSTS"] = "127.0.0.1:*"
        settings.get_settings.cache_clear()
        events = []
        for name in event_names():
            event = load_event(name)
            events.append((name, with_url(event, url) if "convert" in name else event))
        print(f"{len(events)} sample events; the DICOM is served at {url}")
        return run(events)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
