"""S3 notifications in the three shapes that carry them, and the answers each expects.

An S3 upload reaches the function directly (an S3 event notification), wrapped in
SQS messages (themselves perhaps wrapped in SNS envelopes), or through EventBridge.
This module reads each shape into ``bulk.S3Object`` values, has ``bulk`` convert
them, and answers the way the source wants:

* S3 and EventBridge invoke asynchronously: the answer is a report, and a failed
  object must be raised (``NotificationFailed``) so that Lambda retries the event;
* SQS answers ``batchItemFailures``: only the messages listed are retried.

S3 URL-encodes the keys of its notifications ('+' is a space); EventBridge does not.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

import bulk
from bulk import Deadline, Outcome, S3Object
from convert_api import timestamp
from errors import InvalidRequest, ServiceError
from settings import Settings

logger = logging.getLogger("dicom_lambda")

OUTCOME_STATUSES = ("converted", "skipped", "failed")


def notification_kind(event: Any) -> str | None:
    """``s3``, ``sqs`` or ``eventbridge`` for an S3 notification in that shape."""
    if not isinstance(event, Mapping):
        return None
    if event.get("source") == "aws.s3" and "detail-type" in event:
        return "eventbridge"
    records = event.get("Records")
    if isinstance(records, list) and records and isinstance(records[0], Mapping):
        return {"aws:s3": "s3", "aws:sqs": "sqs"}.get(str(records[0].get("eventSource")))
    return None


def handle(
    kind: str, event: Mapping[str, Any], settings: Settings, deadline: Deadline, request_id: str
) -> tuple[dict[str, Any], list[Outcome]]:
    """Convert what a notification of ``kind`` names; (the answer, each object's outcome)."""
    if kind == "sqs":
        return sqs_batch(event["Records"], settings, deadline)
    if kind == "s3":
        objects = s3_notification_objects(event["Records"])
    else:
        objects = [eventbridge_object(event)]
    outcomes = bulk.convert_objects(objects, settings, deadline)
    return notification_report(outcomes, request_id), outcomes


def s3_notification_objects(records: list[Any]) -> list[S3Object]:
    """The objects of an S3 event notification, whose keys are URL-encoded ('+' is a space)."""
    objects = []
    for record in records:
        s3 = _mapping(_mapping(record).get("s3"))
        bucket = _mapping(s3.get("bucket")).get("name")
        found = _mapping(s3.get("object"))
        key = found.get("key")
        if not isinstance(bucket, str) or not isinstance(key, str):
            raise InvalidRequest("an S3 record lacks s3.bucket.name or s3.object.key")
        event_name = str(_mapping(record).get("eventName", ""))
        objects.append(
            S3Object(
                bucket=bucket,
                key=unquote_plus(key),
                etag=_etag(found.get("eTag")),
                version_id=_text(found.get("versionId")),
                created=event_name.startswith("ObjectCreated:"),
            )
        )
    return objects


def eventbridge_object(event: Mapping[str, Any]) -> S3Object:
    """The object of an S3 event delivered by EventBridge, whose key is not encoded."""
    detail = _mapping(event.get("detail"))
    bucket = _mapping(detail.get("bucket")).get("name")
    found = _mapping(detail.get("object"))
    key = found.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str):
        raise InvalidRequest("an EventBridge S3 event lacks detail.bucket.name or .object.key")
    return S3Object(
        bucket=bucket,
        key=key,
        etag=_etag(found.get("etag")),
        version_id=_text(found.get("version-id")),
        created=event.get("detail-type") == "Object Created",
    )


def sqs_message_objects(body: Any) -> list[S3Object]:
    """The objects in one SQS message: an S3 notification or an EventBridge event, or
    either inside an SNS envelope. S3's test message names none."""
    document = _loads(body) if isinstance(body, str) else None
    if isinstance(document, Mapping) and document.get("Type") == "Notification":
        document = _loads(str(document.get("Message", "")))
    if isinstance(document, Mapping) and document.get("Event") == "s3:TestEvent":
        return []
    if isinstance(document, Mapping):
        kind = notification_kind(document)
        if kind == "s3":
            return s3_notification_objects(document["Records"])
        if kind == "eventbridge":
            return [eventbridge_object(document)]
    raise InvalidRequest("the SQS message body is not an S3 event notification")


def sqs_batch(
    records: list[Any], settings: Settings, deadline: Deadline
) -> tuple[dict[str, Any], list[Outcome]]:
    """SQS answers ``batchItemFailures``: only the messages listed are retried."""
    messages: list[tuple[str, list[S3Object] | None]] = []
    for record in records:
        message_id = str(_mapping(record).get("messageId"))
        try:
            messages.append((message_id, sqs_message_objects(_mapping(record).get("body"))))
        except ServiceError as exc:
            logger.warning(
                "unreadable SQS message",
                extra={"fields": {"message_id": message_id, "error": exc.message}},
            )
            messages.append((message_id, None))
    objects = [obj for _, found in messages for obj in found or ()]
    outcomes = bulk.convert_objects(objects, settings, deadline)
    remaining = iter(outcomes)
    failures = []
    for message_id, found in messages:
        mine = [next(remaining) for _ in found or ()]
        if found is None or any(outcome.failed for outcome in mine):
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}, outcomes


def notification_report(outcomes: list[Outcome], request_id: str) -> dict[str, Any]:
    """The answer to an S3 or EventBridge event: what became of each object."""
    failed = [o for o in outcomes if o.failed]
    counts = ", ".join(f"{n} {status}" for status, n in count_outcomes(outcomes).items())
    message = f"{len(outcomes)} object(s): {counts}"
    if failed:
        message += "; " + "; ".join(
            f"s3://{o.object.bucket}/{o.object.key}: {o.reason}: {o.message}" for o in failed
        )
    return {
        "success": not failed,
        "message": message,
        "records": [outcome.describe() for outcome in outcomes],
        "timestamp": timestamp(),
        "request_id": request_id,
    }


def count_outcomes(outcomes: list[Outcome]) -> dict[str, int]:
    """How many objects were converted, skipped and failed."""
    return {s: sum(1 for o in outcomes if o.status == s) for s in OUTCOME_STATUSES}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _etag(value: Any) -> str | None:
    """An ETag without the quotes HeadObject puts around it (notifications have none)."""
    return str(value).strip('"') if value else None


def _text(value: Any) -> str | None:
    return str(value) if value else None
