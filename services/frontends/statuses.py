"""THE status table of latentserve's doors: error kind (services/core/failures.py) -> gRPC status code name and
HTTP status. One row per kind, so the gRPC door (frontends/grpc/status.py) and the HTTP door
(frontends/http/errors.py) can never disagree about what a failure means. Plain data: no grpc import here.

HTTP notes: 413 is only for inputs over a byte limit (`PayloadTooLargeError`; gRPC keeps INVALID_ARGUMENT),
429 = a full queue (retry later), 499 = the client went away (nginx's convention; nobody reads it).
"""
from __future__ import annotations

from latentserve.services.core.failures import KINDS, classify

STATUSES: dict[str, tuple[str, int]] = {
    "validation": ("INVALID_ARGUMENT", 400),
    "too_large": ("INVALID_ARGUMENT", 413),
    "not_found": ("NOT_FOUND", 404),
    "overloaded": ("RESOURCE_EXHAUSTED", 429),
    "deadline": ("DEADLINE_EXCEEDED", 504),
    "unavailable": ("UNAVAILABLE", 503),
    "unauthenticated": ("UNAUTHENTICATED", 401),
    "unrecoverable": ("INTERNAL", 500),
    "unsupported": ("UNIMPLEMENTED", 501),
    "cancelled": ("CANCELLED", 499),
    "internal": ("INTERNAL", 500),
}
assert set(STATUSES) == set(KINDS), "every error kind needs a row"


def grpc_code_name(kind: str) -> str:
    return STATUSES.get(kind, STATUSES["internal"])[0]


def http_status(kind: str) -> int:
    return STATUSES.get(kind, STATUSES["internal"])[1]


def describe(exc: BaseException) -> tuple[str, str, int, str]:
    """(kind, gRPC code name, HTTP status, message for the caller) of any exception."""
    kind, message = classify(exc)
    code, status = STATUSES.get(kind, STATUSES["internal"])
    return kind, code, status, message
