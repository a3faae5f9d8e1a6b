"""The one error hierarchy of the service.

Every failure the caller can fix is a ``ServiceError`` subclass that carries its
HTTP status and a stable machine-readable code. ``describe`` is the one table from
an error to its status, code and message; everything else raises them.

Messages are written for the caller: they name the field, tag or limit to change.
They never carry credentials, signed query strings or patient data, because they
are returned to the caller and written to the logs.
"""

from __future__ import annotations

import re


class ServiceError(Exception):
    """Base of every error the service reports on purpose."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """The request itself is wrong: a missing or invalid field."""

    status = 400
    code = "invalid_request"


class InvalidUrl(InvalidRequest):
    """The URL cannot be parsed, or names a scheme or form we do not fetch."""

    code = "invalid_url"


class SourceNotConfigured(InvalidRequest):
    """The URL names a source this deployment is not set up to read (R2 without keys).

    A 4xx: the caller can send another URL; the operator may add the source.
    """

    code = "source_not_configured"


class Forbidden(ServiceError):
    """The source refused access, or the URL policy blocks the target."""

    status = 403
    code = "forbidden"


class BlockedByPolicy(Forbidden):
    """The URL policy (allowed hosts, private networks, buckets) refuses the URL."""

    code = "blocked_by_policy"


class NotFound(ServiceError):
    """The source answered that the object does not exist."""

    status = 404
    code = "not_found"


class MethodNotAllowed(ServiceError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allow = allow


class TooLarge(ServiceError):
    """A size limit was exceeded: download size, pixel budget or response size."""

    status = 413
    code = "too_large"


class UnsupportedImage(ServiceError):
    """Valid DICOM that we cannot render: transfer syntax, pixel format, etc."""

    status = 415
    code = "unsupported_image"


class UnsupportedTransferSyntax(UnsupportedImage):
    code = "unsupported_transfer_syntax"


class InvalidDicom(ServiceError):
    """The input is not renderable DICOM: not DICOM, corrupt or truncated."""

    status = 422
    code = "invalid_dicom"


class NotDicom(InvalidDicom):
    code = "not_dicom"


class NoPixelData(InvalidDicom):
    code = "no_pixel_data"


class CorruptDicom(InvalidDicom):
    code = "corrupt_dicom"


class UpstreamError(ServiceError):
    """The source failed in a way the caller cannot fix by changing the request."""

    status = 502
    code = "upstream_error"


class UpstreamTimeout(ServiceError):
    status = 504
    code = "upstream_timeout"


class ConfigurationError(ServiceError):
    """The function is deployed with invalid or missing settings.

    The operator, not the caller, has to act; the message says which setting.
    """

    status = 500
    code = "configuration_error"


class RouteNotFound(NotFound):
    """No route answers this path (the source's own 404 is ``NotFound``)."""

    code = "route_not_found"


class NotReached(ServiceError):
    """The invocation's deadline came before this item of a batch or event was done."""

    status = 503
    code = "not_reached"


class NotificationFailed(ServiceError):
    """An object of an S3 or EventBridge event failed.

    Those sources invoke the function asynchronously: only an error raised out of
    the handler makes Lambda retry the event (and after the retries send it to a
    failure destination). On a retry, the objects already converted are skipped by
    their ETag. It is raised to Lambda, never turned into a response.
    """

    status = 500
    code = "notification_failed"


# What a caller sees of an error that is not a ServiceError: the details are for the
# operator's log, the request id lets the two be matched.
GENERIC_MESSAGE = "internal error; quote the request_id when reporting it"


def describe(exc: BaseException) -> tuple[int, str, str]:
    """The one table from error to answer: (HTTP status, stable code, message).

    A ``ServiceError`` answers with its own status, code and message; anything else
    is a 500 with a generic message.
    """
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message
    return 500, "internal_error", GENERIC_MESSAGE


def parse_error_text(exc: BaseException) -> str:
    """A parser's or codec's message without the values it quotes (they may be patient data)."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    return text[:200]
