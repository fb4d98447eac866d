"""Any exception an operation can end with -> (kind, message), kind being a latentserve.errors kind or
"cancelled" / "internal": the one classification every frontend maps to its status codes. Errors of the
remote model pool (Ray Serve handles: back-pressure, a dead replica, timeouts) are classified here too, so
no frontend needs to know Ray.
"""
from __future__ import annotations

import asyncio
import re

from latentserve.errors import LatentServeError

# What a caller must never see in a message: object reprs (heap addresses), bare addresses, URLs (they can
# carry credentials) and host:port pairs of internal services. Messages of our own errors are written to
# avoid them; scrubbing every message is the backstop for text that came from a library.
_SCRUB = [
    (re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>"), "<object>"),
    (re.compile(r"\b0x[0-9a-fA-F]{6,}\b"), "<address>"),
    (re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>),;]+"), "<url>"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}:\d{2,5}\b"), "<address>"),
]


def scrub(message: str) -> str:
    """`message` without object reprs, heap addresses, URLs or ip:port pairs."""
    for pattern, repl in _SCRUB:
        message = pattern.sub(repl, message)
    return message

KINDS = ("validation", "too_large", "not_found", "overloaded", "deadline", "unavailable", "unauthenticated", "unrecoverable",
         "unsupported", "cancelled", "internal")


def unwrap(exc: BaseException) -> BaseException:
    """The user exception inside Ray's wrappers (RayTaskError carries the original as `.cause`)."""
    for _ in range(4):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException) and cause is not exc:
            exc = cause
        else:
            break
    return exc


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, message for the caller) of `exc`; the message is scrubbed (see `scrub`), and an internal error
    names only the exception's type (the details belong in the server log)."""
    kind, message = _classify(exc)
    return kind, scrub(message)


def _classify(exc: BaseException) -> tuple[str, str]:
    exc = unwrap(exc)
    if isinstance(exc, LatentServeError):
        return exc.kind, str(exc)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return "deadline", "the request did not finish in time"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled", "the request was cancelled"
    try:  # Ray Serve's errors (a remote model pool); ray is absent on hosts that only run the core
        from ray import exceptions as ray_exc
        from ray.serve import exceptions as serve_exc
    except ImportError:
        return "internal", f"internal error ({type(exc).__name__})"
    if isinstance(exc, serve_exc.BackPressureError):
        return "overloaded", f"server is at capacity, retry later ({exc.message})"
    if isinstance(exc, (serve_exc.DeploymentUnavailableError, ray_exc.RayActorError,
                        getattr(ray_exc, "ActorUnavailableError", ray_exc.RayActorError))):
        return "unavailable", f"a model server is unavailable, retry later ({type(exc).__name__})"
    if isinstance(exc, ray_exc.GetTimeoutError):
        return "deadline", "the request did not finish in time"
    if isinstance(exc, getattr(serve_exc, "RequestCancelledError", asyncio.CancelledError)):
        return "cancelled", "the request was cancelled"
    return "internal", f"internal error ({type(exc).__name__})"
