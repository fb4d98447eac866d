"""Connection plumbing of the client: channel options, retry policy, call metadata, and gRPC status ->
latentserve.errors (see latentserve/client/__init__.py for the behaviour these promise)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import grpc

from latentserve.errors import (
    DeadlineExceededError,
    LatentServeError,
    NotFoundError,
    OverloadedError,
    UnauthenticatedError,
    UnavailableError,
    UnrecoverableError,
    UnsupportedError,
    ValidationError,
)
from latentserve.metadata import ServerInfo, server_info


DEFAULT_TARGET = "127.0.0.1:9000"
# Bulk decodes of 64 images at 64x64 are ~0.8 MB raw uint8, PNG is smaller; 64 MB leaves room for large
# float32 batches without letting a broken peer exhaust memory.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # Keep idle connections to a server alive across CLI pauses / benchmark phases.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
DEFAULT_RETRIES = 3
MAX_RETRIES = 4  # gRPC caps a retry policy at 5 attempts


def retry_options(retries: int) -> list[tuple[str, str]]:
    """Channel options with gRPC's retry policy for LatentService: `retries` more attempts on UNAVAILABLE
    (see the module docstring); [] for retries=0."""
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise ValidationError(f"retries must be an integer in [0, {MAX_RETRIES}], got {retries!r}")
    if retries == 0:
        return []
    config = {
        "methodConfig": [{
            "name": [{"service": "latentserve.v1.LatentService"}],
            "retryPolicy": {"maxAttempts": retries + 1, "initialBackoff": "0.1s", "maxBackoff": "1s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
        }],
        # gRPC's token bucket per channel: each failed attempt takes a token, each success gives back 0.1, and
        # no retry is made while half of them are gone. 100 tokens: a node failure that fails every call in
        # flight on the channel at once (up to ~50) is still retried; a service that stays down is not.
        "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
    }
    return [("grpc.enable_retries", 1), ("grpc.service_config", json.dumps(config))]


_STATUS_ERRORS: dict[grpc.StatusCode, type[LatentServeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.OUT_OF_RANGE: ValidationError,
    grpc.StatusCode.FAILED_PRECONDITION: ValidationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: OverloadedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: UnauthenticatedError,
    grpc.StatusCode.UNIMPLEMENTED: UnsupportedError,  # e.g. gradient latent ops on a server without torch
}


def error_from_rpc(exc: grpc.RpcError) -> LatentServeError:
    """grpc.RpcError -> the latentserve.errors class of its status code (see the module docstring)."""
    code = exc.code() if callable(getattr(exc, "code", None)) else grpc.StatusCode.UNKNOWN
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    cls = _STATUS_ERRORS.get(code, UnrecoverableError)
    err = cls(f"{code.name}: {details or 'no details'}")
    err.status = code  # type: ignore[attr-defined]
    return err


def _answered_by(exc: grpc.RpcError) -> ServerInfo | None:
    """The server identity on a failed call, if a server answered it at all."""
    trailing = getattr(exc, "trailing_metadata", None)
    try:
        return server_info(trailing()) if callable(trailing) else None
    except Exception:  # noqa: BLE001 - an aio error raised before the call started has no metadata
        return None


def _metadata(token: str | None, app_name: str | None) -> tuple[tuple[str, str], ...]:
    md = []
    if token:
        md.append(("authorization", f"Bearer {token}"))
    if app_name:
        md.append(("application", app_name))  # Ray Serve's gRPC proxy routes on it when several apps run
    return tuple(md)


@dataclass(frozen=True)
class ClientTls:
    """TLS of a client's channel. `ca`: PEM (bytes) or a PEM file path the server's certificate must chain to
    (None: the system's roots); `cert` + `key`: the client's own certificate and key, for a server that asks
    for one (mutual TLS); `server_name`: the name to verify the server's certificate against instead of the
    target's host (e.g. a load balancer's address with the servers' own name)."""

    ca: bytes | str | os.PathLike | None = None
    cert: bytes | str | os.PathLike | None = None
    key: bytes | str | os.PathLike | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert is None) != (self.key is None):
            raise ValidationError("tls: a client certificate needs its key (cert and key go together)")
        return grpc.ssl_channel_credentials(root_certificates=_pem(self.ca, "ca"),
                                            private_key=_pem(self.key, "key"),
                                            certificate_chain=_pem(self.cert, "cert"))

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _pem(value: bytes | str | os.PathLike | None, what: str) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    try:
        with open(os.path.expanduser(os.fspath(value)), "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ValidationError(f"tls {what}: cannot read {os.fspath(value)!r} ({exc.strerror or exc})") from None
    if b"-----BEGIN " not in data:
        raise ValidationError(f"tls {what}: {os.fspath(value)!r} is not a PEM file")
    return data


def make_channel(target: str, options: list, tls: "ClientTls | bool | None", aio: bool = False):
    """A plaintext channel (tls None/False), or a TLS one (True: the system's roots; a ClientTls)."""
    module = grpc.aio if aio else grpc
    if not tls:
        return module.insecure_channel(target, options=options)
    tls = ClientTls() if tls is True else tls
    if not isinstance(tls, ClientTls):
        raise ValidationError(f"tls must be a ClientTls, True or None, got {type(tls).__name__}")
    return module.secure_channel(target, tls.credentials(), options=options + tls.options())


def _check_client_args(target: str, timeout: float | None) -> None:
    if not isinstance(target, str) or ":" not in target:
        raise ValidationError(f"target must be host:port, got {target!r}")
    if timeout is not None and not (timeout > 0):
        raise ValidationError(f"timeout must be > 0 seconds (or None), got {timeout}")
