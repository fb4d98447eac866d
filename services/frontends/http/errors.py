"""Failures -> HTTP answers: the status and code come from the one table of every door
(services/frontends/statuses.py); the body is `{"code": "<gRPC status name>", "message": "..."}` (schemas.ErrorBody),
the message the same as gRPC's. FastAPI's own request validation errors become 400 with the failing fields
named the way the caller wrote them (`images[0].png: ...`)."""
from __future__ import annotations

import logging
from typing import Any, Sequence

from latentserve.services.frontends.statuses import describe
from latentserve.services.observability import metrics

logger = logging.getLogger("ray.serve")
MAX_MESSAGE = 4000


def error_body(code: str, message: str) -> dict:
    return {"code": code, "message": message[:MAX_MESSAGE]}


def failure(exc: BaseException, rpc: str) -> tuple[int, dict]:
    """(HTTP status, body) of any exception; logged by severity and recorded in the call's metrics."""
    kind, code, status, message = describe(exc)
    if status >= 500 and code not in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
        logger.error("HTTP %s failed", rpc, exc_info=(type(exc), exc, exc.__traceback__))
        if kind == "internal":
            message = "internal error; the server log has the details"  # never a repr or a traceback
    elif status not in (400, 401, 404, 413):
        logger.warning("HTTP %s: %s: %s", rpc, code, message)
    metrics.note_status(code)
    return status, error_body(code, message)


def _where(loc: Sequence[Any]) -> str:
    """FastAPI's error location ('body', 'images', 0, 'png') -> 'images[0].png'."""
    out = ""
    for part in loc:
        if part in ("body", "query", "path", "header") and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validation_message(errors: Sequence[dict]) -> str:
    """pydantic/FastAPI validation errors -> one line per field, `field: what is wrong`."""
    lines = []
    for e in errors[:20]:
        msg = e.get("msg", "invalid")
        kind, where = e.get("type"), _where(e.get("loc", ()))
        if kind == "extra_forbidden":
            msg = "unknown field"
        elif kind == "json_invalid":
            where, msg = "body", "not valid JSON" + (f" (at character {e['loc'][-1]})" if e.get("loc") else "")
        elif kind == "model_attributes_type" and where == "body":
            msg = "must be a JSON object; send it with Content-Type: application/json"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines) or "invalid request"
