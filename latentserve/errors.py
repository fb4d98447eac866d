"""The one error hierarchy of latentserve, shared by the training side, the services, the client and the CLI.

Every frontend's status codes come from one table, services/frontends/statuses.py (kind -> gRPC code and
HTTP status; services/core/failures.py classifies errors from outside this hierarchy); the CLI prints them as
one line. Messages say what was wrong and what is allowed.
"""
from __future__ import annotations


class LatentServeError(Exception):
    """Base class. `kind` names the category; a frontend derives its status code from it."""

    kind = "unrecoverable"


class ValidationError(LatentServeError, ValueError):
    """The request or the input is wrong (bad shape, NaN, unknown class or factor, over a cap)."""

    kind = "validation"


class PayloadTooLargeError(ValidationError):
    """An input over a size limit in bytes (an encoded image, an HTTP body): HTTP 413, gRPC INVALID_ARGUMENT."""

    kind = "too_large"


class NotFoundError(LatentServeError, LookupError):
    """An unknown model, version, handle or file."""

    kind = "not_found"


class OverloadedError(LatentServeError):
    """A bounded queue is full; retry later."""

    kind = "overloaded"


class DeadlineExceededError(LatentServeError):
    """The caller's deadline passed before the work finished; the work was released."""

    kind = "deadline"


class UnavailableError(LatentServeError):
    """A dependency (e.g. Redis for a handle) cannot be reached right now.

    `retry=False`: repeating the call at once cannot help (the server's dependency is down, not the server),
    so the gRPC doors tell the client's retry policy not to retry it (grpc-retry-pushback-ms -1): the
    caller hears UNAVAILABLE at once and decides."""

    kind = "unavailable"

    def __init__(self, *args: object, retry: bool = True) -> None:
        super().__init__(*args)
        self.retry = retry


class UnauthenticatedError(LatentServeError):
    """Missing or wrong API token."""

    kind = "unauthenticated"


class UnsupportedError(LatentServeError):
    """This server cannot do the operation (a feature switched off, or an optional extra not installed)."""

    kind = "unsupported"


class UnrecoverableError(LatentServeError):
    """Corrupt artefact, broken invariant: nothing the caller can fix by changing the request."""

    kind = "unrecoverable"


class IntegrityError(UnrecoverableError):
    """A model file is missing or its sha256 does not match the manifest."""
