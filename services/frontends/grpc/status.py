"""gRPC status codes of latentserve's errors for the gRPC doors (native server on either transport, Ray Serve's
gRPC proxy). services/core/failures.py classifies an exception into a kind; the one table of every door
(services/frontends/statuses.py) names its code; `status_for` turns that into a grpc.StatusCode, `set_status`
puts it on the call (and logs what the operator should see).
"""
from __future__ import annotations

import logging
from typing import Any

import grpc

from latentserve.services.core.failures import classify
from latentserve.services.frontends.statuses import STATUSES as _TABLE
from latentserve.services.observability import metrics

logger = logging.getLogger("ray.serve")

STATUS = {kind: grpc.StatusCode[code] for kind, (code, _http) in _TABLE.items()}
# gRPC's server pushback: a negative value tells the client's retry policy not to retry this call (gRFC A6)
RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"


class StatusSet(Exception):
    """Raised out of a streaming handler after the status was set on the context (Serve forwards it; the
    native server ends the stream)."""


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(gRPC status code, message) of any exception."""
    kind, message = classify(exc)
    return STATUS.get(kind, grpc.StatusCode.INTERNAL), message


def set_status(grpc_context: Any, exc: BaseException, rpc: str, request_id: str = "") -> None:
    """Answer the call with the status of `exc`: code and details on the context, logged by severity (with
    the call's request id, which the handlers also send in the trailing metadata, so a caller's report of a
    failure finds its log line), recorded in the call's metrics."""
    code, message = status_for(exc)
    tag = f" [request {request_id}]" if request_id else ""
    if code == grpc.StatusCode.INTERNAL:
        logger.error("%s failed%s", rpc, tag, exc_info=(type(exc), exc, exc.__traceback__))
        if request_id:
            message += f"; the server log has the details under request id {request_id}"
    elif code not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED):
        logger.warning("%s%s: %s: %s", rpc, tag, code.name, message)
    else:
        logger.debug("%s%s: %s: %s", rpc, tag, code.name, message)
    if grpc_context is not None:
        grpc_context.set_code(code)
        grpc_context.set_details(message[:4000])
        if getattr(exc, "retry", True) is False:
            _no_retry(grpc_context)
    metrics.note_status(code.name)  # the code of the call being recorded, if any (services/observability/metrics.py)


def _no_retry(grpc_context: Any) -> None:
    """Add the "do not retry" pushback to the call's trailing metadata (every context here replaces it on a
    set; Serve's prepends its own request id again, so that one is not carried over)."""
    current = list(grpc_context.trailing_metadata() or ()) if hasattr(grpc_context, "trailing_metadata") else []
    own = getattr(grpc_context, "_request_id_metadata", None)
    if callable(own):
        current = [kv for kv in current if kv not in own()]
    grpc_context.set_trailing_metadata([*current, (RETRY_PUSHBACK_KEY, "-1")])
